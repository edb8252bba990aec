"""The front layer's policy, the same over any engine, so tested once: keys, cursors, limits, rates, names.

The engine semantics under it (TTLs, atomics, listing, quotas) are the engine
contract, in test_engine_contract.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from conftest import FakeClock

from wasmkv import kv


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
    with pytest.raises(kv.InvalidArgument, match="different prefix"):
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
