"""Benchmark of what WASI costs a plugin: one C source built freestanding and as a WASI reactor.

    .venv/bin/python bench/bench_wasi.py [--rounds 41]

One C source (written to a temporary directory) over the raw imports: `count`
opens bucket "default", increments key "n" and outputs the new value in
decimal; `nothing` returns 0 at once (the fixed cost of a call). It is built
twice with `python -m ziglang cc`:

- (a) `--target=wasm32-freestanding -nostdlib`, loaded normally;
- (b) `--target=wasm32-wasi -mexec-model=reactor` (wasi-libc linked in), loaded
  with `wasi=True`. Only this build has `count_printf`: `count` plus one
  `printf` of a line to stdout, which the host turns into an INFO line of the
  plugin's log; it also has a constructor making stdout line-buffered (run by
  `_initialize` at load), so each line is logged during its call;
- (c) the WASI module's `count_printf`. Its logger `wasmkv.plugin.<name>` is
  at level INFO with a `NullHandler` and `propagate=False`: every record is
  built and handled (the logging cost is counted), nothing is printed.

Calls: the contenders take turns round by round, in a fresh random order each
round, over an in-memory store; each figure is the median µs per call over
rounds of batched `Plugin.call`s. Loads: `Host.load` of each module
(read, check, compile, link, instantiate, and `_initialize` for the reactor),
timed alone and unloaded after, with no module cache and with a warm one,
interleaved the same way. Ratios are against (a) measured in the same run.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from wasmkv import host, kv

SOURCE = r"""
#include <stdint.h>
#ifdef __wasi__
#include <stdio.h>
#endif

#define IMPORT(module, name) __attribute__((import_module(module), import_name(name)))
IMPORT("kv", "open") int32_t kv_open(const char *name, int32_t name_len);
IMPORT("kv", "increment") int32_t kv_increment(int32_t store, const char *key, int32_t key_len, int64_t delta,
                                               int64_t *out);
IMPORT("host", "output") int32_t host_output(const void *data, int32_t len);

static int32_t bump(int64_t *n) {
    int32_t kv = kv_open("default", 7);
    if (kv < 0) return kv;
    return kv_increment(kv, "n", 1, 1, n);
}

