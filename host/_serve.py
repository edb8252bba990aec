"""`wasmkv serve`'s ASGI application: plugin calls, tenant records, health and metrics over HTTP.

- `POST /v1/plugins/PLUGIN/EXPORT`: the body is the input; 200 and the output, or a status
  (JSON: 422, 429 for RATE_LIMITED, 503 for BACKEND_UNAVAILABLE), 504 timeout, 500 trap or fuel, 404;
- `GET /v1/tenants/TENANT`: the JSON of `wasmkv tenant show --json`;
- `GET /healthz` (alive), `GET /readyz` (store reachable, plugins loaded, not draining; else 503);
- `GET /metrics`: Prometheus's text format.

It is plain ASGI, without a framework, for two reasons: the app must decide about a body
before reading it (Content-Length against `max_body_bytes`, a chunked body cut off at the
limit, a budget of body bytes held at once), which frameworks hide behind a request object;
and the call route is the product's hot path, here a few dict lookups and two `send`s, with no
routing table, middleware stack or request object in between.

Every input is hostile: bearer tokens are hashed and compared in constant time, names from the
path become neither log lines nor metric labels unescaped or unchecked, and a tenant's calls
are capped in flight (`max_concurrent_calls`) and a plugin's to its `pool_size` while they wait
(in the event loop, not on the host's call threads, so a flood of calls to one plugin never
starves another tenant's plugins of threads).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import os
import re
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any, Final, NamedTuple

from .. import kv
from ..abi import Status, status_name
from ._config import Config, PluginConfig, ServeToken, load_config
from ._errors import (
    HostError,
    LoadError,
    PluginClosed,
    PluginFuelExhausted,
    PluginStatusError,
    PluginTimeout,
    PluginTrap,
    UnknownExport,
    UnknownPlugin,
)
from ._host import Host
from ._plugin import Plugin
from ._sandbox import read_source
from ._serve_metrics import CONTENT_TYPE, INSTALL_HINT, ServeMetrics
from ._tenant_json import tenant_summary
from ._text import safe_name

__all__ = [
    "BODY_TIMEOUT_S",
    "HEAD_TIMEOUT_S",
    "MAX_BUFFERED_BODY_BYTES",
    "MAX_HEADERS",
    "MAX_HEAD_BYTES",
    "ROUTES",
    "ServeApp",
    "check_plugin_files",
    "create_app",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: Once its headers are in, a request has this long to send its whole body (else 408), so a
#: client trickling bytes cannot hold a tenant's call slot or body memory for longer.
BODY_TIMEOUT_S: Final = 30.0
#: Body bytes one worker holds at once, all requests together (at least 2 x `max_body_bytes`):
#: past it a request gets 503 and Retry-After, so many large bodies at once cannot exhaust memory.
MAX_BUFFERED_BODY_BYTES: Final = 256 * 1024 * 1024
#: Headers a request may carry.
MAX_HEADERS: Final = 100
#: A request's line and headers together, in bytes: `wasmkv serve`'s HTTP server refuses more (400).
MAX_HEAD_BYTES: Final = 32 * 1024
#: A connection has this long to send a request's line and headers; a slower one is closed.
HEAD_TIMEOUT_S: Final = 10.0
#: The longest `Authorization` value looked at; longer ones are simply not a valid token.
MAX_AUTHORIZATION_BYTES: Final = 4096
#: How long /readyz waits for the store to answer.
READY_TIMEOUT_S: Final = 5.0
#: How often a call that found its plugin replaced (so it never ran) tries what serves now: reloads in
#: quick succession can replace a plugin again between the lookup and the call, more than once.
_REPLACED_ATTEMPTS: Final = 8
#: Retry-After (seconds) of a 429 or 503: a tenant's rate limit refills in one second.
RETRY_AFTER_S: Final = 1
#: How much of a name from a request goes into a message or a log line.
_ECHO_CHARS: Final = 100

#: The route templates: what metrics and the access log name a request by (never its raw path).
ROUTE_CALL: Final = "/v1/plugins/{plugin}/{export}"
ROUTE_TENANT: Final = "/v1/tenants/{tenant}"
ROUTES: Final = (ROUTE_CALL, ROUTE_TENANT, "/healthz", "/readyz", "/metrics")
_ROUTE_OTHER: Final = "other"

_NAME: Final = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
_OCTETS: Final = b"application/octet-stream"
_JSON: Final = b"application/json"
_NOSNIFF: Final = (b"x-content-type-options", b"nosniff")
_CLOSE: Final = (b"connection", b"close")
_RETRY: Final = (b"retry-after", str(RETRY_AFTER_S).encode())

_log = logging.getLogger("wasmkv.serve")
_access_log = logging.getLogger("wasmkv.serve.access")
_perf = time.perf_counter


class _Answer(NamedTuple):
    status: int
    body: bytes
    content_type: bytes = _JSON
    headers: tuple[tuple[bytes, bytes], ...] = ()


class _Access:
    """What the access log and metrics say about one request (names only once they are checked)."""

    __slots__ = ("export", "plugin", "route", "tenant")

    def __init__(self) -> None:
        self.route = _ROUTE_OTHER
        self.tenant: str | None = None
        self.plugin: str | None = None
        self.export: str | None = None


class _Head(NamedTuple):
    authorization: bytes | None
    #: The declared Content-Length, or None.
    length: int | None
    chunked: bool
    #: Why the headers cannot be served (400), if so.
    problem: str | None


class _Entry:
    """A loaded plugin as the app calls it: its version's entry points, and the gate of its pool."""

    __slots__ = ("exports", "gate", "plugin", "version")

    def __init__(self, plugin: Plugin, version: str, exports: frozenset[str], gate: asyncio.Semaphore) -> None:
        self.plugin = plugin
        self.version = version
        self.exports = exports
        self.gate = gate


