"""The edge of the Redis engines: clients from a URL, and driver errors translated once into `BackendUnavailable`.

A blocking client (`Target.open_sync`) cannot be cancelled, so it is bounded
from below: every socket it opens waits, for a connection, a handshake, a send
or each piece of a reply, at most until `deadline.at`, the end of the store
call running on the calling thread (and never longer than its own socket
timeout). A server that stays silent, answers slowly or trickles a reply a
byte at a time thus holds a call no longer than its deadline, however many
round trips it makes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final
from urllib.parse import unquote, urlsplit

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.backoff
import redis.cluster
import redis.connection
import redis.exceptions
import redis.retry

from ._errors import BackendUnavailable, InvalidArgument
from ._rules import scrubbed, shown_url

__all__ = [
    "DRIVER_ERRORS",
    "MAX_LOOKUPS",
    "MAX_SEED_NODES",
    "RETRYABLE_ERRORS",
    "UNREADABLE",
    "Client",
    "SyncClient",
    "Target",
    "check_timeout",
    "connect",
    "deadline",
    "translate",
    "unreadable",
]

#: A redis.asyncio client, one node or a cluster.
Client = redis.asyncio.Redis | redis.asyncio.RedisCluster
#: A blocking redis-py client, one node or a cluster.
SyncClient = redis.Redis | redis.RedisCluster


#: The most seed nodes a cluster URL may name.
MAX_SEED_NODES: Final = 64


class _Deadline(threading.local):
    """Per thread: the `time.monotonic()` by which the store call running on it must end."""

    #: No call running: sockets wait only their own timeouts.
    at: float = math.inf


#: The deadline of the store call on the calling thread; `RedisSyncStore` sets `deadline.at` as a call starts.
deadline: Final = _Deadline()
#: Read on every socket wait: a module global is one lookup fewer than `time.monotonic`.
_monotonic: Final = time.monotonic


class _DeadlineSocket:
    """A connected socket whose every wait ends by `deadline.at` as well as by its own timeout.

    redis-py reads a reply with as many `recv`s as it takes, each bounded by the
    socket's timeout alone: a server sending a byte at a time within it holds a
    call for ever. This one shortens the timeout to the time left before each
    wait, and fails a wait that would start past the deadline. On the hot path
    that is a clock read per wait: the socket itself is only touched when the
    time left is the shorter (or was, on the wait before).
    """

    __slots__ = ("_applied", "_sock", "_timeout", "recv")

    #: `_recv`, or while redis-py polls (`can_read`: a timeout of 0, no wait) the socket's own, which
    #: spares the poll's usual "nothing to read" exception a pass through a Python frame.
    recv: Callable[..., bytes]

    def __init__(self, sock: socket.socket, timeout: float | None) -> None:
        self._sock = sock
        # What redis-py asked for (None: no limit), and what the socket has now (less near the deadline).
        self._timeout = math.inf if timeout is None else timeout
        self._applied = sock.gettimeout()
        self.recv = self._recv

    def _shorten(self, left: float) -> None:
        """Apply the shorter of the socket's timeout and `left`, the time to the deadline."""
        if left <= 0:
            # What the socket raises when its own timeout fires, so redis-py reports it the same way.
            raise TimeoutError("the store call's deadline passed")
        applied = left if left < self._timeout else self._timeout
        self._sock.settimeout(None if applied == math.inf else applied)
        self._applied = applied

    def settimeout(self, timeout: float | None) -> None:
        self._sock.settimeout(timeout)
        self._timeout = self._applied = math.inf if timeout is None else timeout
        self.recv = self._sock.recv if timeout == 0 else self._recv

    def gettimeout(self) -> float | None:
        return None if self._timeout == math.inf else self._timeout

    # Inlined in each of the three, not a shared method: it runs on every round trip. A timeout of 0 is a
    # poll, which does not wait.
    def _recv(self, size: int, flags: int = 0) -> bytes:
        if self._timeout:
            left = deadline.at - _monotonic()
            if left < self._timeout or self._applied != self._timeout:
                self._shorten(left)
        return self._sock.recv(size, flags)

    def recv_into(self, buffer: Any, size: int = 0, flags: int = 0) -> int:
        if self._timeout:
            left = deadline.at - _monotonic()
            if left < self._timeout or self._applied != self._timeout:
                self._shorten(left)
        return self._sock.recv_into(buffer, size, flags)

    def sendall(self, data: Any, flags: int = 0) -> None:
        if self._timeout:
            left = deadline.at - _monotonic()
            if left < self._timeout or self._applied != self._timeout:
                self._shorten(left)
        self._sock.sendall(data, flags)

    def __getattr__(self, name: str) -> Any:
        # Everything else (shutdown, close, fileno, setsockopt, TLS's pending...) is the socket's own.
        return getattr(self._sock, name)


