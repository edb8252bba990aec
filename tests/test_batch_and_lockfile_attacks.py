"""Attacks on the batch key check (commit ec0249c: `_batch_fast_path` for get_many, delete_many and set_many)
and on the lock file allocated before LMDB opens it (commit f73a7c3: `back_lock_file`)."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import lmdb
import pytest
from conftest import run_python, start_python

from wasmkv import kv
from wasmkv.kv._lmdb_files import lock_file_bytes


class _Str(str):
    __slots__ = ()


class _Bytes(bytes):
    __slots__ = ()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[kv.KvStore]:
    # LMDB only: the batch fast path runs for engines with `DirectReads`.
    with kv.KvStore.open(tmp_path / "s", sweep_interval_s=None) as opened:
        yield opened


def _outcome(call: Callable[[], object]) -> tuple[str, object]:
    try:
        return "ok", call()
    except kv.KvError as exc:
        return "refused", type(exc)


# Characters around every class the checks treat differently: C0/C1 controls, DEL, line separators,
# non-characters, BOM, combining marks, surrogates (lone and paired by hand), astral, multi-byte edges.
_ATOMS = [
    "a",
    "~",
    " ",
    "é",
    "\x80",
    "\x85",
    "\xa0",
    "\xff",
    "\u0301",
    "e\u0301",
    "\u2028",
    "\u2029",
    "\ufeff",
    "\ufffe",
    "\uffff",
    "\U0001f600",
    "\U0010ffff",
    "\0",
    "\t",
    "\n",
    "\r",
    "\x1f",
    "\x7f",
    "\ud800",
    "\udfff",
    "\ud83d\ude00",
]
_ODD: list[object] = ["", b"", _Str("a"), _Bytes(b"a"), bytearray(b"a"), memoryview(b"a"), 1, None]


def _random_key(rng: random.Random, max_key_bytes: int) -> object:
    roll = rng.random()
    if roll < 0.05:
        return rng.choice(_ODD)
    if roll < 0.2:
        # At the limit and one over it, counted in bytes where characters are wider than one.
        char = rng.choice(["x", "é", "€", "\U0001f600"])
        count = max(1, max_key_bytes // len(char.encode()) + rng.choice([-1, 0, 1]))
        key: str = char * count
        room = max_key_bytes - len(key.encode())
        key += "y" * rng.choice([0, 1, max(room, 0)])
    else:
        key = "".join(
            rng.choice(_ATOMS) if rng.random() < 0.3 else rng.choice("abxyz") for _ in range(rng.randrange(1, 6))
        )
    if rng.random() < 0.3:
        return key.encode("utf-8", "surrogatepass")  # bytes keys, some of them not UTF-8
    return key


def _shapes() -> list[Callable[[list[object]], Iterable[object]]]:
    return [list, tuple, iter, lambda keys: (key for key in keys)]


@pytest.mark.parametrize("max_key_bytes", [512, 7, 2, 1])
def test_batches_of_hostile_keys_match_per_key_calls(tmp_path: Path, max_key_bytes: int) -> None:
    clock = [1_700_000_000.0]
    rng = random.Random(max_key_bytes)
    with kv.KvStore.open(tmp_path / "s", clock=lambda: clock[0], sweep_interval_s=None) as store:
        bucket = store.tenant("t", kv.Quota(max_key_bytes=max_key_bytes)).bucket("b")
        stored: list[object] = []
        for _ in range(150):
            key = _random_key(rng, max_key_bytes)
            if _outcome(lambda key=key: bucket.get(key))[0] == "ok":  # type: ignore[arg-type]
                stored.append(key)
                if rng.random() < 0.3:
                    bucket.set_with_ttl(key, repr(key).encode(), rng.choice([1, 10_000_000]))  # type: ignore[arg-type]
                elif rng.random() < 0.6:
                    bucket.set(key, repr(key).encode())  # type: ignore[arg-type]
        clock[0] += 0.01  # the 1 ms TTLs are expired, unswept
        for _ in range(150):
            keys = [
                rng.choice(stored) if stored and rng.random() < 0.6 else _random_key(rng, max_key_bytes)
                for _ in range(rng.choice([1, 2, 3, 5, 20]))
            ]
            singles = [_outcome(lambda key=key: bucket.get(key)) for key in keys]  # type: ignore[arg-type]
            refusals = [what for how, what in singles if how == "refused"]
            expected = ("refused", refusals[0]) if refusals else ("ok", [what for _, what in singles])
            for shape in _shapes():
                assert _outcome(lambda shape=shape, keys=keys: bucket.get_many(shape(keys))) == expected, keys  # type: ignore[arg-type]
            if refusals:
                # Nothing is written or removed when one key is refused.
                before = bucket.get_many(stored) if stored else []  # type: ignore[arg-type]
                assert _outcome(lambda keys=keys: bucket.delete_many(keys)) == expected  # type: ignore[arg-type]
                assert _outcome(lambda keys=keys: bucket.set_many([(key, b"x") for key in keys])) == expected  # type: ignore[misc]
                assert (bucket.get_many(stored) if stored else []) == before  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("key", "fits"),
    [
        ("é" * 3, True),  # 6 bytes, 3 characters
        ("é" * 3 + "a", False),  # 7 bytes, 4 characters: within a character count of 6
        ("aaaaa\x85", False),  # 7 bytes: U+0085 is 2 bytes
        ("aaaa\x85", True),
        ("\U0001f600a", True),  # 5 bytes, 2 characters
        ("\U0001f600\U0001f600", False),  # 8 bytes
        (b"aaaaaa", True),
        (b"aaaaaaa", False),
        ("e\u0301" * 2, True),  # 6 bytes
        ("e\u0301" * 2 + "\u0301", False),  # 8 bytes: combining marks count
    ],
    ids=repr,
)
def test_max_key_bytes_below_the_default_counts_bytes_in_batches(store: kv.KvStore, key: object, fits: bool) -> None:
    bucket = store.tenant("small", kv.Quota(max_key_bytes=6)).bucket()
    for batch in ([key], ["ok", key], [key, key], [key, "ok", key]):
        assert (_outcome(lambda batch=batch: bucket.get_many(batch))[0] == "ok") == fits, batch  # type: ignore[arg-type]
        assert (_outcome(lambda batch=batch: bucket.delete_many(batch))[0] == "ok") == fits, batch  # type: ignore[arg-type]


def _spent(tenant: kv.Tenant, call: Callable[[], object]) -> float:
    """The rate tokens `call` took from `tenant` (the bucket topped up first, on a clock that stands still)."""
    limiter = tenant._limiter
    assert limiter is not None
    limiter._clock = lambda: 100.0  # type: ignore[method-assign]
    limiter._stamp = 100.0
    limiter._tokens = 5000.0
    _outcome(call)
    return 5000.0 - limiter._tokens


def test_batches_spend_one_token_per_key_and_none_when_refused(store: kv.KvStore) -> None:
    tenant = store.tenant("rated", kv.Quota(ops_per_second=5000, max_key_bytes=8))
    bucket = tenant.bucket()
    assert tenant.quota.ops_per_second == 5000
    spends: list[tuple[Callable[[], object], float]] = [
        (lambda: bucket.get_many(["a", "b", "a"]), 3),
        (lambda: bucket.get_many(("a", "b", "a")), 3),
        (lambda: bucket.get_many(key for key in ["a", "b", "a"]), 3),
        (lambda: bucket.get_many([b"a", b"b", b"a"]), 3),
        (lambda: bucket.get_many([b"a", "b"]), 2),
        (lambda: bucket.get_many(["é", "€"]), 2),
        (lambda: bucket.get_many(["a"] * 1000), 1000),
        (lambda: bucket.delete_many(["a", "a"]), 2),
        (lambda: bucket.set_many([("a", b"1"), ("b", b"2")]), 2),
        # Refused: nothing spent.
        (lambda: bucket.get_many(["a", "b", "\0"]), 0),
        (lambda: bucket.get_many(["a", "x" * 9]), 0),
        (lambda: bucket.get_many(["a", "é" * 5]), 0),  # 5 characters, 10 bytes
        (lambda: bucket.get_many(["a", _Str("b")]), 0),
        (lambda: bucket.get_many(["a", "\ud800"]), 0),
        (lambda: bucket.get_many(["a"] * 1001), 0),
        (lambda: bucket.delete_many(["a", ""]), 0),
        (lambda: bucket.set_many([("a", b"1"), ("b\n", b"2")]), 0),
    ]
    for call, cost in spends:
        assert _spent(tenant, call) == cost


def test_a_key_named_a_thousand_times_is_read_once(store: kv.KvStore) -> None:
    bucket = store.tenant("t", kv.Quota(max_value_bytes=1 << 20)).bucket()
    short, long = "big", "L" * 512  # the second stored as a long key (past 494 bytes with the prefix)
    for key in (short, long):
        bucket.set(key, bytes(1 << 20))
        for keys in ([key] * 1000, [key.encode()] * 1000, [key, key.encode()] * 500):
            values = bucket.get_many(keys)  # type: ignore[arg-type]
            # One value object repeated: reading each name again would copy 1 GiB.
            assert len(values) == 1000 and all(value is values[0] for value in values)


def test_keys_around_the_long_key_boundary_with_ttls_match_point_reads(tmp_path: Path) -> None:
    clock = [1_700_000_000.0]
    with kv.KvStore.open(tmp_path / "s", clock=lambda: clock[0], sweep_interval_s=None) as store:
        for tenant_name in ("t", "a" * 64):  # prefixes of 4 and 67 bytes move where long keys start
            bucket = store.tenant(tenant_name).bucket("b" * 64)
            prefix = len(tenant_name) + 64 + 2
            names: list[str] = []
            for total in (493, 494, 495, 511, 512 + prefix):
                size = min(total - prefix, 512)
                names += ["k" * size, "k" * (size - 2) + "é"]
            for index, name in enumerate(names):
                if index % 3 == 0:
                    bucket.set_with_ttl(name, name.encode()[-9:], 1)
                elif index % 3 == 1:
                    bucket.set_with_ttl(name, name.encode()[-9:], 10_000_000)
                else:
                    bucket.set(name, name.encode()[-9:])
            clock[0] += 0.005
            rng = random.Random(len(tenant_name))
            for _ in range(40):
                keys = [rng.choice([*names, "missing", "m" * 512]) for _ in range(rng.randrange(1, 8))]
                assert bucket.get_many(keys) == [bucket.get(key) for key in keys], keys
                raw = [key.encode() for key in keys]
                assert bucket.get_many(raw) == [bucket.get(key) for key in keys], keys  # type: ignore[arg-type]


# -- the lock file ------------------------------------------------------------------------------------------


def test_a_fifo_or_a_directory_planted_as_the_lock_file_is_one_clear_error(tmp_path: Path) -> None:
    fifo, directory = tmp_path / "fifo", tmp_path / "dir"
    fifo.mkdir()
    os.mkfifo(fifo / "lock.mdb")
    (directory / "lock.mdb").mkdir(parents=True)
    for path in (fifo, directory):
        started = time.monotonic()
        with pytest.raises(kv.BackendUnavailable) as caught:
            kv.KvStore.open(path, sweep_interval_s=None)
        assert "\n" not in str(caught.value)
        assert time.monotonic() - started < 5.0  # a FIFO opened blocking would wait for a peer forever


@pytest.mark.parametrize("length", [0, 100, lock_file_bytes(1024) - 1])
@pytest.mark.parametrize("writemap", [False, None])
def test_a_short_lock_file_left_behind_is_grown_and_backed(tmp_path: Path, length: int, writemap: bool | None) -> None:
    path = tmp_path / "s"
    with kv.KvStore.open(path, writemap=writemap, sweep_interval_s=None) as store:
        store.tenant("t").bucket().set("k", b"v")
    os.truncate(path / "lock.mdb", length)  # nobody has it open: LMDB reinitializes it
    with kv.KvStore.open(path, writemap=writemap, sweep_interval_s=None) as store:
        assert store.tenant("t").bucket().get("k") == b"v"
        lock = os.stat(path / "lock.mdb")
        assert lock.st_size == lock_file_bytes(1024)
        assert lock.st_blocks * 512 >= lock.st_size


HOLDS_LMDB_LOCK = """
    import sys
    from wasmkv.kv._lmdb_files import StoreFiles
    print(StoreFiles(sys.argv[1], 0o600).lmdb_users())
