"""How the LMDB engine lays out its records: values with expiries, long keys in boxes, the expiry index.

Three named databases in one environment:

- `data`:   ns.prefix + key → record (`b"\\0" + value`, or `b"\\1" + be64(expires_ms) + value`)
- `expiry`: tenant + NUL + be64(expires_ms) + blake2b(ns.prefix + key) → bucket + NUL + key
- `usage`:  tenant → be64(keys) + be64(bytes), counting every stored record, expired or not

LMDB keys are at most 511 bytes, less than a namespace prefix plus a 512-byte
key. A key whose prefix + key would pass `SHORT_ROOM` (494 bytes) is *long*: it
is stored at `ns.prefix + key[:head] + 0xFF + blake2b(ns.prefix + key)[:16]`,
and its record (flag `b"\\3"`) carries the rest of the key, its tail, before
the usual record. A point lookup is then one B-tree lookup, however many long
keys share a head. Long keys sharing a head sort together, after any shorter
key with that head, so a listing reads such a group whole and orders it by its
tails (the cost of a group is paid by listings that reach it, and a group is at
most a tenant's `max_keys`). Format 2 kept such keys in "boxes", one record per
head holding every tail and value, which made every lookup cost the whole box;
format 1 and 2 stores are rewritten to this layout when they open.

Everything here works inside a transaction the engine (`kv._lmdb.LmdbStore`) opened.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left
from collections.abc import Callable, Iterator
from itertools import islice
from typing import Final, TypeVar, cast

import lmdb
import msgpack

from ._rules import KeyRange, Namespace

T = TypeVar("T")

__all__ = [
    "MAX_LMDB_KEY",
    "NO_TTL",
    "SHORT_ROOM",
    "Writer",
    "encode_record",
    "expiry_key",
    "expiry_of",
    "fast_keys",
    "fast_scan",
    "holds_long_key",
    "is_live",
    "live_value",
    "lmdb_key",
    "lookup",
    "page_keys",
    "page_pairs",
    "read_usage",
    "replace",
    "scan",
    "scan_back",
    "stored_len",
    "unbox_v2",
    "value_of",
]

NO_TTL: Final = 0
#: The flag of a format-2 box (see `unbox_v2`), read only to upgrade such a store.
BOX_V2: Final = 2
_TTL: Final = 1
_LONG: Final = 3
_LONG_MARK: Final = b"\xff"
_HASH_BYTES: Final = 16
#: LMDB's compiled-in key limit (`mdb_env_get_maxkeysize`); checked when a store opens.
MAX_LMDB_KEY: Final = 511
#: The most namespace prefix + key bytes stored as the LMDB key itself; longer keys are long.
SHORT_ROOM: Final = MAX_LMDB_KEY - len(_LONG_MARK) - _HASH_BYTES


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


def lmdb_key(prefix: bytes, key: bytes) -> bytes:
    """Where `key` of the namespace `prefix` is stored: itself, or for a long key its head and hash."""
    if len(prefix) + len(key) <= SHORT_ROOM:
        return prefix + key
    head = SHORT_ROOM - len(prefix)
    return prefix + key[:head] + _LONG_MARK + hashlib.blake2b(prefix + key, digest_size=_HASH_BYTES).digest()


def _split_long(stored: bytes | memoryview) -> tuple[bytes, bytes | memoryview]:
    """A long key's stored record: its tail, and the record proper."""
    size = int.from_bytes(stored[1:3], "big")
    return bytes(stored[3 : 3 + size]), stored[3 + size :]


def lookup(txn: lmdb.Transaction, db: lmdb._Database, prefix: bytes, key: bytes) -> bytes | memoryview | None:
    """The stored record of `key` (live or expired)."""
    stored: bytes | memoryview | None = txn.get(lmdb_key(prefix, key), db=db)
    if stored is None or stored[0] != _LONG:
        return stored
    tail, record = _split_long(stored)
    # The hash chose the slot; the tail proves it holds this key and not another with the same hash.
    return record if tail == key[SHORT_ROOM - len(prefix) :] else None


class _Unknown:
    """The type of `_UNKNOWN`: the record a caller has not read."""


