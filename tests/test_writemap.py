"""A writable LMDB map: allocated before LMDB writes there, one mode per store at a time, durable under kill -9."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import lmdb
import pytest
from conftest import run_and_kill, run_python, start_python

from wasmkv import kv
from wasmkv.kv import _lmdb_env
from wasmkv.kv._lmdb import LmdbStore
from wasmkv.kv._lmdb_env import WRITEMAP_START_MAP_BYTES
from wasmkv.kv._lmdb_files import filesystem_of

MIB = 1 << 20
VALUE = b"v" * 4000  # one overflow page each
ROOMY = kv.Quota(max_keys=1_000_000, max_bytes=1 << 34)


def _engine(store: kv.KvStore) -> LmdbStore:
    assert isinstance(store.engine, LmdbStore)
    return store.engine


def _allocated(path: Path) -> int:
    return os.stat(path / "data.mdb").st_blocks * 512


def _format(path: Path) -> bytes | None:
    env = lmdb.open(str(path), max_dbs=8, readonly=True, lock=False)
    try:
        with env.begin() as txn:
            return txn.get(b"format", db=env.open_db(b"meta", txn=txn))
    finally:
        env.close()


def _format_of_open(store: kv.KvStore) -> bytes | None:
    env = _engine(store)._env
    with env.begin() as txn:
        return txn.get(b"format", db=env.open_db(b"meta", txn=txn))


def test_tmp_is_on_a_filesystem_that_keeps_a_writable_map_backed(tmp_path: Path) -> None:
    # The rest of this file relies on it (the CI container's /tmp is ext4; /dev/shm is tmpfs).
    assert filesystem_of(str(tmp_path)) in (("ext4", True), ("tmpfs", True))


def test_auto_mode_writes_through_an_allocated_map_that_starts_small_and_grows(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with kv.KvStore.open(state, sweep_interval_s=None) as store:
        engine = _engine(store)
        assert engine.writemap
        assert engine.map_size == WRITEMAP_START_MAP_BYTES
        assert _allocated(state) >= engine.map_size
        assert _format_of_open(store) == b"3w"  # a wasmkv from before writemap refuses the store while it is open
        bucket = store.tenant("t", ROOMY).bucket()
        for i in range(5000):  # 20 MB: the map doubles twice
            bucket.set(f"k{i:05d}", VALUE)
        assert engine.map_size >= 4 * WRITEMAP_START_MAP_BYTES
        assert _allocated(state) >= engine.map_size
        assert os.stat(state / "data.mdb").st_size == engine.map_size
    assert _format(state) == b"3"  # the last process with a writable map wrote the plain format back
    with kv.KvStore.open(state, writemap=False, sweep_interval_s=None) as store:
        assert not _engine(store).writemap
        assert store.tenant("t").bucket().get("k04999") == VALUE


def test_fsync_works_with_a_writable_map(tmp_path: Path) -> None:
    with kv.KvStore.open(tmp_path / "s", fsync=True, writemap=True) as store:
        bucket = store.tenant("acme").bucket()
        bucket.set("k", b"v")
        assert bucket.increment("n") == 1
        assert _engine(store).writemap
    with kv.KvStore.open(tmp_path / "s", writemap=True) as store:
        assert store.tenant("acme").bucket().get_many(["k", "n"]) == [b"v", b"1"]


def test_a_store_written_without_a_writable_map_by_earlier_code_opens_with_one(tmp_path: Path) -> None:
    state = tmp_path / "state"
    # What the code before writemap left: a plain environment, format 3, no sidecar lock file.
    with kv.KvStore.open(state, writemap=False, sweep_interval_s=None) as store:
        bucket = store.tenant("t", ROOMY).bucket()
        bucket.set_many({f"k{i}": b"old" for i in range(500)})
        bucket.set_with_ttl("ttl", b"x", 3_600_000)
    (state / "writemap.lock").unlink()
    assert _format(state) == b"3"
    with kv.KvStore.open(state, sweep_interval_s=None) as store:
        assert _engine(store).writemap
        bucket = store.tenant("t").bucket()
        assert bucket.get_many([f"k{i}" for i in range(500)]) == [b"old"] * 500
        assert bucket.ttl("ttl") is not None
        bucket.set("new", b"n")
        assert store.tenant("t").usage().keys == 502


WRITER = """
    import sys
    from wasmkv import kv
    store = kv.KvStore.open(sys.argv[1], writemap=True, map_size=1 << 20)
    assert store.engine.writemap
    bucket = store.tenant("crash", kv.Quota(max_keys=10_000_000, max_bytes=1 << 40)).bucket()
    i = int(sys.argv[2])
    while True:
        bucket.set(f"k{i:07d}", str(i).encode() * 50)  # ~350 bytes: the 1 MiB map keeps growing
        if i % 10 == 0:
            bucket.set_many({f"m{i:07d}-{j}": b"batch" for j in range(5)})
        bucket.increment("acked")
        print(i, flush=True)
        i += 1