#: The most host name lookups in flight at once, over every name: a resolver that hangs costs at most this
#: many threads, however many names calls (or a cluster's redirections) bring up.
MAX_LOOKUPS: Final = 64
#: A name's newest lookup older than this gets a fresh one beside it, so a query the resolver lost does not
#: hold every call for its whole retry (seconds); at most `_MAX_LOOKUPS_PER_NAME` of a name run at once, and
#: only while fewer than half of `MAX_LOOKUPS` are in flight.
_FRESH_S: Final = 1.0
_MAX_LOOKUPS_PER_NAME: Final = 4


class _Lookup:
    """One host name's resolution, running on a thread of its own; callers wait for it each by their deadline."""

    __slots__ = ("addresses", "done", "error", "started", "waiters")

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.done = threading.Event()
        self.addresses: list[Any] = []
        self.error: OSError | None = None
        #: Called on the lookup's thread once it is done (an asyncio caller's wake-up); guarded by `_lookups_lock`.
        self.waiters: list[Callable[[], None]] = []

    def outcome(self) -> list[Any]:
        """The addresses found.

        Raises:
            OSError: a copy of the lookup's failure (one exception object is not raised on several threads).
        """
        if self.error is not None:
            raise type(self.error)(*self.error.args)
        return self.addresses


#: The lookups running now, by (host, port, family), oldest first: a caller joins the newest of its name
#: rather than start its own, so a resolver that hangs costs a few threads per name, however many calls wait.
_lookups: Final[dict[tuple[str, int, int], list[_Lookup]]] = {}
_lookups_lock = threading.Lock()


def _forget_lookups() -> None:
    # A forked child has none of its parent's threads: their lookups would never end there (nor a lock a
    # thread held at the fork be released).
    global _lookups_lock
    _lookups_lock = threading.Lock()
    _lookups.clear()


os.register_at_fork(after_in_child=_forget_lookups)


def _numeric(host: str, port: int, family: int) -> list[Any] | None:
    """The address `host` is, read without a lookup; None if it is a name."""
    try:
        return socket.getaddrinfo(host, port, family, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST)
    except (socket.gaierror, UnicodeError):
        return None


