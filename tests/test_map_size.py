"""The LMDB map: configurable, grows when full (here and in other processes), and its cap is one clear error."""

from __future__ import annotations

import mmap
import re
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from wasmkv import host, kv
from wasmkv.kv._lmdb import LmdbStore
from wasmkv.kv._lmdb_env import DEFAULT_MAP_SIZE_BYTES, DEFAULT_MAX_MAP_SIZE_BYTES

NS_INSIDE = kv.Namespace("acme", "default")

MIB = 1 << 20
#: One overflow page each on 4 KiB pages, so a 1 MiB map holds some 250 of them.
VALUE = b"v" * 4000
ROOMY = kv.Quota(max_keys=1_000_000, max_bytes=1 << 34)


def _engine(store: kv.KvStore) -> LmdbStore:
    assert isinstance(store.engine, LmdbStore)
    return store.engine


def _all_read(bucket: kv.Bucket, keys: list[str], value: bytes) -> bool:
    return all(got == value for start in range(0, len(keys), 500) for got in bucket.get_many(keys[start : start + 500]))


def test_a_full_map_doubles_and_every_value_stays_readable_also_after_reopening(tmp_path: Path) -> None:
    state = tmp_path / "state"
    keys = [f"k{i:05d}" for i in range(2000)]
    with kv.KvStore.open(state, map_size=MIB, sweep_interval_s=None) as store:
        assert (_engine(store).map_size, _engine(store).max_map_size) == (MIB, DEFAULT_MAX_MAP_SIZE_BYTES)
        bucket = store.tenant("t", ROOMY).bucket()
        for key in keys[:1000]:
            bucket.set(key, VALUE)
        for start in range(1000, 2000, 250):
            bucket.set_many(dict.fromkeys(keys[start : start + 250], VALUE))
        assert _engine(store).map_size >= 8 * MIB  # ~8 MB written: doubled at least three times
        assert _all_read(bucket, keys, VALUE)
        assert store.tenant("t").usage().keys == 2000
    # Reopened with the default map, or with a map smaller than the data (LMDB maps at least the data).
    for map_size in (None, MIB):
        with kv.KvStore.open(state, map_size=map_size, sweep_interval_s=None) as store:
            bucket = store.tenant("t").bucket()
            assert _all_read(bucket, keys, VALUE)
            bucket.set("after", VALUE)  # and writes go on, growing again where the map is tight
            assert bucket.get("after") == VALUE
    # Without a writable map the default reserves 64 GiB of address space (a writable one starts small: test_writemap).
    with kv.KvStore.open(state, writemap=False, sweep_interval_s=None) as store:
        assert _engine(store).map_size == DEFAULT_MAP_SIZE_BYTES


def test_one_write_larger_than_twice_the_map_grows_it_as_often_as_it_takes() -> None:
    with kv.KvStore.memory(map_size=MIB, sweep_interval_s=None) as store:
        bucket = store.tenant("t", ROOMY).bucket()
        batch = {f"big{i}": bytes([i]) * 500_000 for i in range(12)}  # 6 MB at once into a 1 MiB map
        bucket.set_many(batch)
        assert _engine(store).map_size >= 8 * MIB
        assert bucket.get_many(list(batch)) == list(batch.values())


def test_growth_stops_at_the_cap_with_one_clear_error_and_the_failed_write_changes_nothing(tmp_path: Path) -> None:
    engine = LmdbStore(tmp_path / "state", map_size=MIB, max_map_size=2 * MIB)
    with kv.KvStore(engine, sweep_interval_s=None) as store:
        tenant = store.tenant("t", ROOMY)
        bucket = tenant.bucket()
        written = 0
        with pytest.raises(kv.BackendUnavailable) as raised:
            while True:
                bucket.set(f"k{written:05d}", VALUE)
                written += 1
        message = str(raised.value)
        assert "\n" not in message
        assert f"is full (map_size {2 * MIB} bytes)" in message
        assert "nothing was written" in message
        assert "map_size in wasmkv.toml" in message
        assert "KvStore.open(map_size=...)" in message
        assert engine.map_size == 2 * MIB
        assert written > 300  # more than the first 1 MiB held: it grew once, to the cap
        assert bucket.get(f"k{written:05d}") is None
        # A batch that does not fit either: none of it is written, usage unchanged, reads go on.
        batch = [f"b{i}" for i in range(20)]
        with pytest.raises(kv.BackendUnavailable, match=r"is full \(map_size 2097152 bytes\)"):
            bucket.set_many(dict.fromkeys(batch, VALUE))
        assert bucket.get_many(batch) == [None] * 20
        assert tenant.usage().keys == written
        assert bucket.get("k00000") == VALUE


