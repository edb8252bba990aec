"""What an engine implements: `Store` (synchronous) and its twin `AsyncStore`.

Engines only store. The front layer (`KvStore` → `Tenant` → `Bucket`) has
already validated every key, value and argument, checked the rate limit and
turned keys into UTF-8 bytes; it passes the tenant's `Quota` to every write so
that the engine can check it atomically with the write (under its own lock, or
inside a server-side script). Engines raise only `KvError` subclasses.

Every operation is required, including the housekeeping ones (`sweep`,
`tenants`, `buckets`): an engine with nothing to sweep returns 0. Callers never
probe an engine for what it can do. One capability is optional and declared:
`DirectReads`, reads already in the shape `Bucket` returns, which `KvStore`
checks for once, when it is handed the engine.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from ._rules import KeyRange, Namespace, Quota, Usage

ScanItem = tuple[bytes, bytes, int | None]
"""One item of an engine's scan: the key, its value, and the milliseconds it has left (None: no TTL)."""


@runtime_checkable
class Store(Protocol):
    """A synchronous engine. Keys are validated UTF-8 bytes; `ttl_ms=None` means no expiry."""

    def get(self, ns: Namespace, key: bytes) -> bytes | None:
        """The live value, or None."""

    def get_many(self, ns: Namespace, keys: Sequence[bytes]) -> list[bytes | None]:
        """The live values, in the order of `keys`."""

    def exists(self, ns: Namespace, key: bytes) -> bool:
        """Whether the key is live."""

    def ttl(self, ns: Namespace, key: bytes) -> int | None:
        """Milliseconds left before the key expires; None if it has no TTL or is missing."""

    def set(self, ns: Namespace, key: bytes, value: bytes, ttl_ms: int | None, quota: Quota) -> None:
        """Store a value, replacing any TTL with `ttl_ms`."""

    def set_many(self, ns: Namespace, items: Sequence[tuple[bytes, bytes]], quota: Quota) -> None:
        """Store several values at once, all or nothing; clears their TTLs."""

    def delete(self, ns: Namespace, key: bytes) -> bool:
        """Remove a key; True if it was live."""

    def delete_many(self, ns: Namespace, keys: Sequence[bytes]) -> int:
        """Remove keys; the number that were live."""

    def increment(self, ns: Namespace, key: bytes, delta: int, quota: Quota) -> int:
        """Add `delta` to a decimal counter (missing = 0), keeping its TTL; the new value."""

    def compare_and_swap(self, ns: Namespace, key: bytes, expected: bytes | None, new: bytes, quota: Quota) -> bool:
        """Set `new` (clearing the TTL) if the live value equals `expected` (None = absent)."""

    def list_keys(
        self, ns: Namespace, key_range: KeyRange, after: bytes | None, limit: int
    ) -> tuple[list[bytes], bool]:
        """Up to `limit` live keys of `key_range` past `after`, in its order, and whether more follow.

        Past `after` means after it in byte order, or before it when the range is reversed.
        """

    def scan(
        self, ns: Namespace, key_range: KeyRange, after: bytes | None, limit: int, max_bytes: int
    ) -> tuple[list[ScanItem], bool]:
        """As `list_keys`, with each key's value and TTL left, read from one consistent snapshot.

        A page holds at most `limit` items and at most `max_bytes` of keys and
        values, except that a first item larger than that comes alone.
        """

    def usage(self, tenant: str) -> Usage:
        """The tenant's live keys and bytes, expired keys excluded."""

    def sweep(self, limit: int) -> int:
        """Reclaim up to `limit` expired keys now; the number reclaimed (0 when there is nothing to do)."""

    def tenants(self) -> list[str]:
        """Every tenant with a stored quota or data in this store, in byte order."""

    def buckets(self, tenant: str) -> list[str]:
        """The tenant's buckets that hold at least one stored key, in byte order."""

    def tenant_quota(self, tenant: str) -> Quota | None:
        """The quota stored with the tenant, or None if it has no record."""

    def put_tenant_quota(self, tenant: str, quota: Quota, *, only_if_absent: bool = False) -> Quota:
        """Store the tenant's quota atomically (only if it has none, with `only_if_absent`); the quota stored now."""

    def delete_tenant(self, tenant: str) -> int:
        """Remove every key of the tenant, its usage and its record; the number of keys removed."""

    def close(self) -> None:
        """Release the engine; idempotent."""


