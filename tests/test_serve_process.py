"""`wasmkv serve` as a real process on a loopback port: signals, workers, the wire, and a bounded load test.

Each server is started with `--listen 127.0.0.1:0` and tells its address on its first line;
tests wait for events (that line, /readyz, a key a plugin wrote, a refused connection), never
for a guessed time, and stop servers by PID.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import queue
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_serve_helpers import (
    ACME_TOKEN,
    ADMIN_TOKEN,
    DEADLINE_S,
    WASMKV,
    Connection,
    auth,
    config_text,
    tools,
    wait_until,
    write_project,
)

import wasmkv.serve
from wasmkv import kv
from wasmkv.host import _serve, _serve_http, _serve_run


class Server:
    """A `wasmkv serve` process: its address read from the line it prints, its stderr kept, stopped by PID."""

    def __init__(self, config: Path, *args: str) -> None:
        self.proc = subprocess.Popen(
            [WASMKV, "serve", "--config", str(config), "--listen", "127.0.0.1:0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=config.parent,
        )
        self._stdout: queue.Queue[str] = queue.Queue()
        self.stderr: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self._stdout.put), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.stderr.append), daemon=True),
        ]
        for reader in self._readers:
            reader.start()
        try:
            line = self._stdout.get(timeout=DEADLINE_S)
        except queue.Empty:
            self.kill()
            raise AssertionError(f"wasmkv serve printed no address; stderr: {self.stderr}") from None
        match = re.match(r"serving (http://\S+) with \d+ workers? \(pids? ([\d, ]+)\)", line)
        assert match, (line, self.stderr)
        self.url = match.group(1)
        self.pids = [int(pid) for pid in match.group(2).split(", ")]
        self.port = int(self.url.rsplit(":", 1)[1])
        wait_until("/readyz", self._ready)

    @staticmethod
    def _read(stream: Any, put: Callable[[str], None]) -> None:
        for line in stream:
            put(line.rstrip("\n"))

    def _ready(self) -> bool:
        assert self.proc.poll() is None, self.stderr
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200
        return False

    def json_logs(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in list(self.stderr)]

    def served_pids(self) -> set[int]:
        return {entry["pid"] for entry in self.json_logs() if entry.get("logger") == "wasmkv.serve.access"}

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self) -> int:
        """SIGTERM, then the exit status (it drains first)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self._finish()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self._finish()

    def _finish(self) -> int:
        status = self.proc.wait(timeout=DEADLINE_S)
        for reader in self._readers:
            reader.join(DEADLINE_S)  # the pipes end with the process (and its workers)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        return status


@contextlib.contextmanager
def serve(config: Path, *args: str) -> Iterator[Server]:
    server = Server(config, *args)
    try:
        yield server
    finally:
        server.kill()


def refuses_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def open_store(root: Path) -> kv.KvStore:
    """The server's embedded store, opened from this process too (LMDB is multi-process)."""
    return kv.KvStore.open(root / "state", sweep_interval_s=None)


def metric(text: str, line_start: str) -> float:
    """The value of the one sample whose line starts with `line_start` (0 if absent)."""
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_start)]
    assert len(values) <= 1, values
    return values[0] if values else 0.0


# -- signals ---------------------------------------------------------------------------------------------


def test_sigterm_drains_a_call_in_flight_then_exits_0(tmp_path: Path) -> None:
    config = write_project(tmp_path)
    with serve(config) as server, open_store(tmp_path) as store:
        tenant = httpx.get(f"{server.url}/v1/tenants/beta", headers=auth(ADMIN_TOKEN))
        assert (tenant.status_code, tenant.json()["name"]) == (200, "beta")
        huge = f"Authorization: Bearer {ACME_TOKEN}", f"Content-Length: {400 << 20}"
        assert status_of(exchange(server.port, request_head("/v1/plugins/tools/echo", *huge) + b"tiny")) == 413
        bucket = store.tenant("acme").bucket()
        answer: list[httpx.Response] = []
        request = threading.Thread(
            target=lambda: answer.append(
                httpx.post(f"{server.url}/v1/plugins/tools/wait", headers=auth(ACME_TOKEN), timeout=DEADLINE_S)
            )
        )
        request.start()
        wait_until("the call to be running", lambda: bucket.get("started") == b"1")
        server.signal(signal.SIGTERM)
        wait_until("the listener to close", lambda: refuses_connections(server.port))
        assert server.proc.poll() is None  # still draining the call
        bucket.set("go", b"1")
        request.join(DEADLINE_S)
        assert answer[0].status_code == 200
        assert answer[0].content == b"v1"
        assert server.proc.wait(timeout=DEADLINE_S) == 0
    assert not any("Traceback" in line for line in server.stderr), server.stderr


