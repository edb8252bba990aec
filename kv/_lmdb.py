"""The embedded engine: LMDB, through the `lmdb` package.

Chosen by measurement on this machine (`bench/bench_store.py`): a point read in a
fresh read transaction costs ~0.55 µs against ~3.9 µs for a SQLite SELECT, and
a committed write ~3.7 µs against ~10 µs for SQLite in WAL mode. LMDB commits
are copy-on-write with an atomic meta-page switch, so a process killed at any
moment leaves the last committed transaction intact; several processes may
open one directory and LMDB serializes their writers.

Layout, three named databases in one environment:

- `data`:   ns.prefix + key → record (`b"\\0" + value`, or `b"\\1" + be64(expires_ms) + value`)
- `expiry`: tenant + NUL + be64(expires_ms) + blake2b(ns.prefix + key) → bucket + NUL + key
- `usage`:  tenant → be64(keys) + be64(bytes), counting every stored record, expired or not

LMDB keys are at most 511 bytes, less than a namespace prefix plus a 512-byte
key. A key too long to fit is stored in a *box*: the record at
`ns.prefix + key[:head]` (flag `b"\\2"`) holds a sorted msgpack list of
`[tail, record]` for every key sharing that head. Boxes sort where their keys
do, so listings stay in byte order; they are rare (keys of ~450+ bytes) and
almost always hold one key.

Usage counts stored records, so it can only overstate live usage; a write that
fails the quota check sweeps the tenant's expired records and checks again,
which makes the check exact without a sweep on every write.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Final, TypeVar

import lmdb
import msgpack

from ._errors import BackendUnavailable, InvalidArgument, QuotaExceeded, ValueTooLarge
from ._rules import (
    Clock,
    Namespace,
    Quota,
    Usage,
    add_counter,
    deadline_ms,
    now_ms,
    parse_counter,
    prefix_end,
)

__all__ = [
    "DEFAULT_MAP_SIZE_BYTES",
    "LmdbStore",
]

#: Address space reserved for the data file; the file itself grows only as data is written.
DEFAULT_MAP_SIZE_BYTES: Final = 64 * 1024**3
_NO_TTL: Final = 0
_BOX: Final = 2
#: LMDB's compiled-in key limit (`mdb_env_get_maxkeysize`); checked when a store opens.
_MAX_LMDB_KEY: Final = 511

T = TypeVar("T")


@dataclasses.dataclass(slots=True)
class _Shared:
    """One LMDB environment and what every LmdbStore open on its directory shares."""

    env: lmdb.Environment
    fsync: bool
    map_size: int
    write_lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    opened: int = 0


# LMDB forbids opening one environment twice in a process, so every LmdbStore
# on the same directory shares one entry here.
_registry_lock = threading.Lock()
_registry: dict[str, _Shared] = {}


def _record(value: bytes, expires_ms: int | None) -> bytes:
    if expires_ms is None:
        return b"\0" + value
    return b"\1" + expires_ms.to_bytes(8, "big") + value


def _expiry_of(record: bytes | memoryview) -> int | None:
    if record[0] == _NO_TTL:
        return None
    return int.from_bytes(record[1:9], "big")


def _value_of(record: bytes | memoryview) -> bytes:
    return bytes(record[1:] if record[0] == _NO_TTL else record[9:])


def _is_live(record: bytes | memoryview | None, now: int) -> bool:
    """Whether a stored record exists and has not expired."""
    if record is None:
        return False
    expires = _expiry_of(record)
    return expires is None or expires > now


def _live_value(record: bytes | memoryview | None, now: int) -> bytes | None:
    """The record's value if it is live, else None."""
    return _value_of(record) if record is not None and _is_live(record, now) else None


def _expiry_key(tenant_prefix: bytes, expires_ms: int, ns: Namespace, key: bytes) -> bytes:
    digest = hashlib.blake2b(ns.prefix + key, digest_size=16).digest()
    return tenant_prefix + expires_ms.to_bytes(8, "big") + digest


