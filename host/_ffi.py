"""The fast path through wasmtime's C API, beside wasmtime-py's checked wrappers.

`Linker.define_func` costs ~8 µs per import call that returns an i32 and
`Func.__call__` 7-25 µs per export call, mostly in per-call type conversion.
The C API's unchecked entry points skip that: imports get the raw argument
slots (`wasmtime_val_raw_t`, 16 bytes each, results written over the
arguments from slot 0), exports are called with a preallocated slot buffer.

This module uses private names of wasmtime-py (`wasmtime._ffi`, `_context`,
`_func`, `_memory`, `_from_ptr`), which is why `wasmtime` is pinned in
pyproject.toml and `tests/test_host_fastpath.py` fails loudly if they move.

Rules learned by measurement, each of which otherwise crashes the process:

- A `FuncType` binds to the first Engine that uses it: make a fresh one per define.
- An exception escaping a ctypes callback returns garbage to wasmtime, which
  reads it as a trap pointer: every callback is wrapped by `_guard`.
- Anything that runs wasm goes through `ctypes.CDLL`, which releases the GIL
  (the epoch ticker must run while wasm spins); tiny accessors use `PyDLL`.
- A trap that a callback returns comes back from the call as an *error*, not
  in the trap out-parameter.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from ctypes import CFUNCTYPE, POINTER, c_char_p, c_int32, c_int64, c_size_t, c_uint64, c_void_p
from typing import Any, Final

import wasmtime
from wasmtime import _ffi

__all__ = ["ErrorMapper", "ExportFunc", "GuestMemory", "RawCallback", "Slots", "define_unchecked"]

_LIBRARY: Final = _ffi.dll._name
# Same shared object twice: CDLL drops the GIL around the call, PyDLL keeps it (cheaper).
_RELEASING = ctypes.CDLL(_LIBRARY)
_HOLDING = ctypes.PyDLL(_LIBRARY)


def _bind(lib: ctypes.CDLL, name: str, restype: Any, *argtypes: Any) -> Any:
    # lib[name] is a fresh function object, so wasmtime-py's own prototypes stay untouched.
    function = lib[name]
    function.restype = restype
    function.argtypes = list(argtypes)
    return function


_define_func_unchecked = _bind(
    _RELEASING,
    "wasmtime_linker_define_func_unchecked",
    c_void_p,
    c_void_p, c_char_p, c_size_t, c_char_p, c_size_t, c_void_p, c_void_p, c_void_p, c_void_p,
)  # fmt: skip
_func_call_unchecked = _bind(
    _RELEASING, "wasmtime_func_call_unchecked", c_void_p, c_void_p, c_void_p, c_void_p, c_size_t, c_void_p
)
_trap_new = _bind(_HOLDING, "wasmtime_trap_new", c_void_p, c_char_p, c_size_t)
_memory_data = _bind(_HOLDING, "wasmtime_memory_data", c_void_p, c_void_p, c_void_p)
_memory_data_size = _bind(_HOLDING, "wasmtime_memory_data_size", c_size_t, c_void_p, c_void_p)
_set_epoch_deadline = _bind(_HOLDING, "wasmtime_context_set_epoch_deadline", None, c_void_p, c_uint64)

Slots = Any
"""The raw argument/result slots of one call, as `int32*`: slot i's i32 is `[4*i]`, its i64 `[4*i]`/`[4*i+1]`."""

RawCallback = Callable[[Slots], "int | None"]
"""An import body: reads its arguments from the slots and returns its i32 result (None for no result)."""

ErrorMapper = Callable[[BaseException], "int | bytes"]
"""Turns an exception from an import body into an i32 result for the guest, or a trap message."""

_CALLBACK = CFUNCTYPE(c_size_t, c_void_p, c_void_p, POINTER(c_int32), c_size_t)
_VALTYPES: Final = {"i32": wasmtime.ValType.i32, "i64": wasmtime.ValType.i64}


def _address(obj: Any) -> int:
    address: int = ctypes.cast(obj, c_void_p).value or 0
    return address


def _guard(body: RawCallback, on_error: ErrorMapper) -> Any:
    def callback(env: int | None, caller: int | None, slots: Slots, count: int) -> int:
        try:
            result = body(slots)
        except BaseException as exc:
            try:
                outcome = on_error(exc)
            except BaseException:
                outcome = b"host error"
            if type(outcome) is int:
                result = outcome
            else:
                # Returning a trap is the only safe way out of a callback that cannot answer.
                message = bytes(outcome)
                trap: int = _trap_new(message, len(message)) or 0
                return trap
        if result is not None:
            # Results overwrite the arguments from slot 0; the high half of an i32 slot is zero.
            slots[0] = result
            slots[1] = 0
        return 0

    return _CALLBACK(callback)


