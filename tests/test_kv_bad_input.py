"""Every class of bad input gets its specific error, and changes nothing.

Input is checked by the front layer before any engine sees it, so these run
once, on the embedded store.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from wasmkv import kv

BAD_KEYS: list[Any] = ["", "a\x00b", "tab\there", "new\nline", "del\x7f", "\x1f", "x" * 513, "é" * 257]
BAD_KEYS += ["\ud800", 42, None, b"\xff\xfe", b""]


@pytest.fixture
def store() -> Iterator[kv.KvStore]:
    with kv.KvStore.memory(sweep_interval_s=None) as opened:
        yield opened


@pytest.fixture
def seeded(store: kv.KvStore) -> kv.Bucket:
    bucket = store.tenant("acme").bucket()
    bucket.set("k", b"v")
    bucket.set("n", b"7")
    return bucket


def _unchanged(bucket: kv.Bucket) -> None:
    assert bucket.list_keys().keys == ["k", "n"]
    assert bucket.get_many(["k", "n"]) == [b"v", b"7"]
    assert bucket.tenant.usage() == kv.Usage(keys=2, bytes=4)


OPS: dict[str, Callable[[kv.Bucket, Any], object]] = {
    "get": lambda b, k: b.get(k),
    "set": lambda b, k: b.set(k, b"x"),
    "set_with_ttl": lambda b, k: b.set_with_ttl(k, b"x", 1000),
    "delete": lambda b, k: b.delete(k),
    "exists": lambda b, k: b.exists(k),
    "ttl": lambda b, k: b.ttl(k),
    "increment": lambda b, k: b.increment(k),
    "compare_and_swap": lambda b, k: b.compare_and_swap(k, None, b"x"),
    "get_many": lambda b, k: b.get_many(["k", k]),
    "set_many": lambda b, k: b.set_many([("fresh", b"x"), (k, b"x")]),
    "delete_many": lambda b, k: b.delete_many(["k", k]),
}


@pytest.mark.parametrize("op", sorted(OPS))
@pytest.mark.parametrize("key", BAD_KEYS, ids=repr)
def test_every_operation_rejects_every_invalid_key(seeded: kv.Bucket, op: str, key: object) -> None:
    with pytest.raises(kv.InvalidKey) as raised:
        OPS[op](seeded, key)
    assert raised.value.code == 2
    _unchanged(seeded)


@pytest.mark.parametrize("prefix", ["a\x00", "\n", "x" * 513, "\udfff", 7], ids=repr)
def test_list_keys_rejects_an_invalid_prefix(seeded: kv.Bucket, prefix: object) -> None:
    with pytest.raises(kv.InvalidKey):
        seeded.list_keys(prefix)  # type: ignore[arg-type]


@pytest.mark.parametrize("bound", ["start", "end"])
@pytest.mark.parametrize("key", ["a\x00", "\n", "x" * 513, "\udfff", b"\xff", 7], ids=repr)
def test_listings_reject_an_invalid_start_or_end(seeded: kv.Bucket, bound: str, key: object) -> None:
    with pytest.raises(kv.InvalidKey, match=bound):
        seeded.list_keys(**{bound: key})  # type: ignore[arg-type]
    with pytest.raises(kv.InvalidKey, match=bound):
        seeded.scan(**{bound: key})  # type: ignore[arg-type]
    with pytest.raises(kv.InvalidKey, match=bound):
        next(seeded.items(**{bound: key}))  # type: ignore[arg-type]


@pytest.mark.parametrize("reverse", [1, 0, "yes", None], ids=repr)
def test_reverse_must_be_a_bool(seeded: kv.Bucket, reverse: object) -> None:
    with pytest.raises(kv.InvalidArgument, match="reverse must be True or False"):
        seeded.list_keys(reverse=reverse)  # type: ignore[arg-type]
    with pytest.raises(kv.InvalidArgument, match="reverse must be True or False"):
        seeded.scan(reverse=reverse)  # type: ignore[arg-type]


@pytest.mark.parametrize("limit", [0, 1001, "10", None], ids=repr)
def test_scan_limit_and_page_size_must_be_1_to_1000(seeded: kv.Bucket, limit: object) -> None:
    with pytest.raises(kv.InvalidArgument, match=r"limit must be an int in 1\.\.1000"):
        seeded.scan(limit=limit)  # type: ignore[arg-type]
    with pytest.raises(kv.InvalidArgument, match=r"limit must be an int in 1\.\.1000"):
        next(seeded.items(page_size=limit))  # type: ignore[arg-type]


@pytest.mark.parametrize("cursor", ["garbage", "", 5, "A" * 100_000], ids=lambda c: repr(c)[:20])
def test_scan_rejects_a_cursor_it_did_not_issue(seeded: kv.Bucket, cursor: object) -> None:
    with pytest.raises(kv.InvalidArgument, match="cursor"):
        seeded.scan(cursor=cursor)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["text", 1, None, [b"x"]], ids=repr)
def test_values_must_be_bytes(seeded: kv.Bucket, value: object) -> None:
    for call in (
        lambda: seeded.set("k", value),  # type: ignore[arg-type]
        lambda: seeded.set_with_ttl("k", value, 10),  # type: ignore[arg-type]
        lambda: seeded.compare_and_swap("k", b"v", value),  # type: ignore[arg-type]
        lambda: seeded.set_many({"k": value}),  # type: ignore[dict-item]
    ):
        with pytest.raises(kv.InvalidArgument, match="value must be bytes"):
            call()
    _unchanged(seeded)


def test_bytearray_and_memoryview_values_are_accepted(store: kv.KvStore) -> None:
    bucket = store.tenant("acme").bucket()
    bucket.set("a", bytearray(b"xy"))
    bucket.set("b", memoryview(b"zw"))
    assert bucket.get_many(["a", "b"]) == [b"xy", b"zw"]


@pytest.mark.parametrize("ttl", [0, -1, 1.5, "10", None, True, kv.MAX_TTL_MS + 1], ids=repr)
def test_ttl_must_be_a_positive_int_within_the_cap(seeded: kv.Bucket, ttl: object) -> None:
    with pytest.raises(kv.InvalidArgument, match=r"ttl_ms must be an int in 1\.\.") as raised:
        seeded.set_with_ttl("k", b"new", ttl)  # type: ignore[arg-type]
    assert raised.value.code == 12
    _unchanged(seeded)


@pytest.mark.parametrize("limit", [0, -1, 1001, "10", 2.0, None], ids=repr)
def test_list_limit_must_be_1_to_1000(seeded: kv.Bucket, limit: object) -> None:
    with pytest.raises(kv.InvalidArgument, match=r"limit must be an int in 1\.\.1000"):
        seeded.list_keys(limit=limit)  # type: ignore[arg-type]


@pytest.mark.parametrize("cursor", ["garbage", "", "AAAA", 5, "gqNrZXk"], ids=repr)
def test_list_rejects_a_cursor_it_did_not_issue(seeded: kv.Bucket, cursor: object) -> None:
    with pytest.raises(kv.InvalidArgument, match="cursor"):
        seeded.list_keys(cursor=cursor)  # type: ignore[arg-type]


@pytest.mark.parametrize("delta", [1.0, "1", 2**63, -(2**63) - 1, None, True], ids=repr)
def test_increment_delta_must_be_a_signed_64_bit_int(seeded: kv.Bucket, delta: object) -> None:
    with pytest.raises(kv.InvalidArgument, match="delta"):
        seeded.increment("n", delta)  # type: ignore[arg-type]
    _unchanged(seeded)


@pytest.mark.parametrize("name", ["", "a b", "x" * 65, "ä", "a/b", "a\x00", None, 3], ids=repr)
def test_tenant_and_bucket_names_are_1_to_64_safe_characters(store: kv.KvStore, name: object) -> None:
    with pytest.raises(kv.InvalidArgument, match=r"tenant name must be 1-64 characters of \[A-Za-z0-9_-\]"):
        store.tenant(name)  # type: ignore[arg-type]
    with pytest.raises(kv.InvalidArgument, match="bucket name must be"):
        store.tenant("ok").bucket(name)  # type: ignore[arg-type]


def test_the_longest_names_are_accepted(store: kv.KvStore) -> None:
    store.tenant("T" * 64).bucket("b-_9" * 16).set("k", b"v")


@pytest.mark.parametrize(
    "fields",
    [
        {"max_keys": 0},
        {"max_bytes": -1},
        {"max_value_bytes": 1.5},
        {"max_key_bytes": True},
        {"ops_per_second": 0},
        {"ops_per_second": float("inf")},
        {"max_keys": "10"},
    ],
    ids=repr,
)
def test_quota_fields_must_be_positive(fields: dict[str, object]) -> None:
    with pytest.raises(kv.InvalidArgument, match=r"Quota\."):
        kv.Quota(**fields)  # type: ignore[arg-type]


def test_batches_hold_at_most_1000_items(seeded: kv.Bucket) -> None:
    with pytest.raises(kv.InvalidArgument, match="at most 1000"):
        seeded.set_many({f"k{i}": b"" for i in range(1001)})
    with pytest.raises(kv.InvalidArgument, match="at most 1000"):
        seeded.get_many([f"k{i}" for i in range(1001)])
    with pytest.raises(kv.InvalidArgument, match="not a single key"):
        seeded.delete_many("k")
    _unchanged(seeded)


def test_a_batch_with_one_bad_item_changes_nothing(seeded: kv.Bucket) -> None:
    with pytest.raises(kv.ValueTooLarge):
        seeded.set_many({"a": b"x", "b": b"x" * (1024 * 1024 + 1)})
    with pytest.raises(kv.InvalidArgument):
        seeded.set_many([("a", b"x"), ("b",)])  # type: ignore[list-item]
    _unchanged(seeded)


def test_a_rejected_call_does_not_spend_the_rate(store: kv.KvStore) -> None:
    store.tenant("warm").bucket().get("k")  # connect first: a slow first call must not refill the bucket
    bucket = store.tenant("slow", kv.Quota(ops_per_second=3)).bucket()
    for _ in range(10):
        with pytest.raises(kv.InvalidKey):
            bucket.get("")
    for _ in range(3):
        bucket.get("k")
    with pytest.raises(kv.RateLimited):
        bucket.get("k")


def test_error_codes_are_the_abi_codes() -> None:
    codes = {
        kv.InvalidKey: 2,
        kv.ValueTooLarge: 3,
        kv.QuotaExceeded: 4,
        kv.NotANumber: 5,
        kv.IntegerOverflow: 6,
        kv.AccessDenied: 7,
        kv.RateLimited: 10,
        kv.BackendUnavailable: 11,
        kv.InvalidArgument: 12,
    }
    for error, code in codes.items():
        assert error.code == code
        assert issubclass(error, kv.KvError)


def test_a_batch_larger_than_the_rate_spends_a_full_second_of_budget(store: kv.KvStore) -> None:
    store.tenant("warm").bucket().get("k")  # connect first: a slow first call must not refill the bucket
    bucket = store.tenant("slow", kv.Quota(ops_per_second=2)).bucket()
    assert bucket.get_many([f"k{i}" for i in range(100)]) == [None] * 100
    with pytest.raises(kv.RateLimited):
        bucket.get("k0")
