"""`wasmkv dev`'s HTTP endpoint: call plugins from curl, safely on a developer's laptop.

Any web page the developer opens can make the browser send requests to
127.0.0.1, and with DNS rebinding read the answers. So a request is served only
if its `Host` names this endpoint (a loopback name, or the listen address or an
`allowed_hosts` name when bound elsewhere, with the listen port) and it carries
no `Origin` other than this endpoint's own; `curl` sends no Origin and keeps
working. Bodies over `max_body_bytes` are refused unread, malformed requests
get 400, and a bounded pool of workers serves requests: excess connections get
503 at once instead of a thread each.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import http.server
import ipaddress
import json
import logging
import re
import socket
import threading
import time
from collections.abc import Iterable
from typing import Any, Final

from ..abi import describe_status, status_name
from ._config import DEFAULT_DEV_MAX_BODY_BYTES, DEFAULT_DEV_WORKERS
from ._errors import HostError, PluginClosed, PluginError, PluginStatusError, UnknownExport, UnknownPlugin
from ._host import Host
from ._text import safe_name

__all__ = ["DevServer", "is_loopback", "serve_calls"]

#: How long a client may take to send its whole request, so a slow one cannot hold a worker.
DEFAULT_REQUEST_TIMEOUT_S: Final = 10.0
#: How long one read from a client may block (the watchdog enforces the whole request's time).
_SOCKET_TIMEOUT_S: Final = 10.0
_LOOPBACK_NAMES: Final = frozenset({"localhost", "127.0.0.1", "::1"})
_CONTENT_LENGTH: Final = re.compile(r"[0-9]{1,15}\Z")
_log = logging.getLogger("wasmkv.dev")


def is_loopback(address: str) -> bool:
    """Whether a listen address (a name or an IP) stays on this machine."""
    if address in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return False


def _split_host(value: str) -> tuple[str, int | None] | None:
    """A Host header's name and port (None if it has none); None if it is malformed."""
    match = re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-]+)(?::([0-9]{1,5}))?", value.strip())
    if match is None:
        return None
    return match.group(1).strip("[]").lower().rstrip("."), None if match.group(2) is None else int(match.group(2))


@dataclasses.dataclass(frozen=True, slots=True)
class _Policy:
    """Which Host names and Origins this endpoint answers."""

    names: frozenset[str]
    port: int
    max_body_bytes: int

    def host_ok(self, header: str | None) -> bool:
        parsed = None if header is None else _split_host(header)
        if parsed is None:
            return False
        name, port = parsed
        return name in self.names and (port if port is not None else 80) == self.port

    def origin_ok(self, header: str | None) -> bool:
        if header is None:
            return True  # not a browser's cross-site request (curl, scripts)
        scheme, sep, rest = header.strip().partition("://")
        return scheme.lower() == "http" and bool(sep) and self.host_ok(rest)


