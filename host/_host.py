"""The host: the loaded plugins of one store, with load, reload, unload and close."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any, Final, TypeVar

from .. import kv
from ._cache import ModuleCache
from ._config import DEFAULT_POOL_SIZE, MAX_POOL_SIZE, Config, PluginConfig, load_config
from ._errors import HostError, UnknownPlugin
from ._imports import Grant
from ._limits import Limits
from ._plugin import Plugin, Version
from ._sandbox import Sandbox, Source
from ._stats import HostStats, Observer

__all__ = ["DEFAULT_CALL_THREADS", "Host"]

#: `Host(call_threads=)`: calls `acall` runs at once, all plugins together; more wait their turn.
DEFAULT_CALL_THREADS: Final = 32
T = TypeVar("T")


class _LazyExecutor(Executor):
    """The host's executor, made when a plugin's first `acall` needs it."""

    def __init__(self, host: Host) -> None:
        self._host = host

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        return self._host.executor.submit(fn, *args, **kwargs)


class Host:
    """Runs WebAssembly plugins against a `kv.KvStore`, each bound to a tenant.

    Thread-safe; a context manager. `close()` closes the plugins and stops the
    epoch ticker; the store stays open unless `owns_store`. With `cache_dir`,
    compiled modules are cached on disk (see `ModuleCache`). `compiler` is
    "cranelift" (optimized code, the default) or "winch" (wasmtime's baseline
    compiler: several times faster to compile, slower code; `wasmkv dev` uses it).
    `acall` runs calls on a pool of at most `call_threads` threads, shared by
    every plugin; `observers` are told of every call and reload (see
    `Observer`), and `stats()` counts them without any.

    Raises:
        ValueError: if `compiler` is neither, or `call_threads` is below 1.
    """

    def __init__(
        self,
        store: kv.KvStore,
        *,
        cache_dir: str | os.PathLike[str] | None = None,
        owns_store: bool = False,
        compiler: str = "cranelift",
        call_threads: int = DEFAULT_CALL_THREADS,
        observers: Iterable[Observer] = (),
    ) -> None:
        if type(call_threads) is not int or call_threads < 1:
            raise ValueError(f"call_threads must be a positive int, got {call_threads!r}")
        self.store = store
        self.cache = None if cache_dir is None else ModuleCache(cache_dir)
        self.sandbox = Sandbox(self.cache, compiler=compiler)
        self._owns_store = owns_store
        self._plugins: dict[str, Plugin] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._observers: list[Observer] = list(observers)
        # Made on first `acall`: a host used only synchronously starts no threads.
        self._call_threads = call_threads
        self._executor: ThreadPoolExecutor | None = None

    @property
    def executor(self) -> ThreadPoolExecutor:
        """The bounded thread pool `acall` runs calls on (wasm runs there with the GIL released)."""
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self._call_threads, thread_name_prefix="wasmkv-call")
            return self._executor

    def add_observer(self, observer: Observer) -> None:
        """Tell `observer` of every later call and reload, of plugins loaded before or after."""
        self._observers.append(observer)  # the plugins share this list

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
    def from_loaded_config(
        cls, config: Config, *, compiler: str = "cranelift", observers: Iterable[Observer] = ()
    ) -> Host:
        """As `from_config`, for a config already read with `load_config`, compiling with `compiler`."""
        host = cls(
            config.open_store(), cache_dir=config.cache_dir, owns_store=True, compiler=compiler, observers=observers
        )
        try:
            for plugin in config.plugins.values():
                host.load_configured(plugin)
        except BaseException:
            host.close()
            raise
        return host

    def load_configured(self, plugin: PluginConfig) -> Plugin:
        """Load (or replace) a plugin as one `[plugins.NAME]` table declares it; see `load`."""
        return self.load(
            plugin.file,
            name=plugin.name,
            tenant=plugin.tenant,
            buckets=plugin.buckets,
            limits=plugin.limits,
            wasi=plugin.wasi,
            config=plugin.config,
            pool_size=plugin.pool_size,
        )

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
        pool_size: int = DEFAULT_POOL_SIZE,
    ) -> Plugin:
        """Load a plugin, bound to `tenant`, allowed to open only `buckets`.

        `tenant` is a `kv.Tenant` (with its quota) or a tenant name (default
        quota). Loading a name already loaded replaces that plugin. `wasi=True`
        lets the module import WASI preview 1: clocks, random, and stdout and
        stderr as lines of its log; no files, environment, arguments or
        sockets, and its sleeps end with the call's deadline. `config` is what
        an Extism plugin reads with `config_get` (its vars live in the
        tenant's bucket `extism`, as `<plugin>/<var>`, granted or not).
        `pool_size` instances run its calls in parallel (each made on first
        need, each capped at `limits.memory_bytes`).

        Raises:
            LoadError: if the module cannot be loaded (see `compile`) or fails to instantiate.
            kv.InvalidArgument: if a name is not 1-64 chars of `[A-Za-z0-9_-]`.
            ValueError: if `pool_size` is not 1-64.
        """
        if type(pool_size) is not int or not 1 <= pool_size <= MAX_POOL_SIZE:
            raise ValueError(f"pool_size must be an int of 1-{MAX_POOL_SIZE}, got {pool_size!r}")
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
        compiled = self.sandbox.compile(source, name=name, limits=limits, wasi=wasi)
        logger = logging.getLogger(f"wasmkv.plugin.{name}")
        grant = Grant(name, tenant, granted, limits, logger, wasi=wasi, config=config)
        plugin = Plugin(
            self.sandbox,
            grant,
            Version(compiled, pool_size),
            executor=_LazyExecutor(self),
            observers=self._observers,
        )
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

    async def acall(self, name: str, export: str, input: bytes = b"") -> bytes:
        """Run `export` of plugin `name` with `input`, awaited; see `Plugin.acall`.

        Raises:
            UnknownPlugin: if no plugin of that name is loaded; else as `Plugin.call`.
        """
        return await self.plugin(name).acall(export, input)

    def stats(self) -> HostStats:
        """A snapshot of what every loaded plugin has done (see `HostStats`); no dependencies, cheap."""
        return HostStats({name: plugin.stats() for name, plugin in self.plugins.items()}, time.time())

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
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        self.sandbox.close()
        if self._owns_store:
            self.store.close()

    def __enter__(self) -> Host:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
