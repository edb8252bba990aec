"""The compiled-module cache trusts only entries this user's key signed for this very module and engine.

A cache entry is native code: whoever can plant one runs code outside the wasm
sandbox. These tests plant entries as an attacker would (another module's
entry, planted native code, a shared directory) and check the host never runs
them.
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import wasmtime
from wat import versioned

from wasmkv import host, kv


def test_the_module_cache_misses_then_hits(tmp_path: Path) -> None:
    wasm = wasmtime.wat2wasm(versioned(1, padding=2000))
    with kv.KvStore.memory() as store:
        with host.Host(store, cache_dir=tmp_path) as first:
            first.load(wasm, name="p", tenant="acme")
            assert first.cache is not None and (first.cache.hits, first.cache.misses) == (0, 1)
        with host.Host(store, cache_dir=tmp_path) as second:
            assert second.load(wasm, name="p", tenant="acme").call("call")[:3] == b"v01"
            assert second.cache is not None and (second.cache.hits, second.cache.misses) == (1, 0)
            # Fuel changes the engine settings: another entry.
            second.load(wasm, name="q", tenant="acme", limits=host.Limits(fuel=10**6))
            assert second.cache.misses == 1
    assert len(list(tmp_path.glob("*.cwasm"))) == 2


def test_the_cache_directory_key_and_entries_are_private(tmp_path: Path) -> None:
    cache_dir = tmp_path / "fresh" / "cache"
    with kv.KvStore.memory() as store, host.Host(store, cache_dir=cache_dir) as wasm_host:
        wasm_host.load(versioned(1), name="p", tenant="acme")
        assert wasm_host.cache is not None
        key = wasm_host.cache.key_path
    assert key == Path(os.environ["XDG_CACHE_HOME"]) / "wasmkv" / "key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(cache_dir.stat().st_mode) == 0o700
    for entry in cache_dir.glob("*.cwasm"):
        assert stat.S_IMODE(entry.stat().st_mode) == 0o600


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage"])
def test_a_corrupt_cache_entry_is_recompiled_never_trusted(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    wasm = wasmtime.wat2wasm(versioned(2))
    with kv.KvStore.memory() as store:
        with host.Host(store, cache_dir=tmp_path) as first:
            first.load(wasm, name="p", tenant="acme")
        (entry,) = tmp_path.glob("*.cwasm")
        blob = bytearray(entry.read_bytes())
        if damage == "flip":
            blob[len(blob) // 2] ^= 0xFF
        elif damage == "truncate":
            del blob[len(blob) // 2 :]
        else:
            blob[:] = b"\0" * 10
        entry.write_bytes(bytes(blob))
        with caplog.at_level("WARNING", logger="wasmkv.cache"), host.Host(store, cache_dir=tmp_path) as second:
            assert second.load(wasm, name="p", tenant="acme").call("call")[:3] == b"v02"
            assert second.cache is not None and (second.cache.hits, second.cache.misses) == (0, 1)
        assert [r.getMessage() for r in caplog.records if "authenticity" in r.getMessage()] != []
        with host.Host(store, cache_dir=tmp_path) as third:
            third.load(wasm, name="p", tenant="acme")
            assert third.cache is not None and third.cache.hits == 1  # rewritten whole


def test_another_modules_authentic_entry_planted_under_this_modules_name_is_not_run(tmp_path: Path) -> None:
    trusted, other = wasmtime.wat2wasm(versioned(1)), wasmtime.wat2wasm(versioned(9))
    with kv.KvStore.memory() as store:
        with host.Host(store, cache_dir=tmp_path) as wasm_host:
            wasm_host.load(trusted, name="trusted", tenant="acme")
        (trusted_entry,) = tmp_path.glob("*.cwasm")
        with host.Host(store, cache_dir=tmp_path) as wasm_host:
            wasm_host.load(other, name="other", tenant="acme")
        (other_entry,) = set(tmp_path.glob("*.cwasm")) - {trusted_entry}
        # Both entries are signed by this user's key; the other module's goes where the trusted one's was.
        trusted_entry.write_bytes(other_entry.read_bytes())
        with host.Host(store, cache_dir=tmp_path) as wasm_host:
            plugin = wasm_host.load(trusted, name="trusted", tenant="acme")
            assert plugin.call("call")[:3] == b"v01"  # the trusted module's code, not the planted v09
            assert wasm_host.cache is not None and (wasm_host.cache.hits, wasm_host.cache.misses) == (0, 1)


PLANT = textwrap.dedent(
    """
    import hashlib, sys
    from pathlib import Path
    from wasmkv import host, kv
    import wasmtime
    cache_dir = Path(sys.argv[1])
    wasm = wasmtime.wat2wasm(sys.argv[2])
    with kv.KvStore.memory() as store:
        with host.Host(store, cache_dir=cache_dir) as h:
            h.load(wasm, name="p", tenant="acme")
        (entry,) = cache_dir.glob("*.cwasm")
        blob = entry.read_bytes()
        # Native code replaced by int3 (SIGTRAP when run), "checksummed" the way the old cache did.
        native = b"\\xcc" * (len(blob) - 32)
        entry.write_bytes(hashlib.sha256(native).digest() + native)
        with host.Host(store, cache_dir=cache_dir) as h:
            print(h.load(wasm, name="p", tenant="acme").call("call")[:3].decode())
    """
)


def test_planted_native_code_never_runs_and_the_host_survives(tmp_path: Path) -> None:
    command = [sys.executable, "-c", PLANT, str(tmp_path), versioned(4)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr  # not -SIGTRAP: the planted code was never handed to wasmtime
    assert result.stdout.strip() == "v04"


def test_a_cache_directory_others_can_write_is_not_used(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with (
        caplog.at_level("WARNING", logger="wasmkv.cache"),
        kv.KvStore.memory() as store,
        host.Host(store, cache_dir=shared) as wasm_host,
    ):
        assert wasm_host.load(versioned(5), name="p", tenant="acme").call("call")[:3] == b"v05"
        assert wasm_host.cache is not None and not wasm_host.cache.enabled
    assert list(shared.iterdir()) == []  # nothing written there
    (line,) = [r.getMessage() for r in caplog.records]
    assert line == f"module cache off: module cache directory {shared} is open to other users (mode 777)"


@pytest.mark.skipif(os.getuid() != 0, reason="giving a directory to another user needs root (CI runs as root)")
def test_a_cache_directory_another_user_owns_is_not_used(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, 65534, 65534)
    with (
        caplog.at_level("WARNING", logger="wasmkv.cache"),
        kv.KvStore.memory() as store,
        host.Host(store, cache_dir=theirs) as wasm_host,
    ):
        wasm_host.load(versioned(6), name="p", tenant="acme")
        assert wasm_host.cache is not None and not wasm_host.cache.enabled
    assert [r.getMessage() for r in caplog.records] == [
        f"module cache off: module cache directory {theirs} is owned by another user (uid 65534)"
    ]


def test_a_key_others_can_read_turns_the_cache_off(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    key = tmp_path / "keydir" / "key"
    key.parent.mkdir(mode=0o700)
    key.write_bytes(hashlib.sha256(b"guessable").digest())
    key.chmod(0o644)
    cache = host.ModuleCache(tmp_path / "cache", key_path=key)
    with caplog.at_level("WARNING", logger="wasmkv.cache"):
        assert not cache.enabled
    assert (
        "key" in caplog.records[0].getMessage() and "open to other users (mode 644)" in caplog.records[0].getMessage()
    )
