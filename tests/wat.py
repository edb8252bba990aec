"""Tiny WAT plugins for host tests, and raw access to a loaded plugin's instance."""

from __future__ import annotations

from typing import Any

import wasmtime

import host
from abi import HOST_IMPORTS, HOST_MODULE, KV_IMPORTS, KV_MODULE


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