def test_sighup_reloads_changed_plugins_under_traffic_without_a_failed_request(tmp_path: Path) -> None:
    config = write_project(tmp_path)
    with serve(config) as server:
        stop = threading.Event()
        seen: dict[str, list[tuple[int, bytes]]] = collections.defaultdict(list)

        def hammer(name: str, path: str) -> None:
            with httpx.Client(base_url=server.url, headers=auth(ACME_TOKEN), timeout=DEADLINE_S) as client:
                while not stop.is_set():
                    response = client.post(path, content=b"n")
                    seen[name].append((response.status_code, response.content))

        clients = [threading.Thread(target=hammer, args=(f"version{i}", "/v1/plugins/tools/version")) for i in range(3)]
        clients += [threading.Thread(target=hammer, args=(f"counter{i}", "/v1/plugins/counter/hit")) for i in range(2)]
        for thread in clients:
            thread.start()
        wait_until("traffic", lambda: all(len(seen[f"version{i}"]) >= 20 for i in range(3)))
        # A new module for tools (swapped in place) and new settings for counter (a new plugin).
        (tmp_path / "tools.wat.tmp").write_text(tools("v2"))
        os.replace(tmp_path / "tools.wat.tmp", tmp_path / "tools.wat")
        config.write_text(config_text("pool_size = 3"))
        server.signal(signal.SIGHUP)
        wait_until("the new version", lambda: all((200, b"v2") in seen[f"version{i}"] for i in range(3)))
        marks = {name: len(calls) for name, calls in seen.items()}
        wait_until("more traffic after the reload", lambda: all(len(seen[n]) >= marks[n] + 20 for n in marks))
        stop.set()
        for thread in clients:
            thread.join(DEADLINE_S)
        text = httpx.get(f"{server.url}/metrics").text
        assert server.stop() == 0
    for name, calls in seen.items():
        assert {code for code, _ in calls} == {200}, (name, collections.Counter(code for code, _ in calls))
        if name.startswith("version"):
            answers = [body for _, body in calls]
            first_new = answers.index(b"v2")
            assert set(answers[:first_new]) == {b"v1"}
            assert set(answers[first_new:]) == {b"v2"}  # one client never goes back
    with open_store(tmp_path) as store:
        assert int(store.tenant("acme").bucket().get("n") or 0) == sum(
            len(calls) for name, calls in seen.items() if name.startswith("counter")
        )
    assert metric(text, 'wasmkv_reloads_total{outcome="ok",plugin="tools",tenant="acme"}') == 1
    assert metric(text, 'wasmkv_reloads_total{outcome="ok",plugin="counter",tenant="acme"}') == 1
    assert any("reloaded" in line and "counter" in line for line in server.stderr), server.stderr


def test_sighup_with_a_broken_config_keeps_serving_and_says_why_in_one_line(tmp_path: Path) -> None:
    config = write_project(tmp_path)
    with serve(config) as server:
        config.write_text("[serve]\nlisten = 12\n")
        server.signal(signal.SIGHUP)
        wait_until("the refusal", lambda: any("reload refused" in line for line in server.stderr))
        response = httpx.post(f"{server.url}/v1/plugins/tools/version", headers=auth(ACME_TOKEN))
        assert (response.status_code, response.content) == (200, b"v1")
        assert server.stop() == 0
    refusal = next(line for line in server.stderr if "reload refused" in line)
    assert "listen" in refusal
    assert not any("Traceback" in line for line in server.stderr)


# -- workers ------------------------------------------------------------------------------------------------


