"""State export and import: `kv._dump.export_tenant` and `kv._dump.import_dump`."""

from __future__ import annotations

import io
import os
import threading
import tracemalloc
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import _servers
import msgpack
import pytest
from conftest import FakeClock

from wasmkv import kv
from wasmkv.kv._dump import ImportReport, export_tenant, import_dump

HEADER = {"format": "wasmkv-dump", "version": 1, "tenant": "acme"}
SMALL = kv.Quota(max_keys=10, max_bytes=1000, max_value_bytes=100, max_key_bytes=32)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def source(tmp_path: Path, clock: FakeClock) -> Iterator[kv.KvStore]:
    with kv.KvStore.open(tmp_path / "source", clock=clock, sweep_interval_s=None) as store:
        yield store


@pytest.fixture
def target(tmp_path: Path, clock: FakeClock) -> Iterator[kv.KvStore]:
    with kv.KvStore.open(tmp_path / "target", clock=clock, sweep_interval_s=None) as store:
        yield store


def dump_bytes(*records: Any, header: Any = HEADER, trailer: Any = None, extra: bytes = b"") -> bytes:
    """A dump built by hand: header, records, and a trailer counting them unless one is given."""
    parts = [msgpack.packb(header)] + [msgpack.packb(record) for record in records]
    parts.append(msgpack.packb({"end": len(records)} if trailer is None else trailer))
    return b"".join(parts) + extra


def export_bytes(store: kv.KvStore, tenant: str = "acme", **options: Any) -> bytes:
    out = io.BytesIO()
    export_tenant(store, tenant, out, **options)
    return out.getvalue()


def decode(data: bytes) -> list[Any]:
    return list(msgpack.Unpacker(io.BytesIO(data), raw=False))


def snapshot(store: kv.KvStore, tenant: str = "acme") -> tuple[kv.Usage, list[Any]]:
    """Everything a tenant holds: its usage, and every record (values and TTLs) as an export sees it."""
    return store.tenant(tenant).usage(), decode(export_bytes(store, tenant))


def fill(store: kv.KvStore) -> None:
    tenant = store.tenant("acme")
    tenant.bucket("default").set_many({"a": b"1", "b": b"", "日本語": bytes(range(256))})
    tenant.bucket("default").set_with_ttl("session", b"data", 60_000)
    tenant.bucket("counters").increment("hits", 41)
    tenant.bucket("counters").set_with_ttl("short", b"x", 5)
    tenant.bucket("z-last").set("emoji 🎉", b"party")


# -- export ----------------------------------------------------------------------------------


def test_export_writes_a_header_one_sorted_record_per_key_and_a_counting_trailer(
    source: kv.KvStore, clock: FakeClock
) -> None:
    fill(source)
    clock.tick(2)
    assert decode(export_bytes(source)) == [
        HEADER,
        ["counters", "hits", b"41", None],
        ["counters", "short", b"x", 3],
        ["default", "a", b"1", None],
        ["default", "b", b"", None],
        ["default", "session", b"data", 59_998],
        ["default", "日本語", bytes(range(256)), None],
        ["z-last", "emoji 🎉", b"party", None],
        {"end": 7},
    ]


def test_export_returns_the_number_of_keys_written(source: kv.KvStore) -> None:
    fill(source)
    assert export_tenant(source, "acme", io.BytesIO()) == 7
    assert export_tenant(source, "nobody", io.BytesIO()) == 0


def test_export_of_named_buckets_writes_only_those(source: kv.KvStore) -> None:
    fill(source)
    records = decode(export_bytes(source, buckets=["z-last", "counters", "z-last", "missing"]))
    assert [record[0] for record in records[1:-1]] == ["counters", "counters", "z-last"]
    assert records[-1] == {"end": 3}


