"""The blocking engine on redis-py: `RedisSyncStore`, a `Store` on Redis (one node) or Redis Cluster.

What `KvStore.from_url` runs synchronous calls on for a Redis URL: each call
is made on the calling thread, through one thread-safe redis-py client (its
per-node connection pools hand each thread its own connection), with no hop
to an event loop. Its operations, the key layout and the scripts are those of
the async engine (`kv._redis.RedisStore`), shared in `kv._redis_core`: either
reads what the other wrote, and quotas count both engines' writes alike.

A blocking client cannot be cancelled the way an awaited call is. So the
driver makes no retry of its own (`Target.open_sync`) and each call is bounded
here: a socket waits at most `timeout_s / 2` for a connection or a reply, and a
call that failed in a way worth resending (a dropped connection, a cluster
reconfiguring) is resent, after a short pause, only while a whole socket wait
still fits in `timeout_s`. A server that stops answering fails a call after
`timeout_s / 2`, one that refuses connections after retries within `timeout_s`;
one that accepts a reconnection and then stays silent may hold a call up to
`1.5 x timeout_s`. Every write carries its record, so a resent one runs once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any, Final, Self, TypeVar

import redis
import redis.exceptions

from . import _redis_scripts as lua
from ._errors import BackendUnavailable, KvError
from ._protocol import ScanItem
from ._redis_client import DRIVER_ERRORS, RETRYABLE_ERRORS, SyncClient, Target, translate
from ._redis_core import Call, RedisCore, drive
from ._rules import DEFAULT_KEY_PREFIX, DEFAULT_REDIS_TIMEOUT_S, KeyRange, Namespace, Quota, Usage

__all__ = ["RedisSyncStore"]

#: What a node answers for a slot it does not serve (now): the cluster client knows where to go.
_REDIRECTIONS: Final = (redis.exceptions.MovedError, redis.exceptions.AskError, redis.exceptions.TryAgainError)

#: What the driver raises on a reply of a shape it does not expect, outside its own errors.
_UNREADABLE: Final = (AttributeError, TypeError, IndexError, KeyError)

#: Keys a SCAN asks for per round trip, and an UNLINK removes at once.
SCAN_COUNT: Final = 1000
UNLINK_BATCH: Final = 500
#: The pause before the first resend of a call; each later one doubles it, up to `_RETRY_PAUSE_MAX_S`.
_RETRY_PAUSE_S: Final = 0.01
_RETRY_PAUSE_MAX_S: Final = 0.2

T = TypeVar("T")


class RedisSyncStore(RedisCore):
    """A `Store` on a blocking `redis.Redis` or `redis.RedisCluster` client, for calls from any thread.

    Build one with `RedisSyncStore.from_url`. Thread-safe: threads share the
    client, each call running on its caller's thread on a pooled connection.
    Operations are atomic on the server and quotas exact across any number of
    hosts and of both engines. A call that cannot complete within its bound
    (see the module's docstring) raises `BackendUnavailable`. Connects lazily;
    a context manager, and `close()` is idempotent.

    Raises:
        InvalidArgument: if an option is out of range or `key_prefix` is not a valid name.
    """

    def __init__(
        self, target: Target, *, key_prefix: str = DEFAULT_KEY_PREFIX, timeout_s: float = DEFAULT_REDIS_TIMEOUT_S
    ) -> None:
        super().__init__(key_prefix=key_prefix, timeout_s=timeout_s, where=target.where)
        self.target = target
        # Built on first use: a cluster client connects as it is built.
        self.client: SyncClient | None = None
        self._lock = threading.Lock()
        self._ready = False
        self._closed = False
        # How many attempts to build the client and check the format failed, and why the last one did.
        self._failures = 0
        self._failure = ""
        # Whether a cluster's calls go straight to their slot's node (see `_bounded`).
        self._direct = True
        # What a socket may wait (the client's timeouts): a resend is made only while this much time is left.
        self._socket_wait_s = float(target.options.get("socket_timeout") or self.timeout_s)

    @classmethod
    def _on(cls, target: Target, *, key_prefix: str, timeout_s: float) -> Self:
        return cls(target, key_prefix=key_prefix, timeout_s=timeout_s)

    # -- the edge: every call to Redis goes through here ---------------------------------------

    def _send(self, call: Call) -> Any:
        """Make one call within its bound, translating every driver error into `BackendUnavailable`, once."""
        if not self._ready:
            self._initialize()
        return self._bounded(call)

    def _bounded(self, call: Call) -> Any:
        if self._closed:
            raise BackendUnavailable("the store is closed")
        route, send = call
        client = self.client  # None only for the call that builds it
        # A cluster call for one slot goes straight to the client of the node that serves it, skipping the
        # cluster client's routing (about a third of a GET's time). If the slot has moved, the call goes
        # again through the cluster client, which follows the redirection and updates its slot map. If
        # the node failed, calls go through the cluster client, which refreshes its map on such errors,
        # until one succeeds: during a failover the store behaves as the cluster client alone would.
        cluster = client if self._direct and isinstance(client, redis.RedisCluster) else None
        deadline = time.monotonic() + self.timeout_s
        pause = _RETRY_PAUSE_S
        while True:
            try:
                if cluster is not None and route is not None:
                    return send(_node_client(cluster, route))
                reply = send(client)
                if route is not None and not self._direct:
                    self._direct = True
                return reply
            except Exception as exc:
                # Closing the client pulls the sockets from under calls in flight, which then fail
                # in whatever way the socket did (even a ValueError of a closed file): all mean "closed".
                if self._closed:
                    raise BackendUnavailable("the store is closed") from exc
                if cluster is not None and route is not None:
                    cluster = None
                    if isinstance(exc, _REDIRECTIONS):
                        continue
                    if isinstance(exc, RETRYABLE_ERRORS):
                        self._direct = False
                if not isinstance(exc, DRIVER_ERRORS):
                    if isinstance(exc, KvError) or not isinstance(exc, _UNREADABLE):
                        raise
                    # redis-py takes any reply to its HELLO for a map: a server that is not Redis (or a hostile
                    # one) fails the handshake with an AttributeError, which must be one line, not a trap.
                    raise BackendUnavailable(
                        f"{self.where} answered in a way the Redis client cannot read ({type(exc).__name__}: {exc})"
                    ) from exc
                if not isinstance(exc, RETRYABLE_ERRORS) or deadline - time.monotonic() < pause + self._socket_wait_s:
                    raise translate(self.where, self.timeout_s, exc) from exc
            time.sleep(pause)
            pause = min(pause * 2, _RETRY_PAUSE_MAX_S)

    def _initialize(self) -> None:
        # One thread builds the client and checks the format; the others wait for it rather than race it,
        # and share the outcome of the attempt they waited for: each making one of its own in turn, the
        # n-th thread to call a server that stopped answering waited n bounds.
        failures = self._failures
        with self._lock:
            if self._ready:
                return
            if self._closed:
                raise BackendUnavailable("the store is closed")
            if self._failures != failures:  # an attempt failed while this thread waited for it
                raise BackendUnavailable(self._failure)
            try:
                if self.client is None:
                    client = self._bounded((None, lambda _: self.target.open_sync()))
                    self.scripts = lua.register(client, self.op_record_ttl_ms)
                    self.client = client
                # An upgrade is not bound by one operation's timeout (each of its commands is).
                drive(self._check_format(), self._bounded)
            except BackendUnavailable as exc:
                self._failure = str(exc)
                self._failures += 1
                raise
            self._ready = True

    def _keys_matching(self, pattern: bytes) -> Call:
        return None, lambda client: list(client.scan_iter(match=pattern, count=SCAN_COUNT))

    def _unlink_matching(self, pattern: bytes, counted: bytes) -> Call:
        def unlink(client: SyncClient) -> int:
            removed = 0
            batch: list[bytes] = []
            for key in client.scan_iter(match=pattern, count=SCAN_COUNT):
                batch.append(key)
                removed += key.startswith(counted)
                if len(batch) == UNLINK_BATCH:
                    client.unlink(*batch)
                    batch = []
            if batch:
                client.unlink(*batch)
            return removed

        return None, unlink

    # -- the operations: each runs one of `RedisCore`'s ------------------------------------------

    def get(self, ns: Namespace, key: bytes) -> bytes | None:
        """As `RedisStore.get`."""
        return drive(self._get(ns, key), self._send)

    def get_many(self, ns: Namespace, keys: Sequence[bytes]) -> list[bytes | None]:
        """As `RedisStore.get_many`."""
        return drive(self._get_many(ns, keys), self._send)

    def exists(self, ns: Namespace, key: bytes) -> bool:
        """As `RedisStore.exists`."""
        return drive(self._exists(ns, key), self._send)

    def ttl(self, ns: Namespace, key: bytes) -> int | None:
        """As `RedisStore.ttl`."""
        return drive(self._ttl(ns, key), self._send)

    def list_keys(
        self, ns: Namespace, key_range: KeyRange, after: bytes | None, limit: int
    ) -> tuple[list[bytes], bool]:
        """As `RedisStore.list_keys`."""
        return drive(self._list_keys(ns, key_range, after, limit), self._send)

    def scan(
        self, ns: Namespace, key_range: KeyRange, after: bytes | None, limit: int, max_bytes: int
    ) -> tuple[list[ScanItem], bool]:
        """As `RedisStore.scan`."""
        return drive(self._scan(ns, key_range, after, limit, max_bytes), self._send)

    def usage(self, tenant: str) -> Usage:
        """As `RedisStore.usage`."""
        return drive(self._usage(tenant), self._send)

    def tenants(self) -> list[str]:
        """As `RedisStore.tenants`."""
        return drive(self._tenants(), self._send)

    def buckets(self, tenant: str) -> list[str]:
        """As `RedisStore.buckets`."""
        return drive(self._buckets(tenant), self._send)

    def tenant_quota(self, tenant: str) -> Quota | None:
        """As `RedisStore.tenant_quota`."""
        return drive(self._tenant_quota(tenant), self._send)

    def put_tenant_quota(self, tenant: str, quota: Quota, *, only_if_absent: bool = False) -> Quota:
        """As `RedisStore.put_tenant_quota`."""
        return drive(self._put_tenant_quota(tenant, quota, only_if_absent), self._send)

    def delete_tenant(self, tenant: str) -> int:
        """As `RedisStore.delete_tenant`; its SCAN and UNLINKs are each bounded, not the whole."""
        return drive(self._delete_tenant(tenant), self._send)

    def set(self, ns: Namespace, key: bytes, value: bytes, ttl_ms: int | None, quota: Quota) -> None:
        """As `RedisStore.set`."""
        drive(self._set(ns, key, value, ttl_ms, quota), self._send)

    def set_many(self, ns: Namespace, items: Sequence[tuple[bytes, bytes]], quota: Quota) -> None:
        """As `RedisStore.set_many`."""
        drive(self._set_many(ns, items, quota), self._send)

    def delete(self, ns: Namespace, key: bytes) -> bool:
        """As `RedisStore.delete`."""
        return bool(drive(self._delete_many(ns, (key,)), self._send))

    def delete_many(self, ns: Namespace, keys: Sequence[bytes]) -> int:
        """As `RedisStore.delete_many`."""
        return drive(self._delete_many(ns, keys), self._send)

    def increment(self, ns: Namespace, key: bytes, delta: int, quota: Quota) -> int:
        """As `RedisStore.increment`."""
        return drive(self._increment(ns, key, delta, quota), self._send)

    def compare_and_swap(self, ns: Namespace, key: bytes, expected: bytes | None, new: bytes, quota: Quota) -> bool:
        """As `RedisStore.compare_and_swap`."""
        return drive(self._compare_and_swap(ns, key, expected, new, quota), self._send)

    def sweep(self, limit: int) -> int:
        """As `RedisStore.sweep`."""
        return drive(self._sweep(limit), self._send)

    def close(self) -> None:
        """Close the client's connections; idempotent. Calls in flight fail with `BackendUnavailable`."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        # The client stays: a call in flight on another thread fails on its closed connection, not on a None.
        if self.client is not None:
            self.client.close()

    @property
    def closed(self) -> bool:
        """Whether `close()` has been called."""
        return self._closed

    def __enter__(self) -> RedisSyncStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _node_client(client: redis.RedisCluster, key: bytes) -> redis.Redis:
    """The client of the primary that serves `key`'s slot, by the cluster client's slot map (its pool, too)."""
    return client.get_redis_connection(client.get_node_from_key(key))  # type: ignore[no-untyped-call]
