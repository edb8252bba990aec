"""Every ABI import with good and bad raw arguments: every result and error code it can return."""

from __future__ import annotations

import msgpack
import pytest
from wat import Raw, forwarder

from wasmkv import host, kv
from wasmkv.abi import Status
from wasmkv.host import _imports as host_imports
from wasmkv.kv._rules import RateLimiter

NAME, KEY, VAL, OUT, EXP = 0, 100, 1000, 4000, 8000  # memory offsets used by the tests
PAGE = 65536


def load(wasm_host: host.Host, tenant: kv.Tenant | str = "acme", buckets: tuple[str, ...] = ("default",)) -> Raw:
    return Raw(wasm_host.load(forwarder(), name="fwd", tenant=tenant, buckets=buckets))


@pytest.fixture
def raw(wasm_host: host.Host) -> Raw:
    return load(wasm_host)


def open_bucket(raw: Raw, name: bytes = b"default") -> int:
    raw.write(NAME, name)
    handle: int = raw.call("fwd_kv_open", NAME, len(name))
    return handle


def put(raw: Raw, offset: int, data: bytes) -> tuple[int, int]:
    raw.write(offset, data)
    return offset, len(data)


def test_open_returns_a_handle_for_a_granted_bucket_and_reuses_it(raw: Raw) -> None:
    first = open_bucket(raw)
    assert first >= 0
    assert open_bucket(raw) == first


def test_open_of_an_ungranted_bucket_is_access_denied(raw: Raw) -> None:
    assert open_bucket(raw, b"secret") == Status.ACCESS_DENIED


@pytest.mark.parametrize("name", [b"", b"a b", b"x" * 65, b"\xff", b"a/b"])
def test_open_of_an_invalid_bucket_name_is_invalid_argument(raw: Raw, name: bytes) -> None:
    assert open_bucket(raw, name) == Status.INVALID_ARGUMENT


def test_open_with_a_pointer_outside_memory_is_bad_pointer(raw: Raw) -> None:
    for pointer, length in [(-1, 4), (0, -1), (PAGE - 2, 4), (PAGE, 1), (2**31 - 1, 2**31 - 1)]:
        assert raw.call("fwd_kv_open", pointer, length) == Status.BAD_POINTER


def test_a_zero_length_range_is_valid_wherever_it_points(raw: Raw) -> None:
    handle = open_bucket(raw)
    for pointer in (-(2**31), -1, PAGE + 100, 0x7AAAAAAA):
        assert raw.call("fwd_kv_set", handle, *put(raw, KEY, b"empty"), pointer, 0) == 0
        assert raw.call("fwd_kv_get", handle, *put(raw, KEY, b"empty"), pointer, 0) == 0
        assert raw.call("fwd_host_output", pointer, 0) == 0


def test_get_follows_the_buffer_rule(raw: Raw, kvstore: kv.KvStore) -> None:
    kvstore.tenant("acme").bucket().set("k", b"0123456789")
    handle = open_bucket(raw)
    key = put(raw, KEY, b"k")
    raw.write(OUT, b"\xee" * 16)
    assert raw.call("fwd_kv_get", handle, *key, OUT, 4) == 10
    assert raw.read(OUT, 16) == b"\xee" * 16  # too small: nothing written
    assert raw.call("fwd_kv_get", handle, *key, OUT, 0) == 10
    assert raw.call("fwd_kv_get", handle, *key, OUT, 10) == 10
    assert raw.read(OUT, 12) == b"0123456789\xee\xee"


def test_get_of_a_missing_key_is_not_found(raw: Raw) -> None:
    assert raw.call("fwd_kv_get", open_bucket(raw), *put(raw, KEY, b"nope"), OUT, 100) == Status.NOT_FOUND


