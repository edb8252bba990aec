"""Durability: killed writers lose no acknowledged write; several processes share one store."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import run_and_kill

from wasmkv import kv

WRITER = textwrap.dedent(
    """
    import sys
    from wasmkv import kv
    store = kv.KvStore.open(sys.argv[1])
    bucket = store.tenant("crash").bucket()
    start = int(sys.argv[2])
    i = start
    while True:
        bucket.set(f"k{i:07d}", str(i).encode() * 8)
        if i % 10 == 0:
            bucket.set_many({f"m{i:07d}-{j}": b"batch" for j in range(5)})
        bucket.increment("acked")
        print(i, flush=True)
        i += 1
    """
)


def test_every_acknowledged_write_survives_kill_9(tmp_path: Path) -> None:
    state = tmp_path / "state"
    start = 0
    for acks_wanted in (1500, 700, 2500):
        last = run_and_kill(WRITER, state, start, acks_wanted)
        with kv.KvStore.open(state) as store:
            bucket = store.tenant("crash").bucket()
            acked = list(range(0, last + 1))
            values = []
            for chunk in range(0, len(acked), 1000):
                values += bucket.get_many([f"k{i:07d}" for i in acked[chunk : chunk + 1000]])
            missing = [i for i, value in zip(acked, values, strict=True) if value != str(i).encode() * 8]
            assert missing == []
            batches = [i for i in acked if i % 10 == 0]
            for i in batches:
                assert bucket.get_many([f"m{i:07d}-{j}" for j in range(5)]) == [b"batch"] * 5
            # Every acknowledged round's increment is durable. The writer may have run ahead of
            # the acknowledgements we read (the pipe buffers them), so the counter can be higher.
            counter = int(bucket.get("acked") or b"0")
            assert counter >= last + 1
            # Quota accounting survived too: usage equals what a full count finds.
            assert store.tenant("crash").usage().keys == len(_all_keys(bucket))
            start = counter  # the next writer numbers its rounds on from the counter
    assert start > 4000


def _all_keys(bucket: kv.Bucket) -> list[str]:
    keys: list[str] = []
    cursor = None
    while True:
        page = bucket.list_keys(cursor=cursor, limit=1000)
        keys += page.keys
        if (cursor := page.cursor) is None:
            return keys


COUNTER = textwrap.dedent(
    """
    import sys
    from wasmkv import kv
    with kv.KvStore.open(sys.argv[1]) as store:
        bucket = store.tenant("shared", kv.Quota(max_keys=150)).bucket()
        for i in range(int(sys.argv[2])):
            bucket.increment("count")
            while True:
                old = bucket.get("cas")
                if bucket.compare_and_swap("cas", old, str(int(old or b"0") + 1).encode()):
                    break
        filled = 0
        for i in range(200):
            try:
                bucket.set(f"{sys.argv[3]}-{i}", b"x")
                filled += 1
            except kv.QuotaExceeded:
                pass
        print(filled)
    """
)


def test_several_processes_share_one_durable_store_exactly(tmp_path: Path) -> None:
    state = tmp_path / "state"
    rounds = 300
    children = [
        subprocess.Popen(
            [sys.executable, "-c", COUNTER, str(state), str(rounds), f"p{n}"], stdout=subprocess.PIPE, text=True
        )
        for n in range(3)
    ]
    filled = [int(child.communicate(timeout=120)[0]) for child in children]
    assert all(child.returncode == 0 for child in children)
    with kv.KvStore.open(state) as store:
        tenant = store.tenant("shared", kv.Quota(max_keys=150))
        bucket = tenant.bucket()
        assert bucket.get("count") == str(3 * rounds).encode()
        assert bucket.get("cas") == str(3 * rounds).encode()
        # Two counter keys plus exactly as many filler keys as the quota left room for.
        assert sum(filled) == 148
        assert tenant.usage().keys == 150


def test_a_durable_store_reopens_with_its_data_and_ttls(tmp_path: Path) -> None:
    with kv.KvStore.open(tmp_path / "s") as store:
        bucket = store.tenant("acme").bucket()
        bucket.set("k", b"v")
        bucket.set_with_ttl("t", b"v", 3_600_000)
    with kv.KvStore.open(tmp_path / "s") as store:
        bucket = store.tenant("acme").bucket()
        assert bucket.get("k") == b"v"
        left = bucket.ttl("t")
        assert left is not None and 3_500_000 < left <= 3_600_000


def test_opening_one_path_twice_in_a_process_shares_the_engine(tmp_path: Path) -> None:
    with kv.KvStore.open(tmp_path / "s") as first, kv.KvStore.open(tmp_path / "s") as second:
        first.tenant("acme").bucket().set("k", b"v")
        assert second.tenant("acme").bucket().get("k") == b"v"
    with kv.KvStore.open(tmp_path / "s") as again:
        assert again.tenant("acme").bucket().get("k") == b"v"


def test_fsync_mode_stores_and_reads_back(tmp_path: Path) -> None:
    with kv.KvStore.open(tmp_path / "s", fsync=True) as store:
        store.tenant("acme").bucket().set("k", b"v")
    with kv.KvStore.open(tmp_path / "s") as store:
        assert store.tenant("acme").bucket().get("k") == b"v"


def test_operations_on_a_closed_store_raise_backend_unavailable(tmp_path: Path) -> None:
    store = kv.KvStore.open(tmp_path / "s")
    bucket = store.tenant("acme").bucket()
    store.close()
    store.close()
    for call in (lambda: bucket.get("k"), lambda: bucket.set("k", b""), bucket.list_keys):
        try:
            call()
        except kv.BackendUnavailable as exc:
            assert "closed" in str(exc)
        else:
            raise AssertionError("expected BackendUnavailable")


def test_the_background_sweeper_reclaims_expired_keys_nobody_reads(tmp_path: Path) -> None:
    with kv.KvStore.open(tmp_path / "s", sweep_interval_s=0.02) as store:
        bucket = store.tenant("acme").bucket()
        bucket.set_many({f"k{i}": b"v" for i in range(50)})
        for i in range(50):
            bucket.set_with_ttl(f"t{i}", b"v", 1)
        env = store.engine._env  # type: ignore[attr-defined]
        data = env.open_db(b"data")

        def stored() -> int:
            with env.begin(db=data) as txn:
                return int(txn.stat(data)["entries"])

        # Poll the stored entry count (no read of the keys) until the sweeper has run.
        deadline = time.monotonic() + 10
        while stored() > 50 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert stored() == 50


def test_opening_an_open_store_with_other_settings_is_refused(tmp_path: Path) -> None:
    with kv.KvStore.open(tmp_path / "s") as first:
        with pytest.raises(kv.InvalidArgument, match="already open in this process with fsync=False"):
            kv.KvStore.open(tmp_path / "s", fsync=True)
        first.tenant("acme").bucket().set("k", b"v")
