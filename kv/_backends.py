"""The one place that knows every backend: a store URL's scheme → how to open its engine, and its options.

`KvStore.from_url` opens stores through it and the host's config loader checks a
`[store]` table against it, so a backend and its options are declared once.
Clustered backends are optional extras, imported inside their factory, so the
embedded default never loads redis-py.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import tempfile
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any, Final

from ._errors import InvalidArgument
from ._protocol import AsyncStore, Store
from ._rules import (
    DEFAULT_KEY_PREFIX,
    DEFAULT_READ_CACHE_MS,
    DEFAULT_REDIS_MAX_CONNECTIONS,
    DEFAULT_REDIS_TIMEOUT_S,
    DEFAULT_SWEEP_INTERVAL_S,
    Clock,
    check_name,
    scrubbed,
    shown_url,
)

__all__ = [
    "BACKENDS",
    "COMMON_OPTIONS",
    "PASSWORD_VARIABLE",
    "Backend",
    "Opened",
    "Option",
    "backend_for",
    "check_options",
]

#: The environment variable a Redis password may come from, so that it never has to be on a command line.
PASSWORD_VARIABLE: Final = "WASMKV_REDIS_PASSWORD"


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
    #: What the backend uses when the option is not given (None: nothing, or something computed).
    default: object = None

    def parse(self, name: str, text: str) -> Any:
        """The value a URL's query gives for this option (`?timeout_s=2&key_prefix=app`), checked.

        Raises:
            InvalidArgument: naming the option and what is wrong.
        """
        value: object = text
        try:
            if self.kind is bool:
                value = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}[text.lower()]
            elif self.kind is int:
                value = int(text)
            elif self.kind is float:
                value = float(text)
        except (KeyError, ValueError):
            raise InvalidArgument(f"store option {name} must be {_KIND_NAMES[self.kind]}, got {text!r}") from None
        return self.validate(name, value)

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
    """An engine, what to run after it is closed (removing a scratch directory), and how to open an async twin."""

    engine: Store
    on_close: Callable[[], None] | None = None
    #: For an engine whose async calls need an engine of each event loop's own (a Redis client is bound
    #: to one loop): opens an async engine on the same data, with the same options, for `AsyncBucket`s.
    open_async: Callable[[], AsyncStore] | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Backend:
    """A kind of store: its name, its options, and how to open its engine at a location."""

    name: str
    #: What it is, for messages ("a Redis store").
    kind: str
    options: Mapping[str, Option]
    open: Callable[[str, dict[str, Any], Clock], Opened]
    #: Whether its engine honours an injected clock (a server's expiries follow the server's own).
    honours_clock: bool


#: Options of the front layer, which every backend takes.
COMMON_OPTIONS: Final[Mapping[str, Option]] = {
    "sweep_interval_s": Option(
        float, "how often expired keys are reclaimed in the background, in seconds", _positive, DEFAULT_SWEEP_INTERVAL_S
    ),
}

_LOCAL_OPTIONS: Final[Mapping[str, Option]] = {
    "fsync": Option(
        bool, "fsync every commit, so writes also survive power loss (about 20x slower writes)", None, False
    ),
    "writemap": Option(
        bool,
        "write through a writable LMDB map, its space allocated up front (faster writes; ext4 or tmpfs only); "
        "default: where the filesystem allows it and no other process has the store open without",
    ),
}

_REDIS_OPTIONS: Final[Mapping[str, Option]] = {
    "password": Option(str, "the Redis password (else the URL's, else $WASMKV_REDIS_PASSWORD); keep it out of argv"),
    "tls_ca_file": Option(
        str,
        "a PEM file of the CAs to trust for rediss:// (default: the system's); the server's certificate must "
        "also name the host dialled",
    ),
    "timeout_s": Option(
        float, "the most one operation may take, retries across a failover included", _positive, DEFAULT_REDIS_TIMEOUT_S
    ),
    "read_cache_size": Option(int, "entries of the per-host read cache; 0 turns it off", _non_negative, 0),
    "read_cache_ms": Option(int, "how stale a cached read may be, in milliseconds", _positive, DEFAULT_READ_CACHE_MS),
    "key_prefix": Option(
        str, "starts every key, so several deployments can share one Redis", _prefix_name, DEFAULT_KEY_PREFIX
    ),
    "max_connections": Option(
        int, "connections the client keeps open per node", _positive, DEFAULT_REDIS_MAX_CONNECTIONS
    ),
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
    from ._read_cache import ReadCache, SyncReadCache  # noqa: PLC0415
    from ._redis import RedisStore  # noqa: PLC0415
    from ._redis_sync import RedisSyncStore  # noqa: PLC0415

    cache_size = options.pop("read_cache_size", 0)
    cache_ms = options.pop("read_cache_ms", None)
    cache_options = {} if cache_ms is None else {"max_age_ms": cache_ms}
    options.setdefault("password", os.environ.get(PASSWORD_VARIABLE) or None)

    # Synchronous calls run on the caller's thread through redis-py's blocking client; each event loop
    # that uses the store gets an async twin (see `Opened.open_async`). Both run the same operations
    # (`kv._redis_core`), so they share the data and its quotas exactly.
    def open_async() -> AsyncStore:
        engine = RedisStore.from_url(location, **options)
        return ReadCache(engine, size=cache_size, **cache_options) if cache_size else engine

    engine: Store = RedisSyncStore.from_url(location, **options)
    if cache_size:
        engine = SyncReadCache(engine, size=cache_size, **cache_options)
    return Opened(engine, open_async=open_async)


_LMDB = Backend("lmdb", "an embedded (LMDB) store", _LOCAL_OPTIONS, _open_lmdb, honours_clock=True)
#: Every backend by the scheme of its URL; a plain path is the embedded store.
BACKENDS: Final[Mapping[str, Backend]] = {
    "lmdb": _LMDB,
    "memory": Backend("memory", "a memory store", {}, _open_memory, honours_clock=True),
    **{
        scheme: Backend(scheme, "a Redis store", _REDIS_OPTIONS, _open_redis, honours_clock=False)
        for scheme in ("redis", "redis+cluster", "rediss", "rediss+cluster")
    },
}
_SCHEMES: Final = "a path, lmdb://, memory:, redis://, rediss://, redis+cluster:// or rediss+cluster://"


def backend_for(url: str) -> tuple[Backend, str, dict[str, Any]]:
    """The backend a store URL names, the location to open, and the options its query sets.

    - a plain path or `lmdb:///abs/path`: the embedded store
    - `memory:`: the embedded store in a scratch directory in RAM, removed on close
    - `redis://host:port/db`, `rediss://...` (TLS): one Redis node
    - `redis+cluster://host:port[,host:port...]`, `rediss+cluster://...` (TLS): a Redis Cluster,
      any nodes as startup nodes

    A URL (not a plain path) may carry the backend's options as its query:
    `redis://127.0.0.1:6379/0?key_prefix=app&timeout_s=2`. The location
    returned is the URL without them.

    Raises:
        InvalidArgument: if the scheme is unknown, the URL malformed, or a query option unknown or invalid.
    """
    if not isinstance(url, str):
        raise InvalidArgument(f"store URL must be a str, got {type(url).__name__}")
    try:
        return _backend_for(url)
    except InvalidArgument as exc:
        # An option's message may quote its value: part of a password holding a raw `&`.
        raise InvalidArgument(scrubbed(str(exc), url)) from None


def _backend_for(url: str) -> tuple[Backend, str, dict[str, Any]]:
    scheme, sep, rest = url.partition(":")
    if not sep or "/" in scheme or len(scheme) == 1:  # no scheme, a relative path, or a Windows drive
        return _LMDB, url, {}
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", scheme):
        raise InvalidArgument(f"{shown_url(url)!r} is neither a store URL nor a directory path without a colon")
    rest, _, query = rest.partition("?")
    scheme = scheme.lower()
    backend = BACKENDS.get(scheme)
    if backend is None:
        raise InvalidArgument(f"unknown store URL scheme {scheme!r} in {shown_url(url)!r}: use {_SCHEMES}")
    options = _query_options(backend, url, query)
    if scheme == "lmdb":
        path = rest.removeprefix("//")
        if not path.startswith("/"):
            raise InvalidArgument(f"an lmdb URL needs an absolute path (lmdb:///abs/path), got {shown_url(url)!r}")
        return backend, path, options
    if scheme == "memory":
        if rest.strip("/"):
            raise InvalidArgument(f"a memory URL takes no path (memory:), got {shown_url(url)!r}")
        return backend, "", options
    return backend, f"{scheme}:{rest}", options


def _query_options(backend: Backend, url: str, query: str) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if not query:
        return options
    try:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise InvalidArgument(f"malformed query in store URL {shown_url(url)!r}: expected name=value&...") from None
    allowed = {**backend.options, **COMMON_OPTIONS}
    after_password = False
    for name, text in pairs:
        option = allowed.get(name)
        try:
            if option is None:
                takes = ", ".join(sorted(allowed))
                raise InvalidArgument(
                    f"unknown option {name!r} in store URL {shown_url(url)!r} ({backend.kind} takes {takes})"
                )
            if name in options:
                raise InvalidArgument(f"option {name!r} is given twice in store URL {shown_url(url)!r}")
            options[name] = option.parse(name, text)
        except InvalidArgument:
            if not after_password:
                raise
            # What follows a password may be the rest of it, cut at a raw `&`: not to be quoted.
            raise InvalidArgument(
                f"store URL {shown_url(url)!r} has an option after its password that is unknown or invalid: "
                "if the password holds '&', percent-encode it (%26)"
            ) from None
        after_password = after_password or name == "password"
    return options


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
