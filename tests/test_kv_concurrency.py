"""Threads hammering the same keys end exact, and never push a tenant past its quota."""

from __future__ import annotations

import threading
from collections.abc import Callable

from wasmkv import kv

THREADS = 8


def _run(worker: Callable[[int], None]) -> None:
    start = threading.Barrier(THREADS)
    errors: list[BaseException] = []

    def wrapped(n: int) -> None:
        start.wait()
        try:
            worker(n)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=wrapped, args=(n,)) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


def test_concurrent_increments_are_exact(store: kv.KvStore) -> None:
    bucket = store.tenant("acme").bucket()
    _run(lambda n: [bucket.increment("n", 1 + n % 2) for _ in range(400)])
    assert bucket.get("n") == str(400 * sum(1 + n % 2 for n in range(THREADS))).encode()


def test_concurrent_cas_loops_lose_no_update(store: kv.KvStore) -> None:
    bucket = store.tenant("acme").bucket()
    retries = [0] * THREADS

    def worker(n: int) -> None:
        for _ in range(200):
            while True:
                old = bucket.get("n")
                if bucket.compare_and_swap("n", old, str(int(old or b"0") + 1).encode()):
                    break
                retries[n] += 1

    _run(worker)
    assert bucket.get("n") == str(200 * THREADS).encode()


def test_cas_on_an_absent_key_has_exactly_one_winner(store: kv.KvStore) -> None:
    bucket = store.tenant("acme").bucket()
    for round_ in range(20):
        winners: list[int] = []

        def contend(n: int, key: str = f"lock{round_}", won: list[int] = winners) -> None:
            if bucket.compare_and_swap(key, None, b"%d" % n):
                won.append(n)

        _run(contend)
        assert len(winners) == 1
        assert bucket.get(f"lock{round_}") == b"%d" % winners[0]


def test_concurrent_writers_never_exceed_the_quota(store: kv.KvStore) -> None:
    tenant = store.tenant("small", kv.Quota(max_keys=100, max_bytes=100 * 12))
    accepted = [0] * THREADS

    def worker(n: int) -> None:
        bucket = tenant.bucket("a" if n % 2 else "b")
        for i in range(60):
            try:
                if i % 3 == 0:
                    bucket.set_many({f"t{n}-{i}-x": b"v" * 6, f"t{n}-{i}-y": b"v" * 6})
                    accepted[n] += 2
                else:
                    bucket.set(f"t{n}-{i}", b"v" * 6)
                    accepted[n] += 1
            except kv.QuotaExceeded:
                pass

    _run(worker)
    usage = tenant.usage()
    assert usage.keys == sum(accepted)
    assert usage.keys <= 100
    assert usage.bytes <= 1200
    # Every rejection happened at the limit: with plenty offered, the tenant ends full.
    assert usage.keys >= 99
