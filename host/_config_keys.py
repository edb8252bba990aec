"""Every key of `wasmkv.toml`: its table, type, default and meaning, declared once.

The loader (`_config`) accepts exactly these keys, and the configuration
reference in the README is this list (a test holds the two together), so the
documentation cannot drift from what the loader reads. The `[store]` options
come from the backend registry (`kv.BACKENDS`), where each backend declares its own.
"""

from __future__ import annotations

import dataclasses
from typing import Final

from .. import kv
from ..kv._lmdb_env import DEFAULT_MAP_SIZE_BYTES, DEFAULT_MAX_MAP_SIZE_BYTES, MIN_MAP_SIZE_BYTES

__all__ = ["ConfigKey", "config_reference", "keys_of", "reference_table"]


@dataclasses.dataclass(frozen=True, slots=True)
class ConfigKey:
    """One key: the table it goes in, its name, its TOML type, its default and what it means."""

    table: str
    name: str
    type: str
    default: str
    meaning: str


_KEYS: Final = (
    ConfigKey("store", "path", "string", '".wasmkv/state"', "directory of the embedded store (LMDB); relative to the file"),
    ConfigKey("store", "url", "string", "none", "a store URL instead of `path`: `redis://`, `rediss://`, `redis+cluster://`, `rediss+cluster://`, `memory:`"),
    ConfigKey("store", "map_size", "integer", str(DEFAULT_MAP_SIZE_BYTES), f"bytes of address space LMDB reserves for the data, at least {MIN_MAP_SIZE_BYTES} ({MIN_MAP_SIZE_BYTES >> 20} MiB), rounded up to whole pages; the file grows only as data is written, and a full map doubles, up to {DEFAULT_MAX_MAP_SIZE_BYTES} ({DEFAULT_MAX_MAP_SIZE_BYTES >> 40} TiB) or `map_size` if larger (embedded (LMDB) store only, not in a URL's query)"),
    ConfigKey("cache", "dir", "string", '".wasmkv/cache"', "directory of the compiled-module cache; relative to the file"),
    ConfigKey("cache", "enabled", "boolean", "true", "`false` compiles every module at every start"),
    ConfigKey("dev", "listen", "string", '"127.0.0.1:8737"', "HOST:PORT of `wasmkv dev`'s HTTP endpoint"),
    ConfigKey("dev", "debounce_ms", "integer", "50", "how long file changes settle before a rebuild or reload"),
    ConfigKey("dev", "max_body_bytes", "integer", "8388608", "larger request bodies get 413, unread"),
    ConfigKey("dev", "allowed_hosts", "array of strings", "[]", "`Host` names the endpoint answers besides loopback and the listen address"),
    ConfigKey("dev", "allow_remote", "boolean", "false", "allow a listen address other machines can reach (calls are not authenticated)"),
    ConfigKey("dev", "workers", "integer", "8", "requests served at once; more connections get 503"),
    ConfigKey("dev", "compiler", "string", '"winch"', '"winch" compiles several times faster for reloads; "cranelift" runs faster'),
    ConfigKey("serve", "listen", "string", '"127.0.0.1:8080"', "HOST:PORT of `wasmkv serve` (`--listen` overrides)"),
    ConfigKey("serve", "workers", "integer", "1", "worker processes sharing the listen socket and the store (`--workers` overrides)"),
    ConfigKey("serve", "max_body_bytes", "integer", "8388608", "larger request bodies get 413, unread"),
    ConfigKey("serve", "tokens", "array of tables", "[]", "`[[serve.tokens]]` entries: who may call; with none, every call gets 401"),
    ConfigKey("serve", "auth_health", "boolean", "false", "`/healthz` and `/readyz` need a valid token"),
    ConfigKey("serve", "auth_metrics", "boolean", "false", "`/metrics` needs a valid token"),
    ConfigKey("serve", "log_format", "string", '"text"', '"json" writes one JSON object a log record (`--log-format` overrides)'),
    ConfigKey("serve.tokens", "sha256", "string", "required", "hex sha256 of the bearer token (`printf %s \"$TOKEN\" | sha256sum`); never the token itself"),
    ConfigKey("serve.tokens", "tenants", "array of strings", "required", 'the tenants the token may call and read; `["*"]` is all'),
    ConfigKey("tenants.NAME", "max_keys", "integer", "10000", "keys the tenant may hold, all buckets together"),
    ConfigKey("tenants.NAME", "max_bytes", "integer", "67108864", "key + value bytes the tenant may hold"),
    ConfigKey("tenants.NAME", "max_value_bytes", "integer", "1048576", "the largest value"),
    ConfigKey("tenants.NAME", "max_key_bytes", "integer", "512", "the longest key, in UTF-8 bytes (at most 65535)"),
    ConfigKey("tenants.NAME", "ops_per_second", "number", "none (unlimited)", "operations per second per host process (a batch counts one per key)"),
    ConfigKey("tenants.NAME", "max_concurrent_calls", "integer", "none (unlimited)", "the tenant's plugin calls in flight per `wasmkv serve` worker; more get 429"),
    ConfigKey("plugins.NAME", "file", "string", "required", "the plugin's `.wasm` or `.wat` file; relative to the file"),
    ConfigKey("plugins.NAME", "tenant", "string", "required", "the tenant it runs as; must be declared in `[tenants]`"),
    ConfigKey("plugins.NAME", "buckets", "array of strings", '["default"]', "the buckets it may open"),
    ConfigKey("plugins.NAME", "memory_bytes", "integer", "67108864", "its linear memory ceiling (also the most the host builds for it in one call)"),
    ConfigKey("plugins.NAME", "deadline_ms", "integer", "1000", "wall-clock limit of one call"),
    ConfigKey("plugins.NAME", "fuel", "integer", "none (unmetered)", "instruction budget of one call"),
    ConfigKey("plugins.NAME", "table_elements", "integer", "65536", "the most elements its table may hold"),
    ConfigKey("plugins.NAME", "config", "table of strings", "{}", "what an Extism plugin reads with `config_get`"),
    ConfigKey("plugins.NAME", "pool_size", "integer", "2", "instances that run its calls in parallel (1-64); each may use `memory_bytes`"),
    ConfigKey("plugins.NAME", "wasi", "boolean", "false", "lets it import WASI preview 1 (clocks, random, stdout/stderr to its log; no files, env or args)"),
    ConfigKey("plugins.NAME", "build", "string or array of strings", "none", 'command that builds it, run in the file\'s directory ("python" is wasmkv\'s own)'),
    ConfigKey("plugins.NAME", "sources", "array of strings", "[]", "globs `wasmkv dev` watches; a change runs `build`"),
)  # fmt: skip

