"""The command line on every store: `--state DIR|URL`, `--config`, tenant records, JSON for scripts."""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import _servers
import pytest

WASMKV = str(Path(sys.executable).parent / "wasmkv")


def wasmkv(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [WASMKV, *map(str, args)],
        check=False,
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
        env=None if env is None else {**os.environ, **env},
    )


def cluster_url() -> str:
    return f"{_servers.cluster().url}?key_prefix=t{uuid.uuid4().hex[:12]}"


@pytest.mark.parametrize("kind", ["dir", "redis+cluster"])
def test_a_quota_set_by_one_process_is_enforced_by_the_next(built: Path, tmp_path: Path, kind: str) -> None:
    state = str(tmp_path / "state") if kind == "dir" else cluster_url()
    set_quota = wasmkv("tenant", "set-quota", "t", "--max-keys", "2", "--state", state, cwd=tmp_path)
    assert set_quota.returncode == 0, set_quota.stderr
    assert "tenant t now has quota max_keys 2" in set_quota.stderr
    for name, expected in (("a", 0), ("b", 0), ("c", 1)):
        run = wasmkv("run", built / "counter.wasm", "--call", "hit", "--input", name, "--tenant", "t",
                     "--state", state, cwd=tmp_path)  # fmt: skip
        assert run.returncode == expected, run.stderr
    assert "returned status -4 (QUOTA_EXCEEDED)" in run.stderr
    shown = json.loads(wasmkv("tenant", "show", "t", "--json", "--state", state, cwd=tmp_path).stdout)
    assert shown["quota"]["max_keys"] == 2
    assert shown["usage"]["keys"] == 2
    assert shown["buckets"] == ["default"]
    assert set(shown) == {"name", "quota", "usage", "buckets"}
    assert set(shown["quota"]) == {"max_keys", "max_bytes", "max_value_bytes", "max_key_bytes", "ops_per_second"}
    assert "tenant t: 2/2 keys" in wasmkv("inspect", "--state", state, cwd=tmp_path).stdout