def _lookup_of(host: str, port: int, family: int) -> _Lookup:
    """The newest lookup of `host` in flight, or a new one if there is none or it is no longer fresh.

    Raises:
        OSError: if `MAX_LOOKUPS` are in flight, or no thread can be started.
    """
    key = (host, port, family)
    with _lookups_lock:
        running = _lookups.get(key)
        in_flight = sum(map(len, _lookups.values()))
        if running and (
            time.monotonic() - running[-1].started < _FRESH_S
            or len(running) >= _MAX_LOOKUPS_PER_NAME
            # A second lookup of a name only within half the cap: names that hang cannot take the lookups a
            # name resolving for the first time needs.
            or in_flight >= MAX_LOOKUPS // 2
        ):
            return running[-1]  # joining one costs nothing: never refused
        if in_flight >= MAX_LOOKUPS:
            raise OSError(
                f"cannot resolve {host!r}: {MAX_LOOKUPS} host name lookups are waiting for the resolver already "
                "(the most at once): check that DNS answers"
            )
        lookup = _Lookup()
        running = _lookups.setdefault(key, [])
        running.append(lookup)
        try:
            threading.Thread(
                target=_look_up, args=(key, lookup), name=f"wasmkv-resolve-{host}:{port}", daemon=True
            ).start()
        except RuntimeError as exc:  # no thread to be had (a process at its limits): no lookup either
            running.remove(lookup)
            if not running:
                del _lookups[key]
            raise OSError(f"cannot start a thread to resolve {host!r}: {exc}") from None
    return lookup


def _resolve(host: str, port: int, family: int) -> list[Any]:
    """`socket.getaddrinfo` for a stream socket to (`host`, `port`), waiting for a name no longer than `deadline.at`.

    An address is read at once, on the calling thread. A name is resolved on a
    daemon thread, which may outlive the wait: a resolver that hangs (a DNS
    server that stopped answering waits out the system's timeouts and retries,
    tens of seconds) then fails the call by its deadline, and its lookup is
    left to end, or not, on its own. Nothing is cached: each connection
    resolves the name afresh once the last lookup ended.

    Raises:
        TimeoutError: if the name is not resolved by the deadline.
        OSError: as `socket.getaddrinfo` (socket.gaierror) for a name that does not resolve; see `_lookup_of`.
    """
    addresses = _numeric(host, port, family)
    if addresses is not None:
        return addresses
    lookup = _lookup_of(host, port, family)
    left = deadline.at - time.monotonic()
    if not lookup.done.wait(None if left == math.inf else max(left, 0)):
        raise TimeoutError(f"resolving {host!r} did not finish by the store call's deadline")
    return lookup.outcome()


async def _resolve_async(host: str, port: int) -> list[Any]:
    """As `_resolve`, for a coroutine: it waits on its loop, until its caller's timeout cancels it.

    Not on asyncio's default executor (`loop.getaddrinfo`): a resolver that
    hangs would hold that executor's few threads (min(32, CPUs + 4)), and with
    them every `asyncio.to_thread` of the application, for the system's DNS
    timeouts.
    """
    addresses = _numeric(host, port, 0)
    if addresses is not None:
        return addresses
    lookup = _lookup_of(host, port, 0)
    loop = asyncio.get_running_loop()
    woken: asyncio.Future[None] = loop.create_future()

    def settle() -> None:
        if not woken.done():  # else cancelled meanwhile
            woken.set_result(None)

    def wake() -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits any more
            loop.call_soon_threadsafe(settle)

    with _lookups_lock:
        waiting = not lookup.done.is_set()
        if waiting:
            lookup.waiters.append(wake)
    if waiting:
        try:
            await woken
        finally:
            # Cancelled (the caller's timeout; `woken` is cancelled with it): the lookup goes on without this
            # waiter, which must not stay on its list (a hung name and a stream of calls: one each, for ever).
            with _lookups_lock, contextlib.suppress(ValueError):
                lookup.waiters.remove(wake)
    return lookup.outcome()


def _look_up(key: tuple[str, int, int], lookup: _Lookup) -> None:
    host, port, family = key
    try:
        lookup.addresses = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)
    except OSError as exc:
        lookup.error = exc
    # A name no resolver takes (an embedded NUL, too long to encode...), or an interrupt meant for another
    # thread: either way this lookup failed, and a helper thread has no one to hand an interrupt to.
    except BaseException as exc:
        lookup.error = OSError(f"cannot resolve {host!r}: {type(exc).__name__}: {exc}")
    finally:
        with _lookups_lock:
            running = _lookups.get(key)
            if running is not None and lookup in running:  # else forgotten at a fork
                running.remove(lookup)
                if not running:
                    del _lookups[key]  # the next connection resolves afresh
            lookup.done.set()
            waiters, lookup.waiters = lookup.waiters, []
        for wake in waiters:
            wake()


