"""wasmkv's host: run WebAssembly plugins on wasmtime with fast, quota-limited KV imports.

`Host(store).load(path, name=..., tenant=...)` returns a `Plugin`; `plugin.call(export, input)`
runs an entry point and returns its output. See `abi/ABI.md` for the plugin side.
"""

from ._cache import ModuleCache
from ._config import Config, DevConfig, PluginConfig, StoreConfig, load_config
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
    UnknownExport,
    UnknownPlugin,
)
from ._host import Host
from ._limits import DEFAULT_DEADLINE_MS, DEFAULT_MEMORY_BYTES, DEFAULT_TABLE_ELEMENTS, Limits
from ._plugin import Plugin, Version
from ._sandbox import EPOCH_TICK_MS, Sandbox, Source

__all__ = [
    "DEFAULT_DEADLINE_MS",
    "DEFAULT_MEMORY_BYTES",
    "DEFAULT_TABLE_ELEMENTS",
    "EPOCH_TICK_MS",
    "Config",
    "ConfigError",
    "DevConfig",
    "DevLoop",
    "DevServer",
    "Host",
    "HostError",
    "InvalidLimits",
    "Limits",
    "LoadError",
    "ModuleCache",
    "Plugin",
    "PluginClosed",
    "PluginConfig",
    "PluginError",
    "PluginFuelExhausted",
    "PluginStatusError",
    "PluginTimeout",
    "PluginTrap",
    "ReloadEvent",
    "Sandbox",
    "Source",
    "StoreConfig",
    "UnknownExport",
    "UnknownPlugin",
    "Version",
    "load_config",
    "serve_calls",
]