"""


def test_every_acknowledged_write_through_a_writable_map_survives_kill_9(tmp_path: Path) -> None:
    state = tmp_path / "state"
    start = 0
    for acks_wanted in (1500, 700, 2500):
        last = run_and_kill(WRITER, state, start, acks_wanted)
        assert _format(state) == b"3w"  # killed: nobody wrote the plain format back
        with kv.KvStore.open(state, writemap=True, sweep_interval_s=None) as store:
            bucket = store.tenant("crash").bucket()
            acked = list(range(last + 1))
            values: list[bytes | None] = []
            for chunk in range(0, len(acked), 1000):
                values += bucket.get_many([f"k{i:07d}" for i in acked[chunk : chunk + 1000]])
            assert [i for i, value in zip(acked, values, strict=True) if value != str(i).encode() * 50] == []
            for i in range(0, last + 1, 10):
                assert bucket.get_many([f"m{i:07d}-{j}" for j in range(5)]) == [b"batch"] * 5
            counter = int(bucket.get("acked") or b"0")
            assert counter >= last + 1
            # Quota accounting survived too: usage equals what a full count finds.
            assert store.tenant("crash").usage().keys == _count_keys(bucket)
            start = counter
    assert start > 4000


def _count_keys(bucket: kv.Bucket) -> int:
    count, cursor = 0, None
    while True:
        page = bucket.list_keys(cursor=cursor, limit=1000)
        count += len(page.keys)
        if (cursor := page.cursor) is None:
            return count


FULL = """
    import resource, signal, sys
    from wasmkv import kv
    # Past this size a file write fails (EFBIG) instead of finding blocks: the disk is "full" at 6 MiB.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (6 << 20, 6 << 20))
    store = kv.KvStore.open(sys.argv[1], writemap=True, map_size=1 << 20, sweep_interval_s=None)
    bucket = store.tenant("t", kv.Quota(max_keys=100_000, max_bytes=1 << 34)).bucket()
    written = 0
    try:
        while True:
            bucket.set(f"k{written:05d}", b"v" * 4000)
            written += 1
    except kv.BackendUnavailable as exc:
        print(exc)
    print(written, store.engine.map_size)
    assert bucket.get(f"k{written:05d}") is None
    assert bucket.get_many([f"k{i:05d}" for i in range(written)]) == [b"v" * 4000] * written
    assert store.tenant("t").usage().keys == written
    bucket.set("k00000", b"small")  # an overwrite in the allocated map still succeeds
    store.close()
    print("ok")
"""


def test_a_map_that_cannot_be_allocated_is_one_clear_error_never_sigbus(tmp_path: Path) -> None:
    done = run_python(FULL, str(tmp_path / "state"))
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])  # -7 would be SIGBUS, -25 SIGXFSZ
    message, counts, ok = done.stdout.splitlines()
    assert ok == "ok"
    assert message.startswith(f"the disk under the store at {tmp_path / 'state'} cannot hold its map growing past ")
    assert "(File too large): nothing was written" in message
    written, map_size = map(int, counts.split())
    assert map_size == 4 * MIB  # 8 MiB could not be allocated under the 6 MiB limit
    assert written > 500


def test_a_first_map_that_cannot_be_allocated_is_refused_at_open_or_opened_without_in_auto_mode(
    tmp_path: Path,
) -> None:
    code = """
        import resource, signal, sys
        from wasmkv import kv
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4 << 20, 4 << 20))
        try:
            kv.KvStore.open(sys.argv[1], writemap=True)
        except kv.BackendUnavailable as exc:
            print(exc)
        with kv.KvStore.open(sys.argv[1], map_size=1 << 30) as store:
            store.tenant("t").bucket().set("k", b"v")
            print(store.engine.writemap)
    """
    done = run_python(code, str(tmp_path / "state"))
    assert done.returncode == 0, done.stderr[-2000:]
    refused, mode = done.stdout.splitlines()
    assert refused == (
        f"cannot open the store at {tmp_path / 'state'} with writemap: the disk cannot hold its "
        f"{WRITEMAP_START_MAP_BYTES}-byte map (File too large); nothing was written: free space on it, "
        "or open it with writemap=False"
    )
    assert mode == "False"


HOLDER = """
    import sys
    from wasmkv import kv
    mode = {"on": True, "off": False, "auto": None}[sys.argv[2]]
    store = kv.KvStore.open(sys.argv[1], writemap=mode, sweep_interval_s=None)
    store.tenant("t").bucket().set("held", b"x")
    print(store.engine.writemap, flush=True)
    sys.stdin.readline()
    store.close()
