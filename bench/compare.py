"""wasmkv against its right peers, interleaved in one run: one command, one markdown report.

    .venv/bin/python bench/compare.py [--keys 1000,200000,1000000] [--skip-cluster | --only-cluster] [--rounds 41]

For each key count, a fresh durable store (`KvStore.open`) is filled with that many random
16-hex-character keys holding 64-byte values, and every peer is filled with the *same* keys.
Each contender is a closure that runs one batch of operations; every round runs every contender
of the section once, in a fresh random order, and the figure of a contender is the median over
rounds of its batch time divided by its operations (µs/op). Ratios are contender / peer medians
from the same run, so machine noise lands on both sides alike.

Method and fairness choices:

- Keys. Every batch draws its own random keys (with replacement) from the same distribution, so
  no contender runs on pages another one just warmed. Sets and raw puts overwrite existing keys
  with 64-byte values, so sizes stay put; increments use a pool of 100 counter keys, and
  compare_and_swap a pool of 100 keys it flips between two 64-byte values, a pass over the whole
  pool (in a fresh random order) at a time, so every swap succeeds (counted, and checked).
  The two pools live in the same bucket, so every store holds keys + 200 records.
- The store is called as a Python program would: str keys, `Bucket.get/set/...`; no sweeper
  thread (`sweep_interval_s=None`), no rate limit, a quota large enough never to bind.
- Writes are also compared with raw put+commit on an environment opened like the store's but
  without a writable map ("no writemap"): the issue's yardstick (same safety, no writemap).
- Raw LMDB is opened with the flags read back from the store's own environment
  (`env.flags()`, `env.info()`: sync, metasync, writemap, readahead, map size, ...), holds the
  identical LMDB keys (namespace prefix + key) and records (flag byte + value), filled in the same
  order in the same 1000-key transactions, so both B-trees have the same shape. Raw code is the
  fastest plain idiom: positional `env.begin(...)`, `txn.get`/`put`, `commit`/`abort`, keys as
  ready-made bytes (the store must build them from str). Its get returns bytes (no buffers).
- sqlite3: WAL, synchronous=NORMAL, a `WITHOUT ROWID` table of the same keys, one autocommit
  `INSERT OR REPLACE` per op (a commit per op; neither side fsyncs per commit, but sqlite fsyncs
  at each WAL checkpoint, about every 1000 pages, which LMDB without sync never does: its
  median is steady, its spread is not).
- The list page: `Bucket.list_keys(start=k, limit=100)` from a random existing key that has at
  least 100 keys after it, against a raw cursor `set_range` + `iternext(values=False)` of 100 keys
  in a fresh read transaction, then one check that the last key is still in the bucket (no
  prefix stripping, no decoding, no per-key TTL check: the stricter peer).
- get_many: 100 distinct random existing keys per call, against a loop of raw `txn.get` in one
  read transaction (records as bytes, as the store copies them).
- Plugin kv.get: a WAT plugin loops N `kv.get` imports over a table of random existing keys inside
  one export call; the time of the call is divided by N. Its floor is the identical loop calling
  an import defined through `wasmkv.host._ffi.define_unchecked` whose Python body returns 0, on the
  host's own engine. Peers: the same loop through wasmtime-py's checked `Linker.define_func`
  (read the key from guest memory, dict get, write the value back), and, if `extism` imports, an
  Extism plugin calling a typed `@extism.host_fn` `(key: bytes) -> bytes` doing a dict get; that
  plugin moves the key in and the value out through the Extism kernel as a PDK would (alloc,
  store_u64, load_u64, free: wasm calls into the kernel). The dict peers do less backend work than
  an LMDB read.
- Python floors: for get, the list page and get_many, the least Python that answers as the store
  does (str key to prefixed bytes, flag byte off, keys decoded and unprefixed) with none of its
  checks, in one function per call: the raw peer's code plus that. Each floor is held to its
  store's target; where a floor misses, no pure-Python store reaches the target.
- The cyclic GC is off inside rounds (collected between rounds) for every contender alike.
  Each table ends with its noisiest contender's interquartile range, as a share of its median.
- Cluster (unless --skip-cluster or redis-server is missing): a local 3-master/3-replica Redis
  Cluster from tests/_servers.py, `KvStore.from_url("redis+cluster://...")` (no read cache, the
  default: its blocking redis-py engine, called on the caller's thread) against raw `redis.asyncio`
  (awaited on a loop in the calling thread) and sync redis-py `RedisCluster` GET/SET, and its
  writes against the store's own Lua scripts called through raw redis-py with the same arguments.
  The store over `SyncBridge(RedisStore)` (the engine the blocking one replaced: a hop to an
  event-loop thread and back per call) runs in the same rounds, as "before". The store's tenant
  keys share a hash tag (one slot, one master); the raw keys share one too. Then gets from 1, 2
  and 4 threads sharing one store (one raw client), for --scale-seconds each.
- Scaling: store gets for a fixed time from 1 and 2 threads of one process, and from 1 and 2
  spawned processes opening the same store; ops/s summed, with the CPU time the readers got
  (`time.thread_time`), since a busy machine can starve the second reader of its core.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import importlib.metadata
import importlib.util
import itertools
import multiprocessing
import os
import platform
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any, Final

import lmdb
import wasmtime

from wasmkv import host, kv
from wasmkv.host._ffi import define_unchecked

TENANT: Final = "bench"
BUCKET: Final = "default"
VALUE: Final = b"v" * 64
CAS_A: Final = b"a" * 64
CAS_B: Final = b"b" * 64
#: Counter keys for increment, and keys for compare_and_swap, each.
POOL: Final = 100
PAGE: Final = 100
MANY: Final = 100
CHUNK: Final = 1000
#: Keys in a plugin's key table (its data segment), 16 bytes each.
PLUGIN_KEYS: Final = 4096
KEYS_AT: Final = 1024
OUT_AT: Final = 70_000
OUT_CAP: Final = 4096
#: Import calls per plugin export call, per contender: each call takes a few ms.
LOOPS: Final = {"floor": 20_000, "kv.get": 4000, "define_func": 1000, "extism": 500}
#: Operations per batch, per kind of contender.
BATCH: Final = {"get": 2000, "dict": 20_000, "write": 400, "cas_passes": 4, "page": 100, "many": 20, "redis": 200}

Run = Callable[[int], tuple[int, int]]
"""One batch of a contender for round r (r == rounds is the warm-up): (operations, elapsed ns)."""


@dataclasses.dataclass
class Contender:
    name: str
    run: Run
    samples: list[float] = dataclasses.field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)


@dataclasses.dataclass
class CasState:
    """What every compare_and_swap pool key holds now, and how many swaps were tried and made."""

    holds: bytes = CAS_A
    swaps: int = 0
    tries: int = 0


@dataclasses.dataclass
class Row:
    contender: str
    peer: str | None
    target: float | None


@dataclasses.dataclass
class Section:
    title: str
    notes: list[str]
    contenders: dict[str, Contender]
    rows: list[Row]


def timed(body: Callable[[int], int]) -> Run:
    """A contender's batch, timed around the whole batch (one timer read per batch, not per op)."""

    def run(r: int) -> tuple[int, int]:
        started = time.perf_counter_ns()
        ops = body(r)
        return ops, time.perf_counter_ns() - started

    return run


