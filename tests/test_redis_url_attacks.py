"""Attacks through a Redis URL. On the blocking engine's connect: a host name whose resolution hangs, or that
resolves to many addresses that drop the connection's SYN, must hold a call no longer than its deadline, however
many calls wait; a host no resolver takes is refused at open. And a URL's password never reaches a message.

redis-py resolves with no bound and gives each address the whole connect timeout; `kv._redis_client` resolves
on a thread of its own, one per name, and gives each address what is left of the deadline. The resolver is
replaced by one the test controls (`socket.getaddrinfo`, for the test's names only). Bounds are generous (a
noisy 2-core machine): a call is held to 1.5 x timeout_s plus `SLACK_S`."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import _servers
import pytest
from test_redis_sync_attacks import _timed

from wasmkv import kv
from wasmkv.kv import _redis_client
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
            # Nine calls, one lookup: a hung resolver costs one thread per name, not one per call.
            assert names.asked[name] == 1
            assert _resolvers(name) == 1
        finally:
            release.set()
        # The lookup ends on its own; nothing is cached, and the next connection resolves afresh.
        _servers.wait_until("the lookup to end", lambda: _resolvers(name) == 0, 10)
        assert store.get(ACME, b"k") is None
        assert names.asked[name] == 2


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
    ],
)
def test_a_password_in_a_refused_url_never_reaches_the_message(url: str) -> None:
    # The store's own URL options (a query) are the front's; the engine takes only the server's part.
    for open_store in (kv.KvStore.from_url,) if "?" in url else (RedisSyncStore.from_url, kv.KvStore.from_url):
        with pytest.raises(kv.InvalidArgument) as caught:
            open_store(url)
        message = str(caught.value)
        assert "\n" not in message and "hunter2" not in message and "ter?2" not in message, message


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


def test_a_target_shows_no_password_in_its_repr() -> None:
    target = _redis_client.connect("redis+cluster://u:hunter2@127.0.0.1:1", timeout_s=1, max_connections=1)
    assert target.options["password"] == "hunter2"
    assert "hunter2" not in repr(target) and "127.0.0.1:1" in repr(target)
