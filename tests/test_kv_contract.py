"""The store contract: every store (local and clustered) passes these same assertions."""

from __future__ import annotations

import pytest
from conftest import TtlClock

from wasmkv import kv

# -- basic operations ------------------------------------------------------------------------


def test_get_of_a_missing_key_returns_none(bucket: kv.Bucket) -> None:
    assert bucket.get("nope") is None


def test_set_then_get_returns_the_value(bucket: kv.Bucket) -> None:
    bucket.set("greeting", b"hello")
    assert bucket.get("greeting") == b"hello"


def test_values_may_be_empty_and_binary(bucket: kv.Bucket) -> None:
    bucket.set("empty", b"")
    bucket.set("binary", bytes(range(256)))
    assert bucket.get("empty") == b""
    assert bucket.get("binary") == bytes(range(256))


def test_keys_may_be_any_printable_unicode(bucket: kv.Bucket) -> None:
    for key in ["héllo wörld", "日本語", "emoji 🎉", "../../etc/passwd", "a/b:c", " "]:
        bucket.set(key, key.encode())
    for key in ["héllo wörld", "日本語", "emoji 🎉", "../../etc/passwd", "a/b:c", " "]:
        assert bucket.get(key) == key.encode()


def test_set_overwrites_the_value(bucket: kv.Bucket) -> None:
    bucket.set("k", b"one")
    bucket.set("k", b"two")
    assert bucket.get("k") == b"two"


def test_delete_reports_whether_the_key_existed(bucket: kv.Bucket) -> None:
    bucket.set("k", b"v")
    assert bucket.delete("k") is True
    assert bucket.delete("k") is False
    assert bucket.get("k") is None


def test_exists_tells_live_keys(bucket: kv.Bucket) -> None:
    assert bucket.exists("k") is False
    bucket.set("k", b"")
    assert bucket.exists("k") is True


def test_bytes_keys_are_the_same_keys_as_their_str(bucket: kv.Bucket) -> None:
    bucket.set("clé", b"v")
    assert bucket.get("clé".encode()) == b"v"


# -- TTL -------------------------------------------------------------------------------------


def test_set_with_ttl_expires_the_key(bucket: kv.Bucket, ttl_clock: TtlClock) -> None:
    bucket.set_with_ttl("session", b"data", 200)
    assert bucket.get("session") == b"data"
    ttl_clock.advance(250)
    assert bucket.get("session") is None


def test_ttl_reports_the_milliseconds_left(bucket: kv.Bucket) -> None:
    bucket.set_with_ttl("k", b"v", 60_000)
    left = bucket.ttl("k")
    assert left is not None and 59_000 <= left <= 60_000
    bucket.set("plain", b"v")
    assert bucket.ttl("plain") is None
    assert bucket.ttl("missing") is None


def test_an_expired_key_is_invisible_to_every_read(store: kv.KvStore, ttl_clock: TtlClock) -> None:
    tenant = store.tenant("acme")
    bucket = tenant.bucket()
    bucket.set("stay", b"1")
    bucket.set_with_ttl("go", b"2", 200)
    ttl_clock.advance(250)
    assert bucket.get("go") is None
    assert bucket.exists("go") is False
    assert bucket.ttl("go") is None
    assert bucket.get_many(["go", "stay"]) == [None, b"1"]
    assert bucket.list_keys().keys == ["stay"]
    assert tenant.usage() == kv.Usage(keys=1, bytes=len("stay") + 1)
    assert bucket.delete("go") is False


def test_set_clears_a_previous_ttl(bucket: kv.Bucket, ttl_clock: TtlClock) -> None:
    bucket.set_with_ttl("k", b"v", 200)
    bucket.set("k", b"w")
    ttl_clock.advance(250)
    assert bucket.get("k") == b"w"


def test_set_with_ttl_replaces_a_previous_ttl(bucket: kv.Bucket, ttl_clock: TtlClock) -> None:
    bucket.set_with_ttl("k", b"v", 200)
    bucket.set_with_ttl("k", b"w", 60_000)
    ttl_clock.advance(250)
    assert bucket.get("k") == b"w"


