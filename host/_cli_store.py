"""The `wasmkv` commands that work on a store: `inspect`, `export`, `import` and `tenant`."""

from __future__ import annotations

import argparse
import base64
import dataclasses
import json
import math
import os
import sys
from collections.abc import Callable
from typing import Any, Final

from .. import kv
from ._cli_common import EXIT_OK, Fail, add_store_options, open_store
from ._tenant_json import quota_json as _quota_json
from ._tenant_json import tenant_summary

__all__ = ["add_store_commands", "tenant_summary"]

#: Below this many keys an export or import says nothing while it runs, terminal or not.
_PROGRESS_FROM_KEYS: Final = 10_000
_VALUE_PREVIEW_CHARS: Final = 60


def add_store_commands(commands: Any, parent: argparse.ArgumentParser) -> None:
    """Add inspect, export, import and tenant to the `wasmkv` parser."""
    inspect = commands.add_parser("inspect", parents=[parent], help="print tenants, their quotas, usage and keys")
    inspect.add_argument("--tenant", help="only this tenant")
    inspect.add_argument("--limit", type=_limit, default=100, help="keys to show per bucket (1..1000, default 100)")
    inspect.add_argument("--json", action="store_true", help="print JSON, for scripts")
    inspect.add_argument("--allow-missing", action="store_true", help="show an unknown --tenant as empty")
    add_store_options(inspect)
    inspect.set_defaults(run=_inspect)

    export = commands.add_parser("export", parents=[parent], help="write a tenant's keys, values and TTLs as a dump")
    export.add_argument("--tenant", required=True, help="the tenant to export")
    export.add_argument("--bucket", action="append", help="only this bucket (repeatable; default: all)")
    export.add_argument("-o", "--output", metavar="FILE", help="write here (created 0600) instead of standard output")
    export.add_argument("--allow-missing", action="store_true", help="export an unknown tenant as an empty dump")
    add_store_options(export)
    export.set_defaults(run=_export)

    load = commands.add_parser("import", parents=[parent], help="load a dump, all or nothing (checked before writing)")
    load.add_argument("file", help="the dump, or - for standard input")
    load.add_argument(
        "--tenant", required=True, help="the tenant to import into (always named: a dump's header decides nothing)"
    )
    add_store_options(load)
    load.set_defaults(run=_import)

    tenant = commands.add_parser("tenant", parents=[parent], help="list, show, set the quota of, or delete tenants")
    verbs = tenant.add_subparsers(dest="verb", required=True, metavar="{list,show,set-quota,delete}")
    listing = verbs.add_parser("list", parents=[parent], help="every tenant, with its usage and quota")
    listing.add_argument("--json", action="store_true", help="print JSON, for scripts")
    add_store_options(listing)
    listing.set_defaults(run=_tenant_list)
    show = verbs.add_parser("show", parents=[parent], help="one tenant: quota, usage, buckets")
    show.add_argument("name")
    show.add_argument("--json", action="store_true", help="print JSON, for scripts")
    show.add_argument("--allow-missing", action="store_true", help="show an unknown tenant (default quota, empty)")
    add_store_options(show)
    show.set_defaults(run=_tenant_show)
    quota = verbs.add_parser("set-quota", parents=[parent], help="store a tenant's quota, for every host at once")
    quota.add_argument("name")
    for field in dataclasses.fields(kv.Quota):
        flag = "--" + field.name.replace("_", "-")
        if field.name == "ops_per_second":
            quota.add_argument(flag, type=_rate, metavar="N|none", help="operations per second; none lifts the limit")
        else:
            quota.add_argument(flag, type=_count(flag), metavar="N")
    add_store_options(quota)
    quota.set_defaults(run=_tenant_set_quota)
    delete = verbs.add_parser("delete", parents=[parent], help="remove a tenant: all its keys and its record")
    delete.add_argument("name")
    delete.add_argument("--yes", action="store_true", help="really delete (without it, say what would go)")
    add_store_options(delete)
    delete.set_defaults(run=_tenant_delete)


# -- argument types: each bad value is one line naming the flag --------------------------------


