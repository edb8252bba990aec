"""The edge of the Redis engines: clients from a URL, and driver errors translated once into `BackendUnavailable`."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
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

__all__ = [
    "DRIVER_ERRORS",
    "RETRYABLE_ERRORS",
    "Client",
    "SyncClient",
    "Target",
    "check_timeout",
    "connect",
    "translate",
]

#: A redis.asyncio client, one node or a cluster.
Client = redis.asyncio.Redis | redis.asyncio.RedisCluster
#: A blocking redis-py client, one node or a cluster.
SyncClient = redis.Redis | redis.RedisCluster


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

    #: The URL of one node (`redis://`, `rediss://`), or None for a cluster.
    node_url: str | None
    #: A cluster's startup nodes (host, port); empty for one node.
    cluster_nodes: tuple[tuple[str, int], ...]
    #: Where it points, for messages ("Redis Cluster at 127.0.0.1:7000").
    where: str
    #: What both clients take: timeouts, credentials, TLS, pool size.
    options: Mapping[str, Any]

    def open_async(self) -> Client:
        """A redis.asyncio client; it connects on first use."""
        if self.node_url is not None:
            return redis.asyncio.Redis.from_url(self.node_url, **self.options)
        return redis.asyncio.RedisCluster(
            startup_nodes=[redis.asyncio.cluster.ClusterNode(host, port) for host, port in self.cluster_nodes],
            **self.options,
        )

    def open_sync(self) -> SyncClient:
        """A blocking redis-py client, which makes no retry of its own (`RedisSyncStore` retries within its bound).

        A cluster client connects here, to load the slot map (one node's client on first use).

        Raises:
            redis.exceptions.RedisClusterException: if no startup node can be reached (see `translate`).
        """
        once = redis.retry.Retry(redis.backoff.NoBackoff(), 0)
        if self.node_url is not None:
            return redis.Redis.from_url(self.node_url, retry=once, **self.options)
        return redis.RedisCluster(
            startup_nodes=[redis.cluster.ClusterNode(host, port) for host, port in self.cluster_nodes],  # type: ignore[no-untyped-call]
            retry=once,
            **self.options,
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
    server's certificate against `tls_ca_file` (default: the system's CAs).
    `password` is used when the URL carries none.

    Raises:
        InvalidArgument: if the URL is malformed or not a Redis URL.
    """
    # The driver gives up on one socket well inside our per-operation bound, so it can retry once.
    socket_timeout = timeout_s / 2
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    tls = scheme.startswith("rediss")
    options: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": socket_timeout,
        "max_connections": max_connections,
        **({"ssl_ca_certs": tls_ca_file} if tls and tls_ca_file else {}),
    }
    try:
        if scheme in ("redis", "rediss"):
            redis.connection.parse_url(url)  # type: ignore[no-untyped-call]  # what both clients' `from_url` do: a malformed URL fails here
            options["password"] = None if parts.password else password
            return Target(url, (), f"Redis at {parts.hostname}:{parts.port or 6379}", options)
        if scheme in ("redis+cluster", "rediss+cluster"):
            nodes = tuple(_parse_node(url, address) for address in parts.netloc.rpartition("@")[2].split(","))
            if parts.path not in ("", "/", "/0"):
                raise InvalidArgument(f"a Redis Cluster has only database 0, got {url!r}")
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
        raise InvalidArgument(f"malformed Redis URL {url!r}: {exc}") from exc
    raise InvalidArgument(f"not a Redis URL (redis://, rediss://, redis+cluster://, rediss+cluster://): {url!r}")


def _parse_node(url: str, address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidArgument(f"malformed Redis Cluster URL {url!r}: expected host:port, got {address!r}")
    return host.strip("[]"), int(port)


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