_UNKNOWN: Final = _Unknown()


def replace(
    txn: lmdb.Transaction,
    db: lmdb._Database,
    prefix: bytes,
    key: bytes,
    record: bytes | None,
    old: bytes | memoryview | _Unknown | None = _UNKNOWN,
) -> bytes | None:
    """Store `record` at `key` (None deletes it); return the record it replaced (`old`, if the caller read it)."""
    where = lmdb_key(prefix, key)
    if isinstance(old, _Unknown):
        old = lookup(txn, db, prefix, key)
    old_copy = None if old is None else bytes(old)
    if record is not None:
        if len(prefix) + len(key) > SHORT_ROOM:  # a long key: keep its tail with the record
            tail = key[SHORT_ROOM - len(prefix) :]
            record = bytes([_LONG]) + len(tail).to_bytes(2, "big") + tail + record
        txn.put(where, record, db=db)
    elif old is not None:
        txn.delete(where, db=db)
    return old_copy


def scan(cursor: lmdb.Cursor, prefix: bytes, start: bytes) -> Iterator[tuple[bytes, bytes | memoryview]]:
    """Every (key, record) of namespace `prefix` from about `start` on, in key byte order.

    Long keys sharing a head are read as a group and yielded sorted by their tails.
    """
    head = SHORT_ROOM - len(prefix)
    if not cursor.set_range(prefix + start[:head]):
        return
    yield from _in_order(cursor.iternext(), prefix, head, reverse=False)


def scan_back(cursor: lmdb.Cursor, prefix: bytes, high: bytes | None) -> Iterator[tuple[bytes, bytes | memoryview]]:
    """Every (key, record) of namespace `prefix` from about `high` down, in descending key byte order.

    Keys at or above `high` may come first (the caller skips them); long keys
    sharing a head are read as a group and yielded sorted by their tails, descending.
    """
    head = SHORT_ROOM - len(prefix)
    if high is None:
        # The first LMDB key past the namespace: its keys never hold NUL, so none reaches prefix[:-1] + 1.
        found = cursor.set_range(prefix[:-1] + b"\x01")
    else:
        # Past `high`'s whole head block (a long-key group's order within it is by hash, not by key).
        block = prefix + high[:head]
        found = cursor.set_range(block)
        while found and bytes(cursor.key()).startswith(block):
            found = cursor.next()
    if not (cursor.prev() if found else cursor.last()):
        return
    yield from _in_order(cursor.iterprev(), prefix, head, reverse=True)


_StoredPairs = Iterator[tuple[bytes | memoryview, bytes | memoryview]]
_NOTHING: Final[tuple[_StoredPairs, bytes, bytes]] = (iter(()), b"", b"")


def _position(
    cursor: lmdb.Cursor, prefix: bytes, key_range: KeyRange, after: bytes | None
) -> tuple[bytes, bytes] | None:
    """Put `cursor` on the first stored pair a page reads, in the range's order, and return the stored
    keys every pair of the range lies in: `floor` (inclusive) to `stop` (exclusive).

    `(b"", b"")` when the page is empty; None when long keys are in the way (a bound past
    `SHORT_ROOM`): their stored keys do not sort as their keys, so the caller takes the general path.
    """
    low, high = key_range.low, key_range.high
    floor = prefix + low
    # Every stored key of the namespace is below prefix[:-1] + 1 (keys hold no NUL).
    stop = prefix[:-1] + b"\x01" if high is None else prefix + high
    if (
        len(floor) > SHORT_ROOM
        or len(stop) > SHORT_ROOM
        or (after is not None and len(prefix) + len(after) > SHORT_ROOM)
    ):
        return None
    if not key_range.reverse:
        start = floor if after is None or after < low else prefix + after
        if stop <= start or not cursor.set_range(start):
            return b"", b""
        if after is not None and cursor.key() == start and not cursor.next():  # skip `after` itself
            return b"", b""
        return floor, stop
    if after is not None and prefix + after < stop:
        stop = prefix + after  # exclusive: the page resumes below `after`
    if stop <= floor:
        return b"", b""
    if not (cursor.prev() if cursor.set_range(stop) else cursor.last()):
        return b"", b""
    return floor, stop


