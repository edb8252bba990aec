"""A tenant as JSON: what `wasmkv tenant show --json` prints and `wasmkv serve` answers at `/v1/tenants/NAME`."""

from __future__ import annotations

import dataclasses
from typing import Any

from .. import kv

__all__ = ["quota_json", "tenant_summary"]


def quota_json(quota: kv.Quota) -> dict[str, Any]:
    """A quota's fields by name (`ops_per_second` is None when unlimited)."""
    return dataclasses.asdict(quota)


def tenant_summary(store: kv.KvStore, name: str) -> dict[str, Any]:
    """A tenant as `tenant show --json` prints it: name, quota, usage and buckets.

    Raises:
        kv.InvalidArgument: if `name` is not a valid tenant name.
        kv.BackendUnavailable: if the store cannot be read.
    """
    tenant = store.tenant(name)
    usage = tenant.usage()
    return {
        "name": name,
        "quota": quota_json(tenant.quota),
        "usage": {"keys": usage.keys, "bytes": usage.bytes},
        "buckets": store.engine.buckets(name),
    }
