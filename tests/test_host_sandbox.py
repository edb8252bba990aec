"""Sandbox limits: deadlines, memory ceilings, fuel, traps, host errors; plugins and tenants isolated."""

from __future__ import annotations

import threading
import time
import tracemalloc
from pathlib import Path

import pytest
import wasmtime

from wasmkv import host, kv

COUNTER = """
(module
  (import "kv" "open" (func $open (param i32 i32) (result i32)))
  (import "kv" "increment" (func $incr (param i32 i32 i32 i64 i32) (result i32)))
  (import "kv" "get" (func $get (param i32 i32 i32 i32 i32) (result i32)))
  (import "host" "output" (func $out (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "default")
  (data (i32.const 16) "hits")
  (global $calls (mut i32) (i32.const 0))
  (func (export "hit") (result i32)
    (local $kv i32) (local $rc i32)
    (local.set $kv (call $open (i32.const 0) (i32.const 7)))
    (if (i32.lt_s (local.get $kv) (i32.const 0)) (then (return (local.get $kv))))
    (local.set $rc (call $incr (local.get $kv) (i32.const 16) (i32.const 4) (i64.const 1) (i32.const 32)))
    (if (i32.lt_s (local.get $rc) (i32.const 0)) (then (return (local.get $rc))))
    (local.set $rc (call $get (local.get $kv) (i32.const 16) (i32.const 4) (i32.const 64) (i32.const 100)))
    (drop (call $out (i32.const 64) (local.get $rc)))
    (i32.const 0))
  (func (export "calls") (result i32)
    (global.set $calls (i32.add (global.get $calls) (i32.const 1)))
    (i32.store (i32.const 200) (global.get $calls))
    (drop (call $out (i32.const 200) (i32.const 4)))
    (i32.const 0))
  (func (export "spin") (result i32) (loop $l (br $l)) (i32.const 0))
  (func (export "boom") (result i32) (drop (call $out (i32.const 16) (i32.const 4))) unreachable)
  (func (export "oob") (result i32) (i32.load (i32.const 0x7fffffff)))
  (func (export "grow") (result i32)
    (loop $l (br_if $l (i32.ne (memory.grow (i32.const 16)) (i32.const -1))))
    (drop (call $out (i32.const 16) (i32.const 4)))
    (i32.const 0))
  (func $recurse (export "recurse") (result i32) (call $recurse))
  (func (export "fail") (result i32) (drop (call $out (i32.const 16) (i32.const 4))) (i32.const 42))
  (func (export "not_entry") (param i32) (result i32) (local.get 0))
)
"""


def test_entry_points_are_the_exports_of_type_void_to_i32(wasm_host: host.Host) -> None:
    plugin = wasm_host.load(COUNTER, name="c", tenant="acme")
    assert plugin.exports == ["boom", "calls", "fail", "grow", "hit", "oob", "recurse", "spin"]
    with pytest.raises(host.UnknownExport, match="no entry point 'not_entry'"):
        plugin.call("not_entry")


def test_a_runaway_loop_stops_after_its_deadline_and_well_before_twice_it(wasm_host: host.Host) -> None:
    plugin = wasm_host.load(COUNTER, name="c", tenant="acme", limits=host.Limits(deadline_ms=200))
    start = time.perf_counter()
    with pytest.raises(host.PluginTimeout, match="deadline of 200 ms") as raised:
        plugin.call("spin")
    elapsed_ms = (time.perf_counter() - start) * 1000
    # Never early. The typical overshoot is a few ms; the bound here must hold on a loaded
    # 2-core machine, where one run overshot by 80 ms (figures belong in bench/).
    assert 200 <= elapsed_ms <= 200 + 400
    assert raised.value.reason == "deadline"
    assert plugin.call("hit") == b"1"


