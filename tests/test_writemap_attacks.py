"""Attacks on the writable map and the inlined write bodies (commit 84fcfbe): hostile files, interrupted
creation, descriptor leaks, and the invariants the read fast paths rely on (every record with a TTL has its
entry in the expiry index; usage counts every stored record exactly)."""

from __future__ import annotations

import os
import random
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import open_refusal, run_python

from wasmkv import kv
from wasmkv.kv._lmdb import LmdbStore
from wasmkv.kv._lmdb_layout import expiry_key, scan, stored_len
from wasmkv.kv._rules import Namespace

MIB = 1 << 20
_PAGE = 4096
#: Where `MDB_meta.mm_last_pg` lies in a meta page (the page header, magic, version, address, mapsize, two MDB_dbs).
_LAST_PG = 16 + 4 + 4 + 8 + 8 + 2 * 48


def _engine(store: kv.KvStore) -> LmdbStore:
    assert isinstance(store.engine, LmdbStore)
    return store.engine


class _Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


# -- the files ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("writemap", [None, True, False])
def test_a_data_file_left_empty_by_an_interrupted_creation_opens_in_every_mode(tmp_path: Path, writemap: bool) -> None:
    # LMDB creates data.mdb, then writes its first pages: a kill -9 (or a full disk) in between leaves it
    # empty, which LMDB initializes like a missing one. Allocating the map over it first left 8 MiB of
    # zeros that LMDB refuses as "not an LMDB file", in every mode from then on.
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / "data.mdb").touch(mode=0o600)
    with kv.KvStore.open(state, writemap=writemap, sweep_interval_s=None) as store:
        store.tenant("t").bucket().set("k", b"v")
    with kv.KvStore.open(state, writemap=False, sweep_interval_s=None) as store:
        assert store.tenant("t").bucket().get("k") == b"v"


@pytest.mark.parametrize("writemap", ["None", "True", "False"])
def test_a_fifo_planted_as_the_lock_file_is_one_clear_error_never_a_hang(tmp_path: Path, writemap: str) -> None:
    # Before opening the environment, every mode looks at who holds lock.mdb by opening it for reading:
    # a FIFO there blocked that open forever, holding the process's registry lock (every open then hung).
    # LMDB itself refuses such a file ("Illegal seek"), as it did before the look was added.
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    os.mkfifo(state / "lock.mdb", 0o600)
    refusal = open_refusal(state, writemap)
    assert refusal.startswith(f"cannot open the store at {state}")
    assert refusal.count("\n") == 1


def test_a_meta_page_claiming_more_pages_than_the_file_holds_never_maps_unallocated_space(tmp_path: Path) -> None:
    # A hostile (or damaged) file: LMDB raises its map to cover the last page a meta names, and ftruncates
    # the file to it, past what was allocated; a store there on a full disk would be SIGBUS.
    state = tmp_path / "state"
    with kv.KvStore.open(state, writemap=True, sweep_interval_s=None) as store:
        store.tenant("t").bucket().set("k", b"v")
    claimed = 32 * MIB // _PAGE  # pages: four times the allocated 8 MiB map
    with open(state / "data.mdb", "r+b") as data:
        for page in (0, 1):
            data.seek(page * _PAGE + _LAST_PG)
            last = struct.unpack("<Q", data.read(8))[0]
            assert last < claimed
            data.seek(page * _PAGE + _LAST_PG)
            data.write(struct.pack("<Q", claimed))
    try:
        store = kv.KvStore.open(state, writemap=True, sweep_interval_s=None)
    except kv.BackendUnavailable as exc:  # refusing the file is as good as allocating all it asks
        assert "\n" not in str(exc)
        return
    with store:
        mapped = _engine(store).map_size
        assert mapped >= (claimed + 1) * _PAGE
        assert os.stat(state / "data.mdb").st_blocks * 512 >= mapped


