"""Attacks on the blocking Redis engine's one-deadline-per-call (commits 62e378f, ff90318, de61b08): replies
that arrive after a call gave up, threads sharing connections with different timings, TLS sockets behind the
deadline wrapper, the parallel probe of a cluster's seeds, a closed store, and the async engine's SCAN paging.

Bounds are generous (a noisy 2-core machine): a call is held to 1.5 x timeout_s plus `SLACK_S`."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import _servers
import pytest
import redis
from test_redis_sync_attacks import FakeRedis, Trickle, _handshake, _timed

from wasmkv import kv
from wasmkv.kv import _redis_client
from wasmkv.kv._redis_core import STORE_FORMAT
from wasmkv.kv._redis_sync import RedisSyncStore

ACME = kv.Namespace("acme", "default")
TIMEOUT_S = 0.4
#: Scheduling delay a loaded machine may add to a call (not a hang: a hang is many timeouts).
SLACK_S = 0.5

Answer = Callable[[list[bytes], int], bytes | None]


def _ready_store(command: list[bytes]) -> bytes | None:
    """A fake server's answer to a connection's handshake and to the store-format check of a current store."""
    if (handshake := _handshake(command)) is not None:
        return handshake
    if command[0].upper() == b"GET" and command[1].endswith(b":format"):
        return b"+%d\r\n" % STORE_FORMAT
    return None


def _echo_server(delays: Callable[[bytes], float | Trickle]) -> Answer:
    """A fake server's answers: the handshake, the current store format, and for a GET of a data key its own
    name, after `delays(key)` seconds (or trickled, when that is a `Trickle` class's instance marker)."""

    def answer(command: list[bytes], _: int) -> bytes | None:
        if (known := _ready_store(command)) is not None:
            return known
        name = command[0].upper()
        if name != b"GET":
            return None
        reply = b"$%d\r\n%s\r\n" % (len(command[1]), command[1])
        how = delays(command[1])
        if isinstance(how, Trickle):
            return type(how)(reply)
        time.sleep(how)
        return reply

    return answer


class _VerySlowTrickle(Trickle):
    """A reply whose bytes straddle the deadline: a few arrive before it, the rest long after."""

    every_s = TIMEOUT_S / 3


# -- replies that arrive after their call gave up ----------------------------------------------------


@pytest.mark.parametrize("late", ["whole", "trickled"])
def test_a_reply_arriving_after_its_call_gave_up_is_never_the_next_calls_reply(fake, late: str) -> None:  # type: ignore[no-untyped-def]
    # The first GET's reply comes just after the deadline (whole, or a byte at a time across it). If the
    # connection went back to the pool with that reply still due, the next call on it would read it as
    # its own: a response desync, the worst failure a pooled client can have.
    def delays(key: bytes) -> float | Trickle:
        if key.endswith(b"slow"):
            return _VerySlowTrickle() if late == "trickled" else 1.2 * TIMEOUT_S
        return 0.0

    server = fake(_echo_server(delays))
    with RedisSyncStore.from_url(server.url, timeout_s=TIMEOUT_S) as store:
        for round_ in range(3):
            elapsed, exc = _timed(lambda: store.get(ACME, b"slow"))
            assert isinstance(exc, kv.BackendUnavailable), exc
            assert elapsed < 1.5 * TIMEOUT_S + SLACK_S, elapsed
            # At once, on this thread, then on another: each gets its own key's reply.
            assert store.get(ACME, b"mine%d" % round_).endswith(b"mine%d" % round_)  # type: ignore[union-attr]
            other: list[bytes | None] = []
            thread = threading.Thread(target=lambda out=other: out.append(store.get(ACME, b"theirs")))
            thread.start()
            thread.join(10)
            assert other and other[0] is not None and other[0].endswith(b"theirs"), other


def test_threads_sharing_a_store_keep_their_own_deadlines_and_replies(fake) -> None:  # type: ignore[no-untyped-def]
    # One thread's calls always time out; others' calls each take a fifth of the bound. Connections move
    # between them through the pool: the one that timed out must shorten no other thread's wait, and every
    # reply must be its own call's.
    timeout_s = 1.0

    def delays(key: bytes) -> float:
        return 2.5 * timeout_s if key.endswith(b"slow") else 0.2 * timeout_s

    server = fake(_echo_server(delays))
    failures: list[BaseException] = []
    slow_outcomes: list[tuple[float, BaseException | None]] = []

    def slow() -> None:
        for _ in range(3):
            slow_outcomes.append(_timed(lambda: store.get(ACME, b"slow")))

    def quick(me: int) -> None:
        try:
            for n in range(8):
                key = b"t%dn%d" % (me, n)
                value = store.get(ACME, key)
                assert value is not None and value.endswith(key), (key, value)
        except BaseException as exc:  # the test looks at what it was
            failures.append(exc)

    with RedisSyncStore.from_url(server.url, timeout_s=timeout_s) as store:
        store.get(ACME, b"warm")  # the client built and the format checked: what follows is plain calls
        workers = [threading.Thread(target=slow)] + [threading.Thread(target=quick, args=(i,)) for i in range(3)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(30)
    assert not failures, failures
    assert len(slow_outcomes) == 3
    for elapsed, exc in slow_outcomes:
        assert isinstance(exc, kv.BackendUnavailable), exc
        assert elapsed < 1.5 * timeout_s + SLACK_S, elapsed


# -- a stale deadline ----------------------------------------------------------------------------------


def test_a_stale_deadline_left_on_a_thread_harms_neither_plain_redis_py_nor_the_next_store_call() -> None:
    server = _servers.single()
    prefix = f"t{uuid.uuid4().hex[:8]}"
    with kv.KvStore.from_url(f"{server.url}?key_prefix={prefix}", timeout_s=TIMEOUT_S, sweep_interval_s=None) as store:
        bucket = store.tenant("acme").bucket()
        bucket.set("k", b"v")
        # The call's deadline stays on the thread after it ends; let it pass.
        time.sleep(TIMEOUT_S * 1.2)
        assert _redis_client.deadline.at < time.monotonic()
        # redis-py's own connections never read it.
        with redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=2) as plain:
            assert plain.ping()
            assert plain.get(f"{prefix}:format") is not None
        # The next store call sets its own.
        assert bucket.get("k") == b"v"
    assert _redis_client.deadline.at < time.monotonic() + TIMEOUT_S + 1


def test_a_store_closed_fails_later_calls_at_once_and_another_store_on_the_thread_still_works() -> None:
    server = _servers.single()
    prefix = f"t{uuid.uuid4().hex[:8]}"
    url = f"{server.url}?key_prefix={prefix}"
    first = kv.KvStore.from_url(url, timeout_s=TIMEOUT_S, sweep_interval_s=None)
    first.tenant("acme").bucket().set("k", b"v")
    first.close()
    for _ in range(2):
        elapsed, exc = _timed(lambda: first.engine.get(ACME, b"k"))
        assert isinstance(exc, kv.BackendUnavailable) and "closed" in str(exc), exc
        assert elapsed < 0.1 + SLACK_S
    with kv.KvStore.from_url(url, timeout_s=TIMEOUT_S, sweep_interval_s=None) as second:
        assert second.tenant("acme").bucket().get("k") == b"v"


# -- TLS behind the deadline wrapper ---------------------------------------------------------------------


class _Proxy:
    """A loopback TCP proxy to `port` that sends the server's bytes on `every_s` apart, in `chunk`-byte
    pieces (a trickle), after the first `prompt` bytes of each connection went through at once."""

    def __init__(self, port: int, *, every_s: float, chunk: int = 1, prompt: int = 0) -> None:
        self.port_to = port
        self.every_s, self.chunk, self.prompt = every_s, chunk, prompt
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.port_to))
            self._open += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, slow: bool) -> None:
        sent = 0
        try:
            while data := source.recv(65536):
                for at in range(0, len(data), self.chunk if slow else len(data)):
                    piece = data[at : at + (self.chunk if slow else len(data))]
                    if slow and sent >= self.prompt:
                        time.sleep(self.every_s)
                    sink.sendall(piece)
                    sent += len(piece)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.listener.close()
        for sock in self._open:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