def interleave(contenders: list[Contender], rounds: int, rng: random.Random) -> None:
    """Warm every contender up once, then `rounds` rounds, each in a fresh random order."""
    for contender in contenders:
        contender.run(rounds)
    order = list(contenders)
    gc.collect()
    gc.freeze()  # the set-up's objects (key lists, tables) are never scanned again: collections stay cheap
    gc.disable()
    try:
        for r in range(rounds):
            rng.shuffle(order)
            for contender in order:
                ops, elapsed = contender.run(r)
                contender.samples.append(elapsed / ops / 1000)
            gc.collect()
    finally:
        gc.enable()
        gc.unfreeze()


def make_keys(rng: random.Random, count: int) -> list[str]:
    """`count` distinct random 16-hex-character keys, in random order."""
    seen: set[str] = set()
    keys: list[str] = []
    while len(keys) < count:
        key = rng.randbytes(8).hex()
        if key not in seen:
            seen.add(key)
            keys.append(key)
    return keys


def per_round(rounds: int, make: Callable[[], list[Any]]) -> list[list[Any]]:
    """One input list per round, plus one for the warm-up (index `rounds`)."""
    return [make() for _ in range(rounds + 1)]


# -- plugins ---------------------------------------------------------------------------------------

GET_LOOP: Final = """
(module
  (import "{module}" "open" (func $open (param i32 i32) (result i32)))
  (import "{module}" "get" (func $get (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (data (i32.const 0) "default")
  (data (i32.const {keys_at}) "{keys}")
  (func (export "run") (result i32) (local $h i32) (local $i i32) (local $sum i32)
    (local.set $h (call $open (i32.const 0) (i32.const 7)))
    (loop $l
      (local.set $sum (i32.add (local.get $sum)
        (call $get (local.get $h)
          (i32.add (i32.const {keys_at}) (i32.shl (i32.rem_u (local.get $i) (i32.const {count})) (i32.const 4)))
          (i32.const 16) (i32.const {out_at}) (i32.const {out_cap}))))
      (br_if $l (i32.lt_u (local.tee $i (i32.add (local.get $i) (i32.const 1))) (i32.const {loops}))))
    ;; 0 (success) only if every get answered what it should
    (i32.ne (local.get $sum) (i32.const {expected}))))
"""

EXTISM_LOOP: Final = """
(module
  (import "extism:host/env" "alloc" (func $alloc (param i64) (result i64)))
  (import "extism:host/env" "free" (func $free (param i64)))
  (import "extism:host/env" "length" (func $length (param i64) (result i64)))
  (import "extism:host/env" "store_u64" (func $store_u64 (param i64 i64)))
  (import "extism:host/env" "load_u64" (func $load_u64 (param i64) (result i64)))
  (import "extism:host/user" "kv_get" (func $kv_get (param i64) (result i64)))
  (memory (export "memory") 2)
  (data (i32.const {keys_at}) "{keys}")
  (func (export "run") (result i32)
    (local $i i32) (local $p i32) (local $k i64) (local $v i64) (local $len i64) (local $j i64) (local $sum i64)
    (loop $l
      (local.set $p (i32.add (i32.const {keys_at})
        (i32.shl (i32.rem_u (local.get $i) (i32.const {count})) (i32.const 4))))
      ;; the key into kernel memory, as a PDK's Memory::from_bytes does
      (local.set $k (call $alloc (i64.const 16)))
      (call $store_u64 (local.get $k) (i64.load (local.get $p)))
      (call $store_u64 (i64.add (local.get $k) (i64.const 8)) (i64.load offset=8 (local.get $p)))
      (local.set $v (call $kv_get (local.get $k)))
      ;; the value out of kernel memory into ours, 8 bytes per kernel call
      (local.set $len (call $length (local.get $v)))
      (local.set $j (i64.const 0))
      (block $done
        (loop $copy
          (br_if $done (i64.ge_u (local.get $j) (local.get $len)))
          (i64.store (i32.add (i32.const {out_at}) (i32.wrap_i64 (local.get $j)))
                     (call $load_u64 (i64.add (local.get $v) (local.get $j))))
          (local.set $j (i64.add (local.get $j) (i64.const 8)))
          (br $copy)))
      (call $free (local.get $k))
      (call $free (local.get $v))
      (local.set $sum (i64.add (local.get $sum) (local.get $len)))
      (br_if $l (i32.lt_u (local.tee $i (i32.add (local.get $i) (i32.const 1))) (i32.const {loops}))))
    (i64.ne (local.get $sum) (i64.const {expected}))))
"""


def get_loop(module: str, keys: list[str], loops: int, expected: int) -> str:
    return GET_LOOP.format(
        module=module,
        keys="".join(keys),
        count=len(keys),
        keys_at=KEYS_AT,
        out_at=OUT_AT,
        out_cap=OUT_CAP,
        loops=loops,
        expected=expected,
    )


def call_export(store: wasmtime.Store, instance: wasmtime.Instance, loops: int) -> Run:
    """A wasmtime-py instance's `run` export as a contender batch of `loops` import calls."""
    func = instance.exports(store)["run"]
    assert isinstance(func, wasmtime.Func)

    def body(r: int) -> int:
        if func(store) != 0:
            raise RuntimeError("the loop's imports did not answer as expected")
        return loops

    return timed(body)


def floor_contender(engine: wasmtime.Engine, keys: list[str], keep: list[object]) -> Run:
    """The identical loop over an import defined through the host's fast path, whose body returns 0."""
    loops = LOOPS["floor"]
    store = wasmtime.Store(engine)
    store.set_epoch_deadline(10**9)
    linker = wasmtime.Linker(engine)
    for name, params in (("open", ("i32", "i32")), ("get", ("i32",) * 5)):
        keep.append(define_unchecked(linker, "bench", name, (params, ("i32",)), lambda slots: 0, lambda exc: b"e"))
    module = wasmtime.Module(engine, get_loop("bench", keys, loops, 0))
    keep.append(store)
    return call_export(store, linker.instantiate(store, module), loops)


def define_func_contender(
    engine: wasmtime.Engine, keys: list[str], table: dict[bytes, bytes], keep: list[object]
) -> Run:
    """The same loop through wasmtime-py's checked `Linker.define_func`: read key, dict get, write value."""
    loops = LOOPS["define_func"]
    store = wasmtime.Store(engine)
    store.set_epoch_deadline(10**9)
    linker = wasmtime.Linker(engine)
    i32 = wasmtime.ValType.i32
    memory: list[wasmtime.Memory] = []

    def open_(caller: wasmtime.Caller, pointer: int, length: int) -> int:
        return 0

    def get(caller: wasmtime.Caller, handle: int, key_at: int, key_len: int, out_at: int, cap: int) -> int:
        mem = memory[0]
        value = table.get(bytes(mem.read(caller, key_at, key_at + key_len)))
        if value is None:
            return -1
        if len(value) <= cap:
            mem.write(caller, value, out_at)
        return len(value)

    linker.define_func("py", "open", wasmtime.FuncType([i32(), i32()], [i32()]), open_, access_caller=True)
    linker.define_func("py", "get", wasmtime.FuncType([i32()] * 5, [i32()]), get, access_caller=True)
    module = wasmtime.Module(engine, get_loop("py", keys, loops, loops * len(VALUE)))
    instance = linker.instantiate(store, module)
    exported = instance.exports(store)["memory"]
    assert isinstance(exported, wasmtime.Memory)
    memory.append(exported)
    keep.append(store)
    return call_export(store, instance, loops)