"""


@pytest.mark.parametrize("writemap", [False, None])
def test_opening_the_store_again_in_one_process_keeps_lmdbs_lock(tmp_path: Path, writemap: bool | None) -> None:
    # Closing any descriptor of lock.mdb drops this process's POSIX locks on it (LMDB's "I have it open"):
    # a second open of the same store must never reach `back_lock_file` while the first is open.
    path = tmp_path / "s"
    (tmp_path / "link").symlink_to(path)
    with kv.KvStore.open(path, writemap=writemap, sweep_interval_s=None):
        for spelling in (path, tmp_path / "link", f"{path}/", tmp_path / "." / "s"):
            with kv.KvStore.open(spelling, sweep_interval_s=None) as again:
                again.tenant("t").bucket().set("k", b"v")
            seen = run_python(HOLDS_LMDB_LOCK, str(path))
            assert seen.stdout.strip() == "True", (spelling, seen.stderr[-2000:])
    assert run_python(HOLDS_LMDB_LOCK, str(path)).stdout.strip() == "False"


OPEN_AND_WRITE = """
    import sys
    from wasmkv import kv
    with kv.KvStore.open(sys.argv[1], sweep_interval_s=None) as store:
        bucket = store.tenant("t").bucket()
        bucket.set(sys.argv[2], sys.argv[2].encode())
        assert bucket.get(sys.argv[2]) == sys.argv[2].encode()