def _fails_within_the_bound(proxy: _Proxy, options: str, key: str) -> None:
    """A get of `key` through the TLS `proxy` (store URL options `options`) fails within the bound; the proxy is
    closed after."""
    try:
        url = f"rediss://127.0.0.1:{proxy.port}/0?{options}"
        with kv.KvStore.from_url(url, timeout_s=TIMEOUT_S, sweep_interval_s=None) as store:
            elapsed, exc = _timed(lambda: store.tenant("acme").bucket().get(key))
    finally:
        proxy.close()
    assert isinstance(exc, kv.BackendUnavailable), exc
    assert elapsed < 1.5 * TIMEOUT_S + SLACK_S, elapsed


def test_a_tls_server_that_trickles_its_handshake_fails_the_first_call_within_the_bound(
    tls_server: _servers.RedisServer, tls_files: Path
) -> None:
    # Each piece of the TLS handshake arrives well inside a socket's wait; together they take many bounds.
    proxy = _Proxy(tls_server.port, every_s=TIMEOUT_S / 5, chunk=64)
    _fails_within_the_bound(proxy, f"tls_ca_file={tls_files / 'ca.crt'}", "k")


def test_a_tls_reply_trickled_after_a_prompt_handshake_fails_the_call_within_the_bound(
    tls_server: _servers.RedisServer, tls_files: Path
) -> None:
    # The handshake and the first calls' replies go at once, a large value then trickles in record by record.
    big = b"x" * 200_000
    prefix = f"t{uuid.uuid4().hex[:8]}"
    ca = tls_files / "ca.crt"
    with kv.KvStore.from_url(
        f"{tls_server.url}?tls_ca_file={ca}&key_prefix={prefix}", timeout_s=5, sweep_interval_s=None
    ) as direct:
        direct.tenant("acme").bucket().set("big", big)
    proxy = _Proxy(tls_server.port, every_s=TIMEOUT_S / 8, chunk=4096, prompt=16_384)
    _fails_within_the_bound(proxy, f"tls_ca_file={ca}&key_prefix={prefix}", "big")


