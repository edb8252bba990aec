"""Running `wasmkv serve`: uvicorn in this process, or a small supervisor of worker processes on one socket.

The socket is bound once, here, so a port in use is one line before anything loads. With
one worker the app runs in this process. With N, a supervisor (ours, not uvicorn's, whose
SIGHUP restarts workers) starts N spawned processes that each run uvicorn on the same
socket, forwards SIGHUP (each worker reloads in place) and SIGTERM/SIGINT (each drains,
then the supervisor exits), and restarts a worker that died. Workers share the store
(LMDB is multi-process, Redis is shared), so quotas stay exact across them.

uvicorn is imported by this module: import it only to run a server.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from types import FrameType
from typing import Any, Final

import uvicorn

from .. import kv
from ._cli_common import EXIT_USAGE, JsonLines, configure_logging
from ._config import load_config
from ._errors import HostError
from ._serve import MAX_HEAD_BYTES, ServeApp, create_app
from ._text import safe_name

try:
    from ._serve_http import BoundedHttpTools

    _PROTOCOL: type[asyncio.Protocol] | str = BoundedHttpTools
except ImportError:  # pragma: no cover - uvicorn[standard] brings httptools; h11 bounds a head itself
    _PROTOCOL = "h11"

__all__ = ["DRAIN_TIMEOUT_S", "bound_url", "listen_socket", "run_app", "supervise", "use_logs"]

#: SIGTERM waits this long for requests in flight (a plugin call ends by its deadline), then cancels them.
DRAIN_TIMEOUT_S: Final = 30
#: Connections (and requests) one worker serves at once; uvicorn answers 503 past it.
MAX_CONNECTIONS: Final = 2048
#: How long a worker that died is left dead before its replacement, doubling after each quick death.
RESTART_BACKOFF_S: Final = (0.5, 30.0)
#: A worker that served this long before it died is replaced at once.
_HEALTHY_RUN_S: Final = 10.0

_log = logging.getLogger("wasmkv.serve")


def listen_socket(listen: str) -> socket.socket:
    """A listening TCP socket on `listen` (HOST:PORT; port 0 picks a free one).

    Raises:
        HostError: if it cannot be bound (a port in use, an address not of this machine).
    """
    address, _, port_text = listen.rpartition(":")
    address = address.strip("[]")
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        return socket.create_server((address, int(port_text)), family=family, backlog=2048)
    except (OSError, ValueError, OverflowError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise HostError(f"cannot listen on {listen}: {reason}") from exc


def bound_url(sock: socket.socket) -> str:
    """`http://HOST:PORT` of a bound socket (the port it got, when 0 was asked for)."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def use_logs(verbosity: int, log_format: str) -> None:
    """wasmkv's logs on stderr (as `configure_logging`), as text or one JSON object a line; uvicorn's errors too."""
    configure_logging(verbosity)
    root = logging.getLogger("wasmkv")
    if log_format == "json":
        for handler in root.handlers:
            handler.setFormatter(JsonLines())
    # uvicorn's own lines (a malformed request is a warning each) only from -v: clients must not flood the log.
    server = logging.getLogger("uvicorn")
    server.handlers[:] = list(root.handlers)
    server.setLevel(logging.DEBUG if verbosity > 0 else logging.ERROR)
    server.propagate = False


def _server_config(app: ServeApp) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        http=_PROTOCOL,
        ws="none",
        lifespan="on",
        log_config=None,
        access_log=False,  # the app writes its own, with tenant, plugin and export
        proxy_headers=False,  # nothing here uses the client's address; trust no forwarding header
        server_header=False,
        limit_concurrency=MAX_CONNECTIONS,
        timeout_graceful_shutdown=DRAIN_TIMEOUT_S,
        h11_max_incomplete_event_size=MAX_HEAD_BYTES,
    )


class _Server(uvicorn.Server):
    """uvicorn's server with wasmkv's signals: SIGTERM/SIGINT drain, SIGHUP reloads the app's config.

    uvicorn re-raises a captured SIGTERM after its shutdown (so the process would die of it);
    here a drained server returns, and the process exits 0.
    """

    def __init__(self, app: ServeApp, *, worker: bool = False, on_ready: Callable[[], None] | None = None) -> None:
        super().__init__(_server_config(app))
        self.app = app
        self._worker = worker
        self._on_ready = on_ready
        self._loop: asyncio.AbstractEventLoop | None = None

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        # A worker ignores SIGINT: Ctrl-C reaches every process of the terminal, and the supervisor
        # turns it into one SIGTERM per worker (a second SIGINT would otherwise force an exit).
        wanted: dict[int, Any] = {
            signal.SIGTERM: self._exit,
            signal.SIGINT: signal.SIG_IGN if self._worker else self._exit,
            signal.SIGHUP: self._hangup,
        }
        previous = {sig: signal.signal(sig, handler) for sig, handler in wanted.items()}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _exit(self, sig: int, frame: FrameType | None) -> None:
        self.app.draining = True
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True  # a second Ctrl-C stops waiting for requests
        self.should_exit = True

    def _hangup(self, sig: int, frame: FrameType | None) -> None:
        if self._loop is None:
            _log.warning("SIGHUP while starting: the config just read is the one serving")
            return
        self._loop.call_soon_threadsafe(self.app.reload_soon)

    def stop_soon(self) -> None:
        """Drain and stop, from any thread."""
        self.app.draining = True
        self.should_exit = True  # the server's main loop looks at it every 0.1 s

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets=sockets)
        if self.started and self._on_ready is not None:
            self._on_ready()