def test_a_trap_fails_only_that_call_and_carries_the_output(wasm_host: host.Host) -> None:
    plugin = wasm_host.load(COUNTER, name="c", tenant="acme")
    with pytest.raises(host.PluginTrap) as raised:
        plugin.call("boom")
    assert raised.value.plugin == "c" and raised.value.export == "boom"
    assert raised.value.output == b"hits"
    assert "unreachable" in raised.value.reason
    with pytest.raises(host.PluginTrap, match="out of bounds"):
        plugin.call("oob")
    with pytest.raises(host.PluginTrap, match="stack"):
        plugin.call("recurse")
    assert plugin.call("hit") == b"1"


def test_a_trapped_instance_is_replaced_but_its_store_state_kept(wasm_host: host.Host) -> None:
    plugin = wasm_host.load(COUNTER, name="c", tenant="acme")
    assert plugin.call("calls") == (1).to_bytes(4, "little")
    assert plugin.call("calls") == (2).to_bytes(4, "little")
    plugin.call("hit")
    with pytest.raises(host.PluginTrap):
        plugin.call("boom")
    assert plugin.call("calls") == (1).to_bytes(4, "little")  # fresh instance: guest globals reset
    assert plugin.call("hit") == b"2"  # durable state kept


def test_a_non_zero_status_raises_with_status_and_output(wasm_host: host.Host) -> None:
    plugin = wasm_host.load(COUNTER, name="c", tenant="acme")
    with pytest.raises(host.PluginStatusError, match="returned status 42") as raised:
        plugin.call("fail")
    assert raised.value.status == 42
    assert raised.value.output == b"hits"
    assert plugin.call("calls") == (1).to_bytes(4, "little")  # a status is not a trap: instance kept


def test_a_memory_bomb_hits_the_ceiling_and_the_host_keeps_serving(wasm_host: host.Host) -> None:
    limits = host.Limits(memory_bytes=4 * 1024 * 1024)
    plugin = wasm_host.load(COUNTER, name="c", tenant="acme", limits=limits)
    assert plugin.call("grow") == b"hits"  # growth past the ceiling fails inside the plugin
    instance = plugin._version.instance
    assert instance is not None
    assert len(instance.memory.view) <= 4 * 1024 * 1024
    assert plugin.call("hit") == b"1"


def test_a_module_that_starts_over_its_memory_limit_does_not_load(wasm_host: host.Host) -> None:
    big = '(module (memory (export "memory") 100) (func (export "x") (result i32) (i32.const 0)))'
    with pytest.raises(host.LoadError, match="over its memory_bytes limit of 65536"):
        wasm_host.load(big, name="big", tenant="acme", limits=host.Limits(memory_bytes=65536))


def test_fuel_bounds_a_call(wasm_host: host.Host) -> None:
    plugin = wasm_host.load(COUNTER, name="c", tenant="acme", limits=host.Limits(fuel=10_000))
    with pytest.raises(host.PluginFuelExhausted, match="fuel budget of 10000") as raised:
        plugin.call("spin")
    assert raised.value.reason == "fuel"
    assert plugin.call("hit") == b"1"  # fuel is per call: refilled


def test_one_plugin_failing_leaves_others_serving(wasm_host: host.Host) -> None:
    bad = wasm_host.load(COUNTER, name="bad", tenant="t1", limits=host.Limits(deadline_ms=300))
    good = wasm_host.load(COUNTER, name="good", tenant="t2")
    answers: list[bytes] = []

    def spin() -> None:
        with pytest.raises(host.PluginTimeout):
            bad.call("spin")

    thread = threading.Thread(target=spin)
    thread.start()
    while thread.is_alive():
        answers.append(good.call("hit"))
    thread.join()
    assert len(answers) > 10  # the GIL is released while wasm spins
    assert answers == [str(i).encode() for i in range(1, len(answers) + 1)]


def test_plugins_of_two_tenants_are_isolated(wasm_host: host.Host, kvstore: kv.KvStore) -> None:
    one = wasm_host.load(COUNTER, name="one", tenant="t1")
    two = wasm_host.load(COUNTER, name="two", tenant="t2")
    for _ in range(3):
        one.call("hit")
    assert two.call("hit") == b"1"
    assert kvstore.tenant("t1").bucket().get("hits") == b"3"
    assert kvstore.tenant("t2").bucket().get("hits") == b"1"


