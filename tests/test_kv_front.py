"""The front layer's policy, the same over any engine, so tested once: keys, cursors, limits, rates, names.

The engine semantics under it (TTLs, atomics, listing, quotas) are the engine
contract, in test_engine_contract.py.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator

import msgpack
import pytest
from conftest import FakeClock

from wasmkv import kv
from wasmkv.kv._rules import RateLimiter


@pytest.fixture
def store(clock: FakeClock) -> Iterator[kv.KvStore]:
    with kv.KvStore.memory(clock=clock, sweep_interval_s=None) as opened:
        yield opened


@pytest.fixture
def bucket(store: kv.KvStore) -> kv.Bucket:
    return store.tenant("acme").bucket()


def test_keys_may_be_any_printable_unicode(bucket: kv.Bucket) -> None:
    keys = ["héllo wörld", "日本語", "emoji 🎉", "../../etc/passwd", "a/b:c", " "]
    for key in keys:
        bucket.set(key, key.encode())
    assert bucket.get_many(keys) == [key.encode() for key in keys]
    assert bucket.list_keys().keys == sorted(keys, key=str.encode)


def test_bytes_keys_are_the_same_keys_as_their_str(bucket: kv.Bucket) -> None:
    bucket.set("clé", b"v")
    assert bucket.get("clé".encode()) == b"v"
    assert bucket.delete_many(["clé".encode()]) == 1


def test_list_keys_pages_through_cursors_and_ends_with_none(bucket: kv.Bucket) -> None:
    expected = [f"item:{i:04d}" for i in range(257)]
    bucket.set_many({key: b"x" for key in expected[:200]})
    bucket.set_many({key: b"x" for key in expected[200:]})
    bucket.set("other", b"")
    seen: list[str] = []
    page = bucket.list_keys("item:", limit=50)
    pages = 1
    while page.cursor is not None:
        assert len(page.keys) == 50
        seen += page.keys
        page = bucket.list_keys("item:", cursor=page.cursor, limit=50)
        pages += 1
    seen += page.keys
    assert seen == expected
    assert pages == 6


def test_list_keys_of_an_exact_page_multiple_ends_with_no_cursor(bucket: kv.Bucket) -> None:
    bucket.set_many({f"k{i}": b"" for i in range(10)})
    page = bucket.list_keys(limit=10)
    assert len(page.keys) == 10
    assert page.cursor is None


def test_a_cursor_is_opaque_and_rejected_for_another_prefix_or_bucket(store: kv.KvStore, bucket: kv.Bucket) -> None:
    bucket.set_many({f"a{i}": b"" for i in range(5)})
    page = bucket.list_keys("a", limit=2)
    assert page.cursor is not None
    assert "a1" not in page.cursor
    with pytest.raises(kv.InvalidArgument, match="different listing"):
        bucket.list_keys("b", cursor=page.cursor)
    # The cursor carries only the listing's own position: another bucket's listing resumes at the same key.
    other = store.tenant("acme").bucket("other")
    other.set_many({f"a{i}": b"" for i in range(5)})
    assert other.list_keys("a", cursor=page.cursor).keys == ["a2", "a3", "a4"]


def test_crafted_keys_with_separators_are_invalid_and_reach_nothing(store: kv.KvStore) -> None:
    store.tenant("victim").bucket("secret").set("k", b"private")
    attacker = store.tenant("vic").bucket()
    for crafted in ["tim\0secret\0k", "\0k", "\x01"]:
        with pytest.raises(kv.InvalidKey):
            attacker.get(crafted)
    assert store.tenant("victim").bucket("secret").get("k") == b"private"


def test_the_tenant_quota_covers_all_its_buckets(store: kv.KvStore) -> None:
    tenant = store.tenant("small", kv.Quota(max_keys=2))
    tenant.bucket("a").set("k", b"")
    tenant.bucket("b").set("k", b"")
    with pytest.raises(kv.QuotaExceeded):
        tenant.bucket("c").set("k", b"")


def test_value_over_max_value_bytes_is_rejected(store: kv.KvStore) -> None:
    bucket = store.tenant("small", kv.Quota(max_value_bytes=8)).bucket()
    bucket.set("k", b"x" * 8)
    with pytest.raises(kv.ValueTooLarge, match="max_value_bytes 8") as raised:
        bucket.set("k", b"x" * 9)
    assert raised.value.code == 3
    assert bucket.get("k") == b"x" * 8


def test_key_over_max_key_bytes_is_rejected(store: kv.KvStore) -> None:
    bucket = store.tenant("small", kv.Quota(max_key_bytes=4)).bucket()
    bucket.set("abcd", b"")
    with pytest.raises(kv.InvalidKey, match="max_key_bytes 4"):
        bucket.set("abcde", b"")
    with pytest.raises(kv.InvalidKey):
        bucket.get("ééé")  # three chars, six bytes


def test_rate_limit_rejects_operations_past_ops_per_second(store: kv.KvStore) -> None:
    bucket = store.tenant("slow", kv.Quota(ops_per_second=5)).bucket()
    for _ in range(5):
        bucket.set("k", b"")
    with pytest.raises(kv.RateLimited, match="ops_per_second is 5") as raised:
        bucket.get("k")
    assert raised.value.code == 10


def test_the_default_quota_is_the_documented_one(store: kv.KvStore) -> None:
    assert store.tenant("acme").quota == kv.Quota(
        max_keys=10_000, max_bytes=64 * 1024 * 1024, max_value_bytes=1024 * 1024, max_key_bytes=512
    )
    bucket = store.tenant("acme").bucket()
    bucket.set("k" * 512, b"v" * (1024 * 1024))
    with pytest.raises(kv.InvalidKey):
        bucket.set("k" * 513, b"")
    with pytest.raises(kv.ValueTooLarge):
        bucket.set("k", b"v" * (1024 * 1024 + 1))


# -- ranges, reverse order and scans -----------------------------------------------------------


@pytest.fixture
def numbered(bucket: kv.Bucket) -> kv.Bucket:
    bucket.set_many({f"n:{i:02d}": b"%d" % i for i in range(25)} | {"m": b"", "o": b""})
    return bucket


def _all_keys(bucket: kv.Bucket, limit: int, **listing: object) -> list[str]:
    keys: list[str] = []
    cursor = None
    while True:
        page = bucket.list_keys(cursor=cursor, limit=limit, **listing)  # type: ignore[arg-type]
        keys += page.keys
        if page.cursor is None:
            return keys
        cursor = page.cursor


def test_list_keys_narrows_to_start_and_end_in_either_order(numbered: kv.Bucket) -> None:
    expected = [f"n:{i:02d}" for i in range(5, 20)]
    assert _all_keys(numbered, 4, prefix="n:", start="n:05", end="n:20") == expected
    assert _all_keys(numbered, 4, prefix="n:", start="n:05", end="n:20", reverse=True) == expected[::-1]
    # start and end without a prefix; bounds outside the prefix are clipped by it.
    assert numbered.list_keys(start="n:24", end="p").keys == ["n:24", "o"]
    assert numbered.list_keys("n:", start="a", end="z", limit=1000).keys == [f"n:{i:02d}" for i in range(25)]
    assert numbered.list_keys(reverse=True, limit=2).keys == ["o", "n:24"]


def test_a_range_with_start_at_or_after_end_is_empty(numbered: kv.Bucket) -> None:
    for start, end in (("n:10", "n:10"), ("n:10", "n:05")):
        assert numbered.list_keys(start=start, end=end) == kv.KeyPage(keys=[], cursor=None)
        assert numbered.scan(start=start, end=end, reverse=True) == kv.ScanPage(items=[], cursor=None)


def test_scan_pages_pairs_with_their_values(numbered: kv.Bucket) -> None:
    page = numbered.scan("n:", start="n:10", limit=4)
    assert page.items == [(f"n:{i:02d}", b"%d" % i) for i in range(10, 14)]
    page = numbered.scan("n:", start="n:10", limit=100, cursor=page.cursor)
    assert page == kv.ScanPage(items=[(f"n:{i:02d}", b"%d" % i) for i in range(14, 25)], cursor=None)
    assert numbered.scan("n:", end="n:02", reverse=True).items == [("n:01", b"1"), ("n:00", b"0")]


@pytest.mark.parametrize(
    "other",
    [{"prefix": "m"}, {"start": "n:01"}, {"end": "n:30"}, {"reverse": True}],
    ids=["prefix", "start", "end", "reverse"],
)
def test_a_cursor_only_continues_the_listing_it_came_from(numbered: kv.Bucket, other: dict[str, object]) -> None:
    listing: dict[str, object] = {"prefix": "n:", "limit": 3}
    page = numbered.scan(**listing)  # type: ignore[arg-type]
    with pytest.raises(kv.InvalidArgument, match="different listing"):
        numbered.scan(**(listing | other), cursor=page.cursor)  # type: ignore[arg-type]
    with pytest.raises(kv.InvalidArgument, match="different listing"):
        numbered.list_keys(**(listing | other), cursor=page.cursor)  # type: ignore[arg-type]
    # The same listing's cursors are interchangeable between list_keys and scan.
    assert numbered.list_keys("n:", cursor=page.cursor, limit=2).keys == ["n:03", "n:04"]


def test_a_cursor_from_before_ranges_still_continues_its_listing(numbered: kv.Bucket) -> None:
    # Version 1 cursors (prefix and last key) were issued by earlier releases; stored ones keep working.
    old = base64.urlsafe_b64encode(msgpack.packb([1, b"n:", b"n:22"])).rstrip(b"=").decode()
    assert numbered.list_keys("n:", cursor=old).keys == ["n:23", "n:24"]
    assert numbered.scan("n:", cursor=old).items == [("n:23", b"23"), ("n:24", b"24")]
    with pytest.raises(kv.InvalidArgument, match="different listing"):
        numbered.list_keys("n:", cursor=old, reverse=True)


def test_items_reads_each_page_only_when_iteration_reaches_it(numbered: kv.Bucket) -> None:
    pairs = numbered.items("n:", page_size=10)
    assert next(pairs) == ("n:00", b"0")
    numbered.set("n:15", b"changed")  # not read yet: the page holding it comes later
    numbered.delete("n:24")
    rest = list(pairs)
    assert rest[:9] == [(f"n:{i:02d}", b"%d" % i) for i in range(1, 10)]
    assert ("n:15", b"changed") in rest
    assert [key for key, _ in rest][-1] == "n:23"


def test_items_walks_every_pair_in_reverse_across_pages(numbered: kv.Bucket) -> None:
    expected = [(f"n:{i:02d}", b"%d" % i) for i in range(24, -1, -1)]
    assert list(numbered.items("n:", reverse=True, page_size=7)) == expected
    assert list(numbered.items("x")) == []


def test_a_scan_costs_a_token_per_pair_within_one_second_of_budget(store: kv.KvStore) -> None:
    store.tenant("slow").bucket().set_many({f"k{i}": b"" for i in range(5)})
    # Two a second: the scan's five pairs cost the whole bucket (not five), so the next call waits.
    bucket = store.tenant("slow", kv.Quota(ops_per_second=2)).bucket()
    assert len(bucket.scan().items) == 5
    with pytest.raises(kv.RateLimited, match="ops_per_second is 2"):
        bucket.scan()


def test_charged_tokens_are_owed_until_the_bucket_refills() -> None:
    clock = FakeClock()
    limiter = RateLimiter(10, clock)
    limiter.acquire()
    limiter.charge(4)  # a page of five pairs: 5 of 10 spent
    for _ in range(5):
        limiter.acquire()
    with pytest.raises(kv.RateLimited):
        limiter.acquire()
    limiter.charge(50)  # never more than one second's budget, the acquired token included
    clock.tick(900)  # refills 9: the balance was -9
    with pytest.raises(kv.RateLimited):
        limiter.acquire()
    clock.tick(100)
    limiter.acquire()
