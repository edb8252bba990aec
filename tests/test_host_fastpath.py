"""The private wasmtime-py names the fast path relies on: this fails loudly when an upgrade moves them."""

from __future__ import annotations

import ctypes
import importlib.metadata

import wasmtime
from wasmtime import _ffi


def test_wasmtime_is_the_pinned_version() -> None:
    assert importlib.metadata.version("wasmtime") == "50.0.1"


def test_the_c_symbols_and_private_python_names_exist() -> None:
    library = ctypes.CDLL(_ffi.dll._name)
    for symbol in (
        "wasmtime_linker_define_func_unchecked",
        "wasmtime_func_call_unchecked",
        "wasmtime_trap_new",
        "wasmtime_memory_data",
        "wasmtime_memory_data_size",
        "wasmtime_context_set_epoch_deadline",
        "wasmtime_config_strategy_set",
    ):
        assert hasattr(library, symbol), symbol
    for name in ("wasmtime_func_t", "wasmtime_memory_t", "wasm_trap_t", "wasmtime_error_t"):
        assert hasattr(_ffi, name), name
    assert hasattr(wasmtime.Trap, "_from_ptr")
    assert hasattr(wasmtime.WasmtimeError, "_from_ptr")
    store = wasmtime.Store(wasmtime.Engine())
    assert store._context()
    module = wasmtime.Module(store.engine, '(module (memory (export "m") 1) (func (export "f")))')
    exports = wasmtime.Instance(store, module, []).exports(store)
    assert hasattr(exports["m"], "_memory")
    assert hasattr(exports["f"], "_func")


def test_the_func_and_memory_structs_keep_their_layout() -> None:
    # ExportFunc and GuestMemory copy these structs by value; a size change means a new layout.
    assert ctypes.sizeof(_ffi.wasmtime_func_t) == 16
    assert ctypes.sizeof(_ffi.wasmtime_memory_t) == 24