def _time_left(timeout: float | None) -> float:
    """The shorter of `timeout` (None: none) and the time left before `deadline.at`.

    Raises:
        TimeoutError: if the deadline has passed.
    """
    left = deadline.at - time.monotonic()
    if left <= 0:
        raise TimeoutError("the store call's deadline passed")
    return left if timeout is None or left < timeout else timeout


class _DeadlineTcpConnection(redis.connection.Connection):
    """A TCP connection whose connect, name resolution included, ends by `deadline.at`.

    redis-py's own resolves the host with no bound at all, then tries each of
    its addresses for the whole connect timeout: a name that resolves slowly,
    or to many addresses that drop SYNs, held a call for as long as they
    liked. This one resolves within the deadline (`_resolve`) and gives each
    address only the time left. The socket is left with the shorter of its
    timeout and the time left, so the TLS handshake that may follow (redis-py's
    `SSLConnection` wraps what this returns) ends by the deadline too.
    """

    def _connect(self) -> socket.socket:
        failure: OSError | None = None
        for family, kind, proto, _, address in _resolve(self.host, self.port, self.socket_type):
            sock = socket.socket(family, kind, proto)
            try:
                # As redis-py sets its sockets up.
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if self.socket_keepalive:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                    for option, value in self.socket_keepalive_options.items():
                        sock.setsockopt(socket.IPPROTO_TCP, option, value)
                sock.settimeout(_time_left(self.socket_connect_timeout))
                sock.connect(address)
                sock.settimeout(_time_left(self.socket_timeout))
                return sock
            except OSError as exc:  # TimeoutError too: the next address gets what is left, if anything is
                failure = exc
                sock.close()
        raise failure or OSError(f"{self.host!r} resolved to no address")


class _DeadlineConnectionMixin:
    """Bounds every wait of a redis-py connection, after the connect, by `deadline.at`."""

    socket_timeout: float | None

    def _connect(self) -> Any:  # a `_DeadlineSocket`, which redis-py uses as the socket it stands for
        # The connect and a TLS handshake end by the deadline (`_DeadlineTcpConnection`); the socket's later
        # waits too, from here.
        return _DeadlineSocket(super()._connect(), self.socket_timeout)  # type: ignore[misc]


class _DeadlineConnection(_DeadlineConnectionMixin, _DeadlineTcpConnection):
    """A TCP connection whose waits end by the calling store call's deadline."""


# redis-py's `SSLConnection._connect` wraps its `super()._connect()`: placed after it, the TCP connect
# above is the one it wraps.
class _DeadlineSSLConnection(_DeadlineConnectionMixin, redis.connection.SSLConnection, _DeadlineTcpConnection):
    """A TLS connection whose waits end by the calling store call's deadline."""


class _ResolvingAsyncMixin:
    """Resolves a redis.asyncio connection's host by `_resolve_async` (not asyncio's executor), then connects to
    each of its addresses in turn, as asyncio would have."""

    host: str
    port: int
    #: The address being tried; None: the host as it is (an address already, or between connects).
    _address: str | None = None

    def _connection_arguments(self) -> Mapping[str, Any]:
        arguments = dict(super()._connection_arguments())  # type: ignore[misc]
        if self._address is not None:
            arguments["host"] = self._address
            if arguments.get("ssl"):
                arguments["server_hostname"] = self.host  # the certificate names the host, not its address
        return arguments

    async def _connect(self) -> None:
        if _numeric(self.host, self.port, 0) is not None:
            await super()._connect()  # type: ignore[misc]  # asyncio reads an address without a lookup
            return
        failure: OSError | None = None
        # Each address once (a name's lookup lists one per socket type asked for), in the resolver's order.
        for address in dict.fromkeys(str(info[4][0]) for info in await _resolve_async(self.host, self.port)):
            self._address = address
            try:
                await super()._connect()  # type: ignore[misc]
                return
            except OSError as exc:  # refused, unreachable, timed out: the next address, within the call's bound
                failure = exc
            finally:
                self._address = None
        raise failure or OSError(f"{self.host!r} resolved to no address")


