"""The `wasmkv` command line: run a plugin against the embedded store, inspect the store."""

from __future__ import annotations

import argparse
import os
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from .. import kv
from ..abi import sdk_paths
from ._config import load_config
from ._dev import DevLoop
from ._devhttp import is_loopback, serve_calls
from ._errors import HostError, PluginError, PluginStatusError, UnknownExport
from ._host import Host
from ._limits import DEFAULT_DEADLINE_MS, DEFAULT_MEMORY_BYTES, Limits

__all__ = ["DEFAULT_STATE_DIR", "main"]

#: Where `run` and `inspect` keep the embedded store unless `--state` says otherwise.
DEFAULT_STATE_DIR: Final = Path(".wasmkv") / "state"

EXIT_OK: Final = 0
EXIT_PLUGIN_STATUS: Final = 1
EXIT_USAGE: Final = 2
EXIT_PLUGIN_FAILED: Final = 3


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wasmkv", description="Run WebAssembly plugins with durable key-value state.")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="call a plugin's entry point once")
    run.add_argument("plugin", help="a .wasm or .wat file")
    run.add_argument("--call", metavar="EXPORT", help="entry point to call (default: the only one)")
    run.add_argument("--input", metavar="TEXT|@FILE", default="", help="the call's input: text, or @path to a file")
    run.add_argument("--tenant", default="default", help="tenant the plugin runs as (default: default)")
    run.add_argument("--bucket", action="append", help="bucket the plugin may open (repeatable; default: default)")
    run.add_argument(
        "--state", type=Path, default=DEFAULT_STATE_DIR, help=f"store directory (default: {DEFAULT_STATE_DIR})"
    )
    run.add_argument("--deadline-ms", type=int, default=DEFAULT_DEADLINE_MS, help="wall-clock limit of the call")
    run.add_argument("--memory-bytes", type=int, default=DEFAULT_MEMORY_BYTES, help="linear memory ceiling")
    run.add_argument("--fuel", type=int, help="instruction budget of the call (default: unmetered)")
    run.add_argument("--raw", action="store_true", help="print the output exactly, without a trailing newline")

    inspect = commands.add_parser("inspect", help="print tenants, their usage and keys")
    inspect.add_argument("--tenant", help="only this tenant")
    inspect.add_argument(
        "--state", type=Path, default=DEFAULT_STATE_DIR, help=f"store directory (default: {DEFAULT_STATE_DIR})"
    )
    inspect.add_argument("--limit", type=int, default=100, help="keys to show per bucket (1..1000, default 100)")
    export = commands.add_parser("export", help="write a tenant's keys, values and TTLs as a msgpack dump")
    export.add_argument("--tenant", required=True, help="the tenant to export")
    export.add_argument("--bucket", action="append", help="only this bucket (repeatable; default: all)")
    export.add_argument("-o", "--output", type=Path, help="write here instead of standard output")
    _store_options(export)

    load = commands.add_parser("import", help="load a dump, all or nothing (checked before any write)")
    load.add_argument("file", help="the dump, or - for standard input")
    load.add_argument(
        "--tenant", required=True, help="the tenant to import into (always named: a dump's header decides nothing)"
    )
    _store_options(load)

    sdk = commands.add_parser("sdk", help="print where the guest SDKs are (name TAB path), or one SDK's path")
    sdk.add_argument("language", nargs="?", help="print only this SDK's path (e.g. c, for -I$(wasmkv sdk c))")

    dev = commands.add_parser("dev", help="load the configured plugins, hot-reload them, serve calls on 127.0.0.1")
    dev.add_argument("--config", type=Path, default=Path("wasmkv.toml"), help="config file (default: wasmkv.toml)")
    dev.add_argument("--listen", help="HOST:PORT for the call endpoint (default: [dev] listen, 127.0.0.1:8737)")
    dev.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a listen address other machines can reach ([dev] allow_remote); calls are unauthenticated",
    )
    return parser


