"""Attacks on the read fast paths (commit e169c85): hostile keys through the batch check and the point read,
forged cursors, repeated keys, keys the page decoders split and join, against the slow per-key check."""

from __future__ import annotations

import base64
import itertools
import random
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from conftest import FakeClock

from wasmkv import kv


class _Str(str):
    __slots__ = ()


class _Bytes(bytes):
    __slots__ = ()


@pytest.fixture(params=["lmdb", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[kv.KvStore]:
    if request.param == "lmdb":
        opened = kv.KvStore.open(tmp_path / "s", sweep_interval_s=None)
    else:
        opened = kv.KvStore.memory(sweep_interval_s=None)
    with opened:
        yield opened


HOSTILE: list[object] = [
    "",
    b"",
    "a\0b",
    b"a\0b",
    "a\nb",
    b"a\nb",
    "\n",
    "a\x7f",
    b"a\x7f",
    "a\x1fb",
    "\ud800",
    "a\udcff",
    b"\xff",
    b"\xc3",
    b"\xed\xa0\x80",  # a surrogate in UTF-8
    b"\xc0\x80",  # an overlong NUL
    "x" * 513,
    b"x" * 513,
    "é" * 257,  # 514 bytes in UTF-8, 257 characters
    "€" * 171,  # 513 bytes
    _Str("a"),
    _Bytes(b"a"),
    bytearray(b"a"),
    memoryview(b"a"),
    1,
    None,
]

FINE: list[object] = [
    "a",
    b"a",
    "é",
    "é".encode(),
    "\x85",  # a C1 control: not among the characters keys may not hold
    "\u2028",
    "x" * 512,
    b"x" * 512,
    "é" * 256,  # 512 bytes
    "€" * 170 + "ab",
    "k\x20",
    "~",
]


def _refused(call: object) -> type[BaseException] | None:
    try:
        call()  # type: ignore[operator]
    except kv.KvError as exc:
        return type(exc)
    return None


@pytest.mark.parametrize("key", HOSTILE + FINE, ids=repr)
def test_a_batch_accepts_a_key_exactly_when_a_point_read_does(store: kv.KvStore, key: object) -> None:
    bucket = store.tenant("t").bucket()
    alone = _refused(lambda: bucket.get(key))  # type: ignore[arg-type]
    assert (alone is None) == any(key is fine for fine in FINE)
    for batch in ([key], ["ok", key], [key, "ok"], [b"ok", key], ["ok", "ok", key, "ok"], [key, key]):
        assert _refused(lambda batch=batch: bucket.get_many(batch)) == alone, batch
        assert _refused(lambda batch=batch: bucket.delete_many(batch)) == alone, batch


def test_a_batch_mixing_str_and_bytes_of_one_key_reads_it_each_time(store: kv.KvStore) -> None:
    bucket = store.tenant("t").bucket()
    bucket.set("é", b"1")
    bucket.set("a", b"2")
    keys: list[object] = ["é", "é".encode(), "a", b"a", "é", "missing", b"missing", "a"]
    assert bucket.get_many(keys) == [b"1", b"1", b"2", b"2", b"1", None, None, b"2"]  # type: ignore[arg-type]


def test_get_many_with_repeats_long_keys_and_expired_keys_matches_point_reads(tmp_path: Path) -> None:
    clock = [1_700_000_000.0]
    with kv.KvStore.open(tmp_path / "s", clock=lambda: clock[0], sweep_interval_s=None) as store:
        bucket = store.tenant("t").bucket()
        rng = random.Random(7)
        names = ["a", "é", "€" * 170, "L" * 511, "L" * 510 + "M", "L" * 495, "L" * 494, "z"]
        for name in names:
            if rng.random() < 0.5:
                bucket.set_with_ttl(name, name.encode()[:9], rng.choice([1, 10_000]))
            else:
                bucket.set(name, name.encode()[:9])
        clock[0] += 0.005  # the 1 ms TTLs expire, unswept
        for _ in range(50):
            keys = [rng.choice([*names, "missing"]) for _ in range(rng.randrange(1, 12))]
            assert bucket.get_many(keys) == [bucket.get(key) for key in keys], keys


def test_listings_decode_every_key_as_it_was_written(store: kv.KvStore) -> None:
    bucket = store.tenant("t").bucket("b")
    other = store.tenant("t").bucket("b2")
    names = ["a", "é", "\x85", "\u2028", "€" * 170, "L" * 512, "L" * 510 + "é", "~", "z\u00ff", "\U0001f600"]
    for name in names:
        bucket.set(name, name.encode()[:20])
        other.set(name + "!" if len(name.encode()) < 512 else name, b"other")
    expected = sorted(names, key=str.encode)
    for reverse in (False, True):
        listed: list[str] = []
        scanned: list[tuple[str, bytes]] = []
        cursor = None
        while True:
            page = bucket.list_keys(limit=3, reverse=reverse, cursor=cursor)
            listed += page.keys
            if (cursor := page.cursor) is None:
                break
        while True:
            scan_page = bucket.scan(limit=3, reverse=reverse, cursor=cursor)
            scanned += scan_page.items
            if (cursor := scan_page.cursor) is None:
                break
        assert listed == (expected[::-1] if reverse else expected)
        assert scanned == [(name, name.encode()[:20]) for name in listed]


def _cursor(fields: list[object]) -> str:
    return base64.urlsafe_b64encode(msgpack.packb(fields)).rstrip(b"=").decode()


@pytest.mark.parametrize(
    "last_key",
    [b"", b"\x00", b"a\x00", b"\x00b2\x00z", b"\xff", b"a" * 600, b"\xff" * 500, b"z\x01", b"a\x7f"],
    ids=repr,
)
def test_a_forged_cursor_never_reads_past_its_bucket(store: kv.KvStore, last_key: bytes) -> None:
    tenant = store.tenant("t")
    bucket = tenant.bucket("b")
    for name in ("a", "b", "z"):
        bucket.set(name, b"mine")
        tenant.bucket("b2").set(name, b"theirs")
        tenant.bucket("a").set(name, b"theirs")
        store.tenant("t2").bucket("b").set(name, b"theirs")
        store.tenant("t0").bucket("b").set(name, b"theirs")
    for reverse in (False, True):
        cursor = _cursor([2, b"", None, None, reverse, last_key])
        for read in ("list_keys", "scan"):
            try:
                if read == "list_keys":
                    keys = bucket.list_keys(cursor=cursor, reverse=reverse).keys
                else:
                    keys = [key for key, _ in bucket.scan(cursor=cursor, reverse=reverse).items]
            except kv.InvalidArgument as exc:
                assert "\n" not in str(exc)
            else:
                assert set(keys) <= {"a", "b", "z"}
                assert all(value == b"mine" for _, value in bucket.scan(cursor=cursor, reverse=reverse).items)


@pytest.mark.parametrize(
    "fields",
    [[2, 5, None, None, False, b"a"], [2, b"", 7, None, False, b"a"], [2, "x", None, None, False, b"a"]],
    ids=repr,
)
def test_a_cursor_whose_fields_have_the_wrong_types_is_one_clear_invalid_argument(
    store: kv.KvStore, fields: list[object]
) -> None:
    bucket = store.tenant("t").bucket()
    with pytest.raises(kv.InvalidArgument):
        bucket.list_keys(cursor=_cursor(fields))


@pytest.mark.parametrize("reverse", [False, True])
def test_a_scan_page_copies_little_more_than_its_byte_bound_whatever_its_limit(tmp_path: Path, reverse: bool) -> None:
    # Before: the all-live fast path copied `limit + 1` whole records before it looked at their size, so a
    # page of 1000 over 1 MiB values copied every value there was (402 MiB for 400) to answer with 1 MiB.
    big = b"v" * (kv.DEFAULT_MAX_VALUE_BYTES - 64)
    with kv.KvStore.open(tmp_path / "s", sweep_interval_s=None) as store:
        bucket = store.tenant("t", kv.Quota(max_bytes=2**32)).bucket("b")
        keys = [f"k{i:03}" for i in range(120)]
        for key in keys:
            bucket.set(key, big)
        bucket.set_with_ttl("k050x", b"small", 3_600_000)  # a TTL in the tenant: the same bound holds
        tracemalloc.start()
        try:
            page = bucket.scan(limit=1000, reverse=reverse)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert [key for key, _ in page.items] == [keys[-1] if reverse else keys[0]] and page.cursor is not None
        assert peak < 48 * 2**20, f"one scan page held {peak / 2**20:.0f} MiB"
        # Paging on with the largest limit still yields every pair once, in order.
        walked = [key for key, _ in bucket.items(page_size=1000, reverse=reverse)]
        expected = sorted([*keys, "k050x"], reverse=reverse)
        assert walked == expected


def test_get_many_with_max_bytes_refuses_values_heavier_together_and_reads_little_more(tmp_path: Path) -> None:
    big = b"v" * (kv.DEFAULT_MAX_VALUE_BYTES - 64)
    with kv.KvStore.open(tmp_path / "s", sweep_interval_s=None) as store:
        bucket = store.tenant("t", kv.Quota(max_bytes=2**32, max_key_bytes=600)).bucket("b")
        keys = [f"k{i:03}" for i in range(100)]
        for key in keys:
            bucket.set(key, big)
        long_key = "L" * 590  # the long-key path is held to the same bound
        bucket.set(long_key, b"small")
        assert bucket.get_many(keys[:2], max_bytes=2 * len(big)) == [big, big]
        assert bucket.get_many([long_key, "absent"], max_bytes=5) == [b"small", None]
        for asked in (keys, [long_key, *keys], (key for key in keys)):
            tracemalloc.start()
            try:
                with pytest.raises(kv.ValueTooLarge, match="weigh more than max_bytes=3000000 together"):
                    bucket.get_many(asked, max_bytes=3_000_000)
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            assert peak < 48 * 2**20, f"a refused get_many held {peak / 2**20:.0f} MiB"
        for bad in (-1, 1.5, "10", True):
            with pytest.raises(kv.InvalidArgument, match="max_bytes must be None or an int >= 0"):
                bucket.get_many(keys[:1], max_bytes=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda b: b.get_many(None), "keys must be a collection of keys, got NoneType"),
        (lambda b: b.delete_many(5), "keys must be a collection of keys, got int"),
        (lambda b: b.set_many(None), "set_many takes a mapping or \\(key, value\\) pairs, got NoneType"),
        (lambda b: b.get_many(itertools.count()), "a batch holds at most 1000 items, got more"),
        (lambda b: b.delete_many(str(i) for i in itertools.count()), "a batch holds at most 1000 items, got more"),
        (lambda b: b.set_many((str(i), b"v") for i in itertools.count()), "a batch holds at most 1000 items"),
    ],
)
def test_batch_methods_refuse_what_is_no_collection_and_endless_iterators_in_one_line(
    store: kv.KvStore, call: Any, message: str
) -> None:
    bucket = store.tenant("acme").bucket()
    bucket.set("kept", b"v")
    with pytest.raises(kv.InvalidArgument, match=message):
        call(bucket)
    assert bucket.list_keys().keys == ["kept"]


