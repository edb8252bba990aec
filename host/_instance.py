"""One instance of a plugin version: its wasmtime store, linked imports, memory and entry points.

An instance is used by one thread at a time and replaced after a trap, because
a trapped guest may have left its own memory half-updated.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable

import wasmtime

from ..abi import (
    ENV_IMPORTS,
    ENV_MODULE,
    HOST_IMPORTS,
    INITIALIZE_EXPORT,
    KV_IMPORTS,
    KV_MODULE,
    MEMORY_EXPORT,
    WASI_MODULE,
)
from ._errors import LoadError
from ._extism import EXTISM_IMPORTS, EXTISM_MODULE, KERNEL_FUNCTIONS, ExtismKernel
from ._ffi import ExportFunc, GuestMemory, Slots, define_unchecked
from ._imports import KV_OPS, AbiImports, CallDeadline, Grant, GuestAbort, StartFunctionCall
from ._limits import MAX_MEMORIES, MAX_TABLES
from ._sandbox import Compiled, Sandbox, check_thread_stack
from ._wasi import FD_WRITE, POLL_ONEOFF, WasiStreams, fd_write, poll_oneoff, wasi_config

__all__ = ["Instance", "trap_reason"]

_log = logging.getLogger("wasmkv.host")

_SIGNATURES = {KV_MODULE: KV_IMPORTS, ENV_MODULE: ENV_IMPORTS, EXTISM_MODULE: EXTISM_IMPORTS}


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
        StackTooSmall: if this thread's stack is too small to run the start function on.
    """

    def __init__(self, compiled: Compiled, grant: Grant, sandbox: Sandbox) -> None:
        check_thread_stack()  # instantiating runs the module's start function, on this thread
        self.grant = grant
        self.sandbox = sandbox
        self.version = compiled.info.sha256
        self.closed = False
        self._fuel = grant.limits.fuel
        # An Extism plugin's kernel is a second instance, with a second memory, in the same store.
        self.store = sandbox.new_store(compiled.engine, grant.limits, kernel=compiled.info.extism)
        self.linker = wasmtime.Linker(compiled.engine)
        self.imports = AbiImports(grant)
        self.imports.log.extra["version"] = self.version
        # Set when an import body hit a host bug: the call traps and the caller gets it as the cause.
        self.host_error: BaseException | None = None
        # Set when an import was called past the call's deadline: the trap is a timeout.
        self.timed_out = False
        self._callbacks: list[object] = []
        self.wasi: WasiStreams | None = None
        bodies = self.imports.bodies()
        self.extism: ExtismKernel | None = None
        if compiled.info.extism:
            self.extism = ExtismKernel(self.store, compiled.engine, self.imports)
            timed = self.imports.timed
            bodies.update({(EXTISM_MODULE, name): timed(body) for name, body in self.extism.bodies().items()})
        try:
            for module_name, name in compiled.info.imports:
                if module_name == EXTISM_MODULE and name in KERNEL_FUNCTIONS:
                    assert self.extism is not None
                    self.linker.define(self.store, module_name, name, self.extism.functions[name])
                    continue
                signature = _SIGNATURES.get(module_name, HOST_IMPORTS)[name]
                op = name if module_name == KV_MODULE and name in KV_OPS else None
                on_error = self._on_error(f"{module_name}.{name}", op)
                self._callbacks.append(
                    define_unchecked(self.linker, module_name, name, signature, bodies[module_name, name], on_error)
                )
            if compiled.info.wasi:
                self._link_wasi()
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
        if compiled.info.initialize:
            self._initialize(exports[INITIALIZE_EXPORT])

    def _link_wasi(self) -> None:
        """WASI preview 1 with nothing opened (see `host._wasi`), its sleeps bounded by the call."""
        self.wasi = WasiStreams(self.imports.log)
        self.store.set_wasi(wasi_config(self.wasi))
        self.linker.define_wasi()
        self.linker.allow_shadowing = True
        imports = self.imports

        streams = self.wasi

        def poll(s: Slots) -> int:
            return poll_oneoff(imports, s)

        def write(s: Slots) -> int:
            return fd_write(imports, streams, s)

        for (name, signature), body in ((POLL_ONEOFF, poll), (FD_WRITE, write)):
            on_error = self._on_error(f"{WASI_MODULE}.{name}")
            self._callbacks.append(
                define_unchecked(self.linker, WASI_MODULE, name, signature, imports.timed(body), on_error)
            )

    def _initialize(self, func: object) -> None:
        """Run the module's `_initialize` once (a reactor's constructors), within the call limits.

        Raises:
            LoadError: if it traps or runs out of time or fuel.
        """
        assert isinstance(func, wasmtime.Func)
        limits = self.grant.limits
        self.imports.begin_call(b"", time.monotonic() + limits.deadline_ms / 1000)
        self.sandbox.arm(self.store, limits)
        try:
            func(self.store)
        except (wasmtime.WasmtimeError, wasmtime.Trap) as exc:
            self.close()
            raise LoadError(f"plugin {self.grant.plugin!r} failed in {INITIALIZE_EXPORT}: {trap_reason(exc)}") from exc
        finally:
            if self.wasi is not None:
                self.wasi.flush()

    def run(self, func: ExportFunc, input: bytes, deadline: float, deadline_ticks: int, export: str = "") -> int:
        """Run entry point `func` (named `export`, for logs) with `input`; its status.

        The call ends at `deadline` (monotonic seconds) for its imports and `deadline_ticks`
        epoch ticks from now for its wasm (see `Sandbox.deadline_ticks_for`), within the fuel limit.

        Raises:
            wasmtime.Trap, wasmtime.WasmtimeError: if the call trapped (see `host_error`).
        """
        imports = self.imports
        imports.log.extra["export"] = export
        imports.begin_call(input, deadline)
        if self.extism is not None:
            self.extism.begin_call(input)
        self.host_error = None
        self.timed_out = False
        if self._fuel is not None:
            self.store.set_fuel(self._fuel)
        try:
            return func(deadline_ticks)
        finally:
            if self.wasi is not None:
                self.wasi.flush()

    def take_result(self) -> tuple[bytes, str | None]:
        """The `output` and `error` of the call just ended, in one step; a plain plugin's buffer is released."""
        if self.extism is None:
            return self.imports.take_output(), None
        return self.extism.output, self.extism.error

    @property
    def output(self) -> bytes:
        """What the current (or last) call wrote with `host.output` (an Extism plugin: `output_set`)."""
        if self.extism is not None:
            return self.extism.output
        return bytes(self.imports.output)

    @property
    def error(self) -> str | None:
        """The error message the current (or last) call set (Extism's `error_set`), if any."""
        return None if self.extism is None else self.extism.error

    def close(self) -> None:
        """Release the wasmtime store; the instance must not run again."""
        self.closed = True
        if isinstance(self.imports.memory, GuestMemory):
            self.imports.memory.release()
        if self.extism is not None:
            self.extism.release()
        self.store.close()
        self.linker.close()

    def _on_error(self, where: str, op: str | None = None) -> Callable[[BaseException], int | bytes]:
        def on_error(exc: BaseException) -> int | bytes:
            status = self.imports.status_of(exc)
            if status is not None:
                if op is not None:
                    self.imports.refused(op, status)
                return status
            if isinstance(exc, CallDeadline):
                self.timed_out = True
                return b"deadline"
            if isinstance(exc, GuestAbort):
                return str(exc).encode()
            if isinstance(exc, StartFunctionCall):
                return f"{where} was called from the module's start function; imports are unavailable there".encode()
            # Anything else is a host bug: trap this call, keep it for the caller, never crash.
            self.host_error = exc
            _log.error("host error in %s", where, exc_info=exc)
            return f"host error in {where}: {type(exc).__name__}: {exc}".encode()

        return on_error