class _ClientGone(Exception):
    """The client disconnected before its body was in: nobody to answer."""


def _json(payload: object) -> bytes:
    return json.dumps(payload, ensure_ascii=True).encode() + b"\n"


def _error(code: int, error: str, message: str, *headers: tuple[bytes, bytes], **fields: Any) -> _Answer:
    """A JSON error answer: `{"error": kind, "message": text, ...fields}` with HTTP status `code`."""
    return _Answer(code, _json({"error": error, "message": message, **fields}), _JSON, headers)


def _echo(name: str) -> str:
    """A name from a request, cut and escaped, for a message."""
    return safe_name(name[:_ECHO_CHARS])


def _output_json(output: bytes) -> dict[str, str]:
    try:
        return {"output": output.decode("utf-8")}
    except UnicodeDecodeError:
        return {"output_base64": base64.b64encode(output).decode("ascii")}


def _head(headers: Iterable[tuple[bytes, bytes]]) -> _Head:
    """The headers the app uses, read in one pass; duplicates and malformed lengths are problems."""
    authorization: bytes | None = None
    length: int | None = None
    chunked = False
    problem: str | None = None
    count = 0
    for name, value in headers:
        count += 1
        if name == b"authorization":
            if authorization is not None:
                problem = "more than one Authorization header"
            authorization = value
        elif name == b"content-length":
            stripped = value.strip()
            if not stripped.isdigit() or len(stripped) > 18:
                problem = "malformed Content-Length"
                continue
            declared = int(stripped)
            if length is not None and declared != length:
                problem = "conflicting Content-Length headers"
            length = declared
        elif name == b"transfer-encoding":
            chunked = True
    if count > MAX_HEADERS:
        problem = f"more than {MAX_HEADERS} headers"
    return _Head(authorization, length, chunked, problem)


def _settings(plugin: PluginConfig) -> tuple[object, ...]:
    """What a plugin is loaded with, besides its module: a change needs a new plugin, not a reload."""
    return (
        plugin.tenant,
        plugin.buckets,
        plugin.limits,
        plugin.wasi,
        tuple(sorted(plugin.config.items())),
        plugin.pool_size,
    )


def check_plugin_files(config: Config) -> None:
    """Refuse a config whose plugins' files are missing, naming the first one.

    Raises:
        LoadError: if a plugin's file does not exist.
    """
    for plugin in config.plugins.values():
        if not plugin.file.is_file():
            raise LoadError(f"plugin {plugin.name}: {plugin.file} does not exist (from {config.path})")