def _read_usage(txn: lmdb.Transaction, db: lmdb._Database, tenant: bytes) -> tuple[int, int]:
    raw = txn.get(tenant, db=db)
    if raw is None:
        return 0, 0
    return int.from_bytes(raw[:8], "big", signed=True), int.from_bytes(raw[8:16], "big", signed=True)


def _unbox(box: bytes | memoryview) -> list[list[bytes]]:
    entries: list[list[bytes]] = msgpack.unpackb(bytes(box[1:]))
    return entries


def _lookup(txn: lmdb.Transaction, db: lmdb._Database, prefix: bytes, key: bytes) -> bytes | memoryview | None:
    """The stored record of `key` (live or expired), through a box if the key is long."""
    head = _MAX_LMDB_KEY - len(prefix)
    if len(key) < head:
        record: bytes | memoryview | None = txn.get(prefix + key, db=db)
        return record
    box = txn.get(prefix + key[:head], db=db)
    if box is None:
        return None
    tail = key[head:]
    for entry_tail, record in _unbox(box):
        if entry_tail == tail:
            return record
    return None


def _replace(
    txn: lmdb.Transaction, db: lmdb._Database, prefix: bytes, key: bytes, record: bytes | None
) -> bytes | None:
    """Store `record` at `key` (None deletes it); return the record it replaced."""
    head = _MAX_LMDB_KEY - len(prefix)
    if len(key) < head:
        full = prefix + key
        old = txn.get(full, db=db)
        if record is not None:
            txn.put(full, record, db=db)
        elif old is not None:
            txn.delete(full, db=db)
        return None if old is None else bytes(old)
    full = prefix + key[:head]
    tail = key[head:]
    box = txn.get(full, db=db)
    entries = {} if box is None else {entry_tail: entry for entry_tail, entry in _unbox(box)}
    old_entry = entries.pop(tail, None)
    if record is not None:
        entries[tail] = record
    if entries:
        txn.put(full, bytes([_BOX]) + msgpack.packb(sorted([t, r] for t, r in entries.items())), db=db)
    elif box is not None:
        txn.delete(full, db=db)
    return old_entry


def _scan(cursor: lmdb.Cursor, prefix: bytes, start: bytes) -> Iterator[tuple[bytes, bytes | memoryview]]:
    """Every (key, record) of namespace `prefix` from about `start` on, in key byte order, boxes opened."""
    if not cursor.set_range((prefix + start)[:_MAX_LMDB_KEY]):
        return
    base = len(prefix)
    for full, record in cursor:
        if bytes(full[:base]) != prefix:
            return
        if record[0] == _BOX:
            key_head = bytes(full[base:])
            for tail, entry in _unbox(record):
                yield key_head + tail, entry
        else:
            yield bytes(full[base:]), record


def _stored_len(record: bytes | memoryview) -> int:
    return len(record) - (1 if record[0] == _NO_TTL else 9)


