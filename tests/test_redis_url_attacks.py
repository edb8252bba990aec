"""Attacks through a Redis URL. On the blocking engine's connect: a host name whose resolution hangs, or that
resolves to many addresses that drop the connection's SYN, must hold a call no longer than its deadline, however
many calls wait; a host no resolver takes is refused at open. And a URL's password never reaches a message.

redis-py resolves with no bound and gives each address the whole connect timeout; `kv._redis_client` resolves
on a thread of its own, one per name, and gives each address what is left of the deadline. The resolver is
replaced by one the test controls (`socket.getaddrinfo`, for the test's names only). Bounds are generous (a
noisy 2-core machine): a call is held to 1.5 x timeout_s plus `SLACK_S`."""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import _servers
import pytest
import redis.asyncio
from conftest import run_python
from test_redis_sync_attacks import _timed

from wasmkv import kv
from wasmkv.kv import _redis_client
from wasmkv.kv._redis import RedisStore
from wasmkv.kv._redis_sync import RedisSyncStore

ACME = kv.Namespace("acme", "default")
TIMEOUT_S = 0.4
SLACK_S = 0.5
BOUND_S = 1.5 * TIMEOUT_S + SLACK_S

Resolver = Callable[..., list[Any]]


class _Names:
    """`socket.getaddrinfo` with the test's own names: each maps to a function of the lookup's arguments."""

    def __init__(self, real: Resolver) -> None:
        self.real = real
        self.answers: dict[str, Resolver] = {}
        self.asked: dict[str, int] = {}
        self.lock = threading.Lock()

    def __call__(self, host: Any, *args: Any) -> list[Any]:
        answer = self.answers.get(host) if isinstance(host, str) else None
        numeric = len(args) > 4 and args[4] & socket.AI_NUMERICHOST  # no DNS: the real one reads addresses only
        if answer is None or numeric:
            return self.real(host, *args)
        with self.lock:
            self.asked[host] = self.asked.get(host, 0) + 1
        return answer(host, *args)


@pytest.fixture
def names(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Names]:
    resolver = _Names(socket.getaddrinfo)
    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    yield resolver


def _resolvers(name: str) -> int:
    return sum(thread.name.startswith(f"wasmkv-resolve-{name}:") for thread in threading.enumerate())


def _loopback(port: int) -> Resolver:
    return lambda *_: [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("127.0.0.1", port))]


def _hanging(release: threading.Event) -> Resolver:
    """A lookup that waits for `release` (at most 30 s), as for a DNS server that stopped answering, then fails."""

    def hang(*_: Any) -> list[Any]:
        release.wait(30)
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    return hang


def test_a_name_whose_resolution_hangs_fails_every_waiting_call_by_its_deadline_with_one_lookup(
    names: _Names,
) -> None:
    server = _servers.single()
    name = "hangs.wasmkv.test"
    release = threading.Event()

    def hang(*args: Any) -> list[Any]:
        release.wait(30)  # a DNS server that stopped answering: the test lets it go at the end
        return _loopback(server.port)(*args)

    names.answers[name] = hang
    with RedisSyncStore.from_url(f"redis://{name}:{server.port}", timeout_s=TIMEOUT_S) as store:
        try:
            outcomes: list[tuple[float, BaseException | None]] = []

            def call() -> None:
                outcomes.append(_timed(lambda: store.get(ACME, b"k")))

            callers = [threading.Thread(target=call) for _ in range(8)]
            for caller in callers:
                caller.start()
            for caller in callers:
                caller.join(30)
            outcomes.append(_timed(lambda: store.get(ACME, b"k")))  # one more, after the others gave up
            assert len(outcomes) == 9
            for elapsed, exc in outcomes:
                assert isinstance(exc, kv.BackendUnavailable), exc
                assert "\n" not in str(exc) and name in str(exc), exc
                assert elapsed < BOUND_S, elapsed
            # Nine calls, a lookup or two (a fresh one starts beside one over `_FRESH_S` old): a hung resolver
            # costs a few threads per name, not one per call.
            asked = names.asked[name]
            assert 1 <= asked <= _redis_client._MAX_LOOKUPS_PER_NAME
            assert _resolvers(name) == asked
        finally:
            release.set()
        # The lookups end on their own; nothing is cached, and the next connection resolves afresh.
        _servers.wait_until("the lookups to end", lambda: _resolvers(name) == 0, 10)
        assert store.get(ACME, b"k") is None
        assert names.asked[name] == asked + 1


