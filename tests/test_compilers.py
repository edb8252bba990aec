"""Winch, wasmtime's baseline compiler, for `wasmkv dev`: the same sandbox, faster compiles."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from wasmkv import host, kv

SPIN = '(module (memory (export "memory") 1) (func (export "spin") (result i32) (loop $l (br $l)) (i32.const 0)))'


@pytest.fixture
def winch_host(kvstore: kv.KvStore, tmp_path: Path) -> host.Host:
    with host.Host(kvstore, compiler="winch", cache_dir=tmp_path / "cache") as opened:
        yield opened  # type: ignore[misc]


def test_plugins_run_the_same_under_winch(winch_host: host.Host, built: Path, kvstore: kv.KvStore) -> None:
    counter = winch_host.load(built / "counter.wasm", name="counter", tenant="acme")
    assert [counter.call("hit") for _ in range(3)] == [b"1", b"2", b"3"]
    assert kvstore.tenant("acme").bucket().get("hits") == b"3"
    assert winch_host.sandbox.compiler == "winch"


def test_a_runaway_loop_under_winch_still_ends_at_its_deadline_and_fuel(winch_host: host.Host) -> None:
    plugin = winch_host.load(SPIN, name="spin", tenant="acme", limits=host.Limits(deadline_ms=200))
    started = time.monotonic()
    with pytest.raises(host.PluginTimeout):
        plugin.call("spin")
    assert time.monotonic() - started < 0.2 + 0.6
    fueled = winch_host.load(SPIN, name="fuel", tenant="acme", limits=host.Limits(fuel=100_000))
    with pytest.raises(host.PluginFuelExhausted):
        fueled.call("spin")


def test_each_compiler_has_its_own_cache_entries(kvstore: kv.KvStore, tmp_path: Path, built: Path) -> None:
    for compiler in ("cranelift", "winch"):
        with host.Host(kvstore, compiler=compiler, cache_dir=tmp_path / "cache") as wasm_host:
            assert wasm_host.load(built / "counter.wasm", name="c", tenant="acme").call("read") == b"0"
    assert len([entry for entry in (tmp_path / "cache").rglob("*") if entry.is_file()]) >= 2


def test_an_unknown_compiler_is_refused(kvstore: kv.KvStore, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="compiler must be one of cranelift, winch, got 'llvm'"):
        host.Host(kvstore, compiler="llvm")
    (tmp_path / "wasmkv.toml").write_text('[store]\npath = "s"\n[dev]\ncompiler = "llvm"\n')
    with pytest.raises(host.ConfigError, match=r"dev\.compiler: must be \"winch\" or \"cranelift\""):
        host.load_config(tmp_path / "wasmkv.toml")
    (tmp_path / "wasmkv.toml").write_text('[store]\npath = "s"\n')
    assert host.load_config(tmp_path / "wasmkv.toml").dev.compiler == "winch"