"""

OPENER = """
    import sys
    from wasmkv import kv
    mode = {"on": True, "off": False, "auto": None}[sys.argv[2]]
    try:
        with kv.KvStore.open(sys.argv[1], writemap=mode, sweep_interval_s=None) as store:
            assert store.tenant("t").bucket().get("held") == b"x"
            print("opened", store.engine.writemap)
    except kv.BackendUnavailable as exc:
        print(exc)
"""


@pytest.mark.parametrize(("held", "held_writemap"), [("on", True), ("off", False)])
def test_a_second_process_adopts_the_mode_of_the_first_or_is_refused_in_one_line(
    tmp_path: Path, held: str, held_writemap: bool
) -> None:
    state = tmp_path / "state"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(HOLDER), str(state), held],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdin is not None and holder.stdout is not None
    try:
        assert holder.stdout.readline().strip() == str(held_writemap)
        adopted = run_python(OPENER, str(state), "auto")
        assert adopted.stdout.strip() == f"opened {held_writemap}", adopted.stderr[-2000:]
        same = run_python(OPENER, str(state), held)
        assert same.stdout.strip() == f"opened {held_writemap}", same.stderr[-2000:]
        other = run_python(OPENER, str(state), "off" if held_writemap else "on")
        lines = other.stdout.splitlines()
        assert len(lines) == 1, other.stderr[-2000:]
        if held_writemap:
            assert lines[0] == (
                f"cannot open the store at {state} without writemap: another process has it open with writemap, "
                "and LMDB forbids mixing the two; open it with writemap=None (adopt the mode) or close the other first"
            )
        else:
            assert lines[0] == (
                f"cannot open the store at {state} with writemap: another process has it open without, "
                "and LMDB forbids mixing the two; open it with writemap=None (adopt the mode) or close the other first"
            )
    finally:
        holder.communicate("go\n", timeout=30)
    assert holder.returncode == 0
    # Nobody has it open any more: the next opener picks its own mode.
    flipped = run_python(OPENER, str(state), "off" if held_writemap else "on")
    assert flipped.stdout.strip() == f"opened {not held_writemap}", flipped.stderr[-2000:]


def test_a_process_of_a_wasmkv_from_before_writemap_keeps_writable_maps_off(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with kv.KvStore.open(state, writemap=False) as store:
        store.tenant("t").bucket().set("held", b"x")
    # The earlier code opened LMDB plainly (no sidecar lock); only LMDB's own lock file says it is there.
    code = """
        import sys, lmdb
        env = lmdb.open(sys.argv[1], max_dbs=8, map_size=1 << 30)
        with env.begin() as txn:
            pass
        print("open", flush=True)
        sys.stdin.readline()
    """
    old = start_python(code, str(state))
    assert old.stdin is not None and old.stdout is not None  # for the type checker
    try:
        assert old.stdout.readline().strip() == "open"
        assert "another process has it open without" in run_python(OPENER, str(state), "on").stdout
        assert run_python(OPENER, str(state), "auto").stdout.strip() == "opened False"
    finally:
        old.communicate("go\n", timeout=30)
    assert run_python(OPENER, str(state), "auto").stdout.strip() == "opened True"


def test_while_a_writable_map_is_open_a_wasmkv_from_before_writemap_refuses_the_store(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with kv.KvStore.open(state, writemap=True) as store:
        store.tenant("t").bucket().set("k", b"v")
        # The format check of the earlier code: `int(raw) if raw.isdigit() else None` -> "unreadable", refused.
        assert not (_format_of_open(store) or b"").isdigit()
    assert _format(state) == b"3"


GROWER = """
    import sys
    from wasmkv import kv
    with kv.KvStore.open(sys.argv[1], writemap=True, map_size=1 << 20, sweep_interval_s=None) as store:
        bucket = store.tenant("t").bucket()
        for i in range(int(sys.argv[2]), int(sys.argv[3])):
            bucket.set(f"k{i:05d}", b"c" * 4000)
        print(store.engine.map_size, flush=True)