def test_the_deadline_socket_hands_tls_calls_to_the_ssl_socket(
    tls_server: _servers.RedisServer, tls_files: Path
) -> None:
    target = _redis_client.connect(
        f"{tls_server.url}", timeout_s=2, max_connections=4, tls_ca_file=str(tls_files / "ca.crt")
    )
    _redis_client.deadline.at = time.monotonic() + 2
    client = target.open_sync()
    try:
        assert isinstance(client, redis.Redis)
        client.set("deadline-tls", b"v" * 70_000)  # more than one TLS record
        assert client.get("deadline-tls") == b"v" * 70_000
        connection = client.connection_pool.get_connection()
        try:
            sock = connection._sock  # type: ignore[attr-defined]
            assert isinstance(sock, _redis_client._DeadlineSocket)
            assert isinstance(sock._sock, ssl.SSLSocket)
            assert sock.pending() == 0
            assert sock.getpeercert()["subject"]
            assert sock.version() is not None
            assert not connection.can_read()  # a poll: nothing due, and the socket's timeout restored
            assert sock.gettimeout() == 1.0
        finally:
            client.connection_pool.release(connection)
        assert client.ping()
    finally:
        client.close()
        _redis_client.deadline.at = float("inf")


# -- the parallel probe of a cluster's seeds ---------------------------------------------------------------


class _DelayingProxy(_Proxy):
    """A proxy that holds each of the server's replies `delay_s` (a slow, distant seed), then sends it whole."""

    def __init__(self, port: int, delay_s: float) -> None:
        super().__init__(port, every_s=delay_s, chunk=1 << 30)


def _cluster_error_seed(start: Callable[[Answer], FakeRedis]) -> FakeRedis:
    """A seed that answers CLUSTER SLOTS at once with an error, as a node without cluster mode does."""
    return start(
        lambda command, _: (
            _handshake(command)
            or (b"-ERR This instance has cluster support disabled\r\n" if command[0].upper() == b"CLUSTER" else None)
        )
    )


def test_a_seed_that_answers_cluster_slots_with_an_error_first_does_not_shut_out_a_slower_healthy_one(fake) -> None:  # type: ignore[no-untyped-def]
    erring = _cluster_error_seed(fake)
    proxy = _DelayingProxy(_servers.cluster().live_nodes()[0].port, 0.1)
    try:
        url = f"redis+cluster://127.0.0.1:{erring.port},127.0.0.1:{proxy.port}"
        namespace = kv.Namespace(f"t{uuid.uuid4().hex[:8]}", "default")
        with RedisSyncStore.from_url(url, timeout_s=2) as store:
            assert store.get(namespace, b"k") is None
    finally:
        proxy.close()