@pytest.mark.parametrize("key", [b"", b"\xff\xfe", b"a\x00b", b"\x7f", b"k" * 513, b"\xed\xa0\x80"])
def test_every_key_import_rejects_an_invalid_key(raw: Raw, key: bytes) -> None:
    handle = open_bucket(raw)
    k = put(raw, KEY, key)
    v = put(raw, VAL, b"v")
    assert raw.call("fwd_kv_get", handle, *k, OUT, 100) == Status.INVALID_KEY
    assert raw.call("fwd_kv_set", handle, *k, *v) == Status.INVALID_KEY
    assert raw.call("fwd_kv_set_with_ttl", handle, *k, *v, 1000) == Status.INVALID_KEY
    assert raw.call("fwd_kv_delete", handle, *k) == Status.INVALID_KEY
    assert raw.call("fwd_kv_exists", handle, *k) == Status.INVALID_KEY
    assert raw.call("fwd_kv_increment", handle, *k, 1, OUT) == Status.INVALID_KEY
    assert raw.call("fwd_kv_compare_and_swap", handle, *k, 0, -1, *v) == Status.INVALID_KEY
    assert raw.call("fwd_kv_list_keys", handle, *k, 0, 0, 10, OUT, 100) == (
        Status.INVALID_KEY if key else len(msgpack.packb({"keys": [], "cursor": None}))  # empty prefix: fine
    )
    for field in ("prefix", "start", "end"):
        scan = put(raw, EXP, b"\x81" + msgpack.packb(field) + _raw_str(key))
        expected = Status.INVALID_KEY if key else len(msgpack.packb({"items": [], "cursor": None}))
        assert raw.call("fwd_kv_scan", handle, *scan, OUT, 100) == expected, field
    batch = put(raw, EXP, msgpack.packb([key]))
    assert raw.call("fwd_kv_get_many", handle, *batch, OUT, 100) == Status.INVALID_KEY
    assert raw.call("fwd_kv_delete_many", handle, *batch, OUT, 0) == Status.INVALID_KEY
    # A map key must be a str in msgpack; raw bytes keys in a str header still get checked as UTF-8.
    assert raw.call("fwd_kv_set_many", handle, *put(raw, EXP, _map_with_raw_key(key)), OUT, 0) == Status.INVALID_KEY


def _raw_str(data: bytes) -> bytes:
    # a msgpack str header over any bytes, valid UTF-8 or not
    return (bytes([0xA0 | len(data)]) if len(data) < 32 else b"\xda" + len(data).to_bytes(2, "big")) + data


def _map_with_raw_key(key: bytes) -> bytes:
    # fixmap of 1: str header + raw key bytes, then a bin value
    return b"\x81" + _raw_str(key) + msgpack.packb(b"v", use_bin_type=True)


@pytest.mark.parametrize("handle", [-1, 1, 7, 2**31 - 1, -(2**31)])
def test_every_store_import_rejects_a_bad_handle(raw: Raw, handle: int) -> None:
    open_bucket(raw)
    k = put(raw, KEY, b"k")
    v = put(raw, VAL, b"v")
    req = put(raw, EXP, msgpack.packb(["k"]))
    calls = {
        "get": (*k, OUT, 10),
        "set": (*k, *v),
        "set_with_ttl": (*k, *v, 10),
        "delete": k,
        "exists": k,
        "increment": (*k, 1, OUT),
        "compare_and_swap": (*k, 0, -1, *v),
        "list_keys": (*k, 0, 0, 10, OUT, 100),
        "get_many": (*req, OUT, 100),
        "scan": (*put(raw, EXP + 300, msgpack.packb({})), OUT, 100),
        "set_many": (*put(raw, EXP + 500, msgpack.packb({"k": b"v"})), OUT, 0),
        "delete_many": (*req, OUT, 0),
    }
    for name, args in calls.items():
        assert raw.call(f"fwd_kv_{name}", handle, *args) == Status.BAD_HANDLE, name