@runtime_checkable
class AsyncStore(Protocol):
    """The asynchronous twin of `Store`: the same operations, awaited; `aclose` instead of `close`."""

    async def get(self, ns: Namespace, key: bytes) -> bytes | None:
        """As `Store.get`."""

    async def get_many(self, ns: Namespace, keys: Sequence[bytes]) -> list[bytes | None]:
        """As `Store.get_many`."""

    async def exists(self, ns: Namespace, key: bytes) -> bool:
        """As `Store.exists`."""

    async def ttl(self, ns: Namespace, key: bytes) -> int | None:
        """As `Store.ttl`."""

    async def set(self, ns: Namespace, key: bytes, value: bytes, ttl_ms: int | None, quota: Quota) -> None:
        """As `Store.set`."""

    async def set_many(self, ns: Namespace, items: Sequence[tuple[bytes, bytes]], quota: Quota) -> None:
        """As `Store.set_many`."""

    async def delete(self, ns: Namespace, key: bytes) -> bool:
        """As `Store.delete`."""

    async def delete_many(self, ns: Namespace, keys: Sequence[bytes]) -> int:
        """As `Store.delete_many`."""

    async def increment(self, ns: Namespace, key: bytes, delta: int, quota: Quota) -> int:
        """As `Store.increment`."""

    async def compare_and_swap(
        self, ns: Namespace, key: bytes, expected: bytes | None, new: bytes, quota: Quota
    ) -> bool:
        """As `Store.compare_and_swap`."""

    async def list_keys(
        self, ns: Namespace, key_range: KeyRange, after: bytes | None, limit: int
    ) -> tuple[list[bytes], bool]:
        """As `Store.list_keys`."""

    async def scan(
        self, ns: Namespace, key_range: KeyRange, after: bytes | None, limit: int, max_bytes: int
    ) -> tuple[list[ScanItem], bool]:
        """As `Store.scan`."""

    async def usage(self, tenant: str) -> Usage:
        """As `Store.usage`."""

    async def sweep(self, limit: int) -> int:
        """As `Store.sweep`."""

    async def tenants(self) -> list[str]:
        """As `Store.tenants`."""

    async def buckets(self, tenant: str) -> list[str]:
        """As `Store.buckets`."""

    async def tenant_quota(self, tenant: str) -> Quota | None:
        """As `Store.tenant_quota`."""

    async def put_tenant_quota(self, tenant: str, quota: Quota, *, only_if_absent: bool = False) -> Quota:
        """As `Store.put_tenant_quota`."""

    async def delete_tenant(self, tenant: str) -> int:
        """As `Store.delete_tenant`."""

    async def aclose(self) -> None:
        """As `Store.close`."""


@runtime_checkable
class DirectReads(Protocol):
    """Optional, beside `Store`: reads in the shape `Bucket` returns them, for an engine in this process.

    Such an engine builds a page in a few passes in C rather than the front layer
    converting each key and item, and binds a point read to its namespace once.
    `KvStore` uses these when its engine offers them, and `Store`'s own otherwise.
    """

    def reader(self, ns: Namespace) -> Callable[[bytes], bytes | None]:
        """`Store.get` bound to the namespace `ns`: called with just the key."""

    def get_many_stored(
        self, ns: Namespace, stored: list[bytes], longest: int, max_bytes: int | None = None
    ) -> list[bytes | None]:
        """As `Store.get_many`, the keys given as stored (`ns.prefix` + key; valid, none repeated), the
        longest `longest` bytes.

        Raises:
            ValueTooLarge: if the values found weigh more than `max_bytes` together, having read little more.
        """

    def list_keys_text(
        self, ns: Namespace, key_range: KeyRange, after: bytes | None, limit: int
    ) -> tuple[list[str], bool]:
        """As `Store.list_keys`, each key decoded from UTF-8."""

    def scan_text(
        self, ns: Namespace, key_range: KeyRange, after: bytes | None, limit: int, max_bytes: int
    ) -> tuple[list[tuple[str, bytes]], bool]:
        """As `Store.scan`, each item (key decoded from UTF-8, value), without its TTL."""
