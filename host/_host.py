"""The host: the loaded plugins of one store, with load, reload, unload and close."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping

from .. import kv
from ._cache import ModuleCache
from ._config import Config, load_config
from ._errors import HostError, UnknownPlugin
from ._imports import Grant
from ._limits import Limits
from ._plugin import Plugin, Version
from ._sandbox import Sandbox, Source

__all__ = ["Host"]


class Host:
    """Runs WebAssembly plugins against a `kv.KvStore`, each bound to a tenant.

    Thread-safe; a context manager. `close()` closes the plugins and stops the
    epoch ticker; the store stays open unless `owns_store`. With `cache_dir`,
    compiled modules are cached on disk (see `ModuleCache`). `compiler` is
    "cranelift" (optimized code, the default) or "winch" (wasmtime's baseline
    compiler: several times faster to compile, slower code; `wasmkv dev` uses it).

    Raises:
        ValueError: if `compiler` is neither.
    """

    def __init__(
        self,
        store: kv.KvStore,
        *,
        cache_dir: str | os.PathLike[str] | None = None,
        owns_store: bool = False,
        compiler: str = "cranelift",
    ) -> None:
        self.store = store
        self.cache = None if cache_dir is None else ModuleCache(cache_dir)
        self.sandbox = Sandbox(self.cache, compiler=compiler)
        self._owns_store = owns_store
        self._plugins: dict[str, Plugin] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()

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
    def from_loaded_config(cls, config: Config, *, compiler: str = "cranelift") -> Host:
        """As `from_config`, for a config already read with `load_config`, compiling with `compiler`."""
        host = cls(config.open_store(), cache_dir=config.cache_dir, owns_store=True, compiler=compiler)
        try:
            for plugin in config.plugins.values():
                host.load(
                    plugin.file,
                    name=plugin.name,
                    tenant=plugin.tenant,
                    buckets=plugin.buckets,
                    limits=plugin.limits,
                    wasi=plugin.wasi,
                    config=plugin.config,
                )
        except BaseException:
            host.close()
            raise
        return host

    # -- plugins --------------------------------------------------------------------------------

    def compile(self, source: Source, *, name: str, limits: Limits, wasi: bool = False) -> Version:
        """Compile and check a module for plugin `name`, without loading it.

        Raises:
            LoadError: if it is not WebAssembly, breaks the ABI (imports WASI without `wasi`),
                or starts over its memory limit.
        """
        return Version(self.sandbox.compile(source, name=name, limits=limits, wasi=wasi))

    def load(
        self,
        source: Source,
        *,
        name: str,
        tenant: kv.Tenant | str,
        buckets: tuple[str, ...] | list[str] = ("default",),
        limits: Limits | None = None,
        wasi: bool = False,
        config: Mapping[str, str] | None = None,
    ) -> Plugin:
        """Load a plugin, bound to `tenant`, allowed to open only `buckets`.

        `tenant` is a `kv.Tenant` (with its quota) or a tenant name (default
        quota). Loading a name already loaded replaces that plugin. `wasi=True`
        lets the module import WASI preview 1: clocks, random, and stdout and
        stderr as lines of its log; no files, environment, arguments or
        sockets, and its sleeps end with the call's deadline. `config` is what
        an Extism plugin reads with `config_get` (its vars live in the
        tenant's bucket `extism`, as `<plugin>/<var>`, granted or not).

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
        if type(wasi) is not bool:
            raise TypeError(f"wasi must be True or False, got {wasi!r}")
        config = dict(config or {})
        if not all(type(key) is str and type(value) is str for key, value in config.items()):
            raise TypeError("config must map str names to str values")
        version = self.compile(source, name=name, limits=limits, wasi=wasi)
        logger = logging.getLogger(f"wasmkv.plugin.{name}")
        grant = Grant(name, tenant, granted, limits, logger, wasi=wasi, config=config)
        plugin = Plugin(self.sandbox, grant, version)
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
        self.sandbox.close()
        if self._owns_store:
            self.store.close()

    def __enter__(self) -> Host:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
