"""The Rust guest SDK (abi/guest/rust), through its two sample plugins, end to end against the store.

plugins/rust/build.py builds them with Debian's Rust (installing it when it is
missing and we are root): rcounter is `no_std` without an allocator, for
wasm32-unknown-unknown; rgreeter uses `std` on wasm32-wasi and is loaded with
`wasi=True`.
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import wasmtime

from wasmkv import abi, host, kv

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "plugins" / "rust" / "build.py"
SDK = ROOT / "abi" / "guest" / "rust"
I64_MAX = 2**63 - 1


@pytest.fixture(scope="session")
def rust_built() -> Path:
    """plugins/build with rcounter.wasm and rgreeter.wasm, built once per session, without warnings."""
    try:
        result = subprocess.run([sys.executable, str(BUILD)], check=True, capture_output=True, text=True)
    except subprocess.CalledProcessError as failed:
        pytest.fail(f"plugins/rust/build.py failed:\n{failed.stdout}{failed.stderr}")
    assert "warning" not in result.stderr, result.stderr
    out = ROOT / "plugins" / "build"
    for name in ("rcounter", "rgreeter"):
        assert (out / f"{name}.wasm").stat().st_size > 0
    return out


@pytest.fixture
def kvstore(tmp_path: Path) -> Iterator[kv.KvStore]:
    """The plugins run on the durable store (conftest's `wasm_host` picks this up)."""
    with kv.KvStore.open(tmp_path / "state") as store:
        yield store


def rcounter(wasm_host: host.Host, built: Path, tenant: str | kv.Tenant = "acme") -> host.Plugin:
    return wasm_host.load(built / "rcounter.wasm", name="rcounter", tenant=tenant)


def rgreeter(wasm_host: host.Host, built: Path, tenant: str | kv.Tenant = "acme") -> host.Plugin:
    return wasm_host.load(built / "rgreeter.wasm", name="rgreeter", tenant=tenant, wasi=True)


def status_of(plugin: host.Plugin, export: str, data: bytes = b"") -> int:
    with pytest.raises(host.PluginStatusError) as raised:
        plugin.call(export, data)
    status: int = raised.value.status
    return status


def log_lines(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [
        (record.levelno, record.getMessage()) for record in caplog.records if record.name == "wasmkv.plugin.rgreeter"
    ]


# -- the build -------------------------------------------------------------------------------


def test_the_build_is_repeatable(rust_built: Path) -> None:
    before = {name: (rust_built / f"{name}.wasm").read_bytes() for name in ("rcounter", "rgreeter")}
    rerun = subprocess.run([sys.executable, str(BUILD)], check=True, capture_output=True, text=True, cwd="/")
    assert [line.split()[0] for line in rerun.stdout.splitlines()] == ["rcounter", "rgreeter"]
    assert {name: (rust_built / f"{name}.wasm").read_bytes() for name in before} == before


def function_imports(wasm: Path) -> dict[tuple[str, str], tuple[tuple[str, ...], tuple[str, ...]]]:
    module = wasmtime.Module(wasmtime.Engine(), wasm.read_bytes())
    imports = {}
    for item in module.imports:
        assert isinstance(item.type, wasmtime.FuncType), f"{item.module}.{item.name} is not a function"
        assert item.name is not None
        params = tuple(str(t) for t in item.type.params)
        imports[item.module, item.name] = (params, tuple(str(t) for t in item.type.results))
    return imports


def abi_functions() -> dict[tuple[str, str], tuple[tuple[str, ...], tuple[str, ...]]]:
    tables = {abi.KV_MODULE: abi.KV_IMPORTS, abi.HOST_MODULE: abi.HOST_IMPORTS}
    return {(module, name): signature for module, table in tables.items() for name, signature in table.items()}


def test_a_no_std_plugin_imports_only_abi_functions_with_their_signatures(rust_built: Path) -> None:
    imports = function_imports(rust_built / "rcounter.wasm")
    provided = abi_functions()
    assert imports, "rcounter imports nothing"
    for key, signature in imports.items():
        assert provided.get(key) == signature, f"{key}: {signature}"
    module = wasmtime.Module(wasmtime.Engine(), (rust_built / "rcounter.wasm").read_bytes())
    entries = {e.name for e in module.exports if isinstance(e.type, wasmtime.FuncType)}
    assert entries == {"hit", "read", "reset", "list", "names"}
    for export in module.exports:
        if isinstance(export.type, wasmtime.FuncType):
            assert ([str(t) for t in export.type.params], [str(t) for t in export.type.results]) == ([], ["i32"])
    assert abi.MEMORY_EXPORT in {e.name for e in module.exports if isinstance(e.type, wasmtime.MemoryType)}


def test_the_std_plugin_imports_abi_functions_and_wasi_only(rust_built: Path) -> None:
    provided = abi_functions()
    for (module, name), signature in function_imports(rust_built / "rgreeter.wasm").items():
        assert module == abi.WASI_MODULE or provided.get((module, name)) == signature, f"{module}.{name}"


def test_the_sdk_agrees_with_the_abi_tables(rust_built: Path) -> None:
    # Together the samples import every function of the ABI, each with the signature of the tables.
    used = {
        key: signature
        for wasm in ("rcounter", "rgreeter")
        for key, signature in function_imports(rust_built / f"{wasm}.wasm").items()
        if key[0] != abi.WASI_MODULE
    }
    assert used == abi_functions()
    source = (SDK / "src" / "lib.rs").read_text()
    codes = {name: int(code) for name, code in re.findall(r"^ {4}(\w+) = (-\d+),$", source, re.MULTILINE)}
    assert codes == {status.name.title().replace("_", ""): status.value for status in abi.Status if status.value < 0}
    names = dict(re.findall(r"Error::(\w+) => \"(\w+)\"", source))
    assert names == {status.name.title().replace("_", ""): status.name for status in abi.Status if status.value < 0}
    levels = {name: int(level) for name, level in re.findall(r"^ {4}(\w+) = (\d+),$", source, re.MULTILINE)}
    assert levels == {level.name.title(): level.value for level in abi.LogLevel}
    assert f"pub const LIST_MAX_LIMIT: u16 = {abi.LIST_MAX_LIMIT};" in source
    assert f"pub const BATCH_MAX_ITEMS: usize = {abi.BATCH_MAX_ITEMS};" in source


# -- rcounter: no_std ------------------------------------------------------------------------


def test_rcounter_counts_reads_and_resets(rust_built: Path, wasm_host: host.Host, kvstore: kv.KvStore) -> None:
    counter = rcounter(wasm_host, rust_built)
    assert [counter.call("hit") for _ in range(3)] == [b"1", b"2", b"3"]
    assert counter.call("hit", b"visits") == b"1"
    assert counter.call("read") == b"3"
    assert counter.call("read", b"visits") == b"1"
    assert counter.call("read", b"never") == b"0"
    bucket = kvstore.tenant("acme").bucket()
    assert (bucket.get("hits"), bucket.get("visits")) == (b"3", b"1")
    assert counter.call("reset") == b"1"
    assert counter.call("reset") == b"0"
    assert counter.call("read") == b"0"
    assert not bucket.exists("hits")
    bucket.set("low", b"-9223372036854775807")
    assert counter.call("hit", b"low") == b"-9223372036854775806"  # format_i64 of a negative


def test_rcounter_returns_kv_errors_and_its_own_statuses(
    rust_built: Path, wasm_host: host.Host, kvstore: kv.KvStore
) -> None:
    counter = rcounter(wasm_host, rust_built)
    bucket = kvstore.tenant("acme").bucket()
    bucket.set("text", b"abc")
    assert status_of(counter, "hit", b"text") == abi.Status.NOT_A_NUMBER
    bucket.set("max", str(I64_MAX).encode())
    assert status_of(counter, "hit", b"max") == abi.Status.INTEGER_OVERFLOW
    assert bucket.get("max") == str(I64_MAX).encode()
    assert status_of(counter, "hit", b"bad\x01name") == abi.Status.INVALID_KEY
    assert status_of(counter, "hit", b"\xff") == abi.Status.INVALID_KEY  # not UTF-8
    bucket.set("long", b"1" * 21)  # longer than any i64: not a counter
    assert status_of(counter, "read", b"long") == 3
    assert counter.call("read", b"max") == str(I64_MAX).encode()  # 19 bytes fit
    assert status_of(counter, "hit", b"x" * 1025) == 2  # longer than the input buffer
    assert status_of(counter, "hit", b"x" * 1024) == abi.Status.INVALID_KEY  # fits; too long a key


def test_a_quota_error_reaches_rcounter(rust_built: Path, wasm_host: host.Host, kvstore: kv.KvStore) -> None:
    counter = rcounter(wasm_host, rust_built, kvstore.tenant("tiny", kv.Quota(max_keys=2)))
    assert counter.call("hit", b"a") == b"1"
    assert counter.call("hit", b"b") == b"1"
    assert status_of(counter, "hit", b"c") == -4  # QUOTA_EXCEEDED, returned by the plugin as its status
    assert counter.call("hit", b"a") == b"2"  # overwrites at the limit still work
    assert not kvstore.tenant("tiny").bucket().exists("c")


def test_an_ungranted_bucket_reaches_rcounter_as_access_denied(rust_built: Path, wasm_host: host.Host) -> None:
    counter = wasm_host.load(rust_built / "rcounter.wasm", name="rcounter", tenant="acme", buckets=("other",))
    assert status_of(counter, "hit") == abi.Status.ACCESS_DENIED


def test_rcounter_lists_counters_in_key_order_through_a_fixed_buffer(
    rust_built: Path, wasm_host: host.Host, kvstore: kv.KvStore
) -> None:
    counter = rcounter(wasm_host, rust_built)
    bucket = kvstore.tenant("acme").bucket()
    # 30 counters of ~45-byte names: a page of 100 pairs does not fit the plugin's 1 KiB, so the
    # SDK halves the limit until one does; `names` pages 10 keys at a time through 512 bytes.
    names = [f"counter-{i:02d}-{'x' * 32}" for i in reversed(range(30))]
    for i, name in enumerate(names):
        bucket.set(name, str(i).encode())
    bucket.set("zz", b"7")
    expected = sorted((name, str(i)) for i, name in enumerate(names))
    lines = counter.call("list").decode().splitlines()
    assert lines == [f"{name} {value}" for name, value in expected] + ["zz 7"]
    assert counter.call("list", b"counter-2").decode().splitlines() == [
        f"{name} {value}" for name, value in expected if name.startswith("counter-2")
    ]
    assert counter.call("list", b"nothing") == b""
    assert counter.call("names").decode().splitlines() == [name for name, _ in expected] + ["zz"]
    assert counter.call("names", b"z") == b"zz\n"


def test_a_pair_larger_than_the_page_buffer_is_value_too_large(
    rust_built: Path, wasm_host: host.Host, kvstore: kv.KvStore
) -> None:
    counter = rcounter(wasm_host, rust_built)
    bucket = kvstore.tenant("acme").bucket()
    bucket.set("big", b"9" * 2000)
    bucket.set("n" * 500, b"1")
    assert status_of(counter, "list") == abi.Status.VALUE_TOO_LARGE
    assert status_of(counter, "list", b"b") == abi.Status.VALUE_TOO_LARGE
    assert counter.call("list", b"c") == b""
    assert status_of(counter, "names", b"n") == abi.Status.VALUE_TOO_LARGE  # a 500-byte key in 512 bytes
    assert counter.call("names", b"b") == b"big\n"


# -- rgreeter: std on WASI -------------------------------------------------------------------


def test_rgreeter_greets_and_prints_to_the_log(
    rust_built: Path, wasm_host: host.Host, kvstore: kv.KvStore, caplog: pytest.LogCaptureFixture
) -> None:
    greeter = rgreeter(wasm_host, rust_built)
    with caplog.at_level(logging.DEBUG, logger="wasmkv.plugin.rgreeter"):
        assert [greeter.call("greet", b"ada") for _ in range(3)] == [b"hello ada #1", b"hello ada #2", b"hello ada #3"]
        assert greeter.call("greet", b"bob") == b"hello bob #1"
    assert kvstore.tenant("acme").bucket().get("greeted:ada") == b"3"
    assert log_lines(caplog) == [
        (logging.INFO, "greeting ada for the 1st time"),
        (logging.INFO, "greeting ada for the 2nd time"),
        (logging.INFO, "greeting ada for the 3rd time"),
        (logging.INFO, "greeting bob for the 1st time"),
    ]


def test_rgreeter_says_the_greeting_it_was_given(rust_built: Path, wasm_host: host.Host, kvstore: kv.KvStore) -> None:
    greeter = rgreeter(wasm_host, rust_built)
    assert greeter.call("greeting", b"howdy") == b""
    assert greeter.call("greet", b"ada") == b"howdy ada #1"
    word = "h" + "e" * 1000 + "y"  # longer than the SDK's first 256-byte buffer: get retries
    greeter.call("greeting", word.encode())
    assert greeter.call("greet", b"ada") == f"{word} ada #2".encode()
    assert kvstore.tenant("acme").bucket().get("greeting") == word.encode()
    assert status_of(greeter, "greeting", b"two words") == 2


def test_rgreeter_statuses(rust_built: Path, wasm_host: host.Host) -> None:
    greeter = rgreeter(wasm_host, rust_built)
    assert status_of(greeter, "greet") == 2
    assert status_of(greeter, "greet", b"a b") == 2
    assert status_of(greeter, "greet", b"\xff") == 2  # not UTF-8
    assert status_of(greeter, "greet", b"bad\x01name") == abi.Status.INVALID_KEY


def test_a_snoozed_name_is_not_greeted_until_its_ttl_ends(
    rust_built: Path, wasm_host: host.Host, kvstore: kv.KvStore, caplog: pytest.LogCaptureFixture
) -> None:
    greeter = rgreeter(wasm_host, rust_built)
    bucket = kvstore.tenant("acme").bucket()
    assert greeter.call("snooze", b"bob 60000") == b""
    with caplog.at_level(logging.DEBUG, logger="wasmkv.plugin.rgreeter"):
        assert greeter.call("greet", b"bob") == b"zzz bob"
    assert log_lines(caplog) == [(logging.WARNING, "bob is snoozed")]  # eprintln!: stderr
    assert bucket.get("snooze:bob") == b"60000"
    left = bucket.ttl("snooze:bob")
    assert left is not None and 59_000 < left <= 60_000
    assert not bucket.exists("greeted:bob")
    greeter.call("snooze", b"cy 1")
    while bucket.exists("snooze:cy"):  # the event: the store expiring it
        threading.Event().wait(0.002)
    assert greeter.call("greet", b"cy") == b"hello cy #1"


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"bob", 2),
        (b"bob soon", 2),
        (b"bob -1", 2),
        (b"bob 99999999999999999999", 2),  # past u64
        (b" 100", 2),
        (b"bob 0", abi.Status.INVALID_ARGUMENT),  # the store's TTL range is 1..100 years
        (b"bob 3153600000001", abi.Status.INVALID_ARGUMENT),
        (b"bob 9223372036854775808", abi.Status.INVALID_ARGUMENT),  # a u64 past i64: refused by the SDK
    ],
)
def test_snooze_refuses_bad_ttls(rust_built: Path, wasm_host: host.Host, data: bytes, status: int) -> None:
    assert status_of(rgreeter(wasm_host, rust_built), "snooze", data) == status


