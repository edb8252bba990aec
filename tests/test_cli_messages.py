"""Every mistake a user can make gets one line that says what was wrong and what to do; no tracebacks.

Each case here once printed something else: a Python repr, a codec error, a
field name instead of a flag, a bare errno, or a traceback.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from wat import versioned

from wasmkv import host, kv

WASMKV = str(Path(sys.executable).parent / "wasmkv")


def wasmkv(*args: str | bytes | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [WASMKV, *[os.fsdecode(arg) if isinstance(arg, bytes) else str(arg) for arg in args]],
        check=False,
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
    )


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_a_wrong_import_signature_shows_both_signatures(tmp_path: Path) -> None:
    (tmp_path / "p.wat").write_text('(module (import "kv" "get" (func (param i32))) (memory (export "memory") 1))')
    result = wasmkv("run", "p.wat", cwd=tmp_path)
    assert result.returncode == 2
    assert one_line(result) == (
        "wasmkv: plugin 'p' imports kv.get with type (i32) -> (); the ABI's is (i32, i32, i32, i32, i32) -> (i32)"
    )


def test_random_bytes_are_not_a_wasm_module(tmp_path: Path) -> None:
    (tmp_path / "noise.wasm").write_bytes(bytes(range(256)) * 8)
    result = wasmkv("run", "noise.wasm", cwd=tmp_path)
    assert result.returncode == 2
    assert one_line(result) == (
        "wasmkv: plugin noise.wasm is not a wasm module: it does not start with the WebAssembly magic bytes "
        "(\\0asm), and it is not WAT text either"
    )


def test_a_module_without_entry_points_says_so(tmp_path: Path) -> None:
    (tmp_path / "empty.wat").write_text('(module (memory (export "memory") 1))')
    result = wasmkv("run", "empty.wat", cwd=tmp_path)
    assert result.returncode == 2
    assert one_line(result) == "wasmkv: empty.wat has no entry points (exports of type () -> i32): nothing to call"


def test_input_that_is_not_utf8_is_passed_as_the_bytes_given(built: Path, tmp_path: Path) -> None:
    result = wasmkv("run", built / "counter.wasm", "--call", "hit", "--input", b"caf\xe9", cwd=tmp_path)
    assert result.returncode == 1
    # The key is the input, and a key must be UTF-8: the plugin gets -2 and returns it, named.
    assert one_line(result) == "wasmkv: plugin 'counter' export 'hit' returned status -2 (INVALID_KEY)"


@pytest.mark.parametrize(
    ("flag", "value", "unit"),
    [("--deadline-ms", "0", "milliseconds"), ("--memory-bytes", "-5", "bytes"), ("--fuel", "lots", "instructions")],
)
def test_a_bad_limit_names_the_flag(tmp_path: Path, flag: str, value: str, unit: str) -> None:
    result = wasmkv("run", "p.wat", flag, value, cwd=tmp_path)
    assert result.returncode == 2
    assert one_line(result) == (
        f"wasmkv run: argument {flag}: must be a positive whole number of {unit}, got {value!r} (see wasmkv run --help)"
    )


def test_a_listen_address_that_cannot_be_bound_says_why(tmp_path: Path) -> None:
    (tmp_path / "p.wat").write_text(versioned(1))
    (tmp_path / "wasmkv.toml").write_text('[tenants.acme]\n[plugins.p]\nfile = "p.wat"\ntenant = "acme"\n')
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = wasmkv("dev", "--listen", f"127.0.0.1:{port}", cwd=tmp_path)
    assert result.returncode == 2
    assert one_line(result) == f"wasmkv: cannot listen on 127.0.0.1:{port}: Address already in use"
    remote = wasmkv("dev", "--listen", "0.0.0.0:0", cwd=tmp_path)
    assert one_line(remote).startswith("wasmkv: refusing to listen on 0.0.0.0:0: it is reachable from other machines")


def test_dev_with_an_unreachable_store_stops_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "p.wat").write_text(versioned(1))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (tmp_path / "wasmkv.toml").write_text(
        f'[store]\nurl = "redis://127.0.0.1:{port}/0"\ntimeout_s = 1\n'
        '[tenants.acme]\n[plugins.p]\nfile = "p.wat"\ntenant = "acme"\n'
    )
    result = wasmkv("dev", cwd=tmp_path)
    assert result.returncode == 2
    assert one_line(result).startswith(f"wasmkv: Redis at 127.0.0.1:{port} is unreachable")


def test_dev_builds_a_plugin_that_is_not_built_yet(tmp_path: Path) -> None:
    (tmp_path / "make.py").write_text(f"open('p.wat', 'w').write({versioned(3)!r})\n")
    (tmp_path / "wasmkv.toml").write_text(
        '[dev]\nlisten = "127.0.0.1:0"\n[tenants.acme]\n'
        '[plugins.p]\nfile = "p.wat"\ntenant = "acme"\nbuild = "python make.py"\nsources = ["make.py"]\n'
    )
    dev = subprocess.Popen([WASMKV, "dev"], cwd=tmp_path, stdout=subprocess.PIPE, text=True)
    try:
        assert dev.stdout is not None
        lines = iter(dev.stdout.readline, "")
        assert next(lines).startswith("building p: ")
        assert any(line.startswith("loaded p ") for line in lines)
    finally:
        dev.terminate()
        dev.wait(timeout=10)
        if dev.stdout is not None:
            dev.stdout.close()


def test_a_failed_first_build_shows_the_first_error_and_the_end(tmp_path: Path) -> None:
    noise = "".join(f"print('step {i}')\n" for i in range(30))
    (tmp_path / "make.py").write_text(
        noise + "import sys\nprint('make.py:31: error: the first real error', file=sys.stderr)\n"
        + "".join(f"print('note {i}', file=sys.stderr)\n" for i in range(20)) + "sys.exit(3)\n"
    )  # fmt: skip
    (tmp_path / "wasmkv.toml").write_text(
        '[tenants.acme]\n[plugins.p]\nfile = "p.wat"\ntenant = "acme"\nbuild = "python make.py"\n'
    )
    result = wasmkv("dev", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith(
        "wasmkv: plugin p: build exited with 3:\n    make.py:31: error: the first real error\n"
    )
    assert result.stderr.rstrip().endswith("note 19")
    assert "note 5" not in result.stderr  # the middle is cut


def test_a_plugin_file_that_does_not_exist_and_has_no_build_says_so(tmp_path: Path) -> None:
    (tmp_path / "wasmkv.toml").write_text('[tenants.acme]\n[plugins.p]\nfile = "p.wasm"\ntenant = "acme"\n')
    result = wasmkv("dev", cwd=tmp_path)
    assert one_line(result) == (
        f"wasmkv: plugin p: {tmp_path / 'p.wasm'} does not exist; build it, or give it a `build` command in "
        f"{tmp_path / 'wasmkv.toml'}"
    )


def test_calling_with_text_instead_of_bytes_says_to_encode_it() -> None:
    with kv.KvStore.memory() as store, host.Host(store) as wasm_host:
        plugin = wasm_host.load(versioned(1), name="p", tenant="t")
        with pytest.raises(TypeError, match=r"^plugin 'p' input must be bytes, got str: encode text first"):
            plugin.call("call", "text")  # type: ignore[arg-type]


def test_a_plugins_log_lines_and_status_names_show_in_run(tmp_path: Path) -> None:
    (tmp_path / "talk.wat").write_text(
        """(module
          (import "host" "log" (func $log (param i32 i32 i32)))
          (memory (export "memory") 1)
          (data (i32.const 0) "hello from the plugin")
          (data (i32.const 32) "careful")
          (func (export "talk") (result i32)
            (call $log (i32.const 1) (i32.const 0) (i32.const 21))
            (call $log (i32.const 0) (i32.const 32) (i32.const 7))
            (i32.const -4)))"""
    )
    result = wasmkv("run", "talk.wat", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "plugin talk INFO: hello from the plugin",
        "wasmkv: plugin 'talk' export 'talk' returned status -4 (QUOTA_EXCEEDED)",
    ]
    verbose = wasmkv("run", "talk.wat", "-v", cwd=tmp_path)
    assert "plugin talk DEBUG: careful" in verbose.stderr.splitlines()
    quiet = wasmkv("-q", "run", "talk.wat", cwd=tmp_path)
    assert quiet.stderr.splitlines() == ["wasmkv: plugin 'talk' export 'talk' returned status -4 (QUOTA_EXCEEDED)"]


def test_a_missing_input_file_is_one_line(built: Path, tmp_path: Path) -> None:
    result = wasmkv("run", built / "counter.wasm", "--call", "hit", "--input", "@nope.txt", cwd=tmp_path)
    assert result.returncode == 2
    assert one_line(result) == "wasmkv: No such file or directory: nope.txt"


def test_inspect_of_a_directory_without_a_store_says_so_and_creates_nothing(tmp_path: Path) -> None:
    result = wasmkv("inspect", "--state", "nothing-here", cwd=tmp_path)
    assert result.returncode == 2
    assert one_line(result) == "wasmkv: no store at nothing-here; give --state DIR|URL or --config FILE"
    assert not (tmp_path / "nothing-here").exists()


def test_a_modules_hostile_names_reach_the_terminal_escaped(tmp_path: Path) -> None:
    name = "\\1b]0;owned\\07\\1b[2J\\0aINFO wasmkv.dev: reloaded counter"  # WAT string escapes
    (tmp_path / "evil.wat").write_text(f'(module (import "kv" "{name}" (func)) (memory (export "memory") 1))')
    result = wasmkv("run", "evil.wat", cwd=tmp_path)
    line = one_line(result)
    assert line.isprintable()
    assert line == (
        "wasmkv: plugin 'evil' imports kv.\\x1b]0;owned\\x07\\x1b[2J\\nINFO wasmkv.dev: reloaded counter, "
        "which the wasmkv ABI does not provide"
    )
