"""Benchmark of `wasmkv serve`: a KV-increment plugin over HTTP, against a plain Starlette endpoint doing the same.

    .venv/bin/python bench/bench_serve.py [--seconds 3] [--rounds 5] [--connections 32]

Four servers run at once on one embedded store (one LMDB directory): `wasmkv serve` with
1 and 2 workers calling the sample counter's `hit` (one `increment` through the plugin ABI),
and a Starlette endpoint under uvicorn with 1 and 2 workers calling `Bucket.increment` of
the same tenant from a thread (`run_in_threadpool`, as a real app keeps blocking writes off
its event loop). Both use uvicorn with httptools and uvloop and no access log; wasmkv also
checks a bearer token (sha256 and a constant-time compare) on every call.

One client for all (a small asyncio HTTP/1.1 keep-alive client, N connections: httpx's
async pool tops out at a few hundred requests/s at 32 connections and would measure
itself), each connection incrementing its own key. Rounds interleave the servers; figures
are medians over rounds, latencies are per request. Target: wasmkv >= 0.7x Starlette's
throughput at the same number of workers. The client shares the machine with the servers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
COUNTER = ROOT / "plugins" / "build" / "counter.wasm"
TOKEN = "bench-token"
PATH = "/v1/plugins/counter/hit"
TARGET = 0.7
STARTUP_S = 60.0


# -- the Starlette contender (imported by uvicorn in its own processes) ----------------------------------


def starlette_app() -> Any:
    """A Starlette app incrementing `bench`'s counters in the store `$WASMKV_BENCH_STATE` (a uvicorn factory)."""
    from starlette.applications import Starlette  # noqa: PLC0415 - only the contender's processes need it
    from starlette.concurrency import run_in_threadpool  # noqa: PLC0415
    from starlette.requests import Request  # noqa: PLC0415
    from starlette.responses import Response  # noqa: PLC0415
    from starlette.routing import Route  # noqa: PLC0415

    from wasmkv import kv  # noqa: PLC0415

    store = kv.KvStore.open(os.environ["WASMKV_BENCH_STATE"])
    bucket = store.tenant("bench").bucket()

    async def hit(request: Request) -> Response:
        key = await request.body() or b"hits"
        value = await run_in_threadpool(bucket.increment, key)
        return Response(str(value).encode(), media_type="application/octet-stream")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        store.close()

    return Starlette(routes=[Route(PATH, hit, methods=["POST"])], lifespan=lifespan)


# -- servers ---------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _config(directory: Path) -> Path:
    config = directory / "wasmkv.toml"
    digest = hashlib.sha256(TOKEN.encode()).hexdigest()
    config.write_text(
        f"""
[store]
path = "state"

[tenants.bench]
max_keys = 1000000

[[serve.tokens]]
sha256 = "{digest}"
tenants = ["bench"]

[plugins.counter]
file = "{COUNTER}"
tenant = "bench"
pool_size = 4
"""
    )
    return config


@contextlib.contextmanager
def wasmkv_serve(config: Path, workers: int) -> Iterator[int]:
    """`wasmkv serve` on a free port; its port."""
    wasmkv = Path(sys.executable).parent / "wasmkv"
    args = [str(wasmkv), "-q", "serve", "--config", str(config), "--listen", "127.0.0.1:0", "--workers", str(workers)]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, cwd=config.parent)
    try:
        assert process.stdout is not None
        match = re.search(r"http://127\.0\.0\.1:(\d+)", process.stdout.readline())
        assert match, "wasmkv serve did not start"
        yield int(match.group(1))
    finally:
        process.terminate()
        process.wait(STARTUP_S)
        if process.stdout is not None:
            process.stdout.close()


@contextlib.contextmanager
def starlette_serve(state: Path, workers: int) -> Iterator[int]:
    """The Starlette contender under uvicorn on a free port; its port."""
    port = _free_port()
    args = [
        sys.executable,
        "-m",
        "uvicorn",
        "bench_serve:starlette_app",
        "--factory",
        "--app-dir",
        str(Path(__file__).parent),
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--no-access-log",
        "--log-level",
        "warning",
    ]
    env = {**os.environ, "WASMKV_BENCH_STATE": str(state)}
    process = subprocess.Popen(args, env=env)
    try:
        yield port
    finally:
        process.terminate()
        process.wait(STARTUP_S)


