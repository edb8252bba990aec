"""The AssemblyScript SDK (abi/guest/assemblyscript) through its sample plugin, asnotes, built with asc from npm."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest
import wasmtime

from wasmkv import abi, host, kv

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "plugins" / "assemblyscript" / "asnotes.ts"
SDK = (ROOT / "abi" / "guest" / "assemblyscript" / "wasmkv.ts").read_text()
EXPORTS = {"add", "get", "has", "remove", "expire", "list", "rlist", "ids", "show", "bulk", "purge", "count", "fail"}


@pytest.fixture(scope="session")
def asnotes() -> Path:
    """plugins/build/asnotes.wasm, built once per session by plugins/assemblyscript/build.py (npm ci, then asc)."""
    built = subprocess.run(
        [sys.executable, str(ROOT / "plugins" / "assemblyscript" / "build.py")],
        check=True,
        capture_output=True,
        text=True,
    )
    assert built.stdout.startswith("asnotes "), built.stdout
    wasm = ROOT / "plugins" / "build" / "asnotes.wasm"
    assert wasm.stat().st_size > 0
    return wasm


def load(wasm_host: host.Host, wasm: Path, tenant: kv.Tenant | str = "acme") -> host.Plugin:
    return wasm_host.load(wasm, name="asnotes", tenant=tenant, buckets=("notes",))


def status_of(plugin: host.Plugin, export: str, data: bytes = b"") -> int:
    with pytest.raises(host.PluginStatusError) as raised:
        plugin.call(export, data)
    return raised.value.status


def test_the_sdk_declares_every_import_with_the_abis_signature() -> None:
    declared = {
        (module, name): (tuple(re.findall(r":\s*(i32|i64)\b", params)), () if result == "void" else (result,))
        for module, name, params, result in re.findall(
            r'@external\("(\w+)", "(\w+)"\)\s*declare function \w+\(([^)]*)\): (\w+);', SDK
        )
    }
    expected = {(abi.KV_MODULE, name): sig for name, sig in abi.KV_IMPORTS.items()}
    expected |= {(abi.HOST_MODULE, name): sig for name, sig in abi.HOST_IMPORTS.items()}
    assert declared == expected


def test_the_sdk_states_the_abis_statuses_and_limits() -> None:
    enum = re.search(r"export enum Status \{(.*?)\}", SDK, re.S)
    assert enum is not None
    codes = {name: int(code) for name, code in re.findall(r"(\w+) = (-?\d+),", enum.group(1))}
    assert codes == {status.name: int(status) for status in abi.Status}
    for name, value in [("LIST_MAX_LIMIT", abi.LIST_MAX_LIMIT), ("BATCH_MAX_ITEMS", abi.BATCH_MAX_ITEMS)]:
        assert re.search(rf"export const {name}: i32 = {value};", SDK), name


def test_the_module_exports_memory_and_entry_points_only(asnotes: Path, wasm_host: host.Host) -> None:
    module = wasmtime.Module.from_file(wasmtime.Engine(), str(asnotes))
    exports = {export.name: export.type for export in module.exports}
    assert isinstance(exports.pop("memory"), wasmtime.MemoryType)
    assert set(exports) == EXPORTS
    assert all(isinstance(ty, wasmtime.FuncType) and not ty.params and len(ty.results) == 1 for ty in exports.values())
    provided = {(abi.KV_MODULE, n) for n in abi.KV_IMPORTS} | {(abi.HOST_MODULE, n) for n in abi.HOST_IMPORTS}
    imported = {(imp.module, imp.name) for imp in module.imports}
    assert imported == provided | {(abi.ENV_MODULE, "abort")}  # the sample uses every import
    assert set(load(wasm_host, asnotes).exports) == EXPORTS


def test_add_get_has_remove(asnotes: Path, wasm_host: host.Host, kvstore: kv.KvStore) -> None:
    notes = load(wasm_host, asnotes)
    bucket = kvstore.tenant("acme").bucket("notes")
    assert notes.call("add", b"a1 first note") == b"added"  # compare_and_swap, expected absent
    assert bucket.get("note:a1") == b"first note"
    assert notes.call("add", b"a1 second\x00note\n") == b"replaced"  # the swap failed: set
    assert bucket.get("note:a1") == b"second\x00note\n"
    assert notes.call("add", b"e ") == b"added"  # an empty note
    assert bucket.get("note:e") == b""
    assert notes.call("get", b"a1") == b"second\x00note\n"
    assert notes.call("get", b"e") == b""
    assert notes.call("has", b"a1") == b"1"
    assert notes.call("has", b"zz") == b"0"
    assert notes.call("remove", b"a1") == b"1"
    assert notes.call("remove", b"a1") == b"0"
    assert bucket.get("note:a1") is None
    assert status_of(notes, "get", b"a1") == 1
    assert bucket.list_keys("").keys == ["note:e"]


def test_add_logs_through_the_host(asnotes: Path, wasm_host: host.Host, caplog: pytest.LogCaptureFixture) -> None:
    notes = load(wasm_host, asnotes)
    with caplog.at_level(logging.INFO, logger="wasmkv.plugin.asnotes"):
        notes.call("add", b"x1 hello")
        notes.call("add", b"x1 again")
    assert [r.getMessage() for r in caplog.records if r.name == "wasmkv.plugin.asnotes"] == [
        "asnotes: added x1",
        "asnotes: replaced x1",
    ]


def test_values_larger_than_the_first_buffer_are_fetched_whole(
    asnotes: Path, wasm_host: host.Host, kvstore: kv.KvStore
) -> None:
    # The SDK's first buffer holds 256 bytes: the input, get, get_many and scan all take a second call.
    notes = load(wasm_host, asnotes)
    big = bytes(i % 251 for i in range(300_000))
    assert notes.call("add", b"big " + big) == b"added"
    assert kvstore.tenant("acme").bucket("notes").get("note:big") == big
    assert notes.call("get", b"big") == big
    assert notes.call("show", b"big") == b"big " + big + b"\n"
    assert notes.call("list") == b"big " + big + b"\n"
    # Instances are reused: the collector frees each call's garbage, so many calls fit the memory limit.
    for _ in range(100):
        assert len(notes.call("get", b"big")) == len(big)


def test_list_scans_pages_in_key_order_within_a_range(asnotes: Path, wasm_host: host.Host, kvstore: kv.KvStore) -> None:
    notes = load(wasm_host, asnotes)
    for i in (3, 0, 4, 1, 2):  # pages of 2: three pages
        notes.call("add", b"n%d text %d" % (i, i))
    bucket = kvstore.tenant("acme").bucket("notes")
    bucket.set("other", b"outside the prefix")
    bucket.set("count", b"7")
    everything = [b"n%d text %d" % (i, i) for i in range(5)]
    assert notes.call("list").splitlines() == everything
    assert notes.call("rlist").splitlines() == everything[::-1]
    assert notes.call("list", b"n2").splitlines() == everything[2:]
    assert notes.call("list", b"n1 n3").splitlines() == everything[1:3]
    assert notes.call("rlist", b"n1 n4").splitlines() == everything[3:0:-1]
    assert notes.call("list", b"n5") == b""
    assert notes.call("ids") == b"n0\nn1\nn2\nn3\nn4\n"  # list_keys, pages of 2
    assert status_of(notes, "list", b"a b c") == 2


def test_batches_get_set_and_delete_many(asnotes: Path, wasm_host: host.Host, kvstore: kv.KvStore) -> None:
    notes = load(wasm_host, asnotes)
    bucket = kvstore.tenant("acme").bucket("notes")
    assert notes.call("bulk", b"b1 one\nb2 two words\nb3 ") == b"3"  # set_many
    assert bucket.get_many(["note:b1", "note:b2", "note:b3"]) == [b"one", b"two words", b""]
    assert notes.call("bulk", b"") == b"0"
    assert notes.call("show", b"b2 nope b1 b3") == b"b2 two words\nnope\nb1 one\nb3 \n"  # get_many
    assert notes.call("purge", b"b1 nope b3") == b"2"  # delete_many
    assert bucket.list_keys("").keys == ["note:b2"]
    assert status_of(notes, "bulk", b"ok fine\nnospace") == 2
    assert status_of(notes, "show") == 2
    assert status_of(notes, "purge", b"a  b") == 2


def test_set_many_is_all_or_nothing_under_the_quota(asnotes: Path, wasm_host: host.Host, kvstore: kv.KvStore) -> None:
    tenant = kvstore.tenant("tiny", kv.Quota(max_keys=3))
    notes = load(wasm_host, asnotes, tenant)
    notes.call("add", b"a x")
    assert status_of(notes, "bulk", b"b x\nc x\nd x") == -4
    assert tenant.bucket("notes").list_keys("").keys == ["note:a"]


def test_a_quota_error_reaches_the_plugin(asnotes: Path, wasm_host: host.Host, kvstore: kv.KvStore) -> None:
    tenant = kvstore.tenant("tiny", kv.Quota(max_keys=2))
    notes = load(wasm_host, asnotes, tenant)
    assert notes.call("add", b"a 1") == b"added"
    assert notes.call("add", b"b 2") == b"added"
    with pytest.raises(host.PluginStatusError) as raised:
        notes.call("add", b"c 3")
    assert raised.value.status == abi.Status.QUOTA_EXCEEDED  # -4, returned by the plugin as its status
    assert notes.call("add", b"a again") == b"replaced"  # overwrites at the limit still work
    assert status_of(notes, "count") == -4
    assert tenant.bucket("notes").get_many(["note:a", "note:b", "note:c"]) == [b"again", b"2", None]


def test_count_increments_and_reports_store_errors(asnotes: Path, wasm_host: host.Host, kvstore: kv.KvStore) -> None:
    notes = load(wasm_host, asnotes)
    bucket = kvstore.tenant("acme").bucket("notes")
    assert notes.call("count") == b"1"
    assert notes.call("count") == b"2"
    assert notes.call("count", b"40") == b"42"
    assert notes.call("count", b"0") == b"42"
    assert notes.call("count", b"-50") == b"-8"
    assert bucket.get("count") == b"-8"
    assert notes.call("count", b"9223372036854775807") == b"9223372036854775799"
    assert status_of(notes, "count", b"9") == -6  # INTEGER_OVERFLOW: never wraps
    assert status_of(notes, "count", b"9223372036854775808") == 2  # not an i64
    assert status_of(notes, "count", b"1x") == 2
    bucket.set("count", b"many")
    assert status_of(notes, "count") == -5  # NOT_A_NUMBER


def test_expire_sets_a_ttl(asnotes: Path, wasm_host: host.Host, kvstore: kv.KvStore) -> None:
    notes = load(wasm_host, asnotes)
    bucket = kvstore.tenant("acme").bucket("notes")
    notes.call("add", b"t1 short-lived")
    assert notes.call("expire", b"t1 60000") == b""
    left = bucket.ttl("note:t1")
    assert left is not None and 59_000 < left <= 60_000
    assert bucket.get("note:t1") == b"short-lived"
    assert status_of(notes, "expire", b"gone 1000") == 1
    assert status_of(notes, "expire", b"t1 0") == 2
    assert status_of(notes, "expire", b"t1") == 2
    assert status_of(notes, "expire", b"t1 9223372036854775807") == -12  # over the store's 100 years


def test_malformed_input_and_invalid_keys(asnotes: Path, wasm_host: host.Host) -> None:
    notes = load(wasm_host, asnotes)
    for export, data in [("add", b"nospace"), ("add", b" leading"), ("get", b""), ("has", b"a b"), ("remove", b"")]:
        assert status_of(notes, export, data) == 2, export
    assert status_of(notes, "add", b"bad\x01id text") == -2  # INVALID_KEY: a control character
    assert status_of(notes, "get", b"x" * 600) == -2  # INVALID_KEY: too long


def test_an_ungranted_bucket_fails_every_call_with_access_denied(asnotes: Path, wasm_host: host.Host) -> None:
    notes = wasm_host.load(asnotes, name="asnotes", tenant="acme", buckets=("default",))
    for export, data in [
        ("add", b"a b"),
        ("get", b"a"),
        ("has", b"a"),
        ("remove", b"a"),
        ("expire", b"a 10"),
        ("list", b""),
        ("rlist", b""),
        ("ids", b""),
        ("show", b"a"),
        ("bulk", b"a b"),
        ("purge", b"a"),
        ("count", b""),
    ]:
        assert status_of(notes, export, data) == abi.Status.ACCESS_DENIED, export


def test_an_abort_traps_with_its_message_and_source_position(asnotes: Path, wasm_host: host.Host) -> None:
    notes = load(wasm_host, asnotes)
    notes.call("add", b"k v")
    line = next(i for i, text in enumerate(SOURCE.read_text().splitlines(), 1) if 'throw new Error("boom")' in text)
    with pytest.raises(host.PluginTrap) as raised:
        notes.call("fail")
    assert "boom" in str(raised.value)
    assert f"asnotes.ts:{line}:" in raised.value.reason
    assert notes.call("get", b"k") == b"v"  # a fresh instance; the store kept its state
