"""Build the Extism sample plugins to plugins/build/<name>.wasm.

Usage: python plugins/extism/build.py  (from any directory)

Each plugins/extism/<name>.ts is an unmodified Extism plugin written in
AssemblyScript with the official Extism PDK (@extism/as-pdk), compiled by the
AssemblyScript compiler the way the PDK documents: `asc <name>.ts --use
abort=<name>/abort` (each plugin defines its own `abort`, which sets the Extism
error and traps), with the options of asconfig.json. The result is a standard
Extism plugin: wasmkv runs it, and so do the Extism SDKs.

Needs Node.js >= 20 and npm. The exact compiler and PDK are pinned in
package-lock.json; `npm ci` installs them into plugins/extism/node_modules when
that is missing or does not match the lock file. Needs no Python package.

Prints one line per plugin (and one for `npm ci` when it runs); exits non-zero
if anything fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "build"
MODULES = HERE / "node_modules"
ASC = MODULES / "assemblyscript" / "bin" / "asc.js"
NODE_MAJOR = 20


def node_major(node: str) -> int | None:
    """The major version of `node --version`, or None if it does not run or says nothing readable."""
    try:
        result = subprocess.run([node, "--version"], check=False, capture_output=True, text=True, timeout=60)
    except OSError:
        return None
    found = re.match(r"v?(\d+)\.", result.stdout.strip())
    return int(found.group(1)) if result.returncode == 0 and found else None


def stale_modules() -> list[str]:
    """The packages of package-lock.json that node_modules lacks or holds at another version."""
    lock = json.loads((HERE / "package-lock.json").read_text(encoding="utf-8"))
    stale = []
    for where, entry in lock.get("packages", {}).items():
        if not where.startswith("node_modules/"):
            continue
        manifest = HERE / where / "package.json"
        try:
            installed = json.loads(manifest.read_text(encoding="utf-8")).get("version")
        except (OSError, ValueError):
            installed = None
        if installed != entry.get("version"):
            stale.append(where.removeprefix("node_modules/"))
    return stale


def npm_ci(npm: str) -> bool:
    """Install the locked packages; print its line; True if it worked."""
    start = time.perf_counter()
    result = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund"], check=False, capture_output=True, text=True, cwd=HERE
    )
    ms = (time.perf_counter() - start) * 1000
    ok = result.returncode == 0 and not stale_modules()
    print(f"{'npm ci':<12} {'done' if ok else 'FAILED':>13} {ms:>7.0f} ms", flush=True)
    if not ok:
        sys.stderr.write(result.stdout + result.stderr)
    return ok


def build(node: str, src: Path) -> bool:
    """Compile one plugin to plugins/build/<name>.wasm; print its line; True if it made it."""
    out = OUT / f"{src.stem}.wasm"
    partial = OUT / f".{src.stem}.partial.wasm"  # renamed into place: no reader sees half a module
    partial.unlink(missing_ok=True)
    command = [
        node,
        str(ASC),
        src.name,
        "--config",
        "asconfig.json",
        "--use",
        f"abort={src.stem}/abort",
        "--outFile",
        str(partial),
    ]
    start = time.perf_counter()
    result = subprocess.run(command, check=False, capture_output=True, text=True, cwd=HERE)
    ms = (time.perf_counter() - start) * 1000
    if result.returncode == 0 and partial.is_file() and partial.stat().st_size > 0:
        os.replace(partial, out)
        print(f"{src.stem:<12} {out.stat().st_size:>7} bytes {ms:>7.0f} ms", flush=True)
        return True
    partial.unlink(missing_ok=True)
    print(f"{src.stem:<12} {'FAILED':>13} {ms:>7.0f} ms", flush=True)
    sys.stderr.write(result.stdout + result.stderr)
    return False


def main() -> int:
    if sys.argv[1:]:
        print("usage: python plugins/extism/build.py", file=sys.stderr)
        return 2
    node = shutil.which("node")
    major = node_major(node) if node else None
    if node is None or major is None or major < NODE_MAJOR:
        found = "none found" if node is None else f"{node} is {'unreadable' if major is None else f'v{major}'}"
        print(f"the Extism plugins need Node.js >= {NODE_MAJOR} and npm ({found})", file=sys.stderr)
        return 1
    sources = sorted(HERE.glob("*.ts"))
    if not sources:
        print("no Extism plugins found (plugins/extism/*.ts)", file=sys.stderr)
        return 1
    if stale_modules() or not ASC.is_file():
        npm = shutil.which("npm")
        if npm is None:
            print(f"the Extism plugins need Node.js >= {NODE_MAJOR} and npm (no npm found)", file=sys.stderr)
            return 1
        if not npm_ci(npm):
            return 1

    OUT.mkdir(exist_ok=True)
    failed = [src.name for src in sources if not build(node, src)]
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
