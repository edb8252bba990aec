"""Shared fixtures: the stores every contract test runs against, and a fake clock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import _servers
import pytest

from wasmkv import host, kv

StoreFactory = Callable[..., kv.KvStore]


def run_python(code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run `code` (dedented) in a fresh interpreter with `args`; its outcome, output captured."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def open_refusal(state: Path, writemap: str) -> str:
    """What `KvStore.open(state, writemap=...)` refuses with, in a fresh interpreter (a hang fails the test)."""
    code = f"""
        import sys
        from wasmkv import kv
        try:
            kv.KvStore.open(sys.argv[1], writemap={writemap}, sweep_interval_s=None)
        except kv.BackendUnavailable as exc:
            print(exc)
    """
    done = run_python(code, str(state), timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def start_python(code: str, *args: str) -> subprocess.Popen[str]:
    """Start `code` (dedented) in a fresh interpreter with `args`, its stdin and stdout piped (text) to the test."""
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert child.stdin is not None and child.stdout is not None
    return child


def run_and_kill(writer: str, path: Path, start: int, acks_wanted: int) -> int:
    """Start `writer` (code printing each acknowledged round's number) on `path` from round `start`, kill -9
    it after `acks_wanted` acknowledged rounds; the last acknowledged round."""
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(writer), str(path), str(start)], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    last = start - 1
    for line in child.stdout:
        last = int(line)
        if last - start + 1 >= acks_wanted:
            break
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    child.stdout.close()
    return last


class FakeClock:
    """A settable clock in epoch seconds, as `time.time` returns; `tick(ms)` moves it on."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def tick(self, ms: float) -> None:
        self.now += ms / 1000


class TtlClock:
    """Drives TTLs in contract tests: a fake clock where the store takes one, real time otherwise."""

    def __init__(self, fake: FakeClock | None) -> None:
        self.fake = fake

    def advance(self, ms: int) -> None:
        if self.fake is not None:
            self.fake.tick(ms)
        else:
            # A real server expires keys on its own clock; wait past the deadline with a margin.
            time.sleep(ms / 1000 + 0.05)


def _lmdb(tmp_path: Path, clock: FakeClock) -> kv.KvStore:
    return kv.KvStore.open(tmp_path / "state", clock=clock, sweep_interval_s=None)


def _unique_prefix() -> str:
    # Each test gets its own key space on the shared servers, so nothing needs flushing between tests.
    return f"t{uuid.uuid4().hex[:16]}"


def _redis(tmp_path: Path, clock: FakeClock) -> kv.KvStore:
    return kv.KvStore.from_url(_servers.single().url, key_prefix=_unique_prefix(), sweep_interval_s=None)


def _redis_cluster(tmp_path: Path, clock: FakeClock) -> kv.KvStore:
    return kv.KvStore.from_url(_servers.cluster().url, key_prefix=_unique_prefix(), sweep_interval_s=None)


def _redis_cached(tmp_path: Path, clock: FakeClock) -> kv.KvStore:
    url = _servers.single().url
    return kv.KvStore.from_url(url, key_prefix=_unique_prefix(), read_cache_size=1000, sweep_interval_s=None)


#: Every engine the contract runs on: name -> (a store over it, whether the engine honours an injected clock).
ENGINES: dict[str, tuple[Callable[[Path, FakeClock], kv.KvStore], bool]] = {
    "lmdb": (_lmdb, True),
    "redis": (_redis, False),
    "redis-cluster": (_redis_cluster, False),
    "redis-cached": (_redis_cached, False),
}


@pytest.fixture(scope="session", autouse=True)
def _private_cache_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The module cache's per-user key goes to a scratch XDG_CACHE_HOME, for this process and its children."""
    saved = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))
    yield
    if saved is None:
        del os.environ["XDG_CACHE_HOME"]
    else:
        os.environ["XDG_CACHE_HOME"] = saved


@pytest.fixture(scope="session", autouse=True)
def _redis_servers() -> Iterator[None]:
    """Stop, by PID, the Redis servers the session started on demand (none if no test asked for one)."""
    yield
    _servers.stop_all()


ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def built() -> Path:
    """The sample plugins, built once per session by plugins/build.py (zig from the ziglang package)."""
    subprocess.run([sys.executable, str(ROOT / "plugins" / "build.py")], check=True, capture_output=True)
    build = ROOT / "plugins" / "build"
    for name in ("counter", "session", "ratelimit", "leaderboard"):
        assert (build / f"{name}.wasm").stat().st_size > 0
    return build


@pytest.fixture
def kvstore() -> Iterator[kv.KvStore]:
    """A fresh in-memory store, for host tests that need one store and no parametrizing."""
    with kv.KvStore.memory() as opened:
        yield opened


@pytest.fixture
def wasm_host(kvstore: kv.KvStore) -> Iterator[host.Host]:
    """A host over `kvstore`."""
    with host.Host(kvstore) as opened:
        yield opened


@pytest.fixture(params=sorted(ENGINES))
def engine_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def ttl_clock(engine_kind: str, clock: FakeClock) -> TtlClock:
    return TtlClock(clock if ENGINES[engine_kind][1] else None)


@pytest.fixture
def store(engine_kind: str, tmp_path: Path, clock: FakeClock) -> Iterator[kv.KvStore]:
    """The front layer over each engine in turn."""
    factory, _ = ENGINES[engine_kind]
    with factory(tmp_path, clock) as opened:
        yield opened


@pytest.fixture
def engine(store: kv.KvStore) -> kv.Store:
    """Each engine in turn, driven through the `kv.Store` protocol."""
    return store.engine


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, and a certificate for 127.0.0.1 and tls.wasmkv.test signed by it (`_servers.make_tls_files`)."""
    return _servers.make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_server(tls_files: Path) -> Iterator[_servers.RedisServer]:
    """A Redis server speaking only TLS, with `tls_files`' certificate."""
    server = _servers.RedisServer(tls=tls_files).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fake() -> Iterator[Callable[[Callable[[list[bytes], int], bytes | None]], Any]]:
    """Starts fake Redis servers (`test_redis_sync_attacks.FakeRedis`) that answer as the test says; closed after."""
    from test_redis_sync_attacks import FakeRedis  # noqa: PLC0415  # a test module's: imported only where used

    servers: list[FakeRedis] = []

    def start(answer: Callable[[list[bytes], int], bytes | None]) -> FakeRedis:
        servers.append(FakeRedis(answer))
        return servers[-1]

    yield start
    for server in servers:
        server.close()
