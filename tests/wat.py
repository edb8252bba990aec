"""Tiny WAT plugins for host tests, and raw access to a loaded plugin's instance."""

from __future__ import annotations

import textwrap
from typing import Any

import wasmtime

from wasmkv import host
from wasmkv.abi import HOST_IMPORTS, HOST_MODULE, KV_IMPORTS, KV_MODULE


def forwarder(memory_pages: int = 1) -> str:
    """A module that imports every ABI function and exports `fwd_<name>` calling it with its own arguments.

    Tests drive the imports with raw arguments through these exports.
    """
    imports, exports = [], []
    for module, table in ((KV_MODULE, KV_IMPORTS), (HOST_MODULE, HOST_IMPORTS)):
        for name, (params, results) in table.items():
            sig = " ".join(f"(param {p})" for p in params) + "".join(f" (result {r})" for r in results)
            imports.append(f'(import "{module}" "{name}" (func ${module}_{name} {sig}))')
            args = " ".join(f"(local.get {i})" for i in range(len(params)))
            exports.append(f'(func (export "fwd_{module}_{name}") {sig} (call ${module}_{name} {args}))')
    return '(module\n{}\n(memory (export "memory") {})\n{}\n(func (export "noop") (result i32) (i32.const 0)))'.format(
        "\n".join(imports), memory_pages, "\n".join(exports)
    )


class Raw:
    """Calls a loaded plugin's exports with raw arguments and pokes its memory (tests only)."""

    def __init__(self, plugin: host.Plugin) -> None:
        self.plugin = plugin

    @property
    def _instance(self) -> Any:
        instance = self.plugin._version.instance
        assert instance is not None
        return instance

    def call(self, export: str, *args: int) -> Any:
        instance = self._instance
        instance.store.set_epoch_deadline(1_000)
        func = instance.wasm_instance.exports(instance.store)[export]
        assert isinstance(func, wasmtime.Func)
        return func(instance.store, *args)

    def write(self, offset: int, data: bytes) -> None:
        self._instance.memory.view[offset : offset + len(data)] = data

    def read(self, offset: int, length: int) -> bytes:
        return bytes(self._instance.memory.view[offset : offset + length])


def versioned(version: int, padding: int = 0) -> str:
    """A plugin whose `call` counts in the store and answers `vNN` + the count as 8 bytes."""
    data = f'(data (i32.const 4096) "{"x" * padding}")' if padding else ""
    return textwrap.dedent(
        f"""
        (module
          (import "kv" "open" (func $open (param i32 i32) (result i32)))
          (import "kv" "increment" (func $incr (param i32 i32 i32 i64 i32) (result i32)))
          (import "host" "output" (func $out (param i32 i32) (result i32)))
          (memory (export "memory") 1)
          (data (i32.const 0) "default")
          (data (i32.const 16) "hits")
          (data (i32.const 64) "v{version:02d}")
          {data}
          (func (export "call") (result i32) (local $rc i32)
            (local.set $rc (call $incr (call $open (i32.const 0) (i32.const 7))
                                       (i32.const 16) (i32.const 4) (i64.const 1) (i32.const 32)))
            (if (i32.lt_s (local.get $rc) (i32.const 0)) (then (return (local.get $rc))))
            (drop (call $out (i32.const 64) (i32.const 3)))
            (drop (call $out (i32.const 32) (i32.const 8)))
            (i32.const 0)))
        """
    )
