"""Cluster mode cost: each store operation through `KvStore.from_url` against a raw async client.

Starts its own Redis Cluster (3 masters + 3 replicas on loopback), then, for
each operation, times one caller issuing it back to back four ways:

- raw: `redis.asyncio.RedisCluster`, the same command shape (GET for get, SET
  for set, INCRBY, a minimal CAS script, ZRANGEBYLEX page, MGET of 100);
- async store: `kv.RedisStore` awaited directly (our scripts);
- store: `kv.KvStore.from_url(...)` from a plain thread (validation, scripts, its
  blocking redis-py engine on the caller's thread);
- bridge: the same front layer over `kv.SyncBridge(kv.RedisStore)`, the engine the
  blocking one replaced (each call hops to an event-loop thread and back).

Then the throughput of 3 processes hammering one cluster. Prints a markdown table.

    .venv/bin/python bench/bench_cluster.py [--iterations N] [--seconds S]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from bench_host import LOOPS  # the same loop plugin as the embedded-store benchmark
from redis.asyncio.cluster import ClusterNode, RedisCluster

from wasmkv import host, kv

PREFIX = "bench"
LIST_PAGE = 100
BATCH = 100


def _load_servers() -> ModuleType:
    # The test suite's server helper, loaded by path so that bench/ needs no package of its own.
    path = Path(__file__).resolve().parent.parent / "tests" / "_servers.py"
    spec = importlib.util.spec_from_file_location("_servers", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _median_us(samples: list[float]) -> float:
    return statistics.median(samples) * 1e6


def time_sync(call: Callable[[], object], iterations: int) -> float:
    for _ in range(iterations // 10):
        call()
    samples = []
    for _ in range(iterations):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return _median_us(samples)


async def time_async(call: Callable[[], Awaitable[object]], iterations: int) -> float:
    for _ in range(iterations // 10):
        await call()
    samples = []
    for _ in range(iterations):
        started = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - started)
    return _median_us(samples)


RAW_CAS = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('SET', KEYS[1], ARGV[2]); return 1 end
return 0
"""


async def raw_timings(url: str, iterations: int) -> dict[str, float]:
    nodes = [ClusterNode(*address.split(":")) for address in url.removeprefix("redis+cluster://").split(",")]
    client = RedisCluster(startup_nodes=nodes)
    try:
        tag = "{raw}"
        value = b"v" * 100
        await client.set(f"{tag}k", value)
        await client.mset({f"{tag}m{i}": value for i in range(BATCH)})
        await client.zadd(f"{tag}index", {f"item:{i:04d}": 0 for i in range(1000)})
        cas = client.register_script(RAW_CAS)
        state = {"flip": 0}

        async def raw_cas() -> object:
            old, new = (b"a", b"b") if state["flip"] else (b"b", b"a")
            state["flip"] ^= 1
            return await cas(keys=[f"{tag}cas"], args=[old, new])

        await client.set(f"{tag}cas", b"b")
        mget_keys = [f"{tag}m{i}" for i in range(BATCH)]
        ops: dict[str, Callable[[], Awaitable[object]]] = {
            "get": lambda: client.get(f"{tag}k"),
            "set": lambda: client.set(f"{tag}s", value),
            "increment": lambda: client.incrby(f"{tag}n", 1),
            "compare_and_swap": raw_cas,
            "list_keys page (100)": lambda: client.zrangebylex(f"{tag}index", "[item:", "(item;", 0, LIST_PAGE + 1),
            "get_many (100)": lambda: client.mget(mget_keys),
        }
        return {name: await time_async(op, iterations) for name, op in ops.items()}
    finally:
        await client.aclose()