def _limit(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= kv.DEFAULT_LIST_LIMIT * 10:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to 1000, got {text!r}")
    return int(text)


def _count(flag: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if not text.isdigit() or int(text) < 1:
            raise argparse.ArgumentTypeError(f"must be a positive whole number, got {text!r}")
        return int(text)

    parse.__name__ = flag
    return parse


def _rate(text: str) -> float | str:
    if text.lower() == "none":
        return "none"
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number or none, got {text!r}")
    return value


# -- helpers ---------------------------------------------------------------------------------


def _known(store: kv.KvStore, name: str, allow_missing: bool) -> None:
    kv.check_name("tenant", name)
    if allow_missing:
        return
    tenants = store.tenants()
    if name not in tenants:
        listed = ", ".join(tenants[:10]) + (", ..." if len(tenants) > 10 else "") or "none"
        raise Fail(f"no tenant {name!r} in this store (tenants: {listed}); --allow-missing treats it as empty")


def _value_json(value: bytes) -> dict[str, Any]:
    try:
        return {"value": value.decode("utf-8")}
    except UnicodeDecodeError:
        return {"value_base64": base64.b64encode(value).decode("ascii")}


def _preview(value: bytes) -> str:
    text = repr(value[:_VALUE_PREVIEW_CHARS])
    return text + (f"... ({len(value)} bytes)" if len(value) > _VALUE_PREVIEW_CHARS else "")


def _print_json(data: object) -> None:
    json.dump(data, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")


def _progress(total_hint: str) -> Callable[[str, int], None] | None:
    """A progress line on stderr, rewritten in place, when stderr is a terminal and the work is large."""
    if not sys.stderr.isatty():
        return None

    def show(what: str, count: int) -> None:
        if count >= _PROGRESS_FROM_KEYS:
            sys.stderr.write(f"\r{what} {count:,} keys{total_hint}")
            sys.stderr.flush()

    return show


def _end_progress(progress: Callable[[str, int], None] | None, count: int) -> None:
    if progress is not None and count >= _PROGRESS_FROM_KEYS:
        sys.stderr.write("\n")


# -- commands --------------------------------------------------------------------------------


def _inspect(args: argparse.Namespace) -> int:
    store, _ = open_store(args, create=False)
    with store:
        if args.tenant is not None:
            _known(store, args.tenant, args.allow_missing)
            names = [args.tenant]
        else:
            names = store.tenants()
        tenants = []
        for name in names:
            summary = tenant_summary(store, name)
            tenant = store.tenant(name)
            buckets = []
            for bucket_name in summary["buckets"]:
                bucket = tenant.bucket(bucket_name)
                page = bucket.list_keys(limit=args.limit)
                values = bucket.get_many(page.keys)
                keys = []
                for key, value in zip(page.keys, values, strict=True):
                    if value is not None:
                        keys.append({"key": key, "size": len(value), "ttl_ms": bucket.ttl(key), "raw": value})
                buckets.append({"name": bucket_name, "keys": keys, "more": page.cursor is not None})
            tenants.append({**summary, "buckets": buckets})
    if args.json:
        for tenant_json in tenants:
            for bucket_json in tenant_json["buckets"]:
                for key_json in bucket_json["keys"]:
                    key_json.update(_value_json(key_json.pop("raw")))
        _print_json({"tenants": tenants})
        return EXIT_OK
    if not tenants:
        print("no tenants in this store")
    for tenant_json in tenants:
        quota, usage = tenant_json["quota"], tenant_json["usage"]
        print(
            f"tenant {tenant_json['name']}: {usage['keys']}/{quota['max_keys']} keys, "
            f"{usage['bytes']}/{quota['max_bytes']} bytes"
        )
        for bucket_json in tenant_json["buckets"]:
            print(f"  bucket {bucket_json['name']}:")
            for key_json in bucket_json["keys"]:
                ttl = key_json["ttl_ms"]
                line = f"    {key_json['key']!r} = {_preview(key_json['raw'])}"
                print(line + (f"  (ttl {ttl} ms)" if ttl is not None else ""))
            if bucket_json["more"]:
                print(f"    ... more keys (showing the first {args.limit})")
    return EXIT_OK


def _export(args: argparse.Namespace) -> int:
    store, _ = open_store(args, create=False)
    with store:
        _known(store, args.tenant, args.allow_missing)
        progress = _progress("")
        if args.output is None:
            try:
                count = kv.export_tenant(store, args.tenant, sys.stdout.buffer, buckets=args.bucket, progress=progress)
                sys.stdout.buffer.flush()
            except BrokenPipeError:
                # The reader has gone (`| head`): nothing more to say, and no traceback at exit either.
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                return EXIT_OK
        else:
            # A dump holds the tenant's data: private to this user, like the store it came from.
            descriptor = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with open(descriptor, "wb") as out:
                count = kv.export_tenant(store, args.tenant, out, buckets=args.bucket, progress=progress)
        _end_progress(progress, count)
    print(f"wasmkv: exported {count} keys of tenant {args.tenant}", file=sys.stderr)
    return EXIT_OK


def _import(args: argparse.Namespace) -> int:
    store, _ = open_store(args)
    with store:
        progress = _progress("")
        if args.file == "-":
            report = kv.import_dump(store, sys.stdin.buffer, tenant=args.tenant, progress=progress)
        else:
            with open(args.file, "rb") as source:
                report = kv.import_dump(store, source, tenant=args.tenant, progress=progress)
        _end_progress(progress, report.keys)
    buckets = ", ".join(report.buckets) or "no buckets"
    print(f"wasmkv: imported {report.keys} keys into tenant {report.tenant} ({buckets})", file=sys.stderr)
    return EXIT_OK


def _tenant_list(args: argparse.Namespace) -> int:
    store, _ = open_store(args, create=False)
    with store:
        summaries = [tenant_summary(store, name) for name in store.tenants()]
    if args.json:
        _print_json({"tenants": summaries})
        return EXIT_OK
    if not summaries:
        print("no tenants in this store")
    for summary in summaries:
        quota, usage = summary["quota"], summary["usage"]
        print(
            f"{summary['name']}  {usage['keys']}/{quota['max_keys']} keys  {usage['bytes']}/{quota['max_bytes']} bytes"
            f"  {len(summary['buckets'])} buckets"
        )
    return EXIT_OK


def _tenant_show(args: argparse.Namespace) -> int:
    store, _ = open_store(args, create=False)
    with store:
        _known(store, args.name, args.allow_missing)
        summary = tenant_summary(store, args.name)
    if args.json:
        _print_json(summary)
        return EXIT_OK
    usage, quota = summary["usage"], summary["quota"]
    print(f"tenant {args.name}")
    print(f"  usage: {usage['keys']} keys, {usage['bytes']} bytes")
    for field, value in quota.items():
        print(f"  {field}: {'none' if value is None else value}")
    print(f"  buckets: {', '.join(summary['buckets']) or 'none'}")
    return EXIT_OK


def _tenant_set_quota(args: argparse.Namespace) -> int:
    changes = {
        field.name: getattr(args, field.name)
        for field in dataclasses.fields(kv.Quota)
        if getattr(args, field.name) is not None
    }
    if not changes:
        flags = " ".join("--" + field.name.replace("_", "-") for field in dataclasses.fields(kv.Quota))
        raise Fail(f"say what to change: one or more of {flags}")
    if changes.get("ops_per_second") == "none":
        changes["ops_per_second"] = None
    store, _ = open_store(args)
    with store:
        tenant = store.tenant(args.name)
        quota = dataclasses.replace(tenant.quota, **changes)
        tenant.set_quota(quota)
        usage = tenant.usage()
    shown = ", ".join(f"{field} {'none' if value is None else value}" for field, value in _quota_json(quota).items())
    print(f"wasmkv: tenant {args.name} now has quota {shown}", file=sys.stderr)
    over = [
        f"{usage.keys} keys over max_keys {quota.max_keys}" if usage.keys > quota.max_keys else "",
        f"{usage.bytes} bytes over max_bytes {quota.max_bytes}" if usage.bytes > quota.max_bytes else "",
    ]
    if any(over):
        detail = " and ".join(part for part in over if part)
        print(f"wasmkv: tenant {args.name} holds {detail}: writes that grow it fail until it shrinks", file=sys.stderr)
    return EXIT_OK


def _tenant_delete(args: argparse.Namespace) -> int:
    store, _ = open_store(args, create=False)
    with store:
        _known(store, args.name, allow_missing=False)
        if not args.yes:
            usage = store.tenant(args.name).usage()
            buckets = store.engine.buckets(args.name)
            raise Fail(
                f"this would delete tenant {args.name}: {usage.keys} keys in {len(buckets)} buckets and its quota; "
                "add --yes to do it"
            )
        removed = store.delete_tenant(args.name)
    print(f"wasmkv: deleted tenant {args.name} and its {removed} keys", file=sys.stderr)
    return EXIT_OK