def run_app(app: ServeApp, sock: socket.socket, *, on_ready: Callable[[], None] | None = None) -> None:
    """Serve `app` on `sock` in this process until SIGTERM or SIGINT, then drain and close it."""
    server = _Server(app, on_ready=on_ready)
    try:
        server.run(sockets=[sock])
    finally:
        app.close()  # the lifespan closed it unless startup failed


# -- worker processes ----------------------------------------------------------------------------


def _worker_main(conn: Connection, sock: socket.socket, config_path: str, verbosity: int, log_format: str) -> None:
    """A worker process: load the config's plugins, tell the supervisor, serve until told to stop."""
    # Until the server's own handlers are in, a SIGHUP must not kill a worker that is loading.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})  # blocked by the supervisor until now
    use_logs(verbosity, log_format)
    try:
        app = create_app(config_path)
    except (HostError, kv.KvError, OSError) as exc:
        conn.send(("failed", safe_name(str(exc))))
        sys.exit(EXIT_USAGE)
    server = _Server(app, worker=True, on_ready=lambda: conn.send(("ready", os.getpid())))

    def watch_supervisor() -> None:
        # The supervisor never writes: the end of the pipe means it has gone, and so must this worker.
        with contextlib.suppress(EOFError, OSError):
            while True:
                conn.recv()
        server.stop_soon()

    threading.Thread(target=watch_supervisor, name="wasmkv-serve-supervisor", daemon=True).start()
    try:
        server.run(sockets=[sock])
    finally:
        app.close()


class _Worker:
    """One worker process as the supervisor sees it."""

    def __init__(self, process: multiprocessing.process.BaseProcess, conn: Connection) -> None:
        self.process = process
        self.conn: Connection | None = conn
        self.started_at = time.monotonic()
        self.ready = False
        self.failure: str | None = None
        self.reload_pending = False

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    def read(self) -> None:
        """Take the messages the worker sent: ("ready", pid) or ("failed", line)."""
        conn = self.conn
        if conn is None:
            return
        try:
            while conn.poll():
                kind, value = conn.recv()
                if kind == "ready":
                    self.ready = True
                elif kind == "failed":
                    self.failure = str(value)
        except (EOFError, OSError):
            conn.close()
            self.conn = None