def test_two_workers_share_an_exact_quota_both_serve_and_their_metrics_add_up(tmp_path: Path) -> None:
    config = write_project(tmp_path, acme="max_keys = 40")
    with serve(config, "--workers", "2", "--log-format", "json") as server:
        assert len(server.pids) == 2

        async def create(count: int) -> list[httpx.Response]:
            # A connection per request (no keep-alive), so the kernel spreads them over both workers.
            limits = httpx.Limits(max_keepalive_connections=0, max_connections=64)
            async with httpx.AsyncClient(base_url=server.url, headers=auth(ACME_TOKEN), limits=limits) as client:
                return await asyncio.gather(
                    *(client.post("/v1/plugins/counter/hit", content=f"key{i}".encode()) for i in range(count))
                )

        responses = asyncio.run(create(200))
        codes = collections.Counter(response.status_code for response in responses)
        assert codes == {200: 40, 422: 160}, codes
        assert {response.json()["name"] for response in responses if response.status_code == 422} == {"QUOTA_EXCEEDED"}

        def both_served() -> bool:
            httpx.get(f"{server.url}/healthz", headers={"Connection": "close"})
            return server.served_pids() == set(server.pids)

        wait_until("both workers to serve", both_served)
        # Whichever worker answers a scrape, it shows every worker's counts; usage is read once.
        for _ in range(4):
            text = httpx.get(f"{server.url}/metrics", headers={"Connection": "close"}).text
            labels = 'plugin="counter",tenant="acme"}'
            assert metric(text, f'wasmkv_calls_total{{export="hit",outcome="ok",{labels}') == 40
            assert metric(text, f'wasmkv_calls_total{{export="hit",outcome="error",{labels}') == 160
            assert metric(text, f'wasmkv_call_seconds_count{{export="hit",{labels}') == 200
            assert metric(text, f"wasmkv_quota_rejections_total{{{labels}") == 160
            assert metric(text, 'wasmkv_tenant_keys{tenant="acme"}') == 40
        assert server.stop() == 0
    logs = server.json_logs()  # every stderr line is one JSON object
    access = [entry for entry in logs if entry["logger"] == "wasmkv.serve.access" and entry["path"].startswith("/v1")]
    assert {"time", "level", "message", "method", "path", "status", "ms", "tenant", "plugin", "export"} <= set(
        access[0]
    )


def test_a_worker_that_dies_is_replaced_and_sigterm_stops_them_all(tmp_path: Path) -> None:
    config = write_project(tmp_path)
    with serve(config, "--workers", "2", "--log-format", "json") as server:
        environ = Path(f"/proc/{server.pids[0]}/environ").read_bytes().split(b"\0")
        metrics_dir = Path(
            next(v for v in environ if v.startswith(b"PROMETHEUS_MULTIPROC_DIR=")).split(b"=", 1)[1].decode()
        )
        assert metrics_dir.is_dir()
        os.kill(server.pids[0], signal.SIGKILL)
        wait_until("the supervisor to notice", lambda: any("died" in entry["message"] for entry in server.json_logs()))
        # The other worker kept serving; a new one comes up and serves too.
        assert httpx.post(f"{server.url}/v1/plugins/tools/version", headers=auth(ACME_TOKEN)).status_code == 200

        def a_new_worker_served() -> bool:
            httpx.post(f"{server.url}/v1/plugins/counter/hit", headers={**auth(ACME_TOKEN), "Connection": "close"})
            return bool(server.served_pids() - set(server.pids))

        wait_until("a replacement worker to serve", a_new_worker_served)
        assert server.stop() == 0
    assert not metrics_dir.exists()
    assert all(not Path(f"/proc/{pid}").exists() or _zombie(pid) for pid in server.served_pids())


def _zombie(pid: int) -> bool:
    with contextlib.suppress(OSError):
        return " Z " in Path(f"/proc/{pid}/stat").read_text()
    return True