"""


def test_processes_creating_one_new_store_at_once_all_open_it(tmp_path: Path) -> None:
    for attempt in range(2):
        path = tmp_path / f"s{attempt}"
        children = [
            subprocess.Popen(
                [sys.executable, "-c", textwrap.dedent(OPEN_AND_WRITE), str(path), f"p{index}"],
                stderr=subprocess.PIPE,
                text=True,
            )
            for index in range(4)
        ]
        for child in children:
            _, err = child.communicate(timeout=60)
            assert child.returncode == 0, err[-2000:]
        with kv.KvStore.open(path, sweep_interval_s=None) as store:
            names = [f"p{index}" for index in range(4)]
            assert store.tenant("t").bucket().get_many(names) == [name.encode() for name in names]
        assert os.stat(path / "lock.mdb").st_size == lock_file_bytes(1024)


FOREIGN_LMDB_USER = """
    import sys
    import lmdb
    # Another LMDB program (py-lmdb's defaults: 126 reader slots) has the store open first.
    env = lmdb.open(sys.argv[1], max_dbs=8, map_size=1 << 30)
    print("open", flush=True)
    sys.stdin.readline()
    try:
        with env.begin(write=True) as txn:  # a writer scans every reader slot in use (mdb_find_oldest)
            txn.put(b"x", b"y")
        with env.begin():
            pass
    except lmdb.ReadersFullError:
        pass  # all its slots taken: a clean error
    print("alive", flush=True)
"""


def test_a_foreign_lmdb_user_with_a_smaller_reader_table_survives(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with kv.KvStore.open(path, sweep_interval_s=None) as store:
        store.tenant("t").bucket().set("k", b"v")
    (path / "lock.mdb").unlink()  # as if only the other program had opened it since
    foreign = start_python(FOREIGN_LMDB_USER, str(path))
    assert foreign.stdin is not None and foreign.stdout is not None  # for the type checker
    try:
        assert foreign.stdout.readline().strip() == "open"
        with kv.KvStore.open(path, sweep_interval_s=None) as store:
            env = store.engine._env  # type: ignore[attr-defined]
            held = []
            # Read transactions open at once. The lock file keeps the other program's size (126 slots), so the
            # 127th is refused: had the file grown under it, the other program would read past its map.
            for _ in range(200):
                try:
                    held.append(env.begin())
                except lmdb.ReadersFullError:
                    break
            assert len(held) == 126
            out, _ = foreign.communicate("\n", timeout=60)
            for txn in held:
                txn.abort()
    finally:
        if foreign.poll() is None:
            foreign.kill()
            foreign.wait()
    assert foreign.returncode == 0 and out.strip() == "alive", foreign.returncode
