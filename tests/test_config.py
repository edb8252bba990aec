"""`wasmkv.toml`: a valid file builds a host; every class of mistake is rejected with file, key and reason."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from wasmkv import host, kv

COUNTER = """
(module
  (import "kv" "open" (func $open (param i32 i32) (result i32)))
  (import "kv" "increment" (func $incr (param i32 i32 i32 i64 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "default")
  (data (i32.const 16) "hits")
  (func (export "hit") (result i32)
    (call $incr (call $open (i32.const 0) (i32.const 7)) (i32.const 16) (i32.const 4) (i64.const 1) (i32.const 32))))
"""

PLUGIN = "[tenants.a]\n[plugins.p]\nfile = 'x'\ntenant = 'a'\n"

VALID = """
[store]
path = "state"

[cache]
dir = "cache"

[dev]
listen = "127.0.0.1:9999"
debounce_ms = 20

[tenants.acme]
max_keys = 2
ops_per_second = 100

[tenants.other]

[plugins.counter]
file = "counter.wat"
tenant = "acme"
buckets = ["default", "extra"]
deadline_ms = 500
memory_bytes = 1048576
"""


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "counter.wat").write_text(COUNTER)
    path = tmp_path / "wasmkv.toml"
    path.write_text(textwrap.dedent(text))
    return path


def test_a_valid_config_builds_a_host_with_its_store_tenants_and_plugins(tmp_path: Path) -> None:
    config = host.load_config(write(tmp_path, VALID))
    assert config.store.path == tmp_path / "state"
    assert config.cache_dir == tmp_path / "cache"
    assert config.listen == "127.0.0.1:9999" and config.debounce_ms == 20
    assert config.tenants == {"acme": kv.Quota(max_keys=2, ops_per_second=100.0), "other": kv.Quota()}
    plugin = config.plugins["counter"]
    assert plugin.buckets == ("default", "extra")
    assert plugin.limits == host.Limits(memory_bytes=1048576, deadline_ms=500)
    with host.Host.from_config(tmp_path / "wasmkv.toml") as wasm_host:
        counter = wasm_host.plugin("counter")
        assert counter.tenant.quota.max_keys == 2
        counter.call("hit")
        assert wasm_host.store.tenant("acme").bucket().get("hits") == b"1"
        assert list((tmp_path / "cache").glob("*.cwasm"))
    assert wasm_host.store.closed  # the host owned the store it opened


def test_an_empty_config_uses_the_defaults(tmp_path: Path) -> None:
    config = host.load_config(write(tmp_path, ""))
    assert config.store.path == tmp_path / ".wasmkv" / "state"
    assert config.cache_dir == tmp_path / ".wasmkv" / "cache"
    assert config.listen == "127.0.0.1:8737"
    assert config.plugins == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[store\npath = 1", r"not valid TOML: .*line 1"),
        ("colour = 1", r"colour: unknown key \(allowed here: store, cache, dev, serve, tenants, plugins\)"),
        ("[store]\npath = 3", r"store\.path: must be a string, got an integer"),
        ("[store]\npath = 'a'\nurl = 'redis://x'", r"store: set either path \(the embedded store\) or url"),
        (
            "[store]\nurl = 'redis://x'\nfsync = true",
            r"store\.fsync: applies to an embedded \(LMDB\) store only, not to a Redis store",
        ),
        ("[store]\nbogus = 1", r"store\.bogus: unknown key"),
        (
            "[store]\npath = 'x'\ntimeout_s = 1",
            r"store\.timeout_s: applies to a Redis store only, not to an embedded \(LMDB\) store",
        ),
        ("[store]\nurl = 'redis://x'\ntimeout_s = -1", r"store\.timeout_s: must be positive, got -1"),
        ("[cache]\nenabled = 'yes'", r"cache\.enabled: must be a boolean, got a string"),
        ("[dev]\nlisten = 'nowhere'", r"dev\.listen: must be HOST:PORT, got 'nowhere'"),
        ("[dev]\ndebounce_ms = 0", r"dev\.debounce_ms: must be positive, got 0"),
        ("tenants = 3", r"tenants: must be a table, got an integer"),
        ("[tenants.'bad name']", r"tenants\.bad name: tenant name must be 1-64 characters"),
        ("[tenants.a]\nmax_keys = 0", r"tenants\.a\.max_keys: must be positive, got 0"),
        ("[tenants.a]\nmax_keys = true", r"tenants\.a\.max_keys: must be an integer, got a boolean"),
        ("[tenants.a]\nmax_kyes = 5", r"tenants\.a\.max_kyes: unknown key \(allowed here: max_keys, max_bytes"),
        ("[tenants.a]\n[plugins.p]\ntenant = 'a'", r"plugins\.p\.file: is required"),
        ("[tenants.a]\n[plugins.p]\nfile = 'counter.wat'", r"plugins\.p\.tenant: is required"),
        ("[plugins.p]\nfile = 'counter.wat'\ntenant = 'ghost'", r"plugins\.p\.tenant: tenant 'ghost' is not declared"),
        (
            "[tenants.a]\n[plugins.p]\nfile = 'x'\ntenant = 'a'\nbuckets = ['ok', 'no way']",
            r"plugins\.p\.buckets: bucket name",
        ),
        (
            "[tenants.a]\n[plugins.p]\nfile = 'x'\ntenant = 'a'\nbuckets = [1]",
            r"plugins\.p\.buckets: must be an array of",
        ),
        (
            "[tenants.a]\n[plugins.p]\nfile = 'x'\ntenant = 'a'\ndeadline_ms = -5",
            r"plugins\.p\.deadline_ms: must be positive",
        ),
        (
            "[tenants.a]\n[plugins.p]\nfile = 'x'\ntenant = 'a'\nmemory_bytes = 100",
            r"plugins\.p: Limits\.memory_bytes must",
        ),
        (
            "[tenants.a]\n[plugins.p]\nfile = 'x'\ntenant = 'a'\nsources = ['*.c']",
            r"plugins\.p\.sources: needs a build",
        ),
        (
            "[tenants.a]\n[plugins.p]\nfile = 'x'\ntenant = 'a'\nbuild = 5",
            r"plugins\.p\.build: must be a command string",
        ),
        (PLUGIN + "build = ''", r"plugins\.p\.build: must not be empty"),
        (PLUGIN + "wat = 1", r"plugins\.p\.wat: unknown key"),
        ("[tenants.a]\n[plugins.'p q']\nfile = 'x'\ntenant = 'a'", r"plugins\.p q: plugin name must be"),
    ],
)
def test_every_kind_of_mistake_names_the_file_key_and_reason(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(host.ConfigError, match=f"^{path}: {message}"):
        host.load_config(path)


def test_a_missing_config_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(host.ConfigError, match="cannot read"):
        host.load_config(tmp_path / "nope.toml")


def test_nothing_starts_on_a_bad_config(tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace("deadline_ms = 500", "deadline_ms = 'soon'"))
    with pytest.raises(host.ConfigError):
        host.Host.from_config(path)
    assert not (tmp_path / "state").exists()


def test_a_plugin_that_fails_to_load_closes_what_was_opened(tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace('file = "counter.wat"', 'file = "missing.wasm"'))
    with pytest.raises(host.LoadError, match="cannot read plugin"):
        host.Host.from_config(path)
    # The store was closed again: reopening it in this process works and is empty.
    with kv.KvStore.open(tmp_path / "state") as store:
        assert store.tenant("acme").usage().keys == 0
