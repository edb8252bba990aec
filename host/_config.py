"""`wasmkv.toml`: the store, tenants with their quotas, and plugins, read with the stdlib's tomllib.

Every table and key is checked: an unknown key or a bad value raises
`ConfigError` naming the file, the key and the reason, before anything starts.
Relative paths are relative to the file's directory. Every key, with its type,
default and meaning, is declared in `_config_keys` (the README's reference).

```toml
[store]
path = ".wasmkv/state"          # the embedded store (default), or:
# url = "redis+cluster://127.0.0.1:7000"
fsync = false
# map_size = 68719476736        # LMDB's map in bytes (64 GiB); a full one doubles, up to 1 TiB

[cache]
dir = ".wasmkv/cache"           # compiled modules; `enabled = false` turns it off

[dev]
listen = "127.0.0.1:8737"       # `wasmkv dev`'s HTTP endpoint
debounce_ms = 50
max_body_bytes = 8388608        # larger bodies get 413 unread
allowed_hosts = []              # Host names accepted besides loopback and the listen address
allow_remote = false            # a listen address other machines can reach must be asked for

[tenants.acme]
max_keys = 1000
ops_per_second = 500

[plugins.counter]
file = "plugins/build/counter.wasm"
tenant = "acme"
buckets = ["default"]
deadline_ms = 1000
build = "python plugins/build.py"   # optional: run when a source changes ("python" = wasmkv's own)
sources = ["plugins/counter.c"]     # globs watched by `wasmkv dev`
```
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shlex
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, TypeVar

from .. import kv
from ..kv._lmdb_env import map_size_problem
from ._config_keys import keys_of
from ._errors import ConfigError
from ._limits import Limits

__all__ = [
    "DEFAULT_DEV_LISTEN",
    "DEFAULT_POOL_SIZE",
    "DEFAULT_SERVE_LISTEN",
    "Config",
    "DevConfig",
    "PluginConfig",
    "ServeConfig",
    "ServeToken",
    "StoreConfig",
    "load_config",
]

DEFAULT_DEV_LISTEN: Final = "127.0.0.1:8737"
DEFAULT_DEBOUNCE_MS: Final = 50
#: `[dev] max_body_bytes`: the largest request body `wasmkv dev`'s endpoint reads.
DEFAULT_DEV_MAX_BODY_BYTES: Final = 8 * 1024 * 1024
#: `[dev] workers`: requests the endpoint serves at once.
DEFAULT_DEV_WORKERS: Final = 8
DEFAULT_SERVE_LISTEN: Final = "127.0.0.1:8080"
#: `[serve] max_body_bytes`: the largest request body `wasmkv serve` reads.
DEFAULT_SERVE_MAX_BODY_BYTES: Final = 8 * 1024 * 1024
#: `[plugins.NAME] pool_size`: instances of one plugin that may run calls at once.
DEFAULT_POOL_SIZE: Final = 2
#: The most instances one plugin may have: each may hold `memory_bytes`.
MAX_POOL_SIZE: Final = 64
#: The most worker processes `wasmkv serve` starts.
MAX_SERVE_WORKERS: Final = 64
#: A token grant naming this instead of tenants grants every tenant.
ALL_TENANTS: Final = "*"

T = TypeVar("T")
_log = logging.getLogger("wasmkv.config")


@dataclasses.dataclass(frozen=True, slots=True)
class StoreConfig:
    """Which store to open: an embedded directory, or a URL (`redis://`, `redis+cluster://`) with options."""

    path: Path | None
    url: str | None
    options: dict[str, Any]


@dataclasses.dataclass(frozen=True, slots=True)
class PluginConfig:
    """One plugin: its module file, tenant, granted buckets, limits, and optional build command and sources."""

    name: str
    file: Path
    tenant: str
    buckets: tuple[str, ...]
    limits: Limits
    build: tuple[str, ...] | None
    sources: tuple[str, ...]
    wasi: bool = False
    config: dict[str, str] = dataclasses.field(default_factory=dict)
    pool_size: int = DEFAULT_POOL_SIZE


@dataclasses.dataclass(frozen=True, slots=True)
class DevConfig:
    """The `[dev]` table: where `wasmkv dev` listens, and what its HTTP endpoint accepts."""

    listen: str = DEFAULT_DEV_LISTEN
    debounce_ms: int = DEFAULT_DEBOUNCE_MS
    max_body_bytes: int = DEFAULT_DEV_MAX_BODY_BYTES
    allowed_hosts: tuple[str, ...] = ()
    allow_remote: bool = False
    workers: int = DEFAULT_DEV_WORKERS
    compiler: str = "winch"


@dataclasses.dataclass(frozen=True, slots=True)
class ServeToken:
    """One `[[serve.tokens]]` entry: the sha256 of a bearer token and the tenants it grants."""

    #: Lowercase hex sha256 of the token's UTF-8 bytes; the token itself is never in the file.
    sha256: str
    #: The tenants it may call and read; `"*"` is every tenant.
    tenants: frozenset[str]

    def grants(self, tenant: str) -> bool:
        """Whether this token may reach `tenant`."""
        return tenant in self.tenants or ALL_TENANTS in self.tenants


@dataclasses.dataclass(frozen=True, slots=True)
class ServeConfig:
    """`[serve]`: how `wasmkv serve` listens, whom it lets in, and how much it reads."""

    listen: str = DEFAULT_SERVE_LISTEN
    workers: int = 1
    max_body_bytes: int = DEFAULT_SERVE_MAX_BODY_BYTES
    tokens: tuple[ServeToken, ...] = ()
    #: Whether `/healthz` and `/readyz` need a token (any valid one); open by default for probes.
    auth_health: bool = False
    #: Whether `/metrics` needs a token (any valid one).
    auth_metrics: bool = False
    #: "text" or "json" log records.
    log_format: str = "text"


@dataclasses.dataclass(frozen=True, slots=True)
class Config:
    """A whole `wasmkv.toml`, checked."""

    path: Path
    store: StoreConfig
    cache_dir: Path | None
    dev: DevConfig
    tenants: dict[str, kv.Quota]
    plugins: dict[str, PluginConfig]
    serve: ServeConfig = dataclasses.field(default_factory=ServeConfig)
    #: `[tenants.NAME] max_concurrent_calls`, for the tenants that set it: calls in flight per serve worker.
    max_concurrent_calls: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def listen(self) -> str:
        """`[dev] listen`: where `wasmkv dev` serves calls."""
        return self.dev.listen

    @property
    def debounce_ms(self) -> int:
        """`[dev] debounce_ms`: how long file changes settle before a reload."""
        return self.dev.debounce_ms

    @property
    def root(self) -> Path:
        """The directory relative paths are resolved against."""
        return self.path.parent

    def open_store(self, **overrides: Any) -> kv.KvStore:
        """Open the configured store (`overrides` replace its options), creating the declared tenants.

        A tenant of `[tenants]` that has no record gets the configured quota.
        One that has a record keeps it (the store is the truth, so hosts with
        different configs never flip a quota back and forth); where the two
        differ, one warning line names the fields.

        Raises:
            kv.BackendUnavailable: if the store cannot be opened.
            kv.InvalidArgument: if a store option is refused.
        """
        options = {**self.store.options, **overrides}
        if self.store.url is not None:
            store = kv.KvStore.from_url(self.store.url, **options)
        else:
            assert self.store.path is not None
            store = kv.KvStore.open(self.store.path, **options)
        try:
            for name, quota in self.tenants.items():
                stored = store.ensure_tenant(name, quota).quota
                if stored != quota:
                    fields = ", ".join(
                        f"{field} {mine} here, {theirs} stored"
                        for field, (mine, theirs) in quota.differences(stored).items()
                    )
                    _log.warning(
                        "%s: tenant %s keeps its stored quota (%s); change it with `wasmkv tenant set-quota %s`",
                        self.path,
                        name,
                        fields,
                        name,
                    )
        except BaseException:
            store.close()
            raise
        return store


class _Reader:
    """Typed access to one TOML table, recording where each value came from for errors."""

    def __init__(self, file: Path, where: str, table: object) -> None:
        self.file = file
        self.where = where
        if not isinstance(table, dict):
            raise self.error(where, f"must be a table, got {_kind(table)}")
        self.table: dict[str, Any] = table
        self.seen: set[str] = set()

    def error(self, key: str, reason: str) -> ConfigError:
        return ConfigError(f"{self.file}: {key}: {reason}")

    def key(self, name: str) -> str:
        return f"{self.where}.{name}" if self.where else name

    def get(
        self, name: str, kind: type[T], default: T | None = None, check: Callable[[T], str | None] | None = None
    ) -> T | None:
        self.seen.add(name)
        if name not in self.table:
            return default
        value = self.table[name]
        # bool is an int in Python, but never a valid number here.
        if not isinstance(value, kind) or (kind in (int, float) and isinstance(value, bool)):
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            else:
                raise self.error(self.key(name), f"must be {_type_name(kind)}, got {_kind(value)}")
        if check is not None and (problem := check(value)) is not None:
            raise self.error(self.key(name), problem)
        checked: T = value
        return checked

    def sub(self, name: str) -> _Reader | None:
        self.seen.add(name)
        if name not in self.table:
            return None
        return _Reader(self.file, self.key(name), self.table[name])

    def done(self, table: str) -> None:
        """Refuse any key not read, naming the keys `table` accepts (as the reference declares them)."""
        allowed = keys_of(table) if table else ["store", "cache", "dev", "serve", "tenants", "plugins"]
        undeclared = self.seen - set(allowed)
        assert not undeclared, f"[{table}] reads keys the reference does not declare: {sorted(undeclared)}"
        unknown = sorted(set(self.table) - self.seen)
        if unknown:
            raise self.error(self.key(unknown[0]), f"unknown key (allowed here: {', '.join(allowed)})")


_KINDS: Final[dict[type, str]] = {
    dict: "a table",
    list: "an array",
    str: "a string",
    bool: "a boolean",
    int: "an integer",
    float: "a number",
}


def _kind(value: object) -> str:
    return _KINDS.get(type(value), type(value).__name__)


def _type_name(kind: type) -> str:
    return _KINDS.get(kind, kind.__name__)


def _positive(value: float) -> str | None:
    return None if value > 0 else f"must be positive, got {value}"


def _name(value: str) -> str | None:
    try:
        kv.check_name("name", value)
    except kv.InvalidArgument:
        return f"must be 1-{kv.MAX_NAME_CHARS} characters of [A-Za-z0-9_-], got {value!r}"
    return None


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and check a `wasmkv.toml`.

    Raises:
        ConfigError: if the file cannot be read, is not TOML, has an unknown key
            or a bad value; the message names the file, the key (or line) and the reason.
    """
    file = Path(path)
    try:
        raw = tomllib.loads(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: not valid TOML: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{file}: not UTF-8 text: {exc}") from exc
    root = file.resolve().parent
    top = _Reader(file, "", raw)

    store = _store(top.sub("store"), root)

    cache_dir: Path | None = root / ".wasmkv" / "cache"
    cache = top.sub("cache")
    if cache is not None:
        if not cache.get("enabled", bool, True):
            cache_dir = None
        elif (directory := cache.get("dir", str)) is not None:
            cache_dir = root / directory
        cache.done("cache")

    dev = _dev(top.sub("dev"))

    tenants: dict[str, kv.Quota] = {}
    max_calls: dict[str, int] = {}
    for name, table in _named_tables(top, "tenants", "tenant"):
        calls = table.get("max_concurrent_calls", int, None, _positive)
        if calls is not None:
            max_calls[name] = calls
        tenants[name] = _quota(table)
    serve = _serve(top.sub("serve"), tenants)

    plugins = {name: _plugin(table, name, root, tenants) for name, table in _named_tables(top, "plugins", "plugin")}
    top.done("")
    return Config(
        path=file.resolve(),
        store=store,
        cache_dir=cache_dir,
        dev=dev,
        tenants=tenants,
        plugins=plugins,
        serve=serve,
        max_concurrent_calls=max_calls,
    )


#: Every field of `kv.Quota` and the TOML type it takes (`ops_per_second` may be fractional).
_QUOTA_FIELDS: Final = {
    field.name: float if field.name == "ops_per_second" else int for field in dataclasses.fields(kv.Quota)
}


def _quota(table: _Reader) -> kv.Quota:
    """A `[tenants.NAME]` table: any of the `kv.Quota` fields; the others keep their defaults."""
    fields: dict[str, Any] = {}
    for name, kind in _QUOTA_FIELDS.items():
        if (value := table.get(name, kind, None, _positive)) is not None:
            fields[name] = value
    table.done("tenants.NAME")
    return kv.Quota(**fields)


def _named_tables(top: _Reader, section: str, kind: str) -> list[tuple[str, _Reader]]:
    """The `[section.NAME]` tables, each NAME checked as a tenant/plugin name."""
    tables = top.sub(section)
    if tables is None:
        return []
    found = []
    for name in tables.table:
        if (problem := _name(name)) is not None:
            raise top.error(f"{section}.{name}", f"{kind} name {problem}")
        table = tables.sub(name)
        assert table is not None
        found.append((name, table))
    return found


def _dev(table: _Reader | None) -> DevConfig:
    if table is None:
        return DevConfig()
    defaults = DevConfig()
    hosts = table.get("allowed_hosts", list, [])
    if hosts is None or not all(isinstance(name, str) and name for name in hosts):
        raise table.error(table.key("allowed_hosts"), "must be an array of host names")
    dev = DevConfig(
        listen=table.get("listen", str, defaults.listen, _listen) or defaults.listen,
        debounce_ms=table.get("debounce_ms", int, defaults.debounce_ms, _positive) or defaults.debounce_ms,
        max_body_bytes=table.get("max_body_bytes", int, defaults.max_body_bytes, _positive) or defaults.max_body_bytes,
        allowed_hosts=tuple(hosts),
        allow_remote=bool(table.get("allow_remote", bool, False)),
        workers=table.get("workers", int, defaults.workers, _positive) or defaults.workers,
        compiler=table.get("compiler", str, defaults.compiler, _compiler) or defaults.compiler,
    )
    table.done("dev")
    return dev


def _serve(table: _Reader | None, tenants: dict[str, kv.Quota]) -> ServeConfig:
    if table is None:
        return ServeConfig()
    defaults = ServeConfig()
    table.seen.add("tokens")
    raw_tokens = table.table.get("tokens", [])
    if not isinstance(raw_tokens, list):
        raise table.error(
            table.key("tokens"), f"must be an array of tables ([[serve.tokens]]), got {_kind(raw_tokens)}"
        )
    tokens: list[ServeToken] = []
    for index, raw in enumerate(raw_tokens):
        entry = _Reader(table.file, f"{table.key('tokens')}[{index}]", raw)
        if "token" in entry.table:
            raise entry.error(
                entry.key("token"),
                "tokens are never written in plain text: set sha256 = the hex sha256 of the token "
                '(e.g. `printf %s "$TOKEN" | sha256sum`)',
            )
        digest = entry.get("sha256", str, None, _sha256)
        if digest is None:
            raise entry.error(entry.key("sha256"), "is required: the hex sha256 of the token")
        granted = entry.get("tenants", list, None)
        if not granted or not all(isinstance(name, str) for name in granted):
            raise entry.error(entry.key("tenants"), 'must be a non-empty array of tenant names (or ["*"] for all)')
        for name in granted:
            if name != ALL_TENANTS and name not in tenants:
                raise entry.error(entry.key("tenants"), f"tenant {name!r} is not declared in [tenants]")
        entry.done("serve.tokens")
        digest = digest.lower()
        if any(token.sha256 == digest for token in tokens):
            raise entry.error(entry.key("sha256"), "the same token is declared twice")
        tokens.append(ServeToken(digest, frozenset(granted)))
    serve = ServeConfig(
        listen=table.get("listen", str, defaults.listen, _listen) or defaults.listen,
        workers=table.get("workers", int, defaults.workers, _workers) or defaults.workers,
        max_body_bytes=table.get("max_body_bytes", int, defaults.max_body_bytes, _positive) or defaults.max_body_bytes,
        tokens=tuple(tokens),
        auth_health=bool(table.get("auth_health", bool, False)),
        auth_metrics=bool(table.get("auth_metrics", bool, False)),
        log_format=table.get("log_format", str, defaults.log_format, _log_format) or defaults.log_format,
    )
    table.done("serve")
    return serve


def _sha256(value: str) -> str | None:
    if len(value) == 64 and all(char in "0123456789abcdefABCDEF" for char in value):
        return None
    return f"must be 64 hex digits (a sha256), got {len(value)} characters"


def _workers(value: int) -> str | None:
    return None if 1 <= value <= MAX_SERVE_WORKERS else f"must be 1-{MAX_SERVE_WORKERS}, got {value}"


def _pool_size(value: int) -> str | None:
    return None if 1 <= value <= MAX_POOL_SIZE else f"must be 1-{MAX_POOL_SIZE}, got {value}"


def _log_format(value: str) -> str | None:
    return None if value in ("text", "json") else f'must be "text" or "json", got {value!r}'


def _compiler(value: str) -> str | None:
    return None if value in ("winch", "cranelift") else f'must be "winch" or "cranelift", got {value!r}'


def _listen(value: str) -> str | None:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        return f"must be HOST:PORT, got {value!r}"
    return None


def _store(table: _Reader | None, root: Path) -> StoreConfig:
    """The `[store]` table: `path` or `url`, and the options of that backend (declared in `kv.BACKENDS`)."""
    if table is None:
        return StoreConfig(path=root / ".wasmkv" / "state", url=None, options={})
    path = table.get("path", str)
    url = table.get("url", str)
    if path is not None and url is not None:
        raise table.error("store", "set either path (the embedded store) or url (a store URL), not both")
    # Not a backend option (a URL's query cannot carry it): `KvStore.open` takes it.
    map_size = table.get("map_size", int, None, map_size_problem)
    backend = kv.BACKENDS["lmdb"]
    options: dict[str, Any] = {}
    if url is not None:
        try:
            backend, location, from_query = kv.backend_for(url)
        except kv.InvalidArgument as exc:
            raise table.error("store.url", str(exc)) from None
        if map_size is not None:
            if backend.name != "lmdb":
                lmdb_kind = kv.BACKENDS["lmdb"].kind
                raise table.error("store.map_size", f"applies to {lmdb_kind} only, not to {backend.kind}")
            # An lmdb:// URL names a directory: open it as `path` does, with the options of its query.
            path, url, options = location, None, from_query
    if map_size is not None:
        options["map_size"] = map_size
    allowed = {**backend.options, **kv.COMMON_OPTIONS}
    for name in list(table.table):
        if name in ("path", "url", "map_size"):
            continue
        option = allowed.get(name)
        if option is None:
            takers = sorted({other.kind for other in kv.BACKENDS.values() if name in other.options})
            if takers:
                only = " or ".join(takers)
                raise table.error(f"store.{name}", f"applies to {only} only, not to {backend.kind}")
            continue  # `done` below reports it as unknown
        value = table.get(name, option.kind, None, option.check)
        if value is not None:
            options[name] = value
    table.done("store")
    return StoreConfig(path=None if url is not None else root / (path or ".wasmkv/state"), url=url, options=options)


def _plugin(table: _Reader, name: str, root: Path, tenants: dict[str, kv.Quota]) -> PluginConfig:
    file = table.get("file", str)
    if file is None:
        raise table.error(table.key("file"), "is required: the plugin's .wasm or .wat file")
    tenant = table.get("tenant", str, None, _name)
    if tenant is None:
        raise table.error(table.key("tenant"), "is required: the tenant the plugin runs as")
    if tenant not in tenants:
        raise table.error(table.key("tenant"), f"tenant {tenant!r} is not declared in [tenants]")
    buckets = table.get("buckets", list, ["default"]) or ["default"]
    for bucket in buckets:
        if not isinstance(bucket, str):
            raise table.error(table.key("buckets"), f"must be an array of bucket names, got {_kind(bucket)} in it")
        if (problem := _name(bucket)) is not None:
            raise table.error(table.key("buckets"), f"bucket name {problem}")
    memory = table.get("memory_bytes", int, None, _positive)
    deadline = table.get("deadline_ms", int, None, _positive)
    fuel = table.get("fuel", int, None, _positive)
    table_elements = table.get("table_elements", int, None, _positive)
    wasi = bool(table.get("wasi", bool, False))
    pool_size = table.get("pool_size", int, DEFAULT_POOL_SIZE, _pool_size) or DEFAULT_POOL_SIZE
    plugin_config = table.get("config", dict, {}) or {}
    for key, value in plugin_config.items():
        if not isinstance(value, str):
            raise table.error(f"{table.key('config')}.{key}", f"must be a string, got {_kind(value)}")
    build = _command(table)
    sources = table.get("sources", list, []) or []
    if not all(isinstance(pattern, str) for pattern in sources):
        raise table.error(table.key("sources"), "must be an array of glob strings")
    if sources and build is None:
        raise table.error(table.key("sources"), "needs a build command: sources are rebuilt with it")
    table.done("plugins.NAME")
    limits_fields: dict[str, int] = {}
    if memory is not None:
        limits_fields["memory_bytes"] = memory
    if deadline is not None:
        limits_fields["deadline_ms"] = deadline
    if table_elements is not None:
        limits_fields["table_elements"] = table_elements
    try:
        limits = Limits(**limits_fields, fuel=fuel)
    except Exception as exc:
        raise table.error(table.where, str(exc)) from exc
    return PluginConfig(
        name=name,
        file=root / file,
        tenant=tenant,
        buckets=tuple(buckets),
        limits=limits,
        build=build,
        sources=tuple(sources),
        wasi=wasi,
        config=dict(plugin_config),
        pool_size=pool_size,
    )


def _command(table: _Reader) -> tuple[str, ...] | None:
    table.seen.add("build")
    value = table.table.get("build")
    if value is None:
        return None
    if isinstance(value, str):
        parts = shlex.split(value)
    elif isinstance(value, list) and all(isinstance(part, str) for part in value):
        parts = list(value)
    else:
        raise table.error(table.key("build"), f"must be a command string or an array of strings, got {_kind(value)}")
    if not parts:
        raise table.error(table.key("build"), "must not be empty")
    if parts[0] in ("python", "python3"):
        # The Python running wasmkv (its venv has ziglang), not whichever `python` is first on PATH.
        parts[0] = sys.executable
    return tuple(parts)