def test_expired_keys_do_not_count_toward_the_quota(store: kv.KvStore, ttl_clock: TtlClock) -> None:
    bucket = store.tenant("small", kv.Quota(max_keys=2)).bucket()
    bucket.set_with_ttl("a", b"1", 200)
    bucket.set_with_ttl("b", b"1", 200)
    with pytest.raises(kv.QuotaExceeded):
        bucket.set("c", b"1")
    ttl_clock.advance(250)
    bucket.set("c", b"1")
    bucket.set("d", b"1")
    assert store.tenant("small").usage().keys == 2


# -- increment -------------------------------------------------------------------------------


def test_increment_starts_a_missing_key_at_zero_and_stores_decimal_ascii(bucket: kv.Bucket) -> None:
    assert bucket.increment("n") == 1
    assert bucket.increment("n", 41) == 42
    assert bucket.get("n") == b"42"
    assert bucket.increment("n", -50) == -8
    assert bucket.get("n") == b"-8"


def test_increment_accepts_a_value_written_as_decimal(bucket: kv.Bucket) -> None:
    bucket.set("n", b"-17")
    assert bucket.increment("n", 20) == 3


def test_increment_of_a_non_integer_raises_not_a_number_and_changes_nothing(bucket: kv.Bucket) -> None:
    for bad in [b"abc", b"1.5", b" 1", b"1 ", b"", b"+1", b"99999999999999999999", b"0x10"]:
        bucket.set("n", bad)
        with pytest.raises(kv.NotANumber) as raised:
            bucket.increment("n")
        assert raised.value.code == 5
        assert bucket.get("n") == bad


def test_increment_overflow_raises_and_never_wraps(bucket: kv.Bucket) -> None:
    bucket.set("big", str(2**63 - 1).encode())
    with pytest.raises(kv.IntegerOverflow) as raised:
        bucket.increment("big")
    assert raised.value.code == 6
    assert bucket.get("big") == str(2**63 - 1).encode()
    bucket.set("small", str(-(2**63)).encode())
    with pytest.raises(kv.IntegerOverflow):
        bucket.increment("small", -1)
    assert bucket.increment("small", 2**63 - 1) == -1


def test_increment_keeps_the_ttl(bucket: kv.Bucket, ttl_clock: TtlClock) -> None:
    bucket.set_with_ttl("n", b"1", 300)
    assert bucket.increment("n") == 2
    left = bucket.ttl("n")
    assert left is not None and left <= 300
    ttl_clock.advance(350)
    assert bucket.get("n") is None
    assert bucket.increment("n") == 1
    assert bucket.ttl("n") is None


# -- compare_and_swap ------------------------------------------------------------------------


def test_compare_and_swap_with_none_succeeds_only_if_absent(bucket: kv.Bucket) -> None:
    assert bucket.compare_and_swap("lock", None, b"me") is True
    assert bucket.compare_and_swap("lock", None, b"you") is False
    assert bucket.get("lock") == b"me"


def test_compare_and_swap_swaps_only_on_a_match(bucket: kv.Bucket) -> None:
    bucket.set("k", b"old")
    assert bucket.compare_and_swap("k", b"wrong", b"new") is False
    assert bucket.get("k") == b"old"
    assert bucket.compare_and_swap("k", b"old", b"new") is True
    assert bucket.get("k") == b"new"


def test_compare_and_swap_expecting_a_value_fails_on_a_missing_key(bucket: kv.Bucket) -> None:
    assert bucket.compare_and_swap("k", b"", b"new") is False
    assert bucket.get("k") is None


def test_compare_and_swap_treats_an_expired_key_as_absent_and_clears_the_ttl(
    bucket: kv.Bucket, ttl_clock: TtlClock
) -> None:
    bucket.set_with_ttl("k", b"v", 200)
    ttl_clock.advance(250)
    assert bucket.compare_and_swap("k", b"v", b"x") is False
    assert bucket.compare_and_swap("k", None, b"x") is True
    bucket.set_with_ttl("j", b"v", 200)
    assert bucket.compare_and_swap("j", b"v", b"w") is True
    ttl_clock.advance(250)
    assert bucket.get("j") == b"w"


# -- listing ---------------------------------------------------------------------------------


def test_list_keys_returns_keys_in_utf8_byte_order(bucket: kv.Bucket) -> None:
    keys = ["b", "a", "Z", "é", "z", "ab", "日", "🎉", "a b"]
    for key in keys:
        bucket.set(key, b"")
    assert bucket.list_keys().keys == sorted(keys, key=lambda k: k.encode())


