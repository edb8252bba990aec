"""The local store's fast read paths answer exactly as a plain model says, in every case they step aside for.

Pages and batches of the embedded engine take a shortcut when no record of the
tenant has expired (the expiry index says so in one step), and fall back to a
walk over the records otherwise, or when long keys are in the way. These tests
drive both, against a dict, with TTLs on a fake clock and swept or not.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
from conftest import FakeClock

from wasmkv import kv
from wasmkv.kv._lmdb import LmdbStore
from wasmkv.kv._protocol import DirectReads, Store

Model = dict[str, tuple[bytes, int | None]]


class _PlainEngine:
    """An engine with `Store`'s reads only (no `DirectReads`): `Bucket` then converts the pages itself."""

    def __init__(self, engine: LmdbStore) -> None:
        self._engine = engine

    def __getattr__(self, name: str) -> object:
        if name in ("reader", "list_keys_text", "scan_text"):
            raise AttributeError(name)
        return getattr(self._engine, name)


@pytest.fixture
def store(clock: FakeClock) -> Iterator[kv.KvStore]:
    with kv.KvStore.memory(clock=clock, sweep_interval_s=None) as opened:
        yield opened


def _keys(rng: random.Random) -> list[str]:
    short = [f"{rng.choice('abcxyz')}{rng.randrange(1000):03}" for _ in range(120)]
    unicode = ["é1", "é2", "日本", "🎉", "a é"]
    # Long keys: prefix + key past SHORT_ROOM, sharing heads (a group) and not.
    long = ["b" * 500 + "1", "b" * 500 + "2", "b" * 499, "c" * 510, "a" + "z" * 505]
    return list(dict.fromkeys(short + unicode + long))


def _fill(bucket: kv.Bucket, rng: random.Random, keys: list[str], clock: FakeClock, ttl_share: float) -> Model:
    model: Model = {}
    now = int(clock() * 1000)
    for key in keys:
        value = rng.randbytes(rng.randrange(0, 40))
        if rng.random() < ttl_share:
            ttl = rng.randrange(1, 5000)
            bucket.set_with_ttl(key, value, ttl)
            model[key] = (value, now + ttl)
        else:
            bucket.set(key, value)
            model[key] = (value, None)
    return model


def _live(model: Model, clock: FakeClock) -> dict[str, bytes]:
    now = int(clock() * 1000)
    return {k: v for k, (v, exp) in model.items() if exp is None or exp > now}


def _wanted(live: dict[str, bytes], prefix: str, start: str | None, end: str | None, reverse: bool) -> list[str]:
    keys = sorted(
        (
            k
            for k in live
            if k.startswith(prefix)
            and (start is None or k.encode() >= start.encode())
            and (end is None or k.encode() < end.encode())
        ),
        key=str.encode,
    )
    return keys[::-1] if reverse else keys


def _check_listings(bucket: kv.Bucket, live: dict[str, bytes], rng: random.Random) -> None:
    bounds = [None, "", "a", "a5", "b", "b" * 499, "b" * 500, "c", "é", "x500", "z"]
    for _ in range(25):
        prefix = rng.choice(["", "", "a", "b", "x", "bbb"])
        start, end = rng.choice(bounds), rng.choice(bounds)
        reverse = rng.random() < 0.5
        limit = rng.choice([1, 3, 7, 50, 1000])
        expected = _wanted(live, prefix, start, end, reverse)
        keys: list[str] = []
        cursor = None
        while True:
            page = bucket.list_keys(prefix, cursor, limit, start=start, end=end, reverse=reverse)
            assert len(page.keys) <= limit
            keys += page.keys
            if (cursor := page.cursor) is None:
                break
        assert keys == expected, (prefix, start, end, reverse, limit)
        items = list(bucket.items(prefix, start=start, end=end, reverse=reverse, page_size=limit))
        assert items == [(k, live[k]) for k in expected], (prefix, start, end, reverse, limit)


def _check_batches(bucket: kv.Bucket, model: Model, live: dict[str, bytes], rng: random.Random) -> None:
    names = [*model, "missing", "missing2"]
    for _ in range(20):
        asked = rng.choices(names, k=rng.randrange(1, 30))  # duplicates too
        assert bucket.get_many(asked) == [live.get(k) for k in asked]
        assert bucket.get_many([k.encode() for k in asked]) == [live.get(k) for k in asked]
        for key in asked[:5]:
            assert bucket.get(key) == live.get(key)