def test_rgreeter_imports_lists_and_counts_with_batches(
    rust_built: Path, wasm_host: host.Host, kvstore: kv.KvStore, caplog: pytest.LogCaptureFixture
) -> None:
    greeter = rgreeter(wasm_host, rust_built)
    bucket = kvstore.tenant("acme").bucket()
    with caplog.at_level(logging.DEBUG, logger="wasmkv.plugin.rgreeter"):
        assert greeter.call("import", b"bob 7\nada 5\ncy 1") == b""
    assert log_lines(caplog) == [(logging.INFO, "imported 3 names")]  # wasmkv::log
    assert [bucket.get(f"greeted:{name}") for name in ("ada", "bob", "cy")] == [b"5", b"7", b"1"]
    assert greeter.call("greeted") == b"ada 5\nbob 7\ncy 1\n"
    assert greeter.call("counts", b"cy ada zed") == b"cy 1\nada 5\nzed 0\n"
    assert greeter.call("counts") == b""
    assert greeter.call("greet", b"ada") == b"hello ada #6"
    # set_many is all or nothing: one malformed line, or one key over quota, and nothing is written.
    assert status_of(greeter, "import", b"dee 1\neve x") == 2
    assert status_of(greeter, "import", b"dee 1\nbad\x01 2") == abi.Status.INVALID_KEY
    assert not bucket.exists("greeted:dee")
    assert greeter.call("greeted") == b"ada 6\nbob 7\ncy 1\n"


