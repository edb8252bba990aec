"""The embedded engine: LMDB, through the `lmdb` package.

Chosen by measurement on this machine (`bench/bench_store.py`): a point read in a
fresh read transaction costs ~0.55 µs against ~3.9 µs for a SQLite SELECT, and
a committed write ~3.7 µs against ~10 µs for SQLite in WAL mode. LMDB commits
are copy-on-write with an atomic meta-page switch, so a process killed at any
moment leaves the last committed transaction intact; several processes may
open one directory and LMDB serializes their writers.

The record layout (values with expiries, long keys in boxes, the expiry index)
is in `kv._lmdb_layout`; this module owns the environment and its transactions.
Two more databases: `tenants` (tenant → its stored quota) and `meta` (the
store's format version, checked when a store opens: an older format is upgraded
in place, a newer one refused).

Usage counts stored records, so it can only overstate live usage; a write that
fails the quota check sweeps the tenant's expired records and checks again,
which makes the check exact without a sweep on every write.

The environment's opening, its format and its map (size, growth, the writable
map) are in `kv._lmdb_env`.

Remapping needs every transaction of this process closed (py-lmdb unmaps the
file under any view a read still holds), and py-lmdb 2.3+ aborts a write only
once no operation is in flight, which reads on other threads can put off for
ever. So writes, already serialized by a lock, can hold reads off: each read
announces itself in a shared list (an append and a pop, atomic in CPython) and
then checks a flag; a writer raises the flag and waits for the list to empty.
A read's whole cost is that append, pop and flag test; a committed write pays nothing.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from itertools import repeat
from operator import itemgetter
from threading import get_ident
from typing import Final, Literal, TypeVar, cast, overload

import lmdb

from ._errors import BackendUnavailable, InvalidArgument, QuotaExceeded, ValueTooLarge
from ._lmdb_env import (
    DEFAULT_MAP_SIZE_BYTES,
    DEFAULT_MAX_MAP_SIZE_BYTES,
    map_size_bytes,
    open_shared,
    registry,
    registry_lock,
    remap_backed,
    unmark_writemap,
)
from ._lmdb_layout import (
    NO_TTL,
    SHORT_ROOM,
    Writer,
    expiry_key,
    expiry_of,
    fast_keys,
    fast_scan,
    holds_long_key,
    is_live,
    live_value,
    lookup,
    page_keys,
    page_pairs,
    read_usage,
    replace,
    scan,
    scan_back,
    stored_len,
)
from ._protocol import ScanItem
from ._rules import (
    Clock,
    KeyRange,
    Namespace,
    Quota,
    Usage,
    add_counter,
    deadline_ms,
    now_ms,
    parse_counter,
    values_too_heavy,
)

__all__ = ["LmdbStore"]

#: How long holding reads off sleeps between looks at the reads it waits out (reads take microseconds).
_DRAIN_POLL_S: Final = 20e-6

#: Records a bounded `get_many` reads between looks at their weight (see `_get_within`).
_GETS_PER_LOOK: Final = 32
#: A record's longest header: the flag byte and, with a TTL, the 8-byte expiry.
_RECORD_HEADER_MAX: Final = 9

T = TypeVar("T")


def _walk(
    cursor: lmdb.Cursor, prefix: bytes, key_range: KeyRange, after: bytes | None
) -> Iterator[tuple[bytes, bytes | memoryview]]:
    """The (key, record) pairs of `key_range` past `after`, in the range's order, live or not."""
    low, high = key_range.low, key_range.high
    if key_range.empty():
        return
    if not key_range.reverse:
        pairs = scan(cursor, prefix, low if after is None else after)
        # First skip what lies before the range or up to `after` (a long-key group can put a few
        # there); from then on only the upper bound is checked.
        for key, record in pairs:
            if key < low or (after is not None and key <= after):
                continue
            if high is not None and key >= high:
                return
            yield key, record
            break
        if high is None:
            yield from pairs
            return
        for key, record in pairs:
            if key >= high:
                return
            yield key, record
        return
    top = high if after is None or (high is not None and high < after) else after
    for key, record in scan_back(cursor, prefix, top):
        if (top is not None and key >= top) or (after is not None and key >= after):
            continue
        if key < low:
            return
        yield key, record


_FLAG: Final = itemgetter(0)
_AFTER_FLAG: Final = itemgetter(slice(1, None))


def _live_page(
    pairs: list[tuple[bytes, bytes]], base: int, max_bytes: int, now: int, more: bool
) -> tuple[bytes, list[bytes], list[int | None], bool]:
    """A page of `scan` from the (stored key, record) pairs of a range whose records are all live: the stored
    keys joined, values and ms left of those that fit `max_bytes` (namespace prefix of `base` bytes not
    counted), and whether more follow (`more`: more than `pairs` do). One step per pair."""
    kept: list[bytes] = []
    values: list[bytes] = []
    lefts: list[int | None] = []
    size = 0
    for key, record in pairs:
        left: int | None = None
        if record[0]:
            left = int.from_bytes(record[1:9], "big") - now
            if left <= 0:
                continue
            value = record[9:]
        else:
            value = record[1:]
        size += len(key) - base + len(value)
        if size > max_bytes and kept:
            return b"".join(kept), values, lefts, True
        kept.append(key)
        values.append(value)
        lefts.append(left)
    return b"".join(kept), values, lefts, more


