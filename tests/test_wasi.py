"""WASI preview 1 for plugins loaded with `wasi=True`, and the `env.abort` of AssemblyScript runtimes.

The C sample (plugins/wasi/wasigreet.c, built by plugins/build.py with
`zig cc --target=wasm32-wasi -mexec-model=reactor`) uses libc: printf, malloc,
fopen, nanosleep.
"""

from __future__ import annotations

import logging
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_docs import C_WASI_BUILD

from wasmkv import host, kv
from wasmkv.host._imports import LOG_BYTES_PER_CALL, LOG_RECORD_COST

WASMKV = str(Path(sys.executable).parent / "wasmkv")
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def built() -> Path:
    """The WASI samples, built once per session by `plugins/build.py --wasi` (the demo build skips them)."""
    subprocess.run([sys.executable, str(ROOT / "plugins" / "build.py"), "--wasi"], check=True, capture_output=True)
    return ROOT / "plugins" / "build"


def greeter(wasm_host: host.Host, built: Path, **limits: int) -> host.Plugin:
    return wasm_host.load(
        built / "wasigreet.wasm", name="greet", tenant="acme", wasi=True, limits=host.Limits(**limits)
    )


def test_a_wasi_module_without_wasi_is_refused_with_the_way_to_enable_it(built: Path, wasm_host: host.Host) -> None:
    with pytest.raises(host.LoadError, match=r"imports wasi_snapshot_preview1\.\w+: it is a WASI module") as raised:
        wasm_host.load(built / "wasigreet.wasm", name="greet", tenant="acme")
    assert "wasi=True" in str(raised.value) and "wasi = true under [plugins.greet]" in str(raised.value)
    assert "greet" not in wasm_host.plugins


def test_libc_plugins_run_and_their_stdout_and_stderr_become_log_lines(
    built: Path, wasm_host: host.Host, kvstore: kv.KvStore, caplog: pytest.LogCaptureFixture
) -> None:
    plugin = greeter(wasm_host, built)
    with caplog.at_level(logging.INFO, logger="wasmkv.plugin.greet"):
        assert plugin.call("greet", b"ada") == b"hello ada #1"
        assert plugin.call("greet", b"ada") == b"hello ada #2"
    assert kvstore.tenant("acme").bucket().get("greeted:ada") == b"2"
    lines = [(record.levelno, record.getMessage()) for record in caplog.records]
    # _initialize ran the constructor once, before the first call; stderr is logged as warnings.
    assert lines == [
        (logging.INFO, "greeting ada for the 1st time"),
        (logging.WARNING, "initialized=1"),
        (logging.INFO, "greeting ada for the 2th time"),
        (logging.WARNING, "initialized=1"),
    ]


def test_a_wasi_plugin_cannot_open_files(built: Path, wasm_host: host.Host) -> None:
    assert greeter(wasm_host, built).call("peek") == b"no file"


def test_a_sleep_within_the_deadline_sleeps_and_one_past_it_ends_the_call_at_once(
    built: Path, wasm_host: host.Host
) -> None:
    plugin = greeter(wasm_host, built, deadline_ms=300)
    started = time.monotonic()
    assert plugin.call("nap", b"50") == b"awake"
    assert time.monotonic() - started >= 0.05
    started = time.monotonic()
    with pytest.raises(host.PluginTimeout):
        plugin.call("nap", b"3000")  # it used to sleep the full 3 s under a 0.3 s deadline
    assert time.monotonic() - started < 1.5  # generous: the call ends before sleeping at all
    assert plugin.call("greet", b"bob") == b"hello bob #1"  # a fresh instance serves the next call


def test_stdout_is_escaped_and_capped_like_the_log(
    built: Path, wasm_host: host.Host, caplog: pytest.LogCaptureFixture
) -> None:
    plugin = greeter(wasm_host, built)
    with caplog.at_level(logging.INFO, logger="wasmkv.plugin.greet"):
        plugin.call("shout")  # 5000 lines, each with a terminal escape
    messages = [record.getMessage() for record in caplog.records]
    assert messages[0] == "line 0 \\x1b[2J"
    assert messages[-1].startswith("log truncated")
    assert sum(len(message) for message in messages[:-1]) <= LOG_BYTES_PER_CALL
    assert not any("\x1b" in message for message in messages)


