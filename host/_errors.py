"""Errors raised by the host.

Errors a plugin *sees* are status codes returned by its imports: a store error's
code (`kv.KvError.code`), or an `AbiStatusError`'s status for a condition of the
ABI itself (a bad pointer or handle, a malformed request, a reply too large).
Errors the *host's caller* sees are these::

    HostError
    ├── LoadError                the module cannot be loaded as a plugin
    │   └── InvalidLimits        a `Limits` value is out of range
    ├── ConfigError              a wasmkv.toml is invalid (file, key and reason)
    ├── UnknownPlugin            no plugin of that name is loaded
    └── PluginError              a call failed; carries plugin, export and output
        ├── UnknownExport        no entry point of that name
        │   └── PluginClosed     the plugin was closed or unloaded
        ├── PluginStatusError    the entry point returned a non-zero status
        └── PluginTrap           the plugin trapped (its instance is replaced)
            ├── PluginTimeout        the wall-clock deadline passed
            └── PluginFuelExhausted  the fuel budget ran out
"""

from __future__ import annotations

from ..abi import Status

__all__ = [
    "AbiStatusError",
    "ConfigError",
    "HostError",
    "InvalidLimits",
    "LoadError",
    "PluginClosed",
    "PluginError",
    "PluginFuelExhausted",
    "PluginStatusError",
    "PluginTimeout",
    "PluginTrap",
    "StackTooSmall",
    "UnknownExport",
    "UnknownPlugin",
]


class HostError(Exception):
    """Root of every error the host raises."""


class LoadError(HostError):
    """The module cannot be loaded: not WebAssembly, wrong imports, no `memory` export, or over its limits."""


class InvalidLimits(LoadError):
    """A `Limits` field is out of range; the message names the field and its allowed values."""


class ConfigError(HostError):
    """A configuration file is invalid; the message names the file, the key and the reason."""


class StackTooSmall(HostError):
    """The calling thread's stack is too small to run plugin code on; the message says what it needs."""


class UnknownPlugin(HostError, LookupError):
    """No plugin of that name is loaded in this host."""


class PluginError(HostError):
    """A plugin call failed.

    Attributes: `plugin` and `export` name the call, `output` holds what the
    plugin had written with `host.output` before failing.
    """

    def __init__(self, message: str, *, plugin: str, export: str, output: bytes = b"") -> None:
        super().__init__(message)
        self.plugin = plugin
        self.export = export
        self.output = output


class UnknownExport(PluginError):
    """The plugin has no entry point (`() -> i32` export) of that name."""


class PluginClosed(UnknownExport):
    """The plugin was closed (or unloaded, or its host closed): it takes no more calls."""


class PluginStatusError(PluginError):
    """The entry point returned a non-zero status, in `status`."""

    def __init__(self, message: str, *, plugin: str, export: str, status: int, output: bytes = b"") -> None:
        super().__init__(message, plugin=plugin, export=export, output=output)
        self.status = status


class PluginTrap(PluginError):
    """The plugin trapped; `reason` says why. Its instance is replaced, its stored state kept."""

    def __init__(self, message: str, *, plugin: str, export: str, reason: str, output: bytes = b"") -> None:
        super().__init__(message, plugin=plugin, export=export, output=output)
        self.reason = reason


class PluginTimeout(PluginTrap):
    """The call ran past its wall-clock deadline and was interrupted."""


class PluginFuelExhausted(PluginTrap):
    """The call used up its fuel budget."""


class AbiStatusError(Exception):
    """Raised inside an import body to answer the plugin with an ABI `status` that is not a store error.

    It never reaches the host's caller: the import returns `status` to the
    plugin. Raised fresh each time, never shared, so that no traceback chains
    onto one object across calls.
    """

    def __init__(self, status: Status, message: str) -> None:
        super().__init__(message)
        self.status = int(status)
