"""Benchmark of the durable store, with its baselines measured in the same run.

    .venv/bin/python bench/bench_store.py [--keys 1000000]

Prints the median per-op time of get, set, increment, compare_and_swap and a
100-key list_keys page out of `--keys` keys on the durable store, next to a
plain `dict` lookup and raw `sqlite3` commits, as ratios; and the raw engines
(LMDB, SQLite) the store was chosen between. Medians are over batches, so the
timer's own cost is spread thin. The ratio column is against sqlite3 in WAL mode
with synchronous=NORMAL, the peer a Python user would pick; the first targets
were set against its default (fsync) journal, which the target line keeps.

This is the quick check of the absolute targets, on 1,000 hot keys for the point
operations; `bench/compare.py` is the fair comparison (random keys over the whole
key set, every contender interleaved, the raw engines with the store's own flags).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import lmdb

from wasmkv import kv

BATCH = 200
ROUNDS = 25
VALUE = b"v" * 64


def median_us(op: Callable[[int], object], *, batch: int = BATCH, rounds: int = ROUNDS) -> float:
    """Median over `rounds` batches of the per-call time of `op(i)`, in µs."""
    samples = []
    counter = 0
    for _ in range(rounds):
        start = time.perf_counter_ns()
        for _ in range(batch):
            op(counter)
            counter += 1
        samples.append((time.perf_counter_ns() - start) / batch / 1000)
    return statistics.median(samples)


def sqlite_commit_us(path: Path, journal: str, synchronous: str) -> float:
    """A raw sqlite3 INSERT OR REPLACE committed per statement."""
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute(f"PRAGMA journal_mode={journal}")
    connection.execute(f"PRAGMA synchronous={synchronous}")
    connection.execute("CREATE TABLE kv (k BLOB PRIMARY KEY, v BLOB) WITHOUT ROWID")

    def put(i: int) -> None:
        connection.execute("BEGIN")
        connection.execute("INSERT OR REPLACE INTO kv VALUES (?, ?)", (b"key%d" % i, VALUE))
        connection.execute("COMMIT")

    try:
        return median_us(put, batch=20 if synchronous == "FULL" else BATCH, rounds=15)
    finally:
        connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=1_000_000, help="keys in the store for the list_keys page")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="wasmkv-bench-", dir=os.environ.get("BENCH_DIR")))

    rows: list[tuple[str, float]] = []
    table = {i: VALUE for i in range(1000)}
    rows.append(("dict lookup (baseline)", median_us(lambda i: table.get(i % 1000))))
    sqlite_default = sqlite_commit_us(scratch / "default.db", "DELETE", "FULL")
    rows.append(("raw sqlite3 commit, default journal", sqlite_default))
    sqlite_wal = sqlite_commit_us(scratch / "wal.db", "WAL", "NORMAL")
    rows.append(("raw sqlite3 commit, WAL + synchronous=NORMAL (baseline)", sqlite_wal))

    env = lmdb.open(str(scratch / "raw.lmdb"), map_size=2**32, sync=False, metasync=False)

    def lmdb_put(i: int) -> None:
        with env.begin(write=True) as txn:
            txn.put(b"key%d" % (i % 1000), VALUE)

    def lmdb_get(i: int) -> None:
        with env.begin(buffers=True) as txn:
            txn.get(b"key%d" % (i % 1000))

    rows.append(("raw LMDB put + commit", median_us(lmdb_put)))
    rows.append(("raw LMDB get in a read txn", median_us(lmdb_get)))
    env.close()

    quota = kv.Quota(max_keys=args.keys + 10_000, max_bytes=2**40)
    with kv.KvStore.open(scratch / "store", sweep_interval_s=None) as store:
        bucket = store.tenant("bench", quota).bucket()
        started = time.perf_counter()
        for chunk in range(0, args.keys, 1000):
            bucket.set_many({f"user:{i:08d}": VALUE for i in range(chunk, min(chunk + 1000, args.keys))})
        fill_s = time.perf_counter() - started
        keys = [f"user:{i:08d}" for i in range(0, args.keys, max(1, args.keys // 1000))]
        n = len(keys)
        get_us = median_us(lambda i: bucket.get(keys[i % n]))
        rows.append(("store get (64 B value)", get_us))
        # The engine's floor on the same keys: a fresh LMDB read transaction and one lookup, nothing else.
        engine_env = store.engine._env  # type: ignore[attr-defined]
        engine_db = store.engine._data  # type: ignore[attr-defined]
        raw_keys = [b"bench\0default\0" + key.encode() for key in keys]

        def raw_get(i: int) -> None:
            with engine_env.begin(db=engine_db, buffers=True) as txn:
                txn.get(raw_keys[i % n])

        rows.append((f"raw LMDB get of the same keys ({args.keys:,} stored)", median_us(raw_get)))
        rows.append(("store get of a missing key", median_us(lambda i: bucket.get(f"nope:{i % 1000}"))))
        set_us = median_us(lambda i: bucket.set(keys[i % n], VALUE))
        rows.append(("store set (64 B value, durable)", set_us))
        rows.append(("store increment", median_us(lambda i: bucket.increment(f"counter:{i % 100}"))))

        def cas(i: int) -> None:
            key = f"cas:{i % 100}"
            bucket.compare_and_swap(key, bucket.get(key), b"%d" % i)

        cas_total = median_us(cas)
        rows.append(("store compare_and_swap (+ its get)", cas_total))
        # Real cursors from walking the listing; a page costs the same wherever it starts (a B-tree seek).
        cursors: list[str | None] = [None]
        while (len(cursors) < 50 and cursors[-1] is not None) or len(cursors) == 1:
            page = bucket.list_keys("user:", cursors[-1], 100)
            if page.cursor is None:
                break
            cursors.append(page.cursor)
        m = len(cursors)
        list_us = median_us(lambda i: bucket.list_keys("user:", cursors[i % m], 100), batch=20)
        rows.append((f"store list_keys, 100-key page of {args.keys:,} keys", list_us))
        rows.append(("store get_many of 100 keys", median_us(lambda i: bucket.get_many(keys[:100]), batch=20)))

        def raw_getmulti(i: int) -> None:
            with engine_env.begin(db=engine_db) as txn:
                txn.cursor().getmulti(raw_keys[:100])

        rows.append(("raw LMDB getmulti of the same 100 keys", median_us(raw_getmulti, batch=20)))
    with kv.KvStore.open(scratch / "fsync", fsync=True, sweep_interval_s=None) as store:
        bucket = store.tenant("bench").bucket()
        fsync_us = median_us(lambda i: bucket.set(f"k{i % 100}", VALUE), batch=10, rounds=11)
        rows.append(("store set with fsync=True (power-loss durable)", fsync_us))

    dict_us = rows[0][1]
    print(
        f"# wasmkv store benchmark — {time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}"
    )
    print(f"filled {args.keys:,} keys in {fill_s:.1f} s\n")
    print("| operation | median µs/op | ratio to dict | ratio to sqlite3 WAL commit |")
    print("|---|---:|---:|---:|")
    for name, us in rows:
        print(f"| {name} | {us:.3f} | {us / dict_us:.1f} | {us / sqlite_wal:.3f} |")
    print()
    print(
        f"targets: get ≤ 1 µs → {get_us:.3f} µs; durable set ≤ 1/3 of a default-journal sqlite3 commit "
        f"→ {set_us / sqlite_default:.4f} (against WAL: {set_us / sqlite_wal:.2f}); "
        f"list page ≤ 1000 µs → {list_us:.1f} µs"
    )
    sys.stdout.flush()
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
