"""wasmkv's Extism kernel under hostile use: offsets, sizes and keys a plugin picks."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from wasmkv import host, kv

ENV = "extism:host/env"

# One plugin whose exports each call one kernel function with arguments from its input
# (little-endian i64s), and output what it got back.
PROBE = f"""(module
  (import "{ENV}" "alloc" (func $alloc (param i64) (result i64)))
  (import "{ENV}" "length" (func $length (param i64) (result i64)))
  (import "{ENV}" "load_u64" (func $load (param i64) (result i64)))
  (import "{ENV}" "store_u64" (func $store (param i64 i64)))
  (import "{ENV}" "input_length" (func $ilen (result i64)))
  (import "{ENV}" "input_load_u64" (func $iload (param i64) (result i64)))
  (import "{ENV}" "output_set" (func $out (param i64 i64)))
  (import "{ENV}" "error_set" (func $err (param i64)))
  (import "{ENV}" "var_set" (func $vset (param i64 i64)))
  (import "{ENV}" "config_get" (func $config (param i64) (result i64)))
  (memory (export "memory") 1)
  ;; arg i: the i-th i64 of the input.
  (func $arg (param $i i64) (result i64) (call $iload (i64.mul (local.get $i) (i64.const 8))))
  ;; Put one i64 in a fresh block and make it the output.
  (func $answer (param $v i64) (local $o i64)
    (local.set $o (call $alloc (i64.const 8)))
    (call $store (local.get $o) (local.get $v))
    (call $out (local.get $o) (i64.const 8)))
  (func (export "alloc") (result i32) (call $answer (call $alloc (call $arg (i64.const 0)))) (i32.const 0))
  (func (export "allocs") (result i32) (local $n i64)
    ;; Allocate blocks of arg 0 bytes until the kernel says no; answer how many it gave.
    (block $full (loop $l
      (br_if $full (i64.eqz (call $alloc (call $arg (i64.const 0)))))
      (local.set $n (i64.add (local.get $n) (i64.const 1))) (br $l)))
    (call $answer (local.get $n)) (i32.const 0))
  (func (export "load") (result i32) (call $answer (call $load (call $arg (i64.const 0)))) (i32.const 0))
  (func (export "store") (result i32) (call $store (call $arg (i64.const 0)) (call $arg (i64.const 1))) (i32.const 0))
  (func (export "length") (result i32) (call $answer (call $length (call $arg (i64.const 0)))) (i32.const 0))
  (func (export "iload") (result i32) (call $answer (call $iload (call $arg (i64.const 0)))) (i32.const 0))
  (func (export "out") (result i32) (call $out (call $arg (i64.const 0)) (call $arg (i64.const 1))) (i32.const 0))
  (func (export "err") (result i32) (call $err (call $arg (i64.const 0))) (i32.const 0))
  (func (export "config") (result i32) (call $answer (call $config (call $arg (i64.const 0)))) (i32.const 0))
  ;; var_set with the input's bytes 8.. as the key (a block of their own; a multiple of 8 bytes)
  ;; and a value of 8 bytes.
  (func (export "var") (result i32) (local $k i64) (local $n i64) (local $i i64)
    (local.set $n (i64.sub (call $ilen) (i64.const 8)))
    (local.set $k (call $alloc (local.get $n)))
    (block $done (loop $l (br_if $done (i64.ge_u (local.get $i) (local.get $n)))
      (call $store (i64.add (local.get $k) (local.get $i)) (call $iload (i64.add (local.get $i) (i64.const 8))))
      (local.set $i (i64.add (local.get $i) (i64.const 8))) (br $l)))
    (call $vset (local.get $k) (call $alloc (i64.const 8))) (i32.const 0)))