def extism_contender(keys: list[str], table: dict[bytes, bytes], stack: ExitStack) -> Run | str:
    """The Extism Python SDK: a typed host function `(bytes) -> bytes` doing a dict get; or why not."""
    if importlib.util.find_spec("extism") is None:
        return "extism is not importable"
    try:
        import extism  # type: ignore[import-untyped]  # noqa: PLC0415

        def kv_get(key: bytes) -> bytes:
            return table.get(key, b"")

        function = extism.host_fn(name="kv_get")(kv_get)
        loops = LOOPS["extism"]
        wat = EXTISM_LOOP.format(
            keys="".join(keys),
            count=len(keys),
            keys_at=KEYS_AT,
            out_at=OUT_AT,
            loops=loops,
            expected=loops * len(VALUE),
        )
        plugin = stack.enter_context(extism.Plugin(bytes(wasmtime.wat2wasm(wat)), wasi=False, functions=[function]))
    except Exception as exc:
        return f"Extism plugin could not be set up: {type(exc).__name__}: {exc}"

    def body(r: int) -> int:
        plugin.call("run", b"")  # raises extism.Error on a non-zero status
        return loops

    return timed(body)


# -- the embedded store -----------------------------------------------------------------------------


def raw_env_like(path: Path, model: Any) -> tuple[Any, dict[str, Any]]:
    """An LMDB environment at `path` opened with the flags of `model` (the store's own environment)."""
    flags, info = model.flags(), model.info()
    options: dict[str, Any] = {
        "map_size": info["map_size"],
        "max_readers": info["max_readers"],
        "max_dbs": 8,
        "mode": 0o600,
        **{name: flags[name] for name in ("subdir", "sync", "metasync", "map_async", "readahead", "writemap")},
        **{name: flags[name] for name in ("meminit", "lock")},
    }
    return lmdb.open(str(path), **options), options


@contextmanager
def scratch_dir(parent: str | None) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="wasmkv-compare-", dir=parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def local_section(n: int, rounds: int, scratch: Path, seed: int) -> tuple[Section, list[str]]:
    """Every embedded-store contender at `n` keys, interleaved; also returns the main keys (for scaling)."""
    rng = random.Random(seed * 1_000_003 + n)
    generated = make_keys(rng, n + 2 * POOL)
    main, counters, cas_keys = generated[:n], generated[n : n + POOL], generated[n + POOL :]
    items = [(key, VALUE) for key in main] + [(key, b"0") for key in counters] + [(key, CAS_A) for key in cas_keys]
    rng.shuffle(items)
    prefix = kv.Namespace(TENANT, BUCKET).prefix
    notes: list[str] = []

    with ExitStack() as stack:
        store = stack.enter_context(kv.KvStore.open(scratch / f"store-{n}", sweep_interval_s=None))
        tenant = store.tenant(TENANT, kv.Quota(max_keys=n + 10_000, max_bytes=2**40))
        bucket = tenant.bucket(BUCKET)
        started = time.perf_counter()
        for at in range(0, len(items), CHUNK):
            bucket.set_many(items[at : at + CHUNK])
        store_fill = time.perf_counter() - started

        model = getattr(store.engine, "_env", None)
        if model is None:
            raise RuntimeError("the store's engine has no LMDB environment (`_env`): cannot copy its flags")
        env, options = raw_env_like(scratch / f"raw-{n}", model)
        stack.callback(env.close)
        db = env.open_db(b"data")
        started = time.perf_counter()
        for at in range(0, len(items), CHUNK):
            with env.begin(db=db, write=True) as txn:
                for key, value in items[at : at + CHUNK]:
                    txn.put(prefix + key.encode(), b"\0" + value)
        raw_fill = time.perf_counter() - started
        # The yardstick for writes: raw put+commit with the same safety and no writable map.
        plain = lmdb.open(str(scratch / f"raw-plain-{n}"), **{**options, "writemap": False})
        stack.callback(plain.close)
        plain_db = plain.open_db(b"data")
        for at in range(0, len(items), CHUNK):
            with plain.begin(db=plain_db, write=True) as txn:
                for key, value in items[at : at + CHUNK]:
                    txn.put(prefix + key.encode(), b"\0" + value)

        connection = sqlite3.connect(scratch / f"sqlite-{n}.db", isolation_level=None, check_same_thread=False)
        stack.callback(connection.close)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.execute("CREATE TABLE kv (k BLOB PRIMARY KEY, v BLOB) WITHOUT ROWID")
        started = time.perf_counter()
        for at in range(0, len(items), CHUNK):
            connection.execute("BEGIN")
            connection.executemany("INSERT INTO kv VALUES (?, ?)", [(k.encode(), v) for k, v in items[at : at + CHUNK]])
            connection.execute("COMMIT")
        sqlite_fill = time.perf_counter() - started
        notes.append(
            f"fill of {len(items):,} records in {CHUNK}-key transactions: store {store_fill:.2f} s (set_many), "
            f"raw LMDB {raw_fill:.2f} s, sqlite3 {sqlite_fill:.2f} s"
        )
        shown = ", ".join(f"{k}={v}" for k, v in options.items() if k not in ("mode", "max_dbs"))
        notes.append(f"raw LMDB opened like the store (flags read back from its env): {shown}")

        contenders, cas_state = build_local_contenders(
            rng, rounds, bucket, env, db, connection, prefix, main, counters, cas_keys, notes
        )
        contenders[PLAIN_PUT] = Contender(PLAIN_PUT, raw_put_contender(rng, rounds, plain, plain_db, prefix, main))
        wasm_host = stack.enter_context(host.Host(store))
        contenders.update(build_plugin_contenders(rng, wasm_host, tenant, main, stack, notes))
        interleave(list(contenders.values()), rounds, rng)
        check_cas(bucket, cas_keys, cas_state)

    rows = [
        Row("store get", "raw LMDB get (fresh read txn)", 1.3),
        # The target's yardstick is a put+commit with the same safety (PLAIN_PUT below): a raw writable map
        # has no space allocated under it (a full disk is SIGBUS), so against it the ratios are information.
        Row("store set", "raw LMDB put+commit", None),
        Row("store set", "sqlite3 WAL NORMAL, INSERT OR REPLACE + commit", 1.0),
        Row("store increment", "raw LMDB put+commit", None),
        Row("store compare_and_swap", "raw LMDB put+commit", None),
        Row("store set", PLAIN_PUT, 1.5),
        Row("store increment", PLAIN_PUT, 1.5),
        Row("store compare_and_swap", PLAIN_PUT, 1.5),
        Row("store increment", "raw LMDB get+put+commit", None),
        Row("store compare_and_swap", "raw LMDB get+put+commit", None),
        Row("store list_keys page of 100", "raw LMDB cursor walk of 100", 1.5),
        Row("store get_many of 100", "raw LMDB 100 gets in one read txn", 1.2),
        # The least pure Python can do against the same peers, under the same targets: where a floor misses
        # its target, only code below Python reaches it.
        Row(FLOOR_GET, "raw LMDB get (fresh read txn)", 1.3),
        Row(FLOOR_PAGE, "raw LMDB cursor walk of 100", 1.5),
        Row(FLOOR_MANY, "raw LMDB 100 gets in one read txn", 1.2),
        Row("dict get (absolute floor)", None, None),
        Row("store get", "dict get (absolute floor)", None),
        Row("plugin kv.get (per import call)", "empty unchecked import (floor)", 4.5),
        # What the plugin target leaves for the read itself: raw LMDB's get alone, against the same floor.
        Row("raw LMDB get (fresh read txn)", "empty unchecked import (floor)", None),
        Row("wasmtime-py define_func, dict get", "empty unchecked import (floor)", None),
        Row("plugin kv.get (per import call)", "wasmtime-py define_func, dict get", None),
    ]
    if "Extism host_fn, dict get" in contenders:
        rows += [
            Row("Extism host_fn, dict get", "empty unchecked import (floor)", None),
            Row("plugin kv.get (per import call)", "Extism host_fn, dict get", None),
        ]
    return Section(f"{n:,} keys", notes, contenders, rows), main