def _live(record: bytes | memoryview | None, now: int) -> tuple[bytes | None, int | None]:
    """A short key's stored record as `Writer.live` reads it: its live value and expiry, or (None, None)."""
    if record is None:
        return None, None
    if record[0] == NO_TTL:
        return bytes(record[1:]), None
    expires = int.from_bytes(record[1:9], "big")
    return (bytes(record[9:]), expires) if expires > now else (None, None)


class LmdbStore:
    """The local engine: an LMDB environment in a directory. Implements `kv.Store`.

    `fsync=False` (the default) survives the process being killed at any point;
    `fsync=True` also survives power loss, at the cost of an fsync per commit.
    `map_size` is the address space reserved for the data (default 64 GiB, at
    least 1 MiB, rounded up to whole pages); a write that finds it full doubles
    it, up to `max_map_size` (default 1 TiB) or `map_size` if that is larger.
    None for either means the default, or the setting the store already has when
    it is open in this process; all stores on one directory share one environment.

    Raises:
        BackendUnavailable: if the directory cannot be opened as a store.
        InvalidArgument: if a map size is not an integer of at least 1 MiB, or the
            store is already open in this process with other settings.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        fsync: bool = False,
        clock: Clock = time.time,
        map_size: int | None = None,
        max_map_size: int | None = None,
        writemap: bool | None = None,
    ) -> None:
        if writemap is not None and type(writemap) is not bool:
            raise InvalidArgument(f"writemap must be True, False or None, got {writemap!r}")
        asked = None if map_size is None else map_size_bytes("map_size", map_size)
        asked_max = None if max_map_size is None else map_size_bytes("max_map_size", max_map_size)
        self.path = os.path.realpath(path)
        self._clock = clock
        self._closed = False
        try:
            # Private regardless of the umask: the directory 0700 and (below) its files 0600.
            os.makedirs(self.path, mode=0o700, exist_ok=True)
        except OSError as exc:  # a file in the way, or no permission
            raise BackendUnavailable(f"cannot open the store at {self.path}: {exc.strerror}") from exc
        with registry_lock:
            entry = registry.get(self.path)
            if entry is None:
                map_size = DEFAULT_MAP_SIZE_BYTES if asked is None else asked
                cap = max(map_size, DEFAULT_MAX_MAP_SIZE_BYTES if asked_max is None else asked_max)
                entry = registry[self.path] = open_shared(self.path, fsync, map_size, cap, writemap)
            elif (
                entry.fsync != fsync
                or asked not in (None, entry.map_size)
                or (asked_max is not None and max(entry.map_size, asked_max) != entry.max_map_size)
                or writemap not in (None, entry.writemap)
            ):
                # One environment serves the whole process, so a second open cannot change its settings.
                raise InvalidArgument(
                    f"the store at {self.path} is already open in this process with fsync={entry.fsync}, "
                    f"map_size={entry.map_size}, max_map_size={entry.max_map_size}, writemap={entry.writemap}; "
                    "open it again with the same settings"
                )
            entry.opened += 1
        self._shared = entry
        entry.stores.add(self)  # a child process stops it after a fork (kv._lmdb_env)
        self._env = entry.env
        self._write_lock = entry.write_lock
        self._readers = entry.readers
        self._data = entry.data
        self._expiry = entry.expiry
        self._usage = entry.usage
        self._tenants = entry.tenants

    @property
    def map_size(self) -> int:
        """The bytes the map spans now (it may have grown since the store opened)."""
        return int(self._env.info()["map_size"])

    @property
    def max_map_size(self) -> int:
        """The most the map grows to."""
        return self._shared.max_map_size

    @property
    def writemap(self) -> bool:
        """Whether LMDB writes through a writable map (every byte of it allocated on disk)."""
        return self._shared.writemap

    # -- reads: one read transaction each, no lock ---------------------------------------------

    def get(self, ns: Namespace, key: bytes) -> bytes | None:
        """The live value, or None."""
        prefix = ns.prefix
        if len(key) + len(prefix) > SHORT_ROOM:
            with self._read() as txn:
                return live_value(lookup(txn, self._data, prefix, key), now_ms(self._clock))
        # The common short key, inline: the announcement and transaction of `_read` without its generator.
        readers = self._readers
        ident = get_ident()
        readers.append(ident)  # this read is in flight: holding reads off (a remap) waits for it to end
        try:
            if readers[0]:
                self._wait_for_reads()
            try:
                # Without buffers the record comes as bytes, copied in C: cheaper than a view and a copy
                # of its slice. Positional arguments: py-lmdb parses them measurably faster than keywords.
                txn = self._env.begin(self._data)
            except lmdb.Error as exc:
                txn = self._begin_read_again(exc, False)
            try:
                record = txn.get(prefix + key)
            except lmdb.Error as exc:
                raise self._unavailable(exc) from exc
            finally:
                txn.abort()
        finally:
            readers.remove(ident)
        # Bytes of our own: read once the transaction is over.
        if record is None:
            return None
        if not record[0]:  # NO_TTL
            return record[1:]
        if int.from_bytes(record[1:9], "big") <= now_ms(self._clock):
            return None
        return record[9:]

    def reader(self, ns: Namespace) -> Callable[[bytes], bytes | None]:
        """`get` for the namespace `ns`, with what it looks up bound once (`kv._protocol.DirectReads`)."""
        prefix = ns.prefix
        short = SHORT_ROOM - len(prefix)
        readers = self._readers
        announce, withdraw = readers.append, readers.remove
        begin = self._env.begin
        data = self._data
        clock = self._clock
        get = self.get

        def read(key: bytes) -> bytes | None:
            if len(key) > short:
                return get(ns, key)
            # As `get`, line for line: see there.
            ident = get_ident()
            announce(ident)
            try:
                if readers[0]:
                    self._wait_for_reads()
                try:
                    txn = begin(data)
                except lmdb.Error as exc:
                    txn = self._begin_read_again(exc, False)
                try:
                    record = txn.get(prefix + key)
                except lmdb.Error as exc:
                    raise self._unavailable(exc) from exc
                finally:
                    txn.abort()
            finally:
                withdraw(ident)
            if record is None:
                return None
            if not record[0]:  # NO_TTL
                return record[1:]
            if int.from_bytes(record[1:9], "big") <= now_ms(clock):
                return None
            return record[9:]

        return read

    def get_many(self, ns: Namespace, keys: Sequence[bytes], max_bytes: int | None = None) -> list[bytes | None]:
        """The live values, in the order of `keys`; see `get_many_stored` for `max_bytes`."""
        if not keys:
            return []
        prefix = ns.prefix
        if max(map(len, keys)) > SHORT_ROOM - len(prefix):
            with self._read() as txn:
                now = now_ms(self._clock)
                if max_bytes is None:
                    return [live_value(lookup(txn, self._data, prefix, key), now) for key in keys]
                values: list[bytes | None] = []
                size = 0
                for key in keys:
                    value = live_value(lookup(txn, self._data, prefix, key), now)
                    if value is not None:
                        size += len(value)
                        if size > max_bytes:
                            raise values_too_heavy(max_bytes)
                    values.append(value)
                return values
        # Every stored key at once, in C (keys hold no control character): prefix + key for each.
        return self._get_stored(ns, (prefix + (b"\n" + prefix).join(keys)).split(b"\n"), max_bytes)

    def get_many_stored(
        self, ns: Namespace, stored: list[bytes], longest: int, max_bytes: int | None = None
    ) -> list[bytes | None]:
        """As `get_many`, the keys given as stored (`kv._protocol.DirectReads`).

        Raises:
            ValueTooLarge: if the values found weigh more than `max_bytes` together; at most
                `_GETS_PER_LOOK` records past that bound were read.
        """
        if longest > SHORT_ROOM:  # a long key is among them: see `get_many`
            cut = len(ns.prefix)
            return self.get_many(ns, [key[cut:] for key in stored], max_bytes)
        return self._get_stored(ns, stored, max_bytes)

    def _get_stored(self, ns: Namespace, stored: list[bytes], max_bytes: int | None = None) -> list[bytes | None]:
        """The live values of short keys given as stored (prefix + key), in order."""
        txn = self._open_read()  # without buffers: each record comes as bytes, copied in C
        try:
            # A loop of gets beats getmulti on random keys (measured: 120 against 180 us for 100 of
            # 200k keys) and keeps the request's order; `map` runs that loop in C.
            records = list(map(txn.get, stored)) if max_bytes is None else self._get_within(txn, stored, max_bytes)
            no_ttl = self._earliest_expiry(txn, ns) is None
        except lmdb.Error as exc:
            raise self._unavailable(exc) from exc
        finally:
            self._close_read(txn)
        if None not in records and (no_ttl or not any(map(_FLAG, cast(list[bytes], records)))):
            # All present, none with a TTL: the values are the records past their flag, one pass in C.
            return list(map(_AFTER_FLAG, cast(list[bytes], records)))
        now = now_ms(self._clock)
        return [
            None if record is None else record[1:] if not record[0] else live_value(record, now) for record in records
        ]

    @staticmethod
    def _get_within(txn: lmdb.Transaction[bytes], stored: list[bytes], max_bytes: int) -> list[bytes | None]:
        """The records at `stored`, read `_GETS_PER_LOOK` at a time until their values weigh more than `max_bytes`.

        Raises:
            ValueTooLarge: once they do (expired values are weighed too: a bound on what was read).
        """
        get = txn.get
        records: list[bytes | None] = []
        size = 0
        for at in range(0, len(stored), _GETS_PER_LOOK):
            chunk = list(map(get, stored[at : at + _GETS_PER_LOOK]))
            records += chunk
            # At least what the values weigh: each record is its value behind a header of up to 9 bytes.
            size += sum(map(len, filter(None, chunk))) - _RECORD_HEADER_MAX * len(chunk)
            if size > max_bytes:
                raise values_too_heavy(max_bytes)
        return records

    def exists(self, ns: Namespace, key: bytes) -> bool:
        """Whether the key is live."""
        with self._read() as txn:
            record = lookup(txn, self._data, ns.prefix, key)
            return is_live(record, now_ms(self._clock))

    def ttl(self, ns: Namespace, key: bytes) -> int | None:
        """Milliseconds left before the key expires; None if it has no TTL or is missing."""
        with self._read() as txn:
            record = lookup(txn, self._data, ns.prefix, key)
            if record is None or (expires := expiry_of(record)) is None:
                return None
            left = expires - now_ms(self._clock)
            return left if left > 0 else None

    def list_keys(
        self, ns: Namespace, key_range: KeyRange, after: bytes | None, limit: int
    ) -> tuple[list[bytes], bool]:
        """Up to `limit` live keys of `key_range` past `after`, in its order, and whether more follow."""
        joined, more = self._key_page(ns, key_range, after, limit)
        # The namespace prefix off every key in one split (it holds NUL, which no key does).
        keys = joined.split(ns.prefix)
        del keys[0]  # what precedes the first prefix: nothing
        return keys, more

    def list_keys_text(
        self, ns: Namespace, key_range: KeyRange, after: bytes | None, limit: int
    ) -> tuple[list[str], bool]:
        """As `list_keys`, the keys decoded (`kv._protocol.DirectReads`)."""
        joined, more = self._key_page(ns, key_range, after, limit)
        keys = joined.decode().split(ns.prefix.decode())
        del keys[0]
        return keys, more

    def scan(
        self, ns: Namespace, key_range: KeyRange, after: bytes | None, limit: int, max_bytes: int
    ) -> tuple[list[ScanItem], bool]:
        """As `list_keys`, with each key's value and TTL left, read from one read transaction."""
        joined, values, left, more = self._scan_page(ns, key_range, after, limit, max_bytes)
        keys = joined.split(ns.prefix)
        del keys[0]
        return list(zip(keys, values, repeat(None) if left is None else left, strict=False)), more

    def scan_text(
        self, ns: Namespace, key_range: KeyRange, after: bytes | None, limit: int, max_bytes: int
    ) -> tuple[list[tuple[str, bytes]], bool]:
        """As `scan`, the keys decoded and without the TTLs (`kv._protocol.DirectReads`)."""
        joined, values, _, more = self._scan_page(ns, key_range, after, limit, max_bytes)
        keys = joined.decode().split(ns.prefix.decode())
        del keys[0]
        return list(zip(keys, values, strict=True)), more

    def _key_page(self, ns: Namespace, key_range: KeyRange, after: bytes | None, limit: int) -> tuple[bytes, bool]:
        """A page of `list_keys` as its stored keys (namespace prefix included) joined, and whether more follow."""
        prefix = ns.prefix
        txn = self._open_read()
        try:
            earliest = self._earliest_expiry(txn, ns)
            if earliest is None or earliest > now_ms(self._clock):
                # Every stored record is live: the keys alone make the page, their records unread.
                stored = page_keys(txn.cursor(), prefix, key_range, after, limit + 1)
                if stored is not None:
                    more = len(stored) > limit
                    joined = b"".join(stored[:limit] if more else stored)
                    if not holds_long_key(joined):  # else the general path
                        return joined, more
            now = now_ms(self._clock)
            found = fast_keys(txn.cursor(), prefix, key_range, after, limit, now)
            if found is not None:
                return b"".join(prefix + key for key in found[0]), found[1]
            keys: list[bytes] = []
            for key, record in _walk(txn.cursor(), prefix, key_range, after):
                if is_live(record, now):
                    if len(keys) == limit:
                        return b"".join(keys), True
                    keys.append(prefix + key)
            return b"".join(keys), False
        except lmdb.Error as exc:
            raise self._unavailable(exc) from exc
        finally:
            self._close_read(txn)

    def _scan_page(
        self, ns: Namespace, key_range: KeyRange, after: bytes | None, limit: int, max_bytes: int
    ) -> tuple[bytes, Iterable[bytes], list[int | None] | None, bool]:
        """A page of `scan`: its stored keys (namespace prefix included) joined, their values (to be
        read once), their ms left (None when no key of the page has a TTL) and whether more follow."""
        prefix = ns.prefix
        txn = self._open_read()  # without buffers: LMDB copies each record into bytes, in C
        try:
            now = now_ms(self._clock)
            earliest = self._earliest_expiry(txn, ns)
            if earliest is None or earliest > now:
                # Every stored record is live: LMDB's iterator reads the page, a few passes in C shape it.
                paged = page_pairs(txn.cursor(), prefix, key_range, after, limit + 1, max_bytes)
                if paged is not None:
                    stored, records, record_bytes = paged
                    more = len(stored) > limit
                    if more:
                        record_bytes -= sum(map(len, records[limit:]))
                        del stored[limit:], records[limit:]
                    if not stored:
                        return b"", [], None, False
                    joined = b"".join(stored)
                    if not holds_long_key(joined):  # else the general path
                        # Without a TTL on the page (none in the tenant, or none among these records) each
                        # value is its record past the flag byte; if keys and values fit max_bytes, that is
                        # the page. Otherwise it is shaped item by item.
                        size = len(joined) - (len(prefix) + 1) * len(records) + record_bytes
                        if (earliest is None or not any(map(_FLAG, records))) and size <= max_bytes:
                            return joined, map(_AFTER_FLAG, records), None, more
                        return _live_page(list(zip(stored, records, strict=True)), len(prefix), max_bytes, now, more)
            found = fast_scan(txn.cursor(), prefix, key_range, after, limit, max_bytes, now)
            if found is not None:
                items, more = found
            else:
                items, more = self._walk_scan(txn, prefix, key_range, after, limit, max_bytes, now)
            joined = b"".join(prefix + key for key, _, _ in items)
            return joined, [value for _, value, _ in items], [left for _, _, left in items], more
        except lmdb.Error as exc:
            raise self._unavailable(exc) from exc
        finally:
            self._close_read(txn)

    def _walk_scan(
        self,
        txn: lmdb.Transaction,
        prefix: bytes,
        key_range: KeyRange,
        after: bytes | None,
        limit: int,
        max_bytes: int,
        now: int,
    ) -> tuple[list[ScanItem], bool]:
        """The general path of `scan`, past long keys."""
        items: list[ScanItem] = []
        size = 0
        # The record layout (layout.value_of, expiry_of) inlined: this loop is the scan's cost.
        for key, record in _walk(txn.cursor(), prefix, key_range, after):
            if record[0] == NO_TTL:
                value = bytes(record[1:])
                left = None
            else:
                left = int.from_bytes(record[1:9], "big") - now
                if left <= 0:
                    continue
                value = bytes(record[9:])
            if len(items) == limit:
                return items, True
            size += len(key) + len(value)
            if items and size > max_bytes:
                return items, True
            items.append((key, value, left))
        return items, False

    def _earliest_expiry(self, txn: lmdb.Transaction[bytes], ns: Namespace) -> int | None:
        """When the first record with a TTL of the namespace's tenant expires (epoch ms); None if it has none.

        Every record with a TTL has its entry in the expiry index, in the order of
        expiry (see `kv._lmdb_layout`): the tenant's first entry is one cursor step.
        A record without one has the flag `NO_TTL`, or is a long key's.
        """
        tenant = ns.prefix[: len(ns.tenant) + 1]  # tenant NUL (tenant names are ASCII)
        cursor = txn.cursor(self._expiry)
        if not cursor.set_range(tenant):
            return None
        first = cursor.key()
        return int.from_bytes(first[len(tenant) : len(tenant) + 8], "big") if first.startswith(tenant) else None

    def tenants(self) -> list[str]:
        """Every tenant with a stored quota or data in this store, in byte order."""
        with self._read() as txn:
            names = {bytes(name) for name in txn.cursor(db=self._usage).iternext(keys=True, values=False)}
            names.update(bytes(name) for name in txn.cursor(db=self._tenants).iternext(keys=True, values=False))
        return [name.decode() for name in sorted(names)]

    def tenant_quota(self, tenant: str) -> Quota | None:
        """The quota stored with the tenant, or None if it has no record."""
        with self._read() as txn:
            record = txn.get(tenant.encode(), db=self._tenants)
            return None if record is None else Quota.from_record(bytes(record))

    def put_tenant_quota(self, tenant: str, quota: Quota, *, only_if_absent: bool = False) -> Quota:
        """Store the tenant's quota atomically (only if it has none, with `only_if_absent`); the quota stored now."""
        name = tenant.encode()

        def put(txn: lmdb.Transaction) -> Quota:
            if only_if_absent and (record := txn.get(name, db=self._tenants)) is not None:
                return Quota.from_record(bytes(record))
            txn.put(name, quota.to_record(), db=self._tenants)
            return quota

        return self._transact(put)

    def delete_tenant(self, tenant: str) -> int:
        """Remove every key of the tenant, its expiry index, its usage and its record; the number of keys removed."""
        prefix = tenant.encode() + b"\0"

        def delete(txn: lmdb.Transaction) -> int:
            removed = 0
            for db, count in ((self._data, True), (self._expiry, False)):
                cursor = txn.cursor(db=db)
                found = cursor.set_range(prefix)
                while found and bytes(cursor.key()).startswith(prefix):
                    removed += count
                    found = cursor.delete()
            txn.delete(prefix[:-1], db=self._usage)
            txn.delete(prefix[:-1], db=self._tenants)
            return removed

        return self._transact(delete)

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

        def sweep_and_count(txn: lmdb.Transaction) -> Usage:
            self._sweep_tenant(txn, tenant.encode() + b"\0", now_ms(self._clock), limit=None)
            keys, size = read_usage(txn, self._usage, tenant.encode())
            return Usage(keys=keys, bytes=size)

        return self._transact(sweep_and_count)

    # -- writes: one write transaction each, serialized --------------------------------------

    def set(self, ns: Namespace, key: bytes, value: bytes, ttl_ms: int | None, quota: Quota) -> None:
        """Store a value, replacing any TTL with `ttl_ms`."""
        if (
            ttl_ms is None
            and len(ns.prefix) + len(key) <= SHORT_ROOM
            and self._transact(self._set_short(ns, key, value, quota))
        ):
            return
        expires = None if ttl_ms is None else deadline_ms(self._clock, ttl_ms)

        def apply(w: Writer) -> None:
            w.plan_put(key, value)
            self._charge(w, quota)
            w.put(key, value, expires)

        self._mutate(ns, apply)

    def _set_short(self, ns: Namespace, key: bytes, value: bytes, quota: Quota) -> Callable[[lmdb.Transaction], bool]:
        """The body of the common `set` (a short key, no TTL); False, having changed nothing, if the quota is in
        the way (then `set` takes the general path, which sweeps the tenant's expired keys and decides again)."""
        where = ns.prefix + key

        def body(txn: lmdb.Transaction) -> bool:
            return self._put_short(txn, ns, key, where, txn.get(where), value, None, quota)

        return body

    def _put_short(
        self,
        txn: lmdb.Transaction,
        ns: Namespace,
        key: bytes,
        where: bytes,
        old: bytes | memoryview | None,
        value: bytes,
        expires: int | None,
        quota: Quota,
    ) -> bool:
        """`Writer.plan_put`, the quota check and `Writer.put` for a short key, the record layout inlined.

        `where` is the key's slot (`ns.prefix + key`) and `old` what it holds: never a long
        key's record, whose slots hold 0xFF, which no key does. False, having changed
        nothing, if the write would pass the quota, or if `old` has expired (the general path counts
        its key as coming back to life, which usage, counting the expired record still, does not show).
        """
        if old is not None and old[0] != NO_TTL and int.from_bytes(old[1:9], "big") <= now_ms(self._clock):
            return False
        if old is None:
            add_keys, add_bytes = 1, len(key) + len(value)
        else:
            add_keys, add_bytes = 0, len(value) - stored_len(old)
        tenant = ns.tenant.encode()
        read = None
        if add_keys > 0 or add_bytes > 0:
            read = keys, size = read_usage(txn, self._usage, tenant)
            try:
                quota.check(Usage(keys=keys, bytes=size), add_keys, add_bytes)
            except QuotaExceeded:
                return False
        txn.put(where, b"\0" + value if expires is None else b"\1" + expires.to_bytes(8, "big") + value)
        old_expires = None if old is None or old[0] == NO_TTL else int.from_bytes(old[1:9], "big")
        if old_expires != expires:  # the expiry index in step (an unchanged TTL keeps its entry)
            if old_expires is not None:
                txn.delete(expiry_key(tenant + b"\0", old_expires, ns, key), db=self._expiry)
            if expires is not None:
                txn.put(expiry_key(tenant + b"\0", expires, ns, key), ns.bucket.encode() + b"\0" + key, db=self._expiry)
        if read is not None or add_bytes:
            self._add_usage(txn, tenant, add_keys, add_bytes, read)
        return True

    def set_many(self, ns: Namespace, items: Sequence[tuple[bytes, bytes]], quota: Quota) -> None:
        """Store several values at once, all or nothing; clears their TTLs."""
        # A key named twice takes its last value, as successive sets would.
        final = dict(items)

        def apply(w: Writer) -> None:
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
        if len(ns.prefix) + len(key) <= SHORT_ROOM:
            where = ns.prefix + key

            def short(txn: lmdb.Transaction) -> int | None:
                old = txn.get(where)
                current, expires = _live(old, now_ms(self._clock))
                total = add_counter(0 if current is None else parse_counter(current), delta)
                value = str(total).encode()
                if len(value) > quota.max_value_bytes:
                    raise ValueTooLarge(f"value is {len(value)} bytes, over max_value_bytes {quota.max_value_bytes}")
                return total if self._put_short(txn, ns, key, where, old, value, expires, quota) else None

            if (counted := self._transact(short)) is not None:
                return counted

        def apply(w: Writer) -> int:
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
        if len(ns.prefix) + len(key) <= SHORT_ROOM:
            where = ns.prefix + key

            def short(txn: lmdb.Transaction) -> bool | None:
                old = txn.get(where)
                if _live(old, now_ms(self._clock))[0] != expected:
                    return False
                return True if self._put_short(txn, ns, key, where, old, new, None, quota) else None

            if (swapped := self._transact(short)) is not None:
                return swapped

        def apply(w: Writer) -> bool:
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

        def sweep(txn: lmdb.Transaction) -> int:
            removed = 0
            now = now_ms(self._clock)
            tenants = [bytes(t) for t in txn.cursor(db=self._usage).iternext(keys=True, values=False)]
            for tenant in tenants:
                removed += self._sweep_tenant(txn, tenant + b"\0", now, limit=limit - removed)
                if removed >= limit:
                    break
            return removed

        return self._transact(sweep)

    def close(self) -> None:
        """Release the environment once the last store on this directory closes; idempotent."""
        if self._closed:
            return
        self._closed = True
        with registry_lock:
            entry = registry[self.path]
            entry.opened -= 1
            if entry.opened == 0:
                del registry[self.path]
                if entry.files is not None:
                    with entry.write_lock:
                        unmark_writemap(entry.env, entry.files)
                self._env.close()
                if entry.files is not None:
                    entry.files.close()  # after the environment: it releases this process's writemap lock

    def __enter__(self) -> LmdbStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- internals -----------------------------------------------------------------------------

    def _unavailable(self, exc: lmdb.Error) -> BackendUnavailable:
        if self._closed:
            return BackendUnavailable("the store is closed")
        if isinstance(exc, lmdb.MapFullError):
            return self._full(self._env.info()["map_size"])
        if "No space left on device" in str(exc):
            return BackendUnavailable(
                f"the disk under the store at {self.path} is full: free space on it, then retry (nothing was written)"
            )
        return BackendUnavailable(f"the store at {self.path} failed: {exc}")

    def _open_read(self) -> lmdb.Transaction[bytes]:
        """Announce a read of this thread and begin its transaction, without buffers; `_close_read` ends both.

        `_read(buffers=False)` without its generator, for the reads that pages and batches make.
        """
        readers = self._readers
        readers.append(get_ident())
        try:
            if readers[0]:
                self._wait_for_reads()
            try:
                return self._env.begin(self._data)
            except lmdb.Error as exc:
                return self._begin_read_again(exc, False)
        except BaseException:
            readers.remove(get_ident())
            raise

    def _close_read(self, txn: lmdb.Transaction) -> None:
        try:
            txn.abort()
        finally:
            self._readers.remove(get_ident())

    @contextmanager
    def _read(self, *, buffers: bool = True) -> Iterator[lmdb.Transaction]:
        # buffers=True: records come as views into the map, copied only where kept.
        readers = self._readers
        readers.append(get_ident())
        try:
            if readers[0]:
                self._wait_for_reads()
            txn: lmdb.Transaction
            try:
                txn = self._env.begin(self._data, None, False, True) if buffers else self._env.begin(self._data)
            except lmdb.Error as exc:
                txn = self._begin_read_again(exc, buffers)
            try:
                yield txn
            except lmdb.Error as exc:
                raise self._unavailable(exc) from exc
            finally:
                txn.abort()
        finally:
            readers.remove(get_ident())

    def _wait_for_reads(self) -> None:
        """With this read announced and reads held off: withdraw it until they may go on."""
        readers = self._readers
        while readers[0]:
            readers.remove(get_ident())
            try:
                with self._shared.hold_lock:
                    pass
            finally:
                readers.append(get_ident())

    @overload
    def _begin_read_again(self, exc: lmdb.Error, buffers: Literal[True]) -> lmdb.Transaction[memoryview]: ...
    @overload
    def _begin_read_again(self, exc: lmdb.Error, buffers: Literal[False]) -> lmdb.Transaction[bytes]: ...
    @overload
    def _begin_read_again(self, exc: lmdb.Error, buffers: bool) -> lmdb.Transaction: ...
    def _begin_read_again(self, exc: lmdb.Error, buffers: bool) -> lmdb.Transaction:
        """A read transaction, after one failed to begin with `exc`; the read stays announced.

        Another process may have grown the map and written past ours (MDB_MAP_RESIZED):
        then adopt the size the file records and begin again.

        Raises:
            BackendUnavailable: for any other failure.
        """
        while isinstance(exc, lmdb.MapResizedError):
            readers = self._readers
            readers.remove(get_ident())  # holding reads off waits for every announced read, this one included
            try:
                with self._write_lock, self._reads_held():
                    self._remap(0)
            finally:
                readers.append(get_ident())
            if readers[0]:
                self._wait_for_reads()
            try:
                return self._env.begin(self._data, None, False, True) if buffers else self._env.begin(self._data)
            except lmdb.Error as again:
                exc = again
        raise self._unavailable(exc) from exc

    def _full(self, size: int) -> BackendUnavailable:
        cap = self._shared.max_map_size
        return BackendUnavailable(
            f"the store at {self.path} is full (map_size {size} bytes) and grows to {cap} bytes at most: nothing "
            "was written; delete keys, or open it with a larger map_size (map_size in wasmkv.toml's [store], or "
            "KvStore.open(map_size=...))"
        )

    def _transact(self, body: Callable[[lmdb.Transaction], T]) -> T:
        """`body`'s result, run in a write transaction that commits; if it fails nothing is written.

        A transaction that finds the map full is undone, the map doubled and `body`
        run again (up to `max_map_size`), so `body` must change nothing but the transaction.
        """
        # Our lock keeps threads of this process off LMDB's writer mutex, which
        # would otherwise park them inside C; LMDB still serializes other processes.
        # Under it no other write transaction of this process is open, as a remap needs.
        with self._write_lock:
            while True:
                try:
                    txn = self._env.begin(self._data, None, True)
                except lmdb.MapResizedError:
                    # Another process grew the map and wrote past ours: adopt the size the file records.
                    with self._reads_held():
                        self._remap(0)
                    continue
                except lmdb.Error as exc:
                    raise self._unavailable(exc) from exc
                try:
                    result = body(txn)
                    txn.commit()
                except lmdb.MapFullError:
                    try:
                        with self._reads_held():
                            txn.abort()
                            self._grow()
                    except BaseException:
                        self._abort(txn)  # a no-op if it was aborted already
                        raise
                    continue
                except lmdb.Error as exc:
                    self._abort(txn)
                    raise self._unavailable(exc) from exc
                except BaseException:
                    self._abort(txn)
                    raise
                return result

    def _abort(self, txn: lmdb.Transaction) -> None:
        # py-lmdb (2.3 and later) aborts a write only once no operation on the environment is in
        # flight, which reads on other threads can put off indefinitely: hold them off meanwhile.
        # A read this thread has open (a write from a signal handler or a clock callback) is not
        # in flight inside LMDB, so the abort need not wait for it.
        with self._reads_held(own_reads_allowed=True):
            txn.abort()

    @contextmanager
    def _reads_held(self, *, own_reads_allowed: bool = False) -> Iterator[None]:
        """Wait out this process's reads on the environment, and make new ones wait until the block ends.

        Taken holding the write lock. Each read announces itself (its thread) in `readers` before
        it looks at the flag `readers[0]`, so once the flag is up and no read is announced, none is
        open. A read of this very thread would never end while it waits: with
        `own_reads_allowed` the wait leaves them out; without, it refuses at once.

        Raises:
            BackendUnavailable: if this thread has a read open and that is not allowed (a remap).
        """
        readers = self._readers
        own = readers.count(get_ident())
        if own and not own_reads_allowed:
            raise BackendUnavailable(
                f"the store at {self.path} must grow its map, which cannot happen while this thread is "
                "inside a read of it (a write from a signal handler or a clock callback); write outside it"
            )
        with self._shared.hold_lock:
            readers[0] = True
            try:
                while len(readers) > 1 + own:  # reads are short: a begin, a few gets, an abort
                    time.sleep(_DRAIN_POLL_S)
                yield
            finally:
                readers[0] = False

    def _grow(self) -> None:
        """Double the map, up to the cap; with reads held and no write transaction open.

        Raises:
            BackendUnavailable: if the map is at its cap already, or cannot grow.
        """
        size = self._env.info()["map_size"]
        cap = self._shared.max_map_size
        if size >= cap:
            raise self._full(size)
        self._remap(min(cap, 2 * size))

    def _remap(self, size: int) -> None:
        """Map `size` bytes (0: the size the file records); with reads held and no write transaction open.

        Raises:
            BackendUnavailable: if the environment cannot be remapped.
        """
        was = self._env.info()["map_size"]
        files = self._shared.files
        try:
            if files is None:
                self._env.set_mapsize(size)
            else:
                remap_backed(self._env, files, size)
        except OSError as exc:  # the map is unchanged, and nothing beyond it was written
            raise BackendUnavailable(
                f"the disk under the store at {self.path} cannot hold its map growing past {was} bytes "
                f"({exc.strerror}): nothing was written; free space on it, then retry"
            ) from exc
        except lmdb.Error as exc:
            target = f"{size} bytes" if size else "the size its file records"
            raise BackendUnavailable(
                f"the store at {self.path} could not remap from {was} bytes to {target} ({exc}): "
                "nothing was written; reopen the store"
            ) from exc

    def _mutate(self, ns: Namespace, apply: Callable[[Writer], T]) -> T:
        def run(txn: lmdb.Transaction) -> T:
            now = now_ms(self._clock)
            writer = Writer(txn, self._data, self._expiry, ns, now)
            try:
                result = apply(writer)
            except QuotaExceeded:
                # Usage counts expired records too; drop them and decide again.
                # `apply` raises before it changes anything, so it can run twice.
                if not self._sweep_tenant(txn, writer.tenant_prefix, now, limit=None):
                    raise
                writer = Writer(txn, self._data, self._expiry, ns, now)
                result = apply(writer)
            self._add_usage(txn, writer.tenant_prefix[:-1], writer.add_keys, writer.add_bytes, writer.usage)
            return result

        return self._transact(run)

    def _charge(self, w: Writer, quota: Quota) -> None:
        grow_keys, grow_bytes = w.add_keys + w.revived_keys, w.add_bytes + w.revived_bytes
        if grow_keys <= 0 and grow_bytes <= 0:
            return  # a write that grows nothing passes any quota (the common overwrite): no usage to read
        w.usage = keys, size = read_usage(w.txn, self._usage, w.tenant_prefix[:-1])
        # Usage counts expired records until they are swept: a refusal sweeps them and decides again
        # (`_mutate`), so a revived key passes exactly when it fits beside the live ones.
        quota.check(Usage(keys=keys, bytes=size), grow_keys, grow_bytes)

    def _add_usage(
        self, txn: lmdb.Transaction, tenant: bytes, add_keys: int, add_bytes: int, read: tuple[int, int] | None = None
    ) -> None:
        """Count `add_keys` and `add_bytes` into the tenant's usage (`read`: the usage this transaction read)."""
        if not add_keys and not add_bytes:
            return
        keys, size = read_usage(txn, self._usage, tenant) if read is None else read
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
                record = lookup(txn, self._data, prefix, key)
                if record is not None and expiry_of(record) == expires:
                    replace(txn, self._data, prefix, key, None)
                    removed += 1
                    removed_bytes += len(key) + stored_len(record)
                if not cursor.delete():
                    break
        if removed:
            self._add_usage(txn, tenant_prefix[:-1], -removed, -removed_bytes)
        return removed