def _fast_walk(
    cursor: lmdb.Cursor, prefix: bytes, key_range: KeyRange, after: bytes | None
) -> tuple[_StoredPairs, bytes, bytes] | None:
    """LMDB's own iterator over the stored pairs a page reads, in the range's order, and the
    stored keys every pair of the range lies in (as `_position`).

    None when long keys are in the way: the caller takes the general path.
    """
    bounds = _position(cursor, prefix, key_range, after)
    if bounds is None:
        return None
    floor, stop = bounds
    if not stop:
        return _NOTHING
    return (cursor.iterprev() if key_range.reverse else cursor.iternext()), floor, stop


def _first_key(pair: tuple[bytes, bytes]) -> bytes:
    return pair[0]


def _the_key(key: bytes) -> bytes:
    return key


def _cut(found: list[T], floor: bytes, stop: bytes, reverse: bool, key: Callable[[T], bytes]) -> list[T]:
    """`found`, read in the range's order from LMDB's iterator, without what lies past the range's far
    bound (`floor` going back, `stop` going forward): a bisection, no Python code per entry."""
    if not found:
        return found
    if reverse:
        if key(found[-1]) < floor:
            found.reverse()
            del found[: bisect_left(found, floor, key=key)]
            found.reverse()
    elif key(found[-1]) >= stop:
        del found[bisect_left(found, stop, key=key) :]
    return found


def page_keys(
    cursor: lmdb.Cursor[bytes], prefix: bytes, key_range: KeyRange, after: bytes | None, count: int
) -> list[bytes] | None:
    """The first `count` stored keys (namespace prefix included) a page of `key_range` past `after`
    reads, in the range's order, live or not; records are not read.

    `cursor` belongs to a transaction without buffers. LMDB's own iterator collects the keys
    and a bisection drops those past the range: no Python code runs per key. None when a bound
    is a long key; see `holds_long_key` for one among them (the caller then takes the general path).
    """
    bounds = _position(cursor, prefix, key_range, after)
    if bounds is None:
        return None
    floor, stop = bounds
    if not stop:
        return []
    walk = cursor.iterprev(True, False) if key_range.reverse else cursor.iternext(True, False)
    return _cut(list(islice(walk, count)), floor, stop, key_range.reverse, _the_key)


def holds_long_key(joined: bytes) -> bool:
    """Whether stored keys joined hold a long key's: its mark follows the head, and UTF-8 (or a namespace
    prefix) never holds that byte. One search in C."""
    return _LONG_MARK in joined


#: Pairs `page_pairs` copies out of LMDB between looks at the page's size: records are copied whole, so
#: past the page's byte bound at most this many more (each up to `max_value_bytes`) are held.
_PAIRS_PER_LOOK: Final = 32
#: A record's longest header: the flag byte and, with a TTL, the 8-byte expiry.
_RECORD_HEADER_MAX: Final = 9


def page_pairs(
    cursor: lmdb.Cursor[bytes], prefix: bytes, key_range: KeyRange, after: bytes | None, count: int, max_bytes: int
) -> tuple[list[bytes], list[bytes], int] | None:
    """As `page_keys`, with each key's stored record: the first `count` stored keys and their records, in
    two lists, or fewer once the records weigh more than `max_bytes`; and the bytes of the records together.

    In that case one pair past the bound is kept, so that the caller, cutting the page at `max_bytes`,
    sees that more follow. Without the bound a page of 1000 records of 1 MiB would copy 1 GiB to
    answer with 1 MiB.
    """
    bounds = _position(cursor, prefix, key_range, after)
    if bounds is None:
        return None
    floor, stop = bounds
    if not stop:
        return [], [], 0
    walk = cursor.iterprev() if key_range.reverse else cursor.iternext()
    stored: list[bytes] = []
    records: list[bytes] = []
    record_bytes = 0
    over = False  # whether the records read weigh more than max_bytes: then one pair more, and no more
    while len(stored) < count:
        wanted = 1 if over else min(count - len(stored), _PAIRS_PER_LOOK)
        chunk = list(islice(walk, wanted))
        if not chunk:
            break
        # The caller wants keys and records apart, and the records' size: each done once, here, in C.
        keys, values = zip(*chunk, strict=False)
        stored += keys
        records += values
        record_bytes += sum(map(len, values))
        if over or len(chunk) < wanted:  # the pair past the bound is read, or the walk ended
            break
        # The values weigh at least this (each sits behind a header of up to 9 bytes).
        over = record_bytes - _RECORD_HEADER_MAX * len(stored) > max_bytes
    # Drop what lies past the range's far bound (the keys come in the range's order).
    if stored:
        if key_range.reverse:
            if stored[-1] < floor:
                keep = len(stored) - bisect_left(stored[::-1], floor)
                record_bytes -= sum(map(len, records[keep:]))
                del stored[keep:], records[keep:]
        elif stored[-1] >= stop:
            keep = bisect_left(stored, stop)
            record_bytes -= sum(map(len, records[keep:]))
            del stored[keep:], records[keep:]
    return stored, records, record_bytes