@pytest.mark.parametrize("pointer,length", [(-1, 1), (0, -5), (PAGE - 1, 2), (PAGE + 10, 1), (2**31 - 1, 2)])
def test_every_pointer_argument_is_bounds_checked(raw: Raw, kvstore: kv.KvStore, pointer: int, length: int) -> None:
    bucket = kvstore.tenant("acme").bucket()
    bucket.set("k", b"v")
    handle = open_bucket(raw)
    k = put(raw, KEY, b"k")
    v = put(raw, VAL, b"v")
    bad = (pointer, length)
    for name, args in {
        "get": [(*bad, OUT, 10), (*k, *bad)],
        "set": [(*bad, *v), (*k, *bad)],
        "set_with_ttl": [(*bad, *v, 10), (*k, *bad, 10)],
        "delete": [bad],
        "exists": [bad],
        "compare_and_swap": [(*bad, 0, -1, *v), (*k, *bad, *v), (*k, 0, -1, *bad)],
        "list_keys": [(*bad, 0, 0, 10, OUT, 100), (*k, *bad, 10, OUT, 100), (*k, 0, 0, 10, *bad)],
        "get_many": [(*bad, OUT, 10), (*put(raw, EXP, msgpack.packb(["k"])), *bad)],
        "scan": [(*bad, OUT, 10), (*put(raw, EXP + 300, msgpack.packb({})), *bad)],
        "set_many": [(*bad, OUT, 0)],
        "delete_many": [(*bad, OUT, 0)],
    }.items():
        for arg in args:
            assert raw.call(f"fwd_kv_{name}", handle, *arg) == Status.BAD_POINTER, (name, arg)
    assert raw.call("fwd_host_input", *bad) == Status.BAD_POINTER
    assert raw.call("fwd_host_output", *bad) == Status.BAD_POINTER
    # Nothing changed: the key still holds its value and is the only one.
    assert bucket.list_keys().keys == ["k"]
    assert bucket.get("k") == b"v"


def test_increment_with_a_bad_result_pointer_changes_nothing(raw: Raw, kvstore: kv.KvStore) -> None:
    handle = open_bucket(raw)
    assert raw.call("fwd_kv_increment", handle, *put(raw, KEY, b"n"), 5, PAGE - 4) == Status.BAD_POINTER
    assert kvstore.tenant("acme").bucket().get("n") is None


def test_set_get_delete_exists_round_trip(raw: Raw) -> None:
    handle = open_bucket(raw)
    k = put(raw, KEY, "clé".encode())
    v = put(raw, VAL, b"\x00\x01value")
    assert raw.call("fwd_kv_set", handle, *k, *v) == 0
    assert raw.call("fwd_kv_exists", handle, *k) == 1
    assert raw.call("fwd_kv_get", handle, *k, OUT, 100) == 7
    assert raw.read(OUT, 7) == b"\x00\x01value"
    assert raw.call("fwd_kv_delete", handle, *k) == 1
    assert raw.call("fwd_kv_delete", handle, *k) == 0
    assert raw.call("fwd_kv_exists", handle, *k) == 0


def test_set_with_ttl_rejects_a_non_positive_ttl(raw: Raw, kvstore: kv.KvStore) -> None:
    handle = open_bucket(raw)
    k, v = put(raw, KEY, b"k"), put(raw, VAL, b"v")
    for ttl in (0, -1, -(2**63), kv.MAX_TTL_MS + 1):
        assert raw.call("fwd_kv_set_with_ttl", handle, *k, *v, ttl) == Status.INVALID_ARGUMENT
    assert raw.call("fwd_kv_set_with_ttl", handle, *k, *v, 2**40) == 0
    left = kvstore.tenant("acme").bucket().ttl("k")
    assert left is not None and left > 2**40 - 10_000


def test_increment_writes_the_new_value_as_i64_little_endian(raw: Raw) -> None:
    handle = open_bucket(raw)
    k = put(raw, KEY, b"n")
    assert raw.call("fwd_kv_increment", handle, *k, -(2**40), OUT) == 0
    assert int.from_bytes(raw.read(OUT, 8), "little", signed=True) == -(2**40)
    assert raw.call("fwd_kv_increment", handle, *k, 2**40 + 7, OUT) == 0
    assert int.from_bytes(raw.read(OUT, 8), "little", signed=True) == 7


