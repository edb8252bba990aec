"""What every plugin build script shares: running one compile into plugins/build, its one line,
and, for the npm-based toolchains, node's version and the locked packages.

Imported by plugins/build.py and plugins/<toolchain>/build.py (each puts plugins/ on sys.path).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

OUT = Path(__file__).resolve().parent / "build"
MIN_NODE = 20


def line(name: str, out: Path | None, ms: float) -> None:
    """The one line a build prints for a plugin: its size, or FAILED, and the time taken."""
    size = f"{out.stat().st_size:>7} bytes" if out is not None else f"{'FAILED':>13}"
    print(f"{name:<12} {size} {ms:>7.0f} ms", flush=True)


def compile_to(
    name: str,
    command: Callable[[Path], list[str]],
    out: Path,
    *,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    artifact: Path | None = None,
    after: Callable[[subprocess.CompletedProcess[str]], None] | None = None,
) -> bool:
    """Run `command(where)`; move what it made (`artifact`, else `where`) to `out`.

    The result lands by rename, so a reader never sees half a module; a failed build leaves no
    stale one behind. Prints the plugin's line (and the compiler's output on failure).
    """
    partial = out.with_name(f".{out.stem}.{os.getpid()}.partial.wasm")
    partial.unlink(missing_ok=True)
    made = artifact if artifact is not None else partial
    start = time.perf_counter()
    result = subprocess.run(
        command(partial),
        check=False,
        capture_output=True,
        text=True,
        cwd=cwd,
        env=None if env is None else dict(env),
    )
    ms = (time.perf_counter() - start) * 1000
    if result.returncode != 0 or not made.is_file() or made.stat().st_size == 0:
        partial.unlink(missing_ok=True)
        out.unlink(missing_ok=True)
        line(name, None, ms)
        sys.stderr.write(result.stdout + result.stderr)
        return False
    if artifact is not None:
        shutil.copyfile(artifact, partial)
    partial.replace(out)
    if after is not None:
        after(result)
    line(name, out, ms)
    return True


def node_problem(what: str) -> str | None:
    """Why node and npm cannot build `what` (missing, too old), or None."""
    node = shutil.which("node")
    if node is None:
        return f"{what} need Node.js >= {MIN_NODE} and npm; node is not on PATH"
    try:
        version = subprocess.run([node, "--version"], check=True, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"{what} need Node.js >= {MIN_NODE} and npm; {node} --version failed: {exc}"
    found = re.match(r"v?(\d+)\.", version.stdout.strip())
    if found is None or int(found.group(1)) < MIN_NODE:
        return f"{what} need Node.js >= {MIN_NODE} and npm; {node} is {version.stdout.strip() or 'unknown'}"
    if shutil.which("npm") is None:
        return f"{what} need Node.js >= {MIN_NODE} and npm; npm is not on PATH"
    return None


def stale_modules(folder: Path) -> list[str]:
    """The packages of folder/package-lock.json that its node_modules lacks or holds at another version."""
    lock = json.loads((folder / "package-lock.json").read_text(encoding="utf-8"))
    stale = []
    for where, entry in lock.get("packages", {}).items():
        if not where.startswith("node_modules/"):
            continue
        try:
            installed = json.loads((folder / where / "package.json").read_text(encoding="utf-8")).get("version")
        except (OSError, ValueError):
            installed = None
        if installed != entry.get("version"):
            stale.append(where.removeprefix("node_modules/"))
    return stale


def npm_ci(folder: Path) -> bool:
    """Install folder's locked packages when node_modules lacks or mismatches them; True if they are there."""
    if not stale_modules(folder):
        return True
    start = time.perf_counter()
    result = subprocess.run(
        [shutil.which("npm") or "npm", "ci", "--no-audit", "--no-fund"],
        check=False,
        capture_output=True,
        text=True,
        cwd=folder,
    )
    ms = (time.perf_counter() - start) * 1000
    ok = result.returncode == 0 and not stale_modules(folder)
    print(f"{'npm ci':<12} {'done' if ok else 'FAILED':>13} {ms:>7.0f} ms", flush=True)
    if not ok:
        sys.stderr.write(result.stdout + result.stderr)
    return ok


def build_all(items: list[Path], build: Callable[[Path], bool]) -> int:
    """Build each item; the exit status (1 naming the failures, if any)."""
    OUT.mkdir(exist_ok=True)
    failed = [item.name for item in items if not build(item)]
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
