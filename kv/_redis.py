"""The clustered engine on redis.asyncio: `RedisStore`, an `AsyncStore` on Redis (one node) or Redis Cluster.

Imported only by `KvStore.from_url` (and `kv.RedisStore`), so the embedded
default never loads redis-py. Its operations, the key layout and the scripts
are shared with the blocking engine (`kv._redis_sync`): see `kv._redis_core`.
This module only sends their calls, each within `timeout_s`. The URL, the
client and the translation of driver errors live in `kv._redis_client`; the
optional read cache wraps this engine (`kv._read_cache`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Self, TypeVar

from redis.asyncio.cluster import RedisCluster

from . import _redis_scripts as lua
from ._errors import BackendUnavailable
from ._protocol import ScanItem
from ._redis_client import DRIVER_ERRORS, UNREADABLE, Client, Target, translate, unreadable
from ._redis_core import Call, Op, RedisCore
from ._rules import (
    DEFAULT_KEY_PREFIX,
    DEFAULT_REDIS_TIMEOUT_S,
    KeyRange,
    Namespace,
    Quota,
    Usage,
)

__all__ = [
    "DEFAULT_KEY_PREFIX",
    "DEFAULT_REDIS_TIMEOUT_S",
    "RedisStore",
]

T = TypeVar("T")


class RedisStore(RedisCore):
    """An `AsyncStore` on a `redis.asyncio.Redis` or `redis.asyncio.cluster.RedisCluster` client.

    Build one with `RedisStore.from_url`, or pass a client you configured.
    Operations are atomic on the server and quotas exact across any number of
    hosts. Each operation takes at most `timeout_s` (driver retries across a
    failover included; work that grows with the store, as `delete_tenant`, each
    page of it) and then raises `BackendUnavailable`.

    A client you pass must not decode responses (`decode_responses=False`, the default).
    Use one store from one event loop (`KvStore` opens one per loop).

    Raises:
        InvalidArgument: if an option is out of range or `key_prefix` is not a valid name.
    """

    def __init__(
        self,
        client: Client,
        *,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        timeout_s: float = DEFAULT_REDIS_TIMEOUT_S,
        where: str | None = None,
    ) -> None:
        where = where or ("Redis Cluster" if isinstance(client, RedisCluster) else "Redis")
        super().__init__(key_prefix=key_prefix, timeout_s=timeout_s, where=where)
        self.client: Client = client
        self.scripts: lua.Scripts[Any] = lua.register(client, self.op_record_ttl_ms)
        self._closed = False
        self._ready = False
        self._init_lock = asyncio.Lock()

    @classmethod
    def _on(cls, target: Target, *, key_prefix: str, timeout_s: float) -> Self:
        return cls(target.open_async(), key_prefix=key_prefix, timeout_s=timeout_s, where=target.where)

    # -- the edge: every call to Redis goes through here ---------------------------------------

    async def _run(self, op: Op[T], send: Callable[[Call], Awaitable[Any]] | None = None) -> T:
        """Run an operation of `RedisCore`, awaiting each call it makes through `send` (default: `_guard`)."""
        send = send or self._guard
        try:
            call = next(op)
            while True:
                call = op.send(await send(call))
        except StopIteration as stop:
            result: T = stop.value
            return result
        finally:
            op.close()

    async def _guard(self, call: Call) -> Any:
        """Make `call` within `timeout_s`, translating every driver error into `BackendUnavailable`, once."""
        if self._closed:
            raise BackendUnavailable("the store is closed")
        try:
            if not self._ready:
                await self._initialize()
            return await self._timed(call)
        except DRIVER_ERRORS as exc:
            raise translate(self.where, self.timeout_s, exc) from exc
        except UNREADABLE as exc:
            raise unreadable(self.where, exc) from exc

    async def _timed(self, call: Call) -> Any:
        """Make `call` within `timeout_s`, errors untranslated.

        Each call has a bound of its own, so work that grows with the store, which
        `RedisCore` makes a call per page, gets a whole bound per page. The call's
        function runs here, on a ready client, not as the operation yields it: a
        SCAN page takes a cluster's primaries from the slot map `_initialize` loads.
        """
        async with asyncio.timeout(self.timeout_s):
            # One client reaches every node: the slot the call goes to is its business.
            return await call[1](self.client)

    async def _initialize(self) -> None:
        # Concurrent first calls on a cluster client that has no slot map yet go to random nodes, and the
        # MOVED replies make redis-py rebuild its topology under busy connections; load the map once first.
        async with self._init_lock:
            if not self._ready:
                if isinstance(self.client, RedisCluster):
                    async with asyncio.timeout(self.timeout_s):
                        await self.client.initialize()
                # An upgrade is not bound by one operation's timeout (each of its commands is).
                await self._run(self._check_format(), self._timed)
                self._ready = True

    # -- reads ---------------------------------------------------------------------------------

    async def get(self, ns: Namespace, key: bytes) -> bytes | None:
        """The live value, or None.

        Raises:
            BackendUnavailable: if Redis is unreachable, fails, or does not answer within `timeout_s`.
        """
        return await self._run(self._get(ns, key))

    async def get_many(self, ns: Namespace, keys: Sequence[bytes]) -> list[bytes | None]:
        """The live values, in the order of `keys` (one MGET: a tenant's keys share a slot).

        Raises:
            BackendUnavailable: as `get`.
        """
        return await self._run(self._get_many(ns, keys))

    async def exists(self, ns: Namespace, key: bytes) -> bool:
        """Whether the key is live.

        Raises:
            BackendUnavailable: as `get`.
        """
        return await self._run(self._exists(ns, key))

    async def ttl(self, ns: Namespace, key: bytes) -> int | None:
        """Milliseconds left before the key expires; None if it has no TTL or is missing.

        Raises:
            BackendUnavailable: as `get`.
        """
        return await self._run(self._ttl(ns, key))

    async def list_keys(
        self, ns: Namespace, key_range: KeyRange, after: bytes | None, limit: int
    ) -> tuple[list[bytes], bool]:
        """Up to `limit` live keys of `key_range` past `after`, in its order, and whether more follow.

        Raises:
            BackendUnavailable: as `get`.
        """
        return await self._run(self._list_keys(ns, key_range, after, limit))

    async def scan(
        self, ns: Namespace, key_range: KeyRange, after: bytes | None, limit: int, max_bytes: int
    ) -> tuple[list[ScanItem], bool]:
        """As `list_keys`, with each key's value and TTL left, from one script (one snapshot).

        Raises:
            BackendUnavailable: as `get`.
        """
        return await self._run(self._scan(ns, key_range, after, limit, max_bytes))

    async def usage(self, tenant: str) -> Usage:
        """The tenant's live keys and bytes; sweeps its expired keys first so they never count.

        Raises:
            BackendUnavailable: as `get`.
        """
        return await self._run(self._usage(tenant))

    async def tenants(self) -> list[str]:
        """Every tenant that has written to this store (through this version of wasmkv), in byte order.

        Raises:
            BackendUnavailable: as `get`.
        """
        return await self._run(self._tenants())

    async def buckets(self, tenant: str) -> list[str]:
        """The tenant's buckets that hold at least one stored key, in byte order.

        Raises:
            BackendUnavailable: as `get`.
        """
        return await self._run(self._buckets(tenant))

    async def tenant_quota(self, tenant: str) -> Quota | None:
        """The quota stored with the tenant, or None if it has no record.

        Raises:
            BackendUnavailable: as `get`.
        """
        return await self._run(self._tenant_quota(tenant))

    async def put_tenant_quota(self, tenant: str, quota: Quota, *, only_if_absent: bool = False) -> Quota:
        """Store the tenant's quota atomically (only if it has none, with `only_if_absent`); the quota stored now.

        Raises:
            BackendUnavailable: as `get`.
        """
        return await self._run(self._put_tenant_quota(tenant, quota, only_if_absent))

    async def delete_tenant(self, tenant: str) -> int:
        """Remove every key of the tenant, its usage and its record; the number of keys removed.

        Not atomic: a write the tenant makes meanwhile may survive it.

        Raises:
            BackendUnavailable: as `get`.
        """
        return await self._run(self._delete_tenant(tenant))

    # -- writes ----------------------------------------------------------------------------------

    async def set(self, ns: Namespace, key: bytes, value: bytes, ttl_ms: int | None, quota: Quota) -> None:
        """Store a value, replacing any TTL with `ttl_ms`.

        Raises:
            QuotaExceeded: if the write would pass `max_keys` or `max_bytes`; nothing is written.
            BackendUnavailable: as `get`; the write may or may not have happened.
        """
        await self._run(self._set(ns, key, value, ttl_ms, quota))

    async def set_many(self, ns: Namespace, items: Sequence[tuple[bytes, bytes]], quota: Quota) -> None:
        """Store several values at once, all or nothing; clears their TTLs.

        Raises:
            QuotaExceeded, BackendUnavailable: as `set`.
        """
        await self._run(self._set_many(ns, items, quota))

    async def delete(self, ns: Namespace, key: bytes) -> bool:
        """Remove a key; True if it was live.

        Raises:
            BackendUnavailable: as `set`.
        """
        return bool(await self._run(self._delete_many(ns, (key,))))

    async def delete_many(self, ns: Namespace, keys: Sequence[bytes]) -> int:
        """Remove keys; the number that were live.

        Raises:
            BackendUnavailable: as `set`.
        """
        return await self._run(self._delete_many(ns, keys))

    async def increment(self, ns: Namespace, key: bytes, delta: int, quota: Quota) -> int:
        """Add `delta` to a decimal counter (missing = 0), keeping its TTL; the new value.

        Raises:
            NotANumber: if the live value is not a signed 64-bit decimal integer.
            IntegerOverflow: if the sum leaves the signed 64-bit range.
            ValueTooLarge: if the new value's decimal form is over `max_value_bytes`.
            QuotaExceeded, BackendUnavailable: as `set`.
        """
        return await self._run(self._increment(ns, key, delta, quota))

    async def compare_and_swap(
        self, ns: Namespace, key: bytes, expected: bytes | None, new: bytes, quota: Quota
    ) -> bool:
        """Set `new` (clearing the TTL) if the live value equals `expected` (None = absent).

        Raises:
            QuotaExceeded, BackendUnavailable: as `set`.
        """
        return await self._run(self._compare_and_swap(ns, key, expected, new, quota))

    async def sweep(self, limit: int) -> int:
        """Reclaim up to `limit` expired keys of the tenants this store wrote TTLs for; the number reclaimed.

        Redis frees expired values itself; this drops their index entries and
        usage. Tenants only other hosts wrote TTLs for are swept by those hosts,
        and by any `usage()` or failing quota check here.

        Raises:
            BackendUnavailable: as `get`.
        """
        return await self._run(self._sweep(limit))

    async def aclose(self) -> None:
        """Close the client's connections; idempotent."""
        if self._closed:
            return
        self._closed = True
        await self.client.aclose()
