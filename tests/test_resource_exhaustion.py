"""Exhaustion that already held, kept as regression tests: a plugin's stack, the LMDB map, the disk.

Each ends in one clear error for the call that hit it, and the host and the
store keep working afterwards.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import run_python

from wasmkv import host, kv
from wasmkv.kv._lmdb import LmdbStore
from wasmkv.kv._lmdb_files import lock_file_bytes

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


@contextlib.contextmanager
def _small_disk(tmp_path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size`, so the disk fills long before anything else."""
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs: too small for a writable map's first 8 MiB, so stores on it open without one."""
    with _small_disk(tmp_path, "4m") as mount:
        yield mount


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


READERS_ON_A_FULL_DISK = """
    import os, sys
    from wasmkv import kv
    disk, writemap = sys.argv[1], sys.argv[2] == "True"
    store = kv.KvStore.open(os.path.join(disk, "state"), writemap=writemap, sweep_interval_s=None)
    store.tenant("t").bucket().set("k", b"v")
    filler = os.open(os.path.join(disk, "filler"), os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(filler, bytes(4096))
    except OSError:
        pass  # the disk is full
    # Read transactions open at once, each in its own reader slot: slots past the first page of the lock
    # file are written for the first time now. (The store's own reads hold one each, on many threads.)
    env = store.engine._env
    held = [env.begin() for _ in range(1000)]
    print(store.engine.writemap, len(held), store.tenant("t").bucket().get("k"))
"""


@pytest.mark.skipif(os.getuid() != 0, reason="mounting a small filesystem needs root (CI runs as root)")
@pytest.mark.parametrize("writemap", [False, True])
def test_reader_slots_taken_on_a_full_disk_are_never_sigbus(tmp_path: Path, writemap: bool) -> None:
    # The lock file was sparse without a writable map: the 63rd reader at once on a full disk killed the
    # process with SIGBUS (exit -7).
    with _small_disk(tmp_path, "16m") as disk:
        done = run_python(READERS_ON_A_FULL_DISK, str(disk), str(writemap))
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.split() == [str(writemap), "1000", "b'v'"]


@pytest.mark.skipif(os.getuid() != 0, reason="mounting a small filesystem needs root (CI runs as root)")
def test_a_new_store_on_a_full_disk_is_one_clear_line(tiny_disk: Path) -> None:
    filler = tiny_disk / "filler"
    with filler.open("wb") as out, pytest.raises(OSError):
        while True:
            out.write(bytes(65536))
            out.flush()
    # In a child: before the lock file was allocated up front, LMDB wrote its header into a hole (SIGBUS).
    done = run_python(
        """
        import sys
        from wasmkv import kv
        try:
            kv.KvStore.open(sys.argv[1], sweep_interval_s=None)
        except kv.BackendUnavailable as exc:
            print(exc)
        """,
        str(tiny_disk / "state"),
    )
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    message = done.stdout.strip()
    assert "\n" not in message
    assert message.startswith(f"cannot open the store at {tiny_disk / 'state'}: the disk cannot hold its ")
    assert "reader table (No space left on device): free space on it, then open it again" in message


def test_the_lock_file_is_allocated_whole_in_either_mode(tmp_path: Path) -> None:
    for writemap in (False, None):
        path = tmp_path / f"writemap-{writemap}"
        with kv.KvStore.open(path, writemap=writemap, sweep_interval_s=None) as store:
            store.tenant("t").bucket().set("k", b"v")
            lock = os.stat(path / "lock.mdb")
            # LMDB kept the size allocated for it: the reader table's size is computed as LMDB does.
            assert lock.st_size == lock_file_bytes(1024), (writemap, lock.st_size)
            assert lock.st_blocks * 512 >= lock.st_size, (writemap, lock.st_blocks)
