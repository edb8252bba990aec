"""The blocking engine on redis-py: `RedisSyncStore`, a `Store` on Redis (one node) or Redis Cluster.

What `KvStore.from_url` runs synchronous calls on for a Redis URL: each call
is made on the calling thread, through one thread-safe redis-py client (its
per-node connection pools hand each thread its own connection), with no hop
to an event loop. Its operations, the key layout and the scripts are those of
the async engine (`kv._redis.RedisStore`), shared in `kv._redis_core`: either
reads what the other wrote, and quotas count both engines' writes alike.

A blocking client cannot be cancelled the way an awaited call is. So the
driver makes no retry of its own (`Target.open_sync`) and each store call is
bounded here by one deadline, `timeout_s` after it starts, which every round
trip of it shares: a socket waits at most `timeout_s / 2` for a connection or
a reply, and never past the deadline (`kv._redis_client.deadline`), however
many round trips the call makes or however slowly a reply trickles in. A call
that failed in a way worth resending (a dropped connection, a cluster
reconfiguring) is resent, after a short pause, only while a whole socket wait
still fits before the deadline. The first call also builds the client (for a
cluster, asking every startup node at once) and checks the store format within
the same deadline. So a server that stops answering, answers slowly or drops
connections fails a call with `BackendUnavailable` by its deadline (plus the
time the machine takes to schedule it). Every write carries its record, so a
resent one runs once.

The exception is work that grows with the store: upgrading a first-format
store, deleting a tenant, sweeping. The deadline restarts each time such a call
completes a page of it (a SCAN page that leaves more to scan, a batch of
index keys or of unlinked keys, a tenant swept), so a healthy server completes
any amount of it, and a slow or silent one fails it within `timeout_s` of the
last page. Each page is a round trip of its own: one that failed is resent
alone (a SCAN page from its own cursor), within the deadline as the page
found it, so a server that keeps failing a page without completing one fails
the call by then.
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
from ._redis_client import (
    DRIVER_ERRORS,
    RETRYABLE_ERRORS,
    UNREADABLE,
    SyncClient,
    Target,
    deadline,
    translate,
    unreadable,
)
from ._redis_core import Call, Op, RedisCore, drive
from ._rules import DEFAULT_KEY_PREFIX, DEFAULT_REDIS_TIMEOUT_S, KeyRange, Namespace, Quota, Usage

__all__ = ["RedisSyncStore"]

#: What a node answers for a slot it does not serve (now): the cluster client knows where to go.
_REDIRECTIONS: Final = (redis.exceptions.MovedError, redis.exceptions.AskError, redis.exceptions.TryAgainError)

#: The pause before the first resend of a call; each later one doubles it, up to `_RETRY_PAUSE_MAX_S`.
_RETRY_PAUSE_S: Final = 0.01
_RETRY_PAUSE_MAX_S: Final = 0.2
#: The longest a call waiting for another's first call sleeps between looks at its outcome.
_SETTLED_WAIT_S: Final = 1.0

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
        self._lock = threading.Lock()  # held by the first call while it gets the store ready
        # Notified (under it) as each attempt to get the store ready ends, and `_lock` is released.
        self._settled = threading.Condition(threading.Lock())
        self._close_lock = threading.Lock()  # not that one: closing must not wait for a first call
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

    def _run(self, op: Op[T]) -> T:
        """Run one store call: its deadline starts now, and every round trip it makes ends by it."""
        deadline.at = time.monotonic() + self.timeout_s
        return drive(op, self._send)

    def _progressed(self) -> None:
        # A page of work that grows with the store is done: the next page gets a whole bound of its own.
        deadline.at = time.monotonic() + self.timeout_s

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
        # A resend must fit before the deadline as the call found it. Paged work restarts the deadline only
        # between calls, a page each (`RedisCore._progressed`), never within one; were a call ever to restart
        # it and then fail, resending it whole from its start could otherwise go on for ever.
        entered = deadline.at
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
                    if isinstance(exc, KvError) or not isinstance(exc, UNREADABLE):
                        raise
                    raise unreadable(self.where, exc) from exc
                left = min(entered, deadline.at) - time.monotonic()
                if not isinstance(exc, RETRYABLE_ERRORS) or left < pause + self._socket_wait_s:
                    raise translate(self.where, self.timeout_s, exc) from exc
            time.sleep(pause)
            pause = min(pause * 2, _RETRY_PAUSE_MAX_S)

    def _initialize(self) -> None:
        # One thread builds the client and checks the format; the others wait for it rather than race it,
        # and share the outcome of the attempt they waited for: each making one of its own in turn, the
        # n-th thread to call a server that stopped answering waited n bounds.
        failures = self._failures
        # Not only blocked on the lock: it is not fair, and a thread arriving after an attempt failed starts
        # one of its own, so a thread blocked on it could wait through any number of attempts (50 threads on
        # a silent server, a 0.05 s bound: 3.1-3.6 s) before it saw the one it waited for fail. Each ending
        # attempt wakes the waiters, which see it (polling instead cost 1000 waiting threads 1.4 cores).
        with self._settled:
            while not (ready := self._ready) and not self._lock.acquire(blocking=False):
                if self._failures != failures:
                    raise BackendUnavailable(self._failure)
                # Woken as an attempt ends; the timeout is a backstop for a wake-up an interrupt swallowed.
                self._settled.wait(_SETTLED_WAIT_S)
        if ready:
            # Another thread's first call got the store ready while this one waited (an upgrade may take many
            # bounds, each page restarting its deadline): this call's own bound starts now. Not through the
            # lock: a thousand waiters taking it in turn, each waking all the others, took seconds.
            self._progressed()
            return
        try:
            if self._ready:
                # Another thread's first call got the store ready while this one waited (an upgrade may take
                # many bounds, each page restarting its deadline): this call's own bound starts now.
                self._progressed()
                return
            if self._closed:
                raise BackendUnavailable("the store is closed")
            if self._failures != failures:  # an attempt failed while this thread waited for it
                raise BackendUnavailable(self._failure)
            try:
                if self.client is None:
                    client = self._bounded((None, lambda _: self.target.open_sync()))
                    self.scripts = lua.register(client, self.op_record_ttl_ms)
                    with self._close_lock:
                        if self._closed:  # closed while it was being built: `close` found no client to close
                            client.close()
                            raise BackendUnavailable("the store is closed")
                        self.client = client
                # Within the deadline of the call that got here first: a slow server cannot stretch it by
                # answering each of the check's round trips just in time (an upgrade's pages restart it).
                drive(self._check_format(), self._bounded)
            except BackendUnavailable as exc:
                self._failure = str(exc)
                self._failures += 1
                raise
            self._ready = True
        finally:
            with self._settled:
                self._lock.release()
                self._settled.notify_all()

    # -- the operations: each runs one of `RedisCore`'s ------------------------------------------

    def get(self, ns: Namespace, key: bytes) -> bytes | None:
        """As `RedisStore.get`."""
        return self._run(self._get(ns, key))

    def get_many(self, ns: Namespace, keys: Sequence[bytes]) -> list[bytes | None]:
        """As `RedisStore.get_many`."""
        return self._run(self._get_many(ns, keys))

    def exists(self, ns: Namespace, key: bytes) -> bool:
        """As `RedisStore.exists`."""
        return self._run(self._exists(ns, key))

    def ttl(self, ns: Namespace, key: bytes) -> int | None:
        """As `RedisStore.ttl`."""
        return self._run(self._ttl(ns, key))

    def list_keys(
        self, ns: Namespace, key_range: KeyRange, after: bytes | None, limit: int
    ) -> tuple[list[bytes], bool]:
        """As `RedisStore.list_keys`."""
        return self._run(self._list_keys(ns, key_range, after, limit))

    def scan(
        self, ns: Namespace, key_range: KeyRange, after: bytes | None, limit: int, max_bytes: int
    ) -> tuple[list[ScanItem], bool]:
        """As `RedisStore.scan`."""
        return self._run(self._scan(ns, key_range, after, limit, max_bytes))

    def usage(self, tenant: str) -> Usage:
        """As `RedisStore.usage`."""
        return self._run(self._usage(tenant))

    def tenants(self) -> list[str]:
        """As `RedisStore.tenants`."""
        return self._run(self._tenants())

    def buckets(self, tenant: str) -> list[str]:
        """As `RedisStore.buckets`."""
        return self._run(self._buckets(tenant))

    def tenant_quota(self, tenant: str) -> Quota | None:
        """As `RedisStore.tenant_quota`."""
        return self._run(self._tenant_quota(tenant))

    def put_tenant_quota(self, tenant: str, quota: Quota, *, only_if_absent: bool = False) -> Quota:
        """As `RedisStore.put_tenant_quota`."""
        return self._run(self._put_tenant_quota(tenant, quota, only_if_absent))

    def delete_tenant(self, tenant: str) -> int:
        """As `RedisStore.delete_tenant`; each page of its SCAN and each UNLINK is bounded, not the whole."""
        return self._run(self._delete_tenant(tenant))

    def set(self, ns: Namespace, key: bytes, value: bytes, ttl_ms: int | None, quota: Quota) -> None:
        """As `RedisStore.set`."""
        self._run(self._set(ns, key, value, ttl_ms, quota))

    def set_many(self, ns: Namespace, items: Sequence[tuple[bytes, bytes]], quota: Quota) -> None:
        """As `RedisStore.set_many`."""
        self._run(self._set_many(ns, items, quota))

    def delete(self, ns: Namespace, key: bytes) -> bool:
        """As `RedisStore.delete`."""
        return bool(self._run(self._delete_many(ns, (key,))))

    def delete_many(self, ns: Namespace, keys: Sequence[bytes]) -> int:
        """As `RedisStore.delete_many`."""
        return self._run(self._delete_many(ns, keys))

    def increment(self, ns: Namespace, key: bytes, delta: int, quota: Quota) -> int:
        """As `RedisStore.increment`."""
        return self._run(self._increment(ns, key, delta, quota))

    def compare_and_swap(self, ns: Namespace, key: bytes, expected: bytes | None, new: bytes, quota: Quota) -> bool:
        """As `RedisStore.compare_and_swap`."""
        return self._run(self._compare_and_swap(ns, key, expected, new, quota))

    def sweep(self, limit: int) -> int:
        """As `RedisStore.sweep`."""
        return self._run(self._sweep(limit))

    def close(self) -> None:
        """Close the client's connections; idempotent. Calls in flight fail with `BackendUnavailable`, a
        first call getting the store ready (say, through a long upgrade) included: closing does not wait for it."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
            client = self.client
        # The client stays: a call in flight on another thread fails on its closed connection, not on a None.
        if client is not None:
            client.close()

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