def build_local_contenders(
    rng: random.Random,
    rounds: int,
    bucket: kv.Bucket,
    env: Any,
    db: Any,
    connection: sqlite3.Connection,
    prefix: bytes,
    main: list[str],
    counters: list[str],
    cas_keys: list[str],
    notes: list[str],
) -> tuple[dict[str, Contender], CasState]:
    stored = {key: prefix + key.encode() for key in itertools.chain(main, counters, cas_keys)}
    begin = env.begin

    def draw(pool: list[str], count: int) -> list[list[str]]:
        return per_round(rounds, lambda: rng.choices(pool, k=count))

    def raw(sequences: list[list[str]]) -> list[list[bytes]]:
        return [[stored[key] for key in sequence] for sequence in sequences]

    found: dict[str, Run] = {}

    gets = draw(main, BATCH["get"])

    def store_get(r: int) -> int:
        get = bucket.get
        for key in gets[r]:
            get(key)
        return len(gets[r])

    raw_gets = raw(draw(main, BATCH["get"]))

    def raw_get(r: int) -> int:
        for key in raw_gets[r]:
            txn = begin(db)
            txn.get(key)
            txn.abort()
        return len(raw_gets[r])

    table = dict.fromkeys(main, VALUE)
    dict_gets = draw(main, BATCH["dict"])

    def dict_get(r: int) -> int:
        get = table.get
        for key in dict_gets[r]:
            get(key)
        return len(dict_gets[r])

    sets = draw(main, BATCH["write"])

    def store_set(r: int) -> int:
        set_ = bucket.set
        for key in sets[r]:
            set_(key, VALUE)
        return len(sets[r])

    raw_sets = raw(draw(main, BATCH["write"]))
    record = b"\0" + VALUE

    def raw_put(r: int) -> int:
        for key in raw_sets[r]:
            txn = begin(db, None, True)
            txn.put(key, record)
            txn.commit()
        return len(raw_sets[r])

    sqlite_sets = [[key.encode() for key in sequence] for sequence in draw(main, BATCH["write"])]
    execute = connection.execute

    def sqlite_set(r: int) -> int:
        for key in sqlite_sets[r]:
            execute("INSERT OR REPLACE INTO kv VALUES (?, ?)", (key, VALUE))
        return len(sqlite_sets[r])

    increments = draw(counters, BATCH["write"])

    def store_increment(r: int) -> int:
        increment = bucket.increment
        for key in increments[r]:
            increment(key)
        return len(increments[r])

    raw_rmw_keys = raw(draw(counters, BATCH["write"]))

    def raw_rmw(r: int) -> int:
        for key in raw_rmw_keys[r]:
            txn = begin(db, None, True)
            txn.put(key, b"\0" + str(int(txn.get(key)[1:]) + 1).encode())
            txn.commit()
        return len(raw_rmw_keys[r])

    passes = per_round(rounds, lambda: [rng.sample(cas_keys, len(cas_keys)) for _ in range(BATCH["cas_passes"])])
    cas_state = CasState()

    def store_cas(r: int) -> int:
        cas = bucket.compare_and_swap
        done = swapped = 0
        for order in passes[r]:
            old = cas_state.holds
            new = CAS_B if old == CAS_A else CAS_A
            for key in order:
                swapped += cas(key, old, new)
            cas_state.holds = new
            done += len(order)
        cas_state.swaps += swapped
        cas_state.tries += done
        return done

    ordered = sorted(main)
    starts_pool = ordered[: max(1, len(ordered) - PAGE)]
    page_starts = draw(starts_pool, BATCH["page"])

    def store_page(r: int) -> int:
        list_keys = bucket.list_keys
        for start in page_starts[r]:
            list_keys(start=start, limit=PAGE)
        return len(page_starts[r])

    raw_starts = raw(draw(starts_pool, BATCH["page"]))
    islice = itertools.islice

    def raw_walk(r: int) -> int:
        for start in raw_starts[r]:
            txn = begin(db)
            cursor = txn.cursor()
            cursor.set_range(start)
            keys = list(islice(cursor.iternext(True, False), PAGE))
            # Sorted: if the last key is still in the bucket, all are (the store checks its bound too).
            if keys and not keys[-1].startswith(prefix):
                keys = [key for key in keys if key.startswith(prefix)]
            txn.abort()
        return len(raw_starts[r])

    many = per_round(rounds, lambda: [rng.sample(main, MANY) for _ in range(BATCH["many"])])

    def store_many(r: int) -> int:
        get_many = bucket.get_many
        for keys in many[r]:
            get_many(keys)
        return len(many[r])

    raw_many_keys = [
        [[stored[key] for key in keys] for keys in batch]
        for batch in per_round(rounds, lambda: [rng.sample(main, MANY) for _ in range(BATCH["many"])])
    ]

    def raw_many(r: int) -> int:
        for keys in raw_many_keys[r]:
            txn = begin(db)
            get = txn.get
            [get(key) for key in keys]
            txn.abort()
        return len(raw_many_keys[r])

    # Both sides answer the same thing before anything is timed.
    probe = main[0]
    with env.begin(db=db) as txn:
        assert bucket.get(probe) == VALUE and txn.get(stored[probe]) == record
        cursor = txn.cursor()
        cursor.set_range(stored[starts_pool[0]])
        walked = [bytes(key)[len(prefix) :].decode() for key in islice(cursor.iternext(True, False), PAGE)]
    page = bucket.list_keys(start=starts_pool[0], limit=PAGE)
    assert page.keys == walked and len(walked) == min(PAGE, len(ordered) + 2 * POOL), (len(walked), page.keys[:3])
    assert bucket.get_many(main[:MANY]) == [VALUE] * min(MANY, len(main))
    notes.append(
        f"batches: {BATCH['get']} gets, {BATCH['dict']} dict gets, {BATCH['write']} writes, "
        f"{BATCH['cas_passes']}x{POOL} CAS, {BATCH['page']} pages, {BATCH['many']} get_many calls"
    )

    found.update(
        {
            "store get": timed(store_get),
            "raw LMDB get (fresh read txn)": timed(raw_get),
            "dict get (absolute floor)": timed(dict_get),
            "store set": timed(store_set),
            "raw LMDB put+commit": timed(raw_put),
            "sqlite3 WAL NORMAL, INSERT OR REPLACE + commit": timed(sqlite_set),
            "store increment": timed(store_increment),
            "raw LMDB get+put+commit": timed(raw_rmw),
            "store compare_and_swap": timed(store_cas),
            "store list_keys page of 100": timed(store_page),
            "raw LMDB cursor walk of 100": timed(raw_walk),
            "store get_many of 100": timed(store_many),
            "raw LMDB 100 gets in one read txn": timed(raw_many),
        }
    )
    found.update(python_floors(rng, rounds, env, db, prefix, main, starts_pool))
    return {name: Contender(name, run) for name, run in found.items()}, cas_state


