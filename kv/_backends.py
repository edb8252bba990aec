"""The one place that knows every backend: a store URL's scheme → how to open its engine, and its options.

`KvStore.from_url` opens stores through it and the host's config loader checks a
`[store]` table against it, so a backend and its options are declared once.
Clustered backends are optional extras, imported inside their factory, so the
embedded default never loads redis-py.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from typing import Any, Final

from ._errors import InvalidArgument
from ._protocol import Store
from ._rules import Clock, check_name

__all__ = [
    "BACKENDS",
    "COMMON_OPTIONS",
    "Backend",
    "Opened",
    "Option",
    "backend_for",
    "check_options",
]

#: How much longer than a Redis store's own operation timeout the sync bridge waits before giving up.
_BRIDGE_GRACE_S: Final = 1.0


def _positive(value: float) -> str | None:
    return None if value > 0 else f"must be positive, got {value:g}"


def _non_negative(value: int) -> str | None:
    return None if value >= 0 else f"must be 0 or more, got {value}"


def _prefix_name(value: str) -> str | None:
    try:
        check_name("key_prefix", value)
    except InvalidArgument as exc:
        return str(exc)
    return None


@dataclasses.dataclass(frozen=True, slots=True)
class Option:
    """One option a backend takes: its type (bool, int, float or str), a check of its value, what it means."""

    kind: type
    help: str
    check: Callable[[Any], str | None] | None = None

    def validate(self, name: str, value: object) -> Any:
        """`value` if it has this option's type and passes its check (an int is a valid float).

        Raises:
            InvalidArgument: naming the option and what is wrong.
        """
        kind = self.kind
        if kind is float and type(value) is int:
            value = float(value)
        if type(value) is not kind:
            raise InvalidArgument(f"store option {name} must be {_KIND_NAMES[kind]}, got {value!r}")
        if self.check is not None and (problem := self.check(value)) is not None:
            raise InvalidArgument(f"store option {name} {problem}")
        return value


_KIND_NAMES: Final[dict[type, str]] = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}


@dataclasses.dataclass(frozen=True, slots=True)
class Opened:
    """An engine, and what to run after it is closed (removing a scratch directory)."""

    engine: Store
    on_close: Callable[[], None] | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Backend:
    """A kind of store: its name, its options, and how to open its engine at a location."""

    name: str
    options: Mapping[str, Option]
    open: Callable[[str, dict[str, Any], Clock], Opened]
    #: Whether its engine honours an injected clock (a server's expiries follow the server's own).
    honours_clock: bool


#: Options of the front layer, which every backend takes.
COMMON_OPTIONS: Final[Mapping[str, Option]] = {
    "sweep_interval_s": Option(float, "how often expired keys are reclaimed in the background, in seconds", _positive),
}

_LOCAL_OPTIONS: Final[Mapping[str, Option]] = {
    "fsync": Option(bool, "fsync every commit, so writes also survive power loss (about 20x slower writes)"),
}

_REDIS_OPTIONS: Final[Mapping[str, Option]] = {
    "timeout_s": Option(float, "the most one operation may take, retries across a failover included", _positive),
    "read_cache_size": Option(int, "entries of the per-host read cache; 0 turns it off", _non_negative),
    "read_cache_ms": Option(int, "how stale a cached read may be, in milliseconds", _positive),
    "key_prefix": Option(str, "starts every key, so several deployments can share one Redis", _prefix_name),
    "max_connections": Option(int, "connections the client keeps open per node", _positive),
}


def _open_lmdb(location: str, options: dict[str, Any], clock: Clock) -> Opened:
    from ._lmdb import LmdbStore  # noqa: PLC0415

    return Opened(LmdbStore(location, clock=clock, **options))


def _open_memory(location: str, options: dict[str, Any], clock: Clock) -> Opened:
    from ._lmdb import LmdbStore  # noqa: PLC0415

    shm = "/dev/shm"
    directory = tempfile.mkdtemp(prefix="wasmkv-", dir=shm if os.path.isdir(shm) else None)
    try:
        engine = LmdbStore(directory, clock=clock, **options)
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    return Opened(engine, lambda: shutil.rmtree(directory, ignore_errors=True))


def _open_redis(location: str, options: dict[str, Any], clock: Clock) -> Opened:
    # Imported here so that the embedded default never loads redis-py.
    from ._bridge import SyncBridge  # noqa: PLC0415
    from ._read_cache import ReadCache  # noqa: PLC0415
    from ._redis import RedisStore  # noqa: PLC0415

    cache_size = options.pop("read_cache_size", 0)
    cache_ms = options.pop("read_cache_ms", None)
    engine = RedisStore.from_url(location, **options)
    async_engine: Any = engine
    if cache_size:
        async_engine = ReadCache(engine, size=cache_size, **({} if cache_ms is None else {"max_age_ms": cache_ms}))
    # The bridge is a backstop over the store's own per-operation timeout: it only fires if the loop is stuck.
    return Opened(SyncBridge(async_engine, timeout_s=engine.timeout_s + _BRIDGE_GRACE_S))


_LMDB = Backend("lmdb", _LOCAL_OPTIONS, _open_lmdb, honours_clock=True)
#: Every backend by the scheme of its URL; a plain path is the embedded store.
BACKENDS: Final[Mapping[str, Backend]] = {
    "lmdb": _LMDB,
    "memory": Backend("memory", {}, _open_memory, honours_clock=True),
    "redis": Backend("redis", _REDIS_OPTIONS, _open_redis, honours_clock=False),
    "redis+cluster": Backend("redis+cluster", _REDIS_OPTIONS, _open_redis, honours_clock=False),
}


def backend_for(url: str) -> tuple[Backend, str]:
    """The backend a store URL names, and the location to open (a directory for LMDB, the URL for Redis).

    - a plain path or `lmdb:///abs/path`: the embedded store
    - `memory:`: the embedded store in a scratch directory in RAM, removed on close
    - `redis://host:port/db`: one Redis node
    - `redis+cluster://host:port[,host:port...]`: a Redis Cluster, any nodes as startup nodes

    Raises:
        InvalidArgument: if the scheme is unknown or the URL malformed.
    """
    if not isinstance(url, str):
        raise InvalidArgument(f"store URL must be a str, got {type(url).__name__}")
    scheme, sep, rest = url.partition(":")
    if not sep or "/" in scheme or len(scheme) == 1:  # no scheme, a relative path, or a Windows drive
        return _LMDB, url
    if scheme == "lmdb":
        path = rest.removeprefix("//")
        if not path.startswith("/"):
            raise InvalidArgument(f"an lmdb URL needs an absolute path (lmdb:///abs/path), got {url!r}")
        return _LMDB, path
    if scheme == "memory":
        if rest.strip("/"):
            raise InvalidArgument(f"a memory URL takes no path (memory:), got {url!r}")
        return BACKENDS["memory"], ""
    backend = BACKENDS.get(scheme)
    if backend is None:
        raise InvalidArgument(
            f"unknown store URL scheme {scheme!r} in {url!r}: use a path, lmdb://, memory:, redis:// or redis+cluster://"
        )
    return backend, url


def check_options(backend: Backend, options: Mapping[str, object]) -> dict[str, Any]:
    """The engine's options among `options`, each checked; the front layer's (`COMMON_OPTIONS`) are left out.

    Raises:
        InvalidArgument: for an option this backend does not take, or a bad value.
    """
    unknown = sorted(set(options) - set(backend.options) - set(COMMON_OPTIONS))
    if unknown:
        takes = ", ".join(sorted({*backend.options, *COMMON_OPTIONS}))
        raise InvalidArgument(f"unknown option(s) for a {backend.name} store: {', '.join(unknown)} (it takes {takes})")
    for name, value in options.items():
        (backend.options.get(name) or COMMON_OPTIONS[name]).validate(name, value)
    return {name: value for name, value in options.items() if name in backend.options}
