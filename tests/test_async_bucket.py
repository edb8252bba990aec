"""`AsyncBucket` (`tenant.async_bucket()`): `Bucket`'s methods awaited, on every engine.

The same calls give the same results and the same errors as the sync bucket;
concurrent atomics and quotas stay exact; a local write waits for the writer
lock off the loop; a Redis store is awaited on the caller's loop, one engine
per loop, closed with the loop or the store.
"""

from __future__ import annotations

import asyncio
import gc
import math
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ENGINES, FakeClock

from wasmkv import kv
from wasmkv.kv._async_engines import LoopEngines

KINDS = [*sorted(ENGINES), "memory"]
REDIS_KINDS = [kind for kind in KINDS if kind.startswith("redis")]


def _open(kind: str, tmp_path: Path) -> kv.KvStore:
    if kind == "memory":
        return kv.KvStore.memory(sweep_interval_s=None)
    return ENGINES[kind][0](tmp_path, FakeClock())


@pytest.fixture(params=KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[kv.KvStore]:
    """The front layer over each engine, the memory store included."""
    with _open(request.param, tmp_path) as opened:
        yield opened
    gc.collect()  # an engine left unclosed warns when collected: make it happen inside the test


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


# Every public method, as (name, args, kwargs); run in order on a sync bucket and an async one.
CALLS: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
    ("set", ("a", b"1"), {}),
    ("get", ("a",), {}),
    ("get", (b"a",), {}),
    ("get", ("missing",), {}),
    ("exists", ("a",), {}),
    ("exists", ("missing",), {}),
    ("ttl", ("a",), {}),
    ("set_with_ttl", ("t", b"x", 600_000), {}),
    ("exists", ("t",), {}),
    ("increment", ("n",), {}),
    ("increment", ("n", 41), {}),
    ("increment", ("n",), {"delta": -2}),
    ("get", ("n",), {}),
    ("compare_and_swap", ("c", None, b"1"), {}),
    ("compare_and_swap", ("c", None, b"2"), {}),
    ("compare_and_swap", ("c", b"2", b"3"), {}),
    ("compare_and_swap", ("c", b"1", b"3"), {}),
    ("get", ("c",), {}),
    ("set_many", ({"m1": b"1", "m2": b"2"},), {}),
    ("set_many", ([("m3", b"3"), ("m1", b"one")],), {}),
    ("get_many", (["m1", "m2", "nope", "m1"],), {}),
    ("list_keys", (), {}),
    ("list_keys", ("m",), {"limit": 2}),
    ("list_keys", (), {"start": "c", "end": "n", "reverse": True}),
    ("scan", ("m",), {"limit": 2}),
    ("scan", (), {"start": "m2", "reverse": True}),
    ("items", ("m",), {"page_size": 2}),
    ("delete", ("a",), {}),
    ("delete", ("a",), {}),
    ("delete_many", (["m1", "m2", "zz"],), {}),
    ("list_keys", (), {}),
]


