"""Unmodified Extism plugins on wasmkv, call by call against the Extism Python SDK itself.

plugins/extism/xcount.ts is built with the official AssemblyScript PDK
(@extism/as-pdk) by plugins/extism/build.py. Each comparison runs the same
calls, in the same order, on `extism.Plugin` (the reference: the Extism
runtime and its kernel) and on a wasmkv plugin loaded from the same file, and
wants the same output, or a failure on both carrying the same message. The
tests after them are wasmkv's own: vars durable in the tenant's `extism` bucket
under `<plugin>/<var>`, within its quota, apart from other tenants, and logs
on the plugin's logger.
"""

from __future__ import annotations

import dataclasses
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import extism
import pytest

from wasmkv import host, kv

ROOT = Path(__file__).resolve().parent.parent
CONFIG = {"greeting": "Hi"}


@pytest.fixture(scope="session")
def xcount() -> Path:
    """plugins/build/xcount.wasm, built once per session (Node.js and the pinned PDK from npm)."""
    subprocess.run([sys.executable, str(ROOT / "plugins" / "extism" / "build.py")], check=True)
    path = ROOT / "plugins" / "build" / "xcount.wasm"
    assert path.stat().st_size > 0
    return path


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What one call gave: its output, or (`output` None) the failure's message."""

    output: bytes | None
    error: str = ""


def on_extism(plugin: extism.Plugin, export: str, data: bytes) -> Outcome:
    try:
        return Outcome(bytes(plugin.call(export, data)))
    except extism.Error as exc:
        return Outcome(None, str(exc))


def on_wasmkv(plugin: host.Plugin, export: str, data: bytes) -> Outcome:
    try:
        return Outcome(plugin.call(export, data))
    except host.PluginError as exc:
        return Outcome(None, str(exc))


class Pair:
    """The same plugin on the Extism SDK and on wasmkv, called in step."""

    def __init__(self, xcount: Path, wasm_host: host.Host, config: dict[str, str] | None) -> None:
        self.extism = extism.Plugin(xcount.read_bytes(), wasi=False, config=config)
        if config is None:
            self.wasmkv = wasm_host.load(xcount, name="xcount", tenant="acme")
        else:
            self.wasmkv = wasm_host.load(xcount, name="xcount", tenant="acme", config=config)

    def call(self, export: str, data: bytes = b"") -> bytes:
        """Call both; both must succeed with the same output, which is returned."""
        reference = on_extism(self.extism, export, data)
        assert reference.output is not None, f"Extism failed {export}: {reference.error}"
        ours = on_wasmkv(self.wasmkv, export, data)
        assert ours.output is not None, f"wasmkv failed {export} where Extism gave {reference.output[:64]!r}"
        same = ours.output == reference.output
        assert same, f"{export}: wasmkv {len(ours.output)} B {ours.output[:32]!r}, Extism {reference.output[:32]!r}"
        return reference.output

    def fails(self, export: str, data: bytes, message: str) -> None:
        """Call both; both must fail, each with `message` in its error."""
        reference = on_extism(self.extism, export, data)
        assert reference.output is None, f"Extism did not fail {export}: {reference.output[:64]!r}"
        assert message in reference.error
        ours = on_wasmkv(self.wasmkv, export, data)
        assert ours.output is None, f"wasmkv did not fail {export}: {ours.output[:64]!r}"
        assert message in ours.error


@pytest.fixture
def pair(xcount: Path, wasm_host: host.Host) -> Pair:
    """xcount with config greeting=Hi, on both hosts; wasmkv's bound to tenant acme of a fresh store."""
    return Pair(xcount, wasm_host, CONFIG)


# --- Extism and wasmkv, call by call -------------------------------------------------------------


def test_echo_matches_extism_on_binary_and_large_input(pair: Pair) -> None:
    payload = random.Random(7).randbytes(64 * 1024)
    inputs = [b"", b"x", b"a\x00b\x00\x00", bytes(range(256)), b"\xff" * 7, b"\x00" * 9, payload, payload + b"end"]
    for data in inputs:
        assert pair.call("echo", data) == data


