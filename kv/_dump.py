"""Export a tenant's state to a msgpack stream, and import it back: `export_tenant`, `import_dump`.

A dump (format version 1) is a sequence of msgpack objects::

    {"format": "wasmkv-dump", "version": 1, "tenant": "acme"}   header
    ["bucket", "key", b"value", 1500]                            one record per key: ttl_ms left, or nil
    ...                                                          sorted by bucket, then key (UTF-8 bytes)
    {"end": 2}                                                   trailer: the number of records

The trailer's count makes a truncated dump detectable, and the sort order lets
an import compute its exact quota effect in constant memory: a key repeated in
a dump can only repeat in place, where the last record wins.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from typing import IO, Any, BinaryIO, Final

import msgpack

from ..abi import BATCH_MAX_ITEMS, LIST_MAX_LIMIT
from ._errors import InvalidArgument, InvalidKey, KvError, QuotaExceeded, ValueTooLarge
from ._rules import KeyRange, Namespace, Quota, Usage, check_name, check_ttl_ms, check_value, encode_key, quota_exceeded
from ._store import KvStore

__all__ = [
    "DUMP_FORMAT",
    "DUMP_VERSION",
    "ImportReport",
    "Progress",
    "export_tenant",
    "import_dump",
]

DUMP_FORMAT: Final = "wasmkv-dump"
DUMP_VERSION: Final = 1
#: Value bytes one batch holds at most, so memory stays bounded however large a tenant's values are.
_BATCH_BYTES: Final = 16 * 1024 * 1024
#: Room in the unpacker's buffer beyond the largest valid value and key, for the record's framing and
#: for values a little too large, which are then reported as `ValueTooLarge` by the value check.
_RECORD_SLACK_BYTES: Final = 64 * 1024
#: The unpacker's buffer while reading the header, which is a small map.
_HEADER_BUFFER_BYTES: Final = 64 * 1024
_SPOOL_CHUNK_BYTES: Final = 1024 * 1024
#: How much the unpacker reads at a time (its default is up to 1 MiB, and it holds two copies of a read).
_READ_BYTES: Final = 64 * 1024
_HEADER_FIELDS: Final = frozenset({"format", "version", "tenant"})
#: No array or map of a dump has more items (a record has 4, the header 3).
_MAX_FIELDS: Final = 16

_Item = tuple[bytes, int | None]
"""A record's value and its TTL in milliseconds (None: no TTL)."""


@dataclasses.dataclass(frozen=True, slots=True)
class ImportReport:
    """What `import_dump` wrote: the tenant, the number of distinct keys, and the buckets they went to."""

    tenant: str
    keys: int
    buckets: tuple[str, ...]


Progress = Callable[[str, int], None]
"""Told how far a long export or import is: `("exported", n)`, or `("checked", n)` then `("imported", n)`."""


def export_tenant(
    store: KvStore,
    tenant: str,
    out: BinaryIO,
    *,
    buckets: Sequence[str] | None = None,
    progress: Progress | None = None,
) -> int:
    """Write the live keys of `tenant` (every bucket, or only `buckets`) to `out` as a dump; the number of keys.

    Streams a page of keys at a time, so memory stays bounded for any tenant.
    Each record carries the key's TTL left when it was read. Each page is read
    from one snapshot, but the export as a whole is not: a key written while it
    runs may appear with its old or new value, or not at all if deleted.
    It reads through the engine, so it spends none of the tenant's `ops_per_second`.
    `progress`, if given, is told the number of keys written after each batch.

    Raises:
        InvalidArgument: if a tenant or bucket name is invalid.
        BackendUnavailable: if the engine fails.
    """
    check_name("tenant", tenant)
    names = _buckets_to_export(store, tenant, buckets)
    engine = store.engine
    packer = msgpack.Packer()
    out.write(packer.pack({"format": DUMP_FORMAT, "version": DUMP_VERSION, "tenant": tenant}))
    count = 0
    everything = KeyRange()
    for name in names:
        ns = Namespace(tenant, name)
        after: bytes | None = None
        more = True
        while more:
            # One consistent page of keys, values and TTLs at a time, its bytes bounded.
            items, more = engine.scan(ns, everything, after, LIST_MAX_LIMIT, _BATCH_BYTES)
            if not items:
                break
            after = items[-1][0]
            out.write(b"".join(packer.pack([name, key.decode(), value, ttl]) for key, value, ttl in items))
            count += len(items)
            if progress is not None:
                progress("exported", count)
    out.write(packer.pack({"end": count}))
    return count