def test_set_many_over_quota_writes_nothing(rust_built: Path, wasm_host: host.Host, kvstore: kv.KvStore) -> None:
    greeter = rgreeter(wasm_host, rust_built, kvstore.tenant("tiny", kv.Quota(max_keys=3)))
    assert status_of(greeter, "import", b"a 1\nb 2\nc 3\nd 4") == abi.Status.QUOTA_EXCEEDED
    assert kvstore.tenant("tiny").usage().keys == 0
    greeter.call("import", b"a 1\nb 2\nc 3")
    assert greeter.call("greeted") == b"a 1\nb 2\nc 3\n"


def test_rgreeter_scans_and_forgets_across_pages(
    rust_built: Path, wasm_host: host.Host, kvstore: kv.KvStore, caplog: pytest.LogCaptureFixture
) -> None:
    greeter = rgreeter(wasm_host, rust_built)
    bucket = kvstore.tenant("acme").bucket()
    names = [f"n{i:02d}" for i in range(25)]  # pages of 10: three of them
    greeter.call("import", "\n".join(f"{name} {i}" for i, name in enumerate(names)).encode())
    bucket.set("greeting", b"hi")  # not under greeted:
    assert greeter.call("greeted").decode().splitlines() == [f"{name} {i}" for i, name in enumerate(names)]
    with caplog.at_level(logging.DEBUG, logger="wasmkv.plugin.rgreeter"):
        assert greeter.call("forget", b"n03 n04 nobody") == b"2"
        assert greeter.call("forget") == b"23"  # every greeted name: a listing, then delete_many
    assert log_lines(caplog) == [(logging.WARNING, "forgot 2 of 3 names"), (logging.WARNING, "forgot 23 of 23 names")]
    assert bucket.list_keys("").keys == ["greeting"]
    assert greeter.call("greeted") == b""
    assert greeter.call("forget") == b"0"