static int32_t output_decimal(int64_t n) {
    char buf[24];
    char *end = buf + sizeof buf, *p = end;
    uint64_t u = n < 0 ? -(uint64_t)n : (uint64_t)n;
    do {
        *--p = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (n < 0) *--p = '-';
    return host_output(p, (int32_t)(end - p));
}

__attribute__((export_name("nothing"))) int32_t nothing(void) { return 0; }

__attribute__((export_name("count"))) int32_t count(void) {
    int64_t n;
    int32_t rc = bump(&n);
    if (rc < 0) return rc;
    return output_decimal(n);
}

#ifdef __wasi__
/* stdout is not a terminal, so libc would buffer it fully: each line should reach the log in its call. */
__attribute__((constructor)) static void line_buffered(void) { setvbuf(stdout, NULL, _IOLBF, 0); }

__attribute__((export_name("count_printf"))) int32_t count_printf(void) {
    int64_t n;
    int32_t rc = bump(&n);
    if (rc < 0) return rc;
    printf("n=%lld\n", (long long)n);
    return output_decimal(n);
}
#endif
"""

ZIG = [sys.executable, "-m", "ziglang", "cc"]
FREESTANDING = ["--target=wasm32-freestanding", "-nostdlib", "-Oz", "-Wl,--no-entry"]
WASI = ["--target=wasm32-wasi", "-mexec-model=reactor", "-Oz"]
LINK = ["-Wall", "-Wextra", "-Werror", "-Wl,--export-dynamic", "-Wl,--strip-all"]
FREE_NAME, WASI_NAME = "free", "wasi"
#: Calls per batch (a batch takes a few ms); loads per batch, with no cache and with a warm one.
BATCH = 200
LOAD_BATCH = {"no cache": 3, "warm cache": 10}
LOAD_ROUNDS = 15


def build(root: Path, name: str, flags: list[str]) -> Path:
    """Compile the source in `root` with `flags`; the module's path."""
    out = root / f"{name}.wasm"
    result = subprocess.run(
        [*ZIG, *flags, *LINK, "-o", str(out), str(root / "bench.c")],
        check=False,
        capture_output=True,
        text=True,
        cwd=root,
    )
    if result.returncode != 0:
        sys.exit(f"building {name} failed:\n{result.stdout}{result.stderr}")
    return out


def quiet_logger(name: str) -> logging.Logger:
    """The plugin's logger at INFO, handled by a NullHandler only: records are made, nothing is printed."""
    logger = logging.getLogger(f"wasmkv.plugin.{name}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logger.addHandler(logging.NullHandler())
    return logger


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=41)
    args = parser.parse_args()
    rng = random.Random(32)

    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        root = Path(tmp)
        (root / "bench.c").write_text(SOURCE)
        modules = {FREE_NAME: build(root, FREE_NAME, FREESTANDING), WASI_NAME: build(root, WASI_NAME, WASI)}
        sizes = {name: path.stat().st_size for name, path in modules.items()}
        wasi_logger = quiet_logger(WASI_NAME)
        quiet_logger(FREE_NAME)  # the same for both, though only (c) logs

        with kv.KvStore.memory() as store, host.Host(store) as wasm_host, host.Host(store) as cached_host:
            # A private cache key in the temporary directory rather than the user's (~/.cache/wasmkv/key).
            cached_host.cache = cached_host.sandbox.cache = host.ModuleCache(root / "cache", key_path=root / "key")
            free = wasm_host.load(modules[FREE_NAME], name=FREE_NAME, tenant="bench-free")
            wasi = wasm_host.load(modules[WASI_NAME], name=WASI_NAME, tenant="bench-wasi", wasi=True)
            assert "count_printf" not in free.exports and "count_printf" in wasi.exports

            # Each works (and is warmed up): the counts, and (c)'s line reaching the logger.
            lines = _Lines()
            wasi_logger.addHandler(lines)
            assert free.call("count") == b"1" and free.call("nothing") == b""
            assert wasi.call("count") == b"1" and wasi.call("count_printf") == b"2"
            wasi_logger.removeHandler(lines)
            assert lines.lines == ["n=2"], lines.lines

            calls: dict[str, Callable[[], bytes]] = {
                "(a) freestanding, count": lambda: free.call("count"),
                "(b) WASI reactor, count": lambda: wasi.call("count"),
                "(c) WASI reactor, count_printf (one printf → log line)": lambda: wasi.call("count_printf"),
                "(a) freestanding, nothing": lambda: free.call("nothing"),
                "(b) WASI reactor, nothing": lambda: wasi.call("nothing"),
            }
            call_samples: dict[str, list[float]] = {name: [] for name in calls}
            order = list(calls.items())
            for _ in range(args.rounds):
                rng.shuffle(order)  # interleaved, in a fresh order each round
                for name, call in order:
                    began = time.perf_counter_ns()
                    for _ in range(BATCH):
                        call()
                    call_samples[name].append((time.perf_counter_ns() - began) / BATCH / 1000)
            free_count, wasi_count = int(free.call("count")), int(wasi.call("count"))
            assert free_count == args.rounds * BATCH + 2, free_count
            assert wasi_count == 2 * args.rounds * BATCH + 3, wasi_count

            def loader(target: host.Host, module: str) -> Callable[[], None]:
                name, wasi_flag = f"load-{module}", module == WASI_NAME

                def load() -> None:
                    target.load(modules[module], name=name, tenant=f"bench-{module}", wasi=wasi_flag)

                return load

            hosts = {"no cache": wasm_host, "warm cache": cached_host}
            loads = {(module, cache): loader(hosts[cache], module) for module in modules for cache in hosts}
            for load in loads.values():
                load()  # fills the cache
            assert cached_host.cache is not None and cached_host.cache.misses == len(modules)
            load_samples: dict[tuple[str, str], list[float]] = {key: [] for key in loads}
            load_order = list(loads.items())
            for _ in range(LOAD_ROUNDS):
                rng.shuffle(load_order)
                for (module, cache), load in load_order:
                    batch = LOAD_BATCH[cache]
                    total = 0
                    for _ in range(batch):
                        began = time.perf_counter_ns()
                        load()
                        total += time.perf_counter_ns() - began
                        hosts[cache].unload(f"load-{module}")  # closing it is not the load's time
                    load_samples[(module, cache)].append(total / batch / 1e6)
            assert cached_host.cache.misses == len(modules), "a warm load compiled"

    us = {name: statistics.median(values) for name, values in call_samples.items()}
    ms = {key: statistics.median(values) for key, values in load_samples.items()}
    print(
        f"# what WASI costs a plugin — {time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, wasmtime {importlib.metadata.version('wasmtime')}, "
        f"ziglang {importlib.metadata.version('ziglang')}"
    )
    print(
        f"\nmodules: (a) {sizes[FREE_NAME]:,} B freestanding; (b) {sizes[WASI_NAME]:,} B WASI reactor "
        "(wasi-libc and stdio linked in; (c) is its count_printf export)"
    )
    print(
        f"(c) logs one INFO line per call to wasmkv.plugin.{WASI_NAME}: level INFO, a NullHandler, "
        "propagate=False (logging cost counted, nothing printed)"
    )
    print(f"\nmedian µs per call over {args.rounds} rounds of {BATCH}, in-memory store\n")
    print("| contender | median µs/call | ratio to (a) |")
    print("|---|---:|---:|")
    for name, value in us.items():
        base = us["(a) freestanding, nothing" if name.endswith("nothing") else "(a) freestanding, count"]
        print(f"| {name} | {value:.2f} | {value / base:.2f} |")
    print(
        f"\nmedian ms per Host.load over {LOAD_ROUNDS} rounds (batches of {LOAD_BATCH['no cache']} without a "
        f"cache, {LOAD_BATCH['warm cache']} with a warm one); includes instantiation and, for (b), _initialize\n"
    )
    print("| module | ms/load, no cache (compiles) | ratio to (a) | ms/load, warm cache | ratio to (a) |")
    print("|---|---:|---:|---:|---:|")
    labels = {FREE_NAME: "(a) freestanding", WASI_NAME: "(b) WASI reactor, wasi=True"}
    for module, label in labels.items():
        cold, warm = ms[(module, "no cache")], ms[(module, "warm cache")]
        cold_ratio, warm_ratio = cold / ms[(FREE_NAME, "no cache")], warm / ms[(FREE_NAME, "warm cache")]
        print(f"| {label} | {cold:.2f} | {cold_ratio:.2f} | {warm:.2f} | {warm_ratio:.2f} |")


if __name__ == "__main__":
    main()