def import_dump(store: KvStore, source: BinaryIO, *, tenant: str, progress: Progress | None = None) -> ImportReport:
    """Load a dump written by `export_tenant` into `tenant`.

    The caller names the tenant: a dump is input from outside, and the tenant
    its header names (where it was exported from) decides nothing. Importing
    into another tenant than the dump's copies the state.

    Two passes over the dump. The first checks everything before any write: the
    header, every record (bucket name, key, value and TTL against the tenant's
    quota, the sort order), the trailer's count, that nothing follows it, and
    the exact quota effect (a key already stored counts only its size change;
    a repeated key counts once, its last record winning). The second writes:
    keys without a TTL in batches with `set_many`, keys with one each with its
    TTL as exported (counted from now). Writes go through the engine, so they
    spend none of the tenant's `ops_per_second`, but each is quota-checked.

    `progress`, if given, is told the keys checked, then the keys written, after each batch.

    A dump that is not seekable (a pipe) is spooled to a temporary file first.
    Memory stays bounded for any dump size. The tenant's quota is the one
    `store.tenant(name)` holds, so set it before importing. The dump must not
    change while it is being imported.

    Only a bad dump is guaranteed to change nothing: a concurrent writer that
    fills the tenant's quota between the passes makes the second pass fail
    part-way (with `QuotaExceeded`), leaving the batches already written.

    Raises:
        InvalidArgument: if the dump is malformed (not msgpack, bad header or
            version, a record of the wrong shape or type, out of order,
            truncated, a wrong count, bytes after the trailer) or a tenant or
            bucket name is invalid; the message names the record.
        InvalidKey: if a record's key is invalid for the tenant's quota.
        ValueTooLarge: if a record's value is over the tenant's `max_value_bytes`.
        QuotaExceeded: if the import would take the tenant past its quota.
        BackendUnavailable: if the engine fails.
        OSError: if reading the dump fails.
    """
    check_name("tenant", tenant)
    with _seekable(source) as (stream, start, size):
        reader = _DumpReader(stream, start, size)
        name = tenant
        target = store.tenant(name)
        quota = target.quota
        engine = store.engine
        # Usage before the lookups: a key expiring in between then counts as new, which overstates, never under.
        usage = target.usage()
        plan = _QuotaPlan()
        checked = 0
        for batch in reader.batches(quota):
            plan.add_batch(batch, _stored_sizes(store, Namespace(name, batch.bucket), list(batch.items), quota))
            checked += len(batch.items)
            if progress is not None:
                progress("checked", checked)
        plan.check(quota, usage)

        written = 0
        buckets: list[str] = []
        for batch in _DumpReader(stream, start, size).batches(quota):
            ns = Namespace(name, batch.bucket)
            plain = [(key, value) for key, (value, ttl) in batch.items.items() if ttl is None]
            if plain:
                engine.set_many(ns, plain, quota)
            for key, (value, ttl) in batch.items.items():
                if ttl is not None:
                    engine.set(ns, key, value, ttl, quota)
            written += len(batch.items)
            if progress is not None:
                progress("imported", written)
            if not buckets or buckets[-1] != batch.bucket:
                buckets.append(batch.bucket)
    return ImportReport(tenant=name, keys=written, buckets=tuple(buckets))


@dataclasses.dataclass(slots=True)
class _Batch:
    """Up to `BATCH_MAX_ITEMS` distinct keys of one bucket, in dump order, the last record of a key winning."""

    bucket: str
    items: dict[bytes, _Item] = dataclasses.field(default_factory=dict)
    value_bytes: int = 0


