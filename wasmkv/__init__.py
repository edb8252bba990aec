"""wasmkv: run WebAssembly plugins with durable, quota-limited key-value state.

One distribution, one import name. The three layers are subpackages:

- `wasmkv.abi`: what crosses the wasm boundary (import names, status codes, guest SDKs);
- `wasmkv.kv`: the store (tenants, quotas, TTLs, atomics, listing) on LMDB or Redis;
- `wasmkv.host`: the wasmtime host that runs plugins against a store.

The everyday names are importable from here (`from wasmkv import KvStore, Host`).
They load lazily, so `import wasmkv.kv` never loads wasmtime and `import wasmkv`
loads nothing until a name is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .abi import Status
    from .host import (
        ConfigError,
        Host,
        HostError,
        Limits,
        LoadError,
        Plugin,
        PluginError,
        PluginFuelExhausted,
        PluginStatusError,
        PluginTimeout,
        PluginTrap,
        UnknownExport,
        UnknownPlugin,
    )
    from .kv import (
        AccessDenied,
        BackendUnavailable,
        Bucket,
        IntegerOverflow,
        InvalidArgument,
        InvalidKey,
        KeyPage,
        KvError,
        KvStore,
        NotANumber,
        Quota,
        QuotaExceeded,
        RateLimited,
        Tenant,
        Usage,
        ValueTooLarge,
    )

__all__ = [
    "AccessDenied",
    "BackendUnavailable",
    "Bucket",
    "ConfigError",
    "Host",
    "HostError",
    "IntegerOverflow",
    "InvalidArgument",
    "InvalidKey",
    "KeyPage",
    "KvError",
    "KvStore",
    "Limits",
    "LoadError",
    "NotANumber",
    "Plugin",
    "PluginError",
    "PluginFuelExhausted",
    "PluginStatusError",
    "PluginTimeout",
    "PluginTrap",
    "Quota",
    "QuotaExceeded",
    "RateLimited",
    "Status",
    "Tenant",
    "UnknownExport",
    "UnknownPlugin",
    "Usage",
    "ValueTooLarge",
]

#: Where each everyday name lives: the subpackage is imported on first use only.
_HOME: dict[str, str] = {
    **dict.fromkeys(
        (
            "AccessDenied",
            "BackendUnavailable",
            "Bucket",
            "IntegerOverflow",
            "InvalidArgument",
            "InvalidKey",
            "KeyPage",
            "KvError",
            "KvStore",
            "NotANumber",
            "Quota",
            "QuotaExceeded",
            "RateLimited",
            "Tenant",
            "Usage",
            "ValueTooLarge",
        ),
        "kv",
    ),
    **dict.fromkeys(
        (
            "ConfigError",
            "Host",
            "HostError",
            "Limits",
            "LoadError",
            "Plugin",
            "PluginError",
            "PluginFuelExhausted",
            "PluginStatusError",
            "PluginTimeout",
            "PluginTrap",
            "UnknownExport",
            "UnknownPlugin",
        ),
        "host",
    ),
    "Status": "abi",
}
_SUBPACKAGES = frozenset({"abi", "host", "kv"})


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        return importlib.import_module(f".{name}", __name__)
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'wasmkv' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{home}", __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted([*__all__, *_SUBPACKAGES])
