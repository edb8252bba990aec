"""The engine contract: every engine passes these same assertions, driven through the `kv.Store` protocol.

Engines get valid input only (the front layer has checked it), so these tests
speak the protocol's language: namespaces, UTF-8 bytes keys, a `Quota` on every
write. They run on LMDB, one Redis node, a Redis Cluster and Redis behind the
read cache (see `engine` in conftest). Policy that does not depend on the
engine is tested once, on the front layer, in test_kv_front.py.
"""

from __future__ import annotations

import threading

import pytest
from conftest import TtlClock

from wasmkv import kv

NS = kv.Namespace("acme", "default")
QUOTA = kv.Quota()


def live_keys(engine: kv.Store, ns: kv.Namespace = NS, prefix: bytes = b"") -> list[bytes]:
    """Every live key of `ns` with `prefix`, paging through `list_keys`."""
    keys: list[bytes] = []
    after = None
    while True:
        page, more = engine.list_keys(ns, kv.KeyRange(prefix), after, 3)
        keys += page
        if not more:
            return keys
        after = page[-1]


# -- basic operations ------------------------------------------------------------------------


def test_get_of_a_missing_key_returns_none(engine: kv.Store) -> None:
    assert engine.get(NS, b"nope") is None


def test_set_then_get_returns_the_value_and_set_overwrites(engine: kv.Store) -> None:
    engine.set(NS, b"greeting", b"hello", None, QUOTA)
    assert engine.get(NS, b"greeting") == b"hello"
    engine.set(NS, b"greeting", b"bye", None, QUOTA)
    assert engine.get(NS, b"greeting") == b"bye"


def test_values_may_be_empty_and_binary(engine: kv.Store) -> None:
    engine.set(NS, b"empty", b"", None, QUOTA)
    engine.set(NS, b"binary", bytes(range(256)), None, QUOTA)
    assert engine.get(NS, b"empty") == b""
    assert engine.exists(NS, b"empty") is True
    assert engine.get(NS, b"binary") == bytes(range(256))


def test_keys_may_be_any_printable_utf8(engine: kv.Store) -> None:
    keys = [k.encode() for k in ["héllo wörld", "日本語", "emoji 🎉", "../../etc/passwd", "a/b:c", " ", "{x}", "*"]]
    for key in keys:
        engine.set(NS, key, key, None, QUOTA)
    assert engine.get_many(NS, keys) == keys


def test_delete_reports_whether_the_key_existed(engine: kv.Store) -> None:
    engine.set(NS, b"k", b"v", None, QUOTA)
    assert engine.delete(NS, b"k") is True
    assert engine.delete(NS, b"k") is False
    assert engine.get(NS, b"k") is None
    assert engine.exists(NS, b"k") is False


# -- TTL -------------------------------------------------------------------------------------


def test_a_ttl_expires_the_key_and_ttl_reports_the_time_left(engine: kv.Store, ttl_clock: TtlClock) -> None:
    engine.set(NS, b"session", b"data", 200, QUOTA)
    engine.set(NS, b"long", b"v", 60_000, QUOTA)
    engine.set(NS, b"plain", b"v", None, QUOTA)
    assert engine.get(NS, b"session") == b"data"
    left = engine.ttl(NS, b"long")
    assert left is not None and 59_000 <= left <= 60_000
    assert engine.ttl(NS, b"plain") is None
    assert engine.ttl(NS, b"missing") is None
    ttl_clock.advance(250)
    assert engine.get(NS, b"session") is None


def test_an_expired_key_is_invisible_to_every_read(engine: kv.Store, ttl_clock: TtlClock) -> None:
    engine.set(NS, b"stay", b"1", None, QUOTA)
    engine.set(NS, b"go", b"2", 200, QUOTA)
    ttl_clock.advance(250)
    assert engine.get(NS, b"go") is None
    assert engine.exists(NS, b"go") is False
    assert engine.ttl(NS, b"go") is None
    assert engine.get_many(NS, [b"go", b"stay"]) == [None, b"1"]
    assert live_keys(engine) == [b"stay"]
    assert engine.usage("acme") == kv.Usage(keys=1, bytes=len("stay") + 1)
    assert engine.delete(NS, b"go") is False
    assert engine.delete_many(NS, [b"go"]) == 0