def test_wasi_is_enabled_from_the_config_and_the_cli(built: Path, tmp_path: Path) -> None:
    (tmp_path / "wasmkv.toml").write_text(
        f"""
        [store]
        path = "state"
        [tenants.acme]
        [plugins.greet]
        file = "{built / "wasigreet.wasm"}"
        tenant = "acme"
        wasi = true
        """
    )
    with host.Host.from_config(tmp_path / "wasmkv.toml") as wasm_host:
        assert wasm_host.plugin("greet").call("greet", b"cy") == b"hello cy #1"
    run = [WASMKV, "run", str(built / "wasigreet.wasm"), "--call", "greet", "--input", "cy", "--state", "cli-state"]
    refused = subprocess.run(run, check=False, capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert refused.returncode != 0 and "--wasi" in refused.stderr and "Traceback" not in refused.stderr
    ran = subprocess.run([*run, "--wasi"], check=False, capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert (ran.returncode, ran.stdout) == (0, "hello cy #1\n")


# -- hostile WASI calls: poll_oneoff is the host's own -----------------------------------------

POLLER = """(module
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (import "host" "input" (func $input (param i32 i32) (result i32)))
  (import "host" "output" (func $output (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  ;; The input is (in_ptr, out_ptr, count, nevents_ptr) as four i32s, then subscriptions at 1024.
  (func (export "poll") (result i32)
    (drop (call $input (i32.const 0) (i32.const 4096)))
    (i32.store (i32.const 60000)
      (call $poll (i32.load (i32.const 0)) (i32.load (i32.const 4)) (i32.load (i32.const 8)) (i32.load (i32.const 12))))
    (drop (call $output (i32.const 60000) (i32.const 4)))
    (drop (call $output (i32.const 2048) (i32.const 68)))  ;; nevents, then the first two events
    (i32.const 0)))
"""
IN, OUT, NEVENTS = 1024, 2052, 2048


def clock(userdata: int, timeout_ns: int, *, clock_id: int = 1, absolute: bool = False) -> bytes:
    return struct.pack("<QB7xIxxxxQQH6x", userdata, 0, clock_id, timeout_ns, 0, int(absolute))


def poll(plugin: host.Plugin, subscriptions: bytes, count: int | None = None, **args: int) -> tuple[int, int, bytes]:
    count = len(subscriptions) // 48 if count is None else count
    header = struct.pack("<iiii", args.get("in_ptr", IN), args.get("out_ptr", OUT), count, args.get("nevents", NEVENTS))
    out = plugin.call("poll", header + bytes(IN - 16) + subscriptions)
    return struct.unpack("<i", out[:4])[0], struct.unpack("<I", out[4:8])[0], out[8:]


@pytest.fixture
def poller(wasm_host: host.Host) -> host.Plugin:
    return wasm_host.load(POLLER, name="poller", tenant="acme", wasi=True, limits=host.Limits(deadline_ms=400))


def test_poll_oneoff_sleeps_on_the_shortest_clock_and_reports_it(poller: host.Plugin) -> None:
    errno, nevents, events = poll(poller, clock(7, 30_000_000) + clock(8, 10_000_000))
    assert (errno, nevents) == (0, 1)
    assert struct.unpack_from("<QHB", events) == (8, 0, 0)
    # An absolute deadline already past returns at once; an unknown clock is an event with EINVAL.
    errno, nevents, events = poll(poller, clock(1, 1, absolute=True) + clock(2, 5, clock_id=99))
    assert (errno, nevents) == (0, 1)
    assert struct.unpack_from("<QHB", events) == (2, 28, 0)


@pytest.mark.parametrize(
    ("count", "args", "errno"),
    [
        (0, {}, 28),  # EINVAL
        (100_000, {}, 58),  # ENOTSUP: more subscriptions than any program waits on
        (1, {"in_ptr": 65530}, 21),  # EFAULT: subscriptions past the memory
        (1, {"out_ptr": -8}, 21),
        (1, {"nevents": 65535}, 21),
    ],
)
def test_poll_oneoff_refuses_hostile_arguments_without_sleeping(
    poller: host.Plugin, count: int, args: dict[str, int], errno: int
) -> None:
    started = time.monotonic()
    assert poll(poller, clock(1, 10**12), count=count, **args)[0] == errno
    assert time.monotonic() - started < 1.0


def test_a_sleep_of_years_ends_with_the_call(poller: host.Plugin) -> None:
    started = time.monotonic()
    with pytest.raises(host.PluginTimeout):
        poll(poller, clock(1, 2**63))
    with pytest.raises(host.PluginTimeout):
        poll(poller, clock(1, 2**64 - 1, clock_id=0, absolute=True))
    assert time.monotonic() - started < 2.0


def test_proc_exit_ends_the_call_as_a_trap(wasm_host: host.Host) -> None:
    wat = """(module (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
      (memory (export "memory") 1) (func (export "quit") (result i32) (call $exit (i32.const 3)) (i32.const 0)))"""
    plugin = wasm_host.load(wat, name="quit", tenant="acme", wasi=True)
    with pytest.raises(host.PluginTrap, match="exit status 3"):
        plugin.call("quit")


# -- env.abort ---------------------------------------------------------------------------------


def as_string(text: str) -> bytes:
    """An AssemblyScript string as its runtime lays it out: the u32 byte length, then UTF-16LE."""
    data = text.encode("utf-16-le")
    return len(data).to_bytes(4, "little") + data


def aborter(wasm_host: host.Host, message: bytes, file: bytes) -> host.Plugin:
    def data(offset: int, raw: bytes) -> str:
        escaped = "".join(f"\\{b:02x}" for b in raw)
        return f'(data (i32.const {offset}) "{escaped}")'

    wat = f"""(module (import "env" "abort" (func $abort (param i32 i32 i32 i32)))
      (memory (export "memory") 1) {data(96, message)} {data(8188, file)}
      (func (export "fail") (result i32) (call $abort (i32.const 100) (i32.const 8192) (i32.const 12) (i32.const 5))
        (i32.const 0)))"""
    return wasm_host.load(wat, name="as", tenant="acme")


def test_an_assemblyscript_abort_traps_with_its_message_file_and_line(wasm_host: host.Host) -> None:
    plugin = aborter(wasm_host, as_string("boom: é \x1b[2J"), as_string("assembly/index.ts"))
    with pytest.raises(host.PluginTrap) as raised:
        plugin.call("fail")
    assert str(raised.value.reason) == "abort: boom: é \\x1b[2J at assembly/index.ts:12:5"


def test_an_abort_with_hostile_lengths_is_cut_and_still_traps(wasm_host: host.Host) -> None:
    # A length of 4 GiB, and one reaching past the memory: neither is read as given.
    plugin = aborter(wasm_host, b"\xff\xff\xff\xff" + "x".encode("utf-16-le") * 2000, b"\x00\x00\x01\x00")
    with pytest.raises(host.PluginTrap) as raised:
        plugin.call("fail")
    reason = str(raised.value.reason)
    assert reason.startswith("abort: xxxx") and len(reason) < 2 * 1024 + 30
    assert reason.endswith("...:12:5")


def test_the_documented_wasi_build_line_makes_a_plugin(tmp_path: Path, wasm_host: host.Host) -> None:
    (tmp_path / "greet.c").write_text(
        "#include <stdio.h>\n"
        '__attribute__((import_module("host"), import_name("output"))) int out(const void *p, int n);\n'
        '__attribute__((export_name("hi"))) int hi(void) { printf("said hi\\n"); return out("hi", 2); }\n'
    )
    command = C_WASI_BUILD.replace("python", sys.executable, 1).split()
    subprocess.run(command, check=True, cwd=tmp_path, capture_output=True, timeout=300)
    assert wasm_host.load(tmp_path / "greet.wasm", name="hi", tenant="acme", wasi=True).call("hi") == b"hi"


WRITER = """(module
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (import "host" "input" (func $input (param i32 i32) (result i32)))
  (import "host" "output" (func $output (param i32 i32) (result i32)))
  (memory (export "memory") 2)
  ;; The input is (fd, iovs_ptr, iovs_len, nwritten_ptr) then anything, placed at 0.
  (func (export "write") (result i32)
    (drop (call $input (i32.const 0) (i32.const 131072)))
    (i32.store (i32.const 131068)
      (call $write (i32.load (i32.const 0)) (i32.load (i32.const 4))
                   (i32.load (i32.const 8)) (i32.load (i32.const 12))))
    (drop (call $output (i32.const 131068) (i32.const 4)))
    (drop (call $output (i32.load (i32.const 12)) (i32.const 4)))
    (i32.const 0)))
"""


def fd_write(
    plugin: host.Plugin, fd: int, iovecs: list[tuple[int, int]], data: bytes = b"", **args: int
) -> tuple[int, int]:
    table = b"".join(struct.pack("<II", pointer, length) for pointer, length in iovecs)
    head = struct.pack("<iiii", fd, args.get("iovs", 16), args.get("count", len(iovecs)), args.get("nwritten", 8))
    out = plugin.call("write", head + table + data)
    errno = struct.unpack("<i", out[:4])[0]
    return errno, struct.unpack("<I", out[4:8])[0] if len(out) == 8 else -1


@pytest.fixture
def writer(wasm_host: host.Host) -> host.Plugin:
    return wasm_host.load(WRITER, name="writer", tenant="acme", wasi=True)


def test_fd_write_logs_stdout_and_stderr_and_refuses_other_descriptors(
    writer: host.Plugin, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="wasmkv.plugin.writer"):
        data_at = 16 + 2 * 8  # after the header and two iovecs
        assert fd_write(writer, 1, [(data_at, 6), (data_at + 6, 4)], b"hello world\n") == (0, 10)
        data_at = 16 + 8
        assert fd_write(writer, 2, [(data_at, 12)], b"oops\nsecond\n") == (0, 12)
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.INFO, "hello worl"),  # an unfinished line is logged when the call ends
        (logging.WARNING, "oops"),
        (logging.WARNING, "second"),
    ]
    for fd in (0, 3, 4, -1, 2**31 - 1):
        assert fd_write(writer, fd, [(24, 1)], b"x")[0] == 8  # EBADF


