"""Is this compiled module a plugin? Its imports, its exports and its memory, checked against the ABI and the limits."""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Final

import wasmtime

from ..abi import (
    ENTRY_SIGNATURE,
    ENV_IMPORTS,
    ENV_MODULE,
    HOST_IMPORTS,
    HOST_MODULE,
    INITIALIZE_EXPORT,
    KV_IMPORTS,
    KV_MODULE,
    MEMORY_EXPORT,
    WASI_MODULE,
)
from ._errors import LoadError
from ._extism import EXTISM_IMPORTS, EXTISM_MODULE
from ._limits import MAX_FUNCTIONS, MAX_GLOBALS, MAX_MODULE_BYTES, MAX_SEGMENTS, Limits
from ._text import safe_name

__all__ = ["ModuleInfo", "Signature", "check_binary", "check_module", "signature"]

Signature = tuple[tuple[str, ...], tuple[str, ...]]
"""A function type as the ABI tables write it: (param types, result types)."""

#: Every import the ABI provides: (module, name) -> signature.
_PROVIDED: dict[tuple[str, str], Signature] = {
    **{(KV_MODULE, name): sig for name, sig in KV_IMPORTS.items()},
    **{(HOST_MODULE, name): sig for name, sig in HOST_IMPORTS.items()},
    **{(ENV_MODULE, name): sig for name, sig in ENV_IMPORTS.items()},
    **{(EXTISM_MODULE, name): sig for name, sig in EXTISM_IMPORTS.items()},
}


@dataclasses.dataclass(frozen=True, slots=True)
class ModuleInfo:
    """What the check learnt of a module: its sha256, entry points, the (distinct) imports the host
    links one by one, whether it needs WASI, and whether it exports `_initialize`."""

    sha256: str
    entry_points: tuple[str, ...]
    imports: tuple[tuple[str, str], ...]
    wasi: bool = False
    initialize: bool = False
    #: Whether it imports Extism's kernel (`extism:host/env`): an Extism plugin.
    extism: bool = False


def signature(functype: wasmtime.FuncType) -> Signature:
    """A wasmtime function type as the ABI tables write it."""
    return tuple(str(p) for p in functype.params), tuple(str(r) for r in functype.results)


def _shown(sig: Signature) -> str:
    return f"({', '.join(sig[0])}) -> ({', '.join(sig[1])})"


#: Section id -> (what it declares, the most a plugin may declare), for the sections whose count costs.
_COUNTED: Final = {
    3: ("functions", MAX_FUNCTIONS),
    6: ("globals", MAX_GLOBALS),
    9: ("element segments", MAX_SEGMENTS),
    11: ("data segments", MAX_SEGMENTS),
}


def _leb(wasm: bytes, at: int) -> tuple[int, int]:
    """An unsigned LEB128 at `at`: its value and the offset after it."""
    value = shift = 0
    while True:
        byte = wasm[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7
        if shift > 35:
            raise ValueError("LEB128 too long")


def check_binary(wasm: bytes, name: str, label: str) -> None:
    """Check a module's size and what it declares before compiling it, which costs memory by the function.

    Only counts are read; a malformed module is left for the compiler to describe.

    Raises:
        LoadError: if the module is larger than `MAX_MODULE_BYTES` or declares more than a plugin may.
    """
    if len(wasm) > MAX_MODULE_BYTES:
        raise LoadError(
            f"plugin {name!r} ({label}) is {len(wasm)} bytes, over the {MAX_MODULE_BYTES}-byte module limit"
        )
    at = 8
    try:
        while at < len(wasm):
            section, at = wasm[at], at + 1
            size, at = _leb(wasm, at)
            if section in _COUNTED:
                count, _ = _leb(wasm, at)
                what, most = _COUNTED[section]
                if count > most:
                    raise LoadError(
                        f"plugin {name!r} ({label}) declares {count} {what}, over the limit of {most} for a plugin"
                    )
            at += size
    except (IndexError, ValueError):
        return


def check_module(module: wasmtime.Module, wasm: bytes, *, name: str, limits: Limits, wasi: bool = False) -> ModuleInfo:
    """Check a compiled module against the ABI and the plugin's limits.

    `wasi` says the plugin was loaded with WASI: then it may import
    `wasi_snapshot_preview1` functions (the linker checks their types).

    Raises:
        LoadError: if it imports anything the ABI does not provide or with the
            wrong signature (WASI without `wasi`), does not export `memory`, or
            starts with more memory than `limits.memory_bytes`.
    """
    imports: dict[tuple[str, str], None] = {}
    uses_wasi = False
    for imp in module.imports:
        key = (imp.module, imp.name or "")
        provided = _PROVIDED.get(key)
        # The module's own names are escaped before they reach a message: a module is hostile input.
        imported = safe_name(f"{imp.module}.{imp.name}")
        if imp.module == WASI_MODULE:
            if not wasi:
                raise LoadError(
                    f"plugin {name!r} imports {imported}: it is a WASI module; load it with WASI enabled "
                    f"(Host.load(..., wasi=True), wasi = true under [plugins.{name}] in wasmkv.toml, "
                    "or wasmkv run --wasi)"
                )
            uses_wasi = True
            continue
        if provided is None:
            raise LoadError(f"plugin {name!r} imports {imported}, which the wasmkv ABI does not provide")
        ty = imp.type
        if not isinstance(ty, wasmtime.FuncType) or signature(ty) != provided:
            shown = _shown(signature(ty)) if isinstance(ty, wasmtime.FuncType) else type(ty).__name__
            raise LoadError(f"plugin {name!r} imports {imported} with type {shown}; the ABI's is {_shown(provided)}")
        # A module may import one function twice; the linker takes each name once.
        imports[key] = None
    exports = {exp.name: exp.type for exp in module.exports}
    memory = exports.get(MEMORY_EXPORT)
    if not isinstance(memory, wasmtime.MemoryType):
        raise LoadError(f"plugin {name!r} does not export its linear memory as {MEMORY_EXPORT!r}")
    initial = memory.limits.min * 65536
    if initial > limits.memory_bytes:
        raise LoadError(
            f"plugin {name!r} starts with {initial} bytes of memory, "
            f"over its memory_bytes limit of {limits.memory_bytes}"
        )
    entry_points = sorted(
        export
        for export, ty in exports.items()
        if isinstance(ty, wasmtime.FuncType) and signature(ty) == ENTRY_SIGNATURE
    )
    initialize = exports.get(INITIALIZE_EXPORT)
    return ModuleInfo(
        hashlib.sha256(wasm).hexdigest(),
        tuple(entry_points),
        tuple(imports),
        wasi=uses_wasi,
        initialize=isinstance(initialize, wasmtime.FuncType) and signature(initialize) == ((), ()),
        extism=any(module_name == EXTISM_MODULE for module_name, _ in imports),
    )