def test_list_keys_filters_by_prefix(bucket: kv.Bucket) -> None:
    for key in ["user:1", "user:2", "user", "users", "usea", "admin:1"]:
        bucket.set(key, b"")
    assert bucket.list_keys("user:").keys == ["user:1", "user:2"]
    assert bucket.list_keys("user").keys == ["user", "user:1", "user:2", "users"]
    assert bucket.list_keys("nobody").keys == []


def test_list_keys_pages_are_exact_and_end_with_no_cursor(bucket: kv.Bucket) -> None:
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


def test_list_keys_of_an_exact_page_multiple_ends_cleanly(bucket: kv.Bucket) -> None:
    bucket.set_many({f"k{i}": b"" for i in range(10)})
    page = bucket.list_keys(limit=10)
    assert len(page.keys) == 10
    assert page.cursor is None


def test_list_keys_keeps_untouched_keys_exact_while_others_change(bucket: kv.Bucket) -> None:
    stable = [f"s{i:03d}" for i in range(0, 300, 2)]
    bucket.set_many({key: b"" for key in stable})
    seen: list[str] = []
    page = bucket.list_keys(limit=7)
    round_ = 0
    while True:
        seen += page.keys
        # Churn keys that interleave with the stable ones, before and after the cursor.
        bucket.set(f"s{(round_ * 37) % 300 | 1:03d}", b"")
        bucket.delete(f"s{(round_ * 53) % 300 | 1:03d}")
        round_ += 1
        if page.cursor is None:
            break
        page = bucket.list_keys(cursor=page.cursor, limit=7)
    stable_seen = [key for key in seen if int(key[1:]) % 2 == 0]
    assert stable_seen == stable
    assert len(seen) == len(set(seen))


def test_list_keys_rejects_a_cursor_from_another_prefix(bucket: kv.Bucket) -> None:
    bucket.set_many({f"a{i}": b"" for i in range(5)})
    page = bucket.list_keys("a", limit=2)
    assert page.cursor is not None
    with pytest.raises(kv.InvalidArgument):
        bucket.list_keys("b", cursor=page.cursor)


# -- batches ---------------------------------------------------------------------------------


def test_get_many_returns_values_in_request_order(bucket: kv.Bucket) -> None:
    bucket.set_many({"a": b"1", "b": b"2"})
    assert bucket.get_many(["b", "missing", "a", "b"]) == [b"2", None, b"1", b"2"]


def test_set_many_clears_ttls_and_takes_the_last_duplicate(bucket: kv.Bucket, ttl_clock: TtlClock) -> None:
    bucket.set_with_ttl("a", b"old", 200)
    bucket.set_many([("a", b"1"), ("b", b"2"), ("a", b"3")])
    ttl_clock.advance(250)
    assert bucket.get_many(["a", "b"]) == [b"3", b"2"]


def test_delete_many_counts_the_keys_that_existed(bucket: kv.Bucket) -> None:
    bucket.set_many({"a": b"", "b": b""})
    assert bucket.delete_many(["a", "b", "c", "a"]) == 2
    assert bucket.get_many(["a", "b"]) == [None, None]


def test_set_many_over_quota_writes_nothing(store: kv.KvStore) -> None:
    tenant = store.tenant("small", kv.Quota(max_keys=3))
    bucket = tenant.bucket()
    bucket.set("a", b"1")
    with pytest.raises(kv.QuotaExceeded):
        bucket.set_many({"b": b"2", "c": b"3", "d": b"4"})
    assert bucket.get_many(["b", "c", "d"]) == [None, None, None]
    assert tenant.usage().keys == 1


# -- isolation -------------------------------------------------------------------------------


def test_tenants_do_not_see_each_other(store: kv.KvStore) -> None:
    one = store.tenant("one").bucket()
    two = store.tenant("two").bucket()
    one.set("shared-name", b"one's")
    assert two.get("shared-name") is None
    assert two.list_keys().keys == []
    two.set("shared-name", b"two's")
    assert one.get("shared-name") == b"one's"
    assert store.tenant("two").usage().keys == 1


def test_buckets_of_one_tenant_are_separate_key_spaces(store: kv.KvStore) -> None:
    tenant = store.tenant("acme")
    tenant.bucket("a").set("k", b"a")
    tenant.bucket("b").set("k", b"b")
    assert tenant.bucket("a").get("k") == b"a"
    assert tenant.bucket("b").list_keys().keys == ["k"]
    assert tenant.bucket("a").delete("k")
    assert tenant.bucket("b").get("k") == b"b"