def test_set_clears_a_previous_ttl_and_a_new_ttl_replaces_it(engine: kv.Store, ttl_clock: TtlClock) -> None:
    engine.set(NS, b"cleared", b"v", 200, QUOTA)
    engine.set(NS, b"cleared", b"w", None, QUOTA)
    engine.set(NS, b"replaced", b"v", 200, QUOTA)
    engine.set(NS, b"replaced", b"w", 60_000, QUOTA)
    ttl_clock.advance(250)
    assert engine.get_many(NS, [b"cleared", b"replaced"]) == [b"w", b"w"]
    assert engine.ttl(NS, b"cleared") is None


def test_expired_keys_do_not_count_toward_the_quota(engine: kv.Store, ttl_clock: TtlClock) -> None:
    small = kv.Quota(max_keys=2)
    engine.set(NS, b"a", b"1", 200, small)
    engine.set(NS, b"b", b"1", 200, small)
    with pytest.raises(kv.QuotaExceeded):
        engine.set(NS, b"c", b"1", None, small)
    ttl_clock.advance(250)
    engine.set(NS, b"c", b"1", None, small)
    engine.set(NS, b"d", b"1", None, small)
    assert engine.usage("acme").keys == 2


def test_sweep_reclaims_expired_keys_nobody_reads(engine: kv.Store, ttl_clock: TtlClock) -> None:
    for i in range(5):
        engine.set(NS, f"t{i}".encode(), b"v", 200, QUOTA)
    engine.set(NS, b"stay", b"v", None, QUOTA)
    ttl_clock.advance(250)
    assert engine.sweep(3) == 3
    assert engine.sweep(1000) == 2
    assert engine.sweep(1000) == 0
    assert engine.usage("acme") == kv.Usage(keys=1, bytes=5)


# -- increment -------------------------------------------------------------------------------


def test_increment_starts_a_missing_key_at_zero_and_stores_decimal_ascii(engine: kv.Store) -> None:
    assert engine.increment(NS, b"n", 1, QUOTA) == 1
    assert engine.increment(NS, b"n", 41, QUOTA) == 42
    assert engine.get(NS, b"n") == b"42"
    assert engine.increment(NS, b"n", -50, QUOTA) == -8
    assert engine.get(NS, b"n") == b"-8"
    engine.set(NS, b"m", b"-17", None, QUOTA)
    assert engine.increment(NS, b"m", 20, QUOTA) == 3


def test_increment_of_a_non_integer_raises_not_a_number_and_changes_nothing(engine: kv.Store) -> None:
    for bad in [b"abc", b"1.5", b" 1", b"1 ", b"", b"+1", b"99999999999999999999", b"0x10", b"\xff"]:
        engine.set(NS, b"n", bad, None, QUOTA)
        with pytest.raises(kv.NotANumber) as raised:
            engine.increment(NS, b"n", 1, QUOTA)
        assert raised.value.code == 5
        assert engine.get(NS, b"n") == bad


def test_increment_is_exact_signed_64_bit_and_never_wraps(engine: kv.Store) -> None:
    top, bottom = 2**63 - 1, -(2**63)
    engine.set(NS, b"big", str(top).encode(), None, QUOTA)
    with pytest.raises(kv.IntegerOverflow) as raised:
        engine.increment(NS, b"big", 1, QUOTA)
    assert raised.value.code == 6
    assert engine.get(NS, b"big") == str(top).encode()
    engine.set(NS, b"small", str(bottom).encode(), None, QUOTA)
    with pytest.raises(kv.IntegerOverflow):
        engine.increment(NS, b"small", -1, QUOTA)
    assert engine.increment(NS, b"small", top, QUOTA) == -1
    # Past 2**53 a double would round: every digit must survive.
    assert engine.increment(NS, b"exact", 2**62 + 1, QUOTA) == 2**62 + 1
    assert engine.increment(NS, b"exact", 2**62 - 2, QUOTA) == top
    assert engine.increment(NS, b"exact", -(2**63) + 7, QUOTA) == 6