def test_export_leaves_out_other_tenants_and_expired_keys(source: kv.KvStore, clock: FakeClock) -> None:
    fill(source)
    source.tenant("other").bucket().set("secret", b"s")
    clock.tick(10)
    keys = [record[1] for record in decode(export_bytes(source))[1:-1]]
    assert "short" not in keys
    assert "secret" not in keys
    assert len(keys) == 6


def test_export_rejects_a_single_bucket_name_instead_of_a_list(source: kv.KvStore) -> None:
    with pytest.raises(kv.InvalidArgument, match="not the single name 'default'"):
        export_tenant(source, "acme", io.BytesIO(), buckets="default")


def test_export_rejects_invalid_tenant_and_bucket_names(source: kv.KvStore) -> None:
    with pytest.raises(kv.InvalidArgument, match="tenant name"):
        export_tenant(source, "no/slash", io.BytesIO())
    with pytest.raises(kv.InvalidArgument, match="bucket name"):
        export_tenant(source, "acme", io.BytesIO(), buckets=["ok", "not ok"])


@pytest.mark.parametrize("url", ["redis", "redis+cluster"])
def test_a_tenant_moves_to_redis_and_back_with_every_bucket_listed(source: kv.KvStore, url: str) -> None:
    fill(source)
    data = export_bytes(source)
    servers = _servers.single() if url == "redis" else _servers.cluster()
    with kv.KvStore.from_url(servers.url, key_prefix=f"t{uuid.uuid4().hex[:12]}", sweep_interval_s=None) as remote:
        assert import_dump(remote, io.BytesIO(data), tenant="acme").keys == 7
        # Every engine lists a tenant's buckets, so an export needs no --bucket on Redis either.
        assert remote.engine.buckets("acme") == ["counters", "default", "z-last"]
        again = export_bytes(remote)

    # The 5 ms key may expire on the server's real clock meanwhile; every other record comes back.
    def lasting(dump: bytes) -> list[tuple[str, str, bytes]]:
        return [(b, k, v) for b, k, v, _ in decode(dump)[1:-1] if k != "short"]

    assert lasting(again) == lasting(data)


# -- import ----------------------------------------------------------------------------------


def test_export_then_import_round_trips_every_bucket_key_value_and_ttl(
    source: kv.KvStore, target: kv.KvStore, clock: FakeClock
) -> None:
    fill(source)
    data = export_bytes(source)
    clock.tick(3)  # the time between export and import
    report = import_dump(target, io.BytesIO(data), tenant="acme")
    assert report == ImportReport(tenant="acme", keys=7, buckets=("counters", "default", "z-last"))
    assert snapshot(target) == (snapshot(source)[0], decode(data))
    session = target.tenant("acme").bucket("default").ttl("session")
    assert session is not None and 59_995 <= session <= 60_000
    assert target.tenant("acme").bucket("counters").increment("hits") == 42
    clock.tick(6)
    assert target.tenant("acme").bucket("counters").get("short") is None


def test_import_into_another_tenant_copies_the_state(source: kv.KvStore) -> None:
    fill(source)
    report = import_dump(source, io.BytesIO(export_bytes(source)), tenant="copy")
    assert report.tenant == "copy"
    assert source.tenant("copy").usage() == source.tenant("acme").usage()
    assert decode(export_bytes(source, "copy"))[1:] == decode(export_bytes(source, "acme"))[1:]


def test_import_rejects_an_invalid_tenant_override(source: kv.KvStore) -> None:
    with pytest.raises(kv.InvalidArgument, match="tenant name"):
        import_dump(source, io.BytesIO(dump_bytes()), tenant="bad name")


def test_import_of_an_empty_dump_writes_nothing(target: kv.KvStore) -> None:
    assert import_dump(target, io.BytesIO(dump_bytes()), tenant="acme") == ImportReport(
        tenant="acme", keys=0, buckets=()
    )
    assert target.tenant("acme").usage() == kv.Usage()