# -- startup failures ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("bad toml", "not valid TOML"),
        ("unknown key", "unknown key"),
        ("plain token", "never written in plain text"),
        ("missing plugin file", "does not exist"),
        ("broken module", "tools.wat"),
        ("broken module, two workers", "tools.wat"),
        ("port in use", "cannot listen on"),
        ("bad workers flag", "--workers"),
    ],
)
def test_startup_failures_are_one_line_and_exit_2(tmp_path: Path, case: str, message: str) -> None:
    config = write_project(tmp_path)
    args = ["--listen", "127.0.0.1:0"]
    taken = socket.socket()
    if case == "bad toml":
        config.write_text("[serve\n")
    elif case == "unknown key":
        config.write_text(config_text(serve="colour = 'blue'"))
    elif case == "plain token":
        config.write_text(config_text() + '\n[[serve.tokens]]\ntoken = "hunter2"\ntenants = ["acme"]\n')
    elif case == "missing plugin file":
        (tmp_path / "tools.wat").unlink()
    elif case.startswith("broken module"):
        (tmp_path / "tools.wat").write_text("(module (func $f (result i32) (i32.const 1)")
        if "two workers" in case:
            args += ["--workers", "2"]
    elif case == "port in use":
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        args = ["--listen", f"127.0.0.1:{taken.getsockname()[1]}"]
    elif case == "bad workers flag":
        args += ["--workers", "0"]
    with taken:
        done = subprocess.run(
            [WASMKV, "serve", "--config", str(config), *args],
            check=False,
            capture_output=True,
            text=True,
            timeout=DEADLINE_S,
            cwd=tmp_path,
        )
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert message in lines[0]
    assert "Traceback" not in done.stderr


def test_serve_says_how_to_install_what_it_needs_when_uvicorn_is_missing(tmp_path: Path) -> None:
    config = write_project(tmp_path)
    script = (
        "import sys, importlib.util\n"
        "real = importlib.util.find_spec\n"
        "importlib.util.find_spec = lambda name, *a: None if name == 'uvicorn' else real(name, *a)\n"
        "from wasmkv.host._cli import main\n"
        f"sys.exit(main(['serve', '--config', {str(config)!r}]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=DEADLINE_S
    )
    assert done.returncode == 2
    assert done.stderr == "wasmkv: wasmkv serve needs uvicorn: pip install 'wasmkv[serve]'\n"


# -- the wire: uvicorn with wasmkv's protocol, in a thread of this process -----------------------------------


@pytest.fixture
def wire(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[int, wasmkv.serve.ServeApp]]:
    """The real HTTP server (uvicorn, the bounded httptools protocol) over the app, on a loopback port."""
    monkeypatch.setattr(_serve_http, "HEAD_TIMEOUT_S", 1.0)
    app = wasmkv.serve.create_app(write_project(tmp_path))
    sock = _serve_run.listen_socket("127.0.0.1:0")
    server = _serve_run._Server(app)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_until("the server", lambda: server.started)
    try:
        yield sock.getsockname()[1], app
    finally:
        server.should_exit = True
        thread.join(DEADLINE_S)
        sock.close()
        app.close()