CHILD = textwrap.dedent(
    """
    import sys
    from wasmkv import kv
    with kv.KvStore.open(sys.argv[1], map_size=1 << 20, sweep_interval_s=None) as store:
        bucket = store.tenant("t").bucket()
        for i in range(600):
            bucket.set(f"child{i:04d}", b"c" * 4000)
        print("grown", store.engine.map_size, flush=True)
        sys.stdin.readline()  # the parent has written past this map meanwhile
        assert bucket.get("parent0599") == b"p" * 4000
        for i in range(600, 1200):
            bucket.set(f"child{i:04d}", b"c" * 4000)
        print("done", store.engine.map_size, flush=True)
    """
)


def test_a_process_that_grew_the_map_and_one_that_did_not_both_go_on(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with kv.KvStore.open(state, map_size=MIB, sweep_interval_s=None) as store:
        bucket = store.tenant("t", ROOMY).bucket()
        bucket.set("first", b"p")
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(state)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert child.stdin is not None and child.stdout is not None
        try:
            word, child_map = child.stdout.readline().split() or ["", "0"]
            assert word == "grown", child.communicate(timeout=30)[1]
            assert int(child_map) >= 4 * MIB
            # The child's data lies past this process's 1 MiB map: the next read adopts the file's size.
            assert _engine(store).map_size == MIB
            assert bucket.get("child0599") == b"c" * 4000
            assert _engine(store).map_size >= int(child_map)
            for i in range(600):  # past the child's map in turn
                bucket.set(f"parent{i:04d}", b"p" * 4000)
            assert _engine(store).map_size > int(child_map)
            child.stdin.write("go\n")
            child.stdin.flush()
            out, err = child.communicate(timeout=30)
            assert child.returncode == 0, err
            assert out.split()[0] == "done"
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        assert _all_read(bucket, [f"child{i:04d}" for i in range(1200)], b"c" * 4000)
        assert _all_read(bucket, [f"parent{i:04d}" for i in range(600)], b"p" * 4000)
        assert store.tenant("t").usage().keys == 1 + 1200 + 600


def _readers(bucket: kv.Bucket, count: int) -> tuple[threading.Event, list[BaseException], Callable[[], None]]:
    """`count` threads reading `bucket` until stopped: their stop event, their errors, and a join."""
    stop = threading.Event()
    errors: list[BaseException] = []
    started = [threading.Event() for _ in range(count)]

    def read(n: int) -> None:
        try:
            while not stop.is_set():
                assert bucket.get("fixed") == VALUE
                assert bucket.get_many(["fixed", "absent"]) == [VALUE, None]
                bucket.list_keys(limit=5)
                started[n].set()
        except BaseException as exc:  # reported by the test
            errors.append(exc)
            started[n].set()

    threads = [threading.Thread(target=read, args=(n,), daemon=True) for n in range(count)]
    for thread in threads:
        thread.start()
    for event in started:
        event.wait()

    def join() -> None:
        stop.set()
        for thread in threads:
            thread.join()

    return stop, errors, join


def test_reads_on_other_threads_go_on_while_the_map_grows(tmp_path: Path) -> None:
    with kv.KvStore.open(tmp_path / "state", map_size=MIB, sweep_interval_s=None) as store:
        bucket = store.tenant("t", ROOMY).bucket()
        bucket.set("fixed", VALUE)
        _, errors, join = _readers(bucket, 3)
        try:
            for i in range(1200):  # 1 MiB to 8 MiB: three remaps under the readers
                bucket.set(f"k{i:05d}", VALUE)
        finally:
            join()
        assert errors == []
        assert _engine(store).map_size >= 8 * MIB
        assert _all_read(bucket, [f"k{i:05d}" for i in range(1200)], VALUE)


def test_a_refused_write_ends_while_other_threads_keep_reading(tmp_path: Path) -> None:
    # py-lmdb (2.3+) aborts a write transaction only once no operation is in flight; reads on two
    # or more threads could put that off for ever, and with it every write of the process.
    with kv.KvStore.open(tmp_path / "state", sweep_interval_s=None) as store:
        bucket = store.tenant("t", kv.Quota(max_keys=1)).bucket()
        bucket.set("fixed", VALUE)
        _, errors, join = _readers(bucket, 3)
        refused: list[int] = []

        def write() -> None:
            for i in range(50):
                with pytest.raises(kv.QuotaExceeded):
                    bucket.set(f"over{i}", b"x")
                refused.append(i)

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        writer.join(timeout=30)
        join()
        assert not writer.is_alive(), f"the writer is stuck after {len(refused)} refused writes"
        assert (len(refused), errors) == (50, [])


def test_a_second_open_in_the_process_shares_the_map_and_refuses_another_size(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with (
        kv.KvStore.open(state, map_size=MIB, sweep_interval_s=None) as first,
        kv.KvStore.open(state, sweep_interval_s=None) as second,  # None: as it is open already
    ):
        with pytest.raises(kv.InvalidArgument, match="already open in this process with fsync=False, map_size=1048576"):
            kv.KvStore.open(state, map_size=2 * MIB)
        bucket = first.tenant("t", ROOMY).bucket()
        for i in range(600):
            bucket.set(f"k{i:04d}", VALUE)
        assert _engine(second).map_size == _engine(first).map_size >= 4 * MIB
        assert _all_read(second.tenant("t").bucket(), [f"k{i:04d}" for i in range(600)], VALUE)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (1000, "map_size must be at least 1048576 bytes (1 MiB), got 1000"),
        (-1, "map_size must be at least 1048576 bytes (1 MiB), got -1"),
        (True, "map_size must be an integer number of bytes, got True"),
        (1.5 * MIB, "map_size must be an integer number of bytes, got 1572864.0"),
        ("64G", "map_size must be an integer number of bytes, got '64G'"),
        (1 << 70, "map_size must be at most"),
    ],
)
def test_open_refuses_a_bad_map_size(tmp_path: Path, bad: object, message: str) -> None:
    with pytest.raises(kv.InvalidArgument) as raised:
        kv.KvStore.open(tmp_path / "state", map_size=bad)  # type: ignore[arg-type]
    assert str(raised.value).startswith(message)
    assert not (tmp_path / "state").exists()