FLOOR_GET: Final = "Python floor: get"
FLOOR_PAGE: Final = "Python floor: list page of 100"
FLOOR_MANY: Final = "Python floor: get_many of 100"


def python_floors(
    rng: random.Random,
    rounds: int,
    env: Any,
    db: Any,
    prefix: bytes,
    main: list[str],
    starts_pool: list[str],
) -> dict[str, Run]:
    """The least Python that answers as the store does, with none of its checks: how close to raw LMDB
    any pure-Python store can come. Each is the raw peer's code plus only what turns the store's input
    into LMDB's and LMDB's answer into the store's (str key to prefixed bytes, flag byte off, keys
    decoded and unprefixed), in one Python function per call, as the store's own front is."""
    begin = env.begin
    text_prefix = prefix.decode()
    islice = itertools.islice

    def get(key: str) -> bytes | None:
        txn = begin(db)
        record = txn.get(prefix + key.encode())
        txn.abort()
        if record is None:
            return None
        return record[1:] if not record[0] else record[9:]

    gets = per_round(rounds, lambda: rng.choices(main, k=BATCH["get"]))

    def floor_get(r: int) -> int:
        for key in gets[r]:
            get(key)
        return len(gets[r])

    def page(start: str) -> list[str]:
        txn = begin(db)
        cursor = txn.cursor()
        cursor.set_range(prefix + start.encode())
        stored = list(islice(cursor.iternext(True, False), PAGE))
        txn.abort()
        keys = b"".join(stored).decode().split(text_prefix)
        del keys[0]
        return keys

    starts = per_round(rounds, lambda: rng.choices(starts_pool, k=BATCH["page"]))

    def floor_page(r: int) -> int:
        for start in starts[r]:
            page(start)
        return len(starts[r])

    def get_many(keys: list[str]) -> list[bytes]:
        stored = (text_prefix + ("\n" + text_prefix).join(keys)).encode().split(b"\n")
        txn = begin(db)
        records = list(map(txn.get, stored))
        txn.abort()
        return [record[1:] for record in records]

    many = per_round(rounds, lambda: [rng.sample(main, MANY) for _ in range(BATCH["many"])])

    def floor_many(r: int) -> int:
        for keys in many[r]:
            get_many(keys)
        return len(many[r])

    probe = main[0]
    assert get(probe) == VALUE and get_many([probe]) == [VALUE] and page(starts_pool[0])[0] == starts_pool[0]
    return {FLOOR_GET: timed(floor_get), FLOOR_PAGE: timed(floor_page), FLOOR_MANY: timed(floor_many)}


PLAIN_PUT: Final = "raw LMDB put+commit, no writemap"


def raw_put_contender(rng: random.Random, rounds: int, env: Any, db: Any, prefix: bytes, main: list[str]) -> Run:
    """Raw put+commit of random existing keys, one transaction each, on `env`."""
    batches = per_round(rounds, lambda: [prefix + key.encode() for key in rng.choices(main, k=BATCH["write"])])
    begin = env.begin
    record = b"\0" + VALUE

    def raw_put(r: int) -> int:
        for key in batches[r]:
            txn = begin(db, None, True)
            txn.put(key, record)
            txn.commit()
        return len(batches[r])

    return timed(raw_put)


def check_cas(bucket: kv.Bucket, cas_keys: list[str], state: CasState) -> None:
    """Every timed compare_and_swap must have swapped (a failed one is cheaper and would flatter us)."""
    if state.swaps != state.tries:
        raise RuntimeError(f"compare_and_swap swapped {state.swaps} of {state.tries} times")
    held = set(bucket.get_many(cas_keys))
    if held != {state.holds}:
        raise RuntimeError("compare_and_swap keys do not all hold the expected value")


def build_plugin_contenders(
    rng: random.Random,
    wasm_host: host.Host,
    tenant: kv.Tenant,
    main: list[str],
    stack: ExitStack,
    notes: list[str],
) -> dict[str, Contender]:
    keys = rng.sample(main, min(PLUGIN_KEYS, len(main)))
    table = {key.encode(): VALUE for key in main}
    keep: list[object] = []
    stack.callback(keep.clear)
    loops = LOOPS["kv.get"]
    plugin = wasm_host.load(
        get_loop("kv", keys, loops, loops * len(VALUE)),
        name="compare",
        tenant=tenant,
        buckets=(BUCKET,),
        limits=host.Limits(deadline_ms=60_000),
    )

    def plugin_get(r: int) -> int:
        plugin.call("run")  # raises PluginStatusError unless every get found its 64-byte value
        return loops

    engine = wasm_host.sandbox.engine()  # the engine the plugin runs on: same settings, same epoch ticker
    found: dict[str, Run] = {
        "plugin kv.get (per import call)": timed(plugin_get),
        "empty unchecked import (floor)": floor_contender(engine, keys, keep),
        "wasmtime-py define_func, dict get": define_func_contender(engine, keys, table, keep),
    }
    extism = extism_contender(keys, table, stack)
    if isinstance(extism, str):
        notes.append(f"Extism skipped: {extism}")
    else:
        found["Extism host_fn, dict get"] = extism
    notes.append(
        "plugin loops per export call: "
        + ", ".join(f"{name} {count:,}" for name, count in LOOPS.items())
        + f"; key table of {len(keys):,} random existing keys"
    )
    return {name: Contender(name, run) for name, run in found.items()}


# -- scaling -----------------------------------------------------------------------------------------


def _read_for(bucket: kv.Bucket, keys: list[str], seconds: float) -> tuple[int, float]:
    """Gets of `keys` in turn for `seconds`: how many, and this thread's CPU seconds meanwhile."""
    get = bucket.get
    ops = 0
    count = len(keys)
    at = 0
    cpu = time.thread_time()
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        for _ in range(200):
            get(keys[at])
            at = at + 1 if at + 1 < count else 0
        ops += 200
    return ops, time.thread_time() - cpu


def _process_reader(
    path: str, keys: list[str], seconds: float, barrier: Barrier, out: Queue[tuple[int, float]]
) -> None:
    with kv.KvStore.open(path, sweep_interval_s=None) as store:
        bucket = store.tenant(TENANT).bucket(BUCKET)
        _read_for(bucket, keys, 0.05)  # warm
        barrier.wait()
        out.put(_read_for(bucket, keys, seconds))


