"""Real Redis servers for tests and benchmarks: one node, or a cluster of masters and replicas, on loopback.

Every server runs in its own temporary directory on a free loopback port and
is stopped by PID. Readiness is polled (PING, then `CLUSTER INFO` state ok and
every master's replica in sync) against a deadline; nothing sleeps blindly.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

import redis

HOST: Final = "127.0.0.1"
#: Failure detection in the test clusters: a dead master is voted out after about this long.
CLUSTER_NODE_TIMEOUT_MS: Final = 1000
START_DEADLINE_S: Final = 30.0
_POLL_S: Final = 0.02
#: Cluster bus ports are data port + 10000, so data ports stay below this.
_MAX_DATA_PORT: Final = 65535 - 10000


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((HOST, port))
        except OSError:
            return False
    return True


_taken: set[int] = set()
_taken_lock = threading.Lock()


def free_port(*, with_bus: bool = False) -> int:
    """A loopback port nothing listens on (and its cluster bus port + 10000, if `with_bus`)."""
    with _taken_lock:
        for _ in range(1000):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                probe.bind((HOST, 0))
                port = int(probe.getsockname()[1])
            if port in _taken or (with_bus and (port > _MAX_DATA_PORT or not _port_is_free(port + 10000))):
                continue
            _taken.add(port)
            return port
    raise RuntimeError("no free loopback port found")


def wait_until(what: str, check: Callable[[], bool], deadline_s: float = START_DEADLINE_S) -> None:
    """Poll `check` until it returns True; raise after `deadline_s` naming `what`."""
    deadline = time.monotonic() + deadline_s
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (redis.RedisError, OSError) as exc:
            last = exc
        time.sleep(_POLL_S)
    raise RuntimeError(f"timed out after {deadline_s} s waiting for {what} (last error: {last!r})")


def make_tls_files(directory: Path) -> Path:
    """A private CA and a server certificate for 127.0.0.1 (and tls.wasmkv.test) signed by it; `directory`."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
            "-days", "2", "-subj", "/CN=wasmkv test CA")  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
            "-subj", "/CN=127.0.0.1")  # fmt: skip
    # And a name, which tests map to 127.0.0.1 in their own resolver: a TLS client must check the name it was given.
    (directory / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:tls.wasmkv.test\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.crt", "-days", "2", "-extfile", "san.cnf")  # fmt: skip
    return directory


class RedisServer:
    """One `redis-server` process on a loopback port, in its own directory; over TLS with `tls` files."""

    def __init__(
        self, *, cluster: bool = False, root: Path | None = None, port: int | None = None, tls: Path | None = None
    ) -> None:
        self.port = port if port is not None else free_port(with_bus=cluster)
        self.cluster = cluster
        self.tls = tls
        self.dir = Path(tempfile.mkdtemp(prefix=f"redis-{self.port}-", dir=root))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://{HOST}:{self.port}/0"

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def start(self) -> RedisServer:
        """Start the server and wait until it answers PING."""
        args = [
            "redis-server",
            *(["--port", "0", "--tls-port", str(self.port)] if self.tls else ["--port", str(self.port)]),
            "--bind", HOST,
            "--dir", str(self.dir),
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--logfile", str(self.dir / "redis.log"),
        ]  # fmt: skip
        if self.tls:
            args += [
                "--tls-cert-file", str(self.tls / "server.crt"),
                "--tls-key-file", str(self.tls / "server.key"),
                "--tls-ca-cert-file", str(self.tls / "ca.crt"),
                "--tls-auth-clients", "no",
                "--tls-cluster", "yes",
                "--tls-replication", "yes",
            ]  # fmt: skip
        if self.cluster:
            args += [
                "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(CLUSTER_NODE_TIMEOUT_MS),
                # A replica that lost its master a moment ago may still take over.
                "--cluster-replica-validity-factor", "0",
            ]  # fmt: skip
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(f"redis-server on port {self.port}", self._answers)
        return self

    def client(self) -> redis.Redis:
        tls: dict[str, object] = {} if self.tls is None else {"ssl": True, "ssl_ca_certs": str(self.tls / "ca.crt")}
        return redis.Redis(host=HOST, port=self.port, socket_timeout=2, socket_connect_timeout=2, **tls)

    def _answers(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            log = (self.dir / "redis.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"redis-server on port {self.port} exited with {self.proc.returncode}:\n{log}")
        with self.client() as conn:
            return bool(conn.ping())

    def kill(self) -> None:
        """SIGKILL the server, as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        """Stop the server by PID (SIGTERM, then SIGKILL) and remove its directory; idempotent."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


class RedisClusterServers:
    """A Redis Cluster of `masters` masters with `replicas` replicas each, made by `redis-cli --cluster create`."""

    def __init__(self, masters: int = 3, replicas: int = 1, *, tls: Path | None = None) -> None:
        self.masters = masters
        self.replicas = replicas
        self.tls = tls
        self.root = Path(tempfile.mkdtemp(prefix="redis-cluster-"))
        self.nodes = [RedisServer(cluster=True, root=self.root, tls=tls) for _ in range(masters * (1 + replicas))]

    @property
    def url(self) -> str:
        """The `redis+cluster://` (`rediss+cluster://` over TLS) URL naming every node as a startup node."""
        scheme = "rediss+cluster" if self.tls else "redis+cluster"
        return f"{scheme}://" + ",".join(node.address for node in self.nodes)

    def start(self) -> RedisClusterServers:
        """Start every node, create the cluster, and wait until it serves every slot with replicas in sync."""
        try:
            for node in self.nodes:
                node.start()
            create = ["redis-cli", "--cluster", "create", *(node.address for node in self.nodes)]
            create += ["--cluster-replicas", str(self.replicas), "--cluster-yes"]
            if self.tls:
                create += ["--tls", "--cacert", str(self.tls / "ca.crt")]
            done = subprocess.run(create, capture_output=True, text=True, timeout=START_DEADLINE_S, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed:\n{done.stdout}\n{done.stderr}")
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def live_nodes(self) -> list[RedisServer]:
        return [node for node in self.nodes if node.proc is not None and node.proc.poll() is None]

    def wait_healthy(self, deadline_s: float = START_DEADLINE_S, *, with_replicas: bool = True) -> None:
        """Wait until every live node reports `cluster_state:ok` (and, if asked, every master's replicas are online)."""
        wait_until("the cluster to be ok", lambda: self._healthy(with_replicas), deadline_s)

    def _healthy(self, with_replicas: bool) -> bool:
        masters = 0
        for node in self.live_nodes():
            with node.client() as conn:
                if b"cluster_state:ok" not in conn.execute_command("CLUSTER", "INFO"):
                    return False
                info = conn.info("replication")
                if info["role"] != "master":
                    continue
                masters += 1
                if with_replicas and int(info["connected_slaves"]) < self.replicas:
                    return False
                online = [v for k, v in info.items() if k.startswith("slave") and v.get("state") == "online"]
                if with_replicas and len(online) < self.replicas:
                    return False
        return masters == self.masters

    def master_of(self, key: bytes | str) -> RedisServer:
        """The node now serving `key` as master."""
        for node in self.live_nodes():
            with node.client() as conn:
                slot = int(conn.execute_command("CLUSTER", "KEYSLOT", key))
                for start, end, master, *_ in conn.execute_command("CLUSTER", "SLOTS"):
                    if start <= slot <= end:
                        port = int(master[1])
                        return next(n for n in self.nodes if n.port == port)
        raise RuntimeError("no live node to ask")

    def stop(self) -> None:
        """Stop every node by PID; idempotent."""
        for node in self.nodes:
            node.stop()
        shutil.rmtree(self.root, ignore_errors=True)


_lock = threading.Lock()
_single: RedisServer | None = None
_cluster: RedisClusterServers | None = None


def single() -> RedisServer:
    """The session's single-node server, started on first use."""
    global _single
    with _lock:
        if _single is None:
            _single = RedisServer().start()
        return _single


def cluster() -> RedisClusterServers:
    """The session's 3-master, 3-replica cluster, started on first use."""
    global _cluster
    with _lock:
        if _cluster is None:
            _cluster = RedisClusterServers().start()
        return _cluster


def stop_all() -> None:
    """Stop the session's servers, if any were started."""
    global _single, _cluster
    with _lock:
        for server in (_single, _cluster):
            if server is not None:
                with contextlib.suppress(Exception):
                    server.stop()
        _single = _cluster = None


# A run that dies before its session teardown must not leave servers behind.
atexit.register(stop_all)


def main() -> None:
    """`python tests/_servers.py [--masters N] [--replicas N]`: a local Redis Cluster until Ctrl-C.

    `make redis-cluster` runs it.
    """
    import argparse  # noqa: PLC0415

    parser = argparse.ArgumentParser(description="Run a Redis Cluster on 127.0.0.1 until Ctrl-C.")
    parser.add_argument("--masters", type=int, default=3)
    parser.add_argument("--replicas", type=int, default=1)
    args = parser.parse_args()
    servers = RedisClusterServers(args.masters, args.replicas).start()
    try:
        print(f"Redis Cluster ready: {servers.url}", flush=True)
        print(f"  wasmkv tenant list --state {servers.url}", flush=True)
        print("Ctrl-C stops it and removes its data.", flush=True)
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        servers.stop()


if __name__ == "__main__":
    main()
