"""The host: wasmtime engines, the epoch ticker, and the loaded plugins."""

from __future__ import annotations

import math
import os
import threading
from pathlib import Path
from typing import Final

import wasmtime

from .. import kv
from ._cache import ModuleCache
from ._config import Config, load_config
from ._errors import HostError, LoadError, UnknownPlugin
from ._limits import Limits
from ._plugin import Plugin, Version, check_module

__all__ = ["EPOCH_TICK_MS", "Host", "Source"]

#: The epoch ticker's period: a runaway call stops within its deadline plus about one tick.
EPOCH_TICK_MS: Final = 5
_WASM_MAGIC: Final = b"\0asm"

Source = str | os.PathLike[str] | bytes
"""A plugin module: a path to a `.wasm` or `.wat` file, or the module's bytes (binary or WAT text)."""


def read_source(source: Source) -> tuple[bytes, str]:
    """Return a module's binary WebAssembly and a label for messages.

    Raises:
        LoadError: if the file cannot be read or the text is not valid WAT.
    """
    if isinstance(source, bytes | bytearray | memoryview):
        data, label = bytes(source), "<bytes>"
    elif isinstance(source, str) and source.lstrip().startswith("("):
        data, label = source.encode(), "<wat>"
    else:
        path = Path(source)
        label = str(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise LoadError(f"cannot read plugin {label}: {exc.strerror}") from exc
    if data.startswith(_WASM_MAGIC):
        return data, label
    try:
        return bytes(wasmtime.wat2wasm(data.decode("utf-8"))), label
    except (UnicodeDecodeError, wasmtime.WasmtimeError) as exc:
        raise LoadError(f"plugin {label} is neither WebAssembly binary nor valid WAT text: {exc}") from exc


class Host:
    """Runs WebAssembly plugins against a `kv.KvStore`, each bound to a tenant.

    Thread-safe; a context manager. `close()` closes the plugins and stops the
    epoch ticker; the store stays open unless `owns_store`. With `cache_dir`,
    compiled modules are cached on disk (see `ModuleCache`).
    """

    def __init__(
        self, store: kv.KvStore, *, cache_dir: str | os.PathLike[str] | None = None, owns_store: bool = False
    ) -> None:
        self.store = store
        self.cache = None if cache_dir is None else ModuleCache(cache_dir)
        self._owns_store = owns_store
        self._plugins: dict[str, Plugin] = {}
        self._engines: dict[bool, wasmtime.Engine] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._stop_ticker = threading.Event()
        self._ticker = threading.Thread(target=self._tick, name="wasmkv-epoch", daemon=True)
        self._ticker.start()

    @classmethod
    def from_config(cls, path: str | os.PathLike[str]) -> Host:
        """A host built from a `wasmkv.toml`: its store, tenants and plugins, all loaded.

        The host owns the store it opened: `close()` closes it too.

        Raises:
            ConfigError: if the file is invalid (nothing is opened then).
            LoadError: if a plugin cannot be loaded.
            kv.BackendUnavailable: if the store cannot be opened.
        """
        return cls.from_loaded_config(load_config(path))

    @classmethod
    def from_loaded_config(cls, config: Config) -> Host:
        """As `from_config`, for a config already read with `load_config`."""
        host = cls(config.open_store(), cache_dir=config.cache_dir, owns_store=True)
        try:
            for plugin in config.plugins.values():
                host.load(
                    plugin.file, name=plugin.name, tenant=plugin.tenant, buckets=plugin.buckets, limits=plugin.limits
                )
        except BaseException:
            host.close()
            raise
        return host

    # -- engines --------------------------------------------------------------------------------

    def engine(self, *, fuel: bool = False) -> wasmtime.Engine:
        """The engine for plugins with (or without) a fuel limit; fuel metering slows compute, so it is separate."""
        with self._lock:
            engine = self._engines.get(fuel)
            if engine is None:
                config = wasmtime.Config()
                config.epoch_interruption = True
                config.consume_fuel = fuel
                # The imports cache the memory's base address; this guarantees it never moves.
                config.memory_may_move = False
                config.cranelift_opt_level = "speed"
                engine = self._engines[fuel] = wasmtime.Engine(config)
            return engine

    def _tick(self) -> None:
        while not self._stop_ticker.wait(EPOCH_TICK_MS / 1000):
            for engine in list(self._engines.values()):
                engine.increment_epoch()

    def _deadline_ticks(self, limits: Limits) -> int:
        # +1: the current tick may be about to end.
        return math.ceil(limits.deadline_ms / EPOCH_TICK_MS) + 1

    def _arm(self, store: wasmtime.Store, limits: Limits) -> None:
        """Bound a store's next run (a start function during instantiation)."""
        store.set_epoch_deadline(self._deadline_ticks(limits))
        if limits.fuel is not None:
            store.set_fuel(limits.fuel)

    # -- plugins --------------------------------------------------------------------------------

    def compile(self, source: Source, *, name: str, limits: Limits) -> Version:
        """Compile and check a module for plugin `name`, without loading it.

        Raises:
            LoadError: if it is not WebAssembly, breaks the ABI, or starts over its memory limit.
        """
        wasm, label = read_source(source)
        fuel = limits.fuel is not None
        engine = self.engine(fuel=fuel)
        try:
            if self.cache is not None:
                module = self.cache.module(engine, wasm, f"fuel={fuel};epoch=1;memory_may_move=0;opt=speed")
            else:
                module = wasmtime.Module(engine, wasm)
        except wasmtime.WasmtimeError as exc:
            raise LoadError(f"plugin {name!r} ({label}) does not compile: {exc}") from exc
        entry_points = check_module(module, name)
        for export in module.exports:
            if isinstance(export.type, wasmtime.MemoryType):
                initial = export.type.limits.min * 65536
                if initial > limits.memory_bytes:
                    raise LoadError(
                        f"plugin {name!r} starts with {initial} bytes of memory, "
                        f"over its memory_bytes limit of {limits.memory_bytes}"
                    )
        return Version(engine, module, wasm, entry_points)

    def load(
        self,
        source: Source,
        *,
        name: str,
        tenant: kv.Tenant | str,
        buckets: tuple[str, ...] | list[str] = ("default",),
        limits: Limits | None = None,
    ) -> Plugin:
        """Load a plugin, bound to `tenant`, allowed to open only `buckets`.

        `tenant` is a `kv.Tenant` (with its quota) or a tenant name (default
        quota). Loading a name already loaded replaces that plugin.

        Raises:
            LoadError: if the module cannot be loaded (see `compile`) or fails to instantiate.
            kv.InvalidArgument: if a name is not 1-64 chars of `[A-Za-z0-9_-]`.
        """
        if self._closed.is_set():
            raise HostError("the host is closed")
        kv.check_name("plugin", name)
        limits = limits or Limits()
        if isinstance(tenant, str):
            tenant = self.store.tenant(tenant)
        granted = frozenset(kv.check_name("bucket", bucket) for bucket in buckets)
        version = self.compile(source, name=name, limits=limits)
        plugin = Plugin(self, name, version=version, tenant=tenant, buckets=granted, limits=limits)
        with self._lock:
            old = self._plugins.get(name)
            self._plugins[name] = plugin
        if old is not None:
            old.close()
        return plugin

    def plugin(self, name: str) -> Plugin:
        """The loaded plugin called `name`.

        Raises:
            UnknownPlugin: if none is loaded under that name.
        """
        try:
            return self._plugins[name]
        except KeyError:
            raise UnknownPlugin(f"no plugin {name!r} is loaded (loaded: {', '.join(sorted(self._plugins))})") from None

    @property
    def plugins(self) -> dict[str, Plugin]:
        """The loaded plugins by name (a copy)."""
        return dict(self._plugins)

    def reload(self, name: str, source: Source) -> Plugin:
        """Swap plugin `name` to the module in `source`; see `Plugin.reload`.

        Raises:
            UnknownPlugin: if no plugin of that name is loaded.
            LoadError: if the new module does not load; the old one keeps serving.
        """
        plugin = self.plugin(name)
        plugin.reload(source)
        return plugin

    def unload(self, name: str) -> None:
        """Close and forget plugin `name`, if loaded."""
        with self._lock:
            plugin = self._plugins.pop(name, None)
        if plugin is not None:
            plugin.close()

    def close(self) -> None:
        """Close every plugin and stop the epoch ticker; idempotent."""
        if self._closed.is_set():
            return
        self._closed.set()
        with self._lock:
            plugins, self._plugins = list(self._plugins.values()), {}
        # Close plugins while the ticker still runs: a call in progress ends by its deadline at the latest.
        for plugin in plugins:
            plugin.close()
        self._stop_ticker.set()
        self._ticker.join()
        if self._owns_store:
            self.store.close()

    def __enter__(self) -> Host:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