def test_tenant_list_show_set_quota_and_delete(built: Path, tmp_path: Path) -> None:
    for tenant in ("shop", "blog"):
        wasmkv("run", built / "counter.wasm", "--call", "hit", "--tenant", tenant, cwd=tmp_path)
    listing = wasmkv("tenant", "list", cwd=tmp_path)
    assert listing.stdout.splitlines() == [
        "blog  1/10000 keys  5/67108864 bytes  1 buckets",
        "shop  1/10000 keys  5/67108864 bytes  1 buckets",
    ]
    assert [t["name"] for t in json.loads(wasmkv("tenant", "list", "--json", cwd=tmp_path).stdout)["tenants"]] == [
        "blog",
        "shop",
    ]
    quota = wasmkv("tenant", "set-quota", "shop", "--ops-per-second", "50", "--max-bytes", "4096", cwd=tmp_path)
    assert quota.returncode == 0
    shown = wasmkv("tenant", "show", "shop", cwd=tmp_path).stdout
    assert "  ops_per_second: 50.0\n" in shown and "  max_bytes: 4096\n" in shown and "  max_keys: 10000\n" in shown
    wasmkv("tenant", "set-quota", "shop", "--ops-per-second", "none", cwd=tmp_path)
    assert "  ops_per_second: none\n" in wasmkv("tenant", "show", "shop", cwd=tmp_path).stdout
    over = wasmkv("tenant", "set-quota", "shop", "--max-keys", "1", "--max-bytes", "2", cwd=tmp_path)
    assert "holds 5 bytes over max_bytes 2: writes that grow it fail until it shrinks" in over.stderr
    refused = wasmkv("tenant", "delete", "shop", cwd=tmp_path)
    assert refused.returncode == 2
    assert refused.stderr == (
        "wasmkv: this would delete tenant shop: 1 keys in 1 buckets and its quota; add --yes to do it\n"
    )
    deleted = wasmkv("tenant", "delete", "shop", "--yes", cwd=tmp_path)
    assert deleted.returncode == 0 and "deleted tenant shop and its 1 keys" in deleted.stderr
    assert wasmkv("tenant", "list", cwd=tmp_path).stdout.splitlines() == [
        "blog  1/10000 keys  5/67108864 bytes  1 buckets"
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["tenant", "set-quota", "t"], "say what to change: one or more of --max-keys --max-bytes"),
        (["tenant", "set-quota", "t", "--max-keys", "0"], "argument --max-keys: must be a positive whole number"),
        (["tenant", "set-quota", "t", "--ops-per-second", "-3"], "must be a positive number or none, got '-3'"),
        (["tenant", "show", "ghost"], "no tenant 'ghost' in this store"),
        (["export", "--tenant", "ghost"], "no tenant 'ghost' in this store"),
        (["tenant", "frobnicate"], "invalid choice: 'frobnicate'"),
        (["inspect", "--limit", "5000"], "must be a whole number from 1 to 1000"),
    ],
)
def test_tenant_and_inspect_mistakes_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    wasmkv("tenant", "set-quota", "seed", "--max-keys", "5", cwd=tmp_path)
    result = wasmkv(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_an_unknown_scheme_is_an_error_and_creates_nothing(built: Path, tmp_path: Path) -> None:
    result = wasmkv("run", built / "counter.wasm", "--call", "hit", "--state", "notascheme://x", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == (
        "wasmkv: unknown store URL scheme 'notascheme' in 'notascheme://x': use a path, lmdb://, memory:, redis://, "
        "rediss://, redis+cluster:// or rediss+cluster://\n"
    )
    assert list(tmp_path.iterdir()) == []


def test_run_inspect_and_export_reach_a_redis_cluster_without_naming_buckets(built: Path, tmp_path: Path) -> None:
    state = cluster_url()
    wasmkv("run", built / "counter.wasm", "--call", "hit", "--tenant", "acme", "--state", state, cwd=tmp_path)
    wasmkv("run", built / "session.wasm", "--call", "put", "--input", "s1 60000 x", "--bucket", "sessions",
           "--tenant", "acme", "--state", state, cwd=tmp_path)  # fmt: skip
    assert "'hits' = b'1'" in wasmkv("inspect", "--state", state, cwd=tmp_path).stdout
    exported = wasmkv("export", "--tenant", "acme", "-o", "dump.bin", "--state", state, cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    assert "exported 2 keys of tenant acme" in exported.stderr
    imported = wasmkv("import", "dump.bin", "--tenant", "acme", "--state", "local", cwd=tmp_path)
    assert "imported 2 keys into tenant acme (default, sessions)" in imported.stderr
    assert not (tmp_path / "redis+cluster:").exists()


def test_a_redis_password_comes_from_the_environment(tmp_path: Path) -> None:
    server = _servers.RedisServer()
    server.start()
    try:
        with server.client() as conn:
            conn.config_set("requirepass", "s3cret")
        state = f"redis://127.0.0.1:{server.port}/0"
        denied = wasmkv("tenant", "set-quota", "t", "--max-keys", "3", "--state", state, cwd=tmp_path)
        assert denied.returncode == 2
        assert "refused the login" in denied.stderr and "$WASMKV_REDIS_PASSWORD" in denied.stderr
        allowed = wasmkv("tenant", "set-quota", "t", "--max-keys", "3", "--state", state, cwd=tmp_path,
                         env={"WASMKV_REDIS_PASSWORD": "s3cret"})  # fmt: skip
        assert allowed.returncode == 0, allowed.stderr
    finally:
        server.stop()


def test_every_command_takes_a_config(built: Path, tmp_path: Path) -> None:
    (tmp_path / "wasmkv.toml").write_text('[store]\npath = "configured"\n[tenants.shop]\nmax_keys = 20\n')
    run = wasmkv("run", built / "counter.wasm", "--call", "hit", "--tenant", "shop", "--config", "wasmkv.toml",
                 cwd=tmp_path)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "configured" / "data.mdb").is_file()
    assert "tenant shop: 1/20 keys" in wasmkv("inspect", "--config", "wasmkv.toml", cwd=tmp_path).stdout
    shown = json.loads(wasmkv("tenant", "show", "shop", "--json", "--config", "wasmkv.toml", cwd=tmp_path).stdout)
    assert shown["quota"]["max_keys"] == 20


def test_inspect_json_carries_values_text_or_base64(tmp_path: Path) -> None:
    wasmkv("tenant", "set-quota", "t", "--max-keys", "9", cwd=tmp_path)
    script = "from wasmkv import kv\nwith kv.KvStore.open('.wasmkv/state') as s:\n"
    script += (
        "    b = s.tenant('t').bucket()\n    b.set('text', b'hello')\n    b.set_with_ttl('bin', b'\\xff\\x00', 60000)\n"
    )
    subprocess.run([sys.executable, "-c", script], cwd=tmp_path, check=True)
    data = json.loads(wasmkv("inspect", "--json", cwd=tmp_path).stdout)
    (tenant,) = data["tenants"]
    keys = {item["key"]: item for item in tenant["buckets"][0]["keys"]}
    assert keys["text"] == {"key": "text", "size": 5, "ttl_ms": None, "value": "hello"}
    assert keys["bin"]["value_base64"] == "/wA=" and 0 < keys["bin"]["ttl_ms"] <= 60000


def test_export_to_a_closed_pipe_exits_quietly(tmp_path: Path) -> None:
    script = "from wasmkv import kv\nwith kv.KvStore.open('.wasmkv/state') as s:\n"
    script += "    b = s.tenant('t', kv.Quota(max_keys=100000)).bucket()\n"
    script += "    [b.set_many({f'k{i:06d}-{j}': b'x' * 200 for j in range(1000)}) for i in range(20)]\n"
    subprocess.run([sys.executable, "-c", script], cwd=tmp_path, check=True)
    piped = subprocess.run(
        f"{WASMKV} export --tenant t | head -c 100 > /dev/null", shell=True, cwd=tmp_path, capture_output=True,
        text=True, timeout=60, check=False,
    )  # fmt: skip
    assert piped.stderr == ""
    assert piped.returncode == 0


def test_a_large_export_shows_progress_on_a_terminal(tmp_path: Path) -> None:
    script = "from wasmkv import kv\nwith kv.KvStore.open('.wasmkv/state') as s:\n"
    script += "    b = s.tenant('t', kv.Quota(max_keys=100000)).bucket()\n"
    script += "    [b.set_many({f'k{i:03d}-{j:03d}': b'x' for j in range(1000)}) for i in range(12)]\n"
    subprocess.run([sys.executable, "-c", script], cwd=tmp_path, check=True)
    controller, terminal = pty.openpty()
    try:
        done = subprocess.run(
            [WASMKV, "export", "--tenant", "t", "-o", "dump.bin"], cwd=tmp_path, stderr=terminal, timeout=60, check=True
        )
        assert done.returncode == 0
        os.close(terminal)
        terminal = -1
        seen = b""
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(controller)
        if terminal >= 0:
            os.close(terminal)
    assert b"\rexported 12,000 keys" in seen
    assert b"exported 12000 keys of tenant t" in seen
    quiet = wasmkv("export", "--tenant", "t", "-o", "again.bin", cwd=tmp_path)  # not a terminal
    assert quiet.stderr == "wasmkv: exported 12000 keys of tenant t\n"


def test_the_documented_local_cluster_recipe_starts_serves_and_stops(tmp_path: Path) -> None:
    recipe = subprocess.Popen(
        [sys.executable, str(Path(__file__).parent / "_servers.py")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert recipe.stdout is not None
        ready = recipe.stdout.readline()
        assert ready.startswith("Redis Cluster ready: redis+cluster://127.0.0.1:")
        url = ready.split(": ", 1)[1].strip()
        done = wasmkv("tenant", "set-quota", "t", "--max-keys", "3", "--state", url, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        recipe.send_signal(signal.SIGINT)
        assert recipe.wait(timeout=30) == 0
        gone = wasmkv("tenant", "list", "--state", url + "?timeout_s=1", cwd=tmp_path)
        assert gone.returncode == 2 and "unreachable" in gone.stderr
    finally:
        recipe.kill()
        recipe.wait()
        if recipe.stdout is not None:
            recipe.stdout.close()