def test_a_quota_error_reaches_the_plugin_as_a_status(wasm_host: host.Host, kvstore: kv.KvStore) -> None:
    tenant = kvstore.tenant("full", kv.Quota(max_keys=1))
    tenant.bucket().set("other", b"")
    plugin = wasm_host.load(COUNTER, name="c", tenant=tenant)
    with pytest.raises(host.PluginStatusError) as raised:
        plugin.call("hit")
    assert raised.value.status == -4


def test_a_host_bug_in_an_import_traps_the_call_not_the_process(
    wasm_host: host.Host, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    plugin = wasm_host.load(COUNTER, name="c", tenant="acme")

    def broken(self: kv.Bucket, key: object, delta: int = 1) -> int:
        raise RuntimeError("simulated host bug")

    monkeypatch.setattr(kv.Bucket, "increment", broken)
    with caplog.at_level("ERROR", logger="wasmkv.host"), pytest.raises(host.PluginTrap) as raised:
        plugin.call("hit")
    assert "host error in kv.increment: RuntimeError: simulated host bug" in raised.value.reason
    assert isinstance(raised.value.__cause__, RuntimeError)
    assert "host error in kv.increment" in caplog.text
    monkeypatch.undo()
    assert plugin.call("hit") == b"1"


def test_concurrent_calls_to_one_plugin_are_serialized_and_exact(wasm_host: host.Host, kvstore: kv.KvStore) -> None:
    plugin = wasm_host.load(COUNTER, name="c", tenant="acme")
    threads = [threading.Thread(target=lambda: [plugin.call("hit") for _ in range(200)]) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert kvstore.tenant("acme").bucket().get("hits") == b"800"


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (
            b"not wasm at all",
            "is not a wasm module, and as WAT text it does not parse: expected `(` at line:column 1:1",
        ),
        ("(module (func", "is not a wasm module, and as WAT text it does not parse"),
        ('(module (import "kv" "nope" (func)) (memory (export "memory") 1))', "kv.nope, which the wasmkv ABI"),
        ('(module (import "kv" "get" (func (param i32))) (memory (export "memory") 1))', "the ABI's is (i32, i32"),
        ('(module (import "env" "f" (func)) (memory (export "memory") 1))', "env.f, which the wasmkv ABI"),
        ('(module (func (export "x") (result i32) (i32.const 0)))', "does not export its linear memory"),
        ('(module (memory (export "memory") 1) (func $s unreachable) (start $s))', "failed to instantiate"),
    ],
)
def test_modules_that_break_the_abi_do_not_load(wasm_host: host.Host, source: str | bytes, message: str) -> None:
    with pytest.raises(host.LoadError, match=message.replace("(", r"\(").replace(".", r"\.")):
        wasm_host.load(source, name="bad", tenant="acme")
    assert "bad" not in wasm_host.plugins


def test_a_missing_file_is_a_load_error(wasm_host: host.Host) -> None:
    with pytest.raises(host.LoadError, match="cannot read plugin"):
        wasm_host.load("/nonexistent/plugin.wasm", name="x", tenant="acme")


def test_wasm_and_wat_files_both_load(wasm_host: host.Host, tmp_path: Path) -> None:
    directory = tmp_path
    (directory / "c.wat").write_text(COUNTER)
    (directory / "c.wasm").write_bytes(wasmtime.wat2wasm(COUNTER))
    assert wasm_host.load(directory / "c.wat", name="a", tenant="acme").call("hit") == b"1"
    assert wasm_host.load(str(directory / "c.wasm"), name="b", tenant="acme").call("hit") == b"2"


def test_a_closed_plugin_refuses_calls(wasm_host: host.Host) -> None:
    plugin = wasm_host.load(COUNTER, name="c", tenant="acme")
    wasm_host.unload("c")
    with pytest.raises(host.PluginClosed, match="closed"):
        plugin.call("hit")