def test_every_method_gives_what_the_sync_bucket_gives(store: kv.KvStore) -> None:
    tenant = store.tenant("acme")
    sync, abucket = tenant.bucket("sync"), tenant.async_bucket("async")
    assert isinstance(abucket, kv.AsyncBucket)
    assert (abucket.name, abucket.tenant) == ("async", tenant)
    assert repr(abucket) == "AsyncBucket(tenant='acme', name='async')"

    async def call(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if name == "items":
            return [item async for item in abucket.items(*args, **kwargs)]
        return await getattr(abucket, name)(*args, **kwargs)

    async def both() -> None:
        for name, args, kwargs in CALLS:
            expected = getattr(sync, name)(*args, **kwargs)
            if name == "items":
                expected = list(expected)
            assert await call(name, args, kwargs) == expected, (name, args, kwargs)
        # A cursor of one is a cursor of the other: the next page matches too.
        page = sync.list_keys(limit=1)
        assert (await abucket.list_keys(cursor=page.cursor, limit=1)) == sync.list_keys(cursor=page.cursor, limit=1)
        scanned = sync.scan(limit=1)
        assert (await abucket.scan(cursor=scanned.cursor, limit=1)) == sync.scan(cursor=scanned.cursor, limit=1)
        # TTLs count down on their own: each is within what was set.
        for left in (sync.ttl("t"), await abucket.ttl("t")):
            assert left is not None
            assert 0 < left <= 600_000

    run(both())


def _state(bucket: kv.Bucket) -> tuple[list[tuple[str, bytes]], kv.Usage]:
    return list(bucket.items()), bucket.tenant.usage()


I64_MAX = 2**63 - 1
SMALL = kv.Quota(max_keys=3, max_value_bytes=32)
# (what is wrong, the call, its error); each is made against a bucket holding `_SEED` under quota `SMALL`.
BAD_CALLS: list[tuple[str, str, tuple[Any, ...], dict[str, Any], type[kv.KvError]]] = [
    ("an empty key", "get", ("",), {}, kv.InvalidKey),
    ("a control character", "set", ("bad\x00key", b"v"), {}, kv.InvalidKey),
    ("a key too long", "exists", ("k" * 70_000,), {}, kv.InvalidKey),
    ("not a key", "delete", (3,), {}, kv.InvalidKey),
    ("a value too large", "set", ("a", b"x" * 33), {}, kv.ValueTooLarge),
    ("a swap value too large", "compare_and_swap", ("a", b"1", b"x" * 33), {}, kv.ValueTooLarge),
    ("a batch value too large", "set_many", ({"a": b"2", "b": b"x" * 33},), {}, kv.ValueTooLarge),
    ("a fourth key", "set", ("new", b"v"), {}, kv.QuotaExceeded),
    ("a fourth key by TTL", "set_with_ttl", ("new", b"v", 1000), {}, kv.QuotaExceeded),
    ("a fourth counter", "increment", ("new",), {}, kv.QuotaExceeded),
    ("a fourth key by swap", "compare_and_swap", ("new", None, b"v"), {}, kv.QuotaExceeded),
    ("two more keys", "set_many", ({"a": b"2", "new": b"v", "new2": b"v"},), {}, kv.QuotaExceeded),
    ("a zero TTL", "set_with_ttl", ("a", b"v", 0), {}, kv.InvalidArgument),
    ("a float delta", "increment", ("n", 1.5), {}, kv.InvalidArgument),
    ("a limit of 0", "list_keys", (), {"limit": 0}, kv.InvalidArgument),
    ("a forged cursor", "scan", (), {"cursor": "nope"}, kv.InvalidArgument),
    ("one key for many", "get_many", ("abc",), {}, kv.InvalidArgument),
    ("too many keys", "delete_many", ([f"k{i}" for i in range(1001)],), {}, kv.InvalidArgument),
    ("not a pair", "set_many", ([("a", b"1", b"2")],), {}, kv.InvalidArgument),
    ("a text expected", "compare_and_swap", ("a", "1", b"2"), {}, kv.InvalidArgument),
    ("not a number", "increment", ("a",), {}, kv.NotANumber),
    ("an overflow", "increment", ("n",), {"delta": 2}, kv.IntegerOverflow),
]
_SEED = {"a": b"text", "n": str(I64_MAX - 1).encode(), "z": b"1"}


@pytest.mark.parametrize(
    ("call", "args", "kwargs", "error"), [case[1:] for case in BAD_CALLS], ids=[case[0] for case in BAD_CALLS]
)
def test_an_error_is_the_sync_buckets_error_and_changes_nothing(
    store: kv.KvStore,
    call: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    error: type[kv.KvError],
) -> None:
    tenant = store.tenant("acme", SMALL)
    sync, abucket = tenant.bucket(), tenant.async_bucket()
    sync.set_many(_SEED)
    before = _state(sync)
    with pytest.raises(error) as from_sync:
        getattr(sync, call)(*args, **kwargs)
    with pytest.raises(error) as from_async:
        run(getattr(abucket, call)(*args, **kwargs))
    assert type(from_async.value) is type(from_sync.value)
    assert str(from_async.value) == str(from_sync.value)
    assert _state(sync) == before


def test_a_rate_limited_call_is_refused_like_the_sync_one(store: kv.KvStore) -> None:
    # One token a second, and nothing refills within the test: the sync call spends it.
    tenant = store.tenant("acme", kv.Quota(ops_per_second=0.001))
    sync, abucket = tenant.bucket(), tenant.async_bucket()
    sync.set("a", b"1")
    with pytest.raises(kv.RateLimited) as from_sync:
        sync.set("b", b"2")

    async def refused() -> None:
        for call in (abucket.set("b", b"2"), abucket.get("a"), abucket.increment("n"), abucket.list_keys()):
            with pytest.raises(kv.RateLimited) as from_async:
                await call
            assert str(from_async.value) == str(from_sync.value)
        with pytest.raises(kv.RateLimited):
            [item async for item in abucket.items()]

    run(refused())
    # An invalid call spends nothing, so it reports what is wrong with it, not the rate.
    with pytest.raises(kv.InvalidKey):
        run(abucket.get(""))
    # Nothing refused was written.
    tenant.set_quota(kv.Quota())
    assert dict(tenant.bucket().items()) == {"a": b"1"}


def test_gathered_increments_of_one_key_add_up_exactly(store: kv.KvStore) -> None:
    abucket = store.tenant("acme").async_bucket()

    async def gathered() -> list[int]:
        return await asyncio.gather(*(abucket.increment("hits") for _ in range(250)))

    results = run(gathered())
    assert sorted(results) == list(range(1, 251))
    assert store.tenant("acme").bucket().get("hits") == b"250"


def test_concurrent_sets_leave_exactly_max_keys_keys(store: kv.KvStore) -> None:
    tenant = store.tenant("acme", kv.Quota(max_keys=7))
    abucket = tenant.async_bucket()

    async def gathered() -> list[BaseException | None]:
        return await asyncio.gather(*(abucket.set(f"k{i:03}", b"v") for i in range(120)), return_exceptions=True)

    results = run(gathered())
    refused = [result for result in results if result is not None]
    assert all(isinstance(result, kv.QuotaExceeded) for result in refused)
    assert len(refused) == 113
    assert len(tenant.bucket().list_keys().keys) == 7
    assert tenant.usage().keys == 7


def test_items_is_an_async_iterator_over_every_page(store: kv.KvStore) -> None:
    tenant = store.tenant("acme")
    tenant.bucket().set_many({f"k{i:03}": str(i).encode() for i in range(25)})
    abucket = tenant.async_bucket()

    async def listed() -> list[tuple[str, bytes]]:
        return [item async for item in abucket.items(page_size=4, reverse=True)]

    assert run(listed()) == list(tenant.bucket().items(reverse=True))
    assert len(run(listed())) == 25


def test_a_closed_store_refuses_async_calls(store: kv.KvStore) -> None:
    abucket = store.tenant("acme").async_bucket()
    run(abucket.set("a", b"1"))
    store.close()
    for call in (abucket.set("a", b"2"), abucket.get("a")):
        with pytest.raises(kv.BackendUnavailable, match="closed"):
            run(call)


# -- local engines: writes wait off the loop ------------------------------------------------------


class _SignallingLock:
    """The store's write lock, telling the test when a writer comes to take it."""

    def __init__(self, lock: threading.Lock, reached: Callable[[], object]) -> None:
        self._lock = lock
        self._reached = reached

    def __enter__(self) -> None:
        self._reached()
        self._lock.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self._lock.release()


def _hold_in_thread(store: kv.KvStore) -> Callable[[], None]:
    """Hold the write lock of this process from another thread; returns how to let it go."""
    lock: threading.Lock = store.engine._write_lock  # type: ignore[attr-defined]
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with lock:
            held.set()
            release.wait(60)  # a bound, should the loop never get to release it

    thread = threading.Thread(target=hold)
    thread.start()
    held.wait()

    def let_go() -> None:
        release.set()
        thread.join()

    return let_go


def _hold_in_process(store: kv.KvStore) -> Callable[[], None]:
    """Hold LMDB's writer lock from another process, in an open write transaction; returns how to let it go."""
    script = textwrap.dedent(f"""
        import select, sys
        from wasmkv import kv
        store = kv.KvStore.open({store.engine.path!r}, sweep_interval_s=None)
        txn = store.engine._env.begin(write=True)
        print("held", flush=True)
        select.select([sys.stdin], [], [], 60)  # a bound, should the test never let go
        txn.abort()
        store.close()
    """)
    holder = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdin is not None
    assert holder.stdout.readline() == "held\n"

    def let_go() -> None:
        assert holder.stdin is not None and holder.stdout is not None
        holder.stdin.write("go\n")
        holder.stdin.close()
        holder.stdout.close()
        assert holder.wait(60) == 0

    return let_go


@pytest.mark.parametrize("holder", [_hold_in_thread, _hold_in_process], ids=["thread", "process"])
def test_a_write_waiting_for_the_writer_lock_does_not_block_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, holder: Callable[[kv.KvStore], Callable[[], None]]
) -> None:
    with kv.KvStore.open(tmp_path / "state", sweep_interval_s=None) as store:
        tenant = store.tenant("acme")
        tenant.bucket().set("k", b"old")
        abucket = tenant.async_bucket()

        async def scenario() -> list[str]:
            loop = asyncio.get_running_loop()
            reached = asyncio.Event()
            real_lock = store.engine._write_lock  # type: ignore[attr-defined]
            signalling = _SignallingLock(real_lock, lambda: loop.call_soon_threadsafe(reached.set))
            monkeypatch.setattr(store.engine, "_write_lock", signalling)
            let_go = holder(store)
            order: list[str] = []
            try:
                writing = asyncio.create_task(abucket.set("k", b"new"))
                writing.add_done_callback(lambda _: order.append("set"))
                await reached.wait()  # the write is on its thread, at the lock
                assert await abucket.get("k") == b"old"
                order.append("get")
                fired = asyncio.Event()
                loop.call_later(0.01, fired.set)
                await fired.wait()
                order.append("timer")
                assert not writing.done()
            finally:
                let_go()
            await writing
            assert await abucket.get("k") == b"new"
            return order

        assert run(scenario()) == ["get", "timer", "set"]


