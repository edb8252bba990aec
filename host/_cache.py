"""A cache of compiled modules on disk, so a warm start skips compilation (50-80 ms per 100 KB module).

A cache entry is native code that runs outside the wasm sandbox, so the cache
trusts nothing it did not write itself:

- Every entry carries an HMAC-SHA256 under a key only this user can read
  (`$XDG_CACHE_HOME/wasmkv/key`, default `~/.cache/wasmkv/key`, created 0600).
  The MAC covers the source module's sha256, the wasmtime version, the engine
  settings and the payload, so an entry is valid only for the module and the
  engine it was made from. An entry that fails the check is never handed to
  wasmtime: the module is recompiled and the entry overwritten, with one warning.
- The cache directory is created 0700, entries 0600. A directory (or key) that
  another user owns, or that group or others may write, is not used: one
  warning, and the host runs without a cache.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib.metadata
import logging
import os
import stat
import tempfile
from pathlib import Path
from typing import Final

import wasmtime

__all__ = ["ModuleCache", "default_key_path"]

_VERSION: Final = importlib.metadata.version("wasmtime")
_MAC_BYTES: Final = 32
_KEY_BYTES: Final = 32
#: Bumped whenever what the MAC covers changes, so no entry of an older layout can verify.
_ENTRY_FORMAT: Final = b"wasmkv-module-cache-v2"
#: No compiled module the host accepts comes near this (modules are at most 32 MiB of wasm).
_MAX_ENTRY_BYTES: Final = 1 << 30
_log = logging.getLogger("wasmkv.cache")


def _read_entry(path: Path, limit: int) -> bytes | None:
    """An entry's bytes, if it is a regular file of ours no larger than `limit`; else None (one warning).

    Opened without following symlinks and without blocking, and checked before anything is read: a
    planted FIFO, device or symlink (to /dev/zero, say) must not hang the host or fill its memory.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        _log.warning("module cache entry %s unreadable, recompiling: %s", path, exc.strerror)
        return None
    with os.fdopen(fd, "rb") as entry:
        info = os.fstat(entry.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid() or info.st_size > limit:
            _log.warning("module cache entry %s is not a file of this user's cache, recompiling", path)
            return None
        return entry.read(limit + 1)


def default_key_path() -> Path:
    """Where the per-user cache key lives: `$XDG_CACHE_HOME/wasmkv/key`, default `~/.cache/wasmkv/key`."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "wasmkv" / "key"


def _unsafe(path: Path, info: os.stat_result, what: str) -> str | None:
    """Why `path` must not be trusted (another owner; writable, or for a key readable, by others), or None."""
    if info.st_uid != os.getuid():
        return f"{what} {path} is owned by another user (uid {info.st_uid})"
    loose = stat.S_IWGRP | stat.S_IWOTH
    if what == "key":
        loose |= stat.S_IRGRP | stat.S_IROTH
    if info.st_mode & loose:
        return f"{what} {path} is open to other users (mode {stat.S_IMODE(info.st_mode):o})"
    return None


def _private_directory(directory: Path, what: str) -> str | None:
    """Create `directory` 0700 if missing; the reason it cannot be trusted, or None."""
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = directory.stat()
    except OSError as exc:
        return f"cannot use {what} {directory}: {exc.strerror}"
    if not stat.S_ISDIR(info.st_mode):
        return f"{what} {directory} is not a directory"
    return _unsafe(directory, info, what)


def _load_key(path: Path) -> bytes | str:
    """The cache key, created 0600 on first use; or the reason it cannot be used."""
    problem = _private_directory(path.parent, "key directory")
    if problem is not None:
        return problem
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    except OSError as exc:
        return f"cannot create the cache key {path}: {exc.strerror}"
    else:
        with os.fdopen(fd, "wb") as out:
            out.write(os.urandom(_KEY_BYTES))
    try:
        with open(path, "rb") as source:
            info = os.fstat(source.fileno())
            key = source.read(_KEY_BYTES + 1)
    except OSError as exc:
        return f"cannot read the cache key {path}: {exc.strerror}"
    problem = _unsafe(path, info, "key")
    if problem is not None:
        return problem
    if len(key) != _KEY_BYTES:
        # Another process may be writing it this instant; a start without the cache is cheap.
        return f"cache key {path} is not {_KEY_BYTES} bytes"
    return key


class ModuleCache:
    """Compiled modules in a directory, authenticated with a per-user key; safe for several processes.

    Writes are atomic renames. If the directory or the key cannot be trusted,
    the cache turns itself off (`enabled` is False) after one warning.
    """

    def __init__(self, directory: str | os.PathLike[str], *, key_path: str | os.PathLike[str] | None = None) -> None:
        self.directory = Path(directory)
        self.key_path = Path(key_path) if key_path is not None else default_key_path()
        self.hits = 0
        self.misses = 0
        self._key: bytes | None = None
        self._checked = False

    @property
    def enabled(self) -> bool:
        """Whether the cache is in use (its directory and key are private to this user)."""
        return self._ready() is not None

    def _ready(self) -> bytes | None:
        if not self._checked:
            self._checked = True
            problem = _private_directory(self.directory, "module cache directory")
            key = _load_key(self.key_path) if problem is None else problem
            if isinstance(key, str):
                _log.warning("module cache off: %s", key)
            else:
                self._key = key
        return self._key

    def entry_path(self, wasm: bytes, settings: str) -> Path:
        """Where the compiled form of `wasm` under `settings` lives."""
        key = hashlib.sha256(f"{hashlib.sha256(wasm).hexdigest()}|wasmtime {_VERSION}|{settings}".encode()).hexdigest()
        return self.directory / f"{key}.cwasm"

    def _mac(self, key: bytes, wasm: bytes, settings: str, payload: bytes) -> bytes:
        message = hmac.new(key, _ENTRY_FORMAT, hashlib.sha256)
        for part in (hashlib.sha256(wasm).digest(), _VERSION.encode(), settings.encode()):
            message.update(len(part).to_bytes(4, "big") + part)
        message.update(payload)
        return message.digest()

    def module(self, engine: wasmtime.Engine, wasm: bytes, settings: str) -> wasmtime.Module:
        """The compiled module: from the cache when an authentic entry exists, else compiled and stored.

        Raises:
            wasmtime.WasmtimeError: if `wasm` does not compile.
        """
        key = self._ready()
        if key is None:
            self.misses += 1
            return wasmtime.Module(engine, wasm)
        path = self.entry_path(wasm, settings)
        blob = _read_entry(path, _MAX_ENTRY_BYTES)
        if blob is not None:
            mac, payload = blob[:_MAC_BYTES], blob[_MAC_BYTES:]
            # Only bytes this user's key signed for this very module and engine reach wasmtime.
            if len(blob) > _MAC_BYTES and hmac.compare_digest(mac, self._mac(key, wasm, settings, payload)):
                try:
                    module = wasmtime.Module.deserialize(engine, payload)
                except wasmtime.WasmtimeError as exc:
                    _log.warning("module cache entry %s rejected by wasmtime, recompiling: %s", path, exc)
                else:
                    self.hits += 1
                    return module
            else:
                _log.warning("module cache entry %s failed its authenticity check, recompiling", path)
        self.misses += 1
        module = wasmtime.Module(engine, wasm)
        payload = bytes(module.serialize())
        self._store(path, self._mac(key, wasm, settings, payload) + payload)
        return module

    def _store(self, path: Path, blob: bytes) -> None:
        try:
            # NamedTemporaryFile creates the file 0600.
            with tempfile.NamedTemporaryFile(dir=self.directory, suffix=".tmp", delete=False) as tmp:
                tmp.write(blob)
            os.replace(tmp.name, path)
        except OSError as exc:
            # A cache that cannot be written only costs the next start a compile.
            _log.warning("cannot write module cache entry %s: %s", path, exc.strerror)