class _ResolvingAsyncConnection(_ResolvingAsyncMixin, redis.asyncio.Connection):
    """A redis.asyncio TCP connection that resolves its host off asyncio's executor."""


class _ResolvingAsyncSSLConnection(_ResolvingAsyncMixin, redis.asyncio.SSLConnection):
    """A redis.asyncio TLS connection that resolves its host off asyncio's executor."""


#: What the connections of a cluster's nodes take of `Target.options` (the rest is the cluster client's).
_CLUSTER_ONLY_OPTIONS: Final = frozenset({"require_full_coverage", "ssl"})


def check_timeout(timeout_s: object) -> float:
    """`timeout_s` as a float if it is a positive, finite number of seconds.

    Raises:
        InvalidArgument: otherwise.
    """
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float) or not 0 < timeout_s < float("inf"):
        raise InvalidArgument(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
    return float(timeout_s)


@dataclasses.dataclass(frozen=True, slots=True)
class Target:
    """A checked Redis URL, with how to reach it; opens either kind of client, neither connecting yet."""

    #: The URL of one node (`redis://`, `rediss://`), or None for a cluster. Not in the repr: it may hold a
    #: password.
    node_url: str | None = dataclasses.field(repr=False)
    #: A cluster's startup nodes (host, port); empty for one node.
    cluster_nodes: tuple[tuple[str, int], ...]
    #: Where it points, for messages ("Redis Cluster at 127.0.0.1:7000").
    where: str
    #: What both clients take: timeouts, credentials, TLS, pool size. Not in the repr: it holds the password.
    options: Mapping[str, Any] = dataclasses.field(repr=False)

    def open_async(self) -> Client:
        """A redis.asyncio client; it connects on first use."""
        if self.node_url is not None:
            tls = urlsplit(self.node_url).scheme.lower() == "rediss"
            connection_class = _ResolvingAsyncSSLConnection if tls else _ResolvingAsyncConnection
            return redis.asyncio.Redis.from_url(self.node_url, connection_class=connection_class, **self.options)
        client = redis.asyncio.RedisCluster(
            startup_nodes=[redis.asyncio.cluster.ClusterNode(host, port) for host, port in self.cluster_nodes],
            **self.options,
        )
        # The cluster client takes no connection class: it picks redis-py's own. Its nodes' connections are
        # made from the options it keeps (the startup nodes' already, the nodes it learns later from this
        # dict, which its node manager shares), so both are given ours; a test holds every node to it, on
        # the oldest redis-py we take and the newest.
        connection_class = _ResolvingAsyncSSLConnection if self.options.get("ssl") else _ResolvingAsyncConnection
        client.connection_kwargs["connection_class"] = connection_class
        for node in client.nodes_manager.startup_nodes.values():
            node.connection_class = connection_class
        return client

    def open_sync(self) -> SyncClient:
        """A blocking redis-py client, which makes no retry of its own (`RedisSyncStore` retries within its bound).

        Its every socket wait ends by `deadline.at` (see the module's docstring).
        A cluster client connects here, to load the slot map (one node's client
        on first use): the startup nodes are asked at once, each on a thread of
        its own, and the cluster client is given those that answered first, so
        silent ones cost one deadline together, not one socket timeout each.

        Raises:
            redis.exceptions.RedisError: if no startup node answers by the deadline (see `translate`).
            redis.exceptions.RedisClusterException: if the startup nodes that answered serve no cluster.
        """
        once = redis.retry.Retry(redis.backoff.NoBackoff(), 0)
        if self.node_url is not None:
            tls = urlsplit(self.node_url).scheme.lower() == "rediss"
            connection_class = _DeadlineSSLConnection if tls else _DeadlineConnection
            return redis.Redis.from_url(self.node_url, retry=once, connection_class=connection_class, **self.options)
        connection_class = _DeadlineSSLConnection if self.options.get("ssl") else _DeadlineConnection
        node_options = {key: value for key, value in self.options.items() if key not in _CLUSTER_ONLY_OPTIONS}
        (first_host, first_port), *others = _answering(self.cluster_nodes, connection_class, node_options, once)
        bracketed = f"[{first_host}]" if ":" in first_host else first_host
        # Only a client built from a URL hands its nodes' pools a connection class (then the URL names one
        # startup node, the others follow); the URL carries no credentials and no TLS: the options do.
        return redis.RedisCluster(
            url=f"redis://{bracketed}:{first_port}",
            startup_nodes=[redis.cluster.ClusterNode(host, port) for host, port in others],  # type: ignore[no-untyped-call]
            retry=once,
            connection_class=connection_class,
            require_full_coverage=self.options.get("require_full_coverage", False),
            **node_options,
        )


def connect(
    url: str,
    *,
    timeout_s: float,
    max_connections: int,
    password: str | None = None,
    tls_ca_file: str | None = None,
) -> Target:
    """Where a Redis URL points, checked; `Target.open_async` and `Target.open_sync` then build clients.

    `redis://[user:password@]host:port[/db]` and `redis+cluster://host:port[,host:port...]`;
    `rediss://` and `rediss+cluster://` are the same over TLS, checking the
    server's certificate, and that it names the host, against `tls_ca_file`
    (default: the system's CAs). `password` is used when the URL carries none.

    Raises:
        InvalidArgument: if the URL is malformed or not a Redis URL; the message shows no part of a password.
    """
    try:
        return _target(url, timeout_s, max_connections, password, tls_ca_file)
    except InvalidArgument as exc:
        # A parser's words may quote what it took for a port or a host: part of a password with a raw `/`.
        raise InvalidArgument(scrubbed(str(exc), url)) from None


def _target(url: str, timeout_s: float, max_connections: int, password: str | None, tls_ca_file: str | None) -> Target:
    # The driver gives up on one socket well inside our per-operation bound, so it can retry once.
    socket_timeout = timeout_s / 2
    if any(char.isspace() or not char.isprintable() for char in url):
        # A URL parser drops some (tabs, newlines) and repr() escapes the rest: either way a message would
        # quote a password in a form no scrubbing finds.
        raise InvalidArgument(
            f"malformed Redis URL {shown_url(url)!r}: it holds a space or a control character (percent-encode it)"
        )
    after_scheme = url.partition("://")[2]
    authority_end = min((at for at in map(after_scheme.find, "/?#") if at >= 0), default=len(after_scheme))
    if "@" in after_scheme[authority_end:]:
        # A password with a raw `/`, `?` or `#`: a parser ends the user part there, takes what follows the
        # `:` for a port (all digits: a valid one) and an empty host, and every later message quotes it.
        raise InvalidArgument(
            f"malformed Redis URL {shown_url(url)!r}: an '@' after its host; a password's '/', '?', '#' or '@' "
            "must be percent-encoded (%2F, %3F, %23, %40)"
        )
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # characters no URL may hold (NFKC-normalized '@' or ':' in the user part...)
        raise InvalidArgument(f"malformed Redis URL {shown_url(url)!r}: {exc}") from None
    scheme = parts.scheme.lower()
    tls = scheme.startswith("rediss")
    options: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": socket_timeout,
        "max_connections": max_connections,
        **({"ssl_ca_certs": tls_ca_file} if tls and tls_ca_file else {}),
        # The certificate must name the host dialled, not merely chain to a trusted CA: redis-py's default
        # until 6 was not to check (any certificate a public CA signs for any name would do).
        **({"ssl_check_hostname": True} if tls else {}),
    }
    try:
        if scheme in ("redis", "rediss"):
            redis.connection.parse_url(url)  # type: ignore[no-untyped-call]  # what both clients' `from_url` do: a malformed URL fails here
            options["password"] = None if parts.password else password
            _check_host(url, unquote(parts.hostname or ""))  # as redis-py takes it
            return Target(url, (), f"Redis at {parts.hostname}:{parts.port or 6379}", options)
        if scheme in ("redis+cluster", "rediss+cluster"):
            addresses = parts.netloc.rpartition("@")[2].split(",")
            if len(addresses) > MAX_SEED_NODES:
                # Each seed is asked on a thread of its own at the first call: a few are all a cluster needs.
                raise InvalidArgument(
                    f"a Redis Cluster URL names at most {MAX_SEED_NODES} seed nodes, got {len(addresses)}: "
                    "name a few of its nodes (the client learns the rest from them)"
                )
            nodes = tuple(_parse_node(url, address) for address in addresses)
            if parts.path not in ("", "/", "/0"):
                raise InvalidArgument(f"a Redis Cluster has only database 0, got {shown_url(url)!r}")
            user, _, url_password = parts.netloc.rpartition("@")[0].partition(":")
            options.update(
                username=unquote(user) or None,
                password=unquote(url_password) or password or None,
                # Serve the slots that are up while another node fails over.
                require_full_coverage=False,
                ssl=tls,
            )
            where = "Redis Cluster at " + ",".join(f"{host}:{port}" for host, port in nodes)
            return Target(None, nodes, where, options)
    except ValueError as exc:
        raise InvalidArgument(f"malformed Redis URL {shown_url(url)!r}: {exc}") from exc
    raise InvalidArgument(
        f"not a Redis URL (redis://, rediss://, redis+cluster://, rediss+cluster://): {shown_url(url)!r}"
    )


