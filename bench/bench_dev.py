"""Benchmark of the dev loop: reload latency, and host start from a warm module cache.

    .venv/bin/python bench/bench_dev.py

Reload latency is from the moment a new ~100 KB module lands on disk (atomic
rename, as build tools do) to the first call answered by it, through the real
watcher (watchfiles, the configured 50 ms debounce included). Host start is
`Host.from_config` with N distinct plugins whose compiled forms are cached,
next to compiling one of them from scratch, measured in the same run.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import statistics
import tempfile
import textwrap
import time
from pathlib import Path

import wasmtime

from wasmkv import host
from wasmkv.host._sandbox import Sandbox

FUNCTIONS = 4500


def module(version: int, functions: int = FUNCTIONS) -> bytes:
    """A module of many small functions (4500: ~100 KB), and an entry point that answers its version."""
    body = "\n".join(
        f"(func $f{i} (param i32) (result i32) (i32.add (i32.mul (local.get 0) (i32.const {i + version}))"
        f" (i32.xor (local.get 0) (i32.const {i * 7}))))"
        for i in range(functions)
    )
    calls = "".join(f"(drop (call $f{i} (i32.const 1)))" for i in range(0, functions, 300))
    text = textwrap.dedent(
        f"""
        (module
          (import "host" "output" (func $out (param i32 i32) (result i32)))
          (memory (export "memory") 1)
          (data (i32.const 0) "{version:06d}")
          {body}
          (func (export "version") (result i32) {calls} (drop (call $out (i32.const 0) (i32.const 6))) (i32.const 0)))
        """
    )
    return bytes(wasmtime.wat2wasm(text))


def write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def reload_latency_ms(root: Path, rounds: int, compiler: str, functions: int = FUNCTIONS) -> tuple[list[float], int]:
    (root / "p.wasm").write_bytes(module(0, functions))
    (root / "wasmkv.toml").write_text(
        f'[dev]\ndebounce_ms = 50\ncompiler = "{compiler}"\n[tenants.t]\n[plugins.p]\nfile = "p.wasm"\ntenant = "t"\n'
    )
    config = host.load_config(root / "wasmkv.toml")
    samples: list[float] = []
    # As `wasmkv dev` opens it: with the [dev] compiler.
    with host.Host.from_loaded_config(config, compiler=config.dev.compiler) as wasm_host:
        loop = host.DevLoop(wasm_host, config, on_event=lambda event: None)
        loop.start()
        plugin = wasm_host.plugin("p")
        try:
            for version in range(1, rounds + 1):
                wasm = module(version, functions)
                want = b"%06d" % version
                started = time.perf_counter()
                write_atomically(root / "p.wasm", wasm)
                while plugin.call("version") != want:  # a caller polling, as a person's requests would
                    time.sleep(0.001)
                samples.append((time.perf_counter() - started) * 1000)
        finally:
            loop.stop()
    return samples, len(module(0, functions))


def warm_start_ms(root: Path, count: int) -> tuple[float, float, float]:
    lines = ["[tenants.t]"]
    for i in range(count):
        (root / f"p{i}.wasm").write_bytes(module(1000 + i))
        lines.append(f'[plugins.p{i}]\nfile = "p{i}.wasm"\ntenant = "t"')
    (root / "wasmkv.toml").write_text("\n".join(lines) + "\n")
    started = time.perf_counter()
    with host.Host.from_config(root / "wasmkv.toml"):
        pass
    cold = (time.perf_counter() - started) * 1000
    warm = []
    for _ in range(5):
        started = time.perf_counter()
        with host.Host.from_config(root / "wasmkv.toml") as wasm_host:
            assert wasm_host.cache is not None and wasm_host.cache.misses == 0
        warm.append((time.perf_counter() - started) * 1000)
    # The baseline compiles on the host's own engine (epoch interruption, its proposals, opt level), as the
    # cold start does: wasmtime.Engine()'s defaults compile about twice as fast and would flatter the ratio.
    sandbox = Sandbox(compiler="cranelift")
    try:
        engine = sandbox.engine()
        wasm = module(5)
        compile_samples = []
        for _ in range(5):
            started = time.perf_counter()
            wasmtime.Module(engine, wasm)
            compile_samples.append((time.perf_counter() - started) * 1000)
    finally:
        sandbox.close()
    return cold / count, statistics.median(warm) / count, statistics.median(compile_samples)


def main() -> None:
    rounds, plugins = 15, 20
    reloads: dict[tuple[str, int], tuple[list[float], int]] = {}
    for functions, times in ((FUNCTIONS, rounds), (FUNCTIONS * 10, 5)):
        for compiler in ("cranelift", "winch"):
            with tempfile.TemporaryDirectory() as root:
                reloads[compiler, functions] = reload_latency_ms(Path(root), times, compiler, functions)
    with tempfile.TemporaryDirectory() as second:
        cold, warm, compile_ms = warm_start_ms(Path(second), plugins)
    print(
        f"# wasmkv dev-loop benchmark — {time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, wasmtime {importlib.metadata.version('wasmtime')}"
    )
    print()
    print("| measurement | median | notes |")
    print("|---|---:|---|")
    for (compiler, _), (samples, size) in reloads.items():
        print(
            f"| reload with {compiler}: file written → new version answering | {statistics.median(samples):.0f} ms | "
            f"{size // 1024} KB module, 50 ms debounce, {len(samples)} reloads, "
            f"min {min(samples):.0f} / max {max(samples):.0f} ms |"
        )
    print(
        f"| compile of one such module, no cache (baseline) | {compile_ms:.1f} ms | "
        "`wasmtime.Module(engine, wasm)` on the host's Cranelift engine |"
    )
    print(f"| host start, cold cache, per plugin | {cold:.1f} ms | {plugins} plugins: compile + store + instantiate |")
    print(
        f"| host start, warm cache, per plugin | {warm:.2f} ms | {plugins} plugins; ratio to a compile: "
        f"{warm / compile_ms:.3f} |"
    )
    print()
    winch_1mb = statistics.median(reloads["winch", FUNCTIONS * 10][0])
    print(f"targets: reload of a 1 MB module ≤ 250 ms → {winch_1mb:.0f} ms (winch, as dev uses); ", end="")
    print(f"warm start ≤ 5 ms/plugin → {warm:.2f} ms")


if __name__ == "__main__":
    main()
