"""One instance of a plugin version: its wasmtime store, linked imports, memory and entry points.

An instance is used by one thread at a time and replaced after a trap, because
a trapped guest may have left its own memory half-updated.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

import wasmtime

from ..abi import HOST_IMPORTS, KV_IMPORTS, KV_MODULE, MEMORY_EXPORT
from ._errors import LoadError
from ._ffi import ExportFunc, GuestMemory, define_unchecked
from ._imports import AbiImports, CallDeadline, Grant, StartFunctionCall
from ._limits import MAX_MEMORIES, MAX_TABLES
from ._sandbox import Compiled, Sandbox

__all__ = ["Instance", "trap_reason"]

_log = logging.getLogger("wasmkv.host")


def trap_reason(exc: Exception) -> str:
    """The root cause of a wasmtime trap message, e.g. "wasm `unreachable` instruction executed"."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    cause = re.sub(r"^\d+: ", "", lines[-1])
    return cause.removeprefix("wasm trap: ")


class Instance:
    """A live instantiation of a compiled plugin module, bound to its grant.

    Raises:
        LoadError: if the imports cannot be linked or instantiation fails (a
            trapping start function, or one that calls an import).
    """

    def __init__(self, compiled: Compiled, grant: Grant, sandbox: Sandbox) -> None:
        self.grant = grant
        self.sandbox = sandbox
        self.store = sandbox.new_store(compiled.engine, grant.limits)
        self.linker = wasmtime.Linker(compiled.engine)
        self.imports = AbiImports(grant)
        # Set when an import body hit a host bug: the call traps and the caller gets it as the cause.
        self.host_error: BaseException | None = None
        # Set when an import was called past the call's deadline: the trap is a timeout.
        self.timed_out = False
        self._callbacks: list[object] = []
        bodies = self.imports.bodies()
        try:
            for module_name, name in compiled.info.imports:
                signature = (KV_IMPORTS if module_name == KV_MODULE else HOST_IMPORTS)[name]
                on_error = self._on_error(f"{module_name}.{name}")
                self._callbacks.append(
                    define_unchecked(self.linker, module_name, name, signature, bodies[module_name, name], on_error)
                )
        except wasmtime.WasmtimeError as exc:
            self.close()
            raise LoadError(f"plugin {grant.plugin!r} cannot link its imports: {exc}") from exc
        sandbox.arm(self.store, grant.limits)
        try:
            instance = self.linker.instantiate(self.store, compiled.module)
        except (wasmtime.WasmtimeError, wasmtime.Trap) as exc:
            self.close()
            reason = trap_reason(exc)
            limits = grant.limits
            if "table" in reason:
                reason += f" (a plugin has at most {MAX_TABLES} table of table_elements={limits.table_elements})"
            elif "memor" in reason:
                reason += f" (a plugin has at most {MAX_MEMORIES} memory of memory_bytes={limits.memory_bytes})"
            raise LoadError(f"plugin {grant.plugin!r} failed to instantiate: {reason}") from exc
        self.wasm_instance = instance
        exports = instance.exports(self.store)
        memory = exports[MEMORY_EXPORT]
        assert isinstance(memory, wasmtime.Memory)
        self.memory = self.imports.memory = GuestMemory(self.store, memory)
        self.entry: dict[str, ExportFunc] = {}
        for export in compiled.info.entry_points:
            func = exports[export]
            assert isinstance(func, wasmtime.Func)
            self.entry[export] = ExportFunc(self.store, func)

    def run(self, func: ExportFunc, input: bytes, deadline_ms: int) -> int:
        """Run entry point `func` with `input` for at most `deadline_ms`, within the grant's fuel; its status.

        Raises:
            wasmtime.Trap, wasmtime.WasmtimeError: if the call trapped (see `host_error`).
        """
        limits = self.grant.limits
        self.imports.begin_call(input, deadline_ms)
        self.host_error = None
        self.timed_out = False
        if limits.fuel is not None:
            self.store.set_fuel(limits.fuel)
        return func(self.sandbox.deadline_ticks_for(deadline_ms))

    @property
    def output(self) -> bytes:
        """What the current (or last) call wrote with `host.output`."""
        return bytes(self.imports.output)

    def close(self) -> None:
        """Release the wasmtime store; the instance must not run again."""
        if isinstance(self.imports.memory, GuestMemory):
            self.imports.memory.release()
        self.store.close()
        self.linker.close()

    def _on_error(self, where: str) -> Callable[[BaseException], int | bytes]:
        def on_error(exc: BaseException) -> int | bytes:
            status = self.imports.status_of(exc)
            if status is not None:
                return status
            if isinstance(exc, CallDeadline):
                self.timed_out = True
                return b"deadline"
            if isinstance(exc, StartFunctionCall):
                return f"{where} was called from the module's start function; imports are unavailable there".encode()
            # Anything else is a host bug: trap this call, keep it for the caller, never crash.
            self.host_error = exc
            _log.error("host error in %s", where, exc_info=exc)
            return f"host error in {where}: {type(exc).__name__}: {exc}".encode()

        return on_error
