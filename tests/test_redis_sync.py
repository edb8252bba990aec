"""The blocking Redis engine (`RedisSyncStore`) beside the async one (`RedisStore`): one layout, one quota.

`KvStore.from_url` runs every synchronous call on the blocking engine, so the
engine contract (conftest.py) already runs over it; these tests cover what
only the pairing shows: data and quotas shared with the async engine, calls
from many threads, closing, and calls sent straight to a slot's node. The read
cache in front of it is tested beside the async one in test_cluster.py.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator

import _servers
import pytest

from wasmkv import kv
from wasmkv.kv._read_cache import SyncReadCache
from wasmkv.kv._redis_sync import RedisSyncStore

ACME = kv.Namespace("acme", "default")


def _prefix() -> str:
    return f"s{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=["redis", "redis-cluster"])
def url(request: pytest.FixtureRequest) -> str:
    return _servers.single().url if request.param == "redis" else _servers.cluster().url


@pytest.fixture
def sync_store(url: str) -> Iterator[RedisSyncStore]:
    with RedisSyncStore.from_url(url, key_prefix=_prefix()) as store:
        yield store


def _async_twin(store: RedisSyncStore, url: str) -> kv.RedisStore:
    return kv.RedisStore.from_url(url, key_prefix=store.key_prefix)


def test_what_either_engine_writes_the_other_reads_with_one_usage_and_one_quota(
    sync_store: RedisSyncStore, url: str
) -> None:
    quota = kv.Quota(max_keys=4, max_bytes=1000)
    sync_store.set(ACME, b"from-sync", b"1", None, quota)
    sync_store.set(ACME, b"ttl", b"t", 60_000, quota)

    async def from_async() -> tuple[object, ...]:
        engine = _async_twin(sync_store, url)
        try:
            seen = (
                await engine.get(ACME, b"from-sync"),
                await engine.ttl(ACME, b"ttl") is not None,
                await engine.usage("acme"),
            )
            await engine.set(ACME, b"from-async", b"22", None, quota)
            assert await engine.increment(ACME, b"n", 5, quota) == 5
            # The quota counts both engines' keys: a fifth key is refused, whichever engine writes it.
            with pytest.raises(kv.QuotaExceeded):
                await engine.set(ACME, b"fifth", b"", None, quota)
            return seen
        finally:
            await engine.aclose()

    assert asyncio.run(from_async()) == (b"1", True, kv.Usage(keys=2, bytes=len("from-sync1ttlt")))
    assert sync_store.get(ACME, b"from-async") == b"22"
    assert sync_store.increment(ACME, b"n", 1, quota) == 6
    with pytest.raises(kv.QuotaExceeded):
        sync_store.set(ACME, b"fifth", b"", None, quota)
    assert sync_store.usage("acme") == kv.Usage(keys=4, bytes=len("from-sync1ttltfrom-async22n6"))
    assert sync_store.list_keys(ACME, kv.KeyRange(b""), None, 10) == (
        [b"from-async", b"from-sync", b"n", b"ttl"],
        False,
    )
    assert sync_store.tenants() == ["acme"]
    assert sync_store.buckets("acme") == ["default"]


def test_threads_sharing_the_blocking_engine_count_exactly(sync_store: RedisSyncStore) -> None:
    quota = kv.Quota()
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(200):
                sync_store.increment(ACME, b"n", 1, quota)
                while True:
                    old = sync_store.get(ACME, b"c")
                    new = str(int(old or b"0") + 1).encode()
                    if sync_store.compare_and_swap(ACME, b"c", old, new, quota):
                        break
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sync_store.get_many(ACME, [b"n", b"c"]) == [b"1200", b"1200"]


def test_deleting_a_tenant_written_by_both_engines_removes_everything(sync_store: RedisSyncStore, url: str) -> None:
    quota = kv.Quota()
    sync_store.set_many(ACME, [(b"k%d" % i, b"v") for i in range(1200)], quota)
    sync_store.put_tenant_quota("acme", kv.Quota(max_keys=5000))

    async def write() -> None:
        engine = _async_twin(sync_store, url)
        try:
            await engine.set(kv.Namespace("acme", "other"), b"x", b"y", 60_000, quota)
        finally:
            await engine.aclose()

    asyncio.run(write())
    assert sync_store.delete_tenant("acme") == 1201
    assert sync_store.tenants() == []
    assert sync_store.tenant_quota("acme") is None
    assert sync_store.usage("acme") == kv.Usage(keys=0, bytes=0)


def test_close_is_idempotent_and_later_calls_fail_cleanly(url: str) -> None:
    store = RedisSyncStore.from_url(url, key_prefix=_prefix())
    store.set(ACME, b"k", b"v", None, kv.Quota())
    store.close()
    store.close()
    assert store.closed
    with pytest.raises(kv.BackendUnavailable, match="closed"):
        store.get(ACME, b"k")
    never_used = RedisSyncStore.from_url(url)
    never_used.close()
    with pytest.raises(kv.BackendUnavailable, match="closed"):
        never_used.get(ACME, b"k")


def test_closing_ends_calls_in_flight_on_other_threads_cleanly(url: str) -> None:
    store = RedisSyncStore.from_url(url, key_prefix=_prefix())
    outcomes: list[str] = []
    started = threading.Event()

    def work() -> None:
        try:
            while True:
                store.increment(ACME, b"n", 1, kv.Quota())
                started.set()
        except kv.BackendUnavailable as exc:
            outcomes.append(str(exc))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    assert started.wait(30)
    store.close()
    for thread in threads:
        thread.join(30)
    assert len(outcomes) == 4
    assert all("closed" in outcome for outcome in outcomes)


def test_from_url_runs_sync_calls_on_the_blocking_engine_with_the_read_cache_in_front(url: str) -> None:
    with kv.KvStore.from_url(url, key_prefix=_prefix(), sweep_interval_s=None) as plain:
        assert isinstance(plain.engine, RedisSyncStore)
    with kv.KvStore.from_url(url, key_prefix=_prefix(), read_cache_size=10, sweep_interval_s=None) as cached:
        assert isinstance(cached.engine, SyncReadCache)
        assert isinstance(cached.engine.engine, RedisSyncStore)


@pytest.fixture
def own_cluster() -> Iterator[_servers.RedisClusterServers]:
    """A cluster of its own (3 masters, no replicas), as moving a slot changes it for good."""
    servers = _servers.RedisClusterServers(3, 0).start()
    try:
        yield servers
    finally:
        servers.stop()


def _node_id(node: _servers.RedisServer) -> str:
    with node.client() as conn:
        return str(conn.execute_command("CLUSTER", "MYID").decode())


def test_calls_sent_straight_to_a_slots_node_follow_the_slot_as_it_migrates(
    own_cluster: _servers.RedisClusterServers,
) -> None:
    quota = kv.Quota()
    with RedisSyncStore.from_url(own_cluster.url, key_prefix=_prefix()) as store:
        store.set_many(ACME, [(b"k%d" % i, b"v%d" % i) for i in range(20)], quota)
        assert store.increment(ACME, b"n", 1, quota) == 1
        source = own_cluster.master_of("{acme}")
        target = next(node for node in own_cluster.live_nodes() if node is not source)
        with source.client() as conn:
            slot = int(conn.execute_command("CLUSTER", "KEYSLOT", "{acme}"))
            names = conn.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1000)
        source_id, target_id = _node_id(source), _node_id(target)
        with target.client() as conn:
            conn.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        with source.client() as conn:
            conn.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
            # Half the keys moved: the source answers ASK for those, and serves the rest.
            moved = [name for name in names if b":d:default:k1" in name]
            conn.execute_command("MIGRATE", _servers.HOST, target.port, "", 0, 5000, "KEYS", *moved)
        assert store.get(ACME, b"k1") == b"v1"  # moved: ASK, followed by the cluster client
        assert store.get(ACME, b"k2") == b"v2"  # not yet moved
        with source.client() as conn:
            rest = conn.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1000)
            conn.execute_command("MIGRATE", _servers.HOST, target.port, "", 0, 5000, "KEYS", *rest)
        for node in own_cluster.live_nodes():
            with node.client() as conn:
                conn.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        # The store's slot map still names the source: MOVED, followed, and the map is updated.
        assert store.get_many(ACME, [b"k0", b"k19"]) == [b"v0", b"v19"]
        assert store.increment(ACME, b"n", 1, quota) == 2
        assert store.usage("acme") == kv.Usage(keys=21, bytes=sum(len(b"k%dv%d" % (i, i)) for i in range(20)) + 2)
        client = store.client
        assert client is not None
        assert client.get_node_from_key(b"{acme}").port == target.port  # type: ignore[union-attr]


def test_a_cluster_node_that_stops_answering_fails_calls_within_the_bound_and_recovers(
    own_cluster: _servers.RedisClusterServers,
) -> None:
    with kv.KvStore.from_url(own_cluster.url, timeout_s=0.5, key_prefix=_prefix(), sweep_interval_s=None) as store:
        bucket = store.tenant("acme").bucket()
        bucket.set("k", b"v")
        master = own_cluster.master_of("{acme}")
        assert master.proc is not None
        os.kill(master.proc.pid, signal.SIGSTOP)
        try:
            for _ in range(2):  # the first call goes straight to the node, the next through the cluster client
                for call in (lambda: bucket.get("k"), lambda: bucket.increment("n"), bucket.list_keys):
                    started = time.monotonic()
                    with pytest.raises(kv.BackendUnavailable, match="Redis Cluster at"):
                        call()
                    # Generous: the bound is 0.5 s; a loaded machine may add scheduling delay, never a hang.
                    assert time.monotonic() - started < 0.5 + 1.5
        finally:
            os.kill(master.proc.pid, signal.SIGCONT)
        _servers.wait_until("the store to answer again", lambda: _answers(bucket), 30)
        assert bucket.get("k") == b"v"
        assert bucket.increment("n") in (1, 2, 3)  # a timed-out increment may have landed


def _answers(bucket: kv.Bucket) -> bool:
    try:
        bucket.get("k")
    except kv.BackendUnavailable:
        return False
    return True
