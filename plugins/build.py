"""Build every sample plugin to plugins/build/<name>.wasm.

Usage: python plugins/build.py  (from any directory)

Each plugins/<name>.c is built with wasmkv.h and each plugins/<name>.zig with
wasmkv.zig, both with the Zig toolchain of the running interpreter
(`python -m ziglang`). Prints one line per plugin and exits non-zero if any
build fails.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

PLUGINS = Path(__file__).resolve().parent
ROOT = PLUGINS.parent
GUEST = ROOT / "abi" / "guest"
OUT = PLUGINS / "build"
# Not plugin sources: everything else in plugins/ must be one.
NOT_PLUGINS = {"build.py", "README.md", "build", "__pycache__"}

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


COMMANDS = {".c": c_command, ".zig": zig_command}


def main() -> int:
    entries = sorted(p for p in PLUGINS.iterdir() if p.name not in NOT_PLUGINS)
    unknown = [p.name for p in entries if p.suffix not in COMMANDS or not p.is_file()]
    if unknown:
        print(f"not a plugin source (expected <name>.c or <name>.zig): {', '.join(unknown)}", file=sys.stderr)
        return 1
    if not entries:
        print("no plugins found", file=sys.stderr)
        return 1

    OUT.mkdir(exist_ok=True)
    failed = []
    for src in entries:
        out = OUT / f"{src.stem}.wasm"
        out.unlink(missing_ok=True)
        start = time.perf_counter()
        result = subprocess.run(COMMANDS[src.suffix](src, out), check=False, capture_output=True, text=True, cwd=OUT)
        ms = (time.perf_counter() - start) * 1000
        if result.returncode == 0 and out.is_file():
            print(f"{src.stem:<12} {out.stat().st_size:>7} bytes {ms:>7.0f} ms", flush=True)
        else:
            failed.append(src.name)
            print(f"{src.stem:<12} {'FAILED':>13} {ms:>7.0f} ms", flush=True)
            sys.stderr.write(result.stdout + result.stderr)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