class _Writer:
    """One write transaction's view: reads records, stages changes, keeps the usage deltas."""

    __slots__ = ("add_bytes", "add_keys", "data", "expiry", "now", "ns", "tenant_prefix", "txn")

    def __init__(self, txn: lmdb.Transaction, data: lmdb._Database, expiry: lmdb._Database, ns: Namespace, now: int):
        self.txn = txn
        self.data = data
        self.expiry = expiry
        self.ns = ns
        self.now = now
        self.tenant_prefix = ns.tenant.encode() + b"\0"
        self.add_keys = 0
        self.add_bytes = 0

    def live(self, key: bytes) -> tuple[bytes | None, int | None]:
        """The live value and its expiry (None, None when missing or expired)."""
        record = _lookup(self.txn, self.data, self.ns.prefix, key)
        if record is None:
            return None, None
        expires = _expiry_of(record)
        if expires is not None and expires <= self.now:
            return None, None
        return _value_of(record), expires

    def plan_put(self, key: bytes, value: bytes) -> None:
        """Account for storing `value` at `key` (whatever is stored there now, live or expired)."""
        record = _lookup(self.txn, self.data, self.ns.prefix, key)
        if record is None:
            self.add_keys += 1
            self.add_bytes += len(key) + len(value)
        else:
            self.add_bytes += len(value) - _stored_len(record)

    def put(self, key: bytes, value: bytes, expires_ms: int | None) -> None:
        """Store a record, keeping the expiry index in step; call after `plan_put` and the quota check."""
        old = _replace(self.txn, self.data, self.ns.prefix, key, _record(value, expires_ms))
        self._reindex(key, old, expires_ms)

    def remove(self, key: bytes) -> bool:
        """Delete a record if stored; True if it was live. Updates the usage deltas itself."""
        old = _replace(self.txn, self.data, self.ns.prefix, key, None)
        if old is None:
            return False
        self._reindex(key, old, None)
        self.add_keys -= 1
        self.add_bytes -= len(key) + _stored_len(old)
        expires = _expiry_of(old)
        return expires is None or expires > self.now

    def _reindex(self, key: bytes, old: bytes | None, expires_ms: int | None) -> None:
        old_expires = None if old is None else _expiry_of(old)
        if old_expires is not None:
            self.txn.delete(_expiry_key(self.tenant_prefix, old_expires, self.ns, key), db=self.expiry)
        if expires_ms is not None:
            where = self.ns.bucket.encode() + b"\0" + key
            self.txn.put(_expiry_key(self.tenant_prefix, expires_ms, self.ns, key), where, db=self.expiry)


