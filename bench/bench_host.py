"""Benchmark of the plugin path: KV round trips from inside wasm, and calls from Python.

    .venv/bin/python bench/bench_host.py

A WAT plugin loops N times over one KV import per op (get of a 64 B value,
set, increment, compare_and_swap, a 100-key list_keys page, get_many of 100
keys), next to an empty import defined through the same fast path (the
floor) and measured in the same run; and a Python→plugin call, next to
wasmtime-py's checked `Func.__call__`. Medians over rounds, µs per op.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import statistics
import struct
import tempfile
import time
from collections.abc import Callable

import msgpack
import wasmtime

from wasmkv import host, kv
from wasmkv.host._ffi import ExportFunc, define_unchecked

ROUNDS = 15

LOOPS = r"""
(module
  (import "kv" "open" (func $open (param i32 i32) (result i32)))
  (import "kv" "get" (func $get (param i32 i32 i32 i32 i32) (result i32)))
  (import "kv" "set" (func $set (param i32 i32 i32 i32 i32) (result i32)))
  (import "kv" "increment" (func $incr (param i32 i32 i32 i64 i32) (result i32)))
  (import "kv" "compare_and_swap" (func $cas (param i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "kv" "list_keys" (func $list (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "kv" "get_many" (func $get_many (param i32 i32 i32 i32 i32) (result i32)))
  (import "host" "input" (func $input (param i32 i32) (result i32)))
  (memory (export "memory") 4)
  (data (i32.const 0) "default")
  (data (i32.const 16) "user:00000042")
  (data (i32.const 32) "ctr")
  (data (i32.const 48) "cas")
  (data (i32.const 64) "a")
  (data (i32.const 65) "b")
  (data (i32.const 80) "user:")
  (data (i32.const 128) "vvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvv")
  ;; input: u32 N, then a payload (the get_many request) copied to 1024
  (func $setup (result i32 i32)
    (local $len i32)
    (local.set $len (call $input (i32.const 1020) (i32.const 60000)))
    (call $open (i32.const 0) (i32.const 7))
    (i32.load (i32.const 1020)))
  (func (export "get") (result i32) (local $h i32) (local $n i32)
    (call $setup) (local.set $n) (local.set $h)
    (loop $l
      (drop (call $get (local.get $h) (i32.const 16) (i32.const 13) (i32.const 70000) (i32.const 4096)))
      (br_if $l (local.tee $n (i32.sub (local.get $n) (i32.const 1)))))
    (i32.const 0))
  (func (export "set") (result i32) (local $h i32) (local $n i32)
    (call $setup) (local.set $n) (local.set $h)
    (loop $l
      (drop (call $set (local.get $h) (i32.const 16) (i32.const 13) (i32.const 128) (i32.const 64)))
      (br_if $l (local.tee $n (i32.sub (local.get $n) (i32.const 1)))))
    (i32.const 0))
  (func (export "increment") (result i32) (local $h i32) (local $n i32)
    (call $setup) (local.set $n) (local.set $h)
    (loop $l
      (drop (call $incr (local.get $h) (i32.const 32) (i32.const 3) (i64.const 1) (i32.const 70000)))
      (br_if $l (local.tee $n (i32.sub (local.get $n) (i32.const 1)))))
    (i32.const 0))
  (func (export "compare_and_swap") (result i32) (local $h i32) (local $n i32)
    (call $setup) (local.set $n) (local.set $h)
    (loop $l
      (drop (call $cas (local.get $h) (i32.const 48) (i32.const 3)
                       (i32.const 64) (i32.const 1) (i32.const 65) (i32.const 1)))
      (drop (call $cas (local.get $h) (i32.const 48) (i32.const 3)
                       (i32.const 65) (i32.const 1) (i32.const 64) (i32.const 1)))
      (br_if $l (local.tee $n (i32.sub (local.get $n) (i32.const 1)))))
    (i32.const 0))
  (func (export "list_keys") (result i32) (local $h i32) (local $n i32)
    (call $setup) (local.set $n) (local.set $h)
    (loop $l
      (drop (call $list (local.get $h) (i32.const 80) (i32.const 5) (i32.const 0) (i32.const 0) (i32.const 100)
                        (i32.const 70000) (i32.const 60000)))
      (br_if $l (local.tee $n (i32.sub (local.get $n) (i32.const 1)))))
    (i32.const 0))
  (func (export "get_many") (result i32) (local $h i32) (local $n i32) (local $len i32)
    (call $setup) (local.set $n) (local.set $h)
    (local.set $len (i32.sub (call $input (i32.const 0) (i32.const 0)) (i32.const 4)))
    (loop $l
      (drop (call $get_many (local.get $h) (i32.const 1024) (local.get $len) (i32.const 70000) (i32.const 60000)))
      (br_if $l (local.tee $n (i32.sub (local.get $n) (i32.const 1)))))
    (i32.const 0))
  (func (export "noop") (result i32) (i32.const 0))
)
"""

FLOOR = r"""
(module
  (import "bench" "empty" (func $empty (result i32)))
  (func (export "loop") (param $n i32) (result i32)
    (loop $l
      (drop (call $empty))
      (br_if $l (local.tee $n (i32.sub (local.get $n) (i32.const 1)))))
    (i32.const 0))
  (func (export "noop") (result i32) (i32.const 0)))
"""


def per_op_us(run: Callable[[], object], ops: int) -> float:
    """Median over rounds of `run()`'s time divided by the `ops` it performs."""
    samples = []
    for _ in range(ROUNDS):
        start = time.perf_counter_ns()
        run()
        samples.append((time.perf_counter_ns() - start) / ops / 1000)
    return statistics.median(samples)


def floor_us(n: int) -> tuple[float, float, float]:
    """The empty fast import's cost, and a Python call of an export via the fast path and via `Func.__call__`."""
    config = wasmtime.Config()
    config.epoch_interruption = True
    engine = wasmtime.Engine(config)
    store = wasmtime.Store(engine)
    linker = wasmtime.Linker(engine)
    keep = define_unchecked(linker, "bench", "empty", ((), ("i32",)), lambda slots: 0, lambda exc: b"error")
    instance = linker.instantiate(store, wasmtime.Module(engine, FLOOR))
    exports = instance.exports(store)
    loop, noop = exports["loop"], exports["noop"]
    assert isinstance(loop, wasmtime.Func) and isinstance(noop, wasmtime.Func)
    store.set_epoch_deadline(10**9)
    empty = per_op_us(lambda: loop(store, n), n)
    fast_noop = ExportFunc(store, noop)
    fast = per_op_us(lambda: [fast_noop(10**9) for _ in range(n)], n)
    checked = per_op_us(lambda: [noop(store) for _ in range(n // 10)], n // 10)
    del keep
    return empty, fast, checked


def main() -> None:
    n = 20_000
    empty, raw_call, checked_call = floor_us(n)
    rows: list[tuple[str, float, float | None]] = [("empty fast import (floor)", empty, 1.0)]
    with (
        tempfile.TemporaryDirectory(prefix="wasmkv-bench-") as scratch,
        kv.KvStore.open(scratch, sweep_interval_s=None) as store,
        host.Host(store) as wasm_host,
    ):
        tenant = store.tenant("bench", kv.Quota(max_keys=200_000, max_bytes=2**32))
        bucket = tenant.bucket()
        for chunk in range(0, 100_000, 1000):
            bucket.set_many({f"user:{i:08d}": b"v" * 64 for i in range(chunk, chunk + 1000)})
        bucket.set("cas", b"a")
        plugin = wasm_host.load(LOOPS, name="bench", tenant=tenant, limits=host.Limits(deadline_ms=60_000))
        request = msgpack.packb([f"user:{i:08d}" for i in range(100)])
        for export, count, per_call_ops in (
            ("get", n, 1),
            ("set", n // 4, 1),
            ("increment", n // 4, 1),
            ("compare_and_swap", n // 8, 2),
            ("list_keys", n // 40, 1),
            ("get_many", n // 40, 1),
        ):
            payload = struct.pack("<I", count) + (request if export == "get_many" else b"")
            us = per_op_us(lambda e=export, p=payload: plugin.call(e, p), count * per_call_ops)
            rows.append((f"plugin {export}" + (" of 100 keys" if export == "get_many" else ""), us, us / empty))
        per_key_us = rows[-1][1] / 100
        rows.append(("plugin get_many, per key", per_key_us, None))
        calls = per_op_us(lambda: [plugin.call("noop") for _ in range(n)], n)
    rows.append(("Python → plugin.call (noop)", calls, None))
    rows.append(("Python → raw unchecked export call", raw_call, None))
    rows.append(("Python → wasmtime-py Func.__call__ (baseline)", checked_call, None))

    print(
        f"# wasmkv host benchmark — {time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, wasmtime {importlib.metadata.version('wasmtime')}"
    )
    print()
    print("| operation | median µs/op | ratio to the empty import |")
    print("|---|---:|---:|")
    for name, us, ratio in rows:
        print(f"| {name} | {us:.3f} | {'' if ratio is None else f'{ratio:.1f}'} |")
    get_us = rows[1][1]
    print()
    print(
        f"targets: get ≤ 3 µs and ≤ 6x floor → {get_us:.2f} µs, {get_us / empty:.1f}x; "
        f"get_many ≤ 0.3 µs/key → {per_key_us:.3f}; plugin call ≤ 3 µs → {calls:.2f} µs"
    )


if __name__ == "__main__":
    main()
