"""Files as an attacker hands them over, and files as the host leaves them: dumps, store paths, permissions."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
from pathlib import Path

import msgpack
import pytest

from wasmkv import kv

WASMKV = str(Path(sys.executable).parent / "wasmkv")


def wasmkv(*args: str, cwd: Path, umask: int | None = None) -> subprocess.CompletedProcess[str]:
    def set_umask() -> None:
        if umask is not None:
            os.umask(umask)

    return subprocess.run(
        [WASMKV, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False, preexec_fn=set_umask
    )


def hostile_dump(tenant: str) -> bytes:
    """A well-formed dump whose header claims `tenant` and which overwrites its key `k`."""
    records = [["default", "k", b"overwritten", None]]
    parts = [{"format": "wasmkv-dump", "version": 1, "tenant": tenant}, *records, {"end": len(records)}]
    return b"".join(msgpack.packb(part) for part in parts)


def test_a_dump_cannot_pick_its_tenant(tmp_path: Path) -> None:
    with kv.KvStore.open(tmp_path / "state") as store:
        store.tenant("victim").bucket().set("k", b"private")
    (tmp_path / "dump.bin").write_bytes(hostile_dump("victim"))

    refused = wasmkv("import", "dump.bin", "--state", "state", cwd=tmp_path)
    assert refused.returncode == 2
    assert "the following arguments are required: --tenant" in refused.stderr
    imported = wasmkv("import", "dump.bin", "--state", "state", "--tenant", "mallory", cwd=tmp_path)
    assert imported.returncode == 0, imported.stderr
    with kv.KvStore.open(tmp_path / "state") as store:
        assert store.tenant("victim").bucket().get("k") == b"private"
        assert store.tenant("mallory").bucket().get("k") == b"overwritten"


def test_the_python_api_also_needs_the_tenant_named(tmp_path: Path) -> None:
    with kv.KvStore.open(tmp_path / "state") as store:
        store.tenant("victim").bucket().set("k", b"private")
        with pytest.raises(TypeError, match="tenant"):
            kv.import_dump(store, io.BytesIO(hostile_dump("victim")))  # type: ignore[call-arg]
        kv.import_dump(store, io.BytesIO(hostile_dump("victim")), tenant="mallory")
        assert store.tenant("victim").bucket().get("k") == b"private"


def test_store_files_and_exports_are_private_whatever_the_umask(tmp_path: Path) -> None:
    done = wasmkv("run", "noop.wat", "--state", "state", cwd=tmp_path, umask=0o022)
    assert done.returncode == 2  # no such plugin; the store was opened first
    state = tmp_path / "state"
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    for name in ("data.mdb", "lock.mdb"):
        assert stat.S_IMODE((state / name).stat().st_mode) == 0o600
    with kv.KvStore.open(state) as store:
        store.tenant("acme").bucket().set("k", b"v")
    exported = wasmkv("export", "--tenant", "acme", "--state", "state", "-o", "dump.bin", cwd=tmp_path, umask=0)
    assert exported.returncode == 0, exported.stderr
    assert stat.S_IMODE((tmp_path / "dump.bin").stat().st_mode) == 0o600


@pytest.mark.parametrize("where", ["file", "under a file"])
def test_opening_a_store_on_a_file_is_backend_unavailable(tmp_path: Path, where: str) -> None:
    regular = tmp_path / "regular"
    regular.write_bytes(b"not a store")
    path = regular if where == "file" else regular / "state"
    with pytest.raises(kv.BackendUnavailable, match=f"cannot open the store at {path}"):
        kv.KvStore.open(path)
    assert regular.read_bytes() == b"not a store"