def _answering(
    nodes: Sequence[tuple[str, int]],
    connection_class: type[redis.connection.Connection],
    options: Mapping[str, Any],
    retry: redis.retry.Retry,
) -> list[tuple[str, int]]:
    """The `nodes` that serve a cluster (a non-empty CLUSTER SLOTS) by `deadline.at`, asked at once, in the
    order they answered.

    Returns as soon as one serves (those that served meanwhile too). If none does, those that answered
    otherwise (an error, as a node without cluster mode gives, or no slots): the cluster client then says
    what they are.

    Raises:
        redis.exceptions.RedisError: the first failure, if none answers at all (each fails by the deadline).
    """
    serving: list[tuple[str, int]] = []
    other: list[tuple[str, int]] = []  # answered, but serve no cluster
    failures: list[BaseException] = []
    settled = threading.Condition()
    at = deadline.at

    def ask(node: tuple[str, int]) -> None:
        deadline.at = at  # this thread's sockets end by the caller's deadline
        pool = redis.ConnectionPool(
            connection_class=connection_class, host=node[0], port=node[1], retry=retry, **options
        )
        found: list[tuple[str, int]] = other
        failure: BaseException | None = None
        try:
            slots = redis.Redis(connection_pool=pool).execute_command("CLUSTER SLOTS")  # type: ignore[no-untyped-call]
            # An error that answers first must not shut out a slower node that serves.
            found = serving if slots else other
        except redis.exceptions.ResponseError:
            found = other
        except Exception as exc:  # any failure of this node is the caller's to report, if no other answers
            failure = exc
        finally:
            pool.disconnect()
        with settled:
            if failure is None:
                found.append(node)
            else:
                failures.append(failure)
            settled.notify()

    for node in nodes:
        threading.Thread(target=ask, args=(node,), name=f"wasmkv-probe-{node[0]}:{node[1]}", daemon=True).start()
    with settled:
        # Every ask ends by the deadline; the wait's own bound is a backstop, for a deadline never set.
        wait_s = None if at == math.inf else max(at - time.monotonic(), 0) + 1
        settled.wait_for(lambda: serving or len(other) + len(failures) == len(nodes), wait_s)
        if serving or other:
            return list(serving or other)
        if failures:
            raise failures[0]
    raise redis.exceptions.TimeoutError(f"no startup node answered by the deadline ({len(nodes)} asked)")