def _threads_rate(bucket: kv.Bucket, keysets: list[list[str]], seconds: float) -> tuple[float, float]:
    """Gets per second summed over one thread per key set, all released together, and the cores they used."""
    results = [(0, 0.0)] * len(keysets)
    gate = threading.Barrier(len(keysets))

    def work(slot: int) -> None:
        _read_for(bucket, keysets[slot], 0.05)
        gate.wait()
        results[slot] = _read_for(bucket, keysets[slot], seconds)

    workers = [threading.Thread(target=work, args=(slot,)) for slot in range(len(keysets))]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(ops for ops, _ in results) / seconds, sum(cpu for _, cpu in results) / seconds


def scaling(path: Path, main: list[str], seconds: float, seed: int) -> list[tuple[str, float, float]]:
    """Store get ops/s (and cores used) from 1 and 2 threads in this process, and from 1 and 2 spawned processes."""
    rng = random.Random(seed)
    results: list[tuple[str, float, float]] = []
    with kv.KvStore.open(path, sweep_interval_s=None) as store:
        bucket = store.tenant(TENANT).bucket(BUCKET)
        for threads in (1, 2):
            rate, cores = _threads_rate(bucket, [rng.choices(main, k=20_000) for _ in range(threads)], seconds)
            results.append((f"{threads} thread{'s' * (threads > 1)} in one process", rate, cores))
    context = multiprocessing.get_context("spawn")
    for processes in (1, 2):
        barrier = context.Barrier(processes)
        queue: Queue[tuple[int, float]] = context.Queue()
        children = [
            context.Process(
                target=_process_reader, args=(str(path), rng.choices(main, k=20_000), seconds, barrier, queue)
            )
            for _ in range(processes)
        ]
        for child in children:
            child.start()
        reports = [queue.get(timeout=seconds + 120) for _ in children]
        for child in children:
            child.join(timeout=30)
        rate = sum(ops for ops, _ in reports) / seconds
        cores = sum(cpu for _, cpu in reports) / seconds
        results.append((f"{processes} process{'es' * (processes > 1)}, one thread each", rate, cores))
    return results


# -- Redis Cluster -------------------------------------------------------------------------------------


def cluster_sections(
    keys: list[int], rounds: int, seed: int, scale_seconds: float
) -> tuple[list[Section], list[ScaleTable], str]:
    """The cluster store against raw redis-py clients, per key count, and its thread scaling; and the start-up time."""
    from redis.asyncio.cluster import ClusterNode as AsyncNode  # noqa: PLC0415
    from redis.asyncio.cluster import RedisCluster as AsyncCluster  # noqa: PLC0415
    from redis.cluster import ClusterNode, RedisCluster  # noqa: PLC0415

    started = time.perf_counter()
    # bench_cluster's loader of tests/_servers.py (bench/ is on sys.path when this runs as a script).
    servers = importlib.import_module("bench_cluster")._load_servers().RedisClusterServers().start()
    startup = f"cluster of 3 masters + 3 replicas started in {time.perf_counter() - started:.1f} s"
    loop = asyncio.new_event_loop()
    sections: list[Section] = []
    scales: list[ScaleTable] = []
    try:
        url: str = servers.url
        addresses = [address.rsplit(":", 1) for address in url.removeprefix("redis+cluster://").split(",")]
        nodes = [ClusterNode(host_, int(port)) for host_, port in addresses]  # type: ignore[no-untyped-call]
        sync_client = RedisCluster(startup_nodes=nodes)
        async_client = AsyncCluster(startup_nodes=[AsyncNode(host_, int(port)) for host_, port in addresses])
        loop.run_until_complete(async_client.initialize())
        # The store as a program opens it (its blocking engine), and the same store over the sync bridge
        # (the engine before the blocking one: each call hops to an event-loop thread and back).
        with (
            kv.KvStore.from_url(url, sweep_interval_s=None) as store,
            kv.KvStore(kv.SyncBridge(kv.RedisStore.from_url(url), timeout_s=3.0), sweep_interval_s=None) as bridged,
        ):
            for n in keys:
                section, scale = cluster_section(
                    n, rounds, seed, store, bridged, sync_client, async_client, loop, scale_seconds
                )
                sections.append(section)
                scales.append(scale)
        loop.run_until_complete(async_client.aclose())
        sync_client.close()
    finally:
        loop.close()
        servers.stop()
    return sections, scales, startup


@dataclasses.dataclass
class ScaleTable:
    title: str
    #: contender -> (ops/s, cores its threads used) from 1, 2, 4 threads
    rates: dict[str, list[tuple[float, float]]]


SCALE_THREADS: Final = (1, 2, 4)


def _threads_calls(get: Callable[[str], object], keysets: list[list[str]], seconds: float) -> tuple[float, float]:
    """Calls of `get` per second summed over one thread per key set, all released together, and the cores they used."""
    counts = [0] * len(keysets)
    cpu = [0.0] * len(keysets)
    gate = threading.Barrier(len(keysets))

    def work(slot: int) -> None:
        keys = keysets[slot]
        for key in keys[:50]:
            get(key)
        gate.wait()
        began = time.thread_time()
        ops, at, deadline = 0, 0, time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            for _ in range(50):
                get(keys[at])
                at = at + 1 if at + 1 < len(keys) else 0
            ops += 50
        counts[slot] = ops
        cpu[slot] = time.thread_time() - began

    workers = [threading.Thread(target=work, args=(slot,)) for slot in range(len(keysets))]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(counts) / seconds, sum(cpu) / seconds