# -- the client ------------------------------------------------------------------------------------------


class Connection:
    """One HTTP/1.1 keep-alive connection on asyncio streams (answers carry Content-Length)."""

    def __init__(self, port: int, key: bytes) -> None:
        self.port = port
        self.request = (
            f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Length: {len(key)}\r\n\r\n"
        ).encode() + key
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        self.writer.write(self.request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        length = next(int(line.split(b":")[1]) for line in lines if line.lower().startswith(b"content-length:"))
        await self.reader.readexactly(length)
        return int(lines[0].split(b" ", 2)[1])

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()


async def _ready(port: int) -> None:
    deadline = time.monotonic() + STARTUP_S
    while True:
        connection = Connection(port, b"warm")
        try:
            if await connection.post() == 200:
                return
        except OSError:
            pass
        finally:
            await connection.close()
        if time.monotonic() > deadline:
            raise RuntimeError(f"no server answered on port {port}")
        await asyncio.sleep(0.1)


async def load(port: int, connections: int, seconds: float, tag: str) -> tuple[float, list[float]]:
    """Requests per second and each request's latency, with `connections` clients for `seconds`."""
    latencies: list[float] = []
    failures = 0
    until = time.monotonic() + seconds

    async def client(index: int) -> None:
        nonlocal failures
        connection = Connection(port, f"{tag}{index}".encode())
        try:
            while time.monotonic() < until:
                started = time.perf_counter()
                if await connection.post() != 200:
                    failures += 1
                latencies.append(time.perf_counter() - started)
        finally:
            await connection.close()

    began = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(connections)))
    elapsed = time.perf_counter() - began
    if failures:
        raise RuntimeError(f"{failures} requests failed")
    return len(latencies) / elapsed, latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="each server's share of a round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    if not COUNTER.exists():
        sys.exit(f"{COUNTER} is missing: run `make plugins` first")
    with tempfile.TemporaryDirectory(prefix="wasmkv-bench-serve-") as scratch:
        config = _config(Path(scratch))
        state = Path(scratch) / "state"
        with contextlib.ExitStack() as stack:
            servers: dict[str, int] = {}
            # wasmkv first: it creates the store and the tenant's record the Starlette app then opens.
            for workers in (1, 2):
                servers[f"wasmkv serve, {workers} worker{'s' * (workers > 1)}"] = stack.enter_context(
                    wasmkv_serve(config, workers)
                )
            for workers in (1, 2):
                servers[f"Starlette, {workers} worker{'s' * (workers > 1)}"] = stack.enter_context(
                    starlette_serve(state, workers)
                )
            throughput: dict[str, list[float]] = {name: [] for name in servers}
            latencies: dict[str, list[float]] = {name: [] for name in servers}

            async def run() -> None:
                for port in servers.values():
                    await _ready(port)
                    await load(port, args.connections, 0.5, "warm")
                for round_ in range(args.rounds):
                    names = list(servers) if round_ % 2 == 0 else list(reversed(servers))
                    for name in names:
                        rate, each = await load(servers[name], args.connections, args.seconds, f"r{round_}-")
                        throughput[name].append(rate)
                        latencies[name].extend(each)

            asyncio.run(run())
    print(
        f"bench_serve: counter `hit` over HTTP, {args.connections} connections, {args.rounds} rounds of "
        f"{args.seconds:g} s each, {os.cpu_count()} CPUs (client included)\n"
    )
    print("| server | requests/s (median) | p50 ms | p99 ms |")
    print("|---|---:|---:|---:|")
    for name in servers:
        cuts = statistics.quantiles(latencies[name], n=100)
        rate = statistics.median(throughput[name])
        print(f"| {name} | {rate:,.0f} | {cuts[49] * 1000:.2f} | {cuts[98] * 1000:.2f} |")
    print()
    for count in ("1 worker", "2 workers"):
        ours = statistics.median(throughput[f"wasmkv serve, {count}"])
        theirs = statistics.median(throughput[f"Starlette, {count}"])
        ratio = ours / theirs
        verdict = "met" if ratio >= TARGET else "NOT met"
        print(f"{count}: wasmkv serve / Starlette = {ratio:.2f}x (target >= {TARGET}x: {verdict})")


if __name__ == "__main__":
    main()
