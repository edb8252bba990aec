"""Shared by the `wasmkv serve` tests (no tests here): a WAT plugin with one export per outcome, tokens, a config."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COUNTER = ROOT / "plugins" / "build" / "counter.wasm"

#: Bearer tokens of the test configs: one per tenant, and one for every tenant.
ACME_TOKEN = "acme-token-0123456789"
BETA_TOKEN = "beta-token-0123456789"
ADMIN_TOKEN = "admin-token-0123456789"


def sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def tools(answer: str = "v1") -> str:
    """A plugin with one export per way a call can end.

    `echo` answers its input; `version` answers `answer`; `quota`, `limited`, `down` and `mine`
    return -4, -10, -11 and the plugin's own status 7 (with an output); `boom` traps; `spin`
    loops until its deadline or fuel ends it; `wait` counts itself in key `started`, then waits
    (calling `exists`) until key `go` exists, so a test holds calls in flight without sleeping.
    """
    assert len(answer) <= 32
    return textwrap.dedent(
        f"""
        (module
          (import "kv" "open" (func $open (param i32 i32) (result i32)))
          (import "kv" "exists" (func $exists (param i32 i32 i32) (result i32)))
          (import "kv" "increment" (func $incr (param i32 i32 i32 i64 i32) (result i32)))
          (import "host" "input" (func $input (param i32 i32) (result i32)))
          (import "host" "output" (func $out (param i32 i32) (result i32)))
          (memory (export "memory") 2)
          (data (i32.const 0) "default")
          (data (i32.const 16) "go")
          (data (i32.const 32) "started")
          (data (i32.const 64) "plugin says no")
          (data (i32.const 96) "{answer}")
          (func (export "echo") (result i32) (local $n i32)
            (local.set $n (call $input (i32.const 1024) (i32.const 64512)))
            (drop (call $out (i32.const 1024) (local.get $n)))
            (i32.const 0))
          (func (export "version") (result i32)
            (drop (call $out (i32.const 96) (i32.const {len(answer)})))
            (i32.const 0))
          (func (export "quota") (result i32) (i32.const -4))
          (func (export "limited") (result i32) (i32.const -10))
          (func (export "down") (result i32) (i32.const -11))
          (func (export "mine") (result i32)
            (drop (call $out (i32.const 64) (i32.const 14)))
            (i32.const 7))
          (func (export "boom") (result i32) unreachable)
          (func (export "spin") (result i32) (loop $l (br $l)) (i32.const 0))
          (func (export "wait") (result i32) (local $kv i32)
            (local.set $kv (call $open (i32.const 0) (i32.const 7)))
            (drop (call $incr (local.get $kv) (i32.const 32) (i32.const 7) (i64.const 1) (i32.const 128)))
            (block $done
              (loop $again
                (br_if $done (i32.eq (call $exists (local.get $kv) (i32.const 16) (i32.const 2)) (i32.const 1)))
                (br $again)))
            (drop (call $out (i32.const 96) (i32.const {len(answer)})))
            (i32.const 0)))
        """
    )


def config_text(extra: str = "", *, serve: str = "", acme: str = "max_keys = 100", beta: str = "") -> str:
    """A wasmkv.toml over `tools.wat` (in its directory) and the sample counter."""
    return textwrap.dedent(
        f"""
        [store]
        path = "state"

        [tenants.acme]
        {acme}

        [tenants.beta]
        {beta}

        [serve]
        max_body_bytes = 4096
        {serve}

        [[serve.tokens]]
        sha256 = "{sha256(ACME_TOKEN)}"
        tenants = ["acme"]

        [[serve.tokens]]
        sha256 = "{sha256(BETA_TOKEN)}"
        tenants = ["beta"]

        [[serve.tokens]]
        sha256 = "{sha256(ADMIN_TOKEN)}"
        tenants = ["*"]

        [plugins.tools]
        file = "tools.wat"
        tenant = "acme"
        deadline_ms = 20000

        [plugins.fast]
        file = "tools.wat"
        tenant = "acme"
        deadline_ms = 150

        [plugins.metered]
        file = "tools.wat"
        tenant = "acme"
        fuel = 100000

        [plugins.beta-tools]
        file = "tools.wat"
        tenant = "beta"
        deadline_ms = 20000

        [plugins.counter]
        file = "{COUNTER}"
        tenant = "acme"
        {extra}
        """
    )


def write_project(
    root: Path, extra: str = "", *, serve: str = "", acme: str = "max_keys = 100", beta: str = ""
) -> Path:
    """`tools.wat` and `wasmkv.toml` in `root`; the config's path."""
    (root / "tools.wat").write_text(tools())
    config = root / "wasmkv.toml"
    config.write_text(config_text(extra, serve=serve, acme=acme, beta=beta))
    return config


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class Connection:
    """A minimal HTTP/1.1 keep-alive client on asyncio streams, for load.

    httpx's async pool falls to ~100-700 requests/s at 50 connections (against a trivial
    uvicorn app that serves 20k+/s to this one), so it would measure itself, not the server.
    Answers carry Content-Length (the server always sends it); a `connection: close`
    answer reconnects before the next request.
    """

    def __init__(self, host: str, port: int, headers: dict[str, str]) -> None:
        self.host = host
        self.port = port
        self.head = "".join(f"{name}: {value}\r\n" for name, value in headers.items()).encode()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Length: {len(body)}\r\n".encode()
            + self.head
            + b"\r\n"
            + body
        )
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length, close = 0, False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and b"close" in value.lower():
                close = True
        answer = await self.reader.readexactly(length)
        if close:
            await self.close()
        return status, answer

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
        self.reader = self.writer = None


WASMKV = str(Path(sys.executable).parent / "wasmkv")
#: Generous: these must pass with the other core busy.
DEADLINE_S = 60.0


def wait_until(what: str, check: Callable[[], bool], deadline_s: float = DEADLINE_S) -> None:
    """Poll `check` until it holds (an event seen, not a guess at how long it takes)."""
    deadline = time.monotonic() + deadline_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)
