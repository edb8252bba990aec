"""Several host processes running the sample plugins against one Redis Cluster: exact counts and quotas."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import _servers

from wasmkv import kv

PROCESSES = 3
FILL_QUOTA = 50

HOST_WORKER = textwrap.dedent(
    """
    import json, sys
    from wasmkv import host
    config, me, now = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    with host.Host.from_config(config) as wasm_host:
        counter, filler = wasm_host.plugin("counter"), wasm_host.plugin("filler")
        limiter = wasm_host.plugin("ratelimit")
        print("ready", flush=True)
        sys.stdin.readline()
        for _ in range(200):
            counter.call("hit")
        allowed = sum(limiter.call("allow", ("shared " + now).encode()).startswith(b"allow") for _ in range(10))
        filled = refused = 0
        for i in range(40):
            try:
                filler.call("hit", b"p%d-%d" % (me, i))
                filled += 1
            except host.PluginStatusError as exc:
                assert exc.status == -4, exc  # QUOTA_EXCEEDED reaches the plugin, which returns it
                refused += 1
        print(json.dumps({"allowed": allowed, "filled": filled, "refused": refused}))
    """
)


def test_three_host_processes_share_a_cluster_exactly(built: Path, tmp_path: Path) -> None:
    prefix = f"h{uuid.uuid4().hex[:12]}"
    (tmp_path / "wasmkv.toml").write_text(
        textwrap.dedent(
            f"""
            [store]
            url = "{_servers.cluster().url}"
            key_prefix = "{prefix}"
            [cache]
            enabled = false
            [tenants.shared]
            [tenants.fill]
            max_keys = {FILL_QUOTA}
            [plugins.counter]
            file = "{built / "counter.wasm"}"
            tenant = "shared"
            [plugins.ratelimit]
            file = "{built / "ratelimit.wasm"}"
            tenant = "shared"
            [plugins.filler]
            file = "{built / "counter.wasm"}"
            tenant = "fill"
            """
        )
    )
    now = "1700000000000"
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", HOST_WORKER, str(tmp_path / "wasmkv.toml"), str(n), now],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in range(PROCESSES)
    ]
    try:
        for worker in workers:
            assert worker.stdout is not None and worker.stdout.readline().strip() == "ready"
        for worker in workers:  # release them together
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        reports = []
        for worker in workers:
            out, _ = worker.communicate(timeout=180)
            assert worker.returncode == 0
            reports.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for worker in workers:
            worker.kill()
            worker.wait()
    with kv.KvStore.from_url(_servers.cluster().url, key_prefix=prefix, sweep_interval_s=None) as store:
        assert store.tenant("shared").bucket().get("hits") == str(200 * PROCESSES).encode()
        assert sum(report["allowed"] for report in reports) == 5  # a token bucket of 5, CAS-guarded
        assert sum(report["filled"] for report in reports) == FILL_QUOTA
        assert store.tenant("fill").usage().keys == FILL_QUOTA