class _DumpReader:
    """Reads and checks a dump: the header on construction, then the records, as batches, in `batches`."""

    def __init__(self, stream: IO[bytes], start: int, size: int) -> None:
        self._stream = stream
        self._end = start + size
        self.records = 0
        # The header is read with tight limits; `batches` sizes the buffer for the tenant's records.
        stream.seek(start)
        unpacker = _unpacker(stream, _HEADER_BUFFER_BYTES)
        header = _unpack(
            unpacker,
            "dump header",
            "dump is empty or truncated: no header",
            InvalidArgument(f"dump header is over {_HEADER_BUFFER_BYTES} bytes: not a wasmkv dump"),
        )
        self.tenant = _check_header(header)
        self._records_at = start + unpacker.tell()

    def batches(self, quota: Quota) -> Iterator[_Batch]:
        """The records in write batches; the trailer's count and the end of the stream are checked last.

        Raises:
            InvalidArgument, InvalidKey, ValueTooLarge: on the first bad record, naming it.
        """
        self._stream.seek(self._records_at)
        limit = quota.max_value_bytes + quota.max_key_bytes + _RECORD_SLACK_BYTES
        unpacker = _unpacker(self._stream, limit)
        batch: _Batch | None = None
        last: tuple[str, bytes] | None = None
        while True:
            where = f"dump record {self.records + 1}"
            obj = _unpack(
                unpacker,
                where,
                f"dump is truncated after record {self.records}: no trailer",
                ValueTooLarge(
                    f"{where} is over {limit} bytes, larger than any valid record: "
                    f"its value is over max_value_bytes {quota.max_value_bytes}"
                ),
            )
            if isinstance(obj, dict):
                self._check_trailer(obj, unpacker)
                break
            self.records += 1
            bucket, raw, value, ttl = _check_record(obj, quota, where)
            here = (bucket, raw)
            if last is not None and here < last:
                raise InvalidArgument(
                    f"{where}: key {raw.decode()!r} in bucket {bucket!r} is out of order: a dump lists its "
                    "records sorted by bucket, then key (UTF-8 bytes), as export writes them"
                )
            # A repeated key stays in its batch, so that the last record wins within one write.
            if (
                batch is not None
                and here != last
                and (
                    batch.bucket != bucket
                    or len(batch.items) >= BATCH_MAX_ITEMS
                    or batch.value_bytes + len(value) > _BATCH_BYTES
                )
            ):
                yield batch
                batch = None
            if batch is None:
                batch = _Batch(bucket)
            previous = batch.items.get(raw)
            if previous is not None:
                batch.value_bytes -= len(previous[0])
            batch.items[raw] = (value, ttl)
            batch.value_bytes += len(value)
            last = here
        if batch is not None:
            yield batch

    def _check_trailer(self, trailer: dict[Any, Any], unpacker: msgpack.Unpacker) -> None:
        count = trailer.get("end")
        if set(trailer) != {"end"} or type(count) is not int:
            raise InvalidArgument(f"dump trailer must be {{'end': count}}, got {_describe(trailer)}")
        if count != self.records:
            raise InvalidArgument(f"dump trailer counts {count} records but the dump holds {self.records}")
        consumed = self._records_at + unpacker.tell()
        if consumed != self._end:
            raise InvalidArgument(f"dump has {self._end - consumed} bytes after its trailer")