class ServeApp:
    """The ASGI application of `wasmkv serve` (see the module docstring for its routes).

    Build one with `create_app`. It owns its `Host`: the ASGI lifespan's shutdown (or
    `close()`) closes it after the server has drained. `reload()` re-reads the config
    file and applies it without failing a request (`wasmkv serve` runs it on SIGHUP).
    """

    def __init__(self, config: Config, host: Host, metrics: ServeMetrics | None = None) -> None:
        self.config = config
        self.host = host
        self.metrics = metrics
        #: Set when the server starts draining (SIGTERM): /readyz answers 503 from then on.
        self.draining = False
        # Calls in flight per tenant, in this worker; touched only on the event loop's thread.
        self._inflight: dict[str, int] = {}
        self._entries: dict[str, _Entry] = {}
        self._buffered = 0
        self._loaded: dict[str, PluginConfig] = dict(config.plugins)
        self._reload_lock = threading.Lock()
        self._tasks: set[asyncio.Task[bool]] = set()
        self._closed = False
        self._use(config)

    @classmethod
    def from_config(cls, config: Config, *, compiler: str = "cranelift") -> ServeApp:
        """An app over a new host that loads every plugin of `config`; see `create_app`."""
        check_plugin_files(config)
        host = Host.from_loaded_config(config, compiler=compiler)
        try:
            app = cls(config, host)
            app.metrics = ServeMetrics.create(host.store, app._metric_tenants)
            if app.metrics is not None:
                host.add_observer(app.metrics)
        except BaseException:
            host.close()
            raise
        return app

    def _use(self, config: Config) -> None:
        """Take the settings of `[serve]` and `max_concurrent_calls` (each swap is atomic)."""
        serve = config.serve
        self._tokens: tuple[ServeToken, ...] = serve.tokens
        self._max_body = serve.max_body_bytes
        self._max_buffered = max(MAX_BUFFERED_BODY_BYTES, 2 * serve.max_body_bytes)
        self._max_calls: dict[str, int] = dict(config.max_concurrent_calls)
        self._auth_health = serve.auth_health
        self._auth_metrics = serve.auth_metrics

    def _metric_tenants(self) -> list[str]:
        return [*self.config.tenants, *(plugin.tenant.name for plugin in self.host.plugins.values())]

    # -- ASGI ---------------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "websocket":
            await receive()  # the connect event; closing before accepting refuses it (403)
            await send({"type": "websocket.close", "code": 1008})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                # The server has drained its requests by now: close the plugins, then the store.
                self.draining = True
                await asyncio.to_thread(self.close)
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = _perf()
        access = _Access()
        try:
            answer: _Answer | None = await self._route(scope, receive, access)
        except _ClientGone:
            answer = None
        except Exception as exc:
            # A host bug, never the client's: log it whole, answer one line, keep serving.
            _log.exception(
                "internal error answering %s %s: %s: %s",
                scope.get("method"),
                _echo(str(scope.get("path"))),
                type(exc).__name__,
                exc,
            )
            answer = _error(500, "internal", "internal error; the server log has the details")
        status = 499 if answer is None else answer.status  # nginx's code for "the client went away"
        if answer is not None:
            headers = [
                (b"content-type", answer.content_type),
                (b"content-length", str(len(answer.body)).encode()),
                _NOSNIFF,
                *answer.headers,
            ]
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": answer.body})
        if self.metrics is not None:
            self.metrics.request(access.route, status)
        if _access_log.isEnabledFor(logging.INFO):
            ms = (_perf() - started) * 1000
            method = str(scope.get("method", ""))[:16]
            path = _echo(str(scope.get("path", "")))
            fields = {"tenant": access.tenant, "plugin": access.plugin, "export": access.export}
            named = "".join(f" {key}={value}" for key, value in fields.items() if value is not None)
            _access_log.info(
                "%s %s %d %.1f ms%s",
                method,
                path,
                status,
                ms,
                safe_name(named),
                extra={"method": method, "path": path, "status": status, "ms": round(ms, 3), **fields},
            )

    async def _route(self, scope: Scope, receive: Receive, access: _Access) -> _Answer:
        path: str = scope["path"]
        root: str = scope.get("root_path", "")
        if root and path.startswith(root):  # mounted under a prefix by another ASGI server
            path = path[len(root) :]
        if path.startswith("/v1/plugins/"):
            return await self._call(scope, receive, access, path[len("/v1/plugins/") :])
        if path.startswith("/v1/tenants/"):
            return await self._tenant(scope, access, path[len("/v1/tenants/") :])
        if path in ("/healthz", "/readyz", "/metrics"):
            access.route = path
            return await self._operations(scope, path)
        return _error(404, "not_found", "no such route; see /v1/plugins/PLUGIN/EXPORT, /v1/tenants/TENANT")

    # -- auth ---------------------------------------------------------------------------------------

    def _token(self, authorization: bytes | None) -> ServeToken | None:
        """The configured token `Authorization: Bearer TOKEN` presents, or None."""
        if authorization is None or len(authorization) > MAX_AUTHORIZATION_BYTES:
            return None
        scheme, _, credentials = authorization.partition(b" ")
        credentials = credentials.strip(b" \t")
        if scheme.lower() != b"bearer" or not credentials:
            return None
        digest = hashlib.sha256(credentials).hexdigest()
        found = None
        for token in self._tokens:  # every one compared, in constant time, so timing says nothing
            if hmac.compare_digest(token.sha256, digest):
                found = token
        return found

    @staticmethod
    def _unauthorized(head: _Head) -> _Answer:
        challenge = b"Bearer" if head.authorization is None else b'Bearer error="invalid_token"'
        message = "send Authorization: Bearer TOKEN" if head.authorization is None else "the token is not valid"
        return _error(401, "unauthorized", message, (b"www-authenticate", challenge))

    @staticmethod
    def _forbidden(tenant: str) -> _Answer:
        return _error(403, "forbidden", f"the token does not grant tenant {tenant}")

    # -- POST /v1/plugins/PLUGIN/EXPORT ---------------------------------------------------------------

    async def _call(self, scope: Scope, receive: Receive, access: _Access, rest: str) -> _Answer:
        access.route = ROUTE_CALL
        if scope["method"] != "POST":
            return _error(405, "method_not_allowed", "call a plugin with POST", (b"allow", b"POST"))
        head = _head(scope["headers"])
        # Every refusal before the body is read closes the connection: the body is never read.
        unread = (_CLOSE,) if head.chunked or (head.length or 0) > 0 else ()
        if head.problem is not None:
            return _error(400, "bad_request", head.problem, _CLOSE)
        token = self._token(head.authorization)
        if token is None:
            answer = self._unauthorized(head)
            return answer._replace(headers=answer.headers + unread)
        if head.length is not None and head.length > self._max_body:
            return _error(413, "too_large", f"the body is over max_body_bytes ({self._max_body})", _CLOSE)
        name, _, export = rest.partition("/")
        try:
            plugin = self.host.plugin(name) if _NAME.match(name) else None
        except UnknownPlugin:
            plugin = None
        if plugin is None:
            return _error(404, "not_found", f"no plugin {_echo(name)!r}", *unread)
        access.plugin = name
        tenant = access.tenant = plugin.tenant.name
        if not token.grants(tenant):
            return self._forbidden(tenant)._replace(headers=unread)
        entry = self._entry(plugin)
        if export not in entry.exports:
            # Checked here so that names from requests never reach the host's per-export counters.
            return _error(404, "not_found", f"plugin {name} has no entry point {_echo(export)!r}", *unread)
        access.export = export
        limit = self._max_calls.get(tenant)
        inflight = self._inflight
        running = inflight.get(tenant, 0)
        if limit is not None and running >= limit:
            return _error(
                429,
                "too_many_calls",
                f"tenant {tenant} has {limit} calls in flight (max_concurrent_calls); retry later",
                _RETRY,
                *unread,
            )
        inflight[tenant] = running + 1
        held = 0
        try:
            body = await self._read_body(receive, head)
            if isinstance(body, _Answer):
                return body
            held = len(body) if head.length is None else head.length
            return await self._run(entry, name, export, body, token)
        finally:
            left = inflight[tenant] - 1
            if left:
                inflight[tenant] = left
            else:
                del inflight[tenant]
            self._buffered -= held

    def _entry(self, plugin: Plugin) -> _Entry:
        entry = self._entries.get(plugin.name)
        # The version is read before the entry points: a reload in between is seen at the next call.
        version = plugin.version
        if entry is not None and entry.plugin is plugin and entry.version == version:
            return entry
        same = entry is not None and entry.plugin is plugin
        gate = entry.gate if entry is not None and same else asyncio.Semaphore(plugin.pool_size)
        entry = self._entries[plugin.name] = _Entry(plugin, version, frozenset(plugin.exports), gate)
        return entry

    async def _read_body(self, receive: Receive, head: _Head) -> bytes | _Answer:
        """The whole body, or the answer refusing it; a body's bytes stay in `_buffered` (the caller releases them)."""
        limit = self._max_body
        declared = head.length
        if declared:
            if self._buffered + declared > self._max_buffered:
                return self._busy(_CLOSE)
            self._buffered += declared
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(BODY_TIMEOUT_S):
                while True:
                    message = await receive()
                    if message["type"] != "http.request":
                        raise _ClientGone
                    chunk: bytes = message.get("body", b"")
                    if chunk:
                        size += len(chunk)
                        if size > limit:
                            # A chunked body (or one longer than declared): stop reading at the limit.
                            self._release(declared, size - len(chunk))
                            return _error(413, "too_large", f"the body is over max_body_bytes ({limit})", _CLOSE)
                        if declared is None:
                            if self._buffered + len(chunk) > self._max_buffered:
                                self._release(declared, size - len(chunk))
                                return self._busy(_CLOSE)
                            self._buffered += len(chunk)
                        chunks.append(chunk)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            self._release(declared, size)
            return _error(408, "timeout", f"the body did not arrive within {BODY_TIMEOUT_S:g} s", _CLOSE)
        except BaseException:
            self._release(declared, size)
            raise
        if declared is not None and size != declared:
            self._release(declared, size)
            return _error(400, "bad_request", "the body is shorter than its Content-Length", _CLOSE)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _release(self, declared: int | None, read: int) -> None:
        self._buffered -= declared if declared is not None else read

    def _busy(self, *headers: tuple[bytes, bytes]) -> _Answer:
        return _error(503, "busy", "this worker holds too many request bodies; retry later", _RETRY, *headers)

    async def _run(self, entry: _Entry, name: str, export: str, body: bytes, token: ServeToken) -> _Answer:
        for attempt in range(_REPLACED_ATTEMPTS):
            plugin = entry.plugin
            try:
                async with entry.gate:
                    output = await plugin.acall(export, body)
                return _Answer(200, output, _OCTETS)
            except PluginClosed:
                # A reload with new settings replaced the plugin (or removed it) after it was looked
                # up: the call never ran, so it is safe to make it once more on what serves now.
                if attempt == _REPLACED_ATTEMPTS - 1 or self.draining:
                    return _error(503, "unavailable", f"plugin {name} is being replaced; retry", _RETRY)
                try:
                    plugin = self.host.plugin(name)
                except UnknownPlugin:
                    return _error(404, "not_found", f"no plugin {name!r}")
                if not token.grants(plugin.tenant.name):
                    return self._forbidden(plugin.tenant.name)
                entry = self._entry(plugin)
                if export not in entry.exports:
                    return _error(404, "not_found", f"plugin {name} has no entry point {_echo(export)!r}")
            except PluginStatusError as exc:
                return self._status(exc)
            except PluginTimeout as exc:
                return _error(504, "timeout", str(exc))
            except PluginFuelExhausted as exc:
                # 500, not 504: fuel counts instructions, so the same input would run out again;
                # a retry cannot help, unlike a deadline that a busy machine may have caused.
                return _error(500, "fuel_exhausted", str(exc), reason=exc.reason)
            except PluginTrap as exc:
                return _error(500, "trap", str(exc), reason=exc.reason)
            except UnknownExport as exc:  # the export went away in a reload just now
                return _error(404, "not_found", str(exc))
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _status(exc: PluginStatusError) -> _Answer:
        status = exc.status
        fields: dict[str, Any] = {"status": status, "name": status_name(status)}
        if exc.output:
            fields.update(_output_json(exc.output))
        if status == Status.RATE_LIMITED:
            return _error(429, "status", str(exc), _RETRY, **fields)
        if status == Status.BACKEND_UNAVAILABLE:
            # The store, not the request: a retry may well succeed.
            return _error(503, "status", str(exc), _RETRY, **fields)
        return _error(422, "status", str(exc), **fields)

    # -- GET /v1/tenants/TENANT ----------------------------------------------------------------------

    async def _tenant(self, scope: Scope, access: _Access, name: str) -> _Answer:
        access.route = ROUTE_TENANT
        if scope["method"] not in ("GET", "HEAD"):
            return _error(405, "method_not_allowed", "read a tenant with GET", (b"allow", b"GET, HEAD"))
        head = _head(scope["headers"])
        if head.problem is not None:
            return _error(400, "bad_request", head.problem, _CLOSE)
        token = self._token(head.authorization)
        if token is None:
            return self._unauthorized(head)
        if not _NAME.match(name):
            return _error(404, "not_found", f"no tenant {_echo(name)!r}")
        access.tenant = name
        if not token.grants(name):
            return self._forbidden(name)
        try:
            summary = await asyncio.to_thread(self._tenant_json, name)
        except kv.KvError as exc:
            return _error(503, "unavailable", f"cannot read the store: {exc}", _RETRY)
        if summary is None:
            return _error(404, "not_found", f"no tenant {name!r}")
        return _Answer(200, json.dumps(summary, indent=2, ensure_ascii=False).encode() + b"\n")

    def _tenant_json(self, name: str) -> dict[str, Any] | None:
        store = self.host.store
        if name not in self.config.tenants and name not in store.tenants():
            return None
        return tenant_summary(store, name)

    # -- operations ---------------------------------------------------------------------------------

    async def _operations(self, scope: Scope, path: str) -> _Answer:
        if scope["method"] not in ("GET", "HEAD"):
            return _error(405, "method_not_allowed", f"use GET {path}", (b"allow", b"GET, HEAD"))
        needs_token = self._auth_metrics if path == "/metrics" else self._auth_health
        if needs_token:
            head = _head(scope["headers"])
            if head.problem is not None:
                return _error(400, "bad_request", head.problem, _CLOSE)
            if self._token(head.authorization) is None:
                return self._unauthorized(head)
        if path == "/healthz":
            return _Answer(200, _json({"status": "ok"}))
        if path == "/readyz":
            problem = await self._not_ready()
            if problem is not None:
                return _Answer(503, _json({"ready": False, "reason": problem}))
            return _Answer(200, _json({"ready": True}))
        if self.metrics is None:
            return _Answer(501, INSTALL_HINT.encode(), b"text/plain; charset=utf-8")
        text = await asyncio.to_thread(self.metrics.render)
        return _Answer(200, text, CONTENT_TYPE.encode())

    async def _not_ready(self) -> str | None:
        """Why this worker should get no traffic now, or None."""
        if self.draining or self._closed:
            return "draining"
        missing = sorted(set(self._loaded) - set(self.host.plugins))
        if missing:
            return f"plugins not loaded: {', '.join(missing)}"
        probe = next(iter(self.config.tenants), "default")
        try:
            await asyncio.wait_for(asyncio.to_thread(self.host.store.engine.tenant_quota, probe), READY_TIMEOUT_S)
        except TimeoutError:
            return f"the store did not answer within {READY_TIMEOUT_S:g} s"
        except kv.KvError as exc:
            return f"the store is unreachable: {exc}"
        return None

    # -- reload -------------------------------------------------------------------------------------

    def reload(self) -> bool:
        """Re-read the config file and apply it; True if everything in it now serves.

        New plugins load, removed ones unload, a plugin whose settings changed is replaced, one
        whose module changed swaps it (calls in flight finish on the old version; none fails);
        tokens and limits of `[serve]` and `max_concurrent_calls` apply at once. A config that
        does not load changes nothing; a plugin that does not load keeps its old version
        serving. Each failure is one log line.
        """
        with self._reload_lock:
            if self._closed:
                _log.warning("reload ignored: the server is shutting down")
                return False
            started = time.monotonic()
            try:
                new = load_config(self.config.path)
                for tenant, quota in new.tenants.items():
                    self.host.store.ensure_tenant(tenant, quota)
            except (HostError, kv.KvError) as exc:
                _log.error("reload refused, still serving the previous config: %s", safe_name(str(exc)))
                return False
            self._restart_only(new)
            changed: list[str] = []
            failed: list[str] = []
            for name in sorted(set(self._loaded) - set(new.plugins)):
                self.host.unload(name)
                del self._loaded[name]
                self._entries.pop(name, None)
                changed.append(f"-{name}")
            for name, wanted in new.plugins.items():
                try:
                    what = self._apply(wanted)
                except (HostError, kv.KvError, ValueError, OSError) as exc:
                    failed.append(name)
                    current = self.host.plugins.get(name)
                    still = f"still serving {current.version[:12]}" if current is not None else "not loaded"
                    _log.error("reload of plugin %s failed, %s: %s", name, still, safe_name(str(exc)))
                    continue
                if what is not None:
                    changed.append(what)
            self.config = new
            self._use(new)
            ms = (time.monotonic() - started) * 1000
            _log.info(
                "reloaded %s in %.0f ms: %s%s",
                new.path,
                ms,
                ", ".join(changed) or "no plugin changed",
                f"; failed: {', '.join(failed)}" if failed else "",
            )
            return not failed

    def _apply(self, wanted: PluginConfig) -> str | None:
        """Bring one plugin to `wanted`; what changed (for the log line), or None."""
        name = wanted.name
        current = self.host.plugins.get(name)
        loaded = self._loaded.get(name)
        if current is None or loaded is None or _settings(loaded) != _settings(wanted):
            try:
                plugin = self.host.load_configured(wanted)
            except BaseException:
                if current is not None and self.metrics is not None:
                    self.metrics.reloaded(name, current.tenant.name, "failed")
                raise
            if current is not None and self.metrics is not None:
                self.metrics.reloaded(name, plugin.tenant.name, "ok")
            self._loaded[name] = wanted
            return f"+{name} {plugin.version[:12]}" if current is None else f"{name} {plugin.version[:12]} (settings)"
        wasm, _ = read_source(wanted.file)
        if wanted.file == loaded.file and hashlib.sha256(wasm).hexdigest() == current.version:
            return None
        # The bytes just hashed, not the path: what loads is what was compared.
        self.host.reload(name, wasm)
        self._loaded[name] = wanted
        return f"{name} {current.version[:12]}"

    def _restart_only(self, new: Config) -> None:
        old = self.config
        differing = [
            label
            for label, before, after in (
                ("[store]", old.store, new.store),
                ("[cache]", old.cache_dir, new.cache_dir),
                ("[serve] listen", old.serve.listen, new.serve.listen),
                ("[serve] workers", old.serve.workers, new.serve.workers),
                ("[serve] log_format", old.serve.log_format, new.serve.log_format),
            )
            if before != after
        ]
        if differing:
            _log.warning("reload: %s changed; that takes a restart", ", ".join(differing))

    async def areload(self) -> bool:
        """`reload`, awaited: it runs on a thread, never on the event loop."""
        return await asyncio.to_thread(self.reload)

    def reload_soon(self) -> None:
        """Start `areload` as a task of the running loop (a SIGHUP handler's way in)."""
        task = asyncio.get_running_loop().create_task(self.areload())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- lifetime -----------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the host: its plugins (after their running calls) and its store; idempotent."""
        if self._closed:
            return
        self._closed = True
        self.draining = True
        self.host.close()

    def __enter__(self) -> ServeApp:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def create_app(config: Config | str | os.PathLike[str], *, compiler: str = "cranelift") -> ServeApp:
    """The ASGI application `wasmkv serve` runs, for any ASGI server: every plugin of `config` loaded.

    `config` is a loaded `Config` or the path of a `wasmkv.toml`. The app owns its host and
    store: the ASGI lifespan's shutdown closes them (or call `app.close()`). Metrics need
    prometheus-client (`pip install 'wasmkv[serve]'`); without it /metrics says so.

    Raises:
        ConfigError: if the file is invalid.
        LoadError: if a plugin's file is missing or its module does not load.
        kv.KvError: if the store cannot be opened.
    """
    if not isinstance(config, Config):
        config = load_config(config)
    return ServeApp.from_config(config, compiler=compiler)
