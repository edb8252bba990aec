"""Hostile plugins against the sandbox: each attack runs in a fresh process whose memory and time are measured.

Every attack here broke the host once (host RSS +1 GB, a call 8 s past its
deadline, another tenant stalled for seconds); each test fails if it would again.
Bounds are generous (they must hold on a loaded 2-core machine); the figures
themselves are measured in bench/.
"""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest
import wasmtime
from wat import versioned

from wasmkv import host, kv
from wasmkv.host._imports import packed_values_size

#: How much a process's peak RSS may grow during an attack; the attacks below reached 1-2 GB.
RSS_BOUND_MIB = 100

PRELUDE = textwrap.dedent(
    """
    import json, resource, sys, threading, time
    from wasmkv import host, kv

    def peak_mib():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    RESULT = {}
    """
)


def measured(code: str, timeout_s: float = 120) -> dict[str, Any]:
    """Run `code` after PRELUDE in a fresh interpreter; the RESULT dict it fills, plus its threads left."""
    script = (
        PRELUDE
        + textwrap.dedent(code)
        + textwrap.dedent(
            """
        RESULT["threads_left"] = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
        print(json.dumps(RESULT))
        """
        )
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout_s, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["threads_left"] == [], "the attack left threads running"
    return result


def test_a_table_grow_bomb_stops_at_table_elements_and_the_host_stays_small() -> None:
    result = measured(
        """
        WAT = '''(module
          (import "host" "output" (func $out (param i32 i32) (result i32)))
          (memory (export "memory") 1) (table $t 1 funcref)
          (func (export "bomb") (result i32)
            (loop $grow (br_if $grow (i32.ne (table.grow $t (ref.null func) (i32.const 1048576)) (i32.const -1))))
            (i32.store (i32.const 0) (table.size $t))
            (drop (call $out (i32.const 0) (i32.const 4)))
            (i32.const 0)))'''
        with kv.KvStore.memory() as store, host.Host(store) as h:
            p = h.load(WAT, name="bomb", tenant="evil", limits=host.Limits(memory_bytes=1 << 20))
            before = peak_mib()
            RESULT["size"] = int.from_bytes(p.call("bomb"), "little")
            RESULT["grew_mib"] = peak_mib() - before
        """
    )
    assert result["size"] == 1  # every grow past the limit fails inside the plugin
    assert result["grew_mib"] < RSS_BOUND_MIB


def test_a_module_with_extra_memories_is_refused_naming_multi_memory() -> None:
    memories = " ".join(f"(memory $m{i} 1 1024)" for i in range(24))
    wat = f'(module (memory (export "memory") 1) {memories} (func (export "go") (result i32) (i32.const 0)))'
    with (
        kv.KvStore.memory() as store,
        host.Host(store) as wasm_host,
        pytest.raises(host.LoadError, match="uses the WebAssembly multi-memory proposal, which wasmkv turns off"),
    ):
        wasm_host.load(wat, name="mem", tenant="evil", limits=host.Limits(memory_bytes=1 << 20))


@pytest.mark.parametrize(
    ("wat", "feature"),
    [
        ('(module (memory (export "memory") 1 1 shared))', "threads (shared memory)"),
        ('(module (memory (export "memory") i64 1))', "memory64"),
        ('(module (memory (export "memory") 1) (func $f (result i32) (return_call $f)))', "tail calls"),
        ('(module (memory (export "memory") 1) (tag $t) (func (throw $t)))', "exception handling"),
    ],
)
def test_modules_using_a_proposal_we_turned_off_are_refused_naming_it(wat: str, feature: str) -> None:
    with (
        kv.KvStore.memory() as store,
        host.Host(store) as wasm_host,
        pytest.raises(host.LoadError, match=re.escape(f"uses the WebAssembly {feature} proposal")),
    ):
        wasm_host.load(wat, name="p", tenant="t")


def test_a_table_larger_than_table_elements_does_not_load() -> None:
    wat = '(module (memory (export "memory") 1) (table 70000 funcref))'
    with (
        kv.KvStore.memory() as store,
        host.Host(store) as wasm_host,
        pytest.raises(host.LoadError, match=r"table_elements=65536"),
    ):
        wasm_host.load(wat, name="p", tenant="t")


AMPLIFIER = """
(module
  (import "kv" "open" (func $open (param i32 i32) (result i32)))
  (import "kv" "get_many" (func $get_many (param i32 i32 i32 i32 i32) (result i32)))
  (import "host" "input" (func $input (param i32 i32) (result i32)))
  (import "host" "output" (func $out (param i32 i32) (result i32)))
  (memory (export "memory") 1 1)
  (data (i32.const 0) "default")
  ;; The request (msgpack: the same key 1000 times) comes as the input; ask only for the reply's length.
  (func (export "amplify") (result i32) (local $len i32) (local $rc i32)
    (local.set $len (call $input (i32.const 64) (i32.const 32000)))
    (local.set $rc (call $get_many (call $open (i32.const 0) (i32.const 7))
                                   (i32.const 64) (local.get $len) (i32.const 0) (i32.const 0)))
    (i32.store (i32.const 32768) (local.get $rc))
    (drop (call $out (i32.const 32768) (i32.const 4)))
    (i32.const 0)))
"""


def test_get_many_of_one_large_value_repeated_is_refused_before_the_reply_is_built() -> None:
    result = measured(
        f"""
        import msgpack
        WAT = {AMPLIFIER!r}
        with kv.KvStore.memory() as store, host.Host(store) as h:
            store.tenant("evil", kv.Quota(max_bytes=8 << 20)).bucket().set("big", b"x" * (1 << 20))
            p = h.load(WAT, name="amp", tenant="evil", limits=host.Limits(memory_bytes=1 << 16, deadline_ms=1000))
            request = msgpack.packb(["big"] * 1000)
            before = peak_mib()
            started = time.monotonic()
            RESULT["rc"] = int.from_bytes(p.call("amplify", request), "little", signed=True)
            RESULT["seconds"] = time.monotonic() - started
            RESULT["grew_mib"] = peak_mib() - before
        """
    )
    assert result["rc"] == -3  # VALUE_TOO_LARGE: a 1 GiB reply for a 64 KiB plugin
    assert result["grew_mib"] < RSS_BOUND_MIB
    assert result["seconds"] < 1.0


def test_get_many_of_many_large_values_is_refused_as_they_are_read_not_after() -> None:
    # Before: every value was copied out (twice) and only then weighed against the plugin's memory:
    # 300 distinct values of 1 MiB, asked for by a plugin of 64 KiB, cost the host ~600 MiB.
    result = measured(
        f"""
        import msgpack
        WAT = {AMPLIFIER!r}
        with kv.KvStore.memory() as store, host.Host(store) as h:
            bucket = store.tenant("evil", kv.Quota(max_bytes=400 << 20)).bucket()
            keys = [f"big{{i:03d}}" for i in range(300)]
            for key in keys:
                bucket.set(key, b"x" * ((1 << 20) - 64))
            p = h.load(WAT, name="amp", tenant="evil", limits=host.Limits(memory_bytes=1 << 16, deadline_ms=5000))
            before = peak_mib()
            RESULT["rc"] = int.from_bytes(p.call("amplify", msgpack.packb(keys)), "little", signed=True)
            RESULT["grew_mib"] = peak_mib() - before
            RESULT["small"] = int.from_bytes(p.call("amplify", msgpack.packb(["absent", "also absent"])), "little")
        """
    )
    assert result["rc"] == -3  # VALUE_TOO_LARGE
    assert result["grew_mib"] < RSS_BOUND_MIB / 2
    assert result["small"] == len(msgpack.packb([None, None]))


def test_another_tenants_calls_keep_being_served_while_one_plugin_amplifies() -> None:
    result = measured(
        f"""
        import msgpack
        from wasmkv.abi import Status
        WAT = {AMPLIFIER!r}
        with kv.KvStore.memory() as store, host.Host(store) as h:
            store.tenant("evil", kv.Quota(max_bytes=8 << 20)).bucket().set("big", b"x" * (1 << 20))
            evil = h.load(WAT, name="amp", tenant="evil", limits=host.Limits(memory_bytes=1 << 16))
            good = h.load('''(module (memory (export "memory") 1) (func (export "ping") (result i32) (i32.const 0)))''',
                          name="good", tenant="good")
            request = msgpack.packb(["big"] * 1000)
            stop = threading.Event()
            def attack():
                while not stop.is_set():
                    evil.call("amplify", request)
            attacker = threading.Thread(target=attack)
            attacker.start()
            worst = 0.0
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                started = time.monotonic()
                good.call("ping")
                worst = max(worst, time.monotonic() - started)
                time.sleep(0.005)
            stop.set()
            attacker.join()
            RESULT["worst_s"] = worst
        """
    )
    # The target (bench/) is 300 ms; the attack used to stall the other tenant for 6 s.
    assert result["worst_s"] < 1.5


SCANNER = """(module
  (import "kv" "open" (func $open (param i32 i32) (result i32)))
  (import "kv" "scan" (func $scan (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1 1)
  (data (i32.const 0) "default")
  (data (i32.const 16) "\\80")  ;; msgpack {}: every key, 100 pairs a page
  ;; Asks for 1 MiB pages' lengths only, forever: each call reads a page the plugin never takes.
  (func (export "scan_forever") (result i32) (local $h i32)
    (local.set $h (call $open (i32.const 0) (i32.const 7)))
    (loop $l (drop (call $scan (local.get $h) (i32.const 16) (i32.const 1) (i32.const 0) (i32.const 0))) (br $l))
    (i32.const 0)))
"""


def test_a_plugin_scanning_large_pages_in_a_loop_is_bounded_by_its_deadline() -> None:
    result = measured(
        f"""
        WAT = {SCANNER!r}
        with kv.KvStore.memory() as store, host.Host(store) as h:
            bucket = store.tenant("evil", kv.Quota(max_bytes=64 << 20)).bucket()
            for i in range(64):
                bucket.set(f"big{{i:02d}}", b"x" * (256 << 10))
            p = h.load(WAT, name="scan", tenant="evil", limits=host.Limits(memory_bytes=1 << 16, deadline_ms=500))
            before = peak_mib()
            started = time.monotonic()
            try:
                p.call("scan_forever")
            except host.PluginTimeout as exc:
                RESULT["reason"] = exc.reason
            RESULT["seconds"] = time.monotonic() - started
            RESULT["grew_mib"] = peak_mib() - before
        """
    )
    assert result["reason"] == "deadline"
    assert result["seconds"] < 0.5 + 0.6
    assert result["grew_mib"] < RSS_BOUND_MIB  # each page is dropped; none is packed


def test_a_plugin_looping_on_imports_stops_near_its_deadline() -> None:
    wat = """(module
      (import "kv" "open" (func $open (param i32 i32) (result i32)))
      (import "kv" "exists" (func $exists (param i32 i32 i32) (result i32)))
      (memory (export "memory") 1) (data (i32.const 0) "default")
      (func (export "spin") (result i32) (local $h i32)
        (local.set $h (call $open (i32.const 0) (i32.const 7)))
        (loop $l (drop (call $exists (local.get $h) (i32.const 0) (i32.const 3))) (br $l)) (i32.const 0)))"""
    result = measured(
        f"""
        with kv.KvStore.memory() as store, host.Host(store) as h:
            p = h.load({wat!r}, name="spin", tenant="t", limits=host.Limits(deadline_ms=200))
            started = time.monotonic()
            try:
                p.call("spin")
            except host.PluginTimeout as exc:
                RESULT["reason"] = exc.reason
            RESULT["seconds"] = time.monotonic() - started
        """
    )
    assert result["reason"] == "deadline"
    assert 0.2 <= result["seconds"] < 0.2 + 0.6


LOGGER = """(module
  (import "host" "log" (func $log (param i32 i32 i32)))
  (import "host" "input" (func $input (param i32 i32) (result i32)))
  (memory (export "memory") 2)
  (func (export "say") (result i32)
    (call $log (i32.const 1) (i32.const 0) (call $input (i32.const 0) (i32.const 65536))) (i32.const 0))
  (func (export "flood") (result i32)
    (loop $l (call $log (i32.const 2) (i32.const 0) (i32.const 60000)) (br $l)) (i32.const 0)))"""


def test_plugin_log_lines_cannot_carry_terminal_controls_or_fake_lines(caplog: pytest.LogCaptureFixture) -> None:
    hostile = b"ok\x1b[2J\x1b]0;pwned\x07\nERROR fake line\r\x00\xc2\x9b\xe2\x80\xae!"
    with kv.KvStore.memory() as store, host.Host(store) as wasm_host:
        plugin = wasm_host.load(LOGGER, name="talk", tenant="t")
        with caplog.at_level("INFO", logger="wasmkv.plugin.talk"):
            plugin.call("say", hostile)
    (message,) = [record.getMessage() for record in caplog.records]
    assert message == "ok\\x1b[2J\\x1b]0;pwned\\x07\\nERROR fake line\\r\\x00\\x9b\\u202e!"
    assert message.isprintable()


def test_a_plugin_flooding_its_log_writes_at_most_64_kib_per_call(caplog: pytest.LogCaptureFixture) -> None:
    with kv.KvStore.memory() as store, host.Host(store) as wasm_host:
        plugin = wasm_host.load(LOGGER, name="flood", tenant="t", limits=host.Limits(deadline_ms=300))
        with caplog.at_level("INFO", logger="wasmkv.plugin.flood"), pytest.raises(host.PluginTimeout):
            plugin.call("flood")
    written = sum(len(record.getMessage()) for record in caplog.records)
    assert written <= 64 * 1024 + 200
    assert caplog.records[-1].getMessage() == "log truncated: this call wrote over 65536 bytes of log"
    assert sum("truncated" in record.getMessage() for record in caplog.records) == 1


def test_the_get_many_reply_length_is_computed_exactly() -> None:
    for values in (
        [],
        [None],
        [b""],
        [b"x" * 255, b"x" * 256, b"x" * 65535, b"x" * 65536, None] * 3,
        [None] * 15,
        [None] * 16,
        [b"v"] * 70000,
    ):
        assert packed_values_size(values) == len(msgpack.packb(values, use_bin_type=True))


@pytest.mark.parametrize("kind", [bytearray, memoryview])
def test_every_key_of_a_batch_is_validated_whatever_key_comes_first(kind: type) -> None:
    with kv.KvStore.memory() as store:
        bucket = store.tenant("t").bucket()
        odd: Any = kind(b"b")
        for call in (
            lambda: bucket.set_many([(b"a", b"1"), (odd, b"2")]),
            lambda: bucket.delete_many([b"a", odd]),
            lambda: bucket.get_many([b"a", odd]),
        ):
            with pytest.raises(kv.InvalidKey, match=f"key must be str \\(or its UTF-8 bytes\\), got {kind.__name__}"):
                call()
        assert bucket.list_keys().keys == []


BOMBER = """
(module
  (import "kv" "open" (func $open (param i32 i32) (result i32)))
  (import "kv" "get_many" (func $get_many (param i32 i32 i32 i32 i32) (result i32)))
  (import "kv" "set_many" (func $set_many (param i32 i32 i32 i32 i32) (result i32)))
  (import "kv" "delete_many" (func $delete_many (param i32 i32 i32 i32 i32) (result i32)))
  (import "kv" "list_keys" (func $list (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "host" "input" (func $input (param i32 i32) (result i32)))
  (import "host" "output" (func $out (param i32 i32) (result i32)))
  (import "host" "log" (func $log (param i32 i32 i32)))
  (memory (export "memory") 256 256)
  (data (i32.const 0) "default")
  ;; The input (the hostile bytes) is copied to 64; each export hands it to one import and outputs the status.
  (func $len (result i32) (call $input (i32.const 64) (i32.const 16700000)))
  (func $done (param $rc i32) (result i32)
    (i32.store (i32.const 16) (local.get $rc)) (drop (call $out (i32.const 16) (i32.const 4))) (i32.const 0))
  (func (export "set_many") (result i32)
    (call $done (call $set_many (call $open (i32.const 0) (i32.const 7)) (i32.const 64) (call $len)
                                (i32.const 0) (i32.const 0))))
  (func (export "get_many") (result i32)
    (call $done (call $get_many (call $open (i32.const 0) (i32.const 7)) (i32.const 64) (call $len)
                                (i32.const 0) (i32.const 0))))
  (func (export "delete_many") (result i32)
    (call $done (call $delete_many (call $open (i32.const 0) (i32.const 7)) (i32.const 64) (call $len)
                                   (i32.const 0) (i32.const 0))))
  (func (export "list_keys") (result i32)
    (call $done (call $list (call $open (i32.const 0) (i32.const 7)) (i32.const 0) (i32.const 0)
                            (i32.const 64) (call $len) (i32.const 10) (i32.const 32) (i32.const 16))))
  (func (export "log") (result i32)
    (call $log (i32.const 3) (i32.const 64) (call $len)) (call $done (i32.const 0))))
"""


BOMBS = """
def bomb_for(export):
    if export in ("get_many", "delete_many"):  # an array of 16 million empty arrays
        return b"\\xdd" + (16_000_000).to_bytes(4, "big") + b"\\x90" * 16_000_000
    if export == "set_many":  # a map of 8 million empty arrays to empty arrays
        return b"\\xdf" + (8_000_000).to_bytes(4, "big") + b"\\x90\\x90" * 8_000_000
    if export == "list_keys":  # a cursor that decodes to an array of 12 million empty arrays
        return base64.urlsafe_b64encode(b"\\xdd" + (12_000_000).to_bytes(4, "big") + b"\\x90" * 12_000_000)
    return b"\\x01" + "\\U0001f600".encode() * 4_000_000  # a control character, then 4-byte characters
"""


@pytest.mark.parametrize("export", ["set_many", "get_many", "delete_many", "list_keys", "log"])
def test_a_16_mb_hostile_request_costs_little_memory_and_time(export: str) -> None:
    code = textwrap.dedent(
        """
        import base64
        WAT = BOMBER_WAT
        BOMBS_CODE
        data = bomb_for(EXPORT)
        with kv.KvStore.memory() as store, host.Host(store) as h:
            p = h.load(WAT, name="bomb", tenant="evil", limits=host.Limits(memory_bytes=16 << 20, deadline_ms=300))
            before = peak_mib()
            started = time.monotonic()
            RESULT["rc"] = int.from_bytes(p.call(EXPORT, data), "little", signed=True)
            RESULT["seconds"] = time.monotonic() - started
            RESULT["grew_mib"] = peak_mib() - before
        """
    )
    code = code.replace("BOMBER_WAT", repr(BOMBER)).replace("EXPORT", repr(export)).replace("BOMBS_CODE", BOMBS)
    result = measured(code)
    assert result["rc"] == (0 if export == "log" else -12)  # INVALID_ARGUMENT, decided early
    # The request itself is 16 MB of the plugin's memory, and the import copies it once: that much is expected.
    assert result["grew_mib"] < 16 * 3 + 30
    assert result["seconds"] < 1.0


def _many_functions(count: int) -> bytes:
    """A module of `count` empty functions and one exported memory, in binary (WAT text this size is slow)."""

    def leb(value: int) -> bytes:
        out = bytearray()
        while True:
            byte, value = value & 0x7F, value >> 7
            out.append(byte | (0x80 if value else 0))
            if not value:
                return bytes(out)

    def section(kind: int, body: bytes) -> bytes:
        return bytes([kind]) + leb(len(body)) + body

    types = section(1, leb(1) + b"\x60\x00\x00")
    functions = section(3, leb(count) + b"\x00" * count)
    memory = section(5, leb(1) + b"\x00\x01")
    exports = section(7, leb(1) + leb(6) + b"memory" + b"\x02\x00")
    code = section(10, leb(count) + b"\x02\x00\x0b" * count)
    return b"\0asm\x01\0\0\0" + types + functions + memory + exports + code


def test_a_module_declaring_a_million_functions_is_refused_before_compiling(tmp_path: Path) -> None:
    (tmp_path / "huge.wasm").write_bytes(_many_functions(1_000_000))
    result = measured(
        f"""
        WASM = open({str(tmp_path / "huge.wasm")!r}, "rb").read()
        with kv.KvStore.memory() as store, host.Host(store) as h:
            before = peak_mib()
            started = time.monotonic()
            try:
                h.load(WASM, name="huge", tenant="evil")
            except host.LoadError as exc:
                RESULT["error"] = str(exc)
            RESULT["seconds"] = time.monotonic() - started
            RESULT["grew_mib"] = peak_mib() - before
        """
    )
    assert result["error"] == "plugin 'huge' (<bytes>) declares 1000000 functions, over the limit of 50000 for a plugin"
    assert result["grew_mib"] < 20
    assert result["seconds"] < 1.0
    with kv.KvStore.memory() as store, host.Host(store) as wasm_host:
        wasm_host.load(_many_functions(2000), name="fine", tenant="t")  # an ordinary count loads


@pytest.mark.parametrize("plant", ["fifo", "symlink to /dev/zero"])
def test_a_cache_entry_that_is_not_a_file_is_never_read(tmp_path: Path, plant: str) -> None:
    wasm = wasmtime.wat2wasm(versioned(1))
    with kv.KvStore.memory() as store:
        with host.Host(store, cache_dir=tmp_path) as first:
            first.load(wasm, name="p", tenant="t")
        (entry,) = tmp_path.glob("*.cwasm")
        entry.unlink()
        if plant == "fifo":
            os.mkfifo(entry)
        else:
            entry.symlink_to("/dev/zero")
    result = measured(
        f"""
        import wasmtime
        with kv.KvStore.memory() as store, host.Host(store, cache_dir={str(tmp_path)!r}) as h:
            before = peak_mib()
            started = time.monotonic()
            RESULT["answer"] = h.load({wasm!r}, name="p", tenant="t").call("call")[:3].decode()
            RESULT["seconds"] = time.monotonic() - started
            RESULT["grew_mib"] = peak_mib() - before
        """,
        timeout_s=60,
    )
    assert result["answer"] == "v01"
    assert result["seconds"] < 5
    assert result["grew_mib"] < RSS_BOUND_MIB


def _start_spinner(iterations: int) -> str:
    return f"""(module (memory (export "memory") 1) (global $i (mut i32) (i32.const 0))
      (func $start (loop $l (global.set $i (i32.add (global.get $i) (i32.const 1)))
                            (br_if $l (i32.lt_u (global.get $i) (i32.const {iterations})))))
      (start $start)
      (func (export "trap") (result i32) unreachable)
      (func (export "spin") (result i32) (loop $l (br $l)) (i32.const 0)))"""


def test_a_start_function_rerun_after_a_trap_counts_against_the_calls_deadline() -> None:
    with kv.KvStore.memory() as store, host.Host(store) as wasm_host:
        # Calibrate a start function that takes about 60 % of a 1 s deadline on this machine now.
        iterations = 10_000_000
        started = time.monotonic()
        wasm_host.load(_start_spinner(iterations), name="probe", tenant="t", limits=host.Limits(deadline_ms=60_000))
        per_iteration = (time.monotonic() - started) / iterations
        iterations = max(1000, int(0.6 / per_iteration))
        plugin = wasm_host.load(_start_spinner(iterations), name="p", tenant="t")
        for _ in range(3):
            with pytest.raises(host.PluginTrap):
                plugin.call("trap")  # the instance is replaced: the next call starts a new one
            started = time.monotonic()
            with pytest.raises(host.PluginTimeout):
                plugin.call("spin")
            # Start function and call share one 1 s deadline (it used to be one each: ~1.6 s).
            assert time.monotonic() - started < 1.0 + 0.4


# An Extism plugin hands the host a 60 MiB kernel block of invalid UTF-8 as a var name, an error
# message or a config key: once, the host copied and decoded it whole (+960 MiB, 4.3 s).
EXTISM_BOMB = """(module
  (import "extism:host/env" "alloc" (func $alloc (param i64) (result i64)))
  (import "extism:host/env" "store_u64" (func $store (param i64 i64)))
  (import "extism:host/env" "var_get" (func $var_get (param i64) (result i64)))
  (import "extism:host/env" "error_set" (func $error_set (param i64)))
  (import "extism:host/env" "config_get" (func $config_get (param i64) (result i64)))
  (import "extism:host/env" "log_error" (func $log (param i64)))
  (memory (export "memory") 1)
  (func $bomb (result i64) (local $o i64) (local $i i64)
    (local.set $o (call $alloc (i64.const 62914560)))
    (block $done (loop $fill (br_if $done (i64.ge_u (local.get $i) (i64.const 62914560)))
      (call $store (i64.add (local.get $o) (local.get $i)) (i64.const 0x8080808080808080))
      (local.set $i (i64.add (local.get $i) (i64.const 8))) (br $fill)))
    (local.get $o))
  (func (export "var") (result i32) (drop (call $var_get (call $bomb))) (i32.const 0))
  (func (export "error") (result i32) (call $error_set (call $bomb)) (i32.const 0))
  (func (export "config") (result i32) (drop (call $config_get (call $bomb))) (i32.const 0))
  (func (export "log") (result i32) (call $log (call $bomb)) (i32.const 0)))
"""


def test_an_extism_plugin_cannot_make_the_host_copy_its_kernel_blocks_whole() -> None:
    result = measured(
        f"""
        WAT = {EXTISM_BOMB!r}
        with kv.KvStore.memory() as store, host.Host(store) as h:
            p = h.load(WAT, name="bomb", tenant="evil", limits=host.Limits(deadline_ms=10_000))
            p.call("log")  # warm up: the kernel memory is grown once
            before = peak_mib()
            RESULT["messages"] = {{}}
            started = time.monotonic()
            for export in ("var", "error", "config", "log"):
                try:
                    p.call(export)
                    RESULT["messages"][export] = ""
                except host.PluginError as exc:
                    RESULT["messages"][export] = str(exc)
            RESULT["seconds"] = time.monotonic() - started
            RESULT["grew_mib"] = peak_mib() - before
        """
    )
    messages = result["messages"]
    assert "var name of 62914560 bytes is over the limit of 512" in messages["var"]
    assert "config key of 62914560 bytes is over the limit of 1024" in messages["config"]
    assert len(messages["error"]) < 4096 * 4 + 200  # the first 4 KiB, escaped
    assert messages["log"] == ""
    assert result["grew_mib"] < RSS_BOUND_MIB


# Deep recursion, each level calling the hottest import and the log first: wasm fills its stack share
# with host code running on top of every frame, up to the deepest.
RECURSE = """
(module
  (import "kv" "open" (func $open (param i32 i32) (result i32)))
  (import "kv" "get" (func $get (param i32 i32 i32 i32 i32) (result i32)))
  (import "host" "log" (func $log (param i32 i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "default")
  (global $h (mut i32) (i32.const 0))
  (func $deeper (param i32) (result i32)
    (drop (call $get (global.get $h) (i32.const 0) (i32.const 7) (i32.const 64) (i32.const 64)))
    (call $log (i32.const 1) (i32.const 0) (i32.const 7))
    (i32.add (call $deeper (local.get 0)) (i32.const 1)))
  (func (export "recurse") (result i32)
    (global.set $h (call $open (i32.const 0) (i32.const 7)))
    (call $deeper (i32.const 0))))
"""


@pytest.mark.parametrize("stack_kib", [256, 512, 768])
def test_a_thread_whose_stack_wasm_could_overrun_is_refused_before_any_wasm_runs(stack_kib: int) -> None:
    # Before: wasm runs on the caller's stack with up to 512 KiB of its own, so on a 512 KiB thread deep
    # recursion hit the guard page before wasmtime's check and the whole host died of SIGSEGV.
    result = measured(
        f"""
        import logging
        from wasmkv.host._sandbox import THREAD_STACK_BYTES
        logging.basicConfig(level=logging.DEBUG, stream=open("/dev/null", "w"))
        with kv.KvStore.memory() as store, host.Host(store) as h:
            p = h.load({RECURSE!r}, name="deep", tenant="t")

            def run(results):
                try:
                    p.call("recurse")
                except host.HostError as exc:
                    results.append((type(exc).__name__, str(exc)))

            outcomes = {{}}
            for kib in ({stack_kib}, THREAD_STACK_BYTES // 1024):
                threading.stack_size(kib * 1024)
                results = []
                thread = threading.Thread(target=run, args=(results,), name=f"small-{{kib}}")
                thread.start()
                thread.join()
                outcomes[kib] = results
            threading.stack_size(0)
            RESULT["outcomes"] = outcomes
        """
    )
    (refused,) = result["outcomes"][str(stack_kib)]
    assert refused[0] == "StackTooSmall"
    assert f"has a stack of {stack_kib} KiB; running plugin code needs 1024 KiB" in refused[1]
    assert "threading.stack_size(1048576)" in refused[1]
    # The smallest stack allowed holds the deepest wasm plus the import bodies on top of it.
    (trapped,) = result["outcomes"]["1024"]
    assert trapped[0] == "PluginTrap" and "call stack exhausted" in trapped[1]


def test_a_main_thread_with_a_small_stack_limit_gets_one_line_from_the_cli(tmp_path: Path) -> None:
    wasmkv = str(Path(sys.executable).parent / "wasmkv")
    plugin = tmp_path / "deep.wat"
    plugin.write_text(RECURSE)

    def small_stack() -> None:
        resource.setrlimit(resource.RLIMIT_STACK, (512 * 1024, resource.getrlimit(resource.RLIMIT_STACK)[1]))

    done = subprocess.run(
        [wasmkv, "run", str(plugin), "--call", "recurse", "--state", str(tmp_path / "state")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        preexec_fn=small_stack,
    )
    assert done.returncode not in (0, -11), done
    assert "Traceback" not in done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert "thread 'MainThread' has a stack of" in line and "raise `ulimit -s`" in line


OUTPUT_FLOOD = """
(module
  (import "host" "output" (func $out (param i32 i32) (result i32)))
  (memory (export "memory") 1024 1024)
  ;; Fills its output to the cap, then keeps asking to write its whole 64 MiB memory.
  (func (export "flood") (result i32) (local $i i32) (local $refused i32)
    (drop (call $out (i32.const 0) (i32.const 67108864)))
    (loop $l
      (if (i32.ne (call $out (i32.const 0) (i32.const 67108864)) (i32.const 0))
        (then (local.set $refused (i32.add (local.get $refused) (i32.const 1)))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (i32.const 400))))
    (local.get $refused)))
"""


def test_output_past_its_cap_is_refused_before_it_is_copied() -> None:
    # Before: each refused output(0, 64 MiB) was first copied whole; 400 of them took 6 s of copying.
    result = measured(
        f"""
        with kv.KvStore.memory() as store, host.Host(store) as h:
            p = h.load({OUTPUT_FLOOD!r}, name="flood", tenant="evil",
                       limits=host.Limits(memory_bytes=64 << 20, deadline_ms=20_000))
            before = peak_mib()
            started = time.monotonic()
            try:
                p.call("flood")
            except host.PluginStatusError as exc:
                RESULT["refused"] = exc.status
                RESULT["output"] = len(exc.output)
            RESULT["seconds"] = time.monotonic() - started
            RESULT["grew_mib"] = peak_mib() - before
        """
    )
    assert result["refused"] == 400 and result["output"] == 64 << 20
    assert result["seconds"] < 2.0  # one 64 MiB copy in, one out; generous for a loaded machine
    # The one accepted output (64 MiB, kept) and its copy out: nothing per refusal.
    assert result["grew_mib"] < 64 * 2 + 32


def _log_many(chunk: bytes) -> str:
    escaped = "".join(f"\\{byte:02x}" for byte in chunk)
    return f"""(module
      (import "host" "log" (func $log (param i32 i32 i32)))
      (memory (export "memory") 1)
      (data (i32.const 0) "{escaped}")
      (func (export "flood") (result i32) (local $i i32)
        (loop $l
          (call $log (i32.const 1) (i32.const 0) (i32.const {len(chunk)}))
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br_if $l (i32.lt_u (local.get $i) (i32.const 100))))
        (i32.const 0)))"""


@pytest.mark.parametrize("chunk", ["😀".encode() * 1000, b"\xff" * 4000, "é".encode() * 2000])
def test_the_log_cap_counts_the_utf8_bytes_written_not_characters(
    chunk: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    # Before: the cap counted characters, so emoji wrote 4x and escaped bytes 3-4x the 64 KiB it promises.
    with kv.KvStore.memory() as store, host.Host(store) as wasm_host:
        plugin = wasm_host.load(_log_many(chunk), name="utf8", tenant="t")
        with caplog.at_level("INFO", logger="wasmkv.plugin.utf8"):
            plugin.call("flood")
    written = sum(len(record.getMessage().encode()) for record in caplog.records)
    assert 64 * 1024 - 8 * 1024 < written <= 64 * 1024 + 200
    assert sum("truncated" in record.getMessage() for record in caplog.records) == 1
