"""The `wasmkv` commands that run plugins: `run` (one call), `dev` (the hot-reload loop) and `sdk`."""

from __future__ import annotations

import argparse
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..abi import sdk_paths
from ._cli_common import (
    EXIT_OK,
    EXIT_PLUGIN_FAILED,
    EXIT_PLUGIN_STATUS,
    EXIT_USAGE,
    Fail,
    add_store_options,
    open_store,
)
from ._config import Config, load_config
from ._dev import DevLoop, run_build
from ._devhttp import is_loopback, serve_calls
from ._errors import PluginError, PluginStatusError, UnknownExport
from ._host import Host
from ._limits import DEFAULT_DEADLINE_MS, DEFAULT_MEMORY_BYTES, DEFAULT_TABLE_ELEMENTS, Limits
from ._text import safe_name

__all__ = ["add_plugin_commands"]


def _positive(unit: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if not text.isdigit() or int(text) < 1:
            raise argparse.ArgumentTypeError(f"must be a positive whole number of {unit}, got {text!r}")
        return int(text)

    return parse


def add_plugin_commands(commands: Any, parent: argparse.ArgumentParser) -> None:
    """Add run, dev and sdk to the `wasmkv` parser."""
    run = commands.add_parser("run", parents=[parent], help="call a plugin's entry point once")
    run.add_argument("plugin", help="a .wasm or .wat file")
    run.add_argument("--call", metavar="EXPORT", help="entry point to call (default: the only one)")
    run.add_argument("--input", metavar="TEXT|@FILE", default="", help="the call's input: text, or @path to a file")
    run.add_argument("--tenant", default="default", help="tenant the plugin runs as (default: default)")
    run.add_argument("--bucket", action="append", help="bucket the plugin may open (repeatable; default: default)")
    run.add_argument(
        "--deadline-ms", type=_positive("milliseconds"), default=DEFAULT_DEADLINE_MS, help="wall-clock limit"
    )
    run.add_argument("--memory-bytes", type=_positive("bytes"), default=DEFAULT_MEMORY_BYTES, help="memory ceiling")
    run.add_argument("--fuel", type=_positive("instructions"), help="instruction budget (default: unmetered)")
    run.add_argument(
        "--table-elements", type=_positive("elements"), default=DEFAULT_TABLE_ELEMENTS, help="table size ceiling"
    )
    run.add_argument(
        "--wasi", action="store_true", help="let the plugin import WASI (its stdout and stderr go to its log)"
    )
    run.add_argument("--raw", action="store_true", help="print the output exactly, without a trailing newline")
    add_store_options(run)
    run.set_defaults(run=_run)

    dev = commands.add_parser(
        "dev", parents=[parent], help="load the configured plugins, hot-reload them, serve calls on 127.0.0.1"
    )
    dev.add_argument("--config", type=Path, default=Path("wasmkv.toml"), help="config file (default: wasmkv.toml)")
    dev.add_argument("--listen", help="HOST:PORT for the call endpoint (default: [dev] listen, 127.0.0.1:8737)")
    dev.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a listen address other machines can reach ([dev] allow_remote); calls are unauthenticated",
    )
    dev.set_defaults(run=_dev)

    sdk = commands.add_parser(
        "sdk", parents=[parent], help="print where the guest SDKs are (name TAB path), or one SDK's path"
    )
    sdk.add_argument("language", nargs="?", help="print only this SDK's path (e.g. c, for -I$(wasmkv sdk c))")
    sdk.set_defaults(run=_sdk)


def _input(spec: str) -> bytes:
    if spec.startswith("@"):
        return Path(spec[1:]).read_bytes()
    # The bytes as given on the command line, even when they are not UTF-8.
    return os.fsencode(spec)