def test_increment_keeps_the_ttl_until_the_key_expires(engine: kv.Store, ttl_clock: TtlClock) -> None:
    engine.set(NS, b"n", b"1", 300, QUOTA)
    assert engine.increment(NS, b"n", 1, QUOTA) == 2
    left = engine.ttl(NS, b"n")
    assert left is not None and left <= 300
    ttl_clock.advance(350)
    assert engine.get(NS, b"n") is None
    assert engine.increment(NS, b"n", 1, QUOTA) == 1
    assert engine.ttl(NS, b"n") is None


def test_increment_of_a_value_past_max_value_bytes_is_value_too_large(engine: kv.Store) -> None:
    tiny = kv.Quota(max_value_bytes=2)
    engine.set(NS, b"n", b"98", None, tiny)
    assert engine.increment(NS, b"n", 1, tiny) == 99
    with pytest.raises(kv.ValueTooLarge, match="max_value_bytes 2"):
        engine.increment(NS, b"n", 1, tiny)
    assert engine.get(NS, b"n") == b"99"


# -- compare_and_swap ------------------------------------------------------------------------


def test_compare_and_swap_with_none_succeeds_only_if_absent(engine: kv.Store) -> None:
    assert engine.compare_and_swap(NS, b"lock", None, b"me", QUOTA) is True
    assert engine.compare_and_swap(NS, b"lock", None, b"you", QUOTA) is False
    assert engine.get(NS, b"lock") == b"me"


def test_compare_and_swap_swaps_only_on_a_match(engine: kv.Store) -> None:
    engine.set(NS, b"k", b"old", None, QUOTA)
    assert engine.compare_and_swap(NS, b"k", b"wrong", b"new", QUOTA) is False
    assert engine.compare_and_swap(NS, b"k", b"ol", b"new", QUOTA) is False
    assert engine.get(NS, b"k") == b"old"
    assert engine.compare_and_swap(NS, b"k", b"old", b"new", QUOTA) is True
    assert engine.get(NS, b"k") == b"new"
    assert engine.compare_and_swap(NS, b"missing", b"", b"new", QUOTA) is False
    assert engine.get(NS, b"missing") is None


def test_compare_and_swap_treats_an_expired_key_as_absent_and_clears_the_ttl(
    engine: kv.Store, ttl_clock: TtlClock
) -> None:
    engine.set(NS, b"k", b"v", 200, QUOTA)
    engine.set(NS, b"j", b"v", 200, QUOTA)
    assert engine.compare_and_swap(NS, b"j", b"v", b"w", QUOTA) is True
    ttl_clock.advance(250)
    assert engine.compare_and_swap(NS, b"k", b"v", b"x", QUOTA) is False
    assert engine.compare_and_swap(NS, b"k", None, b"x", QUOTA) is True
    assert engine.get(NS, b"j") == b"w"


# -- listing ---------------------------------------------------------------------------------


def test_list_keys_returns_keys_in_utf8_byte_order(engine: kv.Store) -> None:
    keys = [k.encode() for k in ["b", "a", "Z", "é", "z", "ab", "日", "🎉", "a b", "\x7e"]]
    engine.set_many(NS, [(key, b"") for key in keys], QUOTA)
    assert engine.list_keys(NS, kv.KeyRange(b""), None, 100) == (sorted(keys), False)


def test_list_keys_filters_by_prefix(engine: kv.Store) -> None:
    for key in [b"user:1", b"user:2", b"user", b"users", b"usea", b"admin:1", "usér".encode()]:
        engine.set(NS, key, b"", None, QUOTA)
    assert engine.list_keys(NS, kv.KeyRange(b"user:"), None, 100) == ([b"user:1", b"user:2"], False)
    assert engine.list_keys(NS, kv.KeyRange(b"user"), None, 100) == ([b"user", b"user:1", b"user:2", b"users"], False)
    assert engine.list_keys(NS, kv.KeyRange(b"nobody"), None, 100) == ([], False)
    assert engine.list_keys(NS, kv.KeyRange("us\xe9".encode()), None, 100) == (["usér".encode()], False)


