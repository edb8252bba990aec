"""The development loop: watch plugins with watchfiles, rebuild and hot-swap them (the HTTP endpoint is `_devhttp`)."""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Final

import watchfiles

from ._config import Config, PluginConfig
from ._errors import HostError, UnknownPlugin
from ._host import Host
from ._sandbox import read_source
from ._text import safe_text

__all__ = ["BUILD_TIMEOUT_S", "DevLoop", "ReloadEvent", "build_failure", "run_build"]

#: A build command that runs longer than this is killed and reported as failed.
BUILD_TIMEOUT_S: Final = 300
#: A failed build shows its first error lines and its last lines.
_HEAD_LINES: Final = 8
_TAIL_LINES: Final = 4
_WILDCARDS: Final = "*?["


@dataclasses.dataclass(frozen=True, slots=True)
class ReloadEvent:
    """What one reload did: the plugin, the version now serving, what changed, how long it took, any error."""

    plugin: str
    version: str
    changed: str
    ms: float
    error: str | None = None
    unchanged: bool = False

    @property
    def ok(self) -> bool:
        """Whether the new version is serving."""
        return self.error is None

    def line(self) -> str:
        """The one line `wasmkv dev` prints for this reload."""
        if self.unchanged:
            return f"rebuilt {self.plugin} ({self.changed}): same module, still serving {self.version[:12]}"
        if self.ok:
            return f"reloaded {self.plugin} {self.version[:12]} ({self.changed}) in {self.ms:.0f} ms"
        return f"reload of {self.plugin} failed ({self.changed}), still serving {self.version[:12]}: {self.error}"


