"""Sandbox limits for one plugin."""

from __future__ import annotations

import dataclasses
from typing import Final

from ._errors import InvalidLimits

__all__ = ["DEFAULT_DEADLINE_MS", "DEFAULT_MEMORY_BYTES", "Limits"]

DEFAULT_MEMORY_BYTES: Final = 64 * 1024 * 1024
DEFAULT_DEADLINE_MS: Final = 1000
_WASM_PAGE_BYTES: Final = 65536


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    """What one plugin may use per call: a memory ceiling, a wall-clock deadline, optional fuel.

    `memory_bytes` caps the linear memory (growth past it fails inside the
    plugin; a module that starts larger fails to load). `deadline_ms` bounds
    each call's wall-clock time. `fuel`, if set, bounds the instructions of
    each call (it costs 20-45 % speed on compute loops, so it is off by default).
    """

    memory_bytes: int = DEFAULT_MEMORY_BYTES
    deadline_ms: int = DEFAULT_DEADLINE_MS
    fuel: int | None = None

    def __post_init__(self) -> None:
        if type(self.memory_bytes) is not int or self.memory_bytes < _WASM_PAGE_BYTES:
            raise InvalidLimits(
                f"Limits.memory_bytes must be an int of at least one page (65536), got {self.memory_bytes!r}"
            )
        if type(self.deadline_ms) is not int or self.deadline_ms < 1:
            raise InvalidLimits(f"Limits.deadline_ms must be a positive int, got {self.deadline_ms!r}")
        if self.fuel is not None and (type(self.fuel) is not int or self.fuel < 1):
            raise InvalidLimits(f"Limits.fuel must be a positive int or None, got {self.fuel!r}")
