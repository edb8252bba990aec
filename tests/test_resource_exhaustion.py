"""Exhaustion that already held, kept as regression tests: a plugin's stack, the LMDB map, the disk.

Each ends in one clear error for the call that hit it, and the host and the
store keep working afterwards.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from wasmkv import host, kv
from wasmkv.kv._lmdb import LmdbStore

RECURSE = """(module (memory (export "memory") 1)
  (func $down (param i32) (result i32) (call $down (i32.add (local.get 0) (i32.const 1))))
  (func (export "deep") (result i32) (call $down (i32.const 0)))
  (func (export "ok") (result i32) (i32.const 0)))"""


def test_unbounded_recursion_traps_that_call_only() -> None:
    with kv.KvStore.memory() as store, host.Host(store) as wasm_host:
        plugin = wasm_host.load(RECURSE, name="deep", tenant="t")
        with pytest.raises(host.PluginTrap, match="call stack exhausted"):
            plugin.call("deep")
        assert plugin.call("ok") == b""


def _fill(bucket: kv.Bucket, value: bytes) -> tuple[int, kv.BackendUnavailable]:
    """Write keys until the store refuses; how many were written, and the error."""
    written = 0
    with pytest.raises(kv.BackendUnavailable) as raised:
        while True:
            bucket.set(f"k{written:06d}", value)
            written += 1
    return written, raised.value


def test_a_full_lmdb_map_is_backend_unavailable_and_recovers_after_deletes(tmp_path: Path) -> None:
    engine = LmdbStore(tmp_path / "small", map_size=1 << 20, max_map_size=1 << 20)  # a map that may not grow
    with kv.KvStore(engine, sweep_interval_s=None) as store:
        bucket = store.tenant("t", kv.Quota(max_bytes=1 << 30)).bucket()
        written, error = _fill(bucket, b"v" * 4000)
        assert written > 10
        assert "is full (map_size 1048576 bytes)" in str(error)
        assert bucket.get("k000000") == b"v" * 4000  # reads keep working
        # Copy-on-write needs free pages even to delete, so a full store is freed a few keys at a time.
        for i in range(5):
            assert bucket.delete(f"k{i:06d}") is True
        bucket.set("after", b"fits again")
        assert bucket.get("after") == b"fits again"


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs, so the disk fills long before anything else."""
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


@pytest.mark.skipif(os.getuid() != 0, reason="mounting a small filesystem needs root (CI runs as root)")
def test_a_full_disk_is_backend_unavailable_and_recovers_after_deletes(tiny_disk: Path) -> None:
    with kv.KvStore.open(tiny_disk / "state", sweep_interval_s=None) as store:
        bucket = store.tenant("t", kv.Quota(max_bytes=1 << 30)).bucket()
        written, error = _fill(bucket, b"v" * 8000)
        assert written > 10
        assert "is full: free space on it, then retry" in str(error)
        assert bucket.get("k000000") == b"v" * 8000
        for i in range(5):
            assert bucket.delete(f"k{i:06d}") is True
        bucket.set("after", b"fits again")
        assert bucket.get("after") == b"fits again"


def test_many_long_keys_sharing_a_head_cost_one_lookup_each(tmp_path: Path) -> None:
    # Keys past the LMDB key limit that share their first ~480 bytes once shared one record: every
    # lookup of one read them all (60 values of 1 MiB: 14 s for a 100-key get_many, the store locked).
    head = "h" * 490
    with kv.KvStore.open(tmp_path / "s", sweep_interval_s=None) as store:
        bucket = store.tenant("t", kv.Quota(max_bytes=128 << 20, max_keys=1000)).bucket()
        keys = [f"{head}{i:04d}" for i in range(60)]
        for key in keys:
            bucket.set(key, key.encode()[-4:] * (1 << 18))
        started = time.monotonic()
        values = bucket.get_many(keys)
        assert [value[:4] for value in values if value is not None] == [key.encode()[-4:] for key in keys]
        assert bucket.delete_many(keys[:50]) == 50
        assert bucket.list_keys(head[:10], limit=1000).keys == sorted(keys[50:], key=str.encode)
        assert time.monotonic() - started < 2.0