def _store_options(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--state", type=Path, help=f"embedded store directory (default: {DEFAULT_STATE_DIR})")
    where.add_argument("--config", type=Path, help="use the store and tenant quotas of this wasmkv.toml")


def _open_store(args: argparse.Namespace) -> kv.KvStore:
    """The store `--state` or `--config` names, with the config's tenant quotas registered."""
    if args.config is None:
        return kv.KvStore.open(args.state or DEFAULT_STATE_DIR, sweep_interval_s=None)
    return load_config(args.config).open_store()


def _export(args: argparse.Namespace) -> int:
    with _open_store(args) as store:
        if args.output is None:
            count = kv.export_tenant(store, args.tenant, sys.stdout.buffer, buckets=args.bucket)
            sys.stdout.buffer.flush()
        else:
            # A dump holds the tenant's data: private to this user, like the store it came from.
            descriptor = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with open(descriptor, "wb") as out:
                count = kv.export_tenant(store, args.tenant, out, buckets=args.bucket)
    print(f"wasmkv: exported {count} keys of tenant {args.tenant}", file=sys.stderr)
    return EXIT_OK


def _import(args: argparse.Namespace) -> int:
    with _open_store(args) as store:
        if args.file == "-":
            report = kv.import_dump(store, sys.stdin.buffer, tenant=args.tenant)
        else:
            with open(args.file, "rb") as source:
                report = kv.import_dump(store, source, tenant=args.tenant)
    buckets = ", ".join(report.buckets) or "no buckets"
    print(f"wasmkv: imported {report.keys} keys into tenant {report.tenant} ({buckets})", file=sys.stderr)
    return EXIT_OK


def _sdk(args: argparse.Namespace) -> int:
    paths = sdk_paths()
    if args.language is None:
        for name, path in paths.items():
            print(f"{name}\t{path}")
        return EXIT_OK
    if args.language not in paths:
        print(f"wasmkv: no guest SDK for {args.language!r}; there is one for: {', '.join(paths)}", file=sys.stderr)
        return EXIT_USAGE
    print(paths[args.language])
    return EXIT_OK


def _dev(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    settings = config.dev
    listen = args.listen or settings.listen
    with Host.from_loaded_config(config) as host:
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
                print(
                    f"loaded {name} {plugin.version[:12]} as tenant {plugin.tenant.name}: {', '.join(plugin.exports)}"
                )
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


def _input(spec: str) -> bytes:
    if spec.startswith("@"):
        return Path(spec[1:]).read_bytes()
    return spec.encode()


def _run(args: argparse.Namespace) -> int:
    limits = Limits(memory_bytes=args.memory_bytes, deadline_ms=args.deadline_ms, fuel=args.fuel)
    with kv.KvStore.open(args.state) as store, Host(store) as host:
        plugin = host.load(
            args.plugin,
            name=Path(args.plugin).stem.replace(".", "-")[:64] or "plugin",
            tenant=args.tenant,
            buckets=tuple(args.bucket or ("default",)),
            limits=limits,
        )
        export = args.call
        if export is None:
            if len(plugin.exports) != 1:
                choices = ", ".join(plugin.exports) or "(none)"
                print(f"wasmkv: {args.plugin} has entry points {choices}; pick one with --call", file=sys.stderr)
                return EXIT_USAGE
            export = plugin.exports[0]
        try:
            output = plugin.call(export, _input(args.input))
        except PluginError as exc:
            sys.stdout.buffer.write(exc.output)
            print(f"wasmkv: {exc}", file=sys.stderr)
            if isinstance(exc, UnknownExport):
                return EXIT_USAGE
            return EXIT_PLUGIN_STATUS if isinstance(exc, PluginStatusError) else EXIT_PLUGIN_FAILED
        sys.stdout.buffer.write(output)
        if output and not args.raw and not output.endswith(b"\n"):
            sys.stdout.buffer.write(b"\n")
        sys.stdout.flush()
    return EXIT_OK


def _inspect(args: argparse.Namespace) -> int:
    if not args.state.is_dir():
        print(f"wasmkv: no store at {args.state}", file=sys.stderr)
        return EXIT_USAGE
    with kv.KvStore.open(args.state, sweep_interval_s=None) as store:
        engine = store.engine
        tenants = sorted(set(engine.tenants()) | ({args.tenant} if args.tenant else set()))
        for name in tenants:
            if args.tenant and name != args.tenant:
                continue
            tenant = store.tenant(name)
            usage = tenant.usage()
            quota = tenant.quota
            print(f"tenant {name}: {usage.keys}/{quota.max_keys} keys, {usage.bytes}/{quota.max_bytes} bytes")
            for bucket_name in engine.buckets(name):
                bucket = tenant.bucket(bucket_name)
                page = bucket.list_keys(limit=args.limit)
                print(f"  bucket {bucket_name}:")
                values = bucket.get_many(page.keys)
                for key, value in zip(page.keys, values, strict=True):
                    ttl = bucket.ttl(key)
                    shown = "(expired)" if value is None else _preview(value)
                    print(f"    {key!r} = {shown}" + (f"  (ttl {ttl} ms)" if ttl is not None else ""))
                if page.cursor is not None:
                    print(f"    ... more keys (showing the first {args.limit})")
    return EXIT_OK


def _preview(value: bytes, width: int = 60) -> str:
    text = repr(value[:width])
    return text + (f"... ({len(value)} bytes)" if len(value) > width else "")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `wasmkv` console script; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        commands = {
            "run": _run,
            "dev": _dev,
            "export": _export,
            "import": _import,
            "inspect": _inspect,
            "sdk": _sdk,
        }
        return commands[args.command](args)
    except (HostError, kv.KvError, OSError) as exc:
        print(f"wasmkv: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
