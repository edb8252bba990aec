"""Build the sample plugins to plugins/build/<name>.wasm.

Usage: python plugins/build.py [--wasi | --all]  (from any directory)

Each plugins/<name>.c is built with wasmkv.h and each plugins/<name>.zig with
wasmkv.zig, both with the Zig toolchain of the running interpreter
(`python -m ziglang`), for wasm32-freestanding. That needs nothing but the
Python packages and a few seconds, so `make demo` stays quick.

`--wasi` builds only each plugins/wasi/<name>.c, for wasm32-wasi as a reactor
(libc included, loaded with `wasi=True`; Zig compiles wasi-libc once, ~25 s).
`--all` builds both, then runs the builds of the other toolchains, each a
script of its own folder (plugins/<toolchain>/build.py: Rust with Debian's
toolchain, AssemblyScript and Extism's PDK from npm), which install what they
need.

Prints one line per plugin and exits non-zero if any build fails.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from _buildkit import OUT, compile_to  # plugins/ is on sys.path: this script lives there

PLUGINS = Path(__file__).resolve().parent
ROOT = PLUGINS.parent
GUEST = ROOT / "abi" / "guest"
# Not plugin sources: everything else in plugins/ must be one.
NOT_PLUGINS = {"build.py", "_buildkit.py", "README.md", "build", "__pycache__"}
#: Folders whose plugins other toolchains build (`--all`), each with its own build.py.
TOOLCHAINS = ("rust", "assemblyscript", "extism")
WASI = PLUGINS / "wasi"

ZIG = [sys.executable, "-m", "ziglang"]


def c_command(src: Path, out: Path) -> list[str]:
    return [
        *ZIG,
        "cc",
        "--target=wasm32-freestanding",
        "-nostdlib",
        "-Oz",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-Wl,--no-entry",
        "-Wl,--export-dynamic",
        "-Wl,--strip-all",
        f"-I{GUEST}",
        "-o",
        str(out),
        str(src),
    ]


def zig_command(src: Path, out: Path) -> list[str]:
    return [
        *ZIG,
        "build-exe",
        "-target",
        "wasm32-freestanding",
        "-fno-entry",
        "-rdynamic",
        "-O",
        "ReleaseSmall",
        "-fstrip",
        "--cache-dir",
        str(OUT / ".zig-cache"),
        f"-femit-bin={out}",
        "--dep",
        "wasmkv",
        f"-Mroot={src}",
        f"-Mwasmkv={GUEST / 'wasmkv.zig'}",
    ]


def wasi_c_command(src: Path, out: Path) -> list[str]:
    return [
        *ZIG,
        "cc",
        "--target=wasm32-wasi",
        "-mexec-model=reactor",
        "-Oz",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-Wl,--export-dynamic",
        "-Wl,--strip-all",
        f"-I{GUEST}",
        "-o",
        str(out),
        str(src),
    ]


COMMANDS = {".c": c_command, ".zig": zig_command}


def build(src: Path, command: Callable[[Path, Path], list[str]]) -> bool:
    """Build one source to plugins/build/<name>.wasm; print its line; True if it made it."""
    return compile_to(src.stem, lambda where: command(src, where), OUT / f"{src.stem}.wasm", cwd=OUT)


def main() -> int:
    everything = sys.argv[1:] == ["--all"]
    only_wasi = sys.argv[1:] == ["--wasi"]
    if sys.argv[1:] and not (everything or only_wasi):
        print("usage: python plugins/build.py [--wasi | --all]", file=sys.stderr)
        return 2
    skip = NOT_PLUGINS | {"wasi", *TOOLCHAINS}
    entries = sorted(p for p in PLUGINS.iterdir() if p.name not in skip)
    unknown = [p.name for p in entries if p.suffix not in COMMANDS or not p.is_file()]
    if unknown:
        print(f"not a plugin source (expected <name>.c or <name>.zig): {', '.join(unknown)}", file=sys.stderr)
        return 1
    if not entries:
        print("no plugins found", file=sys.stderr)
        return 1

    OUT.mkdir(exist_ok=True)
    failed = []
    for src in [] if only_wasi else entries:
        if not build(src, COMMANDS[src.suffix]):
            failed.append(src.name)
    for src in sorted(WASI.glob("*.c")) if everything or only_wasi else []:
        if not build(src, wasi_c_command):
            failed.append(f"wasi/{src.name}")
    if everything:
        for toolchain in TOOLCHAINS:
            script = PLUGINS / toolchain / "build.py"
            if script.is_file() and subprocess.run([sys.executable, str(script)], check=False).returncode != 0:
                failed.append(f"{toolchain}/")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