def test_no_crafted_key_reaches_another_namespace(store: kv.KvStore) -> None:
    store.tenant("victim").bucket("secret").set("k", b"private")
    attacker = store.tenant("vic").bucket()
    for crafted in ["../victim/secret/k", "victim/secret/k", "tim/secret/k", "/k"]:
        assert attacker.get(crafted) is None
    for crafted in ["tim\0secret\0k", "\0k", "\x01"]:
        with pytest.raises(kv.InvalidKey):
            attacker.get(crafted)
    assert attacker.list_keys().keys == []
    assert store.tenant("victim").bucket("secret").get("k") == b"private"


# -- quotas ----------------------------------------------------------------------------------


def test_usage_counts_key_and_value_bytes(store: kv.KvStore) -> None:
    tenant = store.tenant("acme")
    tenant.bucket().set("abc", b"12345")
    tenant.bucket("other").set("é", b"")
    assert tenant.usage() == kv.Usage(keys=2, bytes=3 + 5 + 2)
    tenant.bucket().set("abc", b"1")
    assert tenant.usage() == kv.Usage(keys=2, bytes=3 + 1 + 2)


def test_quota_rejects_a_write_that_would_exceed_max_keys(store: kv.KvStore) -> None:
    bucket = store.tenant("small", kv.Quota(max_keys=2)).bucket()
    bucket.set("a", b"")
    bucket.set("b", b"")
    with pytest.raises(kv.QuotaExceeded, match="max_keys is 2") as raised:
        bucket.set("c", b"")
    assert raised.value.code == 4
    assert bucket.get("c") is None
    bucket.set("a", b"overwrite at the limit is fine")
    bucket.delete("a")
    bucket.set("c", b"")


def test_quota_rejects_a_write_that_would_exceed_max_bytes(store: kv.KvStore) -> None:
    tenant = store.tenant("small", kv.Quota(max_bytes=20))
    bucket = tenant.bucket()
    bucket.set("k", b"x" * 19)
    with pytest.raises(kv.QuotaExceeded, match="max_bytes is 20"):
        bucket.set("k", b"x" * 20)
    assert bucket.get("k") == b"x" * 19
    bucket.set("k", b"y" * 19)
    bucket.set("k", b"short")
    assert tenant.usage().bytes == 6


def test_quota_covers_all_buckets_of_the_tenant(store: kv.KvStore) -> None:
    tenant = store.tenant("small", kv.Quota(max_keys=2))
    tenant.bucket("a").set("k", b"")
    tenant.bucket("b").set("k", b"")
    with pytest.raises(kv.QuotaExceeded):
        tenant.bucket("c").set("k", b"")


def test_increment_and_cas_respect_the_quota(store: kv.KvStore) -> None:
    bucket = store.tenant("small", kv.Quota(max_keys=1)).bucket()
    bucket.increment("n")
    with pytest.raises(kv.QuotaExceeded):
        bucket.increment("m")
    with pytest.raises(kv.QuotaExceeded):
        bucket.compare_and_swap("m", None, b"x")
    assert bucket.compare_and_swap("n", b"1", b"5") is True
    assert bucket.increment("n") == 6


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
    store.tenant("warm").bucket().get("k")  # connect first: a slow first call must not refill the bucket
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


def test_long_keys_that_share_a_long_head_keep_byte_order_and_their_values(store: kv.KvStore) -> None:
    tenant = store.tenant("acme")
    bucket = tenant.bucket()
    head = "h" * 499
    keys = [head + tail for tail in ["", "b", "a", "ab", "é", "hh"]] + ["h" * 450, "h" * 498 + "i", "h" * 512]
    for key in keys:
        bucket.set(key, key.encode()[-4:])
    expected = sorted(keys, key=str.encode)
    paged: list[str] = []
    cursor = None
    while True:
        page = bucket.list_keys("h", cursor=cursor, limit=2)
        paged += page.keys
        if (cursor := page.cursor) is None:
            break
    assert paged == expected
    assert bucket.get_many(keys) == [key.encode()[-4:] for key in keys]
    assert bucket.delete(head + "a") is True
    assert bucket.get(head + "ab") == (head + "ab").encode()[-4:]
    assert bucket.compare_and_swap(head + "a", None, b"again") is True
    assert bucket.increment(head + "n") == 1
    assert tenant.usage().keys == len(keys) + 1
