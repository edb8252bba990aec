"""The `wasmkv serve` command: the configured plugins behind authenticated HTTP, in one or more workers."""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import signal
from pathlib import Path
from typing import Any

from ._cli_common import EXIT_OK, Fail
from ._config import MAX_SERVE_WORKERS, load_config
from ._serve import check_plugin_files, create_app

__all__ = ["add_serve_command"]

_log = logging.getLogger("wasmkv.serve")


def _listen(text: str) -> str:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"must be HOST:PORT, got {text!r}")
    return text


def _workers(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= MAX_SERVE_WORKERS:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to {MAX_SERVE_WORKERS}, got {text!r}")
    return int(text)


def add_serve_command(commands: Any, parent: argparse.ArgumentParser) -> None:
    """Add serve to the `wasmkv` parser."""
    serve = commands.add_parser(
        "serve",
        parents=[parent],
        help="serve the configured plugins over HTTP: bearer tokens, per-tenant limits, metrics (uvicorn)",
    )
    serve.add_argument("--config", type=Path, default=Path("wasmkv.toml"), help="config file (default: wasmkv.toml)")
    serve.add_argument(
        "--listen", type=_listen, help="HOST:PORT (default: [serve] listen, 127.0.0.1:8080); port 0 picks a free one"
    )
    serve.add_argument(
        "--workers", type=_workers, help="worker processes sharing the socket and the store (default: [serve] workers)"
    )
    serve.add_argument(
        "--log-format", choices=("text", "json"), help="log lines as text or one JSON object each ([serve] log_format)"
    )
    serve.set_defaults(run=_serve)


def _serve(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("uvicorn") is None:
        raise Fail("wasmkv serve needs uvicorn: pip install 'wasmkv[serve]'")
    # Until the server's handlers are in, a SIGHUP (a reload asked too early) must not kill the process.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    # uvicorn loads only for this command: every other one starts without it.
    from ._serve_run import bound_url, listen_socket, run_app, supervise, use_logs  # noqa: PLC0415

    config = load_config(args.config)
    settings = config.serve
    listen = args.listen or settings.listen
    workers = args.workers or settings.workers
    log_format = args.log_format or settings.log_format
    verbosity = args.verbose - args.quiet
    use_logs(verbosity, log_format)
    check_plugin_files(config)
    if not settings.tokens:
        _log.warning("%s declares no [[serve.tokens]]: every call will get 401", config.path)
    with listen_socket(listen) as sock:
        url = bound_url(sock)

        def announce(pids: list[int]) -> None:
            # The first line a script waits for: where to send requests (the port, when 0 was asked for).
            plural = "s" if len(pids) > 1 else ""
            shown = ", ".join(map(str, pids))
            print(f"serving {url} with {len(pids)} worker{plural} (pid{plural} {shown})", flush=True)
            print(f"  curl -H 'Authorization: Bearer TOKEN' --data-binary INPUT {url}/v1/plugins/PLUGIN/EXPORT")
            print("SIGHUP reloads the config and plugins, SIGTERM or Ctrl-C drains and stops.", flush=True)

        if workers == 1:
            app = create_app(config)
            run_app(app, sock, on_ready=lambda: announce([os.getpid()]))
            return EXIT_OK
        return supervise(
            sock,
            str(config.path),
            workers=workers,
            verbosity=verbosity,
            log_format=log_format,
            announce=announce,
        )