def test_redis_py_alone_skips_a_seed_without_cluster_mode(fake) -> None:  # type: ignore[no-untyped-def]
    # What the probe should match: the cluster client asks its startup nodes in turn and skips one that errs.
    erring = _cluster_error_seed(fake)
    healthy = _servers.cluster().live_nodes()[0]
    nodes = [redis.cluster.ClusterNode("127.0.0.1", erring.port), redis.cluster.ClusterNode("127.0.0.1", healthy.port)]  # type: ignore[no-untyped-call]
    with redis.RedisCluster(startup_nodes=nodes, socket_timeout=2) as client:
        assert client.get(f"t{uuid.uuid4().hex}") is None


@pytest.mark.parametrize("shape", ["hostname", "duplicates", "garbage-and-refused-seeds"])
def test_cluster_seeds_by_hostname_duplicated_or_among_bad_ones_still_serve(fake, shape: str) -> None:  # type: ignore[no-untyped-def]
    healthy = _servers.cluster().live_nodes()
    with socket.create_server(("127.0.0.1", 0)) as closed:
        refused = closed.getsockname()[1]
    garbage = fake(lambda command, _: b"this is not RESP\r\n")
    seeds = {
        "hostname": [f"localhost:{healthy[0].port}", f"localhost:{healthy[1].port}"],
        "duplicates": [healthy[0].address] * 3 + [f"127.0.0.1:{healthy[0].port}"],
        "garbage-and-refused-seeds": [f"127.0.0.1:{garbage.port}", f"127.0.0.1:{refused}", healthy[2].address],
    }[shape]
    namespace = kv.Namespace(f"t{uuid.uuid4().hex[:8]}", "default")
    with RedisSyncStore.from_url("redis+cluster://" + ",".join(seeds), timeout_s=2) as store:
        store.set(namespace, b"k", b"v", None, kv.Quota())
        assert store.get(namespace, b"k") == b"v"
        assert store.delete_tenant(namespace.tenant) == 1


def test_a_password_protected_cluster_authenticates_every_node_from_the_url_or_the_option() -> None:
    # The cluster client is built from a URL naming one seed, without credentials: they must reach the
    # connections of every node it learns of, and of every seed probed.
    servers = _servers.RedisClusterServers(3, 0).start()
    password = "s3cr:t@/x"
    try:
        for node in servers.nodes:
            with node.client() as conn:
                conn.config_set("requirepass", password)
        seeds = servers.url.partition("://")[2]
        urls = [
            f"redis+cluster://:{quote(password, safe='')}@{seeds}",
            f"redis+cluster://default:{quote(password, safe='')}@{seeds}",
            f"redis+cluster://{seeds}?password={quote(password, safe='')}",
        ]
        for url in urls:
            with kv.KvStore.from_url(url, timeout_s=2, sweep_interval_s=None) as store:
                bucket = store.tenant("acme").bucket()
                bucket.set_many({f"k{i}": b"v" for i in range(30)})  # keys on every master
                assert bucket.get_many(["k0", "k29"]) == [b"v", b"v"]
                assert store.engine.delete_tenant("acme") == 30
        with (
            kv.KvStore.from_url(f"redis+cluster://{seeds}", timeout_s=2, sweep_interval_s=None) as anonymous,
            pytest.raises(kv.BackendUnavailable, match="refused the login"),
        ):
            anonymous.tenant("acme").bucket().get("k")
    finally:
        servers.stop()