def test_greet_reads_config_like_extism(pair: Pair) -> None:
    assert pair.call("greet", b"Ada") == b"Hi, Ada!"
    assert pair.call("greet", "Zoë".encode()) == "Hi, Zoë!".encode()
    assert pair.call("greet", b"") == b"Hi, !"


def test_greet_without_config_falls_back_like_extism(xcount: Path, wasm_host: host.Host) -> None:
    both = Pair(xcount, wasm_host, None)
    assert both.call("greet", b"Ada") == b"Hello, Ada!"
    both = Pair(xcount, wasm_host, {"other": "x"})
    assert both.call("greet", b"Ada") == b"Hello, Ada!"


def test_count_keeps_its_var_between_calls_like_extism(pair: Pair) -> None:
    assert [pair.call("count", data) for data in (b"", b"ignored", b"")] == [b"1", b"2", b"3"]
    assert pair.call("reset") == b""  # var_set with value 0 removes the var
    assert pair.call("count") == b"1"


def test_fail_reports_the_error_message_like_extism(pair: Pair) -> None:
    pair.fails("fail", b"boom", "it failed: boom")
    with pytest.raises(host.PluginStatusError) as raised:
        pair.wasmkv.call("fail", b"again")
    assert raised.value.status == 1
    assert "it failed: again" in str(raised.value)
    assert pair.call("echo", b"still fine") == b"still fine"  # the error is the call's, not the plugin's


def test_a_non_zero_return_without_a_message_fails_like_extism(pair: Pair) -> None:
    assert pair.call("status", b"0") == b""
    for code in (3, -2):
        pair.fails("status", b"%d" % code, "")
        with pytest.raises(host.PluginStatusError) as raised:
            pair.wasmkv.call("status", b"%d" % code)
        assert raised.value.status == code


def test_an_error_set_fails_the_call_even_with_status_0_like_extism(pair: Pair) -> None:
    pair.fails("warn", b"w", "warned: w")
    assert pair.call("count") == b"1"


def test_an_abort_reports_its_message_like_extism(pair: Pair) -> None:
    # 2e9 bytes is past AssemblyScript's largest buffer: its runtime aborts, and xcount's abort hook
    # sets the message as the Extism error before trapping; Extism reports the message over the trap.
    pair.fails("big", b"2000000000", "Invalid length")
    assert pair.call("echo", b"after") == b"after"


def test_big_outputs_match_extism(pair: Pair) -> None:
    for n in (0, 1, 7, 8, 9, 65_536, 100_003):
        assert pair.call("big", b"%d" % n) == bytes(i % 251 for i in range(n))


def test_log_it_outputs_like_extism(pair: Pair) -> None:
    assert pair.call("log_it", b"x") == b"logged"


def test_http_request_is_refused_like_extism(pair: Pair) -> None:
    # Extism without allowed_hosts refuses before connecting; wasmkv has no network at all.
    pair.fails("http_get", b"http://127.0.0.1:9/", "")
    with pytest.raises(host.PluginError) as raised:
        pair.wasmkv.call("http_get", b"http://127.0.0.1:9/")
    assert "http" in str(raised.value).lower()
    assert pair.call("count") == b"1"


def test_an_unknown_export_fails_on_both(pair: Pair) -> None:
    pair.fails("nope", b"", "nope")
    with pytest.raises(host.UnknownExport):
        pair.wasmkv.call("nope")


def test_a_mixed_sequence_matches_extism_call_by_call(pair: Pair) -> None:
    rng = random.Random(11)
    calls: list[tuple[str, bytes]] = [
        ("count", b""),
        ("echo", b"\x00\x01\x02"),
        ("greet", b"Grace"),
        ("count", b""),
        ("big", b"4099"),
        ("echo", rng.randbytes(64 * 1024)),
        ("log_it", b"y"),
        ("count", b"zzz"),
        ("echo", b""),
        ("reset", b""),
        ("count", b""),
        ("greet", b"\x00"),
    ]
    for export, data in calls:
        pair.call(export, data)
    pair.fails("fail", b"midway", "it failed: midway")
    assert pair.call("count") == b"2"


# --- wasmkv's own: durable vars in the tenant's store, quotas, tenants, logs -------------------------