def test_local_writes_run_on_the_stores_writer_thread_and_reads_inline(tmp_path: Path) -> None:
    with kv.KvStore.open(tmp_path / "state", sweep_interval_s=None) as store:
        threads: dict[str, set[str]] = {"set": set(), "get": set()}
        engine = store.engine
        real_set, real_get = engine.set, engine.get

        def set_(*args: Any) -> None:
            threads["set"].add(threading.current_thread().name)
            real_set(*args)

        def get(*args: Any) -> bytes | None:
            threads["get"].add(threading.current_thread().name)
            return real_get(*args)

        engine.set, engine.get = set_, get  # type: ignore[method-assign]
        abucket = store.tenant("acme").async_bucket()

        async def calls() -> None:
            await asyncio.gather(*(abucket.set(f"k{i}", b"v") for i in range(20)))
            assert await abucket.get("k1") == b"v"

        run(calls())
        assert threads["get"] == {threading.current_thread().name}
        assert len(threads["set"]) == 1
        assert next(iter(threads["set"])).startswith("kv-async-writer")


# -- Redis: awaited on the caller's loop, one engine per loop --------------------------------------


@pytest.fixture(params=REDIS_KINDS)
def redis_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[kv.KvStore]:
    with _open(request.param, tmp_path) as opened:
        yield opened
    gc.collect()


