"""A bounded, short-lived cache of `get` results, in front of any `AsyncStore` (`ReadCache`) or `Store`.

A consistency policy, not storage, so it wraps an engine rather than living in
one: the engine contract runs over it like over any engine. A host may read a
value up to `max_age_ms` stale (another host's write, or an expiry); its own
writes through the wrapper invalidate the keys they touch at once. Both
wrappers keep their entries in one `_Entries`, which holds the policy.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Final, Generic, TypeVar

import cachetools

from ._errors import InvalidArgument
from ._protocol import AsyncStore, ScanItem, Store
from ._rules import DEFAULT_READ_CACHE_MS, KeyRange, Namespace, Quota, Usage

__all__ = ["DEFAULT_READ_CACHE_MS", "ReadCache", "SyncReadCache"]

_MISS: Final = object()


class _Entries:
    """The cached values, at most `size` for at most `max_age_ms` each; thread-safe.

    Raises:
        InvalidArgument: if `size` or `max_age_ms` is not a positive int.
    """

    def __init__(self, size: int, max_age_ms: int, clock: Callable[[], float]) -> None:
        for name, value in (("read_cache_size", size), ("read_cache_ms", max_age_ms)):
            if type(value) is not int or value < 1:
                raise InvalidArgument(f"{name} must be an int >= 1, got {value!r}")
        self._cache: cachetools.TTLCache[tuple[bytes, bytes], bytes | None] = cachetools.TTLCache(
            size, max_age_ms / 1000, timer=clock
        )
        # Bumped by every write: a read that started before a write must not refill the cache after it.
        self._epoch = 0
        self._lock = threading.Lock()

    def lookup(self, ns: Namespace, key: bytes) -> tuple[object, int]:
        """The cached value (or `_MISS`), and the epoch to `fill` with after reading the engine."""
        with self._lock:
            return self._cache.get((ns.prefix, key), _MISS), self._epoch

    def fill(self, ns: Namespace, key: bytes, value: bytes | None, epoch: int) -> None:
        """Cache a value read from the engine, unless a write began since `lookup` gave `epoch`."""
        with self._lock:
            if epoch == self._epoch:
                self._cache[(ns.prefix, key)] = value

    def forget(self, ns: Namespace, keys: Sequence[bytes]) -> None:
        """Drop `keys`; called after every write, even one that failed (it may have happened)."""
        with self._lock:
            self._epoch += 1
            for key in keys:
                self._cache.pop((ns.prefix, key), None)

    def clear(self) -> None:
        """Drop everything, as `forget` does some keys."""
        with self._lock:
            self._epoch += 1
            self._cache.clear()


#: The engine a cache is in front of.
E = TypeVar("E")


class _Front(Generic[E]):
    """What both caches hold: the engine, and the entries."""

    def __init__(
        self,
        engine: E,
        *,
        size: int,
        max_age_ms: int = DEFAULT_READ_CACHE_MS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self._entries = _Entries(size, max_age_ms, clock)


class ReadCache(_Front[AsyncStore]):
    """An `AsyncStore` that serves hot `get`s from memory, at most `size` entries for at most `max_age_ms` each.

    `clock` is monotonic seconds (injectable for tests). `SyncReadCache` is its
    twin in front of a synchronous engine.

    Raises:
        InvalidArgument: if `size` or `max_age_ms` is not a positive int.
    """

    async def get(self, ns: Namespace, key: bytes) -> bytes | None:
        """The live value, or None; from the cache when it holds the key."""
        cached, epoch = self._entries.lookup(ns, key)
        if cached is not _MISS:
            return cached  # type: ignore[return-value]
        value = await self.engine.get(ns, key)
        self._entries.fill(ns, key, value, epoch)
        return value

    # Writes: even one that failed or timed out may have happened, so the cache forgets in every case.

    async def set(self, ns: Namespace, key: bytes, value: bytes, ttl_ms: int | None, quota: Quota) -> None:
        """As `Store.set`; forgets the key."""
        try:
            await self.engine.set(ns, key, value, ttl_ms, quota)
        finally:
            self._entries.forget(ns, (key,))

    async def set_many(self, ns: Namespace, items: Sequence[tuple[bytes, bytes]], quota: Quota) -> None:
        """As `Store.set_many`; forgets the keys."""
        try:
            await self.engine.set_many(ns, items, quota)
        finally:
            self._entries.forget(ns, [key for key, _ in items])

    async def delete(self, ns: Namespace, key: bytes) -> bool:
        """As `Store.delete`; forgets the key."""
        try:
            return await self.engine.delete(ns, key)
        finally:
            self._entries.forget(ns, (key,))

    async def delete_many(self, ns: Namespace, keys: Sequence[bytes]) -> int:
        """As `Store.delete_many`; forgets the keys."""
        try:
            return await self.engine.delete_many(ns, keys)
        finally:
            self._entries.forget(ns, keys)

    async def increment(self, ns: Namespace, key: bytes, delta: int, quota: Quota) -> int:
        """As `Store.increment`; forgets the key."""
        try:
            return await self.engine.increment(ns, key, delta, quota)
        finally:
            self._entries.forget(ns, (key,))

    async def compare_and_swap(
        self, ns: Namespace, key: bytes, expected: bytes | None, new: bytes, quota: Quota
    ) -> bool:
        """As `Store.compare_and_swap`; forgets the key."""
        try:
            return await self.engine.compare_and_swap(ns, key, expected, new, quota)
        finally:
            self._entries.forget(ns, (key,))

    # Everything else reads through: listings, TTLs and batches are not cached.

    async def get_many(self, ns: Namespace, keys: Sequence[bytes]) -> list[bytes | None]:
        """As `Store.get_many`, uncached."""
        return await self.engine.get_many(ns, keys)

    async def exists(self, ns: Namespace, key: bytes) -> bool:
        """As `Store.exists`, uncached."""
        return await self.engine.exists(ns, key)

    async def ttl(self, ns: Namespace, key: bytes) -> int | None:
        """As `Store.ttl`, uncached."""
        return await self.engine.ttl(ns, key)

    async def list_keys(
        self, ns: Namespace, key_range: KeyRange, after: bytes | None, limit: int
    ) -> tuple[list[bytes], bool]:
        """As `Store.list_keys`, uncached."""
        return await self.engine.list_keys(ns, key_range, after, limit)

    async def scan(
        self, ns: Namespace, key_range: KeyRange, after: bytes | None, limit: int, max_bytes: int
    ) -> tuple[list[ScanItem], bool]:
        """As `Store.scan`, uncached (a scan reads one snapshot of the engine)."""
        return await self.engine.scan(ns, key_range, after, limit, max_bytes)

    async def usage(self, tenant: str) -> Usage:
        """As `Store.usage`, uncached."""
        return await self.engine.usage(tenant)

    async def sweep(self, limit: int) -> int:
        """As `Store.sweep`."""
        return await self.engine.sweep(limit)

    async def tenants(self) -> list[str]:
        """As `Store.tenants`."""
        return await self.engine.tenants()

    async def buckets(self, tenant: str) -> list[str]:
        """As `Store.buckets`."""
        return await self.engine.buckets(tenant)

    async def tenant_quota(self, tenant: str) -> Quota | None:
        """As `Store.tenant_quota`."""
        return await self.engine.tenant_quota(tenant)

    async def put_tenant_quota(self, tenant: str, quota: Quota, *, only_if_absent: bool = False) -> Quota:
        """As `Store.put_tenant_quota`."""
        return await self.engine.put_tenant_quota(tenant, quota, only_if_absent=only_if_absent)

    async def delete_tenant(self, tenant: str) -> int:
        """As `Store.delete_tenant`; forgets everything cached."""
        try:
            return await self.engine.delete_tenant(tenant)
        finally:
            self._entries.clear()

    async def aclose(self) -> None:
        """Close the engine."""
        self._entries.clear()
        await self.engine.aclose()


class SyncReadCache(_Front[Store]):
    """A `Store` that serves hot `get`s from memory: `ReadCache`'s policy in front of a synchronous engine.

    Thread-safe. `close()` closes the engine.

    Raises:
        InvalidArgument: if `size` or `max_age_ms` is not a positive int.
    """

    def get(self, ns: Namespace, key: bytes) -> bytes | None:
        """The live value, or None; from the cache when it holds the key."""
        cached, epoch = self._entries.lookup(ns, key)
        if cached is not _MISS:
            return cached  # type: ignore[return-value]
        value = self.engine.get(ns, key)
        self._entries.fill(ns, key, value, epoch)
        return value

    # Writes forget the keys they touch whatever happened, as `ReadCache`'s do.

    def set(self, ns: Namespace, key: bytes, value: bytes, ttl_ms: int | None, quota: Quota) -> None:
        """As `Store.set`; forgets the key."""
        with self._forgetting(ns, (key,)):
            self.engine.set(ns, key, value, ttl_ms, quota)

    def set_many(self, ns: Namespace, items: Sequence[tuple[bytes, bytes]], quota: Quota) -> None:
        """As `Store.set_many`; forgets the keys."""
        with self._forgetting(ns, [key for key, _ in items]):
            self.engine.set_many(ns, items, quota)

    def delete(self, ns: Namespace, key: bytes) -> bool:
        """As `Store.delete`; forgets the key."""
        with self._forgetting(ns, (key,)):
            return self.engine.delete(ns, key)

    def delete_many(self, ns: Namespace, keys: Sequence[bytes]) -> int:
        """As `Store.delete_many`; forgets the keys."""
        with self._forgetting(ns, keys):
            return self.engine.delete_many(ns, keys)

    def increment(self, ns: Namespace, key: bytes, delta: int, quota: Quota) -> int:
        """As `Store.increment`; forgets the key."""
        with self._forgetting(ns, (key,)):
            return self.engine.increment(ns, key, delta, quota)

    def compare_and_swap(self, ns: Namespace, key: bytes, expected: bytes | None, new: bytes, quota: Quota) -> bool:
        """As `Store.compare_and_swap`; forgets the key."""
        with self._forgetting(ns, (key,)):
            return self.engine.compare_and_swap(ns, key, expected, new, quota)

    def delete_tenant(self, tenant: str) -> int:
        """As `Store.delete_tenant`; forgets everything cached."""
        try:
            return self.engine.delete_tenant(tenant)
        finally:
            self._entries.clear()

    @contextlib.contextmanager
    def _forgetting(self, ns: Namespace, keys: Sequence[bytes]) -> Iterator[None]:
        try:
            yield
        finally:
            self._entries.forget(ns, keys)

    # Everything else reads through, uncached.

    def get_many(self, ns: Namespace, keys: Sequence[bytes]) -> list[bytes | None]:
        """As `Store.get_many`, uncached."""
        return self.engine.get_many(ns, keys)

    def exists(self, ns: Namespace, key: bytes) -> bool:
        """As `Store.exists`, uncached."""
        return self.engine.exists(ns, key)

    def ttl(self, ns: Namespace, key: bytes) -> int | None:
        """As `Store.ttl`, uncached."""
        return self.engine.ttl(ns, key)

    def list_keys(
        self, ns: Namespace, key_range: KeyRange, after: bytes | None, limit: int
    ) -> tuple[list[bytes], bool]:
        """As `Store.list_keys`, uncached."""
        return self.engine.list_keys(ns, key_range, after, limit)

    def scan(
        self, ns: Namespace, key_range: KeyRange, after: bytes | None, limit: int, max_bytes: int
    ) -> tuple[list[ScanItem], bool]:
        """As `Store.scan`, uncached."""
        return self.engine.scan(ns, key_range, after, limit, max_bytes)

    def usage(self, tenant: str) -> Usage:
        """As `Store.usage`, uncached."""
        return self.engine.usage(tenant)

    def sweep(self, limit: int) -> int:
        """As `Store.sweep`."""
        return self.engine.sweep(limit)

    def tenants(self) -> list[str]:
        """As `Store.tenants`."""
        return self.engine.tenants()

    def buckets(self, tenant: str) -> list[str]:
        """As `Store.buckets`."""
        return self.engine.buckets(tenant)

    def tenant_quota(self, tenant: str) -> Quota | None:
        """As `Store.tenant_quota`."""
        return self.engine.tenant_quota(tenant)

    def put_tenant_quota(self, tenant: str, quota: Quota, *, only_if_absent: bool = False) -> Quota:
        """As `Store.put_tenant_quota`."""
        return self.engine.put_tenant_quota(tenant, quota, only_if_absent=only_if_absent)

    def close(self) -> None:
        """Close the engine; idempotent if the engine's `close` is."""
        self._entries.clear()
        self.engine.close()