def _parse_node(url: str, address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidArgument(f"malformed Redis Cluster URL {shown_url(url)!r}: expected host:port, got {address!r}")
    host = unquote(host.strip("[]"))  # as a node URL's host is taken
    _check_host(url, host)
    return host, int(port)


def _check_host(url: str, host: str) -> None:
    """Refuse a host that is neither an address nor a name a resolver takes (an empty label, one over 63 bytes).

    Raises:
        InvalidArgument: naming the host.
    """
    try:
        ipaddress.ip_address(host)
        return
    except ValueError:
        pass
    try:
        host.encode("idna")
    except UnicodeError as exc:
        reason = exc.__cause__ or exc  # the codec's own words: "label too long", "label empty or too long"
        raise InvalidArgument(
            f"malformed Redis URL {shown_url(url)!r}: {host!r} is not a host name ({reason})"
        ) from None


#: What `translate` maps: a timeout of ours, and whatever the driver or the socket raises (redis-py's
#: cluster errors do not derive from its `RedisError`).
DRIVER_ERRORS: Final = (TimeoutError, redis.exceptions.RedisError, redis.exceptions.RedisClusterException, OSError)
#: The driver errors after which the same call may be sent again (a lost connection, a cluster reconfiguring),
#: as redis-py's cluster client retries them; every write carries its record, so a resent one runs once.
RETRYABLE_ERRORS: Final = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.SlotNotCoveredError,
)