def test_closing_the_host_during_a_runaway_call_ends_it_by_its_deadline(kvstore: kv.KvStore) -> None:
    wasm_host = host.Host(kvstore)
    plugin = wasm_host.load(COUNTER, name="c", tenant="acme", limits=host.Limits(deadline_ms=300))
    outcome: list[BaseException] = []

    def spin() -> None:
        try:
            plugin.call("spin")
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=spin)
    thread.start()
    while not plugin._version.busy:  # the event: the call is running
        time.sleep(0.001)
    started = time.perf_counter()
    wasm_host.close()
    assert time.perf_counter() - started < 1.0
    thread.join()
    assert isinstance(outcome[0], host.PluginTimeout)


def test_a_plugin_looping_on_bad_arguments_does_not_grow_host_memory(wasm_host: host.Host) -> None:
    bad_calls = """
    (module
      (import "kv" "exists" (func $exists (param i32 i32 i32) (result i32)))
      (import "kv" "get" (func $get (param i32 i32 i32 i32 i32) (result i32)))
      (memory (export "memory") 1)
      (func (export "bad") (result i32) (local $n i32)
        (local.set $n (i32.const 20000))
        (loop $l
          (drop (call $exists (i32.const 5) (i32.const 0) (i32.const 1)))
          (drop (call $get (i32.const -1) (i32.const 0) (i32.const 1) (i32.const 0) (i32.const 0)))
          (br_if $l (local.tee $n (i32.sub (local.get $n) (i32.const 1)))))
        (i32.const 0)))
    """
    plugin = wasm_host.load(bad_calls, name="bad", tenant="acme")
    plugin.call("bad")
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(3):
            plugin.call("bad")
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 256 * 1024


def test_a_module_importing_one_function_twice_loads(wasm_host: host.Host) -> None:
    twice = """
    (module
      (import "kv" "open" (func $a (param i32 i32) (result i32)))
      (import "kv" "open" (func $b (param i32 i32) (result i32)))
      (memory (export "memory") 1)
      (data (i32.const 0) "default")
      (func (export "both") (result i32)
        (i32.add (call $a (i32.const 0) (i32.const 7)) (call $b (i32.const 0) (i32.const 7)))))
    """
    assert wasm_host.load(twice, name="twice", tenant="acme").call("both") == b""


def test_a_start_function_calling_an_import_fails_to_load_clearly(
    wasm_host: host.Host, caplog: pytest.LogCaptureFixture
) -> None:
    starter = """
    (module
      (import "kv" "open" (func $open (param i32 i32) (result i32)))
      (memory (export "memory") 1)
      (func $start (drop (call $open (i32.const 0) (i32.const 7))))
      (start $start)
      (func (export "x") (result i32) (i32.const 0)))
    """
    with caplog.at_level("ERROR", logger="wasmkv.host"), pytest.raises(host.LoadError, match="start function"):
        wasm_host.load(starter, name="starter", tenant="acme")
    assert "host error" not in caplog.text  # a plugin mistake, not a host bug


def test_a_start_function_calling_get_fails_to_load_like_any_other_import(wasm_host: host.Host) -> None:
    # Before: get's inlined handle check answered "bad handle" first, so this module loaded.
    starter = """
    (module
      (import "kv" "get" (func $get (param i32 i32 i32 i32 i32) (result i32)))
      (memory (export "memory") 1)
      (func $start (drop (call $get (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0))))
      (start $start)
      (func (export "x") (result i32) (i32.const 0)))
    """
    with pytest.raises(host.LoadError, match=r"kv\.get was called from the module's start function"):
        wasm_host.load(starter, name="starter", tenant="acme")


def test_unknown_plugins_raise_a_host_error(wasm_host: host.Host) -> None:
    with pytest.raises(host.UnknownPlugin, match="no plugin 'ghost' is loaded"):
        wasm_host.plugin("ghost")
    assert issubclass(host.UnknownPlugin, host.HostError)