class LmdbStore:
    """The local engine: an LMDB environment in a directory. Implements `kv.Store`.

    `fsync=False` (the default) survives the process being killed at any point;
    `fsync=True` also survives power loss, at the cost of an fsync per commit.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        fsync: bool = False,
        clock: Clock = time.time,
        map_size: int = DEFAULT_MAP_SIZE_BYTES,
    ) -> None:
        self.path = os.path.realpath(path)
        self._clock = clock
        self._closed = False
        try:
            os.makedirs(self.path, exist_ok=True)
        except OSError as exc:  # a file in the way, or no permission
            raise BackendUnavailable(f"cannot open the store at {self.path}: {exc.strerror}") from exc
        with _registry_lock:
            entry = _registry.get(self.path)
            if entry is None:
                try:
                    env = lmdb.open(
                        self.path,
                        map_size=map_size,
                        max_dbs=4,
                        sync=fsync,
                        metasync=fsync,
                        # readahead only helps scans of data that is not cached; point reads dominate.
                        readahead=False,
                        max_readers=1024,
                    )
                except lmdb.Error as exc:
                    raise BackendUnavailable(f"cannot open the store at {self.path}: {exc}") from exc
                if env.max_key_size() != _MAX_LMDB_KEY:
                    env.close()
                    raise BackendUnavailable(f"this LMDB build allows {env.max_key_size()}-byte keys; wasmkv needs 511")
                entry = _registry[self.path] = _Shared(env, fsync, map_size)
            elif (entry.fsync, entry.map_size) != (fsync, map_size):
                # One environment serves the whole process, so a second open cannot change its settings.
                raise InvalidArgument(
                    f"the store at {self.path} is already open in this process with fsync={entry.fsync}, "
                    f"map_size={entry.map_size}; open it again with the same settings"
                )
            entry.opened += 1
        self._env = entry.env
        self._write_lock = entry.write_lock
        self._data = self._env.open_db(b"data")
        self._expiry = self._env.open_db(b"expiry")
        self._usage = self._env.open_db(b"usage")

    # -- reads: one read transaction each, no lock ---------------------------------------------

    def get(self, ns: Namespace, key: bytes) -> bytes | None:
        """The live value, or None."""
        prefix = ns.prefix
        try:
            # Positional arguments: py-lmdb parses them measurably faster than keywords on this hot path.
            txn = self._env.begin(self._data, None, False, True)
        except lmdb.Error as exc:
            raise self._unavailable(exc) from exc
        try:
            if len(key) + len(prefix) >= _MAX_LMDB_KEY:
                return _live_value(_lookup(txn, self._data, prefix, key), now_ms(self._clock))
            # The common short key is read inline.
            record = txn.get(prefix + key)
            if record is None:
                return None
            if record[0] == _NO_TTL:
                return record[1:].tobytes()
            if int.from_bytes(record[1:9], "big") <= now_ms(self._clock):
                return None
            return record[9:].tobytes()
        finally:
            txn.abort()

    def get_many(self, ns: Namespace, keys: Sequence[bytes]) -> list[bytes | None]:
        """The live values, in the order of `keys`."""
        prefix = ns.prefix
        short = _MAX_LMDB_KEY - len(prefix)
        full = [prefix + key for key in keys]
        try:
            txn = self._env.begin(db=self._data)
        except lmdb.Error as exc:
            raise self._unavailable(exc) from exc
        try:
            now = now_ms(self._clock)
            if not keys or max(map(len, keys)) < short:
                # One C-level lookup loop for the whole batch, then one pass to unwrap the records.
                found = dict(txn.cursor().getmulti(full))
                return [
                    None if (r := found.get(k)) is None else r[1:] if r[0] == _NO_TTL else _live_value(r, now)
                    for k in full
                ]
            return [_live_value(_lookup(txn, self._data, prefix, key), now) for key in keys]
        except lmdb.Error as exc:
            raise self._unavailable(exc) from exc
        finally:
            txn.abort()

    def exists(self, ns: Namespace, key: bytes) -> bool:
        """Whether the key is live."""
        with self._read() as txn:
            record = _lookup(txn, self._data, ns.prefix, key)
            return _is_live(record, now_ms(self._clock))

    def ttl(self, ns: Namespace, key: bytes) -> int | None:
        """Milliseconds left before the key expires; None if it has no TTL or is missing."""
        with self._read() as txn:
            record = _lookup(txn, self._data, ns.prefix, key)
            if record is None or (expires := _expiry_of(record)) is None:
                return None
            left = expires - now_ms(self._clock)
            return left if left > 0 else None

    def list_keys(self, ns: Namespace, prefix: bytes, after: bytes | None, limit: int) -> tuple[list[bytes], bool]:
        """Up to `limit` live keys with `prefix` after `after`, in byte order, and whether more follow."""
        high = prefix_end(prefix)
        keys: list[bytes] = []
        with self._read() as txn:
            now = now_ms(self._clock)
            for key, record in _scan(txn.cursor(), ns.prefix, prefix if after is None else after):
                if (after is not None and key <= after) or key < prefix:
                    continue
                if high is not None and key >= high:
                    break
                if not _is_live(record, now):
                    continue
                if len(keys) == limit:
                    return keys, True
                keys.append(key)
        return keys, False

    def tenants(self) -> list[str]:
        """Every tenant that has written to this store, in byte order (each keeps a usage record)."""
        with self._read() as txn:
            return [bytes(name).decode() for name in txn.cursor(db=self._usage).iternext(keys=True, values=False)]

    def buckets(self, tenant: str) -> list[str]:
        """The tenant's buckets that hold at least one stored record, in byte order."""
        found: list[str] = []
        start = tenant.encode() + b"\0"
        with self._read() as txn:
            cursor = txn.cursor()
            position = cursor.set_range(start)
            while position:
                key = bytes(cursor.key())
                if not key.startswith(start):
                    break
                bucket = key[len(start) :].split(b"\0", 1)[0]
                found.append(bucket.decode())
                # Skip the rest of this bucket: its keys all sort before tenant NUL bucket 0x01.
                position = cursor.set_range(start + bucket + b"\1")
        return found

    def usage(self, tenant: str) -> Usage:
        """The tenant's live keys and bytes; sweeps its expired keys first so they never count."""
        with self._write() as txn:
            self._sweep_tenant(txn, tenant.encode() + b"\0", now_ms(self._clock), limit=None)
            keys, size = _read_usage(txn, self._usage, tenant.encode())
        return Usage(keys=keys, bytes=size)

    # -- writes: one write transaction each, serialized --------------------------------------

    def set(self, ns: Namespace, key: bytes, value: bytes, ttl_ms: int | None, quota: Quota) -> None:
        """Store a value, replacing any TTL with `ttl_ms`."""
        expires = None if ttl_ms is None else deadline_ms(self._clock, ttl_ms)

        def apply(w: _Writer) -> None:
            w.plan_put(key, value)
            self._charge(w, quota)
            w.put(key, value, expires)

        self._mutate(ns, apply)

    def set_many(self, ns: Namespace, items: Sequence[tuple[bytes, bytes]], quota: Quota) -> None:
        """Store several values at once, all or nothing; clears their TTLs."""
        # A key named twice takes its last value, as successive sets would.
        final = dict(items)

        def apply(w: _Writer) -> None:
            for key, value in final.items():
                w.plan_put(key, value)
            self._charge(w, quota)
            for key, value in final.items():
                w.put(key, value, None)

        self._mutate(ns, apply)

    def delete(self, ns: Namespace, key: bytes) -> bool:
        """Remove a key; True if it was live."""
        return self._mutate(ns, lambda w: w.remove(key))

    def delete_many(self, ns: Namespace, keys: Sequence[bytes]) -> int:
        """Remove keys; the number that were live."""
        unique = list(dict.fromkeys(keys))
        return self._mutate(ns, lambda w: sum(w.remove(key) for key in unique))

    def increment(self, ns: Namespace, key: bytes, delta: int, quota: Quota) -> int:
        """Add `delta` to a decimal counter (missing = 0), keeping its TTL; the new value."""

        def apply(w: _Writer) -> int:
            current, expires = w.live(key)
            total = add_counter(0 if current is None else parse_counter(current), delta)
            value = str(total).encode()
            if len(value) > quota.max_value_bytes:
                raise ValueTooLarge(f"value is {len(value)} bytes, over max_value_bytes {quota.max_value_bytes}")
            w.plan_put(key, value)
            self._charge(w, quota)
            w.put(key, value, expires)
            return total

        return self._mutate(ns, apply)

    def compare_and_swap(self, ns: Namespace, key: bytes, expected: bytes | None, new: bytes, quota: Quota) -> bool:
        """Set `new` (clearing the TTL) if the live value equals `expected` (None = absent)."""

        def apply(w: _Writer) -> bool:
            current, _ = w.live(key)
            if current != expected:
                return False
            w.plan_put(key, new)
            self._charge(w, quota)
            w.put(key, new, None)
            return True

        return self._mutate(ns, apply)

    def sweep(self, limit: int) -> int:
        """Reclaim up to `limit` expired keys across all tenants; the number reclaimed."""
        removed = 0
        with self._write() as txn:
            now = now_ms(self._clock)
            tenants = [bytes(t) for t in txn.cursor(db=self._usage).iternext(keys=True, values=False)]
            for tenant in tenants:
                removed += self._sweep_tenant(txn, tenant + b"\0", now, limit=limit - removed)
                if removed >= limit:
                    break
        return removed

    def close(self) -> None:
        """Release the environment once the last store on this directory closes; idempotent."""
        if self._closed:
            return
        self._closed = True
        with _registry_lock:
            entry = _registry[self.path]
            entry.opened -= 1
            if entry.opened == 0:
                del _registry[self.path]
                self._env.close()

    def __enter__(self) -> LmdbStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- internals -----------------------------------------------------------------------------

    def _unavailable(self, exc: lmdb.Error) -> BackendUnavailable:
        if self._closed:
            return BackendUnavailable("the store is closed")
        if isinstance(exc, lmdb.MapFullError):
            size = self._env.info()["map_size"]
            return BackendUnavailable(f"the store at {self.path} is full (map_size {size} bytes)")
        return BackendUnavailable(f"the store at {self.path} failed: {exc}")

    @contextmanager
    def _read(self) -> Iterator[lmdb.Transaction]:
        try:
            txn = self._env.begin(self._data, None, False, True)
        except lmdb.Error as exc:
            raise self._unavailable(exc) from exc
        try:
            yield txn
        except lmdb.Error as exc:
            raise self._unavailable(exc) from exc
        finally:
            txn.abort()

    @contextmanager
    def _write(self) -> Iterator[lmdb.Transaction]:
        # Our lock keeps threads of this process off LMDB's writer mutex, which
        # would otherwise park them inside C; LMDB still serializes other processes.
        with self._write_lock:
            try:
                txn = self._env.begin(db=self._data, write=True)
            except lmdb.Error as exc:
                raise self._unavailable(exc) from exc
            try:
                yield txn
                txn.commit()
            except lmdb.Error as exc:
                txn.abort()
                raise self._unavailable(exc) from exc
            except BaseException:
                txn.abort()
                raise

    def _mutate(self, ns: Namespace, apply: Callable[[_Writer], T]) -> T:
        with self._write() as txn:
            now = now_ms(self._clock)
            writer = _Writer(txn, self._data, self._expiry, ns, now)
            try:
                result = apply(writer)
            except QuotaExceeded:
                # Usage counts expired records too; drop them and decide again.
                # `apply` raises before it changes anything, so it can run twice.
                if not self._sweep_tenant(txn, writer.tenant_prefix, now, limit=None):
                    raise
                writer = _Writer(txn, self._data, self._expiry, ns, now)
                result = apply(writer)
            self._add_usage(txn, writer.tenant_prefix[:-1], writer.add_keys, writer.add_bytes)
            return result

    def _charge(self, w: _Writer, quota: Quota) -> None:
        keys, size = _read_usage(w.txn, self._usage, w.tenant_prefix[:-1])
        quota.check(Usage(keys=keys, bytes=size), w.add_keys, w.add_bytes)

    def _add_usage(self, txn: lmdb.Transaction, tenant: bytes, add_keys: int, add_bytes: int) -> None:
        if not add_keys and not add_bytes:
            return
        keys, size = _read_usage(txn, self._usage, tenant)
        keys += add_keys
        size += add_bytes
        txn.put(tenant, keys.to_bytes(8, "big", signed=True) + size.to_bytes(8, "big", signed=True), db=self._usage)

    def _sweep_tenant(self, txn: lmdb.Transaction, tenant_prefix: bytes, now: int, limit: int | None) -> int:
        cursor = txn.cursor(db=self._expiry)
        removed = 0
        removed_bytes = 0
        start = len(tenant_prefix)
        if cursor.set_range(tenant_prefix):
            while limit is None or removed < limit:
                index_key = bytes(cursor.key())
                if not index_key.startswith(tenant_prefix):
                    break
                expires = int.from_bytes(index_key[start : start + 8], "big")
                if expires > now:
                    break
                bucket, key = bytes(cursor.value()).split(b"\0", 1)
                prefix = tenant_prefix + bucket + b"\0"
                record = _lookup(txn, self._data, prefix, key)
                if record is not None and _expiry_of(record) == expires:
                    _replace(txn, self._data, prefix, key, None)
                    removed += 1
                    removed_bytes += len(key) + _stored_len(record)
                if not cursor.delete():
                    break
        if removed:
            self._add_usage(txn, tenant_prefix[:-1], -removed, -removed_bytes)
        return removed