#: What the driver raises on a reply of a shape it does not expect, outside its own errors: redis-py takes any
#: reply to its HELLO for a map (AttributeError), reads a number of 5000 digits (ValueError), decodes bytes
#: that are not UTF-8 (UnicodeDecodeError). A server that is not Redis, or a hostile one, must cost one line.
UNREADABLE: Final = (AttributeError, TypeError, IndexError, KeyError, ValueError)


def unreadable(where: str, exc: BaseException) -> BackendUnavailable:
    """The `BackendUnavailable` for a reply the driver could not read (one of `UNREADABLE`)."""
    return BackendUnavailable(f"{where} answered in a way the Redis client cannot read ({type(exc).__name__}: {exc})")


def translate(where: str, timeout_s: float, exc: BaseException) -> BackendUnavailable:
    """The `BackendUnavailable` that a driver error (one of `DRIVER_ERRORS`) stands for, naming `where`."""
    if isinstance(exc, redis.exceptions.TimeoutError):
        return BackendUnavailable(f"{where} did not answer in time (operation timeout {timeout_s:g} s): {exc}")
    if isinstance(exc, TimeoutError):
        return BackendUnavailable(f"{where} did not answer within {timeout_s:g} s")
    if isinstance(exc, redis.exceptions.AuthenticationError) or "authenticat" in str(exc).lower():
        return BackendUnavailable(
            f"{where} refused the login ({exc}): give the password as the store's password option "
            "or in $WASMKV_REDIS_PASSWORD"
        )
    if isinstance(exc, redis.exceptions.ConnectionError) or "cannot be connected" in str(exc):
        return BackendUnavailable(f"{where} is unreachable: {exc}")
    if isinstance(exc, redis.exceptions.ClusterError | redis.exceptions.RedisClusterException):
        return BackendUnavailable(f"{where} cannot serve: {exc}")
    return BackendUnavailable(f"{where} failed: {exc}")
