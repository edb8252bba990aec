"""The wasmkv plugin ABI: import names, signatures, status codes, limits.

`abi/ABI.md` is the human-readable contract; this module is the same contract
as Python constants. It imports nothing of ours, so both `kv` and `host` build
on it.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Final

__all__ = [
    "BATCH_MAX_ITEMS",
    "ENTRY_SIGNATURE",
    "ENV_IMPORTS",
    "ENV_MODULE",
    "HOST_IMPORTS",
    "HOST_MODULE",
    "I32",
    "I64",
    "INITIALIZE_EXPORT",
    "KV_IMPORTS",
    "KV_MODULE",
    "LIST_MAX_LIMIT",
    "MEMORY_EXPORT",
    "WASI_MODULE",
    "LogLevel",
    "Status",
    "describe_status",
    "sdk_paths",
    "status_name",
]


class Status(enum.IntEnum):
    """Result codes an import returns to the plugin (negative on error)."""

    OK = 0
    NOT_FOUND = -1
    INVALID_KEY = -2
    VALUE_TOO_LARGE = -3
    QUOTA_EXCEEDED = -4
    NOT_A_NUMBER = -5
    INTEGER_OVERFLOW = -6
    ACCESS_DENIED = -7
    BAD_HANDLE = -8
    BAD_POINTER = -9
    RATE_LIMITED = -10
    BACKEND_UNAVAILABLE = -11
    INVALID_ARGUMENT = -12


def status_name(status: int) -> str | None:
    """The ABI's name of a status (`QUOTA_EXCEEDED` for -4), or None for a code the plugin made up."""
    try:
        return Status(status).name
    except ValueError:
        return None


def describe_status(status: int) -> str:
    """A status for messages: `-4 (QUOTA_EXCEEDED)` for one of the ABI's, the bare number for a plugin's own."""
    name = status_name(status)
    return str(status) if name is None else f"{status} ({name})"


class LogLevel(enum.IntEnum):
    """Levels accepted by `host.log`."""

    DEBUG = 0
    INFO = 1
    WARNING = 2
    ERROR = 3


I32: Final = "i32"
I64: Final = "i64"

KV_MODULE: Final = "kv"
HOST_MODULE: Final = "host"
MEMORY_EXPORT: Final = "memory"
#: WASI preview 1, provided to plugins loaded with `wasi=True` (no files, environment or arguments).
WASI_MODULE: Final = "wasi_snapshot_preview1"
#: Imports toolchains' runtimes expect, provided to every plugin (AssemblyScript's `abort`).
ENV_MODULE: Final = "env"
#: Called once per instance, before any entry point, when a module exports it (WASI reactors do).
INITIALIZE_EXPORT: Final = "_initialize"

#: The most keys one `list_keys` page, or one batch request, may carry.
LIST_MAX_LIMIT: Final = 1000
BATCH_MAX_ITEMS: Final = 1000

#: `kv` imports: name -> (param types, result types).
KV_IMPORTS: Final[dict[str, tuple[tuple[str, ...], tuple[str, ...]]]] = {
    "open": ((I32, I32), (I32,)),
    "get": ((I32, I32, I32, I32, I32), (I32,)),
    "set": ((I32, I32, I32, I32, I32), (I32,)),
    "set_with_ttl": ((I32, I32, I32, I32, I32, I64), (I32,)),
    "delete": ((I32, I32, I32), (I32,)),
    "exists": ((I32, I32, I32), (I32,)),
    "increment": ((I32, I32, I32, I64, I32), (I32,)),
    "compare_and_swap": ((I32, I32, I32, I32, I32, I32, I32), (I32,)),
    "list_keys": ((I32, I32, I32, I32, I32, I32, I32, I32), (I32,)),
    "scan": ((I32, I32, I32, I32, I32), (I32,)),
    "get_many": ((I32, I32, I32, I32, I32), (I32,)),
    "set_many": ((I32, I32, I32, I32, I32), (I32,)),
    "delete_many": ((I32, I32, I32, I32, I32), (I32,)),
}

#: `host` imports: name -> (param types, result types).
HOST_IMPORTS: Final[dict[str, tuple[tuple[str, ...], tuple[str, ...]]]] = {
    "input": ((I32, I32), (I32,)),
    "output": ((I32, I32), (I32,)),
    "log": ((I32, I32, I32), ()),
}

#: `env` imports: name -> (param types, result types). `abort(message, file, line, column)`
#: takes AssemblyScript strings (UTF-16, their byte length in the u32 before them) and traps.
ENV_IMPORTS: Final[dict[str, tuple[tuple[str, ...], tuple[str, ...]]]] = {
    "abort": ((I32, I32, I32, I32), ()),
}

#: An export with this signature is an entry point: `() -> i32` status.
ENTRY_SIGNATURE: Final[tuple[tuple[str, ...], tuple[str, ...]]] = ((), (I32,))


def sdk_paths() -> dict[str, Path]:
    """Where each guest SDK lives in this installation, by language.

    `c` is the directory to pass to `-I` (it holds `wasmkv.h`); `zig` is the
    module to pass as `-Mwasmkv=`; `rust` is the crate's directory (a path
    dependency); `assemblyscript` is the module to import. They ship inside
    the package, so a plugin can be built against an installed wasmkv
    without its source tree.
    """
    guest = Path(__file__).resolve().parent / "guest"
    return {
        "c": guest,
        "zig": guest / "wasmkv.zig",
        "rust": guest / "rust",
        "assemblyscript": guest / "assemblyscript" / "wasmkv.ts",
    }
