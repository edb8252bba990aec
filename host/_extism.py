"""Extism plugins, unmodified: the `extism:host/env` imports, implemented here over wasmkv's sandbox.

A module that imports from `extism:host/env` is an Extism plugin. Its entry
points are the same `() -> i32` exports as ours; what differs is how data
moves: the plugin reads its input and writes its output, errors, config and
vars through the Extism *kernel*, a memory of its own addressed by i64
offsets (0 means none). This is wasmkv's own kernel:

- the memory functions (alloc, load, store, input, ...) are a small wasm
  module (`_extism_kernel.wat`) instantiated beside the plugin in its store, so
  the plugin reaches them with wasm calls, not trips through Python (Extism
  does the same); its memory is the store's second memory, bounded by the
  plugin's `memory_bytes` like the plugin's own, reset at every call;
- `config_get` reads the plugin's config (`Host.load(..., config=...)`);
- `var_get`/`var_set` keep vars in the plugin's tenant, bucket `extism`, key
  `<plugin>/<var>`: durable, counted in the tenant's quota, isolated between
  tenants (a refused `var_set` ends the call, naming the quota);
- `log_*` write to the plugin's log; `http_request` is refused (no network).

A non-zero return, or an `error_set`, fails the call with the plugin's message.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Final

import wasmtime

from .. import kv
from ._ffi import GuestMemory, RawCallback, Slots
from ._imports import AbiImports, GuestAbort
from ._text import safe_name

__all__ = ["EXTISM_BUCKET", "EXTISM_IMPORTS", "EXTISM_MODULE", "KERNEL_FUNCTIONS", "ExtismKernel", "kernel_module"]

EXTISM_MODULE: Final = "extism:host/env"
#: The bucket of every tenant where Extism vars live, as `<plugin>/<var>` keys.
EXTISM_BUCKET: Final = "extism"

_I32, _I64 = "i32", "i64"
#: The kernel functions wasmkv provides: name -> (param types, result types), as Extism declares them.
EXTISM_IMPORTS: Final[dict[str, tuple[tuple[str, ...], tuple[str, ...]]]] = {
    "alloc": ((_I64,), (_I64,)),
    "free": ((_I64,), ()),
    "length": ((_I64,), (_I64,)),
    "length_unsafe": ((_I64,), (_I64,)),
    "load_u8": ((_I64,), (_I32,)),
    "load_u64": ((_I64,), (_I64,)),
    "store_u8": ((_I64, _I32), ()),
    "store_u64": ((_I64, _I64), ()),
    "input_offset": ((), (_I64,)),
    "input_length": ((), (_I64,)),
    "input_load_u8": ((_I64,), (_I32,)),
    "input_load_u64": ((_I64,), (_I64,)),
    "input_set": ((_I64, _I64), ()),
    "output_set": ((_I64, _I64), ()),
    "output_offset": ((), (_I64,)),
    "output_length": ((), (_I64,)),
    "memory_bytes": ((), (_I64,)),
    "error_set": ((_I64,), ()),
    "error_get": ((), (_I64,)),
    "config_get": ((_I64,), (_I64,)),
    "var_get": ((_I64,), (_I64,)),
    "var_set": ((_I64, _I64), ()),
    "http_request": ((_I64, _I64), (_I64,)),
    "http_status_code": ((), (_I32,)),
    "http_headers": ((), (_I64,)),
    "log_trace": ((_I64,), ()),
    "log_debug": ((_I64,), ()),
    "log_info": ((_I64,), ()),
    "log_warn": ((_I64,), ()),
    "log_error": ((_I64,), ()),
    "get_log_level": ((), (_I32,)),
    "reset": ((), ()),
}

#: The kernel functions that run as wasm (host/_extism_kernel.wat); the rest are Python bodies.
KERNEL_FUNCTIONS: Final = frozenset(
    {
        "alloc",
        "free",
        "length",
        "length_unsafe",
        "load_u8",
        "load_u64",
        "store_u8",
        "store_u64",
        "input_length",
        "input_offset",
        "input_load_u8",
        "input_load_u64",
        "memory_bytes",
        "reset",
    }
)
_KERNEL_WAT: Final = Path(__file__).with_name("_extism_kernel.wat")
_kernels: dict[wasmtime.Engine, wasmtime.Module] = {}
_kernels_lock = threading.Lock()

# The kernel's memory layout (see the .wat): header fields, the first block, the block tag.
_INPUT_LENGTH, _TOP, _LIMIT, _INPUT_OFFSET, _FIRST = 0, 8, 16, 24, 32
_HEADER: Final = 16
_MAGIC: Final = 0x45787469736D4B56
#: The most of an error message (the rest is cut) or a config key (a longer one is refused) read
#: from the kernel: a plugin picks their size.
_ERROR_BYTES: Final = 4096
_CONFIG_KEY_BYTES: Final = 1024
_MASK64: Final = (1 << 64) - 1
#: Extism's log levels, as `get_log_level` reports them (trace 0 .. error 4).
_LEVELS: Final = ((logging.DEBUG - 5, 0), (logging.DEBUG, 1), (logging.INFO, 2), (logging.WARNING, 3))


def kernel_module(engine: wasmtime.Engine) -> wasmtime.Module:
    """The kernel compiled for `engine`, once per engine."""
    with _kernels_lock:
        module = _kernels.get(engine)
        if module is None:
            module = _kernels[engine] = wasmtime.Module(engine, _KERNEL_WAT.read_text())
        return module


def _arg(slots: Slots, slot: int) -> int:
    """An i64 argument, as the unsigned offset Extism means."""
    value: int = ((slots[4 * slot + 1] & 0xFFFFFFFF) << 32) | (slots[4 * slot] & 0xFFFFFFFF)
    return value


def _set_i64(slots: Slots, value: int) -> None:
    """Write an i64 result into slot 0 (ctypes wraps each half into its signed int32)."""
    value &= _MASK64
    low, high = value & 0xFFFFFFFF, value >> 32
    slots[0] = low - (1 << 32) if low >= 1 << 31 else low
    slots[1] = high - (1 << 32) if high >= 1 << 31 else high


def _round8(n: int) -> int:
    return (n + 7) & ~7


class ExtismKernel:
    """The Extism kernel of one instance: a wasm instance in the plugin's store for the memory
    functions, and Python for the rest (output, errors, config, vars, logs).

    The kernel's memory is the second memory of the plugin's store, bounded by
    `memory_bytes` like the plugin's own. Python reads and writes it between
    and during calls (a host function never calls back into wasm).
    """

    def __init__(self, store: wasmtime.Store, engine: wasmtime.Engine, imports: AbiImports) -> None:
        self.imports = imports
        grant = imports.grant
        self.plugin = grant.plugin
        self.config = dict(grant.config)
        self.limit = grant.limits.memory_bytes
        self.store = store
        self.instance = wasmtime.Instance(store, kernel_module(engine), [])
        exports = self.instance.exports(store)
        self.functions = {name: exports[name] for name in KERNEL_FUNCTIONS}
        memory = exports["memory"]
        assert isinstance(memory, wasmtime.Memory)
        self._memory = memory
        self.memory = GuestMemory(store, memory)
        self._output = (0, 0)  # offset, length: read when the call ends, as Extism does
        self.error: str | None = None
        self._vars: kv.Bucket | None = None
        # An empty kernel until the first call: a reactor's _initialize may allocate already.
        header = (0, _FIRST, self.limit, 0)
        self.memory.view[0:_FIRST] = b"".join(n.to_bytes(8, "little") for n in header)

    def release(self) -> None:
        """Drop the view of the kernel's memory (the store is closing)."""
        self.memory.release()

    def begin_call(self, input: bytes) -> None:
        """Start a call: an empty kernel memory holding `input` as its first block, no output or error.

        Raises:
            wasmtime.WasmtimeError: if the input does not fit the kernel memory (`memory_bytes`).
        """
        size = len(input)
        data = _FIRST + _HEADER
        end = data + _round8(size)
        if end > self.limit:
            raise wasmtime.WasmtimeError(
                f"input of {size} bytes does not fit the Extism kernel memory (memory_bytes is {self.limit})"
            )
        self._ensure(end)
        view = self.memory.view
        view[0:32] = b"".join(n.to_bytes(8, "little") for n in (size, end, self.limit, data))
        view[_FIRST:data] = size.to_bytes(8, "little") + (data ^ _MAGIC).to_bytes(8, "little")
        view[data : data + size] = input
        self._output = (0, 0)
        self.error = None

    @property
    def output(self) -> bytes:
        """The bytes `output_set` pointed at, as they are now (empty if the range is not in memory)."""
        offset, length = self._output
        if offset < _FIRST or not self.memory.fits(offset, length):
            return b""
        return self.memory.view[offset : offset + length].tobytes()

    # -- the kernel memory, from Python (mirrors of the .wat's alloc and length) -----------------

    def _u64(self, at: int) -> int:
        return int.from_bytes(self.memory.view[at : at + 8], "little")

    def _ensure(self, end: int) -> bool:
        """Grow the kernel memory to hold `end` bytes; False if it cannot."""
        if self.memory.fits(0, end):
            return True
        pages = (end - len(self.memory.view) + 65535) >> 16
        try:
            self._memory.grow(self.store, pages)
        except wasmtime.WasmtimeError:
            return False
        return self.memory.fits(0, end)

    def _length(self, offset: int) -> int | None:
        """The length of the live block at `offset`; None if no block starts there."""
        if offset < _FIRST + _HEADER or offset > self._u64(_TOP) or not self.memory.fits(offset - _HEADER, _HEADER):
            return None
        if self._u64(offset - 8) != offset ^ _MAGIC:
            return None
        return self._u64(offset - _HEADER)

    def _alloc(self, length: int) -> int:
        if length == 0 or length > self.limit:
            return 0
        top = self._u64(_TOP)
        end = top + _HEADER + _round8(length)
        if end > self._u64(_LIMIT) or not self._ensure(end):
            return 0
        view = self.memory.view
        view[top : top + _HEADER] = length.to_bytes(8, "little") + ((top + _HEADER) ^ _MAGIC).to_bytes(8, "little")
        view[_TOP : _TOP + 8] = end.to_bytes(8, "little")
        return top + _HEADER

    def _block(self, offset: int, most: int, what: str) -> bytes:
        """The bytes of the block at `offset`, refused unread past `most` bytes (the plugin picks the size).

        Raises:
            GuestAbort: if no block starts at `offset`, or it is longer than `most`.
        """
        length = self._length(offset)
        if length is None or not self.memory.fits(offset, length):
            raise GuestAbort(f"extism {what}: offset {offset} is not an allocated block")
        if length > most:
            raise GuestAbort(f"extism {what} of {length} bytes is over the limit of {most}")
        return self.memory.view[offset : offset + length].tobytes()

    def _stored(self, data: bytes) -> int:
        """A new block holding `data`; 0 if it is empty or does not fit."""
        offset = self._alloc(len(data))
        if offset:
            self.memory.view[offset : offset + len(data)] = data
        return offset

    def _text(self, offset: int, most: int, what: str) -> str:
        return self._block(offset, most, what).decode("utf-8", "replace")

    # -- vars -----------------------------------------------------------------------------------

    def _var_key(self, offset: int) -> str:
        # Read no more than a key may be: the store would refuse anything longer anyway.
        most = self.imports.grant.tenant.quota.max_key_bytes
        return f"{self.plugin}/{self._text(offset, most, 'var name')}"

    @property
    def vars(self) -> kv.Bucket:
        """The tenant's bucket of Extism vars."""
        if self._vars is None:
            self._vars = self.imports.grant.tenant.bucket(EXTISM_BUCKET)
        return self._vars

    # -- the import bodies ----------------------------------------------------------------------

    def bodies(self) -> dict[str, RawCallback]:
        """The kernel functions Python runs, by name (each takes the raw slots, as the ABI imports do)."""
        k = self

        def input_set(s: Slots) -> None:
            offset, size = _arg(s, 0), _arg(s, 1)
            if offset >= _FIRST and k.memory.fits(offset, size):
                view = k.memory.view
                view[_INPUT_LENGTH : _INPUT_LENGTH + 8] = size.to_bytes(8, "little")
                view[_INPUT_OFFSET : _INPUT_OFFSET + 8] = offset.to_bytes(8, "little")

        def output_set(s: Slots) -> None:
            k._output = (_arg(s, 0), _arg(s, 1))

        def output_offset(s: Slots) -> None:
            _set_i64(s, k._output[0])

        def output_length(s: Slots) -> None:
            _set_i64(s, k._output[1])

        def error_set(s: Slots) -> None:
            offset = _arg(s, 0)
            if offset == 0:
                k.error = None
                return
            length = k._length(offset)
            if length is None or not k.memory.fits(offset, length):
                raise GuestAbort(f"extism error_set: offset {offset} is not an allocated block")
            # A message is for people: the first 4 KiB are enough, and bound what the error carries.
            text = k.memory.view[offset : offset + min(length, _ERROR_BYTES)].tobytes().decode("utf-8", "replace")
            k.error = text if length <= _ERROR_BYTES else text + "..."

        def error_get(s: Slots) -> None:
            _set_i64(s, 0 if k.error is None else k._stored(k.error.encode()))

        def config_get(s: Slots) -> None:
            value = k.config.get(k._text(_arg(s, 0), _CONFIG_KEY_BYTES, "config key"))
            _set_i64(s, 0 if not value else k._stored(value.encode()))

        def var_get(s: Slots) -> None:
            key = k._var_key(_arg(s, 0))
            try:
                value = k.vars.get(key)
            except kv.KvError as exc:
                raise GuestAbort(f"extism var_get of {safe_name(repr(key))} failed: {exc}") from exc
            _set_i64(s, 0 if not value else k._stored(value))

        def var_set(s: Slots) -> None:
            key, value_offset = k._var_key(_arg(s, 0)), _arg(s, 1)
            # Extism's var_set cannot report a failure to the plugin: a refused one ends the call.
            try:
                if value_offset == 0:
                    k.vars.delete(key)
                else:
                    most = k.imports.grant.tenant.quota.max_value_bytes
                    k.vars.set(key, k._block(value_offset, most, "var value"))
            except kv.KvError as exc:
                raise GuestAbort(f"extism var_set of {safe_name(repr(key))} refused: {exc}") from exc

        def http_request(s: Slots) -> None:
            raise GuestAbort("extism http_request is not available: wasmkv plugins have no network access")

        def http_status_code(s: Slots) -> int:
            return 0

        def http_headers(s: Slots) -> None:
            _set_i64(s, 0)

        def logger(level: int) -> RawCallback:
            def log(s: Slots) -> None:
                log = k.imports.log
                if log.full:
                    return
                offset = _arg(s, 0)
                length = k._length(offset)
                if length is None or not k.memory.fits(offset, length):
                    raise GuestAbort(f"extism log: offset {offset} is not an allocated block")
                # Never read more than the call may still log.
                take = min(length, log.room)
                log.write(level, k.memory.view[offset : offset + take].tobytes(), cut=take < length)

            return log

        def get_log_level(s: Slots) -> int:
            effective = k.imports.grant.logger.getEffectiveLevel()
            for threshold, extism_level in _LEVELS:
                if effective <= threshold:
                    return extism_level
            return 4

        return {
            "input_set": input_set,
            "output_set": output_set,
            "output_offset": output_offset,
            "output_length": output_length,
            "error_set": error_set,
            "error_get": error_get,
            "config_get": config_get,
            "var_get": var_get,
            "var_set": var_set,
            "http_request": http_request,
            "http_status_code": http_status_code,
            "http_headers": http_headers,
            "log_trace": logger(logging.DEBUG),
            "log_debug": logger(logging.DEBUG),
            "log_info": logger(logging.INFO),
            "log_warn": logger(logging.WARNING),
            "log_error": logger(logging.ERROR),
            "get_log_level": get_log_level,
        }