class _QuotaPlan:
    """The quota effect of an import, summed write by write in the order the second pass writes."""

    __slots__ = ("add_bytes", "add_keys", "peak_bytes")

    def __init__(self) -> None:
        self.add_keys = 0
        self.add_bytes = 0
        # The most bytes added after any write that grows them: the store checks each such write.
        self.peak_bytes: int | None = None

    def add_batch(self, batch: _Batch, stored: Sequence[int | None]) -> None:
        """Account for one batch, given the value sizes stored now for its keys (None: absent).

        The second pass writes a batch's keys without TTL in one `set_many`, then each key with a TTL.
        """
        plain: tuple[int, int] | None = None
        with_ttl: list[tuple[int, int]] = []
        for (key, (value, ttl)), old in zip(batch.items.items(), stored, strict=True):
            add_keys, add_bytes = _growth(key, value, old)
            if ttl is not None:
                with_ttl.append((add_keys, add_bytes))
            elif plain is None:
                plain = (add_keys, add_bytes)
            else:
                plain = (plain[0] + add_keys, plain[1] + add_bytes)
        for add_keys, add_bytes in ([] if plain is None else [plain]) + with_ttl:
            self._add(add_keys, add_bytes)

    def check(self, quota: Quota, usage: Usage) -> None:
        """Check that no write of the import takes `usage` past `quota`, as the store will check each.

        Raises:
            QuotaExceeded: with the limit, the usage and what the import adds.
        """
        if self.add_keys > 0 and usage.keys + self.add_keys > quota.max_keys:
            exc = quota_exceeded("max_keys", quota.max_keys, usage.keys, self.add_keys, what="this import")
            raise QuotaExceeded(f"{exc}; nothing was written")
        peak = self.peak_bytes
        if peak is not None and usage.bytes + peak > quota.max_bytes:
            adds = f"{self.add_bytes}" if peak == self.add_bytes else f"{self.add_bytes} ({peak} part-way)"
            exc = quota_exceeded("max_bytes", quota.max_bytes, usage.bytes, adds, what="this import")
            raise QuotaExceeded(f"{exc}; nothing was written")

    def _add(self, add_keys: int, add_bytes: int) -> None:
        self.add_keys += add_keys
        self.add_bytes += add_bytes
        if add_bytes > 0 and (self.peak_bytes is None or self.add_bytes > self.peak_bytes):
            self.peak_bytes = self.add_bytes


def _growth(key: bytes, value: bytes, stored: int | None) -> tuple[int, int]:
    """The keys and bytes that writing `value` at `key` adds, given the size stored now (None: absent)."""
    if stored is None:
        return 1, len(key) + len(value)
    return 0, len(value) - stored


def _buckets_to_export(store: KvStore, tenant: str, buckets: Sequence[str] | None) -> list[str]:
    if buckets is None:
        return store.engine.buckets(tenant)
    if isinstance(buckets, str):
        raise InvalidArgument(f"buckets must be a sequence of bucket names, not the single name {buckets!r}")
    # Sorted and unique, because an import requires records in (bucket, key) order.
    return sorted({check_name("bucket", name) for name in buckets})


