"""A loaded plugin: its current version, calls, and hot swaps to a new version."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from concurrent.futures import Executor

import wasmtime

from .. import kv
from ..abi import describe_status
from ._errors import (
    LoadError,
    PluginClosed,
    PluginError,
    PluginFuelExhausted,
    PluginStatusError,
    PluginTimeout,
    PluginTrap,
    UnknownExport,
)
from ._imports import Grant
from ._instance import Instance, trap_reason
from ._limits import Limits
from ._sandbox import Compiled, Sandbox, Source
from ._stats import CallRecord, Observer, PluginCounters, PluginStats, notify
from ._text import safe_name, safe_text

__all__ = ["Plugin", "Version"]

_monotonic = time.monotonic

#: The outcome a call that raised is counted as (`CallRecord.outcome`); any other error is a "trap".
_OUTCOMES: dict[type[PluginError], str] = {
    PluginStatusError: "error",
    PluginTimeout: "timeout",
    PluginFuelExhausted: "fuel_exhausted",
    UnknownExport: "unknown_export",
    PluginClosed: "closed",
}


class _Call:
    """One call's slot: the instance it runs on (None once dropped) and the KV operations it made."""

    __slots__ = ("instance", "kv_ops")

    def __init__(self, instance: Instance | None) -> None:
        self.instance = instance
        self.kv_ops: dict[tuple[str, str], int] = {}


class Version:
    """One compiled version of a plugin and its pool of instances.

    A call takes an idle instance (or a free slot, instantiated on first use)
    and gives it back when done; once the version is retired (replaced by a
    reload, or the plugin closed) instances are closed as they come back.
    """

    def __init__(self, compiled: Compiled, pool_size: int = 1) -> None:
        self.compiled = compiled
        self.sha256 = compiled.info.sha256
        self.entry_points = list(compiled.info.entry_points)
        self.pool_size = pool_size
        # Free slots: an idle instance, or None for one not made yet (or dropped after a trap).
        self._free: list[Instance | None] = [None] * pool_size
        # `with self._lock` is C code; the condition (on the same lock) is used only to wait.
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self.busy = 0  # slots taken by calls running now
        self._waiting = 0  # callers waiting for a slot: a release notifies only if there are any
        # Set once a newer version replaced this one: late callers move on to the new one.
        self.retired = False

    def acquire(self) -> tuple[bool, Instance | None]:
        """Wait for a free slot: (True, its instance or None to make one), or (False, None) once retired."""
        with self._lock:
            while not self._free and not self.retired:
                self._waiting += 1
                try:
                    self._ready.wait()
                finally:
                    self._waiting -= 1
            if self.retired:
                return False, None
            self.busy += 1
            return True, self._free.pop()

    def release(self, instance: Instance | None) -> None:
        """Give a slot back: its instance to reuse, or None if it was dropped (closed after a trap)."""
        with self._lock:
            self.busy -= 1
            if not self.retired:
                self._free.append(instance)
                if self._waiting:
                    self._ready.notify()
                return
            self._ready.notify_all()  # a `retire(wait=True)` may be waiting for the last one
        if instance is not None:
            instance.close()

    def seed(self, instance: Instance) -> None:
        """Put a first instance in the pool (made at load, so a module that cannot start fails there)."""
        with self._lock:
            self._free[-1] = instance

    @property
    def instance(self) -> Instance | None:
        """An idle instance, if any (for diagnostics and tests; a call takes one with `acquire`)."""
        free = self._free
        return free[-1] if free else None

    def retire(self, *, wait: bool = False) -> None:
        """No more calls on this version: close the idle instances; busy ones close as they come back.

        With `wait`, return only once the calls running now have ended (by their deadline at the latest).
        """
        with self._lock:
            self.retired = True
            idle, self._free = self._free, []
            self._ready.notify_all()
        for instance in idle:
            if instance is not None:
                instance.close()
        if wait:
            with self._lock:
                while self.busy:
                    self._ready.wait()


