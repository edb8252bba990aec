"""The Redis engines' SCAN walks, written once in `kv._redis_core` and made a call per page by both engines.

A first-format upgrade lists the tenants' index keys and `delete_tenant` unlinks a tenant's keys, each by a
SCAN of the whole keyspace. These run both engines over keyspaces of many pages (a small `SCAN_COUNT`) on a
real server and cluster, and the blocking engine over fake servers that drop the connection mid-walk: a
failed page is resent alone, from its own cursor, and a call on a server that keeps failing one ends within
the bound of its last page.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable

import _servers
import pytest
import redis
from test_redis_sync_attacks import _handshake, _timed

from wasmkv import kv
from wasmkv.kv import _redis_core
from wasmkv.kv._redis_core import STORE_FORMAT
from wasmkv.kv._redis_sync import RedisSyncStore

ACME = kv.Namespace("acme", "default")
TIMEOUT_S = 1.0
#: Scheduling delay a loaded machine may add to a call (not a hang: a hang is many timeouts).
SLACK_S = 0.5
#: A SCAN page and an UNLINK batch far smaller than the engines', so a few hundred keys are many of each.
SMALL_SCAN_COUNT = 10
SMALL_UNLINK_BATCH = 7

Answer = Callable[[list[bytes], int], bytes | None]


@pytest.fixture
def small_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_redis_core, "SCAN_COUNT", SMALL_SCAN_COUNT)
    monkeypatch.setattr(_redis_core, "UNLINK_BATCH", SMALL_UNLINK_BATCH)


# -- real servers: many pages, either engine -------------------------------------------------------------


def _raw(kind: str) -> redis.Redis | redis.RedisCluster:
    if kind == "redis":
        return redis.Redis.from_url(_servers.single().url)
    return redis.RedisCluster(host=_servers.HOST, port=_servers.cluster().live_nodes()[0].port)


def _url(kind: str) -> str:
    return _servers.single().url if kind == "redis" else _servers.cluster().url


def _commands(raw: redis.Redis | redis.RedisCluster, name: str) -> int:
    """How many `name` commands the server (every primary of a cluster) has run."""
    if isinstance(raw, redis.Redis):
        return int(raw.info("commandstats").get(f"cmdstat_{name}", {}).get("calls", 0))
    stats = raw.info("commandstats", target_nodes=redis.RedisCluster.PRIMARIES)  # type: ignore[no-untyped-call]
    return sum(int(node.get(f"cmdstat_{name}", {}).get("calls", 0)) for node in stats.values())


def _primaries(raw: redis.Redis | redis.RedisCluster) -> int:
    return 1 if isinstance(raw, redis.Redis) else len(raw.get_primaries())  # type: ignore[no-untyped-call]


def _run_engine(engine: str, url: str, prefix: str, call: str, *args: object) -> object:
    """`call(*args)` as the first call of a fresh store of `engine` ("sync" or "async") on `url`."""
    if engine == "sync":
        with RedisSyncStore.from_url(url, key_prefix=prefix) as store:
            return getattr(store, call)(*args)

    async def run() -> object:
        store = kv.RedisStore.from_url(url, key_prefix=prefix)
        try:
            return await getattr(store, call)(*args)
        finally:
            await store.aclose()

    return asyncio.run(run())


@pytest.mark.parametrize("kind", ["redis", "redis-cluster"])
@pytest.mark.parametrize("engine", ["sync", "async"])
def test_an_upgrade_over_many_scan_pages_records_every_tenant(engine: str, kind: str, small_pages: None) -> None:
    # A first-format store (index keys, no format record) of more index keys than many SCAN pages hold: the
    # upgrade, the first call of a fresh store, finds every one, on every node.
    prefix = f"p{uuid.uuid4().hex[:12]}"
    tenants = [f"n{i:03d}" for i in range(150)]
    with _raw(kind) as raw:
        pipe = raw.pipeline(transaction=False)
        for tenant in tenants:
            pipe.zadd(f"{prefix}:{{{tenant}}}:i:b", {b"k": 0})
            pipe.set(f"{prefix}:{{{tenant}}}:d:b:k", b"v")  # matches no index pattern: scanned, not taken
        pipe.execute()
        scans_before = _commands(raw, "scan")
        assert _run_engine(engine, _url(kind), prefix, "tenants") == tenants
        scans = _commands(raw, "scan") - scans_before
        # A page examines about SCAN_COUNT hash buckets (a key or two each): these 300 keys are many pages, where
        # the engines' own SCAN_COUNT would make them one per node.
        assert scans >= len(tenants) // SMALL_SCAN_COUNT, scans
        assert raw.get(f"{prefix}:format") == str(STORE_FORMAT).encode()
    assert _run_engine(engine, _url(kind), prefix, "buckets", tenants[-1]) == ["b"]


@pytest.mark.parametrize("kind", ["redis", "redis-cluster"])
@pytest.mark.parametrize("engine", ["sync", "async"])
def test_delete_tenant_over_many_scan_pages_and_unlink_batches_removes_and_counts_every_key(
    engine: str, kind: str, small_pages: None
) -> None:
    prefix = f"p{uuid.uuid4().hex[:12]}"
    keys = [b"k%03d" % i for i in range(120)]
    with RedisSyncStore.from_url(_url(kind), key_prefix=prefix) as writer:
        writer.set_many(ACME, [(key, b"v") for key in keys], kv.Quota())
        writer.set(ACME, b"ttl", b"v", 60_000, kv.Quota())  # a TTL'd key: its `x` and `t` records go too
        writer.put_tenant_quota("acme", kv.Quota(max_keys=1000))
        writer.set(kv.Namespace("other", "default"), b"k", b"v", None, kv.Quota())
    with _raw(kind) as raw:
        stored = len(list(raw.scan_iter(match=f"{prefix}:{{acme}}:*")))
        assert stored > len(keys)  # data keys, and the tenant's index, usage, TTL, bucket and quota records
        unlinks_before = _commands(raw, "unlink")
        # The first call of a fresh store: a cluster's primaries are taken once its client is ready.
        assert _run_engine(engine, _url(kind), prefix, "delete_tenant", "acme") == len(keys) + 1
        unlinks = _commands(raw, "unlink") - unlinks_before
        assert unlinks >= -(-stored // SMALL_UNLINK_BATCH), (unlinks, stored)
        assert list(raw.scan_iter(match=f"{prefix}:{{acme}}:*")) == []
        assert raw.get(f"{prefix}:{{other}}:d:default:k") == b"v"
    assert _run_engine(engine, _url(kind), prefix, "tenants") == ["other"]


# -- fake servers: pages that fail, on the blocking engine -----------------------------------------------


def _first_format(pages: int, fail: Callable[[int, int], bool]) -> tuple[Answer, list[int]]:
    """A server holding a first-format store (no format record) whose keyspace is `pages` prompt SCAN pages,
    each with one tenant's index key; a SCAN of cursor c on the n-th SCAN of its connection hangs up the
    connection if `fail(c, n)`. Also the cursors of every SCAN asked for, in order."""
    asked: list[int] = []
    per_connection: dict[int, int] = {}
    lock = threading.Lock()

    def answer(command: list[bytes], connection: int) -> bytes | None:
        if (handshake := _handshake(command)) is not None:
            return handshake
        name = command[0].upper()
        if name == b"SCAN":
            cursor = int(command[1])
            with lock:
                asked.append(cursor)
                per_connection[connection] = per_connection.get(connection, 0) + 1
                nth = per_connection[connection]
            if fail(cursor, nth):
                raise OSError("hang up")  # the fake's serving loop closes the connection
            following = b"%d" % ((cursor + 1) % pages)
            key = b"wkv:{t%d}:i:b" % cursor
            return b"*2\r\n$%d\r\n%s\r\n*1\r\n$%d\r\n%s\r\n" % (len(following), following, len(key), key)
        replies = {b"GET": b"_\r\n", b"ZCARD": b":1\r\n", b"SADD": b":1\r\n", b"SET": b"+OK\r\n"}
        return replies.get(name)

    return answer, asked


def test_a_scan_page_that_fails_once_is_resent_alone_not_from_the_first_page(fake) -> None:  # type: ignore[no-untyped-def]
    failed: list[int] = []

    def fail(cursor: int, _: int) -> bool:
        if cursor == 3 and not failed:
            failed.append(cursor)
            return True
        return False

    answer, asked = _first_format(6, fail)
    server = fake(answer)
    with RedisSyncStore.from_url(server.url, timeout_s=TIMEOUT_S) as store:
        elapsed, exc = _timed(lambda: store.get(ACME, b"k"))
    assert exc is None, exc
    # The fourth page went again from its own cursor, on a new connection; the walk did not start over.
    assert asked == [0, 1, 2, 3, 3, 4, 5]
    assert server.connections == 2
    # Every page's tenant was recorded once the walk completed, and the format after them.
    sadds = [command for command in server.commands if command[0].upper() == b"SADD"]
    assert {command[2] for command in sadds if command[1] == b"wkv:tenants"} == {b"t%d" % i for i in range(6)}
    assert [command[1] for command in server.commands if command[0].upper() == b"SET"] == [b"wkv:format"]
    assert elapsed < TIMEOUT_S + SLACK_S, elapsed


def test_a_server_that_drops_the_connection_every_few_scan_pages_still_completes_an_upgrade(fake) -> None:  # type: ignore[no-untyped-def]
    # Each connection answers three SCANs and hangs up on the fourth. Resent from the first page, the walk
    # never got past the third and the call failed by its deadline; resent alone, each page goes on.
    answer, asked = _first_format(20, lambda _, nth: nth > 3)
    server = fake(answer)
    with RedisSyncStore.from_url(server.url, timeout_s=TIMEOUT_S) as store:
        elapsed, exc = _timed(lambda: store.get(ACME, b"k"))
    assert exc is None, exc
    assert elapsed < TIMEOUT_S + SLACK_S, elapsed
    # Every page in order, each once more where a connection hung up on it.
    assert sorted(set(asked)) == list(range(20)) and asked == sorted(asked), asked
    assert all(asked.count(cursor) <= 2 for cursor in range(20)), asked
    assert server.connections > 5  # it did hang up, again and again
    sadds = [command for command in server.commands if command[0].upper() == b"SADD"]
    assert {command[2] for command in sadds if command[1] == b"wkv:tenants"} == {b"t%d" % i for i in range(20)}


def test_a_server_that_keeps_failing_a_scan_page_fails_the_call_within_the_bound_of_its_last_page(fake) -> None:  # type: ignore[no-untyped-def]
    # Three prompt pages, then every SCAN of the fourth hangs up its connection: resends of that page alone
    # keep to its deadline, which no page restarts any more.
    answer, asked = _first_format(6, lambda cursor, _: cursor >= 3)
    server = fake(answer)
    with RedisSyncStore.from_url(server.url, timeout_s=TIMEOUT_S) as store:
        outcome: list[tuple[float, BaseException | None]] = []
        worker = threading.Thread(target=lambda: outcome.append(_timed(lambda: store.get(ACME, b"k"))), daemon=True)
        worker.start()
        worker.join(3 * TIMEOUT_S + SLACK_S)
        hung = worker.is_alive()
        server.close()  # refused connections then fail any resend still going
        worker.join(10)
    assert not hung, f"still resending after {3 * TIMEOUT_S + SLACK_S} s, {server.connections} connections"
    elapsed, exc = outcome[0]
    assert isinstance(exc, kv.BackendUnavailable), exc
    assert elapsed < 1.5 * TIMEOUT_S + SLACK_S, elapsed
    assert asked[:3] == [0, 1, 2] and set(asked[3:]) == {3}, asked
    assert len(asked) > 4  # the failing page was resent, alone


@pytest.mark.parametrize(
    "reply",
    [
        b"*2\r\n$1\r\n0\r\n:7\r\n",  # keys: a number
        b"*2\r\n$1\r\n0\r\n*1\r\n:5\r\n",  # a key: a number
        b"*2\r\n$2\r\n-1\r\n*0\r\n",  # a cursor below 0
        b"*2\r\n$1\r\n0\r\n*1\r\n*0\r\n",  # a key: an array
    ],
)
def test_a_scan_reply_of_the_wrong_shape_fails_the_call_in_one_line(fake, reply: bytes) -> None:  # type: ignore[no-untyped-def]
    # The driver checks no more than that a SCAN reply has two parts: the rest is the walk's to check.
    def answer(command: list[bytes], _: int) -> bytes | None:
        if (handshake := _handshake(command)) is not None:
            return handshake
        name = command[0].upper()
        return reply if name == b"SCAN" else {b"GET": b"_\r\n", b"SET": b"+OK\r\n"}.get(name)

    server = fake(answer)
    with RedisSyncStore.from_url(server.url, timeout_s=TIMEOUT_S) as store:
        elapsed, exc = _timed(lambda: store.get(ACME, b"k"))
    assert isinstance(exc, kv.BackendUnavailable), exc
    assert "\n" not in str(exc) and "SCAN" in str(exc), exc
    assert elapsed < 1.5 * TIMEOUT_S + SLACK_S, elapsed


# -- what a SCAN returns is checked, not trusted ---------------------------------------------------------


@pytest.mark.parametrize("engine", ["sync", "async"])
def test_an_upgrade_takes_only_index_keys_though_a_data_key_matches_the_glob(engine: str) -> None:
    # `P:{*}:i:*` matches a data key holding "}:i:" (printable ASCII: any plugin may write one). Taken for an
    # index key, its ZCARD failed with WRONGTYPE and every first call of the store failed, for ever.
    prefix = f"p{uuid.uuid4().hex[:12]}"
    with _raw("redis") as raw:
        raw.zadd(f"{prefix}:{{acme}}:i:b", {b"k": 0})
        raw.set(f"{prefix}:{{acme}}:d:b:k", b"v")
        raw.set(f"{prefix}:{{acme}}:d:b:x}}:i:y", b"v")
        assert _run_engine(engine, _url("redis"), prefix, "tenants") == ["acme"]
        assert raw.get(f"{prefix}:format") == str(STORE_FORMAT).encode()


def _recording(
    scan_keys: list[bytes], *, format_record: bool, drop_first_unlink_reply: bool = False
) -> tuple[Answer, list[list[bytes]]]:
    """A server whose one SCAN page returns `scan_keys`, whose scripts all answer a usage of 2 keys, and which
    records the argument lists of the UNLINKs it receives (the first one's reply lost, if asked: applied, then
    the connection closed)."""
    unlinked: list[list[bytes]] = []

    def answer(command: list[bytes], _: int) -> bytes | None:
        if (handshake := _handshake(command)) is not None:
            return handshake
        name = command[0].upper()
        if name == b"SCAN":
            items = b"".join(b"$%d\r\n%s\r\n" % (len(key), key) for key in scan_keys)
            return b"*2\r\n$1\r\n0\r\n*%d\r\n%s" % (len(scan_keys), items)
        if name == b"UNLINK":
            unlinked.append(command[1:])
            if drop_first_unlink_reply and len(unlinked) == 1:
                raise OSError("hang up")  # the fake's serving loop closes the connection: the reply is lost
            return b":%d\r\n" % (len(command) - 1)
        if name in (b"EVALSHA", b"EVAL"):
            return b"*3\r\n:0\r\n:2\r\n:10\r\n"  # the usage script: (status, keys, bytes)
        if name == b"GET":
            return b"$1\r\n%d\r\n" % STORE_FORMAT if format_record else b"_\r\n"
        replies = {b"SREM": b":1\r\n", b"SET": b"+OK\r\n", b"ZCARD": b":1\r\n", b"SADD": b":1\r\n"}
        return replies.get(name)

    return answer, unlinked


@pytest.mark.parametrize("lost_reply", [False, True])
def test_delete_tenant_unlinks_only_the_tenants_keys_and_counts_them_once_whatever_scan_and_unlink_say(  # type: ignore[no-untyped-def]
    fake, lost_reply: bool
) -> None:
    # Redis may return a key twice while it rehashes, a server that is not Redis anything, and an UNLINK
    # whose reply was lost is resent (and removes nothing the second time): the count is the tenant's own.
    keys = [b"wkv:{acme}:d:b:k1", b"wkv:{acme}:d:b:k2", b"wkv:{acme}:d:b:k1", b"wkv:{acme}:u", b"wkv:{other}:d:b:k"]
    answer, unlinked = _recording([*keys, b"elsewhere"], format_record=True, drop_first_unlink_reply=lost_reply)
    server = fake(answer)
    with RedisSyncStore.from_url(server.url, timeout_s=TIMEOUT_S) as store:
        assert store.delete_tenant("acme") == 2
    sent = [key for batch in unlinked for key in batch]
    assert all(key.startswith(b"wkv:{acme}:") for key in sent), sent
    assert set(sent) == {b"wkv:{acme}:d:b:k1", b"wkv:{acme}:d:b:k2", b"wkv:{acme}:u"}
    assert len(unlinked) == (2 if lost_reply else 1)


def test_an_upgrade_ignores_scanned_keys_that_are_not_index_keys(fake) -> None:  # type: ignore[no-untyped-def]
    # Not UTF-8, a tenant that is no name, no index marker at all: each failed the upgrade with a raw error.
    keys = [b"wkv:{\xff}:i:b", b"wkv:{a b}:i:b", b"wkv:{acme}:i:b", b"junk", b"wkv:{acme}:i:"]
    answer, _ = _recording(keys, format_record=False)
    server = fake(answer)
    with RedisSyncStore.from_url(server.url, timeout_s=TIMEOUT_S) as store:
        assert store.get(ACME, b"k") is None
    sadds = [command for command in server.commands if command[0].upper() == b"SADD"]
    assert {(command[1], command[2]) for command in sadds} == {(b"wkv:tenants", b"acme"), (b"wkv:{acme}:b", b"b")}


@pytest.mark.parametrize("engine", ["sync", "async"])
def test_a_cursor_of_thousands_of_digits_fails_the_call_in_one_line(fake, engine: str) -> None:  # type: ignore[no-untyped-def]
    # redis-py turns the cursor into an int: past 4300 digits Python refuses with a ValueError.
    cursor = b"9" * 5000

    def answer(command: list[bytes], _: int) -> bytes | None:
        if (handshake := _handshake(command)) is not None:
            return handshake
        name = command[0].upper()
        if name == b"SCAN":
            return b"*2\r\n$%d\r\n%s\r\n*0\r\n" % (len(cursor), cursor)
        return {b"GET": b"_\r\n", b"SET": b"+OK\r\n"}.get(name)

    server = fake(answer)
    if engine == "sync":
        with RedisSyncStore.from_url(server.url, timeout_s=TIMEOUT_S) as store:
            elapsed, exc = _timed(lambda: store.get(ACME, b"k"))
    else:

        async def run() -> None:
            store = kv.RedisStore.from_url(server.url, timeout_s=TIMEOUT_S)
            try:
                await store.get(ACME, b"k")
            finally:
                await store.aclose()

        elapsed, exc = _timed(lambda: asyncio.run(run()))
    assert isinstance(exc, kv.BackendUnavailable), exc
    assert "\n" not in str(exc) and "cannot read" in str(exc), exc
    assert elapsed < 1.5 * TIMEOUT_S + SLACK_S, elapsed