def test_list_keys_pages_are_exact_and_say_whether_more_follow(engine: kv.Store) -> None:
    expected = [f"item:{i:04d}".encode() for i in range(257)]
    engine.set_many(NS, [(key, b"x") for key in expected[:200]], QUOTA)
    engine.set_many(NS, [(key, b"x") for key in expected[200:]], QUOTA)
    engine.set(NS, b"other", b"", None, QUOTA)
    seen: list[bytes] = []
    after = None
    pages = 0
    while True:
        keys, more = engine.list_keys(NS, kv.KeyRange(b"item:"), after, 50)
        pages += 1
        seen += keys
        if not more:
            break
        assert len(keys) == 50
        after = keys[-1]
    assert seen == expected
    assert pages == 6
    # A page that ends exactly at the last key says no more follow.
    assert engine.list_keys(NS, kv.KeyRange(b"item:"), expected[-51], 50) == (expected[-50:], False)


def test_list_keys_keeps_untouched_keys_exact_while_others_change(engine: kv.Store) -> None:
    stable = [f"s{i:03d}".encode() for i in range(0, 300, 2)]
    engine.set_many(NS, [(key, b"") for key in stable], QUOTA)
    seen: list[bytes] = []
    after = None
    round_ = 0
    while True:
        keys, more = engine.list_keys(NS, kv.KeyRange(b""), after, 7)
        seen += keys
        # Churn keys that interleave with the stable ones, before and after the position.
        engine.set(NS, f"s{(round_ * 37) % 300 | 1:03d}".encode(), b"", None, QUOTA)
        engine.delete(NS, f"s{(round_ * 53) % 300 | 1:03d}".encode())
        round_ += 1
        if not more:
            break
        after = keys[-1]
    assert [key for key in seen if int(key[1:]) % 2 == 0] == stable
    assert len(seen) == len(set(seen))


def test_long_keys_that_share_a_long_head_keep_byte_order_and_their_values(engine: kv.Store) -> None:
    head = b"h" * 499
    keys = [head + tail for tail in [b"", b"b", b"a", b"ab", "é".encode(), b"hh"]]
    keys += [b"h" * 450, b"h" * 498 + b"i", b"h" * 512]
    # Around where the embedded engine stops storing a key as itself (its namespace prefix + key > 494 bytes).
    keys += [b"h" * n + b"j" for n in range(478, 486)]
    for key in keys:
        engine.set(NS, key, key[-4:], None, QUOTA)
    assert live_keys(engine, prefix=b"h") == sorted(keys)
    assert engine.get_many(NS, keys) == [key[-4:] for key in keys]
    assert engine.delete(NS, head + b"a") is True
    assert engine.get(NS, head + b"ab") == (head + b"ab")[-4:]
    assert engine.compare_and_swap(NS, head + b"a", None, b"again", QUOTA) is True
    assert engine.increment(NS, head + b"n", 1, QUOTA) == 1
    assert engine.usage("acme").keys == len(keys) + 1


# -- ranges and scans ------------------------------------------------------------------------

# Keys around the edges a range can have: a shared prefix, multi-byte UTF-8, and long keys
# sharing a head past where the embedded engine stores a key as itself.
RANGE_KEYS = sorted(
    {k.encode() for k in ["a", "ab", "abc", "abd", "ac", "b", "ba", "bb", "é", "éa", "日", "🎉", "z"]}
    | {b"h" * 499 + tail for tail in [b"", b"a", b"ab", b"b", "é".encode(), b"hh"]}
    | {b"h" * n + b"j" for n in range(480, 486)}
)
RANGES = [
    kv.KeyRange(),
    kv.KeyRange(b"a"),
    kv.KeyRange(b"ab"),
    kv.KeyRange(start=b"ab", end=b"b"),
    kv.KeyRange(start=b"abc"),
    kv.KeyRange(end=b"b"),
    kv.KeyRange(b"a", start=b"abd", end=b"zz"),
    kv.KeyRange(b"b", start=b"a", end=b"bb"),
    kv.KeyRange("é".encode(), start="éa".encode()),
    kv.KeyRange(b"h" * 499, start=b"h" * 499 + b"ab"),
    kv.KeyRange(b"h" * 480, end=b"h" * 499 + b"b"),
    kv.KeyRange(start=b"b", end=b"b"),
    kv.KeyRange(start=b"c", end=b"b"),
    kv.KeyRange(b"nothing"),
]