def _base_engine(engine: kv.AsyncStore) -> kv.RedisStore:
    return engine.engine if isinstance(engine, kv.ReadCache) else engine  # type: ignore[return-value]


def test_redis_calls_run_on_the_callers_thread_without_the_bridge(
    redis_store: kv.KvStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant = redis_store.tenant("acme", kv.Quota(max_keys=50))
    tenant.bucket().set("seed", b"1")
    abucket = tenant.async_bucket()
    bridged: list[object] = []
    io_threads: set[int] = set()
    real_guard = kv.RedisStore._guard

    def no_bridge(self: kv.SyncBridge, coro: Coroutine[Any, Any, Any]) -> Any:
        bridged.append(coro)
        coro.close()
        raise AssertionError("an async call went through the sync bridge")

    async def guard(self: kv.RedisStore, call: Any) -> Any:
        io_threads.add(threading.get_ident())
        return await real_guard(self, call)

    monkeypatch.setattr(kv.SyncBridge, "_call", no_bridge)
    monkeypatch.setattr(kv.RedisStore, "_guard", guard)
    tenant._fetched_at = -math.inf  # the quota is due for a refresh: it must come through the loop's engine too

    async def everything() -> int:
        caller = threading.get_ident()
        await abucket.set("a", b"1")
        await abucket.set_with_ttl("t", b"x", 60_000)
        assert await abucket.get("a") == b"1"
        assert await abucket.get_many(["a", "seed"]) == [b"1", b"1"]
        assert await abucket.exists("t")
        assert await abucket.ttl("a") is None
        assert await abucket.increment("n", 5) == 5
        assert await abucket.compare_and_swap("c", None, b"1")
        await abucket.set_many({"m1": b"1", "m2": b"2"})
        assert (await abucket.list_keys("m")).keys == ["m1", "m2"]
        assert (await abucket.scan("m")).items == [("m1", b"1"), ("m2", b"2")]
        assert [key async for key, _ in abucket.items("m")] == ["m1", "m2"]
        assert await abucket.delete("a")
        assert await abucket.delete_many(["m1", "m2"]) == 2
        assert threading.get_ident() == caller
        return caller

    caller = run(everything())
    assert bridged == []
    assert io_threads == {caller}
    monkeypatch.undo()
    assert tenant.bucket().get("n") == b"5"


def test_two_event_loops_share_one_redis_store_each_with_its_own_engine(redis_store: kv.KvStore) -> None:
    tenant = redis_store.tenant("acme")
    abucket = tenant.async_bucket()
    engines = redis_store._async
    assert isinstance(engines, LoopEngines)
    seen: list[kv.AsyncStore] = []

    async def work() -> int:
        seen.append(await engines.engine())
        return await abucket.increment("runs")

    assert run(work()) == 1
    assert run(work()) == 2
    assert tenant.bucket().get("runs") == b"2"
    first, second = seen
    assert first is not second
    # Each loop's engine closed as its `asyncio.run` ended, and left the store's keeping.
    assert _base_engine(first)._closed and _base_engine(second)._closed
    assert len(engines._engines) == 0
    # The store's own engine (the blocking one) is none of them, and still serves the sync bucket.
    assert all(engine is not redis_store.engine for engine in seen)
    assert tenant.bucket().get("runs") == b"2"


def test_closing_the_store_closes_the_engine_of_a_loop_still_running(redis_store: kv.KvStore) -> None:
    abucket = redis_store.tenant("acme").async_bucket()
    engines = redis_store._async
    assert isinstance(engines, LoopEngines)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever)
    thread.start()
    try:
        assert asyncio.run_coroutine_threadsafe(abucket.increment("n"), loop).result(30) == 1
        engine = asyncio.run_coroutine_threadsafe(engines.engine(), loop).result(30)
        redis_store.close()
        assert _base_engine(engine)._closed
        assert len(engines._engines) == 0
        with pytest.raises(kv.BackendUnavailable, match="closed"):
            asyncio.run_coroutine_threadsafe(abucket.get("n"), loop).result(30)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


@pytest.mark.parametrize("kind", REDIS_KINDS)
def test_a_redis_store_closed_inside_a_loop_closes_that_loops_engine_as_the_loop_ends(
    kind: str, tmp_path: Path
) -> None:
    async def scenario() -> kv.AsyncStore:
        with _open(kind, tmp_path) as store:
            engines = store._async
            assert isinstance(engines, LoopEngines)
            abucket = store.tenant("acme").async_bucket()
            assert await abucket.increment("n") == 1
            engine = await engines.engine()
        with pytest.raises(kv.BackendUnavailable, match="closed"):
            await abucket.get("n")
        return engine

    assert _base_engine(run(scenario()))._closed
    gc.collect()
