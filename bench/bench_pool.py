"""Benchmark of instance pools: a CPU-heavy plugin called from 2 threads, pool of 2 against a pool of 1.

    .venv/bin/python bench/bench_pool.py

Wasm runs with the GIL released, so two instances of one plugin compute in
parallel; a pool of 1 serializes the calls. Each round runs both contenders
(interleaved) for the same number of calls through `acall` (the host's
thread pool, as `wasmkv serve` does) and through plain threads calling
`Plugin.call`. Target: pool 2 ≥ 1.5x the throughput of pool 1.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import threading
import time

from wasmkv import host, kv

ROUNDS = 7
CALLS = 200
# About 1-2 ms of pure computation per call: a loop of multiply-adds over a local.
SPIN = """
(module
  (memory (export "memory") 1)
  (func (export "work") (result i32)
    (local $i i32) (local $x i32)
    (local.set $i (i32.const 1500000))
    (loop $l
      (local.set $x (i32.add (i32.mul (local.get $x) (i32.const 31)) (local.get $i)))
      (local.set $i (i32.sub (local.get $i) (i32.const 1)))
      (br_if $l (local.get $i)))
    (i32.and (local.get $x) (i32.const 0))))
"""


def threaded(plugin: host.Plugin, threads: int) -> float:
    """Calls per second with `threads` threads sharing CALLS calls."""
    each = CALLS // threads
    start = threading.Barrier(threads + 1)

    def run() -> None:
        start.wait()
        for _ in range(each):
            plugin.call("work")

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for worker in workers:
        worker.start()
    began = time.perf_counter()
    start.wait()
    for worker in workers:
        worker.join()
    return each * threads / (time.perf_counter() - began)


def gathered(plugin: host.Plugin) -> float:
    """Calls per second with CALLS `acall`s gathered on one event loop."""

    async def main() -> float:
        began = time.perf_counter()
        await asyncio.gather(*(plugin.acall("work") for _ in range(CALLS)))
        return CALLS / (time.perf_counter() - began)

    return asyncio.run(main())


def main() -> None:
    with kv.KvStore.memory() as store, host.Host(store, call_threads=2) as wasm_host:
        pools = {size: wasm_host.load(SPIN, name=f"pool{size}", tenant="t", pool_size=size) for size in (1, 2)}
        for plugin in pools.values():
            plugin.call("work")  # both instances made before timing
            gathered(plugin)
        figures: dict[tuple[str, int], list[float]] = {}
        for _ in range(ROUNDS):
            for size, plugin in pools.items():
                figures.setdefault(("2 threads", size), []).append(threaded(plugin, 2))
                figures.setdefault(("acall", size), []).append(gathered(plugin))
    print(f"# bench_pool: {os.cpu_count()} CPUs, {CALLS} calls of ~1-2 ms of wasm, medians of {ROUNDS} rounds")
    print("| how | pool 1 calls/s | pool 2 calls/s | ratio (target ≥ 1.5x) |")
    print("|---|---|---|---|")
    for how in ("2 threads", "acall"):
        one = statistics.median(figures[how, 1])
        two = statistics.median(figures[how, 2])
        ratio = two / one
        print(f"| {how} | {one:.0f} | {two:.0f} | {ratio:.2f}x {'met' if ratio >= 1.5 else 'NOT met'} |")


if __name__ == "__main__":
    main()
