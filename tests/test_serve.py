"""`wasmkv serve`'s ASGI app, in process (httpx's ASGI transport): routes, status mapping, auth, limits, reload.

The subprocess tests (signals, workers, load, the wire) are in test_serve_process.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import subprocess
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from test_serve_helpers import (
    ACME_TOKEN,
    ADMIN_TOKEN,
    BETA_TOKEN,
    COUNTER,
    DEADLINE_S,
    WASMKV,
    auth,
    config_text,
    sha256,
    tools,
    wait_until,
    write_project,
)

import wasmkv.serve
from wasmkv import host, kv
from wasmkv.host import _serve
from wasmkv.host._cli_common import JsonLines

T = TypeVar("T")


class Client:
    """An httpx client over the app's ASGI interface, on one event loop in a thread (as a server has one)."""

    def __init__(self, app: wasmkv.serve.ServeApp) -> None:
        self.app = app
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        transport = httpx.ASGITransport(app=app)
        self.http = self.run(self._client(transport))

    @staticmethod
    async def _client(transport: httpx.ASGITransport) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=transport, base_url="http://wasmkv.test", timeout=DEADLINE_S)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=DEADLINE_S)

    def start(self, coro: Coroutine[Any, Any, T]) -> Any:
        """Start `coro` on the loop; a concurrent future of its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def request(self, method: str, path: str, token: str | None = None, **kwargs: Any) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        if token is not None:
            headers.update(auth(token))
        return self.run(self.http.request(method, path, headers=headers, **kwargs))

    def call(self, plugin: str, export: str, body: bytes = b"", token: str = ACME_TOKEN) -> httpx.Response:
        return self.request("POST", f"/v1/plugins/{plugin}/{export}", token, content=body)

    def close(self) -> None:
        self.run(self.http.aclose())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


@contextlib.contextmanager
def serving(config: Path) -> Iterator[tuple[wasmkv.serve.ServeApp, Client]]:
    """An app over `config` and a client of it, both closed after."""
    with wasmkv.serve.create_app(config) as app:
        client = Client(app)
        try:
            yield app, client
        finally:
            client.close()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return write_project(tmp_path, acme="max_keys = 100\nmax_concurrent_calls = 2")


@pytest.fixture
def app(project: Path) -> Iterator[wasmkv.serve.ServeApp]:
    with wasmkv.serve.create_app(project) as made:
        yield made


@pytest.fixture
def client(app: wasmkv.serve.ServeApp) -> Iterator[Client]:
    made = Client(app)
    try:
        yield made
    finally:
        made.close()


def error_of(response: httpx.Response) -> dict[str, Any]:
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    return body


# -- calls and their outcomes ------------------------------------------------------------------------


def test_a_call_answers_with_the_plugins_output_as_octets(client: Client) -> None:
    response = client.call("tools", "echo", b"\x00hello\xff")
    assert response.status_code == 200
    assert response.content == b"\x00hello\xff"
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert client.call("counter", "hit", b"visits").content == b"1"
    assert client.call("counter", "hit", b"visits").content == b"2"


@pytest.mark.parametrize(
    ("plugin", "export", "code", "expected"),
    [
        ("tools", "quota", 422, {"error": "status", "status": -4, "name": "QUOTA_EXCEEDED"}),
        ("tools", "mine", 422, {"error": "status", "status": 7, "name": None, "output": "plugin says no"}),
        ("tools", "limited", 429, {"error": "status", "status": -10, "name": "RATE_LIMITED"}),
        ("tools", "down", 503, {"error": "status", "status": -11, "name": "BACKEND_UNAVAILABLE"}),
        ("tools", "boom", 500, {"error": "trap"}),
        ("fast", "spin", 504, {"error": "timeout"}),
        ("metered", "spin", 500, {"error": "fuel_exhausted", "reason": "fuel"}),
        ("tools", "nope", 404, {"error": "not_found"}),
        ("ghost", "echo", 404, {"error": "not_found"}),
        ("no%20such", "echo", 404, {"error": "not_found"}),
    ],
)
def test_each_way_a_call_ends_has_its_http_status_and_json(
    client: Client, plugin: str, export: str, code: int, expected: dict[str, Any]
) -> None:
    response = client.call(plugin, export)
    assert response.status_code == code, response.text
    body = error_of(response)
    assert expected.items() <= body.items()
    assert body["message"]
    if code in (429, 503):
        assert response.headers["retry-after"] == "1"


def test_a_trap_says_why(client: Client) -> None:
    body = error_of(client.call("tools", "boom"))
    assert "unreachable" in body["reason"]


def test_a_quota_refusal_from_the_sample_counter_is_422_quota_exceeded(tmp_path: Path) -> None:
    with serving(write_project(tmp_path, acme="max_keys = 3")) as (_, client):
        codes = [client.call("counter", "hit", f"k{i}".encode()).status_code for i in range(5)]
        refused = client.call("counter", "hit", b"k9")
    assert codes == [200, 200, 200, 422, 422]
    assert error_of(refused)["name"] == "QUOTA_EXCEEDED"


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", "/v1/plugins/tools/echo", "POST"),
        ("PUT", "/v1/plugins/tools/echo", "POST"),
        ("POST", "/v1/tenants/acme", "GET, HEAD"),
        ("DELETE", "/healthz", "GET, HEAD"),
        ("POST", "/metrics", "GET, HEAD"),
    ],
)
def test_other_methods_get_405_with_allow(client: Client, method: str, path: str, allow: str) -> None:
    response = client.request(method, path, ADMIN_TOKEN)
    assert response.status_code == 405
    assert response.headers["allow"] == allow


def test_unknown_routes_get_404(client: Client) -> None:
    for path in ("/", "/v1", "/v1/plugins", "/v2/plugins/tools/echo", "/healthz/x"):
        assert client.request("GET", path, ADMIN_TOKEN).status_code == 404


# -- auth ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Bearer wrong-token",
        "Bearer ",
        "Bearer",
        f"Basic {ACME_TOKEN}",
        f"Token {ACME_TOKEN}",
        "Bearer " + "x" * 5000,
        f"Bearer {ACME_TOKEN}x",
        f"Bearer {sha256(ACME_TOKEN)}",  # the hash is not the token
    ],
)
def test_a_call_without_a_valid_token_gets_401_and_a_bearer_challenge(
    client: Client, app: wasmkv.serve.ServeApp, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    response = client.request("POST", "/v1/plugins/counter/hit", headers=headers, content=b"k")
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert app.host.store.tenant("acme").usage().keys == 0  # nothing ran


def test_a_token_of_non_ascii_bytes_is_401_not_500(client: Client) -> None:
    headers = [(b"authorization", b"Bearer \xff\xfe\x00\x1b[31m")]
    response = client.run(
        client.http.send(httpx.Request("POST", "http://wasmkv.test/v1/plugins/tools/echo", headers=headers))
    )
    assert response.status_code == 401


def test_bearer_is_case_insensitive(client: Client) -> None:
    response = client.request("POST", "/v1/plugins/tools/echo", headers={"Authorization": f"bearer {ACME_TOKEN}"})
    assert response.status_code == 200


def test_a_token_for_another_tenant_gets_403(client: Client, app: wasmkv.serve.ServeApp) -> None:
    assert client.call("counter", "hit", b"k", token=BETA_TOKEN).status_code == 403
    assert client.call("beta-tools", "echo", b"k", token=ACME_TOKEN).status_code == 403
    assert client.request("GET", "/v1/tenants/beta", ACME_TOKEN).status_code == 403
    # Even for a tenant that does not exist: 403 says nothing about what exists.
    assert client.request("GET", "/v1/tenants/nobody", ACME_TOKEN).status_code == 403
    assert app.host.store.tenant("acme").usage().keys == 0


def test_a_token_for_every_tenant_reaches_them_all(client: Client) -> None:
    assert client.call("counter", "hit", b"k", token=ADMIN_TOKEN).status_code == 200
    assert client.call("beta-tools", "echo", b"k", token=ADMIN_TOKEN).status_code == 200
    assert client.request("GET", "/v1/tenants/beta", ADMIN_TOKEN).status_code == 200


def test_two_authorization_headers_are_refused_with_400(client: Client) -> None:
    headers = [(b"authorization", f"Bearer {ACME_TOKEN}".encode()), (b"authorization", b"Bearer other")]
    request = httpx.Request("POST", "http://wasmkv.test/v1/plugins/tools/echo", headers=headers)
    response = client.run(client.http.send(request))
    assert response.status_code == 400
    assert "Authorization" in error_of(response)["message"]


def test_too_many_headers_are_refused_with_400(client: Client) -> None:
    headers = [(f"x-h{i}".encode(), b"v") for i in range(_serve.MAX_HEADERS + 1)]
    headers.append((b"authorization", f"Bearer {ACME_TOKEN}".encode()))
    request = httpx.Request("POST", "http://wasmkv.test/v1/plugins/tools/echo", headers=headers)
    assert client.run(client.http.send(request)).status_code == 400


def test_a_malformed_content_length_is_refused_with_400(client: Client) -> None:
    for value in (b"abc", b"-1", b"1e3", b"99999999999999999999999"):
        headers = [(b"authorization", f"Bearer {ACME_TOKEN}".encode()), (b"content-length", value)]
        scope_headers = headers
        response = asyncio.run(_raw_asgi(client.app, "POST", "/v1/plugins/tools/echo", scope_headers, [b""]))
        assert response[0] == 400, value


async def _raw_asgi(
    app: wasmkv.serve.ServeApp,
    method: str,
    path: str,
    headers: list[tuple[bytes, bytes]],
    chunks: list[bytes | None],
) -> tuple[int, list[tuple[bytes, bytes]], bytes, int]:
    """Drive the app with exactly these headers and body chunks; (status, headers, body, chunks read).

    A None chunk is a client that sends nothing more and keeps the connection open.
    """
    scope = {"type": "http", "method": method, "path": path, "headers": headers, "query_string": b""}
    pending = list(chunks)
    read = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal read
        chunk = pending.pop(0) if pending else None
        if chunk is None:
            await asyncio.Event().wait()
        read += 1
        return {"type": "http.request", "body": chunk, "more_body": bool(pending)}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent[0]["status"], sent[0]["headers"], sent[1]["body"], read


# -- bodies ---------------------------------------------------------------------------------------------


def test_a_declared_body_over_max_body_bytes_gets_413_without_a_byte_read(app: wasmkv.serve.ServeApp) -> None:
    headers = [(b"authorization", f"Bearer {ACME_TOKEN}".encode()), (b"content-length", str(400 << 20).encode())]
    status, answer_headers, body, read = asyncio.run(
        _raw_asgi(app, "POST", "/v1/plugins/tools/echo", headers, [b"x" * 10])
    )
    assert status == 413
    assert read == 0
    assert (b"connection", b"close") in answer_headers
    assert b"max_body_bytes (4096)" in body


def test_a_chunked_body_is_read_only_up_to_the_limit(app: wasmkv.serve.ServeApp) -> None:
    headers = [(b"authorization", f"Bearer {ACME_TOKEN}".encode()), (b"transfer-encoding", b"chunked")]
    chunks: list[bytes | None] = [b"x" * 1000] * 100  # 100 kB announced chunk by chunk, limit 4096
    status, _, _, read = asyncio.run(_raw_asgi(app, "POST", "/v1/plugins/tools/echo", headers, chunks))
    assert status == 413
    assert read == 5  # the fifth chunk crossed the limit; the 95 others were never asked for
    assert app._buffered == 0


def test_a_chunked_body_under_the_limit_is_served(app: wasmkv.serve.ServeApp) -> None:
    headers = [(b"authorization", f"Bearer {ACME_TOKEN}".encode()), (b"transfer-encoding", b"chunked")]
    status, _, body, _ = asyncio.run(_raw_asgi(app, "POST", "/v1/plugins/tools/echo", headers, [b"ab", b"", b"cd"]))
    assert (status, body) == (200, b"abcd")
    assert app._buffered == 0


def test_a_body_that_stops_arriving_gets_408(app: wasmkv.serve.ServeApp, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_serve, "BODY_TIMEOUT_S", 0.2)
    headers = [(b"authorization", f"Bearer {ACME_TOKEN}".encode()), (b"content-length", b"100")]
    status, answer_headers, _, _ = asyncio.run(
        _raw_asgi(app, "POST", "/v1/plugins/tools/echo", headers, [b"x" * 10, None])
    )
    assert status == 408
    assert (b"connection", b"close") in answer_headers
    assert app._buffered == 0
    assert app._inflight == {}


def test_bodies_held_at_once_are_bounded_per_worker(app: wasmkv.serve.ServeApp) -> None:
    app._max_buffered = 3000
    headers = [(b"authorization", f"Bearer {ACME_TOKEN}".encode()), (b"content-length", b"2000")]

    async def two_at_once() -> int:
        # The first holds 2000 bytes while the rest of its body does not come; the second does not fit.
        first = asyncio.ensure_future(_raw_asgi(app, "POST", "/v1/plugins/tools/echo", headers, [b"x" * 1000, None]))
        while app._buffered == 0:
            await asyncio.sleep(0)
        second = await _raw_asgi(app, "POST", "/v1/plugins/tools/echo", headers, [b"x" * 2000])
        first.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await first
        return second[0]

    assert asyncio.run(two_at_once()) == 503
    assert app._buffered == 0
    assert app._inflight == {}


# -- per-tenant fairness -------------------------------------------------------------------------------


def test_max_concurrent_calls_caps_a_tenant_with_429_and_leaves_other_tenants_alone(
    client: Client, app: wasmkv.serve.ServeApp
) -> None:
    bucket = app.host.store.tenant("acme").bucket()
    held = [client.start(client.http.post("/v1/plugins/tools/wait", headers=auth(ACME_TOKEN))) for _ in range(2)]
    wait_until("two calls in flight", lambda: bucket.get("started") == b"2")
    refused = client.call("tools", "echo", b"x")
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "1"
    assert "max_concurrent_calls" in error_of(refused)["message"]
    assert client.call("beta-tools", "echo", b"x", token=BETA_TOKEN).status_code == 200  # another tenant
    bucket.set("go", b"1")
    assert [future.result(DEADLINE_S).status_code for future in held] == [200, 200]
    assert client.call("tools", "echo", b"x").status_code == 200  # the slots came back
    assert app._inflight == {}


def test_a_flood_on_one_plugin_waits_in_the_loop_and_leaves_the_call_threads_to_others(
    client: Client, app: wasmkv.serve.ServeApp
) -> None:
    # Tenant beta has no max_concurrent_calls: 40 calls to its plugin (pool_size 2) must not take
    # the host's 32 call threads, or acme's calls would queue behind them.
    bucket = app.host.store.tenant("beta").bucket()
    flood = [client.start(client.http.post("/v1/plugins/beta-tools/wait", headers=auth(BETA_TOKEN))) for _ in range(40)]
    wait_until("two calls running", lambda: bucket.get("started") == b"2")
    assert client.call("counter", "hit", b"k").status_code == 200
    assert app.host.plugin("beta-tools").stats().busy == 2
    bucket.set("go", b"1")
    assert {future.result(DEADLINE_S).status_code for future in flood} == {200}


def test_many_concurrent_acalls_on_a_pool_of_two_finish_with_exact_state(tmp_path: Path) -> None:
    config = write_project(tmp_path, extra="pool_size = 2")
    with wasmkv.serve.create_app(config) as app:

        async def hammer() -> list[bytes]:
            return list(await asyncio.gather(*(app.host.acall("counter", "hit", b"n") for _ in range(300))))

        outputs = asyncio.run(hammer())
        assert sorted(int(out) for out in outputs) == list(range(1, 301))
        assert app.host.store.tenant("acme").bucket().get("n") == b"300"


# -- tenants, health, metrics ----------------------------------------------------------------------------


def test_the_tenant_route_answers_what_tenant_show_json_prints(client: Client, project: Path) -> None:
    client.call("counter", "hit", b"visits")
    response = client.request("GET", "/v1/tenants/acme", ACME_TOKEN)
    assert response.status_code == 200
    shown = subprocess.run(
        [WASMKV, "tenant", "show", "acme", "--json", "--config", str(project)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert response.json() == json.loads(shown)
    assert response.json()["usage"] == {"keys": 1, "bytes": len("visits") + 1}


def test_an_unknown_tenant_is_404_for_a_token_that_may_see_it(client: Client) -> None:
    assert client.request("GET", "/v1/tenants/nobody", ADMIN_TOKEN).status_code == 404
    assert client.request("GET", "/v1/tenants/not%20a%20name", ADMIN_TOKEN).status_code == 404
    assert client.request("GET", "/v1/tenants/acme").status_code == 401


def test_health_and_readiness(client: Client, app: wasmkv.serve.ServeApp) -> None:
    assert client.request("GET", "/healthz").json() == {"status": "ok"}
    assert client.request("GET", "/readyz").json() == {"ready": True}
    app.host.unload("counter")
    response = client.request("GET", "/readyz")
    assert response.status_code == 503
    assert "counter" in response.json()["reason"]
    app.draining = True
    assert client.request("GET", "/readyz").json() == {"ready": False, "reason": "draining"}
    assert client.request("GET", "/healthz").status_code == 200


def test_health_and_metrics_need_a_token_when_configured(tmp_path: Path) -> None:
    with serving(write_project(tmp_path, serve="auth_health = true\nauth_metrics = true")) as (_, client):
        for path in ("/healthz", "/readyz", "/metrics"):
            assert client.request("GET", path).status_code == 401
            assert client.request("GET", path, "nope").status_code == 401
            assert client.request("GET", path, BETA_TOKEN).status_code == 200


def test_metrics_count_calls_latency_kv_ops_refusals_and_tenant_usage(client: Client) -> None:
    for key in (b"a", b"b", b"a"):
        assert client.call("counter", "hit", key).status_code == 200
    client.call("tools", "boom")
    client.call("counter", "hit", b"k", token="wrong")
    client.call("counter", "hit", b"k", token=BETA_TOKEN)
    text = client.request("GET", "/metrics").text
    assert 'wasmkv_calls_total{export="hit",outcome="ok",plugin="counter",tenant="acme"} 3.0' in text
    assert 'wasmkv_calls_total{export="boom",outcome="trap",plugin="tools",tenant="acme"} 1.0' in text
    assert 'wasmkv_call_seconds_count{export="hit",plugin="counter",tenant="acme"} 3.0' in text
    assert 'wasmkv_call_seconds_bucket{export="hit",le="+Inf",plugin="counter",tenant="acme"} 3.0' in text
    assert 'le="0.0005"' in text  # the host's SECONDS_BUCKETS
    assert 'wasmkv_kv_ops_total{op="increment",outcome="ok",plugin="counter",tenant="acme"} 3.0' in text
    assert 'wasmkv_http_requests_total{code="401",route="/v1/plugins/{plugin}/{export}"} 1.0' in text
    assert 'wasmkv_http_requests_total{code="403",route="/v1/plugins/{plugin}/{export}"} 1.0' in text
    assert 'wasmkv_tenant_keys{tenant="acme"} 2.0' in text
    assert 'wasmkv_tenant_bytes{tenant="acme"} 4.0' in text  # "a"+"2" and "b"+"1"
    assert 'wasmkv_tenant_keys{tenant="beta"} 0.0' in text


def test_quota_and_rate_refusals_are_counted(tmp_path: Path) -> None:
    beta_counter = f'\n[plugins.beta-counter]\nfile = "{COUNTER}"\ntenant = "beta"\n'
    config = write_project(tmp_path, beta_counter, acme="max_keys = 1", beta="ops_per_second = 1")
    with serving(config) as (_, client):
        quota = [client.call("counter", "hit", key).status_code for key in (b"a", b"b")]
        rate = [client.call("beta-counter", "hit", b"a", token=BETA_TOKEN).status_code for _ in range(3)]
        text = client.request("GET", "/metrics").text
    assert quota == [200, 422]
    assert rate[0] == 200
    assert 429 in rate  # the plugin returned RATE_LIMITED: 429 with Retry-After
    assert 'wasmkv_quota_rejections_total{plugin="counter",tenant="acme"} 1.0' in text
    assert 'wasmkv_rate_limited_total{plugin="beta-counter",tenant="beta"}' in text
    assert 'wasmkv_kv_ops_total{op="increment",outcome="quota_exceeded",plugin="counter",tenant="acme"} 1.0' in text


def test_names_from_requests_never_become_metric_labels_or_host_counters(
    client: Client, app: wasmkv.serve.ServeApp
) -> None:
    for i in range(50):
        assert client.call("tools", f"nope{i}").status_code == 404
        assert client.call(f"ghost{i}", "echo").status_code == 404
    text = client.request("GET", "/metrics").text
    assert "nope" not in text
    assert "ghost" not in text
    assert not any(export.startswith("nope") for export in app.host.plugin("tools").stats().exports)


def test_metrics_say_how_to_get_prometheus_client_when_it_is_missing(
    app: wasmkv.serve.ServeApp, client: Client
) -> None:
    app.metrics = None
    response = client.request("GET", "/metrics")
    assert response.status_code == 501
    assert response.text == "metrics need prometheus-client: pip install 'wasmkv[serve]'\n"


# -- logs --------------------------------------------------------------------------------------------------


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def recorded(name: str, level: int = logging.INFO) -> Iterator[list[logging.LogRecord]]:
    """The records logger `name` emits meanwhile (a handler of its own: whatever `propagate` says)."""
    handler = _Records()
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    saved = logger.level
    logger.setLevel(level)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved)


@pytest.fixture
def access_records() -> Iterator[list[logging.LogRecord]]:
    with recorded("wasmkv.serve.access") as records:
        yield records


def test_each_request_has_an_access_line_with_its_call_and_as_json(
    client: Client, access_records: list[logging.LogRecord]
) -> None:
    client.call("counter", "hit", b"k")
    record = access_records[-1]
    assert record.getMessage().startswith("POST /v1/plugins/counter/hit 200 ")
    assert record.getMessage().endswith(" tenant=acme plugin=counter export=hit")
    line = json.loads(JsonLines().format(record))
    assert {"level": "INFO", "logger": "wasmkv.serve.access", "method": "POST", "status": 200}.items() <= line.items()
    assert (line["tenant"], line["plugin"], line["export"], line["path"]) == (
        "acme",
        "counter",
        "hit",
        "/v1/plugins/counter/hit",
    )
    assert isinstance(line["ms"], float)
    assert line["time"].endswith("Z")


def test_plugin_log_records_as_json_carry_the_calls_fields() -> None:
    record = logging.LogRecord("wasmkv.plugin.p", logging.WARNING, __file__, 1, "%s", ("said \x1b[31m",), None)
    record.__dict__.update(plugin="p", tenant="acme", export="hit", version="ab" * 32)
    line = JsonLines().format(record)
    assert "\n" not in line
    assert "\x1b" not in line  # escaped as \u001b
    parsed = json.loads(line)
    assert (parsed["plugin"], parsed["tenant"], parsed["export"], parsed["version"]) == ("p", "acme", "hit", "ab" * 32)
    assert parsed["message"] == "said \x1b[31m"


def test_a_hostile_path_is_escaped_in_the_access_log(client: Client, access_records: list[logging.LogRecord]) -> None:
    client.request("GET", "/x%1b[2J%0afake%20line%e2%80%ae" + "y" * 500)
    message = access_records[-1].getMessage()
    assert "\x1b" not in message
    assert "\n" not in message
    assert "\u202e" not in message
    assert len(message) < 400


# -- reload ------------------------------------------------------------------------------------------------


def test_reload_swaps_changed_modules_applies_settings_adds_and_removes_plugins(
    client: Client, app: wasmkv.serve.ServeApp, project: Path
) -> None:
    tools_plugin = app.host.plugin("tools")
    assert client.call("tools", "version").content == b"v1"
    (project.parent / "tools.wat").write_text(tools("v2"))
    text = config_text("pool_size = 3", acme="max_keys = 100").replace("[plugins.fast]", "[plugins.fast2]")
    text += f'\n[[serve.tokens]]\nsha256 = "{sha256("new-token")}"\ntenants = ["acme"]\n'
    project.write_text(text)
    assert app.reload()
    assert client.call("tools", "version").content == b"v2"
    assert app.host.plugin("tools") is tools_plugin  # swapped in place, not replaced
    assert app.host.plugin("counter").pool_size == 3  # new settings: a new plugin
    assert client.call("fast", "echo").status_code == 404
    assert client.call("fast2", "echo", b"x").content == b"x"
    assert client.call("tools", "echo", b"y", token="new-token").status_code == 200
    assert app._max_calls == {}  # max_concurrent_calls left the config
    assert client.request("GET", "/readyz").status_code == 200
    versions = {name: plugin.version for name, plugin in app.host.plugins.items()}
    objects = app.host.plugins
    with recorded("wasmkv.serve") as records:
        assert app.reload()  # nothing changed since: nothing is reloaded
    assert "no plugin changed" in records[-1].getMessage()
    assert {name: plugin.version for name, plugin in app.host.plugins.items()} == versions
    assert all(app.host.plugins[name] is plugin for name, plugin in objects.items())


def test_a_reload_that_fails_keeps_the_old_plugins_serving(
    client: Client, app: wasmkv.serve.ServeApp, project: Path
) -> None:
    version = app.host.plugin("tools").version
    (project.parent / "tools.wat").write_text("(module (this is not wat")
    with recorded("wasmkv.serve") as records:
        assert not app.reload()
    assert app.host.plugin("tools").version == version
    assert client.call("tools", "version").content == b"v1"
    assert any("reload of plugin tools failed" in record.getMessage() for record in records)
    project.write_text("[nonsense")
    with recorded("wasmkv.serve") as records:
        assert not app.reload()
    assert "reload refused" in records[-1].getMessage()
    assert "\n" not in records[-1].getMessage()
    assert client.call("tools", "version").content == b"v1"


def test_calls_during_reloads_that_replace_plugins_never_fail(tmp_path: Path) -> None:
    # Each reload changes the counter's settings, so the plugin object is replaced under the calls.
    project = write_project(tmp_path)
    with serving(project) as (app, client):

        async def hammer() -> list[int]:
            async def one() -> int:
                response = await client.http.post("/v1/plugins/counter/hit", headers=auth(ACME_TOKEN), content=b"n")
                return response.status_code

            return await asyncio.gather(*(one() for _ in range(400)))

        calls = client.start(hammer())
        for pool_size in (1, 3, 2, 4):
            project.write_text(config_text(f"pool_size = {pool_size}"))
            assert app.reload()
        codes = calls.result(DEADLINE_S)
        assert set(codes) == {200}
        assert app.host.store.tenant("acme").bucket().get("n") == b"400"


# -- lifespan, websockets, the public module --------------------------------------------------------


def test_the_lifespan_shutdown_closes_the_host(app: wasmkv.serve.ServeApp) -> None:
    async def lifespan() -> list[str]:
        events = asyncio.Queue[dict[str, Any]]()
        for kind in ("lifespan.startup", "lifespan.shutdown"):
            events.put_nowait({"type": kind})
        sent: list[str] = []

        async def send(message: dict[str, Any]) -> None:
            sent.append(message["type"])

        await app({"type": "lifespan"}, events.get, send)
        return sent

    assert asyncio.run(lifespan()) == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert app.host.plugins == {}
    assert app.host.store.closed


def test_a_websocket_is_refused(app: wasmkv.serve.ServeApp) -> None:
    async def connect() -> list[dict[str, Any]]:
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "websocket.connect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app({"type": "websocket", "path": "/v1/plugins/tools/echo", "headers": []}, receive, send)
        return sent

    assert asyncio.run(connect()) == [{"type": "websocket.close", "code": 1008}]


def test_create_app_refuses_a_missing_plugin_file_naming_it(tmp_path: Path) -> None:
    config = write_project(tmp_path)
    (tmp_path / "tools.wat").unlink()
    with pytest.raises(host.LoadError, match=r"plugin tools: .*tools\.wat does not exist"):
        wasmkv.serve.create_app(config)


def test_create_app_takes_a_loaded_config(tmp_path: Path) -> None:
    config = host.load_config(write_project(tmp_path))
    with wasmkv.serve.create_app(config) as app:
        assert sorted(app.host.plugins) == ["beta-tools", "counter", "fast", "metered", "tools"]
        assert isinstance(app.host.store, kv.KvStore)


def test_the_public_serve_module_is_sorted_and_documented() -> None:
    names = wasmkv.serve.__all__
    assert list(names) == sorted(names, key=lambda n: (0 if n.isupper() else 1 if n[0].isupper() else 2, n))
    for name in names:
        value = getattr(wasmkv.serve, name)
        if callable(value):
            assert value.__doc__, name


def test_the_readmes_service_config_loads_and_its_example_token_is_the_sha256_shown(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme[readme.index("## Run it as a service") :]
    text = section[section.index("```toml\n") + len("```toml\n") :]
    text = text[: text.index("```")]
    (tmp_path / "plugins" / "build").mkdir(parents=True)
    config = tmp_path / "wasmkv.toml"
    config.write_text(text.replace("/var/lib/wasmkv/state", str(tmp_path / "state")))
    loaded = host.load_config(config)
    assert loaded.serve.workers == 2
    assert loaded.max_concurrent_calls == {"acme": 16}
    assert loaded.plugins["counter"].pool_size == 4
    assert loaded.serve.tokens[0].sha256 == sha256("test")