@pytest.mark.parametrize("ttl_share", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("direct", [True, False], ids=["direct", "plain"])
def test_pages_and_batches_match_the_model_before_and_after_keys_expire(
    clock: FakeClock, ttl_share: float, direct: bool
) -> None:
    rng = random.Random(int(ttl_share * 10) + direct)
    with kv.KvStore.memory(clock=clock, sweep_interval_s=None) as base:
        engine = base.engine if direct else _PlainEngine(base.engine)  # type: ignore[arg-type]
        with kv.KvStore(engine, clock=clock, sweep_interval_s=None) as store:  # type: ignore[arg-type]
            assert (store._direct is not None) == direct
            bucket = store.tenant("acme").bucket()
            model = _fill(bucket, rng, _keys(rng), clock, ttl_share)
            other = store.tenant("acme").bucket("other")
            other.set("a001", b"elsewhere")  # another bucket of the tenant, next to this one's keys
            for step in range(4):  # all live; some expired, not swept; swept; more expired
                live = _live(model, clock)
                _check_listings(bucket, live, rng)
                _check_batches(bucket, model, live, rng)
                clock.tick(1500)
                if step == 1:
                    store.sweep()


def test_a_scan_page_stops_at_max_bytes_on_either_path(store: kv.KvStore, clock: FakeClock) -> None:
    bucket = store.tenant("acme").bucket()
    engine = store.engine
    assert isinstance(engine, LmdbStore)
    ns = kv.Namespace("acme", "default")
    bucket.set_many({f"k{i}": bytes([i]) * 100 for i in range(10)})
    plain_items, more = engine.scan(ns, kv.KeyRange(b"k"), None, 10, 350)
    assert [k for k, _, _ in plain_items] == [b"k0", b"k1", b"k2"] and more
    text_items, more = engine.scan_text(ns, kv.KeyRange(b"k"), None, 10, 350)
    assert [k for k, _ in text_items] == ["k0", "k1", "k2"] and more
    bucket.set_with_ttl("k5", b"t" * 100, 60_000)  # a TTL in the tenant: the page is shaped item by item
    ttl_items, more = engine.scan(ns, kv.KeyRange(b"k"), b"k3", 10, 350)
    assert [(k, left) for k, _, left in ttl_items] == [(b"k4", None), (b"k5", 60_000), (b"k6", None)] and more
    first, more = engine.scan_text(ns, kv.KeyRange(b"k"), None, 10, 50)
    assert first == [("k0", bytes([0]) * 100)] and more  # a first item past max_bytes comes alone


def test_the_local_engine_offers_direct_reads_and_keeps_the_store_protocol(store: kv.KvStore) -> None:
    assert isinstance(store.engine, DirectReads) and isinstance(store.engine, Store)
    assert store._direct is store.engine
    bucket = store.tenant("acme").bucket()
    bucket.set("k", b"v")
    engine = store.engine
    assert isinstance(engine, LmdbStore)
    assert engine.reader(kv.Namespace("acme", "default"))(b"k") == b"v"
    assert engine.list_keys(kv.Namespace("acme", "default"), kv.KeyRange(), None, 10) == ([b"k"], False)


class _Text(str):
    pass


def test_a_batch_still_refuses_keys_that_are_not_exactly_str_or_bytes(store: kv.KvStore) -> None:
    bucket = store.tenant("acme").bucket()
    with pytest.raises(kv.InvalidKey):
        bucket.get_many(["a", _Text("b")])
    with pytest.raises(kv.InvalidKey):
        bucket.get_many(["a", "b\nc"])
    with pytest.raises(kv.InvalidKey):
        bucket.get_many(["a", "\udfff"])
    with pytest.raises(kv.InvalidKey):
        bucket.get_many([b"a", b"b\x7f"])
    assert bucket.get_many(["a", "é\u0085"]) == [None, None]  # C1 controls are printable enough for a key


def test_a_key_repeated_in_get_many_is_read_once(store: kv.KvStore) -> None:
    # 1000 names of one 1 MiB value must cost one value's memory, not 1 GiB of copies.
    bucket = store.tenant("t", kv.Quota(max_bytes=8 << 20)).bucket()
    bucket.set("big", b"x" * (1 << 20))
    values = bucket.get_many(["big"] * 999 + ["missing"])
    assert values[-1] is None
    assert len({id(value) for value in values[:-1]}) == 1
    assert values[0] == b"x" * (1 << 20)
