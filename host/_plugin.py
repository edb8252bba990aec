"""A loaded plugin: its compiled module, its live instance, and the ABI imports it calls."""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

import msgpack
import wasmtime

from .. import kv
from ..abi import ENTRY_SIGNATURE, HOST_IMPORTS, HOST_MODULE, KV_IMPORTS, KV_MODULE, MEMORY_EXPORT, Status
from ._errors import (
    LoadError,
    PluginFuelExhausted,
    PluginStatusError,
    PluginTimeout,
    PluginTrap,
    UnknownExport,
)
from ._ffi import ExportFunc, GuestMemory, Slots, define_unchecked
from ._limits import Limits

if TYPE_CHECKING:
    from ._host import Host, Source

__all__ = ["Plugin"]

_I32_MAX: Final = 2**31 - 1
_LOG_LEVELS: Final = {0: logging.DEBUG, 1: logging.INFO, 2: logging.WARNING, 3: logging.ERROR}


class _AbiStatus(Exception):
    """Raised inside an import body to return an ABI status (bad pointer, bad handle).

    Raised fresh each time: re-raising one shared instance would chain every
    traceback onto it, and a plugin looping on bad pointers would grow host memory.
    """

    def __init__(self, status: Status) -> None:
        self.status = int(status)


def _bad_pointer() -> _AbiStatus:
    return _AbiStatus(Status.BAD_POINTER)


def _bad_handle() -> _AbiStatus:
    return _AbiStatus(Status.BAD_HANDLE)


class _NoMemory:
    """Stands in for the guest memory until instantiation has bound it (a start function runs before)."""

    view = memoryview(b"")

    def fits(self, pointer: int, length: int) -> bool:
        raise _StartFunctionCall()


class _StartFunctionCall(Exception):
    """A start function called an import: the instance has no memory bound yet."""


def _i64(slots: Slots, slot: int) -> int:
    value: int = (slots[4 * slot + 1] << 32) | (slots[4 * slot] & 0xFFFFFFFF)
    return value


def _signature(functype: wasmtime.FuncType) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return tuple(str(p) for p in functype.params), tuple(str(r) for r in functype.results)


def check_module(module: wasmtime.Module, name: str) -> list[str]:
    """Check a compiled module against the ABI; return its entry point names.

    Raises:
        LoadError: if it imports anything the ABI does not provide, with the
            wrong signature, or does not export `memory`.
    """
    abi = {KV_MODULE: KV_IMPORTS, HOST_MODULE: HOST_IMPORTS}
    for imp in module.imports:
        ty = imp.type
        provided = abi.get(imp.module, {}).get(imp.name or "")
        if provided is None:
            raise LoadError(f"plugin {name!r} imports {imp.module}.{imp.name}, which the wasmkv ABI does not provide")
        if not isinstance(ty, wasmtime.FuncType) or _signature(ty) != provided:
            raise LoadError(
                f"plugin {name!r} imports {imp.module}.{imp.name} with type {ty}; the ABI's is "
                f"({', '.join(provided[0])}) -> ({', '.join(provided[1])})"
            )
    exports = {exp.name: exp.type for exp in module.exports}
    if not isinstance(exports.get(MEMORY_EXPORT), wasmtime.MemoryType):
        raise LoadError(f"plugin {name!r} does not export its linear memory as {MEMORY_EXPORT!r}")
    return sorted(
        export
        for export, ty in exports.items()
        if isinstance(ty, wasmtime.FuncType) and _signature(ty) == ENTRY_SIGNATURE
    )