def test_increment_reports_not_a_number_and_overflow(raw: Raw, kvstore: kv.KvStore) -> None:
    bucket = kvstore.tenant("acme").bucket()
    bucket.set("text", b"abc")
    bucket.set("max", str(2**63 - 1).encode())
    handle = open_bucket(raw)
    assert raw.call("fwd_kv_increment", handle, *put(raw, KEY, b"text"), 1, OUT) == Status.NOT_A_NUMBER
    assert raw.call("fwd_kv_increment", handle, *put(raw, KEY, b"max"), 1, OUT) == Status.INTEGER_OVERFLOW
    assert bucket.get("max") == str(2**63 - 1).encode()


def test_compare_and_swap_absent_match_and_mismatch(raw: Raw) -> None:
    handle = open_bucket(raw)
    k = put(raw, KEY, b"lock")
    new = put(raw, VAL, b"me")
    assert raw.call("fwd_kv_compare_and_swap", handle, *k, 0, -1, *new) == 1
    assert raw.call("fwd_kv_compare_and_swap", handle, *k, 0, -1, *new) == 0
    other = put(raw, EXP, b"you")
    assert raw.call("fwd_kv_compare_and_swap", handle, *k, *other, *new) == 0
    assert raw.call("fwd_kv_compare_and_swap", handle, *k, VAL, 2, *other) == 1
    assert raw.call("fwd_kv_get", handle, *k, OUT, 10) == 3
    assert raw.call("fwd_kv_compare_and_swap", handle, *k, 0, -2, *new) == Status.BAD_POINTER


def test_writes_report_value_too_large_and_quota_exceeded(wasm_host: host.Host, kvstore: kv.KvStore) -> None:
    tenant = kvstore.tenant("tiny", kv.Quota(max_keys=1, max_value_bytes=4))
    raw = load(wasm_host, tenant)
    handle = open_bucket(raw)
    assert raw.call("fwd_kv_set", handle, *put(raw, KEY, b"a"), *put(raw, VAL, b"12345")) == Status.VALUE_TOO_LARGE
    assert raw.call("fwd_kv_set", handle, *put(raw, KEY, b"a"), *put(raw, VAL, b"1234")) == 0
    k2 = put(raw, KEY, b"b")
    v = put(raw, VAL, b"1")
    assert raw.call("fwd_kv_set", handle, *k2, *v) == Status.QUOTA_EXCEEDED
    assert raw.call("fwd_kv_set_with_ttl", handle, *k2, *v, 100) == Status.QUOTA_EXCEEDED
    assert raw.call("fwd_kv_increment", handle, *k2, 1, OUT) == Status.QUOTA_EXCEEDED
    assert raw.call("fwd_kv_compare_and_swap", handle, *k2, 0, -1, *v) == Status.QUOTA_EXCEEDED
    assert raw.call("fwd_kv_set_many", handle, *put(raw, EXP, msgpack.packb({"b": b"1"})), OUT, 0) == (
        Status.QUOTA_EXCEEDED
    )
    assert tenant.usage() == kv.Usage(keys=1, bytes=5)


def test_rate_limited_calls_return_rate_limited(wasm_host: host.Host, kvstore: kv.KvStore) -> None:
    raw = load(wasm_host, kvstore.tenant("slow", kv.Quota(ops_per_second=2)))
    handle = open_bucket(raw)
    k = put(raw, KEY, b"k")
    assert [raw.call("fwd_kv_exists", handle, *k) for _ in range(3)] == [0, 0, Status.RATE_LIMITED]


def test_a_closed_store_returns_backend_unavailable(raw: Raw, kvstore: kv.KvStore) -> None:
    handle = open_bucket(raw)
    kvstore.close()
    assert raw.call("fwd_kv_get", handle, *put(raw, KEY, b"k"), OUT, 10) == Status.BACKEND_UNAVAILABLE
    assert raw.call("fwd_kv_set", handle, *put(raw, KEY, b"k"), *put(raw, VAL, b"v")) == Status.BACKEND_UNAVAILABLE


