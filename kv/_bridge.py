"""`SyncBridge`: one adapter that turns any `AsyncStore` into a synchronous `Store`.

Plugins call the store synchronously from wasm host functions. For an engine
that is only async (one you write, or a `ReadCache` you configure yourself),
the bridge runs one event loop on a dedicated thread and submits each call to
it with `asyncio.run_coroutine_threadsafe`, waiting at most `timeout_s`.

That hop costs about as much as a Redis round trip (~128 µs here), so the
Redis backend does not use it: `KvStore.from_url` runs synchronous calls on a
blocking redis-py engine (`kv._redis_sync`) that shares its operations with
the async one (`kv._redis_core`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import threading
from collections.abc import Coroutine, Sequence
from typing import Any, Final, TypeVar

from ._errors import BackendUnavailable, InvalidArgument
from ._protocol import AsyncStore, ScanItem
from ._rules import KeyRange, Namespace, Quota, Usage

__all__ = [
    "DEFAULT_BRIDGE_TIMEOUT_S",
    "SyncBridge",
]

#: How long a synchronous call waits for the async store before giving up.
DEFAULT_BRIDGE_TIMEOUT_S: Final = 5.0
#: How long `close()` waits for the store's `aclose` and for the loop thread to end.
_CLOSE_TIMEOUT_S: Final = 5.0

T = TypeVar("T")


class SyncBridge:
    """A synchronous `Store` in front of an `AsyncStore`, on its own event-loop thread.

    Thread-safe: calls from many threads run concurrently on the one loop. No
    call waits longer than `timeout_s`; a call that would is cancelled on the
    loop and raises `BackendUnavailable`. A context manager; `close()` is idempotent.

    Raises:
        InvalidArgument: if `timeout_s` is not a positive number.
    """

    def __init__(self, async_store: AsyncStore, *, timeout_s: float = DEFAULT_BRIDGE_TIMEOUT_S) -> None:
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float) or not 0 < timeout_s < math.inf:
            raise InvalidArgument(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
        self.async_store = async_store
        self.timeout_s = float(timeout_s)
        self._closed = False
        self._close_lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, name="kv-bridge", daemon=True)
        self._thread.start()

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()
        self._loop.close()

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._closed:
            coro.close()
            raise BackendUnavailable("the store is closed")
        try:
            future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        except RuntimeError as exc:  # the loop stopped between the check and here
            coro.close()
            raise BackendUnavailable("the store is closed") from exc
        try:
            return future.result(self.timeout_s)
        except concurrent.futures.TimeoutError:
            # Cancelling the future cancels the task on the loop, so the call does not run on unseen.
            future.cancel()
            raise BackendUnavailable(
                f"the store did not answer within the bridge timeout of {self.timeout_s:g} s"
            ) from None
        except concurrent.futures.CancelledError:
            raise BackendUnavailable("the call was cancelled because the store is closing") from None

    def get(self, ns: Namespace, key: bytes) -> bytes | None:
        """The live value, or None.

        Raises:
            BackendUnavailable: if the store is closed, unreachable or does not answer within `timeout_s`.
        """
        return self._call(self.async_store.get(ns, key))

    def get_many(self, ns: Namespace, keys: Sequence[bytes]) -> list[bytes | None]:
        """The live values, in the order of `keys`.

        Raises:
            BackendUnavailable: as `get`.
        """
        return self._call(self.async_store.get_many(ns, keys))

    def exists(self, ns: Namespace, key: bytes) -> bool:
        """Whether the key is live.

        Raises:
            BackendUnavailable: as `get`.
        """
        return self._call(self.async_store.exists(ns, key))

    def ttl(self, ns: Namespace, key: bytes) -> int | None:
        """Milliseconds left before the key expires; None if it has no TTL or is missing.

        Raises:
            BackendUnavailable: as `get`.
        """
        return self._call(self.async_store.ttl(ns, key))

    def set(self, ns: Namespace, key: bytes, value: bytes, ttl_ms: int | None, quota: Quota) -> None:
        """Store a value, replacing any TTL with `ttl_ms`.

        Raises:
            QuotaExceeded: if the write would pass the quota; nothing is written.
            BackendUnavailable: as `get`; the write may or may not have happened.
        """
        return self._call(self.async_store.set(ns, key, value, ttl_ms, quota))

    def set_many(self, ns: Namespace, items: Sequence[tuple[bytes, bytes]], quota: Quota) -> None:
        """Store several values at once, all or nothing; clears their TTLs.

        Raises:
            QuotaExceeded, BackendUnavailable: as `set`.
        """
        return self._call(self.async_store.set_many(ns, items, quota))

    def delete(self, ns: Namespace, key: bytes) -> bool:
        """Remove a key; True if it was live.

        Raises:
            BackendUnavailable: as `set`.
        """
        return self._call(self.async_store.delete(ns, key))

    def delete_many(self, ns: Namespace, keys: Sequence[bytes]) -> int:
        """Remove keys; the number that were live.

        Raises:
            BackendUnavailable: as `set`.
        """
        return self._call(self.async_store.delete_many(ns, keys))

    def increment(self, ns: Namespace, key: bytes, delta: int, quota: Quota) -> int:
        """Add `delta` to a decimal counter (missing = 0), keeping its TTL; the new value.

        Raises:
            NotANumber, IntegerOverflow, ValueTooLarge, QuotaExceeded: as the engine raises them.
            BackendUnavailable: as `set`.
        """
        return self._call(self.async_store.increment(ns, key, delta, quota))

    def compare_and_swap(self, ns: Namespace, key: bytes, expected: bytes | None, new: bytes, quota: Quota) -> bool:
        """Set `new` (clearing the TTL) if the live value equals `expected` (None = absent).

        Raises:
            QuotaExceeded, BackendUnavailable: as `set`.
        """
        return self._call(self.async_store.compare_and_swap(ns, key, expected, new, quota))

    def list_keys(
        self, ns: Namespace, key_range: KeyRange, after: bytes | None, limit: int
    ) -> tuple[list[bytes], bool]:
        """Up to `limit` live keys of `key_range` past `after`, in its order, and whether more follow.

        Raises:
            BackendUnavailable: as `get`.
        """
        return self._call(self.async_store.list_keys(ns, key_range, after, limit))

    def scan(
        self, ns: Namespace, key_range: KeyRange, after: bytes | None, limit: int, max_bytes: int
    ) -> tuple[list[ScanItem], bool]:
        """As `list_keys`, with each key's value and TTL left, from one consistent snapshot.

        Raises:
            BackendUnavailable: as `get`.
        """
        return self._call(self.async_store.scan(ns, key_range, after, limit, max_bytes))

    def usage(self, tenant: str) -> Usage:
        """The tenant's live keys and bytes, expired keys excluded.

        Raises:
            BackendUnavailable: as `get`.
        """
        return self._call(self.async_store.usage(tenant))

    def sweep(self, limit: int) -> int:
        """Reclaim up to `limit` expired keys; the number reclaimed.

        Raises:
            BackendUnavailable: as `get`.
        """
        return self._call(self.async_store.sweep(limit))

    def tenants(self) -> list[str]:
        """Every tenant that has written to this store, in byte order.

        Raises:
            BackendUnavailable: as `get`.
        """
        return self._call(self.async_store.tenants())

    def buckets(self, tenant: str) -> list[str]:
        """The tenant's buckets that hold at least one stored key, in byte order.

        Raises:
            BackendUnavailable: as `get`.
        """
        return self._call(self.async_store.buckets(tenant))

    def tenant_quota(self, tenant: str) -> Quota | None:
        """The quota stored with the tenant, or None if it has no record.

        Raises:
            BackendUnavailable: as `get`.
        """
        return self._call(self.async_store.tenant_quota(tenant))

    def put_tenant_quota(self, tenant: str, quota: Quota, *, only_if_absent: bool = False) -> Quota:
        """Store the tenant's quota atomically (only if it has none, with `only_if_absent`); the quota stored now.

        Raises:
            BackendUnavailable: as `get`.
        """
        return self._call(self.async_store.put_tenant_quota(tenant, quota, only_if_absent=only_if_absent))

    def delete_tenant(self, tenant: str) -> int:
        """Remove every key of the tenant, its usage and its record; the number of keys removed.

        Raises:
            BackendUnavailable: as `get`.
        """
        return self._call(self.async_store.delete_tenant(tenant))

    def close(self) -> None:
        """Run the async store's `aclose` on the loop, then stop the loop thread; idempotent.

        Waits at most a few seconds for `aclose`; a store that hangs there is abandoned with its thread.
        """
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(_CLOSE_TIMEOUT_S)
        except (concurrent.futures.TimeoutError, concurrent.futures.CancelledError):
            pass
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            if threading.current_thread() is not self._thread:
                self._thread.join(_CLOSE_TIMEOUT_S)

    async def _shutdown(self) -> None:
        # Calls still in flight end with BackendUnavailable ("closing") rather than waiting out their timeout.
        current = asyncio.current_task()
        pending = [task for task in asyncio.all_tasks() if task is not current]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        await self.async_store.aclose()

    @property
    def closed(self) -> bool:
        """Whether `close()` has been called."""
        return self._closed

    def __enter__(self) -> SyncBridge:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