_TOML_TYPES: Final = {bool: "boolean", int: "integer", float: "number", str: "string"}


def _toml(value: object) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


def config_reference() -> list[ConfigKey]:
    """Every key `wasmkv.toml` accepts, in the order the reference lists them."""
    store_options: dict[str, kv.Option] = dict(kv.COMMON_OPTIONS)
    for backend in kv.BACKENDS.values():
        store_options.update(backend.options)
    store = [
        ConfigKey(
            "store",
            name,
            _TOML_TYPES[option.kind],
            _toml(option.default),
            option.help + ("" if name in kv.COMMON_OPTIONS else f" ({_takers(name)} only)"),
        )
        for name, option in store_options.items()
    ]
    store_end = max(i for i, key in enumerate(_KEYS) if key.table == "store") + 1
    return [*_KEYS[:store_end], *store, *_KEYS[store_end:]]


def _takers(name: str) -> str:
    kinds = sorted({backend.kind.split(" ", 1)[1] for backend in kv.BACKENDS.values() if name in backend.options})
    return " or ".join(kinds)


def keys_of(table: str) -> list[str]:
    """The names of the keys a table accepts (`tenants.NAME` for every tenant table)."""
    return [key.name for key in config_reference() if key.table == table]


def reference_table() -> str:
    """The reference as the Markdown table the README carries."""
    lines = ["| table | key | type | default | meaning |", "|---|---|---|---|---|"]
    for key in config_reference():
        lines.append(f"| `[{key.table}]` | `{key.name}` | {key.type} | {key.default} | {key.meaning} |")
    return "\n".join(lines)