def test_list_keys_returns_msgpack_pages_with_a_cursor(raw: Raw, kvstore: kv.KvStore) -> None:
    kvstore.tenant("acme").bucket().set_many({f"p:{i}": b"" for i in range(5)} | {"q": b""})
    handle = open_bucket(raw)
    prefix = put(raw, KEY, b"p:")
    length = raw.call("fwd_kv_list_keys", handle, *prefix, 0, 0, 3, OUT, 1000)
    page = msgpack.unpackb(raw.read(OUT, length))
    assert page["keys"] == ["p:0", "p:1", "p:2"]
    cursor = put(raw, EXP, page["cursor"].encode())
    assert raw.call("fwd_kv_list_keys", handle, *prefix, *cursor, 3, OUT, 4) > 4  # too small: length only
    length = raw.call("fwd_kv_list_keys", handle, *prefix, *cursor, 3, OUT, 1000)
    assert msgpack.unpackb(raw.read(OUT, length)) == {"keys": ["p:3", "p:4"], "cursor": None}


@pytest.mark.parametrize("limit", [0, -1, 1001])
def test_list_keys_rejects_a_bad_limit(raw: Raw, limit: int) -> None:
    assert raw.call("fwd_kv_list_keys", open_bucket(raw), 0, 0, 0, 0, limit, OUT, 100) == Status.INVALID_ARGUMENT


@pytest.mark.parametrize("cursor", [b"junk", b"\xff\xfe", b"gqNrZXk"])
def test_list_keys_rejects_a_forged_cursor(raw: Raw, cursor: bytes) -> None:
    handle = open_bucket(raw)
    assert raw.call("fwd_kv_list_keys", handle, 0, 0, *put(raw, EXP, cursor), 10, OUT, 100) == (Status.INVALID_ARGUMENT)


def scan(raw: Raw, handle: int, request: dict[str, object], capacity: int = PAGE - OUT) -> int:
    result: int = raw.call("fwd_kv_scan", handle, *put(raw, EXP, msgpack.packb(request)), OUT, capacity)
    return result


def test_scan_returns_pairs_a_page_at_a_time_in_either_order(raw: Raw, kvstore: kv.KvStore) -> None:
    kvstore.tenant("acme").bucket().set_many({f"p:{i}": b"v%d" % i for i in range(5)} | {"q": b"", "o": b""})
    handle = open_bucket(raw)
    length = scan(raw, handle, {"prefix": "p:", "limit": 3})
    page = msgpack.unpackb(raw.read(OUT, length))
    assert page["items"] == [["p:0", b"v0"], ["p:1", b"v1"], ["p:2", b"v2"]]
    length = scan(raw, handle, {"prefix": "p:", "limit": 3, "cursor": page["cursor"]})
    assert msgpack.unpackb(raw.read(OUT, length)) == {"items": [["p:3", b"v3"], ["p:4", b"v4"]], "cursor": None}
    length = scan(raw, handle, {"prefix": "p:", "start": "p:1", "end": "p:4", "reverse": True})
    assert msgpack.unpackb(raw.read(OUT, length))["items"] == [["p:3", b"v3"], ["p:2", b"v2"], ["p:1", b"v1"]]
    # Defaults: every key, 100 a page, forwards.
    length = scan(raw, handle, {})
    assert [key for key, _ in msgpack.unpackb(raw.read(OUT, length))["items"]] == [
        "o",
        "p:0",
        "p:1",
        "p:2",
        "p:3",
        "p:4",
        "q",
    ]


def test_scan_follows_the_buffer_rule_with_an_exact_length(raw: Raw, kvstore: kv.KvStore) -> None:
    kvstore.tenant("acme").bucket().set_many({"k\u00e9y": b"x" * 300, "k": b""})
    handle = open_bucket(raw)
    expected = msgpack.packb({"items": [["k", b""], ["k\u00e9y", b"x" * 300]], "cursor": None}, use_bin_type=True)
    raw.write(OUT, b"\xee" * 8)
    assert scan(raw, handle, {}, capacity=0) == len(expected)
    assert scan(raw, handle, {}, capacity=len(expected) - 1) == len(expected)
    assert raw.read(OUT, 8) == b"\xee" * 8  # nothing written when it does not fit
    assert scan(raw, handle, {}, capacity=len(expected)) == len(expected)
    assert raw.read(OUT, len(expected)) == expected