def test_lookups_in_flight_are_capped_over_every_name_and_a_call_past_the_cap_fails_at_once(
    names: _Names, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A resolver that hangs and a stream of distinct names (many stores, or a cluster redirecting to new
    # ones): a thread each, without a cap (2000 names: 2001 threads, +170 MB).
    monkeypatch.setattr(_redis_client, "MAX_LOOKUPS", 3)
    release = threading.Event()
    hang = _hanging(release)
    hosts = [f"n{index}.wasmkv.test" for index in range(6)]
    for host in hosts:
        names.answers[host] = hang
    try:
        outcomes = []
        for host in hosts:
            with RedisSyncStore.from_url(f"redis://{host}:6379", timeout_s=TIMEOUT_S) as store:
                outcomes.append(_timed(lambda store=store: store.get(ACME, b"k")))  # type: ignore[misc]
        assert sum(_resolvers(host) for host in hosts) == 3
        for index, (elapsed, exc) in enumerate(outcomes):
            assert isinstance(exc, kv.BackendUnavailable) and "\n" not in str(exc), exc
            if index >= 3:  # past the cap: at once, naming it
                assert "3 host name lookups" in str(exc) and "(the most at once)" in str(exc), exc
                assert elapsed < SLACK_S, elapsed
    finally:
        release.set()
    _servers.wait_until("the lookups to end", lambda: sum(_resolvers(host) for host in hosts) == 0, 10)
    assert _redis_client._lookups == {}


def test_names_that_hang_leave_lookups_for_a_new_name_and_a_hung_name_is_joined_not_refused(
    names: _Names, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Names that hang, each called again and again: fresh lookups beside their stale ones took every lookup
    # of the cap, and a healthy store on another name then failed, as did one more call on a hung name.
    monkeypatch.setattr(_redis_client, "MAX_LOOKUPS", 8)
    monkeypatch.setattr(_redis_client, "_FRESH_S", 0.0)
    server = _servers.single()
    release = threading.Event()
    hang = _hanging(release)
    hung = [f"h{index}.wasmkv.test" for index in range(3)]
    for host in hung:
        names.answers[host] = hang
    names.answers["healthy.wasmkv.test"] = _loopback(server.port)
    try:
        for _ in range(4):
            for host in hung:
                with RedisSyncStore.from_url(f"redis://{host}:6379", timeout_s=0.1) as store:
                    elapsed, exc = _timed(lambda store=store: store.get(ACME, b"k"))  # type: ignore[misc]
                    assert isinstance(exc, kv.BackendUnavailable) and "the most at once" not in str(exc), exc
                    assert elapsed < 1.5 * 0.1 + SLACK_S, elapsed
        # Second lookups of a name stop at half the cap: a name resolving for the first time gets one.
        assert sum(map(len, _redis_client._lookups.values())) <= 8 // 2 + 1
        with RedisSyncStore.from_url(f"redis://healthy.wasmkv.test:{server.port}", timeout_s=2) as store:
            assert store.get(ACME, b"k") is None
    finally:
        release.set()
    _servers.wait_until("the lookups to end", lambda: not _redis_client._lookups, 10)


def test_a_lookup_the_resolver_lost_holds_calls_no_longer_than_a_fresh_one_takes(
    names: _Names, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first query is lost (it waits out the resolver's retry); the next ones answer at once. Joining the
    # lost one alone, every call failed for its whole length.
    monkeypatch.setattr(_redis_client, "_FRESH_S", 0.2)
    server = _servers.single()
    name = "lossy.wasmkv.test"
    release = threading.Event()
    first = threading.Event()

    def lossy(*args: Any) -> list[Any]:
        if not first.is_set():
            first.set()
            release.wait(30)
        return _loopback(server.port)(*args)

    names.answers[name] = lossy
    try:
        with RedisSyncStore.from_url(f"redis://{name}:{server.port}", timeout_s=1.0) as store:
            elapsed, exc = _timed(lambda: store.get(ACME, b"k"))  # waits for the lost query: times out
            assert isinstance(exc, kv.BackendUnavailable), exc
            elapsed, exc = _timed(lambda: store.get(ACME, b"k"))  # the lost one is stale: a fresh one answers
            assert exc is None, exc
            assert elapsed < 1.0 + SLACK_S, elapsed
            assert names.asked[name] == 2
    finally:
        release.set()


def test_a_lookup_that_cannot_get_a_thread_fails_the_call_in_one_line_and_leaves_nothing_behind(
    names: _Names, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = _servers.single()
    name = "threadless.wasmkv.test"
    names.answers[name] = _loopback(server.port)
    start = threading.Thread.start

    def refuse(thread: threading.Thread) -> None:
        if thread.name.startswith("wasmkv-resolve-"):
            raise RuntimeError("can't start new thread")
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", refuse)
    with RedisSyncStore.from_url(f"redis://{name}:{server.port}", timeout_s=TIMEOUT_S) as store:
        elapsed, exc = _timed(lambda: store.get(ACME, b"k"))
        assert isinstance(exc, kv.BackendUnavailable) and "\n" not in str(exc), exc
        assert "cannot start a thread to resolve" in str(exc), exc
        assert elapsed < BOUND_S, elapsed
        assert _redis_client._lookups == {}  # the name is not left waiting on a lookup that never ran
        monkeypatch.setattr(threading.Thread, "start", start)
        assert store.get(ACME, b"k") is None


def test_a_forked_child_does_not_wait_on_its_parents_lookups() -> None:
    # The child has none of the parent's threads: a lookup in flight at the fork would never end in it.
    done = run_python(
        """
        import os, socket, threading
        from wasmkv.kv import _redis_client
        real = socket.getaddrinfo
        release = threading.Event()
        def resolver(host, *args):
            if host == "forked.wasmkv.test" and not (len(args) > 4 and args[4] & socket.AI_NUMERICHOST):
                if threading.current_thread().name.startswith("wasmkv-resolve-") and not release.is_set():
                    release.wait(30)
                return real("127.0.0.1", *args)
            return real(host, *args)
        socket.getaddrinfo = resolver
        _redis_client._lookup_of("forked.wasmkv.test", 1, 0)  # hangs in the parent
        pid = os.fork()
        if pid == 0:
            release.set()  # the child's own lookups answer
            forgotten = not _redis_client._lookups
            resolved = _redis_client._resolve("forked.wasmkv.test", 1, 0)[0][4][0] == "127.0.0.1"
            os._exit(0 if forgotten and resolved else 1)
        _, status = os.waitpid(pid, 0)
        release.set()
        print("child", os.waitstatus_to_exitcode(status))
        """,
        timeout=60,
    )
    assert done.returncode == 0 and done.stdout.strip() == "child 0", (done.stdout, done.stderr[-2000:])


def test_a_name_resolving_to_many_addresses_that_drop_syns_fails_the_call_by_its_deadline(names: _Names) -> None:
    # A listener whose accept queue is full: the kernel drops further SYNs, and a connect waits its whole timeout.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    queued = []
    for _ in range(3):
        client = socket.socket()
        client.setblocking(False)
        client.connect_ex(("127.0.0.1", port))
        queued.append(client)
    name = "many.wasmkv.test"
    # Sixteen addresses, each given the connect timeout (timeout_s / 2) by redis-py: 8 x timeout_s in all.
    names.answers[name] = lambda *args: _loopback(port)(*args) * 16
    try:
        with RedisSyncStore.from_url(f"redis://{name}:{port}", timeout_s=TIMEOUT_S) as store:
            for _ in range(2):
                elapsed, exc = _timed(lambda: store.get(ACME, b"k"))
                assert isinstance(exc, kv.BackendUnavailable), exc
                assert "\n" not in str(exc), exc
                assert elapsed < BOUND_S, elapsed
    finally:
        for client in queued:
            client.close()
        listener.close()


def test_a_name_that_does_not_resolve_fails_at_once_in_one_line(names: _Names) -> None:
    name = "nowhere.wasmkv.test"

    def unknown(*_: Any) -> list[Any]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    names.answers[name] = unknown
    with RedisSyncStore.from_url(f"redis://{name}:6379", timeout_s=TIMEOUT_S) as store:
        elapsed, exc = _timed(lambda: store.get(ACME, b"k"))
    assert isinstance(exc, kv.BackendUnavailable), exc
    assert "\n" not in str(exc) and "unreachable" in str(exc) and "not known" in str(exc), exc
    assert elapsed < BOUND_S, elapsed


BAD_HOSTS = ["a" * 300, "bad..label", "x" * 64 + ".example"]


@pytest.mark.parametrize("host", BAD_HOSTS)
@pytest.mark.parametrize("shape", ["redis://:{}@{}:6379", "rediss+cluster://u:{}@127.0.0.1:1,{}:2"])
def test_a_host_no_resolver_takes_is_refused_at_open_in_one_line(host: str, shape: str) -> None:
    url = shape.format("hunter2", host)
    for open_store in (RedisSyncStore.from_url, kv.KvStore.from_url):
        with pytest.raises(kv.InvalidArgument) as caught:
            open_store(url)
        message = str(caught.value)
        assert "\n" not in message and "is not a host name" in message and "hunter2" not in message, message


@pytest.mark.parametrize("host", BAD_HOSTS)
def test_a_host_no_resolver_takes_fails_a_connect_as_an_os_error_with_no_lookup_left(host: str) -> None:
    # What the URL check refuses, should it reach a connect (a node the cluster names): the connection fails
    # as it would on a name that does not resolve, which redis-py reports as a connection error.
    with pytest.raises(OSError, match="cannot resolve"):
        _redis_client._resolve(host, 6379, 0)
    _servers.wait_until("the lookup to end", lambda: _resolvers(host) == 0, 10)


@pytest.mark.parametrize(
    "url",
    [
        "redis://:hunter2@host:99999",
        "redis://user:hunter2@host:1/0?db=2",
        "redis://host:1/?password=hunter2&nope=1",
        "redis+cluster://user:hunter2@h:1,h",
        "redis+cluster://user:hunter2@h:1/3",
        "redis+cluster://user:hun/ter?2@h:1,h",
        "rediss://:hunter2@host:1/?tls_ca_file=/x@y&password=hunter2&password=hunter2",
        "redis://:hunter2@host:1/?key_prefix=&x",
        # Characters a URL parser refuses, or reads as the end of the user part (then quotes the rest as a port).
        "redis://u:hunter2\uff20x@h:1",
        "redis://u:hun\uff1ater2@h:1",
        "redis://user:hunter2/x@host:1",
        "redis://user:hunter2#x@host:1",
        "redis+cluster://user:hunter2/x@h:1,h:2",
        # A raw `#` or `&` in an option's value, a percent-encoded option name, no `//` after the scheme.
        "redis://h:1/?password=ab#hunter2&x=1",
        "redis://h:1/?password=ab&hunter2",
        "redis://h:1/?pass%77ord=hunter2&nope=1",
        "redis+cluster:u:hunter2@h:1",
        "redis:/u:hunter2@h:1",
        # Digits before a raw `/` or `#` make a valid port (and no host): every later message quoted them.
        "redis://:4711/hunter2@redis.internal:6379",
        "redis://user:4711#hunter2@host",
        "redis://u:4711?hunter2@host",
        # Characters a parser drops (tab, newline) or repr() escapes (DEL, a zero-width or no-break space).
        "redis://u:hun\tter2@h:1",
        "redis://u:hun\nter2@h:1",
        "redis://u:hun\x7fter2@h:1",
        "redis://u:hun\u200bter2@h:1",
        "redis://u:hun\xa0ter2@h:1",
        # A raw `&` in a password option: what follows reads as another option, quoted by its own message.
        "redis://h:1/?password=abc&hunter2=part",
        "redis://h:1/?password=abc&timeout_s=hunter2",
    ],
)
def test_a_password_in_a_refused_url_never_reaches_the_message(url: str) -> None:
    # The store's own URL options (a query) are the front's; the engine takes only the server's part.
    for open_store in (kv.KvStore.from_url,) if "?" in url else (RedisSyncStore.from_url, kv.KvStore.from_url):
        with pytest.raises(kv.InvalidArgument) as caught:
            open_store(url)
        message = str(caught.value)
        assert "\n" not in message and "***" in message, message
        for part in ("hunter2", "hun", "ter2", "ter?2", "4711"):
            assert part not in message, message


@pytest.mark.parametrize("password", ["s3cret", "redis", "admin:1", "pass=0", "timeout"])
def test_hiding_a_password_keeps_the_rest_of_the_message_readable(password: str) -> None:
    # Hiding every piece of a password hid common words: "10.***.***.1", "store option *** ***".
    with pytest.raises(kv.InvalidArgument) as caught:
        kv.KvStore.from_url(f"redis://:{quote(password, safe=':=')}@10.0.0.1:6379/0?nope=1")
    message = str(caught.value)
    assert "10.0.0.1:6379" in message and "'nope'" in message and "timeout_s" in message, message
    assert ":***@10.0.0.1" in message, message
    assert not re.search(rf"(?<![A-Za-z0-9_/]){re.escape(password)}(?![A-Za-z0-9_:])", message), message


def test_an_option_after_a_password_option_is_not_quoted_where_it_may_be_the_rest_of_the_password() -> None:
    # A raw `&` cuts a password option: what follows reads as options of its own.
    for url in ("redis://h:1/?password=abc&hunter2=part", "redis://h:1/?password=abc&timeout_s=hunter2"):
        with pytest.raises(kv.InvalidArgument, match=r"after its password .* percent-encode it") as caught:
            kv.KvStore.from_url(url)
        assert "hunter2" not in str(caught.value) and "abc" not in str(caught.value), caught.value
    # Before the password, an option is quoted as ever.
    with pytest.raises(kv.InvalidArgument, match=r"timeout_s must") as caught:
        kv.KvStore.from_url("redis://h:1/?timeout_s=soon&password=abc")
    assert "soon" in str(caught.value) and "abc" not in str(caught.value), caught.value


def test_a_password_the_url_parser_refuses_is_one_line_from_the_cli_with_no_traceback() -> None:
    done = subprocess.run(
        [str(Path(sys.executable).parent / "wasmkv"), "inspect", "--state", "redis://u:hunter2\uff20x@h:1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done
    assert done.stdout == "" and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert "hunter2" not in done.stderr and "***" in done.stderr, done.stderr


@pytest.mark.parametrize("host", ["a%2E%2Eb", "%2Eexample", "x%FFy"])
def test_a_percent_encoded_host_is_checked_as_the_client_reads_it(host: str) -> None:
    for url in (f"redis://{host}:1", f"redis+cluster://127.0.0.1:1,{host}:2"):
        with pytest.raises(kv.InvalidArgument, match="is not a host name"):
            kv.KvStore.from_url(url)
    # A label of 63 bytes is a name, however long its percent-encoded form.
    _redis_client.connect(f"redis://{'%61' * 63}.example:1", timeout_s=1, max_connections=1)


def test_an_address_is_read_on_the_calling_thread_with_no_lookup(names: _Names) -> None:
    server = _servers.single()
    seen: list[tuple[Any, ...]] = []
    real = names.real

    def watch(host: Any, *args: Any) -> list[Any]:
        seen.append((host, *args))
        return real(host, *args)

    names.real = watch
    before = threading.active_count()
    assert _redis_client._resolve("127.0.0.1", server.port, 0)[0][4] == ("127.0.0.1", server.port)
    assert _redis_client._resolve("::1", 1, 0)[0][0] == socket.AF_INET6
    assert threading.active_count() == before
    # Only numeric lookups were made: nothing that could reach a DNS server.
    assert seen and all(len(args) == 6 and args[5] & socket.AI_NUMERICHOST for args in seen), seen


@pytest.mark.parametrize("url", ["redis+cluster://u:hunter2@127.0.0.1:1", "redis://u:hunter2@127.0.0.1:1"])
def test_a_target_shows_no_password_in_its_repr(url: str) -> None:
    target = _redis_client.connect(url, timeout_s=1, max_connections=1)
    assert target.options.get("password") == "hunter2" or "hunter2" in (target.node_url or "")
    assert "hunter2" not in repr(target) and "127.0.0.1:1" in repr(target)


# -- the asyncio engine --------------------------------------------------------------------------------------


def test_a_hung_resolver_never_holds_asyncios_executor_from_the_application(names: _Names) -> None:
    # redis.asyncio resolves with `loop.getaddrinfo`, on the loop's default executor: a handful of threads
    # (min(32, CPUs + 4)), which a hung resolver held, and with them every `asyncio.to_thread` of the
    # application. The async engine resolves on its own thread, one per name.
    server = _servers.single()
    name = "hangs-async.wasmkv.test"
    release = threading.Event()

    def hang(*args: Any) -> list[Any]:
        release.wait(30)
        return _loopback(server.port)(*args)

    names.answers[name] = hang

    async def attack() -> None:
        store = RedisStore.from_url(f"redis://{name}:{server.port}", timeout_s=TIMEOUT_S)
        try:
            loop = asyncio.get_running_loop()
            for _ in range(12):  # twice the executor's threads on this machine
                started = loop.time()
                with pytest.raises(kv.BackendUnavailable) as caught:
                    await store.get(ACME, b"k")
                assert "\n" not in str(caught.value), caught.value
                assert loop.time() - started < BOUND_S
            # The application's own work on the executor goes on.
            assert await asyncio.wait_for(asyncio.to_thread(lambda: 42), 5) == 42
            # No call that gave up is left waiting on a lookup (a hung name and a stream of calls: one each).
            assert all(not lookup.waiters for lookup in _redis_client._lookups[(name, server.port, 0)])
            # A few lookups (one more each `_FRESH_S` while they hang), never one per call.
            asked = names.asked[name]
            assert 1 <= asked <= _redis_client._MAX_LOOKUPS_PER_NAME and _resolvers(name) == asked
            release.set()
            await asyncio.to_thread(_servers.wait_until, "the lookups to end", lambda: _resolvers(name) == 0, 10)
            assert await store.get(ACME, b"k") is None  # resolved afresh, connected
            assert names.asked[name] == asked + 1
        finally:
            release.set()
            await store.aclose()

    asyncio.run(attack())


def test_every_node_of_an_async_cluster_client_resolves_off_asyncios_executor() -> None:
    servers = _servers.cluster()

    async def check() -> None:
        store = RedisStore.from_url(servers.url, timeout_s=5)
        try:
            assert await store.get(ACME, b"k") is None
            client = store.client
            assert isinstance(client, redis.asyncio.RedisCluster)
            nodes = list(client.nodes_manager.nodes_cache.values())
            assert len(nodes) >= 3
            for node in nodes:
                assert issubclass(node.connection_class, _redis_client._ResolvingAsyncMixin), node
        finally:
            await store.aclose()

    asyncio.run(check())


# -- TLS through a name: the certificate is checked against the name, not the address it resolved to ----------


@pytest.mark.parametrize(("name", "trusted"), [("tls.wasmkv.test", True), ("other.wasmkv.test", False)])
def test_tls_to_a_name_checks_the_certificate_against_that_name_on_both_engines(
    names: _Names, tls_server: _servers.RedisServer, tls_files: Path, name: str, trusted: bool
) -> None:
    # The certificate names 127.0.0.1 and tls.wasmkv.test; both names resolve to 127.0.0.1 here.
    names.answers[name] = _loopback(tls_server.port)
    url = f"rediss://{name}:{tls_server.port}?tls_ca_file={tls_files / 'ca.crt'}&timeout_s=5"

    def blocking() -> None:
        with kv.KvStore.from_url(url, sweep_interval_s=None) as store:
            store.tenant("acme").bucket().get("k")

    async def asynchronous() -> None:
        with kv.KvStore.from_url(url, sweep_interval_s=None) as store:
            await store.tenant("acme").async_bucket().get("k")

    for run in (blocking, lambda: asyncio.run(asynchronous())):
        if trusted:
            run()
        else:
            with pytest.raises(kv.BackendUnavailable, match=r"Hostname mismatch"):
                run()