def test_opening_and_closing_in_every_mode_and_every_refusal_leaks_no_descriptor(tmp_path: Path) -> None:
    code = """
        import os, sys
        from wasmkv import kv
        path = sys.argv[1]
        def count():
            return len(os.listdir("/proc/self/fd"))
        def cycle():
            for mode in (None, True, False):
                with kv.KvStore.open(path, writemap=mode, sweep_interval_s=None) as store:
                    store.tenant("t").bucket().set("k", b"v" * 5000)
            store = kv.KvStore.open(path, writemap=True, sweep_interval_s=None)
            try:
                kv.KvStore.open(path, writemap=False, sweep_interval_s=None)  # refused in the process
            except kv.InvalidArgument:
                pass
            store.close()
        cycle()
        before = count()
        for _ in range(30):
            cycle()
        print(count() - before)
    """
    done = run_python(code, str(tmp_path / "state"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "0"


def test_a_refused_open_beside_another_process_leaks_no_descriptor_and_is_one_line(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent("""
                import sys
                from wasmkv import kv
                store = kv.KvStore.open(sys.argv[1], writemap=False, sweep_interval_s=None)
                print("held", flush=True)
                sys.stdin.readline()
                store.close()
            """),
            str(tmp_path / "state"),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        code = """
            import os, sys
            from wasmkv import kv
            messages = set()
            before = len(os.listdir("/proc/self/fd"))
            for _ in range(50):
                try:
                    kv.KvStore.open(sys.argv[1], writemap=True, sweep_interval_s=None)
                except kv.BackendUnavailable as exc:
                    messages.add(str(exc))
            print(len(os.listdir("/proc/self/fd")) - before)
            print(len(messages), "\\n" in "".join(messages))
            with kv.KvStore.open(sys.argv[1], sweep_interval_s=None) as store:  # adopts the holder's mode
                print(store.engine.writemap)
        """
        done = run_python(code, str(tmp_path / "state"))
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.split() == ["0", "1", "False", "False"]
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=60)
        assert holder.stdout is not None
        holder.stdout.close()


# -- the inlined write bodies against the invariants ---------------------------------------------------------


def _check_invariants(engine: LmdbStore, ns: Namespace, tenant: str) -> None:
    """Every stored record with a TTL has its expiry entry; usage counts every stored record exactly."""
    env = engine._env
    usage = engine.usage(tenant)  # first: it sweeps the tenant's expired records, then counts
    keys = size = 0
    with env.begin() as txn:
        expiry = engine._expiry
        for key, record in scan(txn.cursor(db=engine._data), ns.prefix, b""):
            keys += 1
            size += len(key) + stored_len(record)
            if record[0] != 0:
                expires = int.from_bytes(record[1:9], "big")
                entry = txn.get(expiry_key(tenant.encode() + b"\0", expires, ns, key), db=expiry)
                assert entry == ns.bucket.encode() + b"\0" + key, (key, expires)
    assert usage == kv.Usage(keys=keys, bytes=size)


_LONG = "L" * 500  # a long key: prefix + key passes SHORT_ROOM


@pytest.mark.parametrize("writemap", [True, False])
@pytest.mark.parametrize("seed", range(4))
def test_random_writes_at_a_tight_quota_keep_the_expiry_index_and_usage_exact(
    tmp_path: Path, writemap: bool, seed: int
) -> None:
    rng = random.Random(seed)
    clock = _Clock()
    names = ["a", "b", "c", "d", "e", _LONG + "1", _LONG + "2"]
    model: dict[str, tuple[bytes, int | None]] = {}
    with kv.KvStore.open(tmp_path / "s", writemap=writemap, clock=clock, sweep_interval_s=None) as store:
        tenant = store.tenant("t", kv.Quota(max_keys=4, max_bytes=2200))
        bucket = tenant.bucket("b")
        engine = _engine(store)
        ns = Namespace("t", "b")

        trace: list[object] = []

        def live() -> dict[str, bytes]:
            now = int(clock.now * 1000)  # as the store reads its clock
            return {k: v for k, (v, exp) in model.items() if exp is None or exp > now}

        for _ in range(400):
            key = rng.choice(names)
            value = str(rng.randrange(-50, 10 ** rng.randrange(1, 6))).encode()
            op = rng.randrange(8)
            try:
                if op == 0:
                    bucket.set(key, value)
                    model[key] = (value, None)
                elif op == 1:
                    ttl = rng.randrange(1, 30)
                    bucket.set_with_ttl(key, value, ttl)
                    model[key] = (value, int(clock.now * 1000) + ttl)
                elif op == 2:
                    delta = rng.randrange(-5, 6)
                    old = live().get(key)
                    total = bucket.increment(key, delta)
                    assert total == (0 if old is None else int(old)) + delta
                    kept = model[key][1] if old is not None else None
                    model[key] = (str(total).encode(), kept)
                elif op == 3:
                    expected = live().get(key) if rng.random() < 0.6 else rng.choice([None, b"1"])
                    swapped = bucket.compare_and_swap(key, expected, value)
                    assert swapped == (live().get(key) == expected)
                    if swapped:
                        model[key] = (value, None)
                elif op == 4:
                    assert bucket.delete(key) == (key in live())
                    model.pop(key, None)
                elif op == 5:
                    other = rng.choice(names)
                    bucket.set_many({key: value, other: value[:1]})
                    model[key] = (value, None)
                    model[other] = (value[:1], None)
                elif op == 6:
                    bucket.set(key, b"9" * rng.randrange(0, 1200))  # grow and shrink the bytes
                    model[key] = (bucket.get(key) or b"", None)
                else:
                    clock.now += rng.randrange(0, 25) / 1000
            except (kv.QuotaExceeded, kv.NotANumber) as exc:
                trace.append((op, key[:2], type(exc).__name__))
            else:
                trace.append((op, key[:2], value[:8], clock.now))
            # Expired records are dropped from the model once no longer stored (a sweep may have run).
            _check_invariants(engine, ns, "t")
            expect = live()
            assert bucket.get_many(names + names[:2]) == [expect.get(k) for k in names + names[:2]], trace[-4:]
            assert bucket.list_keys().keys == sorted(expect, key=str.encode)
            assert [k for k, _ in bucket.scan(reverse=True).items] == sorted(expect, key=str.encode, reverse=True)


@pytest.mark.parametrize("writemap", [True, False])
def test_a_quota_exceeded_write_changes_nothing_on_every_short_path(tmp_path: Path, writemap: bool) -> None:
    clock = _Clock()
    with kv.KvStore.open(tmp_path / "s", writemap=writemap, clock=clock, sweep_interval_s=None) as store:
        tenant = store.tenant("t", kv.Quota(max_keys=2, max_bytes=40))
        bucket = tenant.bucket()
        bucket.set("a", b"1" * 10)
        bucket.set_with_ttl("b", b"2", 100_000)
        before = tenant.usage()
        for write in (
            lambda: bucket.set("c", b"x"),
            lambda: bucket.set("a", b"1" * 60),
            lambda: bucket.increment("c"),
            lambda: bucket.compare_and_swap("c", None, b"y"),
            lambda: bucket.compare_and_swap("a", b"1" * 10, b"z" * 60),
        ):
            with pytest.raises(kv.QuotaExceeded) as raised:
                write()
            assert "\n" not in str(raised.value)
            assert tenant.usage() == before
        assert bucket.get_many(["a", "b", "c"]) == [b"1" * 10, b"2", None]
        assert bucket.ttl("b") is not None
        _check_invariants(_engine(store), Namespace("t", "default"), "t")
