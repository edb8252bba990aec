"""Benchmark of an unmodified Extism plugin: wasmkv against the Extism Python SDK, on the same module.

    .venv/bin/python bench/bench_extism.py [--rounds 21]

plugins/build/xcount.wasm (AssemblyScript with the official Extism PDK, built
by plugins/extism/build.py when it is missing) has its `echo` export called
with 64 B and 64 KiB of input on:

- wasmkv: `Host.load(...).call("echo", payload)` over an in-memory store;
- the Extism Python SDK (`extism.Plugin(wasm, wasi=False).call("echo", payload)`),
  whose runtime runs the Extism kernel as WebAssembly beside the plugin.

Both get the same PDK code, which reads its input 8 bytes per kernel call and
writes its output the same way, so the 64 KiB case measures the kernel calls
and the 64 B case mostly the fixed cost of a call. The contenders are
interleaved round by round, in a fresh order each round, so that noise falls
on both alike; each figure is the median µs per call over rounds, and the
ratio wasmkv/Extism is taken in the same run. Target: ≤ 0.5x at 64 B.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import extism

from wasmkv import host, kv

ROOT = Path(__file__).resolve().parent.parent
WASM = ROOT / "plugins" / "build" / "xcount.wasm"
#: payload name -> (bytes, calls per batch: a batch takes a few ms on either side).
PAYLOADS: dict[str, tuple[int, int]] = {"64 B": (64, 200), "64 KiB": (64 * 1024, 4)}
TARGET_64B = 0.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=21)
    args = parser.parse_args()
    if not WASM.is_file():
        subprocess.run([sys.executable, str(ROOT / "plugins" / "extism" / "build.py")], check=True)
    wasm = WASM.read_bytes()
    rng = random.Random(64)

    with (
        kv.KvStore.memory() as store,
        host.Host(store) as wasm_host,
        extism.Plugin(wasm, wasi=False) as reference,
    ):
        ours = wasm_host.load(WASM, name="xcount", tenant="bench")
        sides: dict[str, Callable[[bytes], bytes]] = {
            "wasmkv": lambda data: ours.call("echo", data),
            "Extism Python SDK": lambda data: bytes(reference.call("echo", data)),
        }
        samples: dict[tuple[str, str], list[float]] = {}
        contenders: list[tuple[str, str, bytes, int]] = []
        for payload, (size, batch) in PAYLOADS.items():
            data = rng.randbytes(size)
            for side, call in sides.items():
                assert call(data) == data, f"{side} does not echo {payload}"  # and warms both up
                samples[(payload, side)] = []
                contenders.append((payload, side, data, batch))
        for _ in range(args.rounds):
            rng.shuffle(contenders)  # interleaved, in a fresh order each round
            for payload, side, data, batch in contenders:
                call = sides[side]
                began = time.perf_counter_ns()
                for _ in range(batch):
                    call(data)
                samples[(payload, side)].append((time.perf_counter_ns() - began) / batch / 1000)

    medians = {key: statistics.median(values) for key, values in samples.items()}
    print(
        f"# wasmkv vs the Extism Python SDK, echo of an AssemblyScript PDK plugin — {time.strftime('%Y-%m-%d')}, "
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"wasmtime {importlib.metadata.version('wasmtime')}, extism {importlib.metadata.version('extism')} "
        f"(extism-sys {importlib.metadata.version('extism-sys')})"
    )
    print(f"\nmedian µs per call over {args.rounds} rounds\n")
    print("| payload | wasmkv µs/call | Extism µs/call | ratio wasmkv/Extism |")
    print("|---|---:|---:|---:|")
    ratios = {}
    for payload in PAYLOADS:
        ours_us, theirs_us = medians[(payload, "wasmkv")], medians[(payload, "Extism Python SDK")]
        ratios[payload] = ours_us / theirs_us
        print(f"| {payload} | {ours_us:.1f} | {theirs_us:.1f} | {ratios[payload]:.2f} |")
    met = "met" if ratios["64 B"] <= TARGET_64B else "not met"
    print(f"\ntarget: wasmkv ≤ {TARGET_64B}x Extism at 64 B → {ratios['64 B']:.2f}x ({met})")


if __name__ == "__main__":
    main()
