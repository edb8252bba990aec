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

import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # plugins/, for what the build scripts share

from _buildkit import OUT, build_all, compile_to, node_problem, npm_ci  # noqa: E402

ASC = HERE / "node_modules" / ".bin" / "asc"

#: Release build. The runtime is asc's default (`incremental`): instances are reused across
#: calls, so memory must be collected (`stub` never frees). No `--use abort=`: the host provides
#: `env.abort`, so a failed assertion or a `throw` traps with its message and source position.
ASC_FLAGS = ["--runtime", "incremental", "--optimizeLevel", "3", "--shrinkLevel", "2", "--noAssert", "--noColors"]


def build(src: Path) -> bool:
    """Compile one plugin; print its line; True if it made plugins/build/<name>.wasm."""
    # Run node on asc itself, so the node checked is the one that compiles. Relative to HERE,
    # the source's name (in abort messages) is just `<name>.ts`.
    node = shutil.which("node") or "node"
    return compile_to(
        src.stem,
        lambda where: [node, str(ASC), src.name, "--outFile", str(where), *ASC_FLAGS],
        OUT / f"{src.stem}.wasm",
        cwd=HERE,
    )


def main() -> int:
    problem = node_problem("the AssemblyScript plugins")
    if problem is not None:
        print(problem, file=sys.stderr)
        return 1
    sources = sorted(p for p in HERE.glob("*.ts") if not p.name.endswith(".d.ts"))
    if not sources:
        print(f"no plugins found in {HERE}", file=sys.stderr)
        return 1
    if not npm_ci(HERE) or not ASC.exists():
        return 1
    return build_all(sources, build)


if __name__ == "__main__":
    sys.exit(main())