def test_a_listing_pages_past_keys_longer_than_a_lowered_max_key_bytes(store: kv.KvStore) -> None:
    # Before: the cursor's length bound used the quota of now, so the page after such a key was refused.
    tenant = store.tenant("acme")
    bucket = tenant.bucket()
    keys = [f"{i}" + "x" * 300 for i in range(3)]
    for key in keys:
        bucket.set(key, b"v")
    tenant.set_quota(kv.Quota(max_key_bytes=64))
    assert [key for key, _ in bucket.items(page_size=1)] == keys
    assert [key for key, _ in bucket.items(page_size=1, reverse=True)] == keys[::-1]


def test_max_key_bytes_stops_where_a_key_can_still_be_stored() -> None:
    # Before: Quota(max_key_bytes=70_000) was accepted, and a key of 66,100 bytes raised a raw OverflowError.
    with pytest.raises(kv.InvalidArgument, match=r"Quota\.max_key_bytes is at most 65535, got 70000"):
        kv.Quota(max_key_bytes=70_000)
    with kv.KvStore.memory() as store:
        bucket = store.tenant("acme", kv.Quota(max_key_bytes=65_535, max_bytes=2**30)).bucket()
        longest = "k" * 65_535
        bucket.set(longest, b"v")
        assert bucket.get(longest) == b"v" and bucket.list_keys().keys == [longest]
    # A quota stored before the ceiling loads at the ceiling instead of making the tenant unreadable.
    record = msgpack.packb({**msgpack.unpackb(kv.Quota().to_record()), "max_key_bytes": 100_000})
    assert kv.Quota.from_record(record).max_key_bytes == 65_535