class _Instance:
    """One instantiation of a plugin version: its wasmtime store, memory and import state.

    Used by one thread at a time (the version's lock); replaced after a trap,
    because a trapped guest may have left its own memory half-updated.
    """

    def __init__(self, plugin: Plugin, version: Version) -> None:
        self.plugin = plugin
        self.version = version
        self.limits = plugin.limits
        self.store = wasmtime.Store(version.engine)
        self.store.set_limits(memory_size=plugin.limits.memory_bytes)
        self.linker = wasmtime.Linker(version.engine)
        self.handles: list[kv.Bucket] = []
        self.handle_of: dict[bytes, int] = {}
        self.input = b""
        self.output = bytearray()
        self.host_error: BaseException | None = None
        self._callbacks: list[object] = []
        bodies: dict[tuple[str, str], Callable[[Slots], int | None]] = {
            (KV_MODULE, "open"): self._open,
            (KV_MODULE, "get"): self._get,
            (KV_MODULE, "set"): self._set,
            (KV_MODULE, "set_with_ttl"): self._set_with_ttl,
            (KV_MODULE, "delete"): self._delete,
            (KV_MODULE, "exists"): self._exists,
            (KV_MODULE, "increment"): self._increment,
            (KV_MODULE, "compare_and_swap"): self._compare_and_swap,
            (KV_MODULE, "list_keys"): self._list_keys,
            (KV_MODULE, "get_many"): self._get_many,
            (KV_MODULE, "set_many"): self._set_many,
            (KV_MODULE, "delete_many"): self._delete_many,
            (HOST_MODULE, "input"): self._input,
            (HOST_MODULE, "output"): self._output,
            (HOST_MODULE, "log"): self._log,
        }
        self.memory: GuestMemory | _NoMemory = _NoMemory()
        # A module may import one function twice; the linker takes each name once.
        wanted = dict.fromkeys((imp.module, imp.name or "") for imp in version.module.imports)
        try:
            for module, name in wanted:
                signature = (KV_IMPORTS if module == KV_MODULE else HOST_IMPORTS)[name]
                body = bodies[module, name]
                self._callbacks.append(
                    define_unchecked(self.linker, module, name, signature, body, self._on_error(f"{module}.{name}"))
                )
        except wasmtime.WasmtimeError as exc:
            self.close()
            raise LoadError(f"plugin {plugin.name!r} cannot link its imports: {exc}") from exc
        plugin.host._arm(self.store, plugin.limits)
        try:
            instance = self.linker.instantiate(self.store, version.module)
        except (wasmtime.WasmtimeError, wasmtime.Trap) as exc:
            self.close()
            raise LoadError(f"plugin {plugin.name!r} failed to instantiate: {_trap_reason(exc)}") from exc
        self.wasm_instance = instance
        exports = instance.exports(self.store)
        memory = exports[MEMORY_EXPORT]
        assert isinstance(memory, wasmtime.Memory)
        self.memory = GuestMemory(self.store, memory)
        self.entry: dict[str, ExportFunc] = {}
        for export in version.entry_points:
            func = exports[export]
            assert isinstance(func, wasmtime.Func)
            self.entry[export] = ExportFunc(self.store, func)

    def close(self) -> None:
        """Release the wasmtime store; the instance must not run again."""
        if isinstance(self.memory, GuestMemory):
            self.memory.release()
        self.store.close()
        self.linker.close()

    # -- error mapping ------------------------------------------------------------------------

    def _on_error(self, where: str) -> Callable[[BaseException], int | bytes]:
        def on_error(exc: BaseException) -> int | bytes:
            if isinstance(exc, kv.KvError):
                return -exc.code
            if isinstance(exc, _AbiStatus):
                return exc.status
            if isinstance(exc, _StartFunctionCall):
                return f"{where} was called from the module's start function; imports are unavailable there".encode()
            # Anything else is a host bug: trap this call, keep it for the caller, never crash.
            self.host_error = exc
            logging.getLogger("wasmkv.host").error("host error in %s", where, exc_info=exc)
            return f"host error in {where}: {type(exc).__name__}: {exc}".encode()

        return on_error

    # -- memory ---------------------------------------------------------------------------------

    def _read(self, pointer: int, length: int) -> bytes:
        memory = self.memory
        if not memory.fits(pointer, length):
            raise _bad_pointer()
        return memory.view[pointer : pointer + length].tobytes()

    def _reply(self, data: bytes, pointer: int, capacity: int) -> int:
        """The buffer rule: write `data` only if it fits; return its length."""
        if not self.memory.fits(pointer, capacity):
            raise _bad_pointer()
        length = len(data)
        if length > _I32_MAX:
            raise kv.ValueTooLarge(f"reply of {length} bytes does not fit an i32 length")
        if length <= capacity:
            self.memory.view[pointer : pointer + length] = data
        return length

    def _bucket(self, handle: int) -> kv.Bucket:
        if handle < 0 or handle >= len(self.handles):
            raise _bad_handle()
        return self.handles[handle]

    # -- kv imports -----------------------------------------------------------------------------

    def _open(self, s: Slots) -> int:
        raw = self._read(s[0], s[4])
        handle = self.handle_of.get(raw)
        if handle is not None:
            return handle
        try:
            name = kv.check_name("bucket", raw.decode("ascii"))
        except UnicodeDecodeError:
            raise kv.InvalidArgument(f"bucket name is not ASCII: {raw!r}") from None
        if name not in self.plugin.buckets:
            raise kv.AccessDenied(f"bucket {name!r} is not granted to plugin {self.plugin.name!r}")
        self.handles.append(self.plugin.tenant.bucket(name))
        handle = self.handle_of[raw] = len(self.handles) - 1
        return handle

    def _get(self, s: Slots) -> int:
        # The hottest import: bounds checks and the handle lookup inlined.
        handle, key_pointer, key_length, out_pointer, capacity = s[0], s[4], s[8], s[12], s[16]
        handles = self.handles
        if handle < 0 or handle >= len(handles):
            return Status.BAD_HANDLE
        memory = self.memory
        view = memory.view
        size = len(view)
        if (
            key_pointer < 0
            or key_length < 0
            or capacity < 0
            or out_pointer < 0
            or key_pointer + key_length > size
            or (capacity and out_pointer + capacity > size)
        ):
            if not (memory.fits(key_pointer, key_length) and memory.fits(out_pointer, capacity)):
                return Status.BAD_POINTER
            view = memory.view
        value = handles[handle].get(view[key_pointer : key_pointer + key_length].tobytes())
        if value is None:
            return Status.NOT_FOUND
        length = len(value)
        if length <= capacity:
            view[out_pointer : out_pointer + length] = value
        return length

    def _set(self, s: Slots) -> int:
        bucket = self._bucket(s[0])
        bucket.set(self._read(s[4], s[8]), self._read(s[12], s[16]))
        return 0

    def _set_with_ttl(self, s: Slots) -> int:
        bucket = self._bucket(s[0])
        bucket.set_with_ttl(self._read(s[4], s[8]), self._read(s[12], s[16]), _i64(s, 5))
        return 0

    def _delete(self, s: Slots) -> int:
        return int(self._bucket(s[0]).delete(self._read(s[4], s[8])))

    def _exists(self, s: Slots) -> int:
        return int(self._bucket(s[0]).exists(self._read(s[4], s[8])))

    def _increment(self, s: Slots) -> int:
        bucket = self._bucket(s[0])
        key = self._read(s[4], s[8])
        out_pointer = s[16]
        # Check the result slot first, so a bad pointer changes nothing.
        if not self.memory.fits(out_pointer, 8):
            raise _bad_pointer()
        total = bucket.increment(key, _i64(s, 3))
        self.memory.view[out_pointer : out_pointer + 8] = total.to_bytes(8, "little", signed=True)
        return 0

    def _compare_and_swap(self, s: Slots) -> int:
        bucket = self._bucket(s[0])
        key = self._read(s[4], s[8])
        expected = None if s[16] == -1 else self._read(s[12], s[16])
        return int(bucket.compare_and_swap(key, expected, self._read(s[20], s[24])))

    def _list_keys(self, s: Slots) -> int:
        bucket = self._bucket(s[0])
        prefix = self._read(s[4], s[8])
        cursor_raw = self._read(s[12], s[16])
        out_pointer, capacity = s[24], s[28]
        if not self.memory.fits(out_pointer, capacity):
            raise _bad_pointer()
        try:
            cursor = cursor_raw.decode("ascii") if cursor_raw else None
        except UnicodeDecodeError:
            raise kv.InvalidArgument("cursor is not one returned by list_keys") from None
        page = bucket.list_keys(prefix, cursor, s[20])  # type: ignore[arg-type]
        return self._reply(msgpack.packb({"keys": page.keys, "cursor": page.cursor}), out_pointer, capacity)

    def _unpack(self, s: Slots, *, raw: bool = False) -> object:
        request = self._read(s[4], s[8])
        try:
            # raw=True (key lists): str keys stay bytes, which the bucket validates as UTF-8 without
            # decoding and re-encoding them. Otherwise surrogateescape keeps a non-UTF-8 str key
            # alive until the bucket's key check (-2, like any invalid key), not the whole request (-12).
            return msgpack.unpackb(request, raw=raw, unicode_errors="surrogateescape", strict_map_key=False)
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            raise kv.InvalidArgument(f"request is not valid msgpack: {exc}") from None

    def _key_list(self, request: object) -> list[str | bytes]:
        if not isinstance(request, list) or not all(isinstance(key, str | bytes) for key in request):
            raise kv.InvalidArgument("request must be a msgpack array of str keys")
        return request

    def _get_many(self, s: Slots) -> int:
        bucket = self._bucket(s[0])
        out_pointer, capacity = s[12], s[16]
        if not self.memory.fits(out_pointer, capacity):
            raise _bad_pointer()
        values = bucket.get_many(self._key_list(self._unpack(s, raw=True)))
        return self._reply(msgpack.packb(values, use_bin_type=True), out_pointer, capacity)

    def _set_many(self, s: Slots) -> int:
        bucket = self._bucket(s[0])
        request = self._unpack(s)
        if not isinstance(request, dict) or not all(
            isinstance(key, str | bytes) and isinstance(value, bytes) for key, value in request.items()
        ):
            raise kv.InvalidArgument("request must be a msgpack map of str keys to bin values")
        bucket.set_many(request)
        return 0

    def _delete_many(self, s: Slots) -> int:
        return self._bucket(s[0]).delete_many(self._key_list(self._unpack(s, raw=True)))

    # -- host imports ---------------------------------------------------------------------------

    def _input(self, s: Slots) -> int:
        return self._reply(self.input, s[0], s[4])

    def _output(self, s: Slots) -> int:
        data = self._read(s[0], s[4])
        if len(self.output) + len(data) > self.limits.memory_bytes:
            raise kv.InvalidArgument(f"output is capped at memory_bytes ({self.limits.memory_bytes}) per call")
        self.output += data
        return 0

    def _log(self, s: Slots) -> None:
        text = self._read(s[4], s[8]).decode("utf-8", "replace")
        self.plugin.logger.log(_LOG_LEVELS.get(s[0], logging.INFO), "%s", text)


