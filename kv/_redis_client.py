"""The edge of the Redis engine: a client from a URL, and driver errors translated once into `BackendUnavailable`."""

from __future__ import annotations

from typing import Any, Final
from urllib.parse import unquote, urlsplit

import redis.asyncio
import redis.exceptions
from redis.asyncio.cluster import ClusterNode, RedisCluster

from ._errors import BackendUnavailable, InvalidArgument

__all__ = ["DRIVER_ERRORS", "Client", "check_timeout", "connect", "translate"]

Client = redis.asyncio.Redis | RedisCluster


def check_timeout(timeout_s: object) -> float:
    """`timeout_s` as a float if it is a positive, finite number of seconds.

    Raises:
        InvalidArgument: otherwise.
    """
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float) or not 0 < timeout_s < float("inf"):
        raise InvalidArgument(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
    return float(timeout_s)


def connect(
    url: str,
    *,
    timeout_s: float,
    max_connections: int,
    password: str | None = None,
    tls_ca_file: str | None = None,
) -> tuple[Client, str]:
    """A client for a Redis URL, and a description of where it points for messages. Connects lazily.

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
    tls_options: dict[str, Any] = {"ssl_ca_certs": tls_ca_file} if tls and tls_ca_file else {}
    try:
        if scheme in ("redis", "rediss"):
            client: Client = redis.asyncio.Redis.from_url(
                url,
                socket_timeout=socket_timeout,
                socket_connect_timeout=socket_timeout,
                max_connections=max_connections,
                password=None if parts.password else password,
                **tls_options,
            )
            return client, f"Redis at {parts.hostname}:{parts.port or 6379}"
        if scheme in ("redis+cluster", "rediss+cluster"):
            nodes = [_parse_node(url, address) for address in parts.netloc.rpartition("@")[2].split(",")]
            if parts.path not in ("", "/", "/0"):
                raise InvalidArgument(f"a Redis Cluster has only database 0, got {url!r}")
            user, _, url_password = parts.netloc.rpartition("@")[0].partition(":")
            client = RedisCluster(
                startup_nodes=[ClusterNode(host, port) for host, port in nodes],
                username=unquote(user) or None,
                password=unquote(url_password) or password or None,
                socket_timeout=socket_timeout,
                socket_connect_timeout=socket_timeout,
                max_connections=max_connections,
                # Serve the slots that are up while another node fails over.
                require_full_coverage=False,
                ssl=tls,
                **tls_options,
            )
            return client, "Redis Cluster at " + ",".join(f"{host}:{port}" for host, port in nodes)
    except (ValueError, redis.exceptions.RedisClusterException) as exc:
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