def in_range(key_range: kv.KeyRange) -> list[bytes]:
    """What a listing of `key_range` over `RANGE_KEYS` must return, in its order."""
    keys = [
        key
        for key in RANGE_KEYS
        if key.startswith(key_range.prefix)
        and (key_range.start is None or key >= key_range.start)
        and (key_range.end is None or key < key_range.end)
    ]
    return keys[::-1] if key_range.reverse else keys


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_list_keys_and_scan_cover_exactly_a_range_in_its_order_page_by_page(engine: kv.Store, reverse: bool) -> None:
    engine.set_many(NS, [(key, key[-3:]) for key in RANGE_KEYS], QUOTA)
    for bounds in RANGES:
        key_range = kv.KeyRange(bounds.prefix, bounds.start, bounds.end, reverse)
        expected = in_range(key_range)
        assert engine.list_keys(NS, key_range, None, 1000) == (expected, False), key_range
        for limit in (1, 2, 5):
            listed: list[bytes] = []
            scanned: list[kv.ScanItem] = []
            after = None
            while True:
                keys, more = engine.list_keys(NS, key_range, after, limit)
                items, more_items = engine.scan(NS, key_range, after, limit, kv.SCAN_PAGE_MAX_BYTES)
                assert [key for key, _, _ in items] == keys and more_items == more
                listed += keys
                scanned += items
                if not more:
                    break
                assert len(keys) == limit
                after = keys[-1]
            assert listed == expected, (key_range, limit)
            assert scanned == [(key, key[-3:], None) for key in expected]


def test_scan_returns_values_with_the_time_their_keys_have_left(engine: kv.Store) -> None:
    engine.set(NS, b"a", b"plain", None, QUOTA)
    engine.set(NS, b"b", b"timed", 60_000, QUOTA)
    engine.set(NS, b"c", b"", None, QUOTA)
    items, more = engine.scan(NS, kv.KeyRange(), None, 10, kv.SCAN_PAGE_MAX_BYTES)
    assert more is False
    assert [(key, value) for key, value, _ in items] == [(b"a", b"plain"), (b"b", b"timed"), (b"c", b"")]
    assert items[0][2] is None and items[2][2] is None
    left = items[1][2]
    assert left is not None and 55_000 < left <= 60_000


def test_expired_keys_are_invisible_to_scans_and_ranges(engine: kv.Store, ttl_clock: TtlClock) -> None:
    engine.set_many(NS, [(k, b"v") for k in [b"a", b"c", b"e"]], QUOTA)
    for key in [b"b", b"d", b"f"]:
        engine.set(NS, key, b"gone", 200, QUOTA)
    ttl_clock.advance(250)
    for reverse in (False, True):
        key_range = kv.KeyRange(reverse=reverse)
        expected = [b"e", b"c", b"a"] if reverse else [b"a", b"c", b"e"]
        assert engine.list_keys(NS, key_range, None, 2) == (expected[:2], True)
        items, more = engine.scan(NS, key_range, None, 2, kv.SCAN_PAGE_MAX_BYTES)
        assert ([key for key, _, _ in items], more) == (expected[:2], True)
        items, more = engine.scan(NS, key_range, expected[1], 2, kv.SCAN_PAGE_MAX_BYTES)
        assert ([key for key, _, _ in items], more) == (expected[2:], False)


def test_a_scan_page_stops_at_its_byte_budget_but_a_large_first_pair_comes_alone(engine: kv.Store) -> None:
    # Each pair is 2 key bytes + 4 value bytes = 6; a budget of 13 holds two.
    engine.set_many(NS, [(f"k{i}".encode(), b"vvvv") for i in range(5)], QUOTA)
    engine.set(NS, b"k5", b"x" * 100, None, QUOTA)
    pages: list[list[bytes]] = []
    after = None
    while True:
        items, more = engine.scan(NS, kv.KeyRange(), after, 100, 13)
        pages.append([key for key, _, _ in items])
        if not more:
            break
        after = items[-1][0]
    assert pages == [[b"k0", b"k1"], [b"k2", b"k3"], [b"k4"], [b"k5"]]
    # Exactly at the budget still fits.
    assert len(engine.scan(NS, kv.KeyRange(), None, 100, 12)[0]) == 2