def test_a_batch_over_the_abi_limit_is_invalid_argument(rust_built: Path, wasm_host: host.Host) -> None:
    greeter = rgreeter(wasm_host, rust_built)
    names = b" ".join(b"n%d" % i for i in range(abi.BATCH_MAX_ITEMS + 1))  # input() retries past 256 bytes
    assert status_of(greeter, "counts", names) == abi.Status.INVALID_ARGUMENT
    lines = greeter.call("counts", b" ".join(b"n%d" % i for i in range(abi.BATCH_MAX_ITEMS))).splitlines()
    assert len(lines) == abi.BATCH_MAX_ITEMS and lines[-1] == b"n999 0"


def test_the_crown_moves_by_compare_and_swap(
    rust_built: Path, wasm_host: host.Host, kvstore: kv.KvStore, caplog: pytest.LogCaptureFixture
) -> None:
    greeter = rgreeter(wasm_host, rust_built)
    with caplog.at_level(logging.DEBUG, logger="wasmkv.plugin.rgreeter"):
        assert greeter.call("crown", b"ada") == b"1"  # nobody had it
        assert greeter.call("crown", b"bob") == b"0"  # ada has it
        assert greeter.call("crown", b"bob cy") == b"0"  # bob does not
        assert greeter.call("crown", b"ada bob") == b"1"
    assert kvstore.tenant("acme").bucket().get("crown") == b"bob"
    assert log_lines(caplog) == [(logging.INFO, "ada has the crown"), (logging.INFO, "bob has the crown")]
    assert status_of(greeter, "crown") == 2
    assert status_of(greeter, "crown", b"a b c") == 2