def _run(args: argparse.Namespace) -> int:
    limits = Limits(
        memory_bytes=args.memory_bytes, deadline_ms=args.deadline_ms, fuel=args.fuel, table_elements=args.table_elements
    )
    input_bytes = _input(args.input)
    store, _ = open_store(args)
    with store, Host(store) as host:
        plugin = host.load(
            args.plugin,
            name=Path(args.plugin).stem.replace(".", "-")[:64] or "plugin",
            tenant=args.tenant,
            buckets=tuple(args.bucket or ("default",)),
            limits=limits,
            wasi=args.wasi,
        )
        export = args.call
        if export is None:
            if not plugin.exports:
                raise Fail(f"{args.plugin} has no entry points (exports of type () -> i32): nothing to call")
            if len(plugin.exports) > 1:
                raise Fail(
                    f"{args.plugin} has several entry points ({', '.join(plugin.exports)}): pick one with --call"
                )
            export = plugin.exports[0]
        try:
            output = plugin.call(export, input_bytes)
        except PluginError as exc:
            sys.stdout.buffer.write(exc.output)
            sys.stdout.flush()
            status = (
                EXIT_USAGE
                if isinstance(exc, UnknownExport)
                else EXIT_PLUGIN_STATUS
                if isinstance(exc, PluginStatusError)
                else EXIT_PLUGIN_FAILED
            )
            raise Fail(str(exc), status) from exc
        sys.stdout.buffer.write(output)
        if output and not args.raw and not output.endswith(b"\n"):
            sys.stdout.buffer.write(b"\n")
        sys.stdout.flush()
    return EXIT_OK


def _sdk(args: argparse.Namespace) -> int:
    paths = sdk_paths()
    if args.language is None:
        for name, path in paths.items():
            print(f"{name}\t{path}")
        return EXIT_OK
    if args.language not in paths:
        raise Fail(f"no guest SDK for {args.language!r}; there is one for: {', '.join(paths)}")
    print(paths[args.language])
    return EXIT_OK


def _build_missing(config: Config) -> None:
    """Build the plugins whose module does not exist yet, each build command once."""
    built: set[tuple[str, ...]] = set()
    for plugin in config.plugins.values():
        if plugin.file.exists():
            continue
        if plugin.build is None:
            raise Fail(
                f"plugin {plugin.name}: {plugin.file} does not exist; build it, or give it a `build` command in "
                f"{config.path}"
            )
        if plugin.build not in built:
            print(f"building {plugin.name}: {' '.join(plugin.build)}", flush=True)
            failure = run_build(plugin, config.root)
            built.add(plugin.build)
            if failure is not None:
                raise Fail(f"plugin {plugin.name}: {failure}")
        if not plugin.file.exists():
            raise Fail(f"plugin {plugin.name}: its build ran but did not write {plugin.file}")


def _dev(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    settings = config.dev
    listen = args.listen or settings.listen
    _build_missing(config)
    with Host.from_loaded_config(config, compiler=settings.compiler) as host:
        server = serve_calls(
            host,
            listen,
            max_body_bytes=settings.max_body_bytes,
            allowed_hosts=settings.allowed_hosts,
            allow_remote=args.allow_remote or settings.allow_remote,
            workers=settings.workers,
        )
        loop = DevLoop(host, config)
        loop.start()
        try:
            if not is_loopback(listen.rpartition(":")[0].strip("[]")):
                print(f"warning: {listen} is reachable from other machines, and calls to it are not authenticated")
            for name, plugin in host.plugins.items():
                exports = safe_name(", ".join(plugin.exports)) or "no entry points"
                print(f"loaded {name} {plugin.version[:12]} as tenant {plugin.tenant.name}: {exports}")
            print(f"watching {len(loop.watched_paths())} directories; call plugins with:")
            print(f"  curl --data-binary 'INPUT' http://{listen}/call/PLUGIN/EXPORT   (GET /plugins lists them)")
            print("Ctrl-C stops.", flush=True)
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
        finally:
            server.shutdown()
            server.server_close()
            loop.stop()
    return EXIT_OK
