"""wasmkv's host: run WebAssembly plugins on wasmtime with fast, quota-limited KV imports.

`Host(store).load(path, name=..., tenant=...)` returns a `Plugin`; `plugin.call(export, input)`
runs an entry point and returns its output. See `abi/ABI.md` for the plugin side.
"""

from ._cache import ModuleCache
from ._config import (
    DEFAULT_POOL_SIZE,
    Config,
    DevConfig,
    PluginConfig,
    ServeConfig,
    ServeToken,
    StoreConfig,
    load_config,
)
from ._dev import DevLoop, ReloadEvent
from ._devhttp import DevServer, serve_calls
from ._errors import (
    ConfigError,
    HostError,
    InvalidLimits,
    LoadError,
    PluginClosed,
    PluginError,
    PluginFuelExhausted,
    PluginStatusError,
    PluginTimeout,
    PluginTrap,
    StackTooSmall,
    UnknownExport,
    UnknownPlugin,
)
from ._host import DEFAULT_CALL_THREADS, Host
from ._limits import DEFAULT_DEADLINE_MS, DEFAULT_MEMORY_BYTES, DEFAULT_TABLE_ELEMENTS, Limits
from ._plugin import Plugin, Version
from ._sandbox import EPOCH_TICK_MS, Sandbox, Source
from ._stats import CALL_OUTCOMES, SECONDS_BUCKETS, CallRecord, ExportStats, HostStats, Observer, PluginStats

__all__ = [
    "CALL_OUTCOMES",
    "DEFAULT_CALL_THREADS",
    "DEFAULT_DEADLINE_MS",
    "DEFAULT_MEMORY_BYTES",
    "DEFAULT_POOL_SIZE",
    "DEFAULT_TABLE_ELEMENTS",
    "EPOCH_TICK_MS",
    "SECONDS_BUCKETS",
    "CallRecord",
    "Config",
    "ConfigError",
    "DevConfig",
    "DevLoop",
    "DevServer",
    "ExportStats",
    "Host",
    "HostError",
    "HostStats",
    "InvalidLimits",
    "Limits",
    "LoadError",
    "ModuleCache",
    "Observer",
    "Plugin",
    "PluginClosed",
    "PluginConfig",
    "PluginError",
    "PluginFuelExhausted",
    "PluginStats",
    "PluginStatusError",
    "PluginTimeout",
    "PluginTrap",
    "ReloadEvent",
    "Sandbox",
    "ServeConfig",
    "ServeToken",
    "Source",
    "StackTooSmall",
    "StoreConfig",
    "UnknownExport",
    "UnknownPlugin",
    "Version",
    "load_config",
    "serve_calls",
]
