"""Benchmark of scans: a 100-pair page against what a caller would do without them, and the engine.

    .venv/bin/python bench/bench_scan.py [--keys 200000]

Contenders, interleaved round by round on the same data (random 16-byte hex keys,
64-byte values) so that noise falls on all of them alike:

- `Bucket.scan` of a 100-pair page from a random start key;
- `Bucket.list_keys` of the same page, then `get_many` of its keys (two passes,
  not one snapshot): the pair scan replaces, target scan ≤ 0.6x of it;
- a raw LMDB cursor over a plain environment holding the same pairs, opened as
  the store opens its own (writemap, no sync): `set_range` then 100 key and
  value copies in one read transaction, target scan ≤ 1.5x of it;
- SQLite in WAL mode (`synchronous=NORMAL`), `SELECT k, v ... WHERE k >= ? ORDER
  BY k LIMIT 100` on a `WITHOUT ROWID` table: the peer a Python user would pick.

Each figure is the median per-page time over rounds; ratios are against the
list_keys + get_many pair and the raw cursor measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import lmdb

from wasmkv import kv

PAGE = 100
VALUE = b"v" * 64
ROUNDS = 41
BATCH = 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keys", type=int, default=200_000)
    args = parser.parse_args()
    rng = random.Random(15)
    keys = sorted({rng.randbytes(8).hex() for _ in range(args.keys)})
    starts = [rng.choice(keys) for _ in range(ROUNDS * BATCH)]

    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        root = Path(tmp)
        with kv.KvStore.open(root / "store") as store:
            bucket = store.tenant("bench", kv.Quota(max_keys=10 * args.keys, max_bytes=1 << 40)).bucket()
            for first in range(0, len(keys), 1000):
                bucket.set_many({key: VALUE for key in keys[first : first + 1000]})

            env = lmdb.open(str(root / "raw"), map_size=1 << 32, writemap=True, sync=False, metasync=False)
            with env.begin(write=True) as txn:
                for key in keys:
                    txn.put(key.encode(), VALUE)

            sql = sqlite3.connect(root / "sqlite.db", isolation_level=None)
            sql.execute("PRAGMA journal_mode=WAL")
            sql.execute("PRAGMA synchronous=NORMAL")
            sql.execute("CREATE TABLE kv (k TEXT PRIMARY KEY, v BLOB) WITHOUT ROWID")
            sql.execute("BEGIN")
            sql.executemany("INSERT INTO kv VALUES (?, ?)", ((key, VALUE) for key in keys))
            sql.execute("COMMIT")

            def scan(start: str) -> int:
                return len(bucket.scan(start=start, limit=PAGE).items)

            def list_then_get(start: str) -> int:
                page = bucket.list_keys(start=start, limit=PAGE)
                return len(bucket.get_many(page.keys))

            def raw_cursor(start: str) -> int:
                pairs = []
                with env.begin() as txn:
                    cursor = txn.cursor()
                    if cursor.set_range(start.encode()):
                        for key, value in cursor:
                            pairs.append((key.decode(), bytes(value)))
                            if len(pairs) == PAGE:
                                break
                return len(pairs)

            def sqlite_range(start: str) -> int:
                rows = sql.execute("SELECT k, v FROM kv WHERE k >= ? ORDER BY k LIMIT ?", (start, PAGE)).fetchall()
                return len(rows)

            contenders: dict[str, Callable[[str], int]] = {
                "list_keys + get_many of the same 100 keys": list_then_get,
                "raw LMDB cursor, 100 keys and values": raw_cursor,
                "sqlite3 WAL, SELECT k, v ... LIMIT 100": sqlite_range,
                "store scan, 100-pair page": scan,
            }
            for name, run in contenders.items():  # each returns full pages: they read the same data
                assert run(keys[0]) == PAGE, name
            samples: dict[str, list[float]] = {name: [] for name in contenders}
            for round_ in range(ROUNDS):
                batch = starts[round_ * BATCH : (round_ + 1) * BATCH]
                order = list(contenders.items())
                rng.shuffle(order)  # interleaved, in a fresh order each round
                for name, run in order:
                    began = time.perf_counter_ns()
                    for start in batch:
                        run(start)
                    samples[name].append((time.perf_counter_ns() - began) / BATCH / 1000)
            sql.close()
            env.close()

    medians = {name: statistics.median(values) for name, values in samples.items()}
    pair = medians["list_keys + get_many of the same 100 keys"]
    raw = medians["raw LMDB cursor, 100 keys and values"]
    print(f"{len(keys):,} random keys, 64 B values; median µs per 100-pair page over {ROUNDS} rounds of {BATCH}\n")
    print("| contender | median µs/page | ratio to list_keys + get_many | ratio to raw LMDB cursor |")
    print("|---|---:|---:|---:|")
    for name, value in medians.items():
        print(f"| {name} | {value:.1f} | {value / pair:.2f} | {value / raw:.2f} |")
    scan_us = medians["store scan, 100-pair page"]
    print(
        f"\ntargets: scan ≤ 0.6x list_keys + get_many → {scan_us / pair:.2f}x; "
        f"scan ≤ 1.5x raw LMDB cursor → {scan_us / raw:.2f}x"
    )


if __name__ == "__main__":
    main()