@pytest.mark.parametrize(
    ("iovecs", "args", "errno"),
    [
        ([(0, 1)], {"count": 100_000}, 28),  # EINVAL: more iovecs than IOV_MAX
        ([(0, 1)], {"count": -1}, 28),
        ([(131_000, 10_000)], {}, 21),  # EFAULT: a buffer past the memory
        ([(0, 1)], {"iovs": 131_070}, 21),  # the iovec table past the memory
        ([(0, 1)], {"nwritten": 131_071}, 21),
        ([(0, 2**32 - 1)], {}, 21),
    ],
)
def test_fd_write_refuses_hostile_arguments(
    writer: host.Plugin, iovecs: list[tuple[int, int]], args: dict[str, int], errno: int
) -> None:
    assert fd_write(writer, 1, iovecs, **args)[0] == errno


def test_a_megabyte_line_is_logged_no_further_than_the_cap(
    writer: host.Plugin, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="wasmkv.plugin.writer"):
        # One 1000-iovec write of the same 120 KiB buffer: ~120 MB claimed, a few KiB read.
        errno, written = fd_write(writer, 1, [(4096, 120_000)] * 1000)
    assert (errno, written) == (0, 120_000_000)
    assert sum(len(r.getMessage()) for r in caplog.records) <= LOG_BYTES_PER_CALL + 200


def test_empty_lines_count_against_the_log_cap(writer: host.Plugin, caplog: pytest.LogCaptureFixture) -> None:
    # 60,000 newlines in one write: each record costs more than its (empty) text.
    with caplog.at_level(logging.INFO, logger="wasmkv.plugin.writer"):
        assert fd_write(writer, 1, [(24, 60_000)], b"\n" * 60_000) == (0, 60_000)
    assert len(caplog.records) <= LOG_BYTES_PER_CALL // LOG_RECORD_COST + 1  # 4097, not 60,000