class DevLoop:
    """Watches every configured plugin's module (and its sources, when it has a build command) and hot-swaps it.

    Changes are handled on the watcher thread, never on a calling thread: a
    build runs, the new module compiles and instantiates, and only then does it
    replace the old one (`Plugin.reload`). A failed build, compile or
    instantiation leaves the old version serving. Each reload is reported to
    `on_event` (default: print its line).
    """

    def __init__(self, host: Host, config: Config, *, on_event: Callable[[ReloadEvent], None] | None = None) -> None:
        self.host = host
        self.config = config
        self.on_event = on_event or (lambda event: print(event.line(), flush=True))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    def watched_paths(self) -> list[Path]:
        """The directories handed to watchfiles: each module's directory and each source glob's fixed part."""
        paths: set[Path] = set()
        for plugin in self.config.plugins.values():
            paths.add(plugin.file.parent)
            for pattern in plugin.sources:
                paths.add(_glob_base(self.config.root, pattern))
        return sorted(path for path in paths if path.exists())

    def start(self) -> None:
        """Start watching on a background thread; returns once the watcher is running."""
        self._thread = threading.Thread(target=self._watch, name="wasmkv-dev-watch", daemon=True)
        self._thread.start()
        self._ready.wait(timeout=10)

    def stop(self) -> None:
        """Stop watching and wait for the watcher thread; idempotent."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _watch(self) -> None:
        watcher = watchfiles.watch(
            *self.watched_paths(),
            debounce=self.config.debounce_ms,
            step=10,
            stop_event=self._stop,
            rust_timeout=200,
            yield_on_timeout=True,
            raise_interrupt=False,
        )
        self._ready.set()
        for changes in watcher:
            if changes:
                self.handle(path for _, path in changes)

    def handle(self, changed: Iterable[str | Path]) -> list[ReloadEvent]:
        """React to changed paths: rebuild what needs it, reload what changed; the events, also sent to `on_event`."""
        started = time.perf_counter()
        paths = {Path(path).resolve() for path in changed}
        modules: dict[str, set[Path]] = {}
        sources: dict[str, set[Path]] = {}
        for plugin in self.config.plugins.values():
            if plugin.file.resolve() in paths:
                modules.setdefault(plugin.name, set()).add(plugin.file.resolve())
            hits = {p for p in paths if _matches(self.config.root, plugin.sources, p)}
            if hits and plugin.build is not None:
                sources[plugin.name] = hits
        events: list[ReloadEvent] = []
        built: dict[tuple[str, ...], str | None] = {}
        for name in sorted(set(modules) | set(sources)):
            plugin = self.config.plugins[name]
            changed_names = ", ".join(sorted(p.name for p in modules.get(name, set()) | sources.get(name, set())))
            error = None
            if name in sources:
                assert plugin.build is not None
                # Plugins sharing one build command (e.g. `python plugins/build.py`) build once per change.
                if plugin.build not in built:
                    built[plugin.build] = self._build(plugin)
                error = built[plugin.build]
            try:
                events.extend(self._reload(plugin, changed_names, started, error, rebuilt=name in sources))
            except Exception as exc:
                # Whatever a module does, the watcher must live on to pick up the next edit.
                version = self.host.plugins[name].version if name in self.host.plugins else ""
                ms = (time.perf_counter() - started) * 1000
                events.append(ReloadEvent(name, version, changed_names, ms, error=f"{type(exc).__name__}: {exc}"))
        for event in events:
            self.on_event(event)
        return events

    def _build(self, plugin: PluginConfig) -> str | None:
        return run_build(plugin, self.config.root)

    def _reload(
        self, plugin: PluginConfig, changed: str, started: float, error: str | None, *, rebuilt: bool
    ) -> list[ReloadEvent]:
        try:
            loaded = self.host.plugin(plugin.name)
        except UnknownPlugin:
            return []
        if error is None:
            try:
                wasm, _ = read_source(plugin.file)
            except HostError as exc:
                error = str(exc)
            else:
                if hashlib.sha256(wasm).hexdigest() == loaded.version:
                    if not rebuilt:
                        return []  # an editor or a shared build touching the file: nothing to say
                    ms = (time.perf_counter() - started) * 1000
                    return [ReloadEvent(plugin.name, loaded.version, changed, ms, unchanged=True)]
                try:
                    loaded.reload(wasm)
                except HostError as exc:
                    error = str(exc)
        ms = (time.perf_counter() - started) * 1000
        return [ReloadEvent(plugin=plugin.name, version=loaded.version, changed=changed, ms=ms, error=error)]


def run_build(plugin: PluginConfig, root: Path) -> str | None:
    """Run a plugin's build command in `root`; None if it succeeded, else what went wrong (see `build_failure`)."""
    assert plugin.build is not None
    try:
        # One stream, in the order the build wrote it, so "first" and "last" lines mean what they say.
        result = subprocess.run(
            plugin.build,
            cwd=root,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            timeout=BUILD_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"build command {' '.join(plugin.build)!r} failed to run: {exc}"
    if result.returncode != 0:
        return build_failure(result.returncode, result.stdout)
    return None


def build_failure(returncode: int, output: str) -> str:
    """A failed build for a person: the first error lines (where compilers put the cause) and the last lines."""
    lines = [safe_text(line.encode()) for line in output.strip().splitlines() if line.strip()]
    head = [line for line in lines if "error" in line.lower()][:_HEAD_LINES] or lines[:_HEAD_LINES]
    tail = [line for line in lines[-_TAIL_LINES:] if line not in head]
    shown = head + (["..."] if len(lines) > len(head) + len(tail) else []) + tail
    return f"build exited with {returncode}:" + "".join(f"\n    {line}" for line in shown)


def _glob_base(root: Path, pattern: str) -> Path:
    """The directory part of a glob before its first wildcard."""
    parts = []
    for part in Path(pattern).parts:
        if any(char in part for char in _WILDCARDS):
            break
        parts.append(part)
    base = root.joinpath(*parts) if parts else root
    return base if base.is_dir() else base.parent


def _matches(root: Path, patterns: Iterable[str], path: Path) -> bool:
    return any(fnmatch.fnmatch(str(path), str((root / pattern).resolve())) for pattern in patterns)