def define_unchecked(
    linker: wasmtime.Linker,
    module: str,
    name: str,
    signature: tuple[tuple[str, ...], tuple[str, ...]],
    body: RawCallback,
    on_error: ErrorMapper,
) -> object:
    """Define import `module.name` on `linker` through the unchecked entry point.

    Returns the callback object, which the caller must keep alive as long as
    any store instantiated from this linker. An exception from `body` goes to
    `on_error`, whose int is returned to the guest and whose bytes trap it.

    Raises:
        wasmtime.WasmtimeError: if the linker refuses the definition.
    """
    params, results = signature
    functype = wasmtime.FuncType([_VALTYPES[p]() for p in params], [_VALTYPES[r]() for r in results])
    callback = _guard(body, on_error)
    module_bytes, name_bytes = module.encode(), name.encode()
    error = _define_func_unchecked(
        _address(linker.ptr()),
        module_bytes,
        len(module_bytes),
        name_bytes,
        len(name_bytes),
        _address(functype.ptr()),
        _address(callback),
        None,
        None,
    )
    if error:
        raise wasmtime.WasmtimeError._from_ptr(ctypes.cast(error, POINTER(_ffi.wasmtime_error_t)))
    return callback


class GuestMemory:
    """Bounds-checked access to an instance's exported linear memory.

    The engine is configured with `memory_may_move = False`, so the base
    address never changes and memory never shrinks: a cached view stays valid
    and is refreshed only when an access reaches past its end.
    """

    __slots__ = ("_context", "_memory", "_memory_address", "view")

    def __init__(self, store: wasmtime.Store, memory: wasmtime.Memory) -> None:
        self._context = _address(store._context())
        self._memory = _ffi.wasmtime_memory_t.from_buffer_copy(memory._memory)
        self._memory_address = ctypes.addressof(self._memory)
        self.view = memoryview(b"")
        self.refresh()

    def refresh(self) -> None:
        """Re-read the memory's size after it grew."""
        size = _memory_data_size(self._context, self._memory_address)
        base = _memory_data(self._context, self._memory_address)
        self.view = memoryview((ctypes.c_ubyte * size).from_address(base)).cast("B") if size else memoryview(b"")

    def fits(self, pointer: int, length: int) -> bool:
        """Whether `[pointer, pointer + length)` lies inside the memory (both as signed i32).

        A zero length touches no memory, so its pointer is not checked (guest
        languages give empty slices arbitrary pointers).
        """
        if length == 0:
            return True
        if pointer < 0 or length < 0:
            return False
        end = pointer + length
        if end <= len(self.view):
            return True
        self.refresh()
        return end <= len(self.view)

    def release(self) -> None:
        """Drop the view; call before the store closes."""
        self.view = memoryview(b"")


class ExportFunc:
    """An export of type `() -> i32`, called through the unchecked entry point."""

    __slots__ = ("_context", "_func", "_func_address", "_slots", "_slots_address", "_trap", "_trap_address")

    def __init__(self, store: wasmtime.Store, func: wasmtime.Func) -> None:
        self._context = _address(store._context())
        self._func = _ffi.wasmtime_func_t.from_buffer_copy(func._func)
        self._func_address = ctypes.addressof(self._func)
        self._slots = (c_int64 * 2)()
        self._slots_address = ctypes.addressof(self._slots)
        self._trap = c_void_p()
        self._trap_address = ctypes.addressof(self._trap)

    def __call__(self, deadline_ticks: int) -> int:
        """Run the export with an epoch deadline of `deadline_ticks`; its i32 result.

        Raises:
            wasmtime.Trap: on a wasm trap (its `trap_code` tells interrupt, fuel, ...).
            wasmtime.WasmtimeError: when an import returned a trap.
        """
        _set_epoch_deadline(self._context, deadline_ticks)
        error = _func_call_unchecked(self._context, self._func_address, self._slots_address, 1, self._trap_address)
        if self._trap.value:
            trap = self._trap.value
            self._trap.value = None
            raise wasmtime.Trap._from_ptr(ctypes.cast(trap, POINTER(_ffi.wasm_trap_t)))
        if error:
            raise wasmtime.WasmtimeError._from_ptr(ctypes.cast(error, POINTER(_ffi.wasmtime_error_t)))
        # ValRaw::i32 is the low four bytes of the slot, as a signed int.
        return ((self._slots[0] & 0xFFFFFFFF) ^ 0x80000000) - 0x80000000
