"""Instance pools, `acall`, stats and observers: calls to one plugin in parallel, counted, state exact."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from wasmkv import host, kv
from wasmkv.host import CallRecord

# `wait` logs one line (the test's handler decides when it returns), then counts a hit in the store.
POOLED = """
(module
  (import "kv" "open" (func $open (param i32 i32) (result i32)))
  (import "kv" "increment" (func $incr (param i32 i32 i32 i64 i32) (result i32)))
  (import "kv" "set" (func $set (param i32 i32 i32 i32 i32) (result i32)))
  (import "host" "log" (func $log (param i32 i32 i32)))
  (import "host" "output" (func $out (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "default")
  (data (i32.const 16) "hits")
  (data (i32.const 24) "wait")
  (global $calls (mut i32) (i32.const 0))
  (func $hit (result i32)
    (local $kv i32) (local $rc i32)
    (local.set $kv (call $open (i32.const 0) (i32.const 7)))
    (local.set $rc (call $incr (local.get $kv) (i32.const 16) (i32.const 4) (i64.const 1) (i32.const 32)))
    (if (i32.lt_s (local.get $rc) (i32.const 0)) (then (return (local.get $rc))))
    (drop (call $out (i32.const 32) (i32.const 8)))
    (i32.const 0))
  (func (export "hit") (result i32) (call $hit))
  (func (export "wait") (result i32)
    (call $log (i32.const 1) (i32.const 24) (i32.const 4))
    (call $hit))
  (func (export "calls") (result i32)
    (global.set $calls (i32.add (global.get $calls) (i32.const 1)))
    (i32.store (i32.const 200) (global.get $calls))
    (drop (call $out (i32.const 200) (i32.const 4)))
    (i32.const 0))
  (func (export "fill") (result i32)
    (call $set (call $open (i32.const 0) (i32.const 7)) (i32.const 24) (i32.const 4) (i32.const 16) (i32.const 4)))
  (func (export "boom") (result i32) unreachable)
  (func (export "spin") (result i32) (loop $l (br $l)) (i32.const 0))
)
"""


def hits(output: bytes) -> int:
    return int.from_bytes(output, "little", signed=True)


class Gate(logging.Handler):
    """Holds every `wait` call at its log line until `release`; `arrived` counts the calls held."""

    def __init__(self) -> None:
        super().__init__()
        self.arrived = threading.Semaphore(0)
        self.go = threading.Event()

    def handle(self, record: logging.LogRecord) -> bool:
        # Not `Handler.handle`, which holds the handler's lock: held calls must reach here together.
        self.emit(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        self.arrived.release()
        self.go.wait(10)


@pytest.fixture
def gate() -> Iterator[Gate]:
    handler = Gate()
    logger = logging.getLogger("wasmkv.plugin.p")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        handler.go.set()
        logger.removeHandler(handler)


def test_a_pool_of_two_runs_two_calls_at_once_and_a_third_waits(wasm_host: host.Host, gate: Gate) -> None:
    plugin = wasm_host.load(POOLED, name="p", tenant="acme", pool_size=2)
    results: list[bytes] = []
    threads = [threading.Thread(target=lambda: results.append(plugin.call("wait"))) for _ in range(3)]
    for thread in threads:
        thread.start()
    # Two calls reach their log line together: each has its own instance.
    assert gate.arrived.acquire(timeout=10) and gate.arrived.acquire(timeout=10)
    assert plugin.stats().busy == 2
    # The third waits for an instance: it has not reached the plugin.
    assert not gate.arrived.acquire(timeout=0.2)
    gate.go.set()
    for thread in threads:
        thread.join(10)
    assert sorted(hits(out) for out in results) == [1, 2, 3]


def test_a_pool_of_one_runs_calls_one_at_a_time(wasm_host: host.Host, gate: Gate) -> None:
    plugin = wasm_host.load(POOLED, name="p", tenant="acme", pool_size=1)
    threads = [threading.Thread(target=plugin.call, args=("wait",)) for _ in range(2)]
    for thread in threads:
        thread.start()
    assert gate.arrived.acquire(timeout=10)
    assert not gate.arrived.acquire(timeout=0.2)
    gate.go.set()
    for thread in threads:
        thread.join(10)
    assert plugin.stats().exports["wait"].outcomes == {"ok": 2}


def test_many_concurrent_acalls_on_one_plugin_finish_with_exact_state(wasm_host: host.Host) -> None:
    plugin = wasm_host.load(POOLED, name="p", tenant="acme", pool_size=2)

    async def main() -> list[bytes]:
        return await asyncio.gather(*(plugin.acall("hit") for _ in range(200)))

    outputs = asyncio.run(main())
    assert sorted(hits(out) for out in outputs) == list(range(1, 201))
    assert asyncio.run(wasm_host.acall("p", "hit")) == (201).to_bytes(8, "little")


def test_instances_share_nothing_but_the_store(wasm_host: host.Host, gate: Gate) -> None:
    plugin = wasm_host.load(POOLED, name="p", tenant="acme", pool_size=2)
    # Hold one instance busy: the next calls all go to the other, whose own global counts them.
    held = threading.Thread(target=plugin.call, args=("wait",))
    held.start()
    assert gate.arrived.acquire(timeout=10)
    assert [int.from_bytes(plugin.call("calls"), "little") for _ in range(3)] == [1, 2, 3]
    gate.go.set()
    held.join(10)


def test_a_trap_replaces_only_its_instance(wasm_host: host.Host) -> None:
    plugin = wasm_host.load(POOLED, name="p", tenant="acme", pool_size=2)
    for _ in range(3):
        with pytest.raises(host.PluginTrap):
            plugin.call("boom")
    assert hits(plugin.call("hit")) == 1
    assert plugin.stats().exports["boom"].outcomes == {"trap": 3}


def test_acalls_fail_as_calls_do(wasm_host: host.Host) -> None:
    plugin = wasm_host.load(POOLED, name="p", tenant="acme", limits=host.Limits(deadline_ms=100))
    with pytest.raises(host.PluginTimeout):
        asyncio.run(plugin.acall("spin"))
    with pytest.raises(host.UnknownPlugin):
        asyncio.run(wasm_host.acall("nope", "hit"))
    with pytest.raises(host.UnknownExport):
        asyncio.run(plugin.acall("nope"))
    with pytest.raises(TypeError, match="encode text first"):
        asyncio.run(plugin.acall("hit", "text"))  # type: ignore[arg-type]


def test_a_reload_under_concurrent_calls_fails_none_and_retires_the_old_instances(wasm_host: host.Host) -> None:
    plugin = wasm_host.load(POOLED, name="p", tenant="acme", pool_size=2)
    old = plugin._version
    failures: list[BaseException] = []
    stop = threading.Event()
    calls = 0

    def hammer() -> None:
        nonlocal calls
        while not stop.is_set():
            try:
                plugin.call("hit")
                calls += 1
            except BaseException as exc:
                failures.append(exc)

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for thread in threads:
        thread.start()
    for _ in range(3):
        plugin.reload(POOLED.replace('"calls"', '"counted"'))
    stop.set()
    for thread in threads:
        thread.join(10)
    assert failures == []
    assert "counted" in plugin.exports
    assert old.retired and old.busy == 0 and old.instance is None
    assert hits(plugin.call("hit")) == calls + 1
    assert plugin.stats().reloads == {"ok": 3}


def test_close_waits_for_running_calls_and_wakes_waiting_ones(wasm_host: host.Host, gate: Gate) -> None:
    plugin = wasm_host.load(POOLED, name="p", tenant="acme", pool_size=1)
    outcomes: list[object] = []

    def call() -> None:
        try:
            outcomes.append(plugin.call("wait"))
        except host.PluginError as exc:
            outcomes.append(exc)

    running, waiting = threading.Thread(target=call), threading.Thread(target=call)
    running.start()
    assert gate.arrived.acquire(timeout=10)
    waiting.start()
    closer = threading.Thread(target=plugin.close)
    closer.start()
    closer.join(0.2)
    assert closer.is_alive()  # close waits for the running call
    gate.go.set()
    for thread in (closer, running, waiting):
        thread.join(10)
    assert [hits(out) for out in outcomes if isinstance(out, bytes)] == [1]
    assert [type(out) for out in outcomes if not isinstance(out, bytes)] == [host.PluginClosed]
    with pytest.raises(host.PluginClosed):
        plugin.call("hit")


class Recorder:
    def __init__(self) -> None:
        self.calls: list[CallRecord] = []
        self.reloads: list[tuple[str, str, str]] = []

    def call_done(self, record: CallRecord) -> None:
        self.calls.append(record)

    def reloaded(self, plugin: str, tenant: str, outcome: str) -> None:
        self.reloads.append((plugin, tenant, outcome))


def test_stats_and_observers_count_calls_kv_ops_refusals_and_reloads(kvstore: kv.KvStore) -> None:
    recorder = Recorder()
    kvstore.tenant("tiny", kv.Quota(max_keys=1))
    with host.Host(kvstore, observers=[recorder]) as wasm_host:
        plugin = wasm_host.load(POOLED, name="p", tenant="tiny")
        assert hits(plugin.call("hit")) == 1
        with pytest.raises(host.PluginStatusError):
            plugin.call("fill")  # a second key: over max_keys=1
        with pytest.raises(host.PluginTrap):
            plugin.call("boom")
        with pytest.raises(host.LoadError):
            plugin.reload(b"not wasm")
        plugin.reload(POOLED)
        stats = wasm_host.stats().plugins["p"]
    assert stats.tenant == "tiny" and stats.pool_size == 2 and stats.busy == 0
    assert stats.exports["hit"].outcomes == {"ok": 1}
    assert stats.exports["fill"].outcomes == {"error": 1}
    assert stats.exports["boom"].outcomes == {"trap": 1}
    assert sum(stats.exports["hit"].buckets) == 1 and stats.exports["hit"].seconds > 0
    assert stats.kv_ops == {("increment", "ok"): 1, ("set", "quota_exceeded"): 1}
    assert stats.quota_rejections == 1 and stats.rate_limited == 0
    assert stats.reloads == {"failed": 1, "ok": 1}
    assert [(r.export, r.outcome, r.status) for r in recorder.calls] == [
        ("hit", "ok", None),
        ("fill", "error", -4),
        ("boom", "trap", None),
    ]
    assert recorder.calls[1].kv_ops == {("set", "quota_exceeded"): 1}
    assert recorder.reloads == [("p", "tiny", "failed"), ("p", "tiny", "ok")]


def test_rate_limited_operations_are_counted(kvstore: kv.KvStore) -> None:
    kvstore.tenant("slow", kv.Quota(ops_per_second=1))
    with host.Host(kvstore) as wasm_host:
        plugin = wasm_host.load(POOLED, name="p", tenant="slow")
        outcomes = []
        for _ in range(3):
            try:
                plugin.call("hit")
                outcomes.append("ok")
            except host.PluginStatusError as exc:
                outcomes.append(str(exc.status))
        stats = plugin.stats()
    assert "-10" in outcomes
    assert stats.rate_limited == outcomes.count("-10")


def test_stats_stay_exact_under_concurrent_calls_and_reloads(wasm_host: host.Host) -> None:
    plugin = wasm_host.load(POOLED, name="p", tenant="acme", pool_size=2)
    per_thread = 100

    def hammer() -> None:
        for _ in range(per_thread):
            plugin.call("hit")

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for thread in threads:
        thread.start()
    for _ in range(2):
        plugin.reload(POOLED)
    for thread in threads:
        thread.join(60)
    calls = 3 * per_thread
    stats = plugin.stats()
    assert stats.exports["hit"].outcomes == {"ok": calls}
    assert sum(stats.exports["hit"].buckets) == calls
    assert stats.kv_ops == {("increment", "ok"): calls}
    assert hits(plugin.call("hit")) == calls + 1


GET_THEN_TRAP = """
(module
  (import "kv" "open" (func $open (param i32 i32) (result i32)))
  (import "kv" "get" (func $get (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "default")
  (data (i32.const 16) "k")
  (func (export "run") (result i32)
    (drop (call $get (call $open (i32.const 0) (i32.const 7))
                     (i32.const 16) (i32.const 1) (i32.const 32) (i32.const 0)))
    (drop (call $get (i32.const 99) (i32.const 16) (i32.const 1) (i32.const 32) (i32.const 0)))
    (drop (call $get (i32.const 0) (i32.const 65530) (i32.const 100) (i32.const 32) (i32.const 0)))
    unreachable))
"""


def test_kv_ops_of_a_call_that_traps_are_counted_with_its_refused_gets(wasm_host: host.Host) -> None:
    recorder = Recorder()
    wasm_host.add_observer(recorder)
    plugin = wasm_host.load(GET_THEN_TRAP, name="g", tenant="acme")
    for _ in range(2):  # the second call runs on a fresh instance: nothing of the first is counted twice
        with pytest.raises(host.PluginTrap):
            plugin.call("run")
    stats = plugin.stats()
    assert stats.exports["run"].outcomes == {"trap": 2}
    # A missing key is an answer, not a refusal; a bad handle and a bad pointer are refusals.
    assert stats.kv_ops == {("get", "ok"): 2, ("get", "bad_handle"): 2, ("get", "bad_pointer"): 2}
    assert [record.kv_ops for record in recorder.calls] == [
        {("get", "ok"): 1, ("get", "bad_handle"): 1, ("get", "bad_pointer"): 1}
    ] * 2


def test_each_call_returns_only_its_own_output(wasm_host: host.Host) -> None:
    plugin = wasm_host.load(POOLED, name="p", tenant="acme", pool_size=1)
    assert hits(plugin.call("hit")) == 1
    assert plugin.call("calls") == (1).to_bytes(4, "little")
    with pytest.raises(host.PluginTrap) as trapped:
        plugin.call("boom")
    assert trapped.value.output == b""
    assert plugin.call("calls") == (1).to_bytes(4, "little")  # a fresh instance after the trap


def test_a_failing_observer_never_fails_a_call(wasm_host: host.Host, caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        def call_done(self, record: CallRecord) -> None:
            raise RuntimeError("observer bug")

        def reloaded(self, plugin: str, tenant: str, outcome: str) -> None:
            raise RuntimeError("observer bug")

    wasm_host.add_observer(Broken())
    plugin = wasm_host.load(POOLED, name="p", tenant="acme")
    assert hits(plugin.call("hit")) == 1
    plugin.reload(POOLED)
    assert "observer" in caplog.text


def test_plugin_log_records_carry_plugin_tenant_export_and_version(
    wasm_host: host.Host, caplog: pytest.LogCaptureFixture
) -> None:
    plugin = wasm_host.load(POOLED, name="p", tenant="acme")
    with caplog.at_level(logging.INFO, logger="wasmkv.plugin.p"):
        plugin.call("wait")
    (record,) = [r for r in caplog.records if r.getMessage() == "wait"]
    assert (record.plugin, record.tenant, record.export, record.version) == ("p", "acme", "wait", plugin.version)


def test_bad_pool_sizes_and_thread_counts_are_refused(wasm_host: host.Host, kvstore: kv.KvStore) -> None:
    for size in (0, 65, "2", True):
        with pytest.raises(ValueError, match="pool_size must be an int of 1-64"):
            wasm_host.load(POOLED, name="p", tenant="acme", pool_size=size)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="call_threads must be a positive int"):
        host.Host(kvstore, call_threads=0)


def test_pool_size_comes_from_the_config(tmp_path: Path) -> None:
    (tmp_path / "p.wat").write_text(POOLED)
    (tmp_path / "wasmkv.toml").write_text(
        '[store]\nurl = "memory:"\n[tenants.acme]\nmax_concurrent_calls = 3\n'
        '[plugins.p]\nfile = "p.wat"\ntenant = "acme"\npool_size = 3\n'
    )
    config = host.load_config(tmp_path / "wasmkv.toml")
    assert config.max_concurrent_calls == {"acme": 3}
    with host.Host.from_loaded_config(config) as wasm_host:
        assert wasm_host.plugin("p").pool_size == 3
    (tmp_path / "wasmkv.toml").write_text(
        '[store]\nurl = "memory:"\n[tenants.acme]\n[plugins.p]\nfile = "p.wat"\ntenant = "acme"\npool_size = 0\n'
    )
    with pytest.raises(host.ConfigError, match=r"plugins\.p\.pool_size: must be 1-64, got 0"):
        host.load_config(tmp_path / "wasmkv.toml")