def test_a_scan_page_is_one_snapshot_while_a_writer_changes_keys_together(engine: kv.Store) -> None:
    # set_many writes both keys at once; a page holding both must never see them differ.
    engine.set_many(NS, [(b"pair:a", b"0"), (b"pair:b", b"0")], QUOTA)
    stop = threading.Event()
    progress = threading.Condition()
    writes = 0

    def writer() -> None:
        nonlocal writes
        while not stop.is_set():
            value = str(writes + 1).encode()
            engine.set_many(NS, [(b"pair:a", value), (b"pair:b", value)], QUOTA)
            with progress:
                writes += 1
                progress.notify_all()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        seen = set()
        for _ in range(100):
            with progress:
                before = writes
            items, _ = engine.scan(NS, kv.KeyRange(b"pair:"), None, 10, kv.SCAN_PAGE_MAX_BYTES)
            assert [key for key, _, _ in items] == [b"pair:a", b"pair:b"]
            assert items[0][1] == items[1][1]
            seen.add(items[0][1])
            # Wait for the writer to move on, so pages fall between (and during) its writes
            # however the threads are scheduled.
            with progress:
                assert progress.wait_for(lambda seen_before=before: writes > seen_before, timeout=30)
    finally:
        stop.set()
        thread.join()
    assert len(seen) > 1  # the writer really ran between pages


# -- batches ---------------------------------------------------------------------------------


def test_get_many_returns_values_in_request_order(engine: kv.Store) -> None:
    engine.set_many(NS, [(b"a", b"1"), (b"b", b"2")], QUOTA)
    assert engine.get_many(NS, [b"b", b"missing", b"a", b"b"]) == [b"2", None, b"1", b"2"]
    assert engine.get_many(NS, []) == []


def test_set_many_clears_ttls_and_takes_the_last_duplicate(engine: kv.Store, ttl_clock: TtlClock) -> None:
    engine.set(NS, b"a", b"old", 200, QUOTA)
    engine.set_many(NS, [(b"a", b"1"), (b"b", b"2"), (b"a", b"3")], QUOTA)
    ttl_clock.advance(250)
    assert engine.get_many(NS, [b"a", b"b"]) == [b"3", b"2"]
    assert engine.usage("acme") == kv.Usage(keys=2, bytes=4)


def test_delete_many_counts_each_live_key_once(engine: kv.Store) -> None:
    engine.set_many(NS, [(b"a", b""), (b"b", b"")], QUOTA)
    assert engine.delete_many(NS, [b"a", b"b", b"c", b"a"]) == 2
    assert engine.get_many(NS, [b"a", b"b"]) == [None, None]
    assert engine.delete_many(NS, []) == 0


def test_set_many_over_quota_writes_nothing(engine: kv.Store) -> None:
    small = kv.Quota(max_keys=3)
    engine.set(NS, b"a", b"1", None, small)
    with pytest.raises(kv.QuotaExceeded):
        engine.set_many(NS, [(b"b", b"2"), (b"c", b"3"), (b"d", b"4")], small)
    assert engine.get_many(NS, [b"b", b"c", b"d"]) == [None, None, None]
    assert engine.usage("acme").keys == 1


# -- isolation and listing of tenants and buckets --------------------------------------------


def test_tenants_and_buckets_are_separate_key_spaces(engine: kv.Store) -> None:
    one, two, other = NS, kv.Namespace("two", "default"), kv.Namespace("acme", "other")
    engine.set(one, b"k", b"one's", None, QUOTA)
    assert engine.get(two, b"k") is None
    assert engine.get(other, b"k") is None
    assert engine.list_keys(two, kv.KeyRange(b""), None, 10) == ([], False)
    engine.set(two, b"k", b"two's", None, QUOTA)
    engine.set(other, b"k", b"other's", None, QUOTA)
    assert engine.delete(one, b"k") is True
    assert engine.get_many(two, [b"k"]) == [b"two's"]
    assert engine.get(other, b"k") == b"other's"
    assert engine.usage("two") == kv.Usage(keys=1, bytes=6)
    assert engine.usage("acme") == kv.Usage(keys=1, bytes=8)


def test_no_crafted_key_reaches_another_namespace(engine: kv.Store) -> None:
    engine.set(kv.Namespace("victim", "secret"), b"k", b"private", None, QUOTA)
    attacker = kv.Namespace("vic", "default")
    for crafted in [b"../victim/secret/k", b"victim/secret/k", b"tim/secret/k", b"/k", b"{victim}:d:secret:k"]:
        assert engine.get(attacker, crafted) is None
        assert engine.exists(attacker, crafted) is False
    assert engine.list_keys(attacker, kv.KeyRange(b""), None, 10) == ([], False)
    assert engine.get(kv.Namespace("victim", "secret"), b"k") == b"private"


