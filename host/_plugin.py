"""A loaded plugin: its current version, calls, and hot swaps to a new version."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Executor
from types import MappingProxyType

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
from ._sandbox import Compiled, Sandbox, Source, check_thread_stack, stack_checked
from ._stats import CallRecord, Observer, OpCounts, PluginCounters, PluginStats, notify
from ._text import safe_name, safe_text

__all__ = ["Plugin", "Version"]

_monotonic = time.monotonic
#: The KV operations of a call that made none, or of one whose instance could not be made.
_NO_KV_OPS: Mapping[tuple[str, str], int] = MappingProxyType({})

#: The outcome a call that raised is counted as (`CallRecord.outcome`); any other error is a "trap".
_OUTCOMES: dict[type[PluginError], str] = {
    PluginStatusError: "error",
    PluginTimeout: "timeout",
    PluginFuelExhausted: "fuel_exhausted",
    UnknownExport: "unknown_export",
    PluginClosed: "closed",
}


class Version:
    """One compiled version of a plugin and its pool of instances.

    A call takes an idle instance (or a free slot, instantiated on first use)
    and gives it back when done; once the version is retired (replaced by a
    reload, or the plugin closed) instances are closed as they come back.
    """

    def __init__(self, compiled: Compiled, pool_size: int = 1, lock: threading.Lock | None = None) -> None:
        self.compiled = compiled
        self.sha256 = compiled.info.sha256
        self.entry_points = list(compiled.info.entry_points)
        self.pool_size = pool_size
        # Free slots: an idle instance, or None for one not made yet (or dropped after a trap).
        self._free: list[Instance | None] = [None] * pool_size
        # `with self._lock` is C code; the condition (on the same lock) is used only to wait. A plugin's
        # versions share one lock with its counters, so a call gives its slot back and is counted at once.
        self._lock = threading.Lock() if lock is None else lock
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
        self.counters = PluginCounters(version._lock)
        # A call on an instance already made has all of its deadline left: its epoch ticks, worked out once.
        self._deadline_s = self.limits.deadline_ms / 1000
        self._deadline_ticks = sandbox.deadline_ticks_for(self.limits.deadline_ms)
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
            StackTooSmall: if this thread's stack is too small to run wasm on (nothing ran).
        """
        if not stack_checked.ok:  # once per thread; after that, this one read
            check_thread_stack()
        if type(input) is not bytes:
            if not isinstance(input, bytearray | memoryview):
                raise TypeError(
                    f"plugin {self.name!r} input must be bytes, got {type(input).__name__}"
                    + (": encode text first, e.g. input.encode()" if isinstance(input, str) else "")
                )
            input = bytes(input)
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
        started = _monotonic()
        outcome, status = "ok", None
        try:
            fresh = instance is None
            if instance is None:  # a slot not filled yet, or emptied by a trap
                instance = self._new_instance(version, export)
            func = instance.entry.get(export)
            if func is None:
                raise self._unknown_export(version, export)
            ticks = self._ticks_left(export, started) if fresh else self._deadline_ticks
            try:
                result = instance.run(func, input, started + self._deadline_s, ticks, export)
            except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
                raise self._trapped(instance, export, exc) from instance.host_error or exc
            output, error = instance.take_result()
            # An Extism plugin fails its call by setting an error, whatever it returns (as Extism does).
            if result != 0 or error is not None:
                raise self._status_error(export, result, output, error)
            return output
        except PluginError as exc:
            outcome = _OUTCOMES.get(type(exc), "trap")
            status = exc.status if isinstance(exc, PluginStatusError) else None
            raise
        finally:
            seconds = _monotonic() - started
            ops: OpCounts | None = None
            if instance is not None:
                ops = instance.imports.ops
                if instance.closed:  # after a trap: the slot is given back empty
                    instance = None
            observers = self._observers
            kv_ops = _NO_KV_OPS if not observers or ops is None else ops.as_dict()  # before counting resets `ops`
            with version._lock:  # also the counters' lock
                counters.record(export, outcome, seconds, ops)
                kept = not version.retired
                if kept:  # the common case inline; `release` closes the instance of a retired version
                    version.busy -= 1
                    version._free.append(instance)
                    if version._waiting:
                        version._ready.notify()
            if not kept:
                version.release(instance)
            if observers:
                record = CallRecord(
                    self.name, self.tenant.name, export, version.sha256, outcome, seconds, status, kv_ops
                )
                notify(observers, record)

    async def acall(self, export: str, input: bytes = b"") -> bytes:
        """As `call`, awaited: the call runs on the host's bounded executor, never on the event loop.

        Raises:
            As `call`.
        """
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.call, export, input)

    def _new_instance(self, version: Version, export: str) -> Instance:
        """A fresh instance for a call whose slot had none.

        Raises:
            PluginTrap: if its start function fails.
        """
        # A fresh instance (after a trap) runs the module's start function again: that time is
        # this call's, and a start function that fails is this call's failure, not a load error.
        try:
            return Instance(version.compiled, self._grant, self._sandbox)
        except LoadError as exc:
            cause = exc.__cause__ if isinstance(exc.__cause__, Exception) else exc
            raise self._trap_error(export, cause, b"", timed_out=False) from exc

    def _ticks_left(self, export: str, started: float) -> int:
        """The epoch ticks left to a call that started at `started` and made a fresh instance.

        Raises:
            PluginTimeout: if the start function used up the call's deadline.
        """
        left_ms = self.limits.deadline_ms - (_monotonic() - started) * 1000
        if left_ms <= 0:
            late = TimeoutError("the deadline passed while a new instance ran its start function")
            raise self._trap_error(export, late, b"", timed_out=True)
        return self._sandbox.deadline_ticks_for(math.ceil(left_ms))

    def _unknown_export(self, version: Version, export: str) -> UnknownExport:
        return UnknownExport(
            f"plugin {self.name!r} has no entry point {safe_name(repr(export))} "
            f"(it has: {safe_name(', '.join(version.entry_points))})",
            plugin=self.name,
            export=export,
        )

    def _trapped(self, instance: Instance, export: str, exc: Exception) -> PluginTrap:
        """The error for a call that trapped on `instance`, which it closes (a trapped guest may be half-updated)."""
        output = instance.output
        timed_out = instance.timed_out
        error = instance.error
        instance.close()
        return self._trap_error(export, exc, output, timed_out=timed_out, error=error)

    def _status_error(self, export: str, status: int, output: bytes, error: str | None) -> PluginStatusError:
        said = "" if error is None else f" and set the error: {safe_text(error.encode())}"
        return PluginStatusError(
            f"plugin {self.name!r} export {export!r} returned status {describe_status(status)}{said}",
            plugin=self.name,
            export=export,
            status=status,
            output=output,
        )

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
            version = Version(compiled, self.pool_size, self._version._lock)
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