async def async_store_timings(url: str, iterations: int) -> dict[str, float]:
    store = kv.RedisStore.from_url(url, key_prefix=PREFIX)
    try:
        ns = kv.Namespace("astore", "default")
        quota = kv.Quota()
        value = b"v" * 100
        await store.set(ns, b"k", value, None, quota)
        await store.set_many(ns, [(b"m%d" % i, value) for i in range(BATCH)], quota)
        await store.set_many(ns, [(b"item:%04d" % i, b"") for i in range(1000)], quota)
        await store.set(ns, b"cas", b"b", None, quota)
        state = {"flip": 0}

        async def cas() -> object:
            old, new = (b"a", b"b") if state["flip"] else (b"b", b"a")
            state["flip"] ^= 1
            return await store.compare_and_swap(ns, b"cas", old, new, quota)

        keys = [b"m%d" % i for i in range(BATCH)]
        ops: dict[str, Callable[[], Awaitable[object]]] = {
            "get": lambda: store.get(ns, b"k"),
            "set": lambda: store.set(ns, b"s", value, None, quota),
            "increment": lambda: store.increment(ns, b"n", 1, quota),
            "compare_and_swap": cas,
            "list_keys page (100)": lambda: store.list_keys(ns, kv.KeyRange(b"item:"), None, LIST_PAGE),
            "get_many (100)": lambda: store.get_many(ns, keys),
        }
        return {name: await time_async(op, iterations) for name, op in ops.items()}
    finally:
        await store.aclose()


def store_timings(store: kv.KvStore, tenant: str, iterations: int) -> dict[str, float]:
    with store:
        bucket = store.tenant(tenant).bucket()
        value = b"v" * 100
        bucket.set("k", value)
        bucket.set_many({f"m{i}": value for i in range(BATCH)})
        bucket.set_many({f"item:{i:04d}": b"" for i in range(1000)})
        bucket.set("cas", b"b")
        state = {"flip": 0}

        def cas() -> object:
            old, new = (b"a", b"b") if state["flip"] else (b"b", b"a")
            state["flip"] ^= 1
            return bucket.compare_and_swap("cas", old, new)

        keys = [f"m{i}" for i in range(BATCH)]
        ops: dict[str, Callable[[], object]] = {
            "get": lambda: bucket.get("k"),
            "set": lambda: bucket.set("s", value),
            "increment": lambda: bucket.increment("n"),
            "compare_and_swap": cas,
            "list_keys page (100)": lambda: bucket.list_keys("item:", limit=LIST_PAGE),
            "get_many (100)": lambda: bucket.get_many(keys),
        }
        return {name: time_sync(op, iterations) for name, op in ops.items()}


def hop_us(iterations: int) -> float:
    """The bridge's thread hop alone: a no-op coroutine run on the bridge's loop from this thread."""
    bridge = kv.SyncBridge(_NoopStore())  # type: ignore[arg-type]
    try:
        return time_sync(lambda: bridge._call(_noop()), iterations)
    finally:
        bridge.close()


class _NoopStore:
    async def aclose(self) -> None:
        return None


async def _noop() -> None:
    return None


WORKER = textwrap.dedent(
    """
    import json, sys, time
    from wasmkv import kv
    url, me, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    with kv.KvStore.from_url(url, key_prefix="bench-tp", sweep_interval_s=None) as store:
        # Each process its own tenant, so the load spreads over the cluster's masters.
        bucket = store.tenant("tp%d" % me).bucket()
        bucket.set("k", b"v" * 100)
        sys.stdin.readline()
        ops, i, deadline = 0, 0, time.monotonic() + seconds
        while time.monotonic() < deadline:
            for _ in range(50):
                if i % 4 == 0:
                    bucket.set("k%d" % (i % 1000), b"v" * 100)
                elif i % 4 == 1:
                    bucket.increment("n")
                else:
                    bucket.get("k")
                i += 1
            ops += 50
        print(json.dumps({"ops": ops, "seconds": seconds}))
    """
)


def _rate(script: str, args: list[list[str]], seconds: float) -> float:
    """Run one worker process per argument list, release them together; their ops per second, summed."""
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", script, *argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        for argv in args
    ]
    for worker in workers:
        assert worker.stdin is not None
        worker.stdin.write("go\n")
        worker.stdin.flush()
    total = 0.0
    for worker in workers:
        out, _ = worker.communicate(timeout=seconds + 60)
        report: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        total += report["ops"] / report["seconds"]
    return total


def throughput(url: str, processes: int, seconds: float) -> float:
    """Store operations per second summed over `processes` processes."""
    return _rate(WORKER, [[url, str(n), str(seconds)] for n in range(processes)], seconds)


