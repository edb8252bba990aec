"""Is this compiled module a plugin? Its imports, its exports and its memory, checked against the ABI and the limits."""

from __future__ import annotations

import dataclasses
import hashlib

import wasmtime

from ..abi import ENTRY_SIGNATURE, HOST_IMPORTS, HOST_MODULE, KV_IMPORTS, KV_MODULE, MEMORY_EXPORT
from ._errors import LoadError
from ._limits import Limits

__all__ = ["ModuleInfo", "Signature", "check_module", "signature"]

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
        if provided is None:
            raise LoadError(f"plugin {name!r} imports {imp.module}.{imp.name}, which the wasmkv ABI does not provide")
        ty = imp.type
        if not isinstance(ty, wasmtime.FuncType) or signature(ty) != provided:
            shown = _shown(signature(ty)) if isinstance(ty, wasmtime.FuncType) else type(ty).__name__
            raise LoadError(
                f"plugin {name!r} imports {imp.module}.{imp.name} with type {shown}; the ABI's is {_shown(provided)}"
            )
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