def _read_chunk(quota: Quota) -> int:
    """How many keys one `get_many` reads, so that a chunk of the largest values stays within `_BATCH_BYTES`."""
    return max(1, min(BATCH_MAX_ITEMS, _BATCH_BYTES // quota.max_value_bytes))


def _stored_sizes(store: KvStore, ns: Namespace, keys: Sequence[bytes], quota: Quota) -> list[int | None]:
    """The sizes of the values stored at `keys` now, None where absent."""
    chunk = _read_chunk(quota)
    sizes: list[int | None] = []
    for start in range(0, len(keys), chunk):
        values = store.engine.get_many(ns, keys[start : start + chunk])
        sizes.extend(None if value is None else len(value) for value in values)
    return sizes


@contextlib.contextmanager
def _seekable(source: BinaryIO) -> Iterator[tuple[IO[bytes], int, int]]:
    """`source`, or a spooled copy if it cannot seek, with the offset the dump starts at and its size."""
    seekable = getattr(source, "seekable", None)
    if seekable is not None and seekable():
        start = source.tell()
        size = source.seek(0, io.SEEK_END) - start
        source.seek(start)
        yield source, start, size
        return
    with tempfile.TemporaryFile() as spool:
        shutil.copyfileobj(source, spool, _SPOOL_CHUNK_BYTES)
        size = spool.tell()
        yield spool, 0, size


def _unpacker(stream: IO[bytes], max_buffer_bytes: int) -> msgpack.Unpacker:
    # Bins may be as long as the buffer allows, so that an oversized value fills it (`BufferFull`)
    # rather than failing a length limit. Every object of a dump is one flat array or map of scalars,
    # read header first (`_unpack`): a container nested inside one is refused as it is met, so a
    # hostile dump cannot make the reader build a tree of millions of empty arrays.
    return msgpack.Unpacker(
        stream,
        raw=False,
        unicode_errors="surrogateescape",  # an invalid UTF-8 key then fails the key check, which names it
        max_buffer_size=max_buffer_bytes,
        read_size=min(_READ_BYTES, max_buffer_bytes),
        max_bin_len=2**32 - 1,
        max_array_len=0,
        max_map_len=0,
        max_ext_len=0,
    )


def _unpack(unpacker: msgpack.Unpacker, where: str, truncated: str, too_large: KvError) -> Any:
    """The next object of a dump: a flat array or map of at most `_MAX_FIELDS` scalars, or a scalar."""
    try:
        try:
            count = unpacker.read_array_header()
        except ValueError:  # not an array: the header or trailer map, or something that is not a dump
            try:
                count = unpacker.read_map_header()
            except ValueError:
                return unpacker.unpack()
            if count > _MAX_FIELDS:
                raise InvalidArgument(f"{where}: a map of {count} fields is no part of a dump") from None
            fields: dict[Any, Any] = {}
            for _ in range(count):
                key = unpacker.unpack()
                fields[key] = unpacker.unpack()
            return fields
        if count > _MAX_FIELDS:
            raise InvalidArgument(f"{where}: expected [bucket, key, value, ttl_ms], got an array of {count} items")
        return [unpacker.unpack() for _ in range(count)]
    except msgpack.OutOfData:
        raise InvalidArgument(truncated) from None
    except msgpack.BufferFull:
        raise too_large from None
    except (ValueError, TypeError) as exc:  # msgpack's format errors, its length limits, an unhashable key
        raise InvalidArgument(f"{where} is not valid msgpack: {exc}") from None


def _check_header(header: object) -> str:
    if not isinstance(header, dict) or header.get("format") != DUMP_FORMAT:
        raise InvalidArgument(
            f"dump header: not a wasmkv dump (expected a map with format {DUMP_FORMAT!r}, got {_describe(header)})"
        )
    version = header.get("version")
    if type(version) is not int or version != DUMP_VERSION:
        raise InvalidArgument(f"dump header: version {version!r} is not supported (this wasmkv reads {DUMP_VERSION})")
    if set(header) != _HEADER_FIELDS:
        raise InvalidArgument(f"dump header must have the fields {sorted(_HEADER_FIELDS)}, got {_describe(header)}")
    try:
        return check_name("tenant", header["tenant"])
    except KvError as exc:
        raise InvalidArgument(f"dump header: {exc}") from None


def _check_record(record: object, quota: Quota, where: str) -> tuple[str, bytes, bytes, int | None]:
    """A record's bucket, key as UTF-8, value and TTL, each checked against the tenant's quota."""
    if type(record) is not list or len(record) != 4:
        raise InvalidArgument(f"{where}: expected [bucket, key, value, ttl_ms], got {_describe(record)}")
    bucket, key, value, ttl = record
    try:
        check_name("bucket", bucket)
        if type(key) is not str:
            raise InvalidKey(f"key must be a str, got {type(key).__name__}")
        raw = encode_key(key, quota.max_key_bytes)
        if type(value) is not bytes:
            raise InvalidArgument(f"value must be bin (bytes), got {type(value).__name__}")
        check_value(value, quota.max_value_bytes)
        if ttl is not None:
            check_ttl_ms(ttl)
    except KvError as exc:
        raise type(exc)(f"{where}: {exc}") from None
    return bucket, raw, value, ttl


def _describe(obj: object) -> str:
    """A short description of a decoded msgpack object for an error message (never its whole content)."""
    if isinstance(obj, dict):
        return f"a map with keys {', '.join(f'{key!r:.40}' for key in list(obj)[:8])}"
    if isinstance(obj, list):
        return f"an array of {len(obj)} items"
    return f"{type(obj).__name__} {obj!r:.60}"