def _trap_reason(exc: Exception) -> str:
    """The root cause of a wasmtime trap message, e.g. "wasm `unreachable` instruction executed"."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    cause = re.sub(r"^\d+: ", "", lines[-1])
    return cause.removeprefix("wasm trap: ")


class Version:
    """One compiled version of a plugin and the instance that runs it, behind a lock."""

    def __init__(self, engine: wasmtime.Engine, module: wasmtime.Module, wasm: bytes, entry_points: list[str]) -> None:
        self.engine = engine
        self.module = module
        self.sha256 = hashlib.sha256(wasm).hexdigest()
        self.entry_points = entry_points
        self.lock = threading.Lock()
        self.instance: _Instance | None = None
        # Set once a newer version replaced this one: late callers move on to the new one.
        self.retired = False


class Plugin:
    """A loaded plugin bound to a tenant: call its entry points with `call`.

    Thread-safe: calls to one plugin run one at a time. A trap, timeout or
    memory bomb fails that call only; the next call gets a fresh instance.
    """

    def __init__(
        self,
        host: Host,
        name: str,
        *,
        version: Version,
        tenant: kv.Tenant,
        buckets: frozenset[str],
        limits: Limits,
    ) -> None:
        self.host = host
        self.name = name
        self.tenant = tenant
        self.buckets = buckets
        self.limits = limits
        self.logger = logging.getLogger(f"wasmkv.plugin.{name}")
        self._version = version
        self._reload_lock = threading.Lock()
        self._closed = False
        # Instantiate now so a module that cannot start fails at load, not at its first call.
        with version.lock:
            version.instance = _Instance(self, version)

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
            UnknownExport: if there is no `() -> i32` export of that name.
            PluginStatusError: if it returned a non-zero status.
            PluginTimeout: if it ran past `limits.deadline_ms`.
            PluginFuelExhausted: if it used up `limits.fuel`.
            PluginTrap: if it trapped for any other reason (including a host error in an import).
        """
        while True:
            version = self._version  # a concurrent reload swaps this; a call finishes on the one it took
            with version.lock:
                if not version.retired:
                    return self._call(version, export, input)

    def _call(self, version: Version, export: str, input: bytes) -> bytes:
        """Run one call on `version`; the caller holds its lock."""
        if self._closed and version.instance is None:
            raise UnknownExport(f"plugin {self.name!r} is closed", plugin=self.name, export=export)
        instance = version.instance
        if instance is None:
            instance = version.instance = _Instance(self, version)
        func = instance.entry.get(export)
        if func is None:
            raise UnknownExport(
                f"plugin {self.name!r} has no entry point {export!r} (it has: {', '.join(version.entry_points)})",
                plugin=self.name,
                export=export,
            )
        instance.input = bytes(input)
        instance.output = bytearray()
        instance.host_error = None
        if self.limits.fuel is not None:
            instance.store.set_fuel(self.limits.fuel)
        try:
            status = func(self.host._deadline_ticks(self.limits))
        except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
            output = bytes(instance.output)
            host_error = instance.host_error
            instance.close()
            version.instance = None
            raise self._trap_error(export, exc, output) from host_error or exc
        output = bytes(instance.output)
        if status != 0:
            raise PluginStatusError(
                f"plugin {self.name!r} export {export!r} returned status {status}",
                plugin=self.name,
                export=export,
                status=status,
                output=output,
            )
        return output

    def _trap_error(self, export: str, exc: Exception, output: bytes) -> PluginTrap:
        code = exc.trap_code if isinstance(exc, wasmtime.Trap) else None
        if code == wasmtime.TrapCode.INTERRUPT:
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
        reason = _trap_reason(exc)
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
        version = self.host.compile(source, name=self.name, limits=self.limits)
        with version.lock:
            version.instance = _Instance(self, version)
        with self._reload_lock:
            old, self._version = self._version, version
        with old.lock:
            old.retired = True
            if old.instance is not None:
                old.instance.close()
                old.instance = None
        return version

    def close(self) -> None:
        """Release the plugin's instance; idempotent. Later calls raise `UnknownExport`."""
        self._closed = True
        version = self._version
        with version.lock:
            if version.instance is not None:
                version.instance.close()
                version.instance = None

    def __repr__(self) -> str:
        return f"Plugin({self.name!r}, tenant={self.tenant.name!r}, version={self.version[:12]})"
