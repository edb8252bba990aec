"""The `wasmkv` command line, end to end in subprocesses."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from wat import versioned

WASMKV = str(Path(sys.executable).parent / "wasmkv")


def wasmkv(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([WASMKV, *map(str, args)], check=False, capture_output=True, text=True, cwd=cwd, timeout=60)


def test_run_keeps_state_across_processes_in_the_default_state_dir(built: Path, tmp_path: Path) -> None:
    first = wasmkv("run", built / "counter.wasm", "--call", "hit", cwd=tmp_path)
    second = wasmkv("run", built / "counter.wasm", "--call", "hit", cwd=tmp_path)
    assert (first.returncode, first.stdout) == (0, "1\n")
    assert (second.returncode, second.stdout) == (0, "2\n")
    assert (tmp_path / ".wasmkv" / "state").is_dir()


def test_run_takes_input_text_or_a_file_and_a_tenant(built: Path, tmp_path: Path) -> None:
    (tmp_path / "name.txt").write_text("visits")
    assert wasmkv("run", built / "counter.wasm", "--call", "hit", "--input", "@name.txt", cwd=tmp_path).stdout == "1\n"
    assert wasmkv("run", built / "counter.wasm", "--call", "read", "--input", "visits", cwd=tmp_path).stdout == "1\n"
    other = wasmkv("run", built / "counter.wasm", "--call", "read", "--input", "visits", "--tenant", "t2", cwd=tmp_path)
    assert other.stdout == "0\n"


def test_run_with_a_granted_bucket_and_raw_output(built: Path, tmp_path: Path) -> None:
    put = wasmkv("run", built / "session.wasm", "--call", "put", "--input", "s1 60000 hello", "--bucket", "sessions",
                 cwd=tmp_path)  # fmt: skip
    assert put.returncode == 0
    fetched = wasmkv("run", built / "session.wasm", "--call", "fetch", "--input", "s1", "--bucket", "sessions", "--raw",
                     cwd=tmp_path)  # fmt: skip
    assert fetched.stdout == "hello"


def test_inspect_prints_tenants_usage_and_keys(built: Path, tmp_path: Path) -> None:
    wasmkv("run", built / "counter.wasm", "--call", "hit", "--tenant", "acme", cwd=tmp_path)
    wasmkv("run", built / "session.wasm", "--call", "put", "--input", "s1 60000 x", "--bucket", "sessions",
           "--tenant", "acme", cwd=tmp_path)  # fmt: skip
    out = wasmkv("inspect", cwd=tmp_path)
    assert out.returncode == 0
    assert "tenant acme: 2/10000 keys" in out.stdout
    assert "  bucket default:\n    'hits' = b'1'" in out.stdout
    assert "'session:s1' = b'x'  (ttl " in out.stdout
    unknown = wasmkv("inspect", "--tenant", "nobody", cwd=tmp_path)
    assert (unknown.returncode, unknown.stdout) == (2, "")
    assert unknown.stderr == (
        "wasmkv: no tenant 'nobody' in this store (tenants: acme); --allow-missing treats it as empty\n"
    )
    allowed = wasmkv("inspect", "--tenant", "nobody", "--allow-missing", cwd=tmp_path)
    assert "tenant nobody: 0/10000 keys" in allowed.stdout


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--call", "nope"], 2, "no entry point 'nope'"),
        ([], 2, "has several entry points (hit, read, reset): pick one with --call"),
        (["--call", "hit", "--tenant", "bad name"], 2, "tenant name must be 1-64 characters"),
        (["--call", "hit", "--input", "@missing.txt"], 2, "missing.txt"),
    ],
)
def test_run_reports_bad_usage_clearly(built: Path, tmp_path: Path, args: list[str], code: int, message: str) -> None:
    result = wasmkv("run", built / "counter.wasm", *args, cwd=tmp_path)
    assert result.returncode == code
    assert message in result.stderr


def test_run_reports_a_plugin_status_and_a_missing_file(built: Path, tmp_path: Path) -> None:
    status = wasmkv("run", built / "session.wasm", "--call", "fetch", "--input", "nope", "--bucket", "sessions",
                    cwd=tmp_path)  # fmt: skip
    assert status.returncode == 1
    assert "returned status 1" in status.stderr
    missing = wasmkv("run", tmp_path / "nope.wasm", cwd=tmp_path)
    assert missing.returncode == 2
    assert "cannot read plugin" in missing.stderr


def test_run_reports_a_timeout(tmp_path: Path) -> None:
    (tmp_path / "spin.wat").write_text(
        '(module (memory (export "memory") 1) (func (export "spin") (result i32) (loop $l (br $l)) (i32.const 0)))'
    )
    result = wasmkv("run", "spin.wat", "--deadline-ms", "100", cwd=tmp_path)
    assert result.returncode == 3
    assert "ran past its deadline of 100 ms" in result.stderr


def test_export_then_import_round_trips_a_tenant(built: Path, tmp_path: Path) -> None:
    for _ in range(3):
        wasmkv("run", built / "counter.wasm", "--call", "hit", "--tenant", "acme", cwd=tmp_path)
    wasmkv("run", built / "session.wasm", "--call", "put", "--input", "s1 600000 data", "--bucket", "sessions",
           "--tenant", "acme", cwd=tmp_path)  # fmt: skip
    exported = wasmkv("export", "--tenant", "acme", "-o", "dump.bin", cwd=tmp_path)
    assert exported.returncode == 0 and "exported 2 keys of tenant acme" in exported.stderr
    imported = wasmkv("import", "dump.bin", "--state", "copy", "--tenant", "clone", cwd=tmp_path)
    assert imported.returncode == 0, imported.stderr
    assert "imported 2 keys into tenant clone (default, sessions)" in imported.stderr
    listing = wasmkv("inspect", "--state", "copy", cwd=tmp_path).stdout
    assert "'hits' = b'3'" in listing
    assert "'session:s1' = b'data'  (ttl " in listing


def test_import_of_a_bad_file_changes_nothing_and_says_why(tmp_path: Path) -> None:
    (tmp_path / "bad.bin").write_bytes(b"\x93not a dump")
    result = wasmkv("import", "bad.bin", "--state", "s", "--tenant", "acme", cwd=tmp_path)
    assert result.returncode == 2
    assert "dump" in result.stderr
    assert wasmkv("inspect", "--state", "s", cwd=tmp_path).stdout == "no tenants in this store\n"


def test_dev_serves_calls_and_hot_reloads_then_stops_on_ctrl_c(tmp_path: Path) -> None:
    (tmp_path / "p.wat").write_text(versioned(1))
    (tmp_path / "wasmkv.toml").write_text(
        '[dev]\ndebounce_ms = 20\n[tenants.acme]\n[plugins.p]\nfile = "p.wat"\ntenant = "acme"\n'
    )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dev = subprocess.Popen(
        [WASMKV, "dev", "--listen", f"127.0.0.1:{port}"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert dev.stdout is not None
        lines = iter(dev.stdout.readline, "")
        assert any(line.startswith("Ctrl-C stops.") for line in lines)  # the event: dev is serving

        def call() -> bytes:
            request = urllib.request.Request(f"http://127.0.0.1:{port}/call/p/call", data=b"")
            with urllib.request.urlopen(request, timeout=10) as response:
                return bytes(response.read())

        assert call()[:3] == b"v01"
        request_line = next(lines)
        assert request_line.startswith("wasmkv: info: call p.call: ok in "), request_line
        tmp = tmp_path / "p.tmp"
        tmp.write_text(versioned(2))
        os.replace(tmp, tmp_path / "p.wat")
        reload_line = next(line for line in lines if line.startswith("reload"))
        assert reload_line.startswith("reloaded p ") and "(p.wat)" in reload_line
        answer = call()
        assert answer[:3] == b"v02"
        assert int.from_bytes(answer[3:11], "little") == 2  # state kept across the swap
        dev.send_signal(signal.SIGINT)
        assert dev.wait(timeout=10) == 0
    finally:
        dev.kill()
        dev.wait()
        if dev.stdout is not None:
            dev.stdout.close()