def fast_keys(
    cursor: lmdb.Cursor, prefix: bytes, key_range: KeyRange, after: bytes | None, limit: int, now: int
) -> tuple[list[bytes], bool] | None:
    """A page of live keys of namespace `prefix`, and whether more follow.

    The fast path of listings: one loop over LMDB's own iterator (records are
    not copied), no generators. None, having read nothing it keeps, when long
    keys are in the way: the caller then takes the general path, in the same
    transaction.
    """
    walk = _fast_walk(cursor, prefix, key_range, after)
    if walk is None:
        return None
    pairs, floor, stop = walk
    base = len(prefix)
    keys: list[bytes] = []
    for stored_key, stored in pairs:
        full = bytes(stored_key)
        if not floor <= full < stop:
            return keys, False
        flag = stored[0]
        if flag != NO_TTL:
            if flag != _TTL:
                return None  # a long key: the general path
            if int.from_bytes(stored[1:9], "big") <= now:
                continue
        if len(keys) == limit:
            return keys, True
        keys.append(full[base:])
    return keys, False


def fast_scan(
    cursor: lmdb.Cursor, prefix: bytes, key_range: KeyRange, after: bytes | None, limit: int, max_bytes: int, now: int
) -> tuple[list[tuple[bytes, bytes, int | None]], bool] | None:
    """A page of live (key, value, ms left) of namespace `prefix`, and whether more follow.

    The fast path of scans, as `fast_keys`; `cursor` belongs to a transaction
    opened without buffers, so LMDB hands over each record as bytes (one copy,
    made in C) and the slices below are all the rest.
    """
    walk = _fast_walk(cursor, prefix, key_range, after)
    if walk is None:
        return None
    # A transaction without buffers hands over bytes, never views.
    pairs = cast(Iterator[tuple[bytes, bytes]], walk[0])
    floor, stop = walk[1], walk[2]
    base = len(prefix)
    items: list[tuple[bytes, bytes, int | None]] = []
    size = 0
    for full, stored in pairs:
        if not floor <= full < stop:
            return items, False
        if stored[0]:
            if stored[0] != _TTL:
                return None  # a long key: the general path
            expires = int.from_bytes(stored[1:9], "big")
            if expires <= now:
                continue
            left: int | None = expires - now
            value = stored[9:]
        else:
            left = None
            value = stored[1:]
        if len(items) == limit:
            return items, True
        size += len(full) - base + len(value)
        if size > max_bytes and items:
            return items, True
        items.append((full[base:], value, left))
    return items, False


def _member_key(member: tuple[bytes, bytes | memoryview]) -> bytes:
    return member[0]


