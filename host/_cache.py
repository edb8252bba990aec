"""A cache of compiled modules on disk, so a warm start skips compilation (50-80 ms per 100 KB module).

An entry is keyed by the module's sha256, the wasmtime version and the
engine's settings, and starts with the sha256 of its own payload: an entry
whose payload does not match (truncated, corrupt, tampered) is never handed to
wasmtime; it is recompiled and rewritten. wasmtime itself rejects an entry from
another version or configuration, which also leads to a recompile.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
import tempfile
from pathlib import Path
from typing import Final

import wasmtime

__all__ = ["ModuleCache"]

_VERSION: Final = importlib.metadata.version("wasmtime")
_DIGEST_BYTES: Final = 32
_log = logging.getLogger("wasmkv.cache")


class ModuleCache:
    """Compiled modules in a directory; safe for several processes (writes are atomic renames)."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.hits = 0
        self.misses = 0

    def entry_path(self, wasm: bytes, settings: str) -> Path:
        """Where the compiled form of `wasm` under `settings` lives."""
        key = hashlib.sha256(f"{hashlib.sha256(wasm).hexdigest()}|wasmtime {_VERSION}|{settings}".encode()).hexdigest()
        return self.directory / f"{key}.cwasm"

    def module(self, engine: wasmtime.Engine, wasm: bytes, settings: str) -> wasmtime.Module:
        """The compiled module: from the cache when a verified entry exists, else compiled and stored.

        Raises:
            wasmtime.WasmtimeError: if `wasm` does not compile.
        """
        path = self.entry_path(wasm, settings)
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            blob = None
        except OSError as exc:
            _log.warning("module cache entry %s unreadable: %s", path, exc)
            blob = None
        if blob is not None:
            payload = blob[_DIGEST_BYTES:]
            if len(blob) > _DIGEST_BYTES and hashlib.sha256(payload).digest() == blob[:_DIGEST_BYTES]:
                try:
                    module = wasmtime.Module.deserialize(engine, payload)
                except wasmtime.WasmtimeError as exc:
                    _log.warning("module cache entry %s rejected by wasmtime, recompiling: %s", path, exc)
                else:
                    self.hits += 1
                    return module
            else:
                _log.warning("module cache entry %s is corrupt, recompiling", path)
        self.misses += 1
        module = wasmtime.Module(engine, wasm)
        self._store(path, bytes(module.serialize()))
        return module

    def _store(self, path: Path, payload: bytes) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.directory, suffix=".tmp", delete=False) as tmp:
                tmp.write(hashlib.sha256(payload).digest() + payload)
            os.replace(tmp.name, path)
        except OSError as exc:
            # A cache that cannot be written only costs the next start a compile.
            _log.warning("cannot write module cache entry %s: %s", path, exc)
