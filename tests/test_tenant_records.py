"""Tenants are records in the store: every process enforces the stored quota, and stores keep their format.

Covers the record on every engine, the front layer's one-second refresh, other
processes (LMDB and a Redis Cluster) enforcing a quota they were never given,
the config's "create if absent, stored wins", and stores written by the first
release (fixtures in tests/data, made by that release's own code) opening and
upgrading in place, while a store of a newer format is refused.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import _servers
import lmdb
import msgpack
import pytest
import redis

from wasmkv import host, kv

DATA = Path(__file__).resolve().parent / "data"
SMALL = kv.Quota(max_keys=2, max_bytes=1000, ops_per_second=50.5)


# -- the record, on every engine --------------------------------------------------------------


def test_a_tenant_record_is_stored_read_and_deleted_on_every_engine(engine: kv.Store) -> None:
    assert engine.tenant_quota("acme") is None
    assert engine.put_tenant_quota("acme", SMALL) == SMALL
    assert engine.tenant_quota("acme") == SMALL
    assert engine.put_tenant_quota("acme", kv.Quota(), only_if_absent=True) == SMALL  # the stored one wins
    assert engine.put_tenant_quota("fresh", kv.Quota(), only_if_absent=True) == kv.Quota()
    assert {"acme", "fresh"} <= set(engine.tenants())  # a record alone makes a tenant
    ns = kv.Namespace("acme", "b")
    roomy = kv.Quota()
    engine.set(ns, b"k1", b"v", None, roomy)
    engine.set(ns, b"k2", b"v", 60_000, roomy)
    engine.set(kv.Namespace("acme", "other"), b"k", b"v", None, roomy)
    engine.set(kv.Namespace("fresh", "b"), b"k", b"v", None, roomy)
    assert engine.delete_tenant("acme") == 3
    assert engine.tenant_quota("acme") is None
    assert engine.get(ns, b"k1") is None
    assert engine.buckets("acme") == []
    assert engine.usage("acme") == kv.Usage(0, 0)
    assert "acme" not in engine.tenants()
    assert engine.get(kv.Namespace("fresh", "b"), b"k") == b"v"  # another tenant untouched


def test_a_damaged_record_is_backend_unavailable() -> None:
    with pytest.raises(kv.BackendUnavailable, match="damaged"):
        kv.Quota.from_record(b"\xc1 not msgpack")
    with pytest.raises(kv.BackendUnavailable, match="damaged"):
        kv.Quota.from_record(kv.Quota(max_keys=1).to_record().replace(b"\x01", b"\xff", 1))


def test_a_record_from_a_newer_wasmkv_with_more_fields_still_reads() -> None:
    record = msgpack.packb({"max_keys": 3, "a_field_from_the_future": True})
    assert kv.Quota.from_record(record) == kv.Quota(max_keys=3)


# -- the front layer ----------------------------------------------------------------------------


def test_passing_a_quota_stores_it_and_a_later_open_enforces_it(tmp_path: Path) -> None:
    with kv.KvStore.open(tmp_path / "s") as store:
        store.tenant("t", SMALL)
    with kv.KvStore.open(tmp_path / "s") as store:
        tenant = store.tenant("t")
        assert tenant.quota == SMALL
        tenant.bucket().set_many({"a": b"1", "b": b"2"})
        with pytest.raises(kv.QuotaExceeded, match="max_keys is 2"):
            tenant.bucket().set("c", b"3")
        assert store.tenant("never-configured").quota == kv.Quota()
        assert store.tenants() == ["t"]


def test_a_quota_change_reaches_an_open_store_within_its_refresh(tmp_path: Path) -> None:
    with kv.KvStore.open(tmp_path / "s", sweep_interval_s=None) as first:
        other_engine = kv.KvStore(first.engine, sweep_interval_s=None, tenant_refresh_s=0.2)
        watcher = other_engine.tenant("t")
        assert watcher.quota == kv.Quota()
        first.tenant("t", SMALL)
        assert watcher.quota == kv.Quota()  # still the copy it read
        time.sleep(0.25)
        assert watcher.quota == SMALL


def test_a_quota_below_the_usage_is_allowed_and_writes_fail_until_usage_drops(tmp_path: Path) -> None:
    with kv.KvStore.open(tmp_path / "s") as store:
        bucket = store.tenant("t").bucket()
        bucket.set_many({f"k{i}": b"" for i in range(5)})
        store.tenant("t", kv.Quota(max_keys=3))
        with pytest.raises(kv.QuotaExceeded):
            bucket.set("new", b"")
        bucket.set("k0", b"overwrite is fine")
        bucket.delete_many(["k0", "k1", "k2"])
        bucket.set("new", b"")


def test_ensure_tenant_creates_only_what_is_missing(tmp_path: Path) -> None:
    with kv.KvStore.open(tmp_path / "s") as store:
        store.tenant("kept", SMALL)
        assert store.ensure_tenant("kept", kv.Quota()).quota == SMALL
        assert store.ensure_tenant("created", SMALL).quota == SMALL
        assert store.engine.tenant_quota("created") == SMALL


def test_the_config_creates_tenants_and_the_stored_record_wins_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = tmp_path / "wasmkv.toml"
    config.write_text('[store]\npath = "s"\n[tenants.shop]\nmax_keys = 20\n[tenants.blog]\nmax_keys = 5\n')
    with kv.KvStore.open(tmp_path / "s") as store:
        store.tenant("shop", kv.Quota(max_keys=7))
    with caplog.at_level("WARNING", logger="wasmkv.config"), host.load_config(config).open_store() as store:
        assert store.tenant("shop").quota.max_keys == 7
        assert store.tenant("blog").quota.max_keys == 5
    (line,) = [record.getMessage() for record in caplog.records]
    assert line == (
        f"{config}: tenant shop keeps its stored quota (max_keys 20 here, 7 stored); "
        "change it with `wasmkv tenant set-quota shop`"
    )


# -- other processes ----------------------------------------------------------------------------

WRITER = textwrap.dedent(
    """
    import sys
    from wasmkv import kv
    with kv.KvStore.from_url(sys.argv[1], **({"key_prefix": sys.argv[2]} if sys.argv[2] else {})) as store:
        bucket = store.tenant("t").bucket()
        for key in ("a", "b", "c"):
            try:
                bucket.set(key, b"v")
                print("stored", key)
            except kv.QuotaExceeded as exc:
                print("refused", key, exc)
    """
)


@pytest.mark.parametrize("where", ["lmdb", "redis-cluster"])
def test_another_process_enforces_a_quota_it_was_never_given(tmp_path: Path, where: str) -> None:
    if where == "lmdb":
        url, prefix, options = str(tmp_path / "s"), "", {}
    else:
        prefix = f"t{uuid.uuid4().hex[:12]}"
        url, options = _servers.cluster().url, {"key_prefix": prefix}
    with kv.KvStore.from_url(url, **options) as store:
        store.tenant("t", kv.Quota(max_keys=2))
    done = subprocess.run(
        [sys.executable, "-c", WRITER, url, prefix], capture_output=True, text=True, timeout=60, check=True
    )
    lines = done.stdout.splitlines()
    assert lines[:2] == ["stored a", "stored b"]
    assert lines[2].startswith("refused c quota exceeded: max_keys is 2")


# -- the store's format -------------------------------------------------------------------------


def test_a_store_of_the_first_format_opens_and_upgrades_in_place(tmp_path: Path) -> None:
    state = tmp_path / "v1"
    state.mkdir()
    shutil.copy(DATA / "store-v1.mdb", state / "data.mdb")
    with kv.KvStore.open(state, sweep_interval_s=None) as store:
        acme = store.tenant("acme")
        assert acme.bucket().get_many(["greeting", "hits"]) == [b"hello", b"41"]
        assert acme.bucket("sessions").get("s:" + "x" * 500) == b"long key"
        ttl = acme.bucket().ttl("forever-ish")
        assert ttl is not None and ttl > 90 * 365 * 24 * 3600 * 1000
        assert store.tenants() == ["acme", "beta"]
        assert store.engine.buckets("acme") == ["default", "sessions"]
        assert acme.usage().keys == 4
        assert acme.quota == kv.Quota()  # the first format kept no quotas
        store.tenant("acme", SMALL)
    with kv.KvStore.open(state) as store:
        assert store.tenant("acme").quota == SMALL
    env = lmdb.open(str(state), max_dbs=8, readonly=True, lock=False)
    with env.begin() as txn:
        assert txn.get(b"format", db=env.open_db(b"meta", txn=txn)) == b"3"
    env.close()


def test_a_store_of_a_newer_format_is_refused_in_one_line(tmp_path: Path) -> None:
    with kv.KvStore.open(tmp_path / "s") as store:
        store.tenant("t").bucket().set("k", b"v")
    env = lmdb.open(str(tmp_path / "s"), max_dbs=8)
    with env.begin(write=True) as txn:
        txn.put(b"format", b"4", db=env.open_db(b"meta", txn=txn))
    env.close()
    with pytest.raises(kv.BackendUnavailable) as raised:
        kv.KvStore.open(tmp_path / "s")
    assert str(raised.value) == (
        f"the store at {tmp_path / 's'} has store format 4, newer than this wasmkv reads (3): "
        "open it with a newer wasmkv"
    )


def _restore_v1_redis(conn: redis.Redis, prefix: str) -> None:
    """Write the first-format keys that tests/data/redis-v1.json captured, under `prefix` instead of v1."""
    for entry in json.loads((DATA / "redis-v1.json").read_text()):
        key = prefix.encode() + base64.b64decode(entry["key"])[2:]
        if entry["type"] == "string":
            conn.set(key, base64.b64decode(entry["value"]))
        elif entry["type"] == "hash":
            conn.hset(key, mapping={base64.b64decode(k): base64.b64decode(v) for k, v in entry["value"].items()})
        else:
            conn.zadd(key, {base64.b64decode(member): score for member, score in entry["value"]})
        if entry["pexpireat"] > 0:
            conn.pexpireat(key, entry["pexpireat"])


@pytest.mark.parametrize("kind", ["redis", "redis-cluster"])
def test_a_redis_store_of_the_first_format_upgrades_on_first_use(kind: str) -> None:
    prefix = f"t{uuid.uuid4().hex[:12]}"
    servers = _servers.single() if kind == "redis" else _servers.cluster()
    if kind == "redis":
        with redis.Redis.from_url(servers.url) as conn:
            _restore_v1_redis(conn, prefix)
    else:
        with redis.RedisCluster(host=_servers.HOST, port=servers.live_nodes()[0].port) as conn:
            _restore_v1_redis(conn, prefix)  # type: ignore[arg-type]
    with kv.KvStore.from_url(servers.url, key_prefix=prefix, sweep_interval_s=None) as store:
        acme = store.tenant("acme")
        assert acme.bucket().get_many(["greeting", "hits"]) == [b"hello", b"41"]
        assert store.tenants() == ["acme", "beta"]
        assert store.engine.buckets("acme") == ["default", "sessions"]
        assert acme.bucket().increment("hits") == 42
        assert acme.usage().keys == 4


def test_a_redis_store_of_a_newer_format_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    prefix = f"t{uuid.uuid4().hex[:12]}"
    with redis.Redis.from_url(_servers.single().url) as conn:
        conn.set(f"{prefix}:format", b"9")
    with (
        kv.KvStore.from_url(_servers.single().url, key_prefix=prefix, sweep_interval_s=None) as store,
        pytest.raises(kv.BackendUnavailable, match=r"has store format 9, newer than this wasmkv reads \(2\)"),
    ):
        store.tenant("t").bucket().get("k")