def _in_order(
    stored_pairs: Iterator[tuple[bytes | memoryview, bytes | memoryview]], prefix: bytes, head: int, *, reverse: bool
) -> Iterator[tuple[bytes, bytes | memoryview]]:
    """The (key, record) pairs of namespace `prefix` among LMDB's (stored key, stored record) pairs.

    LMDB's own iterators walk the cursor in C (a call per step from Python costs
    several times more). A long-key group is collected whole and sorted by key.
    """
    base = len(prefix)
    group: bytes | None = None
    members: list[tuple[bytes, bytes | memoryview]] = []
    for stored_key, stored in stored_pairs:
        full = bytes(stored_key)
        if group is not None:
            if full.startswith(group):
                tail, record = _split_long(stored)
                members.append((full[base : base + head] + tail, record))
                continue
            members.sort(key=_member_key, reverse=reverse)
            yield from members
            group = None
        if not full.startswith(prefix):
            return
        if stored[0] != _LONG:
            yield full[base:], stored
            continue
        group = full[: base + head + len(_LONG_MARK)]
        tail, record = _split_long(stored)
        members = [(full[base : base + head] + tail, record)]
    if group is not None:
        members.sort(key=_member_key, reverse=reverse)
        yield from members


def unbox_v2(box: bytes | memoryview) -> list[list[bytes]]:
    """The `[tail, record]` entries of a format-2 box (the upgrade reads them once)."""
    entries: list[list[bytes]] = msgpack.unpackb(bytes(box[1:]))
    return entries


def stored_len(record: bytes | memoryview) -> int:
    return len(record) - (1 if record[0] == NO_TTL else 9)


class Writer:
    """One write transaction's view: reads records, stages changes, keeps the usage deltas.

    It remembers the record it read last (the usual write reads its key, checks the
    quota, then writes it), so a write reads each record once.
    """

    __slots__ = (
        "_read_key",
        "_read_record",
        "add_bytes",
        "add_keys",
        "data",
        "expiry",
        "now",
        "ns",
        "revived_bytes",
        "revived_keys",
        "tenant_prefix",
        "txn",
        "usage",
    )

    def __init__(self, txn: lmdb.Transaction, data: lmdb._Database, expiry: lmdb._Database, ns: Namespace, now: int):
        self.txn = txn
        self.data = data
        self.expiry = expiry
        self.ns = ns
        self.now = now
        self.tenant_prefix = ns.tenant.encode() + b"\0"
        self.add_keys = 0
        self.add_bytes = 0
        #: What overwriting expired records adds to the tenant's live usage beyond `add_*` (which count
        #: stored records, as usage does): a quota check must count such a write as a new key.
        self.revived_keys = 0
        self.revived_bytes = 0
        #: The tenant's stored (keys, bytes), once read for the quota check.
        self.usage: tuple[int, int] | None = None
        self._read_key: bytes | None = None
        self._read_record: bytes | memoryview | None = None

    def _record(self, key: bytes) -> bytes | memoryview | None:
        """The stored record of `key` (live or expired), read once per write."""
        if key == self._read_key:
            return self._read_record
        record = lookup(self.txn, self.data, self.ns.prefix, key)
        self._read_key = key
        self._read_record = record
        return record

    def live(self, key: bytes) -> tuple[bytes | None, int | None]:
        """The live value and its expiry (None, None when missing or expired)."""
        record = self._record(key)
        if record is None:
            return None, None
        expires = expiry_of(record)
        if expires is not None and expires <= self.now:
            return None, None
        return value_of(record), expires

    def plan_put(self, key: bytes, value: bytes) -> None:
        """Account for storing `value` at `key` (whatever is stored there now, live or expired)."""
        record = self._record(key)
        if record is None:
            self.add_keys += 1
            self.add_bytes += len(key) + len(value)
        else:
            self.add_bytes += len(value) - stored_len(record)
            if not is_live(record, self.now):
                # Usage still counts the expired record; the quota must see a key come back to life.
                self.revived_keys += 1
                self.revived_bytes += len(key) + stored_len(record)

    def put(self, key: bytes, value: bytes, expires_ms: int | None) -> None:
        """Store a record, keeping the expiry index in step; call after `plan_put` and the quota check."""
        old = replace(self.txn, self.data, self.ns.prefix, key, encode_record(value, expires_ms), self._record(key))
        self._read_key = None
        self._reindex(key, old, expires_ms)

    def remove(self, key: bytes) -> bool:
        """Delete a record if stored; True if it was live. Updates the usage deltas itself."""
        old = replace(self.txn, self.data, self.ns.prefix, key, None, self._record(key))
        self._read_key = None
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