def exchange(port: int, data: bytes, *, timeout_s: float = 10) -> bytes:
    """Send `data` as is; what comes back until the server closes (or the timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as conn:
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            conn.sendall(data)
        chunks = []
        with contextlib.suppress(ConnectionResetError, TimeoutError):
            while chunk := conn.recv(65536):
                chunks.append(chunk)
    return b"".join(chunks)


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def request_head(path: str = "/v1/plugins/tools/echo", *headers: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: x", "Connection: close", *headers, "", ""]
    return "\r\n".join(lines).encode()


def test_a_huge_content_length_gets_413_at_once_without_the_body(wire: tuple[int, Any]) -> None:
    port, _ = wire
    started = time.monotonic()
    answer = exchange(
        port,
        request_head("/v1/plugins/tools/echo", f"Authorization: Bearer {ACME_TOKEN}", f"Content-Length: {400 << 20}")
        + b"tiny",
    )
    assert status_of(answer) == 413
    assert b"connection: close" in answer.lower()
    assert time.monotonic() - started < 10  # it did not wait for 400 MiB


@pytest.mark.parametrize(
    ("head", "code"),
    [
        ([f"X-Big: {'a' * 100_000}"], 400),
        ([f"X-H{i}: v" for i in range(1000)], 400),
        (["Authorization: Bearer \xff\xfe"], 401),
        ([f"Authorization: Bearer {ACME_TOKEN}", "Authorization: Bearer x"], 400),
        (["Content-Length: 5", "Content-Length: 6"], 400),
        (["Content-Length: -1"], 400),
        (["Transfer-Encoding: chunked", "Content-Length: 5"], 400),
    ],
)
def test_hostile_headers_get_400_or_401_never_500(wire: tuple[int, Any], head: list[str], code: int) -> None:
    port, _ = wire
    lines = ["POST /v1/plugins/tools/echo HTTP/1.1", "Host: x", "Connection: close", *head, "", ""]
    data = "\r\n".join(lines).encode("latin-1")
    answer = exchange(port, data)
    if len(data) > _serve.MAX_HEAD_BYTES and not answer:
        return  # hung up on mid-send: the kernel's reset may drop the 400 before it is read
    assert status_of(answer) == code


def test_garbage_instead_of_http_gets_400(wire: tuple[int, Any]) -> None:
    port, _ = wire
    assert (
        status_of(exchange(port, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 100 + b"\r\n\r\n")) == 400
    )


def test_endless_headers_cost_the_server_no_memory(wire: tuple[int, Any]) -> None:
    port, _ = wire

    def rss_kib() -> int:
        status = Path("/proc/self/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]

    before = rss_kib()
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            for _ in range(64):
                conn.sendall(b"X-A: " + b"a" * (1 << 20) + b"\r\n")
                sent += 1
    assert sent < 64  # the server hung up long before 64 MiB
    assert rss_kib() - before < 32 * 1024


def test_a_client_that_never_finishes_its_head_is_disconnected(wire: tuple[int, Any]) -> None:
    port, _ = wire
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_S) as conn:
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        started = time.monotonic()
        assert conn.recv(1024) == b""  # closed by the server (HEAD_TIMEOUT_S is 1 s here)
        assert time.monotonic() - started < DEADLINE_S
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_S) as idle:
        assert idle.recv(1024) == b""  # nor one that sends nothing at all


def test_keep_alive_serves_several_requests_on_one_connection(wire: tuple[int, Any]) -> None:
    port, _ = wire
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=auth(ACME_TOKEN)) as client:
        for i in range(5):
            response = client.post("/v1/plugins/tools/echo", content=f"{i}".encode())
            assert (response.status_code, response.content) == (200, f"{i}".encode())
        assert client.post("/v1/plugins/tools/nope").status_code == 404
        assert client.post("/v1/plugins/tools/echo", content=b"after").content == b"after"


# -- load ------------------------------------------------------------------------------------------------------


def test_a_bounded_load_test_of_50_clients_for_10_seconds(tmp_path: Path) -> None:
    """50 concurrent clients, 10 s, against the sample counter on two workers: no 5xx, exact counts and quota."""
    config = write_project(tmp_path, acme="max_keys = 100")
    with serve(config, "--workers", "2", "-q") as server:
        latencies: list[float] = []
        codes: collections.Counter[int] = collections.Counter()
        hits = 0

        async def client(index: int, until: float) -> None:
            nonlocal hits
            connection = Connection("127.0.0.1", server.port, auth(ACME_TOKEN))
            n = 0
            try:
                while time.monotonic() < until:
                    n += 1
                    # Mostly one shared counter; every tenth call a new key, so the quota is reached and held.
                    key = f"k{index}-{n}" if n % 10 == 0 else "load"
                    started = time.perf_counter()
                    code, _ = await connection.request("POST", "/v1/plugins/counter/hit", key.encode())
                    latencies.append(time.perf_counter() - started)
                    codes[code] += 1
                    if key == "load" and code == 200:
                        hits += 1
            finally:
                await connection.close()

        async def run() -> None:
            until = time.monotonic() + 10
            await asyncio.gather(*(client(i, until) for i in range(50)))

        asyncio.run(run())
        assert server.stop() == 0
    assert not any(code >= 500 for code in codes), codes
    assert set(codes) <= {200, 422}, codes
    with open_store(tmp_path) as store:
        tenant = store.tenant("acme")
        assert int(tenant.bucket().get("load") or 0) == hits
        assert tenant.usage().keys == 100  # reached, never exceeded
    cuts = statistics.quantiles(latencies, n=100)
    print(
        f"\nload: {sum(codes.values())} requests in 10 s ({sum(codes.values()) / 10:.0f}/s), {dict(codes)}, "
        f"p50 {cuts[49] * 1000:.1f} ms, p99 {cuts[98] * 1000:.1f} ms"
    )