def test_import_onto_existing_keys_counts_each_overwrite_once_against_the_quota(target: kv.KvStore) -> None:
    bucket = target.tenant("acme", kv.Quota(max_keys=3, max_bytes=30)).bucket()
    bucket.set_many({"k1": b"aaaaaaa", "k2": b"bbbbbbb", "k3": b"ccccccc"})  # 3 keys, 27 bytes: full
    data = dump_bytes(
        ["default", "k1", b"A", None], ["default", "k2", b"B", 1000], ["default", "k3", b"CCCCCCCC", None]
    )
    report = import_dump(target, io.BytesIO(data), tenant="acme")
    assert report.keys == 3
    assert target.tenant("acme").usage() == kv.Usage(keys=3, bytes=6 + 1 + 1 + 8)
    assert bucket.get_many(["k1", "k2", "k3"]) == [b"A", b"B", b"CCCCCCCC"]
    assert bucket.ttl("k2") == 1000
    assert bucket.ttl("k1") is None


def test_a_key_repeated_in_a_dump_counts_once_and_its_last_record_wins(target: kv.KvStore) -> None:
    target.tenant("acme", kv.Quota(max_keys=2))
    data = dump_bytes(
        ["default", "k", b"first", None],
        ["default", "k", b"second", 5000],
        ["default", "m", b"only", 7000],
        ["default", "m", b"last", None],
    )
    assert import_dump(target, io.BytesIO(data), tenant="acme").keys == 2
    bucket = target.tenant("acme").bucket()
    assert bucket.get_many(["k", "m"]) == [b"second", b"last"]
    assert (bucket.ttl("k"), bucket.ttl("m")) == (5000, None)
    assert target.tenant("acme").usage() == kv.Usage(keys=2, bytes=1 + 6 + 1 + 4)


def test_import_allows_an_overwrite_that_shrinks_before_one_that_grows_at_a_full_quota(target: kv.KvStore) -> None:
    tenant = target.tenant("acme", kv.Quota(max_keys=10, max_bytes=22))
    tenant.bucket("a").set("k", b"x" * 10)
    tenant.bucket("b").set("k", b"y" * 10)  # 22 bytes: full
    data = dump_bytes(["a", "k", b"x" * 5, None], ["b", "k", b"y" * 15, None])
    import_dump(target, io.BytesIO(data), tenant="acme")
    assert tenant.usage() == kv.Usage(keys=2, bytes=22)


def test_import_rejects_a_grow_before_a_shrink_that_the_store_would_refuse_part_way(target: kv.KvStore) -> None:
    tenant = target.tenant("acme", kv.Quota(max_keys=10, max_bytes=22))
    tenant.bucket("a").set("k", b"x" * 10)
    tenant.bucket("b").set("k", b"y" * 10)
    before = snapshot(target)
    data = dump_bytes(["a", "k", b"x" * 15, None], ["b", "k", b"y" * 5, None])
    with pytest.raises(kv.QuotaExceeded, match=r"max_bytes is 22, 22 in use and this import adds 0 \(5 part-way\)"):
        import_dump(target, io.BytesIO(data), tenant="acme")
    assert snapshot(target) == before


def test_import_does_not_spend_the_tenants_rate_limit(source: kv.KvStore, target: kv.KvStore) -> None:
    fill(source)
    source.tenant("acme", kv.Quota(ops_per_second=1))
    data = export_bytes(source)
    target.tenant("acme", kv.Quota(ops_per_second=1))
    assert import_dump(target, io.BytesIO(data), tenant="acme").keys == 7


def test_import_writes_batches_across_many_buckets_and_keys(source: kv.KvStore, target: kv.KvStore) -> None:
    quota = kv.Quota(max_keys=5000)
    tenant = source.tenant("acme", quota)
    for name in ("one", "two"):
        for start in range(0, 2500, 1000):
            tenant.bucket(name).set_many(
                {f"key{i:05}": f"v{i}".encode() for i in range(start, min(start + 1000, 2500))}
            )
    tenant.bucket("two").set_with_ttl("key01500", b"ttl", 9000)
    target.tenant("acme", quota)
    report = import_dump(target, io.BytesIO(export_bytes(source)), tenant="acme")
    assert report == ImportReport(tenant="acme", keys=5000, buckets=("one", "two"))
    assert snapshot(target) == snapshot(source)