def cluster_section(
    n: int,
    rounds: int,
    seed: int,
    store: kv.KvStore,
    bridged: kv.KvStore,
    sync_client: Any,
    async_client: Any,
    loop: Any,
    scale_seconds: float,
) -> tuple[Section, ScaleTable]:
    from wasmkv.kv import _redis_scripts as lua  # noqa: PLC0415

    rng = random.Random(seed * 7_000_003 + n)
    main = make_keys(rng, n)
    quota = kv.Quota(max_keys=n + 10_000, max_bytes=2**40)
    tenant = f"k{n}"
    bucket = store.tenant(tenant, quota).bucket(BUCKET)
    bridged_bucket = bridged.tenant(tenant).bucket(BUCKET)
    started = time.perf_counter()
    for at in range(0, n, CHUNK):
        bucket.set_many([(key, VALUE) for key in main[at : at + CHUNK]])
    store_fill = time.perf_counter() - started
    tag = f"raw:{{r{n}}}:"
    started = time.perf_counter()
    for at in range(0, n, CHUNK):
        pipe = sync_client.pipeline()
        for key in main[at : at + CHUNK]:
            pipe.set(tag + key, VALUE)
        pipe.execute()
    raw_fill = time.perf_counter() - started
    batch = BATCH["redis"]

    def draw() -> list[list[str]]:
        return per_round(rounds, lambda: rng.choices(main, k=batch))

    def raw_keys() -> list[list[bytes]]:
        return [[(tag + key).encode() for key in sequence] for sequence in draw()]

    store_gets, store_sets, bridge_gets, bridge_sets = draw(), draw(), draw(), draw()
    async_gets, async_sets, sync_gets, sync_sets, node_gets = raw_keys(), raw_keys(), raw_keys(), raw_keys(), raw_keys()
    script_sets = draw()
    # The floor of a routed GET: redis-py's client of the node that serves the raw keys' slot, called directly.
    node_client = sync_client.get_redis_connection(sync_client.get_node_from_key(tag))

    # The raw script peers: the store's own write scripts, registered on the raw sync client and called
    # with the arguments the store passes them, on a tenant of their own in the store's layout.
    scripts = lua.register(sync_client, 60_000)
    raw_base = f"wkv:{{raw{n}}}:".encode()
    raw_tenant_keys = [raw_base + b"u", raw_base + b"x", raw_base + b"t"]
    bucket_arg = BUCKET.encode()
    counters = [f"n{i:03d}" for i in range(POOL)]
    cas_keys = [f"c{i:03d}" for i in range(POOL)]
    store_cas, raw_cas = CasState(), CasState()
    bucket.set_many([(key, CAS_A) for key in cas_keys])
    scripts.set_many(
        keys=[*raw_tenant_keys, raw_base + b"o:" + os.urandom(12)],
        args=[raw_base, bucket_arg, quota.max_keys, quota.max_bytes, *itertools.chain(*((k, CAS_A) for k in cas_keys))],
    )

    def raw_script(script: Any, args: list[Any]) -> Any:
        return script(keys=[*raw_tenant_keys, raw_base + b"o:" + os.urandom(12)], args=[raw_base, *args])

    def each(call: Callable[[Any], object], inputs: list[list[Any]]) -> Run:
        """A contender that calls `call` on every input of its round's batch."""

        def body(r: int) -> int:
            for item in inputs[r]:
                call(item)
            return batch

        return timed(body)

    def script_set(key: bytes) -> object:
        return raw_script(scripts.set, [bucket_arg, key, VALUE, "", quota.max_keys, quota.max_bytes])

    def store_increment(r: int) -> int:
        for i in range(batch):
            bucket.increment(counters[i % POOL])
        return batch

    def script_increment(r: int) -> int:
        for i in range(batch):
            key = counters[i % POOL]
            raw_script(scripts.increment, [bucket_arg, key, 1, quota.max_keys, quota.max_bytes, quota.max_value_bytes])
        return batch

    def cas_pass(state: CasState, swap: Callable[[str, bytes, bytes], bool]) -> int:
        old, new = (CAS_A, CAS_B) if state.holds == CAS_A else (CAS_B, CAS_A)
        order = rng.sample(cas_keys, len(cas_keys))
        for key in order:
            state.tries += 1
            state.swaps += bool(swap(key, old, new))
        state.holds = new
        return len(order)

    def store_cas_run(r: int) -> int:
        return sum(cas_pass(store_cas, bucket.compare_and_swap) for _ in range(batch // POOL))

    def script_cas_swap(key: str, old: bytes, new: bytes) -> bool:
        args = [bucket_arg, key, "1", old, new, quota.max_keys, quota.max_bytes]
        return bool(raw_script(scripts.compare_and_swap, args)[1])

    def script_cas_run(r: int) -> int:
        return sum(cas_pass(raw_cas, script_cas_swap) for _ in range(batch // POOL))

    async def async_get_batch(keys: list[bytes]) -> int:
        started = time.perf_counter_ns()
        for key in keys:
            await async_client.get(key)
        return time.perf_counter_ns() - started

    async def async_set_batch(keys: list[bytes]) -> int:
        started = time.perf_counter_ns()
        for key in keys:
            await async_client.set(key, VALUE)
        return time.perf_counter_ns() - started

    def async_get(r: int) -> tuple[int, int]:
        return batch, loop.run_until_complete(async_get_batch(async_gets[r]))

    def async_set(r: int) -> tuple[int, int]:
        return batch, loop.run_until_complete(async_set_batch(async_sets[r]))

    assert bucket.get(main[0]) == VALUE and sync_client.get(tag + main[0]) == VALUE
    runs: dict[str, Run] = {
        "cluster store get": each(bucket.get, store_gets),
        "cluster store get, bridge (before)": each(bridged_bucket.get, bridge_gets),
        "raw redis.asyncio RedisCluster GET": async_get,
        "raw sync RedisCluster GET": each(sync_client.get, sync_gets),
        "raw sync GET on the slot's node client": each(node_client.get, node_gets),
        "cluster store set": each(lambda key: bucket.set(key, VALUE), store_sets),
        "cluster store set, bridge (before)": each(lambda key: bridged_bucket.set(key, VALUE), bridge_sets),
        "raw redis.asyncio RedisCluster SET": async_set,
        "raw sync RedisCluster SET": each(lambda key: sync_client.set(key, VALUE), sync_sets),
        "raw sync set script": each(script_set, script_sets),
        "cluster store increment": timed(store_increment),
        "raw sync increment script": timed(script_increment),
        "cluster store compare_and_swap": timed(store_cas_run),
        "raw sync compare_and_swap script": timed(script_cas_run),
    }
    contenders = {name: Contender(name, run) for name, run in runs.items()}
    interleave(list(contenders.values()), rounds, rng)
    for state in (store_cas, raw_cas):
        assert state.swaps == state.tries, f"{state.tries - state.swaps} of {state.tries} swaps failed"
    rows = [
        Row("cluster store get", "raw redis.asyncio RedisCluster GET", 1.3),
        Row("cluster store get", "raw sync RedisCluster GET", 1.1),
        Row("cluster store get", "raw sync GET on the slot's node client", None),
        Row("cluster store get, bridge (before)", "raw sync RedisCluster GET", None),
        Row("cluster store get, bridge (before)", "cluster store get", None),
        Row("cluster store set", "raw sync set script", 1.3),
        Row("cluster store set", "raw redis.asyncio RedisCluster SET", None),
        Row("cluster store set", "raw sync RedisCluster SET", None),
        Row("cluster store set, bridge (before)", "cluster store set", None),
        Row("cluster store increment", "raw sync increment script", 1.3),
        Row("cluster store compare_and_swap", "raw sync compare_and_swap script", 1.3),
    ]
    notes = [
        f"fill of {n:,} keys: store {store_fill:.2f} s (set_many of {CHUNK}), "
        f"raw {raw_fill:.2f} s (pipelines of {CHUNK})",
        f"batches of {batch} ops; store via `KvStore.from_url` (its blocking engine, no read cache); "
        "bridge (before): the same store over `SyncBridge(RedisStore)`, the engine it replaced",
        "the store sends each call for a tenant straight to the client of the node serving its slot "
        "(redis-py's own, from the cluster client's slot map), so its floor is a GET on that node's client",
        "raw scripts: the store's own Lua scripts (`kv._redis_scripts`) called through redis-py's sync "
        "`Script` with the arguments the store passes (the quota check included), on a tenant of their own; "
        f"increments over {POOL} counters, CAS passes over {POOL} keys (every swap succeeds, checked)",
    ]

    keysets = [rng.choices(main, k=5000) for _ in range(max(SCALE_THREADS))]
    raw_sets = [[tag + key for key in keyset] for keyset in keysets]
    getters: dict[str, Callable[[str], object]] = {
        "cluster store get": bucket.get,
        "cluster store get, bridge (before)": bridged_bucket.get,
        "raw sync RedisCluster GET (one shared client)": sync_client.get,
    }
    rates: dict[str, list[tuple[float, float]]] = {name: [] for name in getters}
    for threads in SCALE_THREADS:
        for name, get in getters.items():
            sets = raw_sets if name.startswith("raw") else keysets
            rates[name].append(_threads_calls(get, sets[:threads], scale_seconds))
    title = f"Redis Cluster thread scaling: gets of random keys, {n:,} keys, {scale_seconds:g} s each"
    return Section(f"Redis Cluster, {n:,} keys", notes, contenders, rows), ScaleTable(title, rates)


def print_scale(table: ScaleTable) -> None:
    print(f"\n## {table.title}\n")
    heads = " | ".join(f"{t} thread{'s' * (t > 1)}" for t in SCALE_THREADS)
    print(f"| contender | {heads} | {max(SCALE_THREADS)} vs 1 |")
    print("|---|" + "---:|" * (len(SCALE_THREADS) + 1))
    for name, rates in table.rates.items():
        cells = " | ".join(f"{rate:,.0f}/s ({cores:.2f})" for rate, cores in rates)
        print(f"| {name} | {cells} | {rates[-1][0] / rates[0][0]:.2f}x |")
    print(
        "\n(in brackets: the CPU the client threads got, in cores, from `time.thread_time`; the cluster's six "
        f"servers share the machine's {os.cpu_count()} cores with them and with any other work, so a busy machine "
        "caps what more threads can add; the bridge's own work runs on its loop thread, not counted)"
    )


# -- report ----------------------------------------------------------------------------------------------


def print_section(section: Section, rounds: int) -> None:
    print(f"\n## {section.title}\n")
    for note in section.notes:
        print(f"- {note}")
    print(f"- median µs/op over {rounds} interleaved rounds (fresh random order each round)\n")
    print("| contender | µs/op | peer | peer µs/op | ratio | target | met? |")
    print("|---|---:|---|---:|---:|---:|---|")
    for row in section.rows:
        mine = section.contenders[row.contender].median
        if row.peer is None:
            print(f"| {row.contender} | {mine:.3f} | — | — | — | — | — |")
            continue
        theirs = section.contenders[row.peer].median
        ratio = mine / theirs
        target = "—" if row.target is None else f"≤ {row.target:g}x"
        met = "—" if row.target is None else ("yes" if ratio <= row.target else "**no**")
        print(f"| {row.contender} | {mine:.3f} | {row.peer} | {theirs:.3f} | {ratio:.2f}x | {target} | {met} |")
    spread = {name: iqr_share(contender.samples) for name, contender in section.contenders.items()}
    noisiest = max(spread, key=spread.__getitem__)
    print(f"\nnoisiest contender: {noisiest}, interquartile range {spread[noisiest]:.0%} of its median")


def iqr_share(samples: list[float]) -> float:
    """The interquartile range of `samples` as a share of their median."""
    if len(samples) < 4:
        return 0.0
    low, _, high = statistics.quantiles(samples, n=4)
    return (high - low) / statistics.median(samples)


def filesystem_of(path: Path) -> str:
    best, kind = "", "?"
    try:
        with open("/proc/mounts") as mounts:
            for line in mounts:
                fields = line.split()
                if len(fields) > 2 and str(path).startswith(fields[1]) and len(fields[1]) > len(best):
                    best, kind = fields[1], fields[2]
    except OSError:
        pass
    return kind


def source_state() -> str:
    """The commit measured, and how many files of kv/ and host/ differ from it (others edit them meanwhile)."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--", "kv", "host"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return "source: not a git checkout"
    return f"source: {head}" + (f" + uncommitted changes in {len(changed)} file(s) of kv/, host/" if changed else "")


def version_of(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--keys", default="1000,200000", help="comma-separated key counts (default 1000,200000)")
    parser.add_argument("--skip-cluster", action="store_true", help="leave out the Redis Cluster comparison")
    parser.add_argument("--only-cluster", action="store_true", help="run only the Redis Cluster comparison")
    parser.add_argument("--rounds", type=int, default=41, help="interleaved rounds per section (default 41)")
    parser.add_argument("--scale-seconds", type=float, default=2.0, help="seconds per scaling measurement")
    parser.add_argument("--dir", default=os.environ.get("BENCH_DIR"), help="where the stores live (default: $TMPDIR)")
    parser.add_argument("--seed", type=int, default=2024)
    args = parser.parse_args()
    counts = [int(part.replace("_", "")) for part in args.keys.split(",") if part.strip()]
    began = time.perf_counter()

    with scratch_dir(args.dir) as scratch:
        print(
            f"# wasmkv compared with its peers — {time.strftime('%Y-%m-%d %H:%M')}, {platform.machine()}, "
            f"{os.cpu_count()} cores, Python {platform.python_version()}"
        )
        print(
            f"\nlmdb {version_of('lmdb')} (LMDB {'.'.join(map(str, lmdb.version()))}), "
            f"sqlite {sqlite3.sqlite_version}, "
            f"wasmtime {version_of('wasmtime')}, extism {version_of('extism')} "
            f"(extism-sys {version_of('extism-sys')}), redis-py {version_of('redis')}; "
            f"stores in {scratch} ({filesystem_of(scratch)}); keys 16 hex chars, values 64 bytes; "
            f"load average at start {os.getloadavg()[0]:.2f}"
        )
        print(f"\n{source_state()}")
        sys.stdout.flush()
        largest: tuple[int, list[str]] | None = None
        for n in [] if args.only_cluster else counts:
            section_began = time.perf_counter()
            section, main_keys = local_section(n, args.rounds, scratch, args.seed)
            section.notes.append(f"section took {time.perf_counter() - section_began:.1f} s")
            print_section(section, args.rounds)
            sys.stdout.flush()
            if largest is None or n >= largest[0]:
                largest = (n, main_keys)
            if n != max(counts):
                shutil.rmtree(scratch / f"store-{n}", ignore_errors=True)
                shutil.rmtree(scratch / f"raw-{n}", ignore_errors=True)

        if largest is not None:
            n, main_keys = largest
            scale_began = time.perf_counter()
            results = scaling(scratch / f"store-{n}", main_keys, args.scale_seconds, args.seed)
            print(f"\n## Scaling: store gets of random keys, {n:,} keys, {args.scale_seconds:g} s each\n")
            print("| readers | ops/s | vs 1 thread | CPU used (cores) | ops per CPU-second |")
            print("|---|---:|---:|---:|---:|")
            for label, rate, cores in results:
                print(
                    f"| {label} | {rate:,.0f} | {rate / results[0][1]:.2f}x | {cores:.2f} | "
                    f"{rate / cores if cores else 0:,.0f} |"
                )
            print(
                f"\n(scaling took {time.perf_counter() - scale_began:.1f} s, process start-up excluded; "
                f"load average now {os.getloadavg()[0]:.2f}: other work on the machine takes cores from the readers)"
            )
            sys.stdout.flush()

    if args.skip_cluster:
        print("\n## Redis Cluster\n\nskipped (--skip-cluster)")
    elif shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        print("\n## Redis Cluster\n\nskipped: redis-server or redis-cli is not on PATH")
    else:
        cluster_began = time.perf_counter()
        sections, scales, startup = cluster_sections(counts, args.rounds, args.seed, args.scale_seconds)
        for section, scale in zip(sections, scales, strict=True):
            section.notes.insert(0, startup)
            print_section(section, args.rounds)
            print_scale(scale)
        print(f"\n(cluster part took {time.perf_counter() - cluster_began:.1f} s)")
    print(f"\ntotal run time {time.perf_counter() - began:.1f} s; load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