def test_failing_first_calls_on_a_cluster_of_silent_seeds_leave_no_probe_threads(fake) -> None:  # type: ignore[no-untyped-def]
    silent = [fake(lambda command, _: _handshake(command)) for _ in range(6)]
    url = "redis+cluster://" + ",".join(f"127.0.0.1:{server.port}" for server in silent)

    def probes() -> int:
        return sum(thread.name.startswith("wasmkv-probe-") for thread in threading.enumerate())

    # Probes of an earlier test's first call end by that call's deadline, not with it.
    _servers.wait_until("earlier probe threads to end", lambda: probes() == 0, 10)
    with RedisSyncStore.from_url(url, timeout_s=TIMEOUT_S) as store:
        for _ in range(4):
            elapsed, exc = _timed(lambda: store.get(ACME, b"k"))
            assert isinstance(exc, kv.BackendUnavailable), exc
            assert elapsed < 1.5 * TIMEOUT_S + SLACK_S, elapsed
    # Every probe ends by its call's deadline (give a loaded machine time to schedule them).
    _servers.wait_until("the probe threads to end", lambda: probes() == 0, 5)


def test_a_cluster_url_of_more_than_64_seeds_is_refused_and_64_are_taken() -> None:
    healthy = _servers.cluster().live_nodes()[0].address
    with pytest.raises(kv.InvalidArgument, match="at most 64"):
        _redis_client.connect("redis+cluster://" + ",".join([healthy] * 65), timeout_s=1, max_connections=2)
    target = _redis_client.connect("redis+cluster://" + ",".join([healthy] * 64), timeout_s=1, max_connections=2)
    assert len(target.cluster_nodes) == 64


# -- the async engine's paging ---------------------------------------------------------------------------


def _scan_pages_server(pages: int, *, silent_after: int | None, wait_s: float) -> Answer:
    """A fake Redis whose SCAN of a tenant's keys comes in `pages` pages of one key each, `wait_s` apart
    (silent from page `silent_after` on); UNLINK and SREM answered at once, and every script as the usage
    script would (`pages` keys: the count `delete_tenant` returns)."""

    def answer(command: list[bytes], _: int) -> bytes | None:
        if (known := _ready_store(command)) is not None:
            return known
        name = command[0].upper()
        if name == b"SCAN":
            page = int(command[1])
            if silent_after is not None and page >= silent_after:
                return None
            time.sleep(wait_s)
            cursor = b"0" if page + 1 == pages else b"%d" % (page + 1)
            key = b"wkv:{acme}:d:default:%d" % page
            return b"*2\r\n$%d\r\n%s\r\n*1\r\n$%d\r\n%s\r\n" % (len(cursor), cursor, len(key), key)
        if name in (b"UNLINK", b"SREM"):
            return b":%d\r\n" % (len(command) - 1)
        if name in (b"EVALSHA", b"EVAL"):
            return b"*3\r\n:0\r\n:%d\r\n:%d\r\n" % (pages, pages)
        return None

    return answer


def test_the_async_engine_deletes_a_tenant_of_more_scan_pages_than_fit_in_the_bound(fake) -> None:  # type: ignore[no-untyped-def]
    server = fake(_scan_pages_server(12, silent_after=None, wait_s=TIMEOUT_S / 4))

    async def main() -> int:
        store = kv.RedisStore.from_url(server.url, timeout_s=TIMEOUT_S)
        try:
            return await store.delete_tenant("acme")
        finally:
            await store.aclose()

    started = time.monotonic()
    assert asyncio.run(main()) == 12
    assert time.monotonic() - started > TIMEOUT_S  # longer than one bound, so it truly paged


def test_the_async_engine_fails_a_scan_that_goes_silent_within_the_bound_of_its_last_page(fake) -> None:  # type: ignore[no-untyped-def]
    server = fake(_scan_pages_server(50, silent_after=4, wait_s=TIMEOUT_S / 4))

    async def main() -> tuple[float, BaseException | None]:
        store = kv.RedisStore.from_url(server.url, timeout_s=TIMEOUT_S)
        try:
            started = time.monotonic()
            try:
                await store.delete_tenant("acme")
            except BaseException as exc:  # the test looks at what it was
                return time.monotonic() - started, exc
            return time.monotonic() - started, None
        finally:
            await store.aclose()

    elapsed, exc = asyncio.run(main())
    assert isinstance(exc, kv.BackendUnavailable), exc
    # Four pages of a quarter bound, then one bound of silence.
    assert elapsed < 4 * TIMEOUT_S / 4 + 1.5 * TIMEOUT_S + SLACK_S, elapsed


# Resends of a paged call: see test_redis_scan_pager.py (a page is resent alone, from its own cursor).