@pytest.mark.parametrize("count", [0, 1, 15, 16, 17])
@pytest.mark.parametrize("sizes", [(0, 1), (31, 255), (32, 256), (255, 65535), (256, 65536)])
def test_the_scan_reply_size_is_computed_exactly(count: int, sizes: tuple[int, int]) -> None:
    key_size, value_size = sizes
    items = [("\u00e9" * (key_size // 2) + "k" * (key_size % 2 + i % 2), b"v" * value_size) for i in range(count)]
    for cursor in (None, "c" * 31, "c" * 32, "c" * 300):
        packed = msgpack.packb({"items": items, "cursor": cursor}, use_bin_type=True)
        assert host_imports.packed_scan_size(items, cursor) == len(packed)


@pytest.mark.parametrize(
    "request_",
    [
        msgpack.packb({"limit": 0}),
        msgpack.packb({"limit": 1001}),
        msgpack.packb({"limit": "10"}),
        msgpack.packb({"limit": 1.5}),
        msgpack.packb({"reverse": 1}),
        msgpack.packb({"cursor": 5}),
        msgpack.packb({"cursor": "junk"}),
        msgpack.packb({"cursor": b"bytes"}),
        msgpack.packb({"other": 1}),
        msgpack.packb({"prefix": ["a"]}),
        msgpack.packb(["prefix", ""]),
        msgpack.packb({"prefix": ""}) + b"\x00",
        b"\x82\xa6prefix\xa0\xa6prefix\xa0",  # a field twice
        b"\xdf\xff\xff\xff\xff",  # a map header claiming 4 billion fields
        b"\xc1",
        b"",
    ],
)
def test_malformed_scan_requests_are_invalid_argument(raw: Raw, request_: bytes) -> None:
    handle = open_bucket(raw)
    assert raw.call("fwd_kv_scan", handle, *put(raw, EXP, request_), OUT, 100) == Status.INVALID_ARGUMENT


def test_a_scan_cursor_from_another_listing_is_invalid_argument(raw: Raw, kvstore: kv.KvStore) -> None:
    kvstore.tenant("acme").bucket().set_many({f"p:{i}": b"" for i in range(5)})
    handle = open_bucket(raw)
    page = msgpack.unpackb(raw.read(OUT, scan(raw, handle, {"prefix": "p:", "limit": 2})))
    for other in ({"prefix": "q"}, {"prefix": "p:", "reverse": True}, {"prefix": "p:", "start": "p:1"}):
        assert scan(raw, handle, {**other, "cursor": page["cursor"], "limit": 2}) == Status.INVALID_ARGUMENT, other
    # list_keys cursors are the same listing's cursors: interchangeable.
    keys = msgpack.unpackb(
        raw.read(OUT, raw.call("fwd_kv_list_keys", handle, *put(raw, KEY, b"p:"), 0, 0, 2, OUT, 1000))
    )
    length = scan(raw, handle, {"prefix": "p:", "cursor": keys["cursor"]})
    assert [key for key, _ in msgpack.unpackb(raw.read(OUT, length))["items"]] == ["p:2", "p:3", "p:4"]


def test_a_scan_page_over_the_plugin_memory_is_value_too_large(wasm_host: host.Host, kvstore: kv.KvStore) -> None:
    # 1 MiB of memory; a page holds up to 1 MiB of keys and values, and the reply adds its
    # framing: 1000 pairs of 1044 bytes make a reply of 1,049,018 bytes, 442 over.
    limits = host.Limits(memory_bytes=16 * PAGE)
    raw = Raw(wasm_host.load(forwarder(memory_pages=16), name="fwd", tenant="acme", limits=limits))
    bucket = kvstore.tenant("acme").bucket()
    for first in range(0, 1000, 500):
        bucket.set_many({f"k{i:03d}": b"x" * 1040 for i in range(first, first + 500)})
    handle = open_bucket(raw)
    assert scan(raw, handle, {"limit": 1000}, capacity=100) == Status.VALUE_TOO_LARGE
    length = scan(raw, handle, {"limit": 500}, capacity=16 * PAGE - OUT)  # a smaller page is fine
    assert len(msgpack.unpackb(raw.read(OUT, length))["items"]) == 500


def test_a_scan_costs_one_rate_token_per_pair(wasm_host: host.Host, kvstore: kv.KvStore) -> None:
    tenant = kvstore.tenant("slow", kv.Quota(ops_per_second=8))
    # A stopped clock: no token comes back while the test runs, however slowly a busy machine runs it.
    tenant._limiter = RateLimiter(8, lambda: 0.0)
    tenant.bucket().set_many({f"k{i}": b"" for i in range(3)})  # three tokens; five left
    raw = load(wasm_host, tenant)
    handle = open_bucket(raw)
    assert scan(raw, handle, {"limit": 3}) > 0  # three pairs: three tokens
    assert scan(raw, handle, {"limit": 2}) > 0  # two more
    assert scan(raw, handle, {"limit": 1}) == Status.RATE_LIMITED


def test_batches_round_trip_through_msgpack(raw: Raw, kvstore: kv.KvStore) -> None:
    handle = open_bucket(raw)
    assert raw.call("fwd_kv_set_many", handle, *put(raw, EXP, msgpack.packb({"a": b"1", "b": b"2"})), OUT, 0) == 0
    length = raw.call("fwd_kv_get_many", handle, *put(raw, EXP, msgpack.packb(["b", "x", "a"])), OUT, 100)
    assert msgpack.unpackb(raw.read(OUT, length)) == [b"2", None, b"1"]
    assert raw.call("fwd_kv_delete_many", handle, *put(raw, EXP, msgpack.packb(["a", "x"])), OUT, 0) == 1
    assert kvstore.tenant("acme").bucket().list_keys().keys == ["b"]


@pytest.mark.parametrize(
    "request_",
    [b"\xc1", b"", msgpack.packb({"k": "not bytes"}), msgpack.packb([1, 2]), msgpack.packb("k"), b"\x92\xa1k"],
)
def test_malformed_batch_requests_are_invalid_argument(raw: Raw, request_: bytes) -> None:
    handle = open_bucket(raw)
    req = put(raw, EXP, request_)
    assert raw.call("fwd_kv_set_many", handle, *req, OUT, 0) == Status.INVALID_ARGUMENT
    if request_ != msgpack.packb({"k": "not bytes"}):
        assert raw.call("fwd_kv_get_many", handle, *req, OUT, 100) == Status.INVALID_ARGUMENT
        assert raw.call("fwd_kv_delete_many", handle, *req, OUT, 0) == Status.INVALID_ARGUMENT


def test_a_batch_over_1000_items_is_invalid_argument(raw: Raw) -> None:
    handle = open_bucket(raw)
    req = put(raw, EXP, msgpack.packb([f"k{i}" for i in range(1001)]))
    assert raw.call("fwd_kv_get_many", handle, *req, OUT, 100) == Status.INVALID_ARGUMENT


def test_host_input_output_and_log(raw: Raw, caplog: pytest.LogCaptureFixture) -> None:
    instance = raw.plugin._version.instance
    assert instance is not None
    instance.imports.input = b"the input"
    assert raw.call("fwd_host_input", OUT, 3) == 9
    assert raw.call("fwd_host_input", OUT, 9) == 9
    assert raw.read(OUT, 9) == b"the input"
    assert raw.call("fwd_host_output", *put(raw, VAL, b"out")) == 0
    assert instance.output == b"out"
    with caplog.at_level("DEBUG", logger="wasmkv.plugin.fwd"):
        raw.call("fwd_host_log", 2, *put(raw, VAL, b"careful \xff"))
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [("WARNING", "careful \ufffd")]


def test_output_past_the_memory_limit_is_invalid_argument(raw: Raw) -> None:
    instance = raw.plugin._version.instance
    assert instance is not None
    instance.imports.output = bytearray(raw.plugin.limits.memory_bytes)
    assert raw.call("fwd_host_output", *put(raw, VAL, b"x")) == Status.INVALID_ARGUMENT
