"""A loaded plugin: its current version, calls, and hot swaps to a new version."""

from __future__ import annotations

import math
import threading
import time

import wasmtime

from .. import kv
from ..abi import describe_status
from ._errors import (
    LoadError,
    PluginClosed,
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
from ._text import safe_name, safe_text

__all__ = ["Plugin", "Version"]


class Version:
    """One compiled version of a plugin and the instance that runs it, behind a lock."""

    def __init__(self, compiled: Compiled) -> None:
        self.compiled = compiled
        self.sha256 = compiled.info.sha256
        self.entry_points = list(compiled.info.entry_points)
        self.lock = threading.Lock()
        self.instance: Instance | None = None
        # Set once a newer version replaced this one: late callers move on to the new one.
        self.retired = False


class Plugin:
    """A loaded plugin bound to a tenant: call its entry points with `call`.

    Thread-safe: calls to one plugin run one at a time. A trap, timeout or
    memory bomb fails that call only; the next call gets a fresh instance.
    Build one with `Host.load`.
    """

    def __init__(self, sandbox: Sandbox, grant: Grant, version: Version) -> None:
        self.name = grant.plugin
        self.tenant: kv.Tenant = grant.tenant
        self.buckets = grant.buckets
        self.limits: Limits = grant.limits
        self.logger = grant.logger
        self._sandbox = sandbox
        self._grant = grant
        self._version = version
        self._reload_lock = threading.Lock()
        self._closed = False
        # Instantiate now so a module that cannot start fails at load, not at its first call.
        with version.lock:
            version.instance = Instance(version.compiled, grant, sandbox)

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
        while True:
            version = self._version  # a concurrent reload swaps this; a call finishes on the one it took
            with version.lock:
                if not version.retired:
                    return self._call(version, export, input)

    def _call(self, version: Version, export: str, input: bytes) -> bytes:
        """Run one call on `version`; the caller holds its lock."""
        if self._closed:
            raise PluginClosed(f"plugin {self.name!r} is closed", plugin=self.name, export=export)
        started = time.monotonic()
        instance = version.instance
        if instance is None:
            # A fresh instance (after a trap) runs the module's start function again: that time is
            # this call's, and a start function that fails is this call's failure, not a load error.
            try:
                instance = version.instance = Instance(version.compiled, self._grant, self._sandbox)
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
            status = instance.run(func, bytes(input), math.ceil(left_ms))
        except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
            output = instance.output
            host_error = instance.host_error
            timed_out = instance.timed_out
            error = instance.error
            instance.close()
            version.instance = None
            raise self._trap_error(export, exc, output, timed_out=timed_out, error=error) from host_error or exc
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
        instance is released once its running call (if any) ends.

        Raises:
            LoadError: if the new module does not compile, breaks the ABI or
                fails to instantiate; the old version keeps serving.
        """
        version = Version(self._sandbox.compile(source, name=self.name, limits=self.limits, wasi=self._grant.wasi))
        with version.lock:
            version.instance = Instance(version.compiled, self._grant, self._sandbox)
        with self._reload_lock:
            old, self._version = self._version, version
        with old.lock:
            old.retired = True
            if old.instance is not None:
                old.instance.close()
                old.instance = None
        return version

    def close(self) -> None:
        """Release the plugin's instance; idempotent. Later calls raise `PluginClosed`."""
        self._closed = True
        version = self._version
        with version.lock:
            if version.instance is not None:
                version.instance.close()
                version.instance = None

    def __repr__(self) -> str:
        return f"Plugin({self.name!r}, tenant={self.tenant.name!r}, version={self.version[:12]})"