"""


def test_a_process_opening_with_a_smaller_map_never_cuts_the_file_under_a_larger_one(tmp_path: Path) -> None:
    # LMDB ftruncates the data file to the map at every open and remap, also downwards: a second
    # process mapping less than the first would cut the file, and the first one's next write past the
    # cut would be SIGBUS. Every open and remap maps at least the file's size instead.
    state = tmp_path / "state"
    with kv.KvStore.open(state, writemap=True, map_size=MIB, sweep_interval_s=None) as store:
        bucket = store.tenant("t", ROOMY).bucket()
        for i in range(3000):  # ~12 MB: a 16 MiB map
            bucket.set(f"p{i:05d}", VALUE)
        grown = _engine(store).map_size
        assert grown >= 16 * MIB
        for start in range(0, 3000, 1000):  # the pages are free now, to be reused anywhere
            bucket.delete_many([f"p{i:05d}" for i in range(start, start + 1000)])
        other = run_python(GROWER, str(state), "0", "10")  # maps "1 MiB": really the whole file
        assert other.returncode == 0, other.stderr[-2000:]
        assert int(other.stdout) >= grown
        assert os.stat(state / "data.mdb").st_size >= grown
        assert _allocated(state) >= grown
        for i in range(3000):  # writes anywhere in the 16 MiB again
            bucket.set(f"q{i:05d}", VALUE)
        assert bucket.get("k00009") == b"c" * 4000


def test_two_processes_grow_one_writable_map_while_threads_read(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with kv.KvStore.open(state, writemap=True, map_size=MIB, sweep_interval_s=None) as store:
        bucket = store.tenant("t", ROOMY).bucket()
        bucket.set("fixed", VALUE)
        stop = threading.Event()
        errors: list[BaseException] = []

        def read() -> None:
            try:
                while not stop.is_set():
                    assert bucket.get("fixed") == VALUE
                    assert bucket.get_many(["fixed", "absent"]) == [VALUE, None]
                    bucket.list_keys(limit=5)
            except BaseException as exc:  # reported below
                errors.append(exc)

        readers = [threading.Thread(target=read, daemon=True) for _ in range(3)]
        for thread in readers:
            thread.start()
        child = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(GROWER), str(state), "0", "1500"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            for i in range(1500):  # both processes past each other's maps, under the readers
                bucket.set(f"p{i:05d}", VALUE)
            out, err = child.communicate(timeout=120)
        finally:
            stop.set()
            for thread in readers:
                thread.join()
            if child.poll() is None:
                child.kill()
                child.wait()
        assert child.returncode == 0, err[-2000:]
        assert errors == []
        assert _engine(store).map_size >= 8 * MIB
        assert _allocated(state) >= max(_engine(store).map_size, int(out))
        for name, value in (("k", b"c" * 4000), ("p", VALUE)):
            for start in range(0, 1500, 500):
                assert bucket.get_many([f"{name}{i:05d}" for i in range(start, start + 500)]) == [value] * 500
        assert store.tenant("t").usage().keys == 3001


def test_writemap_is_refused_on_a_filesystem_where_allocating_guarantees_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_lmdb_env, "filesystem_of", lambda path: ("btrfs", False))
    with pytest.raises(kv.BackendUnavailable) as raised:
        kv.KvStore.open(tmp_path / "s", writemap=True)
    assert str(raised.value) == (
        f"cannot open the store at {tmp_path / 's'} with writemap: it is on btrfs, where space allocated up front "
        "does not guarantee later writes (a full disk would be SIGBUS); writemap needs ext4 or tmpfs"
    )
    with kv.KvStore.open(tmp_path / "s") as store:  # auto: without
        assert not _engine(store).writemap
        store.tenant("t").bucket().set("k", b"v")


def test_a_second_open_in_the_process_shares_the_mode_and_refuses_the_other(tmp_path: Path) -> None:
    with kv.KvStore.open(tmp_path / "s", writemap=True) as first, kv.KvStore.open(tmp_path / "s") as second:
        assert _engine(second).writemap
        with pytest.raises(kv.InvalidArgument, match=r"already open in this process with .*writemap=True"):
            kv.KvStore.open(tmp_path / "s", writemap=False)
        first.tenant("t").bucket().set("k", b"v")
        assert second.tenant("t").bucket().get("k") == b"v"


@pytest.mark.parametrize("bad", ["yes", 1, 0.0])
def test_writemap_must_be_a_bool_or_none(tmp_path: Path, bad: object) -> None:
    with pytest.raises(kv.InvalidArgument, match="writemap must be True, False or None"):
        kv.KvStore.open(tmp_path / "s", writemap=bad)  # type: ignore[arg-type]


def test_a_store_url_and_its_options_choose_the_mode(tmp_path: Path) -> None:
    with kv.KvStore.from_url(f"lmdb://{tmp_path / 's'}?writemap=false") as store:
        assert not _engine(store).writemap
    with kv.KvStore.from_url(str(tmp_path / "s"), writemap=True) as store:
        assert _engine(store).writemap


class _Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("writemap", [True, False])
def test_the_short_set_path_hands_a_full_quota_to_the_sweeping_one_and_clears_ttls(
    tmp_path: Path, writemap: bool
) -> None:
    clock = _Clock()
    with kv.KvStore.open(tmp_path / "s", writemap=writemap, clock=clock, sweep_interval_s=None) as store:
        tenant = store.tenant("t", kv.Quota(max_keys=2, max_bytes=1000))
        bucket = tenant.bucket()
        bucket.set("a", b"1")
        bucket.set_with_ttl("b", b"2", 10)
        clock.now += 1
        bucket.set("c", b"3")  # over max_keys until the expired "b" is swept
        assert bucket.get_many(["a", "b", "c"]) == [b"1", None, b"3"]
        with pytest.raises(kv.QuotaExceeded):
            bucket.set("d", b"4")
        bucket.set_with_ttl("a", b"1", 10)
        bucket.set("a", b"11")  # clears the TTL and its expiry index entry
        clock.now += 1
        assert store.engine.sweep(100) == 0
        assert bucket.get("a") == b"11" and bucket.ttl("a") is None
        assert tenant.usage() == kv.Usage(keys=2, bytes=len("a") + 2 + len("c") + 1)
        bucket.set("a", b"1")  # shrinks
        assert tenant.usage() == kv.Usage(keys=2, bytes=4)


@pytest.mark.parametrize("writemap", [True, False])
def test_short_increments_keep_ttls_in_the_index_and_short_swaps_at_a_full_quota_sweep_first(
    tmp_path: Path, writemap: bool
) -> None:
    clock = _Clock()
    with kv.KvStore.open(tmp_path / "s", writemap=writemap, clock=clock, sweep_interval_s=None) as store:
        tenant = store.tenant("t", kv.Quota(max_keys=2))
        bucket = tenant.bucket()
        bucket.set_with_ttl("n", b"5", 1000)
        assert bucket.increment("n") == 6
        assert bucket.increment("n", 10) == 16
        assert bucket.ttl("n") is not None
        assert not bucket.compare_and_swap("m", b"x", b"y")
        assert bucket.compare_and_swap("m", None, b"y")  # max_keys reached
        clock.now += 2
        assert bucket.compare_and_swap("z", None, b"1")  # passes max_keys until the expired "n" is swept
        assert bucket.get_many(["m", "n", "z"]) == [b"y", None, b"1"]
        assert tenant.usage().keys == 2
        with pytest.raises(kv.QuotaExceeded):
            bucket.increment("n")
        bucket.delete("m")
        assert bucket.increment("n") == 1
        assert bucket.ttl("n") is None
        assert tenant.usage() == kv.Usage(keys=2, bytes=4)