class Plugin:
    """A loaded plugin bound to a tenant: call its entry points with `call` (or `acall`).

    Thread-safe: up to `pool_size` calls run at once, each on its own
    instance (instances share nothing but the store); more wait for one to
    be free. A trap, timeout or memory bomb fails that call only; its
    instance is replaced. `limits.memory_bytes` caps each instance, so a
    plugin may use up to `pool_size` times that. Build one with `Host.load`.
    """

    def __init__(
        self,
        sandbox: Sandbox,
        grant: Grant,
        version: Version,
        *,
        executor: Executor | None = None,
        observers: list[Observer] | None = None,
    ) -> None:
        self.name = grant.plugin
        self.tenant: kv.Tenant = grant.tenant
        self.buckets = grant.buckets
        self.limits: Limits = grant.limits
        self.logger = grant.logger
        self.pool_size = version.pool_size
        self._sandbox = sandbox
        self._grant = grant
        self._version = version
        self._reload_lock = threading.Lock()
        self._closed = False
        self._executor = executor
        self._observers = observers if observers is not None else []
        self.counters = PluginCounters()
        # Instantiate one now so a module that cannot start fails at load, not at its first call.
        version.seed(Instance(version.compiled, grant, sandbox))

    @property
    def version(self) -> str:
        """The sha256 of the module now serving."""
        return self._version.sha256

    @property
    def exports(self) -> list[str]:
        """The entry points: exports of type `() -> i32`."""
        return list(self._version.entry_points)

    def call(self, export: str, input: bytes = b"") -> bytes:
        """Run entry point `export` with `input`; return what the plugin wrote with `host.output`.

        Raises:
            TypeError: if `input` is not bytes (text must be encoded first).
            PluginClosed: if the plugin was closed or unloaded.
            UnknownExport: if there is no `() -> i32` export of that name.
            PluginStatusError: if it returned a non-zero status.
            PluginTimeout: if it ran past `limits.deadline_ms`.
            PluginFuelExhausted: if it used up `limits.fuel`.
            PluginTrap: if it trapped for any other reason (including a host error in an import).
        """
        if not isinstance(input, bytes | bytearray | memoryview):
            raise TypeError(
                f"plugin {self.name!r} input must be bytes, got {type(input).__name__}"
                + (": encode text first, e.g. input.encode()" if isinstance(input, str) else "")
            )
        counters = self.counters
        while True:
            if self._closed:
                raise PluginClosed(f"plugin {self.name!r} is closed", plugin=self.name, export=export)
            version = self._version  # a concurrent reload swaps this; a call finishes on the one it took
            # The uncontended case inline (a free slot, taken under the lock); `acquire` waits for one.
            with version._lock:
                free = version._free
                if free and not version.retired:
                    version.busy += 1
                    instance = free.pop()
                    break
            taken, instance = version.acquire()
            if taken:
                break
        call = _Call(instance)
        started = _monotonic()
        outcome, status = "ok", None
        try:
            return self._call(version, call, export, input, started)
        except PluginError as exc:
            outcome = _OUTCOMES.get(type(exc), "trap")
            status = exc.status if isinstance(exc, PluginStatusError) else None
            raise
        finally:
            with version._lock:
                kept = not version.retired
                if kept:  # the common case inline; `release` closes the instance of a retired version
                    version.busy -= 1
                    version._free.append(call.instance)
                    if version._waiting:
                        version._ready.notify()
            if not kept:
                version.release(call.instance)
            seconds = _monotonic() - started
            counters.record(export, outcome, seconds, call.kv_ops)
            if self._observers:
                record = CallRecord(
                    self.name, self.tenant.name, export, version.sha256, outcome, seconds, status, call.kv_ops
                )
                notify(self._observers, record)

    async def acall(self, export: str, input: bytes = b"") -> bytes:
        """As `call`, awaited: the call runs on the host's bounded executor, never on the event loop.

        Raises:
            As `call`.
        """
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.call, export, input)

    def _call(self, version: Version, call: _Call, export: str, input: bytes, started: float) -> bytes:
        """Run one call of `version` on `call.instance` (made now if None); its output.

        Leaves in `call` the instance to give back (None if it was dropped) and the call's KV operations.
        """
        instance = call.instance
        if instance is None:
            # A fresh instance (after a trap) runs the module's start function again: that time is
            # this call's, and a start function that fails is this call's failure, not a load error.
            try:
                instance = call.instance = Instance(version.compiled, self._grant, self._sandbox)
            except LoadError as exc:
                cause = exc.__cause__ if isinstance(exc.__cause__, Exception) else exc
                raise self._trap_error(export, cause, b"", timed_out=False) from exc
        func = instance.entry.get(export)
        if func is None:
            raise UnknownExport(
                f"plugin {self.name!r} has no entry point {safe_name(repr(export))} "
                f"(it has: {safe_name(', '.join(version.entry_points))})",
                plugin=self.name,
                export=export,
            )
        left_ms = self.limits.deadline_ms - (time.monotonic() - started) * 1000
        if left_ms <= 0:
            late = TimeoutError("the deadline passed while a new instance ran its start function")
            raise self._trap_error(export, late, b"", timed_out=True)
        try:
            status = instance.run(func, bytes(input), math.ceil(left_ms), export)
        except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
            output = instance.output
            host_error = instance.host_error
            timed_out = instance.timed_out
            error = instance.error
            call.kv_ops = instance.imports.take_op_counts()
            instance.close()
            call.instance = None
            raise self._trap_error(export, exc, output, timed_out=timed_out, error=error) from host_error or exc
        call.kv_ops = instance.imports.take_op_counts()
        output = instance.output
        instance.imports.output = bytearray()  # the call's output is the caller's now: release it
        error = instance.error
        # An Extism plugin fails its call by setting an error, whatever it returns (as Extism does).
        if status != 0 or error is not None:
            said = "" if error is None else f" and set the error: {safe_text(error.encode())}"
            raise PluginStatusError(
                f"plugin {self.name!r} export {export!r} returned status {describe_status(status)}{said}",
                plugin=self.name,
                export=export,
                status=status,
                output=output,
            )
        return output

    def _trap_error(
        self, export: str, exc: Exception, output: bytes, *, timed_out: bool, error: str | None = None
    ) -> PluginTrap:
        code = exc.trap_code if isinstance(exc, wasmtime.Trap) else None
        if code == wasmtime.TrapCode.INTERRUPT or timed_out:
            return PluginTimeout(
                f"plugin {self.name!r} export {export!r} ran past its deadline of {self.limits.deadline_ms} ms",
                plugin=self.name,
                export=export,
                reason="deadline",
                output=output,
            )
        if code == wasmtime.TrapCode.OUT_OF_FUEL:
            return PluginFuelExhausted(
                f"plugin {self.name!r} export {export!r} used up its fuel budget of {self.limits.fuel}",
                plugin=self.name,
                export=export,
                reason="fuel",
                output=output,
            )
        reason = trap_reason(exc)
        if error is not None:  # an Extism plugin said why before it trapped (its runtime's abort)
            reason = f"{safe_text(error.encode())} ({reason})"
        return PluginTrap(
            f"plugin {self.name!r} export {export!r} trapped: {reason}",
            plugin=self.name,
            export=export,
            reason=reason,
            output=output,
        )

    def reload(self, source: Source) -> Version:
        """Compile and instantiate a new module, then swap it in atomically; return the new version.

        Calls already running finish on the old version, later calls get the
        new one; the plugin's stored state is untouched. The old version's
        instances are released as their running calls (if any) end.

        Raises:
            LoadError: if the new module does not compile, breaks the ABI or
                fails to instantiate; the old version keeps serving.
        """
        try:
            compiled = self._sandbox.compile(source, name=self.name, limits=self.limits, wasi=self._grant.wasi)
            version = Version(compiled, self.pool_size)
            version.seed(Instance(version.compiled, self._grant, self._sandbox))
        except BaseException:
            self._reloaded("failed")
            raise
        with self._reload_lock:
            old, self._version = self._version, version
        old.retire()
        if self._closed:  # closed while this reload compiled: the new version must not outlive it
            version.retire()
        self._reloaded("ok")
        return version

    def _reloaded(self, outcome: str) -> None:
        self.counters.reloaded(outcome)
        for observer in self._observers:
            try:
                observer.reloaded(self.name, self.tenant.name, outcome)
            except Exception:
                self.logger.exception("observer %r failed on a reload", observer)

    def stats(self) -> PluginStats:
        """This plugin's counters (calls by export and outcome, durations, KV operations, reloads)."""
        version = self._version
        return self.counters.snapshot(self.name, self.tenant.name, version.sha256, self.pool_size, version.busy)

    def close(self) -> None:
        """Release the plugin's instances; idempotent. Later calls raise `PluginClosed`.

        Waits for the calls running now to finish (by their deadline at the latest).
        """
        self._closed = True
        self._version.retire(wait=True)

    def __repr__(self) -> str:
        return f"Plugin({self.name!r}, tenant={self.tenant.name!r}, version={self.version[:12]})"