def _config(tmp_path: Path, store_table: str) -> Path:
    path = tmp_path / "wasmkv.toml"
    path.write_text("[store]\n" + store_table + "\n")
    return path


def test_the_config_key_sizes_the_map_rounded_up_to_whole_pages(tmp_path: Path) -> None:
    config = host.load_config(_config(tmp_path, "path = 'state'\nmap_size = 2097153"))
    assert config.store.options == {"map_size": 2 * MIB + 1}
    with config.open_store(sweep_interval_s=None) as store:
        assert _engine(store).map_size == 2 * MIB + mmap.PAGESIZE
    # An lmdb:// URL is a directory too: it opens as `path` does, with its query's options.
    url = f"lmdb://{tmp_path / 'other'}?fsync=true"
    config = host.load_config(_config(tmp_path, f"url = '{url}'\nmap_size = {MIB}"))
    assert (config.store.path, config.store.url) == (tmp_path / "other", None)
    assert config.store.options == {"fsync": True, "map_size": MIB}
    with config.open_store(sweep_interval_s=None) as store:
        assert _engine(store).map_size == MIB


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("map_size = 1000", r"store\.map_size: must be at least 1048576 bytes \(1 MiB\), got 1000"),
        ("map_size = '64G'", r"store\.map_size: must be an integer, got a string"),
        ("map_size = 1.5e9", r"store\.map_size: must be an integer, got a number"),
        ("map_size = true", r"store\.map_size: must be an integer, got a boolean"),
        (
            "url = 'redis://127.0.0.1:1'\nmap_size = 1048576",
            r"store\.map_size: applies to an embedded \(LMDB\) store only, not to a Redis store",
        ),
        ("url = 'memory:'\nmap_size = 1048576", r"store\.map_size: applies to an embedded \(LMDB\) store only"),
    ],
)
def test_a_bad_config_map_size_is_one_line_naming_the_key(tmp_path: Path, table: str, message: str) -> None:
    with pytest.raises(host.ConfigError) as raised:
        host.load_config(_config(tmp_path, table))
    text = str(raised.value)
    assert "\n" not in text
    assert text.startswith(f"{tmp_path / 'wasmkv.toml'}: store.map_size: ")
    assert re.search(message, text)


def test_a_write_that_must_grow_the_map_from_inside_a_read_of_the_same_thread_is_refused_not_hung(
    tmp_path: Path,
) -> None:
    # A clock callback runs inside read transactions; one that writes (as a signal handler might)
    # must neither remap under its own read nor wait for it forever.
    store_path = tmp_path / "s"
    inside: list[bool] = []
    errors: list[str] = []

    def clock() -> float:
        if inside:
            inside.clear()
            try:
                engine.set(NS_INSIDE, b"big", b"x" * (2 << 20), None, kv.Quota(max_value_bytes=4 << 20))
            except kv.BackendUnavailable as exc:
                errors.append(str(exc))
        return time.time()

    engine = LmdbStore(store_path, map_size=1 << 20, clock=clock)
    try:
        inside.append(True)
        engine.scan(NS_INSIDE, kv.KeyRange(), None, 10, kv.SCAN_PAGE_MAX_BYTES)  # its clock call writes
        assert errors and "inside a read" in errors[0]
        engine.set(NS_INSIDE, b"big", b"x" * (2 << 20), None, kv.Quota(max_value_bytes=4 << 20))  # outside: grows
        assert engine.get(NS_INSIDE, b"big") == b"x" * (2 << 20)
    finally:
        engine.close()
