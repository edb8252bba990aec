"""The distribution a user installs: one import name, guest SDKs inside, an sdist that carries its tests.

Builds the sdist, builds the wheel from that sdist (so the sdist is proven
buildable), installs the wheel into a fresh virtualenv and uses it from a
directory outside the repository.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import sysconfig
import tarfile
import venv
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_docs import C_BUILD

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    out = tmp_path_factory.mktemp("dist")
    built = subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        text=True,
    )
    (out / "build.log").write_text(built.stdout + built.stderr)
    yield out


def test_the_build_ships_every_data_folder_as_a_package_with_no_setuptools_warning(dist: Path) -> None:
    # A data folder left out of `packages` is still shipped, with a screen of warnings at every install.
    log = (dist / "build.log").read_text()
    assert "absent from the `packages` configuration" not in log, log[-3000:]
    (wheel,) = dist.glob("wasmkv-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert "wasmkv/abi/guest/rust/src/lib.rs" in archive.namelist()


@pytest.fixture(scope="module")
def installed(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with the wheel installed (its dependencies borrowed from the test's own)."""
    env = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(with_pip=True).create(env)
    python = env / "bin" / "python"
    (wheel,) = dist.glob("wasmkv-*.whl")
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True,
        capture_output=True,
    )
    # Dependencies by path, not by download; a path line in a .pth adds no import hooks, so the
    # editable install of this checkout stays out of sight.
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (Path(site) / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return env


def _run(env: Path, code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(env / "bin" / "python"), "-c", code], cwd=cwd, capture_output=True, text=True, check=False
    )


def test_the_wheel_installs_one_import_name_and_nothing_at_top_level(installed: Path, tmp_path: Path) -> None:
    ok = _run(installed, "import wasmkv.kv, wasmkv.host, wasmkv.abi; print(wasmkv.kv.__file__)", tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert str(installed) in ok.stdout  # the installed copy, not this checkout
    for name in ("kv", "host", "abi"):
        missing = _run(installed, f"import {name}", tmp_path)
        assert missing.returncode != 0
        assert f"No module named '{name}'" in missing.stderr


def test_the_installed_host_runs_a_plugin_with_the_top_level_names(installed: Path, tmp_path: Path) -> None:
    code = (
        "from wasmkv import Host, KvStore\n"
        'wat = \'(module (import "host" "output" (func $o (param i32 i32) (result i32)))'
        ' (memory (export "memory") 1) (data (i32.const 0) "hi")'
        ' (func (export "hi") (result i32) (drop (call $o (i32.const 0) (i32.const 2))) (i32.const 0)))\'\n'
        "with KvStore.memory() as store, Host(store) as host:\n"
        "    print(host.load(wat, name='p', tenant='t').call('hi').decode())\n"
    )
    result = _run(installed, code, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "hi"


def test_wasmkv_sdk_points_into_the_installed_package_and_builds_a_plugin(installed: Path, tmp_path: Path) -> None:
    wasmkv = installed / "bin" / "wasmkv"
    listing = subprocess.run([str(wasmkv), "sdk"], capture_output=True, text=True, check=True, cwd=tmp_path).stdout
    sdks = dict(line.split("\t") for line in listing.splitlines())
    assert set(sdks) == {"c", "zig", "rust", "assemblyscript"}
    assert (Path(sdks["rust"]) / "Cargo.toml").is_file() and (Path(sdks["rust"]) / "src" / "lib.rs").is_file()
    assert Path(sdks["assemblyscript"]).is_file()
    include = subprocess.run([str(wasmkv), "sdk", "c"], capture_output=True, text=True, check=True).stdout.strip()
    assert include == sdks["c"]
    assert str(installed) in include
    assert (Path(include) / "wasmkv.h").is_file()
    assert Path(sdks["zig"]).is_file()
    source = tmp_path / "hit.c"
    source.write_text(
        '#include "wasmkv.h"\n'
        "WASMKV_EXPORT int32_t hit(void) {\n"
        "    wasmkv_reset();\n"
        '    int32_t kv = wasmkv_open("default");\n'
        "    if (kv < 0) return kv;\n"
        "    int64_t n;\n"
        '    int32_t rc = wasmkv_increment(kv, "hits", 1, &n);\n'
        "    if (rc < 0) return rc;\n"
        "    char buf[24];\n"
        "    wasmkv_output(buf, wasmkv_fmt_i64(buf, n));\n"
        "    return 0;\n"
        "}\n"
    )
    # The build line the docs give, as a user would type it after `pip install wasmkv ziglang`.
    build = shlex.split(C_BUILD.replace('"$(wasmkv sdk c)"', shlex.quote(include)))
    subprocess.run([sys.executable, *build[1:]], cwd=tmp_path, check=True, capture_output=True)
    state = tmp_path / "state"
    for expected in ("1", "2"):
        run = subprocess.run(
            [str(wasmkv), "run", "hit.wasm", "--state", str(state)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=False,
        )
        assert (run.returncode, run.stdout.strip()) == (0, expected), run.stderr


def test_the_sdist_carries_tests_plugins_examples_and_the_guest_sdks(dist: Path) -> None:
    (sdist,) = dist.glob("wasmkv-*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    for wanted in (
        "LICENSE",
        "Makefile",
        "tests/conftest.py",
        "tests/test_engine_contract.py",
        "plugins/build.py",
        "plugins/counter.c",
        "examples/two_tenants.py",
        "abi/ABI.md",
        "abi/guest/wasmkv.h",
        "abi/guest/wasmkv.zig",
    ):
        assert wanted in names, wanted
    assert not any(name.startswith("plugins/build/") for name in names)
