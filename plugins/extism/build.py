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

import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # plugins/, for what the build scripts share

from _buildkit import OUT, build_all, compile_to, node_problem, npm_ci  # noqa: E402

ASC = HERE / "node_modules" / "assemblyscript" / "bin" / "asc.js"


def build(src: Path) -> bool:
    """Compile one plugin to plugins/build/<name>.wasm; print its line; True if it made it."""
    node = shutil.which("node") or "node"
    return compile_to(
        src.stem,
        lambda where: [
            node,
            str(ASC),
            src.name,
            "--config",
            "asconfig.json",
            "--use",
            f"abort={src.stem}/abort",
            "--outFile",
            str(where),
        ],
        OUT / f"{src.stem}.wasm",
        cwd=HERE,
    )


def main() -> int:
    if sys.argv[1:]:
        print("usage: python plugins/extism/build.py", file=sys.stderr)
        return 2
    problem = node_problem("the Extism plugins")
    if problem is not None:
        print(problem, file=sys.stderr)
        return 1
    sources = sorted(HERE.glob("*.ts"))
    if not sources:
        print("no Extism plugins found (plugins/extism/*.ts)", file=sys.stderr)
        return 1
    if not npm_ci(HERE) or not ASC.is_file():
        return 1
    return build_all(sources, build)


if __name__ == "__main__":
    sys.exit(main())