class DevServer(http.server.HTTPServer):
    """An HTTP server that serves each connection on a bounded pool of worker threads.

    A client has `request_timeout_s` in all to send its request (line, headers
    and body): a watchdog closes the connection of one that trickles it, so
    slow clients cannot hold the workers for longer than that.
    """

    # Connections waiting to be accepted; the accept loop answers the ones past the pool with 503 at once.
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[http.server.BaseHTTPRequestHandler],
        workers: int,
        request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
    ):
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        # Before the bind, which closes the server (and so the pool) when it fails.
        self._pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="wasmkv-dev-http")
        self._slots = threading.BoundedSemaphore(workers)
        self.policy: _Policy | None = None
        self.request_timeout_s = request_timeout_s
        self._reading: dict[socket.socket, float] = {}
        self._reading_lock = threading.Lock()
        self._stopped = threading.Event()
        super().__init__(address, handler)
        self._watchdog = threading.Thread(target=self._watch, name="wasmkv-dev-http-watchdog", daemon=True)
        self._watchdog.start()

    def reading(self, conn: socket.socket) -> None:
        """`conn` starts sending a request: it has `request_timeout_s` to finish."""
        with self._reading_lock:
            self._reading[conn] = time.monotonic() + self.request_timeout_s

    def read(self, conn: socket.socket) -> None:
        """`conn` has sent its whole request (or is done): no more watching."""
        with self._reading_lock:
            self._reading.pop(conn, None)

    def _watch(self) -> None:
        while not self._stopped.wait(min(0.5, self.request_timeout_s / 4)):
            now = time.monotonic()
            with self._reading_lock:
                late = [conn for conn, deadline in self._reading.items() if deadline < now]
                for conn in late:
                    del self._reading[conn]
            for conn in late:
                # The worker blocked on this socket's read sees the end of the stream and moves on.
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            # Every worker is busy: say so now rather than queue connections without bound.
            with contextlib.suppress(OSError):
                request.sendall(b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            self.shutdown_request(request)
            return
        self._pool.submit(self._work, request, client_address)

    def _work(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that vanishes or stalls is not the developer's problem: one debug line, no traceback.
        _log.debug("request from %s failed", client_address, exc_info=True)

    def server_close(self) -> None:
        self._stopped.set()
        super().server_close()
        self._pool.shutdown(wait=False, cancel_futures=True)


def _handler(host: Host, policy: _Policy) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        timeout = _SOCKET_TIMEOUT_S
        server: DevServer

        def setup(self) -> None:
            super().setup()
            self.server.reading(self.connection)

        def finish(self) -> None:
            self.server.read(self.connection)
            super().finish()

        def _allowed(self) -> bool:
            if not policy.host_ok(self.headers.get("Host")):
                self._reply(403, b"Host header does not name this endpoint\n")
                return False
            if not policy.origin_ok(self.headers.get("Origin")):
                self._reply(403, b"cross-origin requests are refused\n")
                return False
            return True

        def do_GET(self) -> None:
            self.server.read(self.connection)
            if not self._allowed():
                return
            if self.path != "/plugins":
                self._reply(404, b"try GET /plugins or POST /call/PLUGIN/EXPORT\n")
                return
            listing = {
                name: {"version": plugin.version, "tenant": plugin.tenant.name, "exports": plugin.exports}
                for name, plugin in host.plugins.items()
            }
            self._reply(200, json.dumps(listing, indent=2).encode() + b"\n", "application/json")

        def do_POST(self) -> None:
            if not self._allowed():
                return
            body = self._body()
            self.server.read(self.connection)  # the whole request is in: the plugin's deadline bounds the rest
            if body is None:
                return
            parts = self.path.strip("/").split("/")
            if len(parts) != 3 or parts[0] != "call":
                self._reply(404, b"POST /call/PLUGIN/EXPORT\n")
                return
            try:
                plugin = host.plugin(parts[1])
            except UnknownPlugin:
                self._reply(404, f"no plugin {parts[1]!r}\n".encode())
                return
            started = time.perf_counter()
            try:
                output = plugin.call(parts[2], body)
            except (UnknownExport, PluginClosed) as exc:
                outcome = "no such entry point"
                self._reply(404, f"{exc}\n".encode())
            except PluginStatusError as exc:
                outcome = f"status {describe_status(exc.status)}"
                headers = {"X-Wasmkv-Status": str(exc.status)}
                if (name := status_name(exc.status)) is not None:
                    headers["X-Wasmkv-Status-Name"] = name
                self._reply(422, exc.output, headers=headers)
            except PluginError as exc:
                outcome = f"failed: {exc}"
                self._reply(500, f"{exc}\n".encode())
            else:
                outcome = "ok"
                self._reply(200, output)
            # One line per call, so the developer sees traffic next to the reload lines.
            ms = (time.perf_counter() - started) * 1000
            _log.info("call %s.%s: %s in %.1f ms", safe_name(parts[1]), safe_name(parts[2]), safe_name(outcome), ms)

        def _body(self) -> bytes | None:
            """The request body, or None after answering a request whose body cannot be taken."""
            if self.headers.get("Transfer-Encoding") is not None:
                self._reply(411, b"send the body with a Content-Length\n")
                return None
            lengths = self.headers.get_all("Content-Length") or []
            if not lengths:
                return b""
            if len(set(lengths)) != 1 or _CONTENT_LENGTH.match(lengths[0].strip()) is None:
                self._reply(400, b"malformed Content-Length\n")
                return None
            length = int(lengths[0])
            if length > policy.max_body_bytes:
                self._reply(413, f"body over max_body_bytes ({policy.max_body_bytes})\n".encode())
                return None
            try:
                body = self.rfile.read(length)
            except OSError:  # a timeout or a reset: nobody to answer
                self.close_connection = True
                return None
            if len(body) != length:
                self._reply(400, b"body shorter than its Content-Length\n")
                return None
            return body

        def _reply(
            self,
            code: int,
            body: bytes,
            content_type: str = "application/octet-stream",
            headers: dict[str, str] | None = None,
        ) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            if code >= 400:
                self.close_connection = True
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            # Reload lines are the dev loop's output; per-request access logs would drown them.
            return

    return Handler


def serve_calls(
    host: Host,
    listen: str,
    *,
    max_body_bytes: int = DEFAULT_DEV_MAX_BODY_BYTES,
    allowed_hosts: Iterable[str] = (),
    allow_remote: bool = False,
    workers: int = DEFAULT_DEV_WORKERS,
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
) -> DevServer:
    """Serve plugin calls over HTTP on `listen` (HOST:PORT) on a background thread.

    `POST /call/PLUGIN/EXPORT` with the input as the body answers 200 with the
    output; 422 for a non-zero status (headers `X-Wasmkv-Status` and
    `X-Wasmkv-Status-Name`), 404 for an unknown plugin or export, 500 for a
    trap or timeout (the reason in the body), 413 for a body over
    `max_body_bytes`, 403 for a foreign Host or Origin. `GET /plugins` lists
    the plugins, their versions and entry points as JSON.

    Raises:
        HostError: if `listen` is not loopback and `allow_remote` is False, or it cannot be bound.
    """
    address, _, port_text = listen.rpartition(":")
    address = address.strip("[]")
    if not is_loopback(address) and not allow_remote:
        raise HostError(
            f"refusing to listen on {listen}: it is reachable from other machines; "
            "use a loopback address, or --allow-remote ([dev] allow_remote = true) if you mean it"
        )
    try:
        server = DevServer((address, int(port_text)), http.server.BaseHTTPRequestHandler, workers, request_timeout_s)
    except (OSError, ValueError, OverflowError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise HostError(f"cannot listen on {listen}: {reason}") from exc
    bound_port = int(server.server_address[1])
    names = {name.lower() for name in allowed_hosts} | {address.lower()}
    if is_loopback(address):
        names |= _LOOPBACK_NAMES
    policy = _Policy(frozenset(names), bound_port, max_body_bytes)
    server.policy = policy
    server.RequestHandlerClass = _handler(host, policy)
    threading.Thread(target=server.serve_forever, name="wasmkv-dev-http", daemon=True).start()
    return server
