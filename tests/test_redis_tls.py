"""`rediss://` and `rediss+cluster://`: the store over TLS, the server's certificate checked against a CA."""

from __future__ import annotations

import uuid
from pathlib import Path

import _servers
import pytest

from wasmkv import kv


def test_a_store_over_tls_checks_the_servers_certificate(tls_server: _servers.RedisServer, tls_files: Path) -> None:
    assert tls_server.url.startswith("rediss://")
    url = f"{tls_server.url}?tls_ca_file={tls_files / 'ca.crt'}&key_prefix=t{uuid.uuid4().hex[:8]}"
    with kv.KvStore.from_url(url, sweep_interval_s=None) as store:
        bucket = store.tenant("acme", kv.Quota(max_keys=2)).bucket()
        bucket.set("k", b"over tls")
        assert bucket.get("k") == b"over tls"
        assert bucket.increment("n") == 1
        with pytest.raises(kv.QuotaExceeded):
            bucket.set("third", b"")
    # Without the CA, the server's certificate is not trusted: refused, never sent in the clear.
    with (
        kv.KvStore.from_url(tls_server.url, timeout_s=2, sweep_interval_s=None) as untrusted,
        pytest.raises(kv.BackendUnavailable, match="certificate verify failed"),
    ):
        untrusted.tenant("acme").bucket().get("k")


def test_a_cluster_over_tls(tls_files: Path) -> None:
    servers = _servers.RedisClusterServers(3, 0, tls=tls_files).start()
    try:
        url = f"{servers.url}?tls_ca_file={tls_files / 'ca.crt'}"
        assert url.startswith("rediss+cluster://")
        with kv.KvStore.from_url(url, sweep_interval_s=None) as store:
            bucket = store.tenant("acme").bucket()
            bucket.set_many({f"k{i}": b"v" for i in range(20)})
            assert bucket.get_many(["k0", "k19"]) == [b"v", b"v"]
            assert store.engine.buckets("acme") == ["default"]
    finally:
        servers.stop()
