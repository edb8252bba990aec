"""Build the AssemblyScript sample plugins to plugins/build/<name>.wasm.

Usage: python plugins/assemblyscript/build.py  (from any directory)

Needs node >= 20 (assemblyscript 0.28 does) and npm. Installs the pinned
compiler from package-lock.json with `npm ci` into plugins/assemblyscript/
node_modules when it is missing or does not match the lockfile, then compiles
each plugins/assemblyscript/<name>.ts (they import the SDK from
abi/guest/assemblyscript) with that asc.

Prints one line per plugin and exits non-zero if anything fails.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "build"
NODE_MODULES = HERE / "node_modules"
ASC = NODE_MODULES / ".bin" / "asc"
MIN_NODE = 20

#: Release build. The runtime is asc's default (`incremental`): instances are reused across
#: calls, so memory must be collected (`stub` never frees). No `--use abort=`: the host provides
#: `env.abort`, so a failed assertion or a `throw` traps with its message and source position.
ASC_FLAGS = ["--runtime", "incremental", "--optimizeLevel", "3", "--shrinkLevel", "2", "--noAssert", "--noColors"]


def node_problem() -> str | None:
    """Why node cannot build the plugins (missing, too old, no npm), or None."""
    node = shutil.which("node")
    if node is None:
        return f"node >= {MIN_NODE} is needed to build the AssemblyScript plugins; node is not on PATH"
    try:
        version = subprocess.run([node, "--version"], check=True, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as exc:
        return f"node >= {MIN_NODE} is needed to build the AssemblyScript plugins; {node} --version failed: {exc}"
    found = re.match(r"v(\d+)\.", version)
    if found is None or int(found.group(1)) < MIN_NODE:
        return f"node >= {MIN_NODE} is needed to build the AssemblyScript plugins; {node} is {version or 'unknown'}"
    if shutil.which("npm") is None:
        return "npm is needed to install the AssemblyScript compiler; npm is not on PATH"
    return None


def installed() -> bool:
    """Whether node_modules holds exactly the packages of package-lock.json (and asc)."""
    if not ASC.exists():
        return False
    try:
        packages = json.loads((HERE / "package-lock.json").read_text())["packages"]
        for where, locked in packages.items():
            if not where.startswith("node_modules/"):
                continue
            manifest = json.loads((HERE / where / "package.json").read_text())
            if manifest.get("version") != locked.get("version"):
                return False
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return True


def install() -> bool:
    """`npm ci` in this folder; True if it worked."""
    print("assemblyscript: npm ci (node_modules missing or stale)", file=sys.stderr, flush=True)
    npm = shutil.which("npm") or "npm"
    result = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund"], check=False, capture_output=True, text=True, cwd=HERE
    )
    if result.returncode != 0:
        sys.stderr.write(result.stdout + result.stderr)
        print("npm ci failed", file=sys.stderr)
        return False
    return installed()


def build(src: Path) -> bool:
    """Compile one plugin; print its line; True if it made plugins/build/<name>.wasm."""
    out = OUT / f"{src.stem}.wasm"
    out.unlink(missing_ok=True)
    # Run node on asc itself, so the node checked above is the one that compiles. Relative to
    # HERE, the source's name (in abort messages) is just `<name>.ts`.
    command = [shutil.which("node") or "node", str(ASC), src.name, "--outFile", str(out), *ASC_FLAGS]
    start = time.perf_counter()
    result = subprocess.run(command, check=False, capture_output=True, text=True, cwd=HERE)
    ms = (time.perf_counter() - start) * 1000
    if result.returncode == 0 and out.is_file():
        print(f"{src.stem:<12} {out.stat().st_size:>7} bytes {ms:>7.0f} ms", flush=True)
        return True
    print(f"{src.stem:<12} {'FAILED':>13} {ms:>7.0f} ms", flush=True)
    sys.stderr.write(result.stdout + result.stderr)
    return False


def main() -> int:
    problem = node_problem()
    if problem is not None:
        print(problem, file=sys.stderr)
        return 1
    sources = sorted(p for p in HERE.glob("*.ts") if not p.name.endswith(".d.ts"))
    if not sources:
        print(f"no plugins found in {HERE}", file=sys.stderr)
        return 1
    if not installed() and not install():
        return 1
    OUT.mkdir(exist_ok=True)
    failed = [src.name for src in sources if not build(src)]
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