HOST_WORKER = textwrap.dedent(
    """
    import json, sys, time
    from wasmkv import host, kv
    url, me, seconds, counter = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
    with kv.KvStore.from_url(url, key_prefix="benchhosts", sweep_interval_s=None) as store, host.Host(store) as h:
        plugin = h.load(counter, name="counter", tenant="t%d" % me)
        sys.stdin.readline()
        calls, deadline = 0, time.monotonic() + seconds
        while time.monotonic() < deadline:
            for i in range(20):
                plugin.call("hit", b"page%d" % (i % 10))
            calls += 20
        print(json.dumps({"ops": calls, "seconds": seconds}))
    """
)


def host_throughput(url: str, processes: int, seconds: float) -> float:
    """Plugin calls per second (each an increment in the cluster) summed over `processes` host processes."""
    counter = Path(__file__).resolve().parent.parent / "plugins" / "build" / "counter.wasm"
    subprocess.run([sys.executable, str(counter.parent.parent / "build.py")], check=True, capture_output=True)
    return _rate(HOST_WORKER, [[url, str(n), str(seconds), str(counter)] for n in range(processes)], seconds)


def plugin_get_us(url: str, count: int) -> float:
    """A plugin's get round trip on the cluster: a wasm loop of `count` gets, per get."""
    with kv.KvStore.from_url(url, key_prefix="benchplugin", sweep_interval_s=None) as store, host.Host(store) as h:
        store.tenant("bench").bucket().set("user:00000042", b"v" * 64)
        plugin = h.load(LOOPS, name="loops", tenant="bench", limits=host.Limits(deadline_ms=60_000))
        samples = []
        for _ in range(7):
            started = time.perf_counter()
            plugin.call("get", count.to_bytes(4, "little"))
            samples.append((time.perf_counter() - started) / count * 1e6)
        return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=3000)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    servers = _load_servers().RedisClusterServers().start()
    try:
        url = servers.url
        raw = asyncio.run(raw_timings(url, args.iterations))
        direct = asyncio.run(async_store_timings(url, args.iterations))
        blocking = store_timings(
            kv.KvStore.from_url(url, key_prefix=PREFIX, sweep_interval_s=None), "sync", args.iterations
        )
        bridge = kv.SyncBridge(kv.RedisStore.from_url(url, key_prefix=PREFIX))
        bridged = store_timings(kv.KvStore(bridge, sweep_interval_s=None), "bridge", args.iterations)
        hop = hop_us(args.iterations)
        one = throughput(url, 1, args.seconds)
        three = throughput(url, 3, args.seconds)
        plugin_get = plugin_get_us(url, 2000)
        hosts_one = host_throughput(url, 1, args.seconds)
        hosts_three = host_throughput(url, 3, args.seconds)
    finally:
        servers.stop()
    print(f"Redis Cluster 3 masters + 3 replicas on loopback, one caller, median of {args.iterations} calls (µs)\n")
    print(
        "| operation | raw redis.asyncio | RedisStore (async) | KvStore | KvStore via bridge (before) "
        "| KvStore / raw | bridge / raw |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in raw:
        r, d, k, b = raw[name], direct[name], blocking[name], bridged[name]
        print(f"| {name} | {r:.0f} | {d:.0f} | {k:.0f} | {b:.0f} | {k / r:.2f}x | {b / r:.2f}x |")
    print(f"\nThe bridge's thread hop alone (a no-op coroutine through `SyncBridge`): {hop:.0f} µs")
    print(f"\nThroughput, mixed 50% get / 25% set / 25% increment, {args.seconds:g} s, one thread per process:\n")
    print("| processes | ops/s |\n|---:|---:|")
    print(f"| 1 | {one:,.0f} |\n| 3 | {three:,.0f} |")
    print(f"\nA plugin's get round trip on the cluster (wasm loop of gets through the store): {plugin_get:.0f} µs\n")
    print("Host processes, each calling the counter plugin (one increment in the cluster per call):\n")
    print("| host processes | plugin calls/s |\n|---:|---:|")
    print(f"| 1 | {hosts_one:,.0f} |\n| 3 | {hosts_three:,.0f} |")


if __name__ == "__main__":
    main()
