"""How the LMDB engine lays out its records: values with expiries, long keys in boxes, the expiry index.

Three named databases in one environment:

- `data`:   ns.prefix + key → record (`b"\\0" + value`, or `b"\\1" + be64(expires_ms) + value`)
- `expiry`: tenant + NUL + be64(expires_ms) + blake2b(ns.prefix + key) → bucket + NUL + key
- `usage`:  tenant → be64(keys) + be64(bytes), counting every stored record, expired or not

LMDB keys are at most 511 bytes, less than a namespace prefix plus a 512-byte
key. A key too long to fit is stored in a *box*: the record at
`ns.prefix + key[:head]` (flag `b"\\2"`) holds a sorted msgpack list of
`[tail, record]` for every key sharing that head. Boxes sort where their keys
do, so listings stay in byte order; they are rare (keys of ~450+ bytes) and
almost always hold one key.

Everything here works inside a transaction the engine (`kv._lmdb.LmdbStore`) opened.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Final

import lmdb
import msgpack

from ._rules import Namespace

__all__ = [
    "MAX_LMDB_KEY",
    "NO_TTL",
    "Writer",
    "encode_record",
    "expiry_of",
    "is_box",
    "is_live",
    "live_value",
    "lookup",
    "read_usage",
    "replace",
    "scan",
    "stored_len",
    "unbox",
    "value_of",
]

NO_TTL: Final = 0
_BOX: Final = 2
#: LMDB's compiled-in key limit (`mdb_env_get_maxkeysize`); checked when a store opens.
MAX_LMDB_KEY: Final = 511


def encode_record(value: bytes, expires_ms: int | None) -> bytes:
    if expires_ms is None:
        return b"\0" + value
    return b"\1" + expires_ms.to_bytes(8, "big") + value


def expiry_of(record: bytes | memoryview) -> int | None:
    if record[0] == NO_TTL:
        return None
    return int.from_bytes(record[1:9], "big")


def value_of(record: bytes | memoryview) -> bytes:
    return bytes(record[1:] if record[0] == NO_TTL else record[9:])


def is_live(record: bytes | memoryview | None, now: int) -> bool:
    """Whether a stored record exists and has not expired."""
    if record is None:
        return False
    expires = expiry_of(record)
    return expires is None or expires > now


def live_value(record: bytes | memoryview | None, now: int) -> bytes | None:
    """The record's value if it is live, else None."""
    return value_of(record) if record is not None and is_live(record, now) else None


def expiry_key(tenant_prefix: bytes, expires_ms: int, ns: Namespace, key: bytes) -> bytes:
    digest = hashlib.blake2b(ns.prefix + key, digest_size=16).digest()
    return tenant_prefix + expires_ms.to_bytes(8, "big") + digest


def read_usage(txn: lmdb.Transaction, db: lmdb._Database, tenant: bytes) -> tuple[int, int]:
    raw = txn.get(tenant, db=db)
    if raw is None:
        return 0, 0
    return int.from_bytes(raw[:8], "big", signed=True), int.from_bytes(raw[8:16], "big", signed=True)


def is_box(record: bytes | memoryview) -> bool:
    """Whether a stored record is a box of several long keys rather than one value."""
    return record[0] == _BOX


def unbox(box: bytes | memoryview) -> list[list[bytes]]:
    """The `[tail, record]` entries of a box."""
    entries: list[list[bytes]] = msgpack.unpackb(bytes(box[1:]))
    return entries


def lookup(txn: lmdb.Transaction, db: lmdb._Database, prefix: bytes, key: bytes) -> bytes | memoryview | None:
    """The stored record of `key` (live or expired), through a box if the key is long."""
    head = MAX_LMDB_KEY - len(prefix)
    if len(key) < head:
        record: bytes | memoryview | None = txn.get(prefix + key, db=db)
        return record
    box = txn.get(prefix + key[:head], db=db)
    if box is None:
        return None
    tail = key[head:]
    for entry_tail, record in unbox(box):
        if entry_tail == tail:
            return record
    return None


def replace(txn: lmdb.Transaction, db: lmdb._Database, prefix: bytes, key: bytes, record: bytes | None) -> bytes | None:
    """Store `record` at `key` (None deletes it); return the record it replaced."""
    head = MAX_LMDB_KEY - len(prefix)
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
    entries = {} if box is None else {entry_tail: entry for entry_tail, entry in unbox(box)}
    old_entry = entries.pop(tail, None)
    if record is not None:
        entries[tail] = record
    if entries:
        txn.put(full, bytes([_BOX]) + msgpack.packb(sorted([t, r] for t, r in entries.items())), db=db)
    elif box is not None:
        txn.delete(full, db=db)
    return old_entry


def scan(cursor: lmdb.Cursor, prefix: bytes, start: bytes) -> Iterator[tuple[bytes, bytes | memoryview]]:
    """Every (key, record) of namespace `prefix` from about `start` on, in key byte order, boxes opened."""
    if not cursor.set_range((prefix + start)[:MAX_LMDB_KEY]):
        return
    base = len(prefix)
    for full, record in cursor:
        if bytes(full[:base]) != prefix:
            return
        if record[0] == _BOX:
            key_head = bytes(full[base:])
            for tail, entry in unbox(record):
                yield key_head + tail, entry
        else:
            yield bytes(full[base:]), record


def stored_len(record: bytes | memoryview) -> int:
    return len(record) - (1 if record[0] == NO_TTL else 9)


class Writer:
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
        record = lookup(self.txn, self.data, self.ns.prefix, key)
        if record is None:
            return None, None
        expires = expiry_of(record)
        if expires is not None and expires <= self.now:
            return None, None
        return value_of(record), expires

    def plan_put(self, key: bytes, value: bytes) -> None:
        """Account for storing `value` at `key` (whatever is stored there now, live or expired)."""
        record = lookup(self.txn, self.data, self.ns.prefix, key)
        if record is None:
            self.add_keys += 1
            self.add_bytes += len(key) + len(value)
        else:
            self.add_bytes += len(value) - stored_len(record)

    def put(self, key: bytes, value: bytes, expires_ms: int | None) -> None:
        """Store a record, keeping the expiry index in step; call after `plan_put` and the quota check."""
        old = replace(self.txn, self.data, self.ns.prefix, key, encode_record(value, expires_ms))
        self._reindex(key, old, expires_ms)

    def remove(self, key: bytes) -> bool:
        """Delete a record if stored; True if it was live. Updates the usage deltas itself."""
        old = replace(self.txn, self.data, self.ns.prefix, key, None)
        if old is None:
            return False
        self._reindex(key, old, None)
        self.add_keys -= 1
        self.add_bytes -= len(key) + stored_len(old)
        expires = expiry_of(old)
        return expires is None or expires > self.now

    def _reindex(self, key: bytes, old: bytes | None, expires_ms: int | None) -> None:
        old_expires = None if old is None else expiry_of(old)
        if old_expires is not None:
            self.txn.delete(expiry_key(self.tenant_prefix, old_expires, self.ns, key), db=self.expiry)
        if expires_ms is not None:
            where = self.ns.bucket.encode() + b"\0" + key
            self.txn.put(expiry_key(self.tenant_prefix, expires_ms, self.ns, key), where, db=self.expiry)