def test_tenants_and_buckets_list_what_holds_keys(engine: kv.Store) -> None:
    engine.set(kv.Namespace("t1", "b2"), b"k", b"", None, QUOTA)
    engine.set(kv.Namespace("t1", "b1"), b"k", b"", None, QUOTA)
    engine.set(kv.Namespace("t2", "only"), b"k", b"", None, QUOTA)
    engine.set(kv.Namespace("t1", "gone"), b"k", b"", None, QUOTA)
    engine.delete(kv.Namespace("t1", "gone"), b"k")
    assert {"t1", "t2"} <= set(engine.tenants())
    assert engine.tenants() == sorted(engine.tenants())
    assert engine.buckets("t1") == ["b1", "b2"]
    assert engine.buckets("t2") == ["only"]
    assert engine.buckets("nobody") == []


# -- quotas ----------------------------------------------------------------------------------


def test_usage_counts_key_and_value_bytes_across_buckets(engine: kv.Store) -> None:
    engine.set(NS, b"abc", b"12345", None, QUOTA)
    engine.set(kv.Namespace("acme", "other"), "é".encode(), b"", None, QUOTA)
    assert engine.usage("acme") == kv.Usage(keys=2, bytes=3 + 5 + 2)
    engine.set(NS, b"abc", b"1", None, QUOTA)
    assert engine.usage("acme") == kv.Usage(keys=2, bytes=3 + 1 + 2)
    assert engine.usage("nobody") == kv.Usage(keys=0, bytes=0)


def test_quota_rejects_a_write_past_max_keys_and_allows_overwrites_at_the_limit(engine: kv.Store) -> None:
    small = kv.Quota(max_keys=2)
    engine.set(NS, b"a", b"", None, small)
    engine.set(kv.Namespace("acme", "b"), b"b", b"", None, small)
    with pytest.raises(kv.QuotaExceeded, match="max_keys is 2, 2 in use and this write adds 1") as raised:
        engine.set(NS, b"c", b"", None, small)
    assert raised.value.code == 4
    assert engine.get(NS, b"c") is None
    engine.set(NS, b"a", b"overwrite at the limit is fine", None, small)
    assert engine.delete(NS, b"a") is True
    engine.set(NS, b"c", b"", None, small)


def test_quota_rejects_a_write_past_max_bytes_and_allows_shrinking(engine: kv.Store) -> None:
    small = kv.Quota(max_bytes=20)
    engine.set(NS, b"k", b"x" * 19, None, small)
    with pytest.raises(kv.QuotaExceeded, match="max_bytes is 20, 20 in use and this write adds 1"):
        engine.set(NS, b"k", b"x" * 20, None, small)
    assert engine.get(NS, b"k") == b"x" * 19
    engine.set(NS, b"k", b"y" * 19, None, small)
    engine.set(NS, b"k", b"short", None, small)
    assert engine.usage("acme").bytes == 6


def test_increment_and_compare_and_swap_respect_the_quota(engine: kv.Store) -> None:
    one = kv.Quota(max_keys=1)
    engine.increment(NS, b"n", 1, one)
    with pytest.raises(kv.QuotaExceeded):
        engine.increment(NS, b"m", 1, one)
    with pytest.raises(kv.QuotaExceeded):
        engine.compare_and_swap(NS, b"m", None, b"x", one)
    assert engine.compare_and_swap(NS, b"n", b"1", b"5", one) is True
    assert engine.increment(NS, b"n", 1, one) == 6


def test_a_closed_engine_raises_backend_unavailable(engine: kv.Store) -> None:
    engine.set(NS, b"k", b"v", None, QUOTA)
    engine.close()
    engine.close()  # idempotent
    for call in (
        lambda: engine.get(NS, b"k"),
        lambda: engine.set(NS, b"k", b"v", None, QUOTA),
        lambda: engine.list_keys(NS, kv.KeyRange(b""), None, 10),
        lambda: engine.usage("acme"),
    ):
        with pytest.raises(kv.BackendUnavailable, match="closed"):
            call()