class _Supervisor:
    def __init__(
        self,
        sock: socket.socket,
        config_path: str,
        workers: int,
        verbosity: int,
        log_format: str,
        announce: Callable[[list[int]], None],
        wakeup: socket.socket,
    ) -> None:
        self._sock = sock
        self._config_path = config_path
        self._count = workers
        self._args = (config_path, verbosity, log_format)
        self._announce = announce
        self._wakeup = wakeup
        self._context = multiprocessing.get_context("spawn")
        self._slots: list[_Worker | None] = [None] * workers
        self._restart_at: dict[int, float] = {}
        self._backoff: dict[int, float] = {}
        self.signals: list[int] = []
        self._stopping = False
        self._announced = False
        self._status = 0
        #: Why the workers could not start, if they could not.
        self.failure: str | None = None

    def _start(self, slot: int) -> None:
        parent, child = self._context.Pipe()
        process = self._context.Process(
            target=_worker_main, args=(child, self._sock, *self._args), name=f"wasmkv-serve-{slot}", daemon=False
        )
        # The worker starts with SIGHUP blocked (a reload it cannot take yet must not kill it; it
        # unblocks once it ignores it) and SIGINT ignored (Ctrl-C reaches the whole process group,
        # and the supervisor turns it into SIGTERM). Blocked here, a SIGHUP waits for the supervisor.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
        interrupt = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            process.start()
        finally:
            signal.signal(signal.SIGINT, interrupt)
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        child.close()  # only the worker holds its end: its death is the end of this pipe
        self._slots[slot] = _Worker(process, parent)

    def run(self) -> int:
        for slot in range(self._count):
            self._start(slot)
        while True:
            live = [worker for worker in self._slots if worker is not None]
            if self._stopping and not live:
                return self._status
            waitables: list[Any] = [self._wakeup]
            for worker in live:
                waitables.append(worker.process.sentinel)
                if worker.conn is not None:
                    waitables.append(worker.conn)
            timeout = 1.0
            if self._restart_at and not self._stopping:
                timeout = max(0.0, min(min(self._restart_at.values()) - time.monotonic(), timeout))
            multiprocessing.connection.wait(waitables, timeout)
            with contextlib.suppress(BlockingIOError):
                while self._wakeup.recv(4096):
                    pass
            self._handle_signals()
            for slot, slot_worker in enumerate(self._slots):
                if slot_worker is not None:
                    self._check(slot, slot_worker)
            self._restart_due()
            if not self._announced and all(worker is not None and worker.ready for worker in self._slots):
                self._announced = True
                self._announce([worker.pid for worker in self._slots if worker is not None])

    def _handle_signals(self) -> None:
        while self.signals:
            sig = self.signals.pop(0)
            if sig == signal.SIGHUP:
                self._reload()
            elif not self._stopping:
                self._stop(f"{signal.Signals(sig).name}: draining the workers")

    def _stop(self, why: str | None) -> None:
        self._stopping = True
        self._restart_at.clear()
        if why is not None:
            _log.info("%s", why)
        for worker in self._slots:
            if worker is not None:
                worker.signal(signal.SIGTERM)

    def _reload(self) -> None:
        try:
            load_config(self._config_path)
        except HostError as exc:
            _log.error("reload refused, still serving the previous config: %s", safe_name(str(exc)))
            return
        for worker in self._slots:
            if worker is None:
                continue
            if worker.ready:
                worker.signal(signal.SIGHUP)
            else:
                worker.reload_pending = True  # its SIGHUP handler is not in yet: send it once it is

    def _check(self, slot: int, worker: _Worker) -> None:
        was_ready = worker.ready
        worker.read()
        if worker.ready and not was_ready and worker.reload_pending:
            worker.reload_pending = False
            worker.signal(signal.SIGHUP)
        if worker.process.is_alive():
            return
        worker.process.join()
        worker.read()
        if worker.conn is not None:
            worker.conn.close()
        self._slots[slot] = None
        code = worker.process.exitcode
        with contextlib.suppress(ImportError):
            importlib.import_module("prometheus_client.multiprocess").mark_process_dead(worker.pid)
        if self._stopping:
            if code != 0 and worker.ready:
                _log.warning("worker %d exited with %s while draining", worker.pid, code)
                self._status = 1
            return
        if not self._announced:
            # A worker that cannot start now will not start on a retry either: say why and stop.
            self.failure = worker.failure or f"a worker exited with {code} while starting"
            self._status = EXIT_USAGE
            self._stop(None)  # the command says why, in its one line
            return
        ran = time.monotonic() - worker.started_at
        if ran > _HEALTHY_RUN_S and worker.ready:
            delay = 0.0
            self._backoff.pop(slot, None)
        else:
            delay = self._next_backoff(slot)  # dying at once again and again: do not spin
        detail = f": {worker.failure}" if worker.failure else ""
        _log.error("worker %d died (exit code %s)%s; starting another in %.1f s", worker.pid, code, detail, delay)
        self._restart_at[slot] = time.monotonic() + delay

    def _next_backoff(self, slot: int) -> float:
        low, high = RESTART_BACKOFF_S
        delay = min(high, self._backoff.get(slot, low / 2) * 2)
        self._backoff[slot] = delay
        return delay

    def _restart_due(self) -> None:
        if self._stopping:
            return
        now = time.monotonic()
        for slot, when in list(self._restart_at.items()):
            if when <= now:
                del self._restart_at[slot]
                self._start(slot)


def supervise(
    sock: socket.socket,
    config_path: str,
    *,
    workers: int,
    verbosity: int,
    log_format: str,
    announce: Callable[[list[int]], None],
) -> int:
    """Run `workers` worker processes on `sock` until SIGTERM or SIGINT; the exit status.

    Each worker loads `config_path` itself and serves `create_app`'s app. `announce` is told
    the workers' pids once every one is ready. Prometheus's multiprocess files live in a fresh
    directory for this run (`PROMETHEUS_MULTIPROC_DIR`), removed at exit.

    Raises:
        HostError: if the workers cannot start (the first one's reason, in one line).
    """
    metrics_dir = tempfile.mkdtemp(prefix="wasmkv-serve-metrics-")
    saved_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir  # inherited by the workers, read at their import
    wakeup, wakeup_in = socket.socketpair()
    wakeup.setblocking(False)
    wakeup_in.setblocking(False)
    supervisor = _Supervisor(sock, config_path, workers, verbosity, log_format, announce, wakeup)

    def on_signal(sig: int, frame: FrameType | None) -> None:
        supervisor.signals.append(sig)  # handled by the loop, woken by the wakeup fd

    handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    previous = {sig: signal.signal(sig, on_signal) for sig in handled}
    previous_fd = signal.set_wakeup_fd(wakeup_in.fileno(), warn_on_full_buffer=False)
    try:
        status = supervisor.run()
    finally:
        signal.set_wakeup_fd(previous_fd)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        wakeup.close()
        wakeup_in.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)
        if saved_dir is None:
            os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        else:
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = saved_dir
    if supervisor.failure is not None:
        raise HostError(supervisor.failure)
    return status
