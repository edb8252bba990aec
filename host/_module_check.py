"""Is this compiled module a plugin? Its imports, its exports and its memory, checked against the ABI and the limits."""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Final

import wasmtime

from ..abi import ENTRY_SIGNATURE, HOST_IMPORTS, HOST_MODULE, KV_IMPORTS, KV_MODULE, MEMORY_EXPORT
from ._errors import LoadError
from ._limits import MAX_FUNCTIONS, MAX_GLOBALS, MAX_MODULE_BYTES, MAX_SEGMENTS, Limits
from ._text import safe_name

__all__ = ["ModuleInfo", "Signature", "check_binary", "check_module", "signature"]

Signature = tuple[tuple[str, ...], tuple[str, ...]]
"""A function type as the ABI tables write it: (param types, result types)."""

#: Every import the ABI provides: (module, name) -> signature.
_PROVIDED: dict[tuple[str, str], Signature] = {
    **{(KV_MODULE, name): sig for name, sig in KV_IMPORTS.items()},
    **{(HOST_MODULE, name): sig for name, sig in HOST_IMPORTS.items()},
}


@dataclasses.dataclass(frozen=True, slots=True)
class ModuleInfo:
    """What the check learnt of a module: its sha256, entry points and the (distinct) imports it needs."""

    sha256: str
    entry_points: tuple[str, ...]
    imports: tuple[tuple[str, str], ...]


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


def check_module(module: wasmtime.Module, wasm: bytes, *, name: str, limits: Limits) -> ModuleInfo:
    """Check a compiled module against the ABI and the plugin's limits.

    Raises:
        LoadError: if it imports anything the ABI does not provide or with the
            wrong signature, does not export `memory`, or starts with more
            memory than `limits.memory_bytes`.
    """
    imports: dict[tuple[str, str], None] = {}
    for imp in module.imports:
        key = (imp.module, imp.name or "")
        provided = _PROVIDED.get(key)
        # The module's own names are escaped before they reach a message: a module is hostile input.
        imported = safe_name(f"{imp.module}.{imp.name}")
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
    return ModuleInfo(hashlib.sha256(wasm).hexdigest(), tuple(entry_points), tuple(imports))