"""


def args(*values: int) -> bytes:
    return b"".join(struct.pack("<Q", value & (2**64 - 1)) for value in values)


def number(output: bytes) -> int:
    value: int = struct.unpack("<q", output)[0]
    return value


@pytest.fixture
def probe(wasm_host: host.Host) -> host.Plugin:
    return wasm_host.load(PROBE, name="probe", tenant="acme", limits=host.Limits(memory_bytes=1 << 20))


@pytest.mark.parametrize("size", [2**63, 2**64 - 1, (1 << 20) + 1])
def test_an_allocation_past_memory_bytes_is_refused_with_0(probe: host.Plugin, size: int) -> None:
    assert number(probe.call("alloc", args(size))) == 0


def test_the_kernel_memory_is_bounded_by_memory_bytes(probe: host.Plugin) -> None:
    # 64 KiB blocks (+16 bytes of header each) in 1 MiB, less the input's block: at most 15.
    assert 13 <= number(probe.call("allocs", args(64 * 1024))) <= 15
    assert number(probe.call("allocs", args(64 * 1024))) == number(probe.call("allocs", args(64 * 1024)))  # reset


@pytest.mark.parametrize("offset", [0, 7, 31, 2**32, 2**63, 2**64 - 1, 2**64 - 4, (1 << 20) - 4])
def test_loads_and_stores_outside_the_kernel_memory_read_0_and_write_nothing(probe: host.Plugin, offset: int) -> None:
    assert number(probe.call("load", args(offset))) == 0
    assert probe.call("store", args(offset, 7)) == b""
    assert number(probe.call("length", args(offset))) == 0


@pytest.mark.parametrize("index", [2**64 - 4, 2**63, 9, 16])
def test_input_reads_past_the_input_give_0(probe: host.Plugin, index: int) -> None:
    assert number(probe.call("iload", args(index, 0xFFFF))) == 0  # the input is 16 bytes


def test_output_outside_the_kernel_memory_is_empty(probe: host.Plugin) -> None:
    assert probe.call("out", args(2**63, 16)) == b""
    assert probe.call("out", args(40, 2**62)) == b""


def test_an_error_at_a_forged_offset_ends_the_call_clearly(probe: host.Plugin) -> None:
    with pytest.raises(host.PluginTrap, match="is not an allocated block"):
        probe.call("err", args(1000))


def test_a_config_key_at_a_forged_offset_ends_the_call_and_a_missing_one_is_0(wasm_host: host.Host) -> None:
    plugin = wasm_host.load(PROBE, name="probe", tenant="acme", config={"k": "v"})
    with pytest.raises(host.PluginTrap, match="is not an allocated block"):
        plugin.call("config", args(2**40))
    assert number(plugin.call("config", args(48))) == 0  # the input block as a key: no such config


def test_var_names_the_store_refuses_end_the_call_and_write_nothing(wasm_host: host.Host, kvstore: kv.KvStore) -> None:
    plugin = wasm_host.load(PROBE, name="probe", tenant="acme")
    with pytest.raises(host.PluginTrap, match=r"var_set of .* refused"):
        plugin.call("var", args(0) + b"bad\x00keys")
    with pytest.raises(host.PluginTrap, match="var name of 600 bytes is over the limit of 512"):
        plugin.call("var", args(0) + b"k" * 600)  # refused before it is read
    assert kvstore.tenant("acme").bucket("extism").list_keys().keys == []
    plugin.call("var", args(0) + b"finename")
    assert kvstore.tenant("acme").bucket("extism").list_keys().keys == ["probe/finename"]


def test_an_input_larger_than_the_kernel_memory_fails_the_call_and_not_the_host(wasm_host: host.Host) -> None:
    plugin = wasm_host.load(PROBE, name="probe", tenant="acme", limits=host.Limits(memory_bytes=1 << 20))
    with pytest.raises(host.PluginTrap, match="does not fit the Extism kernel memory"):
        plugin.call("alloc", b"x" * (2 << 20))
    assert number(plugin.call("alloc", args(8))) > 0


def test_config_comes_from_wasmkv_toml_and_must_be_strings(tmp_path: Path) -> None:
    (tmp_path / "probe.wat").write_text(PROBE)
    config = tmp_path / "wasmkv.toml"
    body = '[store]\npath = "state"\n[tenants.acme]\n[plugins.probe]\nfile = "probe.wat"\ntenant = "acme"\n'
    config.write_text(body + '[plugins.probe.config]\ngreeting = "hi"\n')
    with host.Host.from_config(config) as wasm_host:
        assert wasm_host.plugin("probe")._grant.config == {"greeting": "hi"}
    config.write_text(body + "[plugins.probe.config]\ngreeting = 3\n")
    with pytest.raises(host.ConfigError, match=r"plugins\.probe\.config\.greeting: must be a string, got"):
        host.Host.from_config(config)
