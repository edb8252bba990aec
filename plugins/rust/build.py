"""Build the Rust sample plugins to plugins/build/<crate>.wasm with Debian's Rust.

Usage: python plugins/rust/build.py  (from any directory)

Each crate plugins/rust/<crate>/ names its target in Cargo.toml
(`[package.metadata.wasmkv] target = "wasm32-unknown-unknown"` or
`"wasm32-wasi"`) and is built with `cargo build --offline --release` from
Debian's packages (rustc, cargo, libstd-rust-dev-wasm32, lld), which ship the
standard library of both wasm32 targets. They are called by absolute path,
since rustup's shims (without those targets) may come first on PATH; when they
are missing and we are root, apt-get installs them. Crates depend on nothing
but the SDK (abi/guest/rust), so nothing is downloaded.

Prints one line per plugin (cargo's warnings, if any, go to stderr) and exits
non-zero if any build fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

RUST = Path(__file__).resolve().parent
sys.path.insert(0, str(RUST.parent))  # plugins/, for what the build scripts share

from _buildkit import OUT, build_all, compile_to  # noqa: E402

TARGET_DIR = RUST / "target"

CARGO = Path("/usr/bin/cargo")
RUSTC = Path("/usr/bin/rustc")
#: The linker rustc runs for wasm32 (a link to Debian's lld).
RUST_LLD = Path("/usr/bin/rust-lld")
RUSTLIB = Path("/usr/lib/rustlib")
TARGETS = ("wasm32-unknown-unknown", "wasm32-wasi")
PACKAGES = ("rustc", "cargo", "libstd-rust-dev-wasm32", "lld")
#: apt-get waits this long for another apt or dpkg run to finish.
APT_LOCK_TIMEOUT_S = 300


def missing_tools() -> list[str]:
    """What of Debian's Rust for wasm32 is not installed."""
    needed = [CARGO, RUSTC, RUST_LLD, *(RUSTLIB / target for target in TARGETS)]
    return [str(path) for path in needed if not path.exists()]


def apt_install() -> bool:
    """Install PACKAGES; refresh the package lists first only if apt-get cannot find a package."""
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    lock = ["-o", f"DPkg::Lock::Timeout={APT_LOCK_TIMEOUT_S}"]
    # Recommends (clang, llvm) are not needed: rustc links wasm32 with lld alone.
    command = ["apt-get", *lock, "install", "-y", "-qq", "--no-install-recommends", *PACKAGES]
    first = subprocess.run(command, check=False, capture_output=True, text=True, env=env)
    if first.returncode == 0:
        return True
    if "Unable to locate package" not in first.stderr and "no installation candidate" not in first.stderr:
        sys.stderr.write(first.stdout + first.stderr)
        return False
    print("apt-get has no package lists: running apt-get update", flush=True)
    if subprocess.run(["apt-get", *lock, "update", "-qq"], check=False, env=env).returncode != 0:
        return False
    return subprocess.run(command, check=False, env=env).returncode == 0


def ensure_toolchain() -> bool:
    """Install what is missing with apt-get when we may; say what to do otherwise."""
    missing = missing_tools()
    if not missing:
        return True
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print(f"missing {', '.join(missing)}: installing {' '.join(PACKAGES)} with apt-get", flush=True)
        if apt_install() and not missing_tools():
            return True
        print(f"apt-get did not install {', '.join(missing_tools())}", file=sys.stderr)
        return False
    print(f"The Rust plugins need Debian's Rust for wasm32: install it (apt-get install {' '.join(PACKAGES)}).",
          file=sys.stderr)  # fmt: skip
    return False


def crate_target(manifest: Path) -> tuple[str, str]:
    """The crate's name and the target its Cargo.toml names."""
    package = tomllib.loads(manifest.read_text())["package"]
    target = package.get("metadata", {}).get("wasmkv", {}).get("target")
    if target not in TARGETS:
        raise ValueError(f"{manifest}: [package.metadata.wasmkv] target must be one of {', '.join(TARGETS)}")
    return package["name"], target


def build(crate: Path) -> bool:
    """Build one crate; print its line; True if it made plugins/build/<name>.wasm."""
    try:
        name, target = crate_target(crate / "Cargo.toml")
    except (OSError, KeyError, ValueError, tomllib.TOMLDecodeError) as error:
        print(f"{crate.name:<12} {'FAILED':>13}", flush=True)
        print(error, file=sys.stderr)
        return False

    def warnings(result: subprocess.CompletedProcess[str]) -> None:
        if "warning" in result.stderr:
            sys.stderr.write(result.stderr)

    return compile_to(
        name,
        lambda where: [str(CARGO), "build", "--offline", "--release", "--target", target],
        OUT / f"{name}.wasm",
        cwd=crate,
        env=dict(os.environ, RUSTC=str(RUSTC), CARGO_TARGET_DIR=str(TARGET_DIR)),
        artifact=TARGET_DIR / target / "release" / f"{name.replace('-', '_')}.wasm",
        after=warnings,
    )


def main() -> int:
    if sys.argv[1:]:
        print("usage: python plugins/rust/build.py", file=sys.stderr)
        return 2
    crates = sorted(manifest.parent for manifest in RUST.glob("*/Cargo.toml"))
    if not crates:
        print("no crates found in plugins/rust/", file=sys.stderr)
        return 1
    if not ensure_toolchain():
        return 1
    return build_all(crates, build)


if __name__ == "__main__":
    sys.exit(main())