def test_a_seekable_dump_may_start_past_the_beginning_of_its_file(source: kv.KvStore, target: kv.KvStore) -> None:
    fill(source)
    stream = io.BytesIO(b"preamble" + export_bytes(source))
    stream.seek(len(b"preamble"))
    assert import_dump(target, stream, tenant="acme").keys == 7


def test_import_reads_a_dump_from_a_pipe(source: kv.KvStore, target: kv.KvStore) -> None:
    fill(source)
    data = export_bytes(source)
    read_fd, write_fd = os.pipe()

    def feed() -> None:
        with os.fdopen(write_fd, "wb") as writer:
            writer.write(data)

    feeder = threading.Thread(target=feed)
    feeder.start()
    with os.fdopen(read_fd, "rb") as reader:
        assert not reader.seekable()
        report = import_dump(target, reader, tenant="acme")
    feeder.join()
    assert report.keys == 7
    assert snapshot(target) == snapshot(source)


class ChunkedReader(io.RawIOBase):
    """A non-seekable stream that hands out its data in small chunks from a generator."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if not self._pending:
            self._pending = next(self._chunks, b"")
        count = min(len(buffer), len(self._pending))
        buffer[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        return count


def test_import_reads_a_dump_from_a_non_seekable_generator_stream(source: kv.KvStore, target: kv.KvStore) -> None:
    fill(source)
    data = export_bytes(source)
    chunks = (data[i : i + 7] for i in range(0, len(data), 7))
    assert import_dump(target, io.BufferedReader(ChunkedReader(chunks)), tenant="acme").keys == 7
    assert snapshot(target) == snapshot(source)


def test_a_bad_dump_from_a_pipe_changes_nothing(target: kv.KvStore) -> None:
    stream = io.BufferedReader(ChunkedReader(iter([dump_bytes(["default", "k", b"v", None])[:-1]])))
    with pytest.raises(kv.InvalidArgument, match="truncated after record 1: no trailer"):
        import_dump(target, stream, tenant="acme")
    assert target.tenant("acme").usage() == kv.Usage()


def test_export_and_import_of_20000_keys_stream_in_bounded_memory(tmp_path: Path) -> None:
    quota = kv.Quota(max_keys=50_000)
    value = b"v" * 200  # 20,000 keys of ~210 bytes: ~4 MB of state, well over the bound below
    path = tmp_path / "dump"
    with (
        kv.KvStore.open(tmp_path / "a", sweep_interval_s=None) as source,
        kv.KvStore.open(tmp_path / "b", sweep_interval_s=None) as target,
    ):
        bucket = source.tenant("acme", quota).bucket()
        for start in range(0, 20_000, 1000):
            bucket.set_many({f"key-{i:06}": value for i in range(start, start + 1000)})
        target.tenant("acme", quota)

        with path.open("wb") as out:
            export_peak = peak_bytes_of(lambda: export_tenant(source, "acme", out))
        with path.open("rb") as dump:
            import_peak = peak_bytes_of(lambda: import_dump(target, dump, tenant="acme"))

        assert target.tenant("acme").usage() == source.tenant("acme").usage()
    assert export_peak < 2_000_000
    assert import_peak < 2_000_000


def peak_bytes_of(action: Any) -> int:
    """The peak Python memory `action` allocates above what was allocated before it."""
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        action()
        return tracemalloc.get_traced_memory()[1] - baseline
    finally:
        tracemalloc.stop()


# -- every bad dump changes nothing ---------------------------------------------------------

GOOD = ["default", "good", b"v", None]
BAD_DUMPS: dict[str, tuple[bytes, type[kv.KvError], str]] = {
    "empty file": (b"", kv.InvalidArgument, "dump is empty or truncated: no header"),
    "truncated, no trailer": (
        dump_bytes(GOOD, ["default", "more", b"v", None])[:-2],
        kv.InvalidArgument,
        "dump is truncated after record 2: no trailer",
    ),
    "truncated inside a record": (
        dump_bytes(GOOD, ["default", "more", b"v" * 50, None])[:-20],
        kv.InvalidArgument,
        "dump is truncated after record 1: no trailer",
    ),
    "wrong count": (
        dump_bytes(GOOD, trailer={"end": 5}),
        kv.InvalidArgument,
        "dump trailer counts 5 records but the dump holds 1",
    ),
    "malformed trailer": (dump_bytes(GOOD, trailer={"end": "1"}), kv.InvalidArgument, "dump trailer must be"),
    "bytes after the trailer": (dump_bytes(GOOD, extra=b"\x00"), kv.InvalidArgument, "1 bytes after its trailer"),
    "a second dump after the trailer": (
        dump_bytes(GOOD, extra=dump_bytes(GOOD)),
        kv.InvalidArgument,
        "bytes after its trailer",
    ),
    "not msgpack": (b"\xc1\xc1\xc1", kv.InvalidArgument, "dump header is not valid msgpack"),
    "text file": (b"hello, world\n", kv.InvalidArgument, "dump header: not a wasmkv dump"),
    "huge header": (
        msgpack.packb({**HEADER, "tenant": "t" * 100_000}),
        kv.InvalidArgument,
        "dump header is over 65536 bytes: not a wasmkv dump",
    ),
    "another format": (
        dump_bytes(GOOD, header={**HEADER, "format": "other"}),
        kv.InvalidArgument,
        "not a wasmkv dump",
    ),
    "unsupported version": (
        dump_bytes(GOOD, header={**HEADER, "version": 2}),
        kv.InvalidArgument,
        "version 2 is not supported",
    ),
    "version as bool": (
        dump_bytes(GOOD, header={**HEADER, "version": True}),
        kv.InvalidArgument,
        "version True is not supported",
    ),
    "unknown header field": (
        dump_bytes(GOOD, header={**HEADER, "extra": 1}),
        kv.InvalidArgument,
        "dump header must have the fields",
    ),
    "invalid tenant name": (
        dump_bytes(GOOD, header={**HEADER, "tenant": "../etc"}),
        kv.InvalidArgument,
        "dump header: tenant name must be",
    ),
    "garbage in place of a record": (
        dump_bytes(GOOD)[: -len(msgpack.packb({"end": 1}))] + b"\xc1",
        kv.InvalidArgument,
        "dump record 2 is not valid msgpack",
    ),
    "record with three fields": (
        dump_bytes(GOOD, ["default", "k", b"v"]),
        kv.InvalidArgument,
        r"dump record 2: expected \[bucket, key, value, ttl_ms\], got an array of 3 items",
    ),
    "record that is not an array": (dump_bytes(GOOD, 42), kv.InvalidArgument, "dump record 2: expected"),
    "bad bucket name": (
        dump_bytes(GOOD, ["no/slash", "k", b"v", None]),
        kv.InvalidArgument,
        "dump record 2: bucket name must be",
    ),
    "key as bytes": (
        dump_bytes(GOOD, ["default", b"k", b"v", None]),
        kv.InvalidKey,
        "dump record 2: key must be a str",
    ),
    "empty key": (dump_bytes(GOOD, ["default", "", b"v", None]), kv.InvalidKey, "dump record 2: key must not be empty"),
    "key with a control character": (
        dump_bytes(GOOD, ["default", "bad\nkey", b"v", None]),
        kv.InvalidKey,
        "dump record 2: key contains a control character",
    ),
    "key over max_key_bytes": (
        dump_bytes(GOOD, ["default", "k" * 33, b"v", None]),
        kv.InvalidKey,
        "dump record 2: key is 33 bytes, over max_key_bytes 32",
    ),
    "key not UTF-8": (
        dump_bytes(GOOD)[: -len(msgpack.packb({"end": 1}))]
        + b"\x94\xa7default\xa2\xff\xfe\xc4\x01v\xc0"
        + msgpack.packb({"end": 2}),
        kv.InvalidKey,
        "dump record 2: key is not valid UTF-8",
    ),
    "value as str": (
        dump_bytes(GOOD, ["default", "k", "text", None]),
        kv.InvalidArgument,
        "dump record 2: value must be bin",
    ),
    "value over max_value_bytes": (
        dump_bytes(GOOD, ["default", "k", b"v" * 101, None]),
        kv.ValueTooLarge,
        "dump record 2: value is 101 bytes, over max_value_bytes 100",
    ),
    "value over any record size": (
        dump_bytes(GOOD, ["default", "k", b"v" * 200_000, None]),
        kv.ValueTooLarge,
        "dump record 2 is over 65668 bytes, larger than any valid record: its value is over max_value_bytes 100",
    ),
    "zero ttl": (dump_bytes(GOOD, ["default", "k", b"v", 0]), kv.InvalidArgument, "dump record 2: ttl_ms must be"),
    "negative ttl": (dump_bytes(GOOD, ["default", "k", b"v", -5]), kv.InvalidArgument, "dump record 2: ttl_ms"),
    "float ttl": (dump_bytes(GOOD, ["default", "k", b"v", 1.5]), kv.InvalidArgument, "dump record 2: ttl_ms"),
    "ttl past the maximum": (
        dump_bytes(GOOD, ["default", "k", b"v", kv.MAX_TTL_MS + 1]),
        kv.InvalidArgument,
        "dump record 2: ttl_ms",
    ),
    "key out of order": (
        dump_bytes(GOOD, ["default", "a", b"v", None]),
        kv.InvalidArgument,
        "dump record 2: key 'a' in bucket 'default' is out of order",
    ),
    "bucket out of order": (
        dump_bytes(GOOD, ["e", "k", b"v", None], ["d", "k", b"v", None]),
        kv.InvalidArgument,
        "dump record 3: key 'k' in bucket 'd' is out of order",
    ),
    "over max_keys": (
        dump_bytes(*[["default", f"k{i:02}", b"v", None] for i in range(9)]),
        kv.QuotaExceeded,
        "quota exceeded: max_keys is 10, 2 in use and this import adds 9; nothing was written",
    ),
    "over max_bytes": (
        dump_bytes(
            *[[f"b{i}", "k" * 20, b"v" * 100, 60_000] for i in range(8)], ["default", "existing", b"v" * 100, None]
        ),
        kv.QuotaExceeded,
        "quota exceeded: max_bytes is 1000, 15 in use and this import adds 1057; nothing was written",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_DUMPS))
def test_a_bad_dump_raises_and_changes_nothing(target: kv.KvStore, case: str) -> None:
    data, error, message = BAD_DUMPS[case]
    tenant = target.tenant("acme", SMALL)
    tenant.bucket().set("existing", b"old")
    tenant.bucket("b1").set_with_ttl("k", b"ttl", 60_000)
    before = snapshot(target)
    with pytest.raises(error, match=message):
        import_dump(target, io.BytesIO(data), tenant="acme")
    assert snapshot(target) == before


def test_a_bad_record_after_many_good_batches_changes_nothing(target: kv.KvStore) -> None:
    target.tenant("acme", kv.Quota(max_keys=5000))
    good = [["default", f"key{i:05}", b"v", None] for i in range(2500)]
    data = dump_bytes(*good, ["default", "zzz", b"v", -1])
    with pytest.raises(kv.InvalidArgument, match="dump record 2501: ttl_ms"):
        import_dump(target, io.BytesIO(data), tenant="acme")
    assert target.tenant("acme").usage() == kv.Usage()