@pytest.fixture
def durable(tmp_path: Path) -> Iterator[kv.KvStore]:
    with kv.KvStore.open(tmp_path / "state") as store:
        yield store


def test_vars_survive_reopening_the_store(xcount: Path, tmp_path: Path) -> None:
    with kv.KvStore.open(tmp_path / "s") as store, host.Host(store) as wasm_host:
        plugin = wasm_host.load(xcount, name="xcount", tenant="acme")
        assert [plugin.call("count"), plugin.call("count")] == [b"1", b"2"]
    with kv.KvStore.open(tmp_path / "s") as store, host.Host(store) as wasm_host:
        assert wasm_host.load(xcount, name="xcount", tenant="acme").call("count") == b"3"
        assert store.tenant("acme").bucket("extism").get("xcount/count") == b"3"


def test_vars_are_keys_of_the_tenants_extism_bucket(xcount: Path, wasm_host: host.Host, kvstore: kv.KvStore) -> None:
    plugin = wasm_host.load(xcount, name="xcount", tenant="acme", config=CONFIG)
    plugin.call("count")
    plugin.call("count")
    bucket = kvstore.tenant("acme").bucket("extism")
    assert bucket.get("xcount/count") == b"2"
    bucket.set("xcount/count", b"41")  # the store is the var's one copy: a write outside is seen
    assert plugin.call("count") == b"42"
    assert plugin.call("reset") == b""
    assert bucket.get("xcount/count") is None
    assert kvstore.tenant("acme").bucket().get("xcount/count") is None  # not in the default bucket


def test_vars_are_per_tenant(xcount: Path, durable: kv.KvStore) -> None:
    with host.Host(durable) as first, host.Host(durable) as second:
        acme = first.load(xcount, name="xcount", tenant="acme")
        globex = second.load(xcount, name="xcount", tenant="globex")
        assert [acme.call("count") for _ in range(3)] == [b"1", b"2", b"3"]
        assert globex.call("count") == b"1"
        assert acme.call("count") == b"4"
    assert durable.tenant("acme").bucket("extism").get("xcount/count") == b"4"
    assert durable.tenant("globex").bucket("extism").get("xcount/count") == b"1"


def test_var_set_over_the_tenant_quota_fails_the_call(xcount: Path, wasm_host: host.Host, kvstore: kv.KvStore) -> None:
    tenant = kvstore.tenant("tiny", kv.Quota(max_keys=1))
    tenant.bucket().set("taken", b"x")
    plugin = wasm_host.load(xcount, name="xcount", tenant=tenant)
    with pytest.raises(host.PluginError) as raised:
        plugin.call("count")
    assert "quota" in str(raised.value).lower()
    assert tenant.bucket("extism").get("xcount/count") is None
    assert plugin.call("echo", b"ok") == b"ok"  # the plugin still serves calls that need no new key
    tenant.bucket().delete("taken")
    assert plugin.call("count") == b"1"


def test_config_absent_gives_the_default_greeting(xcount: Path, wasm_host: host.Host) -> None:
    plugin = wasm_host.load(xcount, name="xcount", tenant="acme")
    assert plugin.call("greet", b"Ada") == b"Hello, Ada!"
    plugin = wasm_host.load(xcount, name="xcount", tenant="acme", config={"greeting": "Ahoy"})
    assert plugin.call("greet", b"Ada") == b"Ahoy, Ada!"


def test_log_lines_reach_the_plugin_logger(
    xcount: Path, wasm_host: host.Host, caplog: pytest.LogCaptureFixture
) -> None:
    plugin = wasm_host.load(xcount, name="xcount", tenant="acme")
    with caplog.at_level("DEBUG", logger="wasmkv.plugin.xcount"):
        assert plugin.call("log_it", b"x") == b"logged"
    lines = [(r.name, r.levelname, r.getMessage()) for r in caplog.records]
    for level, text in (("INFO", "xcount info: x"), ("WARNING", "xcount warn: x"), ("ERROR", "xcount error: x")):
        assert any(name == "wasmkv.plugin.xcount" and lvl == level and text in msg for name, lvl, msg in lines), lines
