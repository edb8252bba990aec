"""Sandbox limits for one plugin, and the fixed caps every plugin store gets."""

from __future__ import annotations

import dataclasses
from typing import Final

from ._errors import InvalidLimits

__all__ = [
    "DEFAULT_DEADLINE_MS",
    "DEFAULT_MEMORY_BYTES",
    "DEFAULT_TABLE_ELEMENTS",
    "MAX_FUNCTIONS",
    "MAX_GLOBALS",
    "MAX_INSTANCES",
    "MAX_MEMORIES",
    "MAX_MODULE_BYTES",
    "MAX_SEGMENTS",
    "MAX_TABLES",
    "Limits",
]

DEFAULT_MEMORY_BYTES: Final = 64 * 1024 * 1024
DEFAULT_DEADLINE_MS: Final = 1000
#: Every toolchain we support puts its indirect-call targets in one table of a few hundred to a few
#: thousand entries; 65,536 leaves room and bounds a `table.grow` bomb to well under a MiB.
DEFAULT_TABLE_ELEMENTS: Final = 65_536
#: A plugin is one module: one instance, at most one table and one linear memory per store.
MAX_INSTANCES: Final = 1
MAX_TABLES: Final = 1
MAX_MEMORIES: Final = 1
#: What a module may declare, checked before it is compiled: compiling costs ~5 KB of host memory per
#: function (a 5.7 MB module of a million empty functions took 5.4 GB), and each global a few hundred
#: bytes per instance. Plugins built by the toolchains we support stay far below these.
MAX_MODULE_BYTES: Final = 32 * 1024 * 1024
MAX_FUNCTIONS: Final = 50_000
MAX_GLOBALS: Final = 10_000
MAX_SEGMENTS: Final = 100_000
_WASM_PAGE_BYTES: Final = 65536


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    """What one plugin may use per call: memory, table size, a wall-clock deadline, optional fuel.

    `memory_bytes` caps the plugin's linear memory, its only one (growth past
    it fails inside the plugin; a module that starts larger fails to load), and
    also what the host builds for it in one call (a reply, the call's output).
    An Extism plugin also has the kernel's memory, capped the same way: up to
    twice `memory_bytes` of wasm memory, plus its output.
    `table_elements` caps its table the same way. `deadline_ms` bounds each
    call's wall-clock time. `fuel`, if set, bounds the instructions of each
    call (it costs 20-45 % speed on compute loops, so it is off by default).

    Raises:
        InvalidLimits: if a field is out of range.
    """

    memory_bytes: int = DEFAULT_MEMORY_BYTES
    deadline_ms: int = DEFAULT_DEADLINE_MS
    fuel: int | None = None
    table_elements: int = DEFAULT_TABLE_ELEMENTS

    def __post_init__(self) -> None:
        if type(self.memory_bytes) is not int or self.memory_bytes < _WASM_PAGE_BYTES:
            raise InvalidLimits(
                f"Limits.memory_bytes must be an int of at least one page (65536), got {self.memory_bytes!r}"
            )
        if type(self.deadline_ms) is not int or self.deadline_ms < 1:
            raise InvalidLimits(f"Limits.deadline_ms must be a positive int, got {self.deadline_ms!r}")
        if self.fuel is not None and (type(self.fuel) is not int or self.fuel < 1):
            raise InvalidLimits(f"Limits.fuel must be a positive int or None, got {self.fuel!r}")
        if type(self.table_elements) is not int or self.table_elements < 0:
            raise InvalidLimits(f"Limits.table_elements must be an int >= 0, got {self.table_elements!r}")