@pytest.mark.parametrize("swept_first", [False, True])
@pytest.mark.parametrize(
    "revive",
    [
        lambda b: b.set("c", b"1"),
        lambda b: b.set_with_ttl("c", b"1", 60_000),
        lambda b: b.increment("c"),
        lambda b: b.compare_and_swap("c", None, b"1"),
        lambda b: b.set_many({"c": b"1"}),
    ],
)
def test_writing_an_expired_key_counts_as_a_new_key_whether_or_not_it_was_swept(
    tmp_path: Path, swept_first: bool, revive: Any
) -> None:
    # Before: an expired record not yet swept made the write an overwrite that grew nothing, so it passed a
    # quota lowered below usage; once swept, the same write was refused.
    clock = FakeClock()
    with kv.KvStore.open(tmp_path / "s", sweep_interval_s=None, clock=clock) as store:
        tenant = store.tenant("t", kv.Quota(max_keys=3))
        bucket = tenant.bucket()
        bucket.set("a", b"1")
        bucket.set("b", b"1")
        bucket.set_with_ttl("c", b"1", 1)
        clock.tick(1000)  # c expired: two live keys
        tenant.set_quota(kv.Quota(max_keys=1))  # below usage: writes that grow it fail
        if swept_first:
            store.sweep()
        with pytest.raises(kv.QuotaExceeded, match="max_keys is 1"):
            revive(bucket)
        assert bucket.list_keys().keys == ["a", "b"] and bucket.get("c") is None
        # Room again: the expired key comes back, counted once.
        tenant.set_quota(kv.Quota(max_keys=3))
        revive(bucket)
        assert tenant.usage().keys == 3
