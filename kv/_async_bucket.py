"""`AsyncBucket`: a `Bucket`'s methods for asyncio code, awaited on the caller's event loop.

The front layer's policy (validation, rate limits, quotas) is `Bucket`'s own
helpers, called inline; only the engine call differs, and where it runs
depends on the store's engine:

- A Redis store: its `KvStore.engine` is a `SyncBridge` whose redis.asyncio
  client lives on the bridge's loop thread, and such a client is bound to the
  loop it first runs on. So each event loop that uses the store gets its own
  twin engine (same URL and options), opened there on first use and awaited
  directly, with no thread hop (`LoopEngines`).
- Any other engine (LMDB, memory): reads take microseconds and run inline on
  the loop; writes may wait for the writer lock that another thread or process
  holds, so they run on a writer thread of the store's own (`ThreadedStore`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Final, TypeVar, TypeVarTuple

from ._errors import BackendUnavailable
from ._protocol import AsyncStore, ScanItem, Store
from ._rules import DEFAULT_LIST_LIMIT, SCAN_PAGE_MAX_BYTES, KeyPage, KeyRange, Namespace, Quota, ScanPage

if TYPE_CHECKING:
    from ._store import Bucket, Key, Tenant

__all__ = ["AsyncBucket", "LoopEngines", "ThreadedStore"]

#: How long closing a store waits for an engine's close on a loop running in another thread.
_CLOSE_TIMEOUT_S: Final = 5.0

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


class LoopEngines:
    """One async engine per event loop, for a store whose engine is bound to one loop.

    A loop's engine opens on its first call there, and closes when the loop
    shuts down its async generators (`asyncio.run` does, before closing the
    loop) or when the store closes, whichever comes first. A loop closed
    without `shutdown_asyncgens()` leaves its engine's connections unclosed.
    """

    def __init__(self, open_engine: Callable[[], AsyncStore]) -> None:
        self._open_engine = open_engine
        self._lock = threading.Lock()
        self._closed = False
        # Weak keys, so that being a key here never keeps a loop alive; its entry leaves as its engine closes.
        # The entry also keeps the keeper alive: the loop holds its async generators only weakly.
        self._engines: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, tuple[AsyncStore, AsyncGenerator[None, None]]
        ] = weakref.WeakKeyDictionary()

    async def engine(self) -> AsyncStore:
        """The running loop's engine, opened if it has none yet.

        Raises:
            BackendUnavailable: if the store is closed.
        """
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._closed:
                raise BackendUnavailable("the store is closed")
            held = self._engines.get(loop)
            if held is not None:
                return held[0]
            engine = self._open_engine()
            keeper = self._keep(engine)
            self._engines[loop] = (engine, keeper)
        # Its first step (which runs to its `yield` without suspending) hands the keeper to the loop.
        await keeper.asend(None)
        return engine

    async def _keep(self, engine: AsyncStore) -> AsyncGenerator[None, None]:
        # An async generator's `finally` is the one hook asyncio gives for awaiting something on a loop
        # before it closes: `loop.shutdown_asyncgens()` closes every generator that the loop started.
        try:
            yield
        finally:
            loop = asyncio.get_running_loop()
            with self._lock:
                held = self._engines.get(loop)
                if held is not None and held[0] is engine:
                    del self._engines[loop]
            await engine.aclose()

    def close(self) -> None:
        """Close every loop's engine, each on its own loop; later calls raise `BackendUnavailable`.

        A loop running in another thread closes its engine while this waits (at
        most a few seconds); an idle loop is run here until its engine is closed.
        Called from a coroutine, the caller's own loop cannot wait for itself:
        its engine closes when that loop shuts down. (A close task started here
        instead would be cancelled half-way by `asyncio.run` ending, leaving
        sockets open; the loop's shutdown of its async generators is not.)
        """
        try:
            current = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        with self._lock:
            self._closed = True
            held = [(loop, keeper) for loop, (_, keeper) in self._engines.items() if loop is not current]
            for loop, _ in held:
                del self._engines[loop]
        for loop, keeper in held:
            if loop.is_closed():
                continue  # closed without shutting down its generators: its sockets are out of reach
            if loop.is_running():
                future = asyncio.run_coroutine_threadsafe(_aclose(keeper), loop)
                try:
                    future.result(_CLOSE_TIMEOUT_S)
                except (TimeoutError, concurrent.futures.CancelledError):
                    future.cancel()
            else:
                closing = _aclose(keeper)
                try:
                    loop.run_until_complete(closing)
                except RuntimeError:  # another thread started it meanwhile: its shutdown closes the engine
                    closing.close()


async def _aclose(keeper: AsyncGenerator[None, None]) -> None:
    await keeper.aclose()


class ThreadedStore:
    """The engine calls of an `AsyncBucket` over a synchronous engine: reads inline, writes on a writer thread.

    Reads (`get`, `get_many`, `exists`, `ttl`, `list_keys`, `scan`,
    `tenant_quota`) run inline on the caller's loop: a local read is one read
    transaction, with no lock. Writes (`set`, `set_many`, `delete`,
    `delete_many`, `increment`, `compare_and_swap`) run on the writer thread,
    so that one waiting for the writer lock never blocks the loop.
    """

    def __init__(self, engine: Store) -> None:
        self._engine = engine
        # One thread, owned here, rather than the loop's default executor: the engine serializes this
        # process's writes behind one lock anyway, so more threads would only queue on it; and writes
        # that wait for another process's writer lock then wait here instead of filling the default
        # executor, which other work (`asyncio.to_thread`, DNS lookups) shares. It starts on first use.
        self._writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="kv-async-writer")

    async def engine(self) -> ThreadedStore:
        """Itself: the same object serves every event loop."""
        return self

    async def _write(self, call: Callable[[*Ts], T], *args: *Ts) -> T:
        try:
            future = asyncio.get_running_loop().run_in_executor(self._writer, call, *args)
        except RuntimeError:  # the writer thread was shut down with the store
            raise BackendUnavailable("the store is closed") from None
        return await future

    async def get(self, ns: Namespace, key: bytes) -> bytes | None:
        """As `Store.get`, inline."""
        return self._engine.get(ns, key)

    async def get_many(self, ns: Namespace, keys: Sequence[bytes]) -> list[bytes | None]:
        """As `Store.get_many`, inline."""
        return self._engine.get_many(ns, keys)

    async def exists(self, ns: Namespace, key: bytes) -> bool:
        """As `Store.exists`, inline."""
        return self._engine.exists(ns, key)

    async def ttl(self, ns: Namespace, key: bytes) -> int | None:
        """As `Store.ttl`, inline."""
        return self._engine.ttl(ns, key)

    async def list_keys(
        self, ns: Namespace, key_range: KeyRange, after: bytes | None, limit: int
    ) -> tuple[list[bytes], bool]:
        """As `Store.list_keys`, inline."""
        return self._engine.list_keys(ns, key_range, after, limit)

    async def scan(
        self, ns: Namespace, key_range: KeyRange, after: bytes | None, limit: int, max_bytes: int
    ) -> tuple[list[ScanItem], bool]:
        """As `Store.scan`, inline."""
        return self._engine.scan(ns, key_range, after, limit, max_bytes)

    async def tenant_quota(self, tenant: str) -> Quota | None:
        """As `Store.tenant_quota`, inline."""
        return self._engine.tenant_quota(tenant)

    async def set(self, ns: Namespace, key: bytes, value: bytes, ttl_ms: int | None, quota: Quota) -> None:
        """As `Store.set`, on the writer thread."""
        await self._write(self._engine.set, ns, key, value, ttl_ms, quota)

    async def set_many(self, ns: Namespace, items: Sequence[tuple[bytes, bytes]], quota: Quota) -> None:
        """As `Store.set_many`, on the writer thread."""
        await self._write(self._engine.set_many, ns, items, quota)

    async def delete(self, ns: Namespace, key: bytes) -> bool:
        """As `Store.delete`, on the writer thread."""
        return await self._write(self._engine.delete, ns, key)

    async def delete_many(self, ns: Namespace, keys: Sequence[bytes]) -> int:
        """As `Store.delete_many`, on the writer thread."""
        return await self._write(self._engine.delete_many, ns, keys)

    async def increment(self, ns: Namespace, key: bytes, delta: int, quota: Quota) -> int:
        """As `Store.increment`, on the writer thread."""
        return await self._write(self._engine.increment, ns, key, delta, quota)

    async def compare_and_swap(
        self, ns: Namespace, key: bytes, expected: bytes | None, new: bytes, quota: Quota
    ) -> bool:
        """As `Store.compare_and_swap`, on the writer thread."""
        return await self._write(self._engine.compare_and_swap, ns, key, expected, new, quota)

    def close(self) -> None:
        """Stop the writer thread once the writes already queued have run (the engine is still open for them)."""
        self._writer.shutdown(wait=True)


class AsyncBucket:
    """A tenant's named key space for asyncio code: `Bucket`'s methods, awaited.

    Get one with `tenant.async_bucket(name)`. Every method takes the same
    arguments as its `Bucket` namesake, validates them with the same code,
    raises the same errors (nothing changes on error) and spends the same rate;
    quotas are checked by the engine, atomically with the write, as for `Bucket`.
    `items` is an async iterator.

    Where the calls run:

    - On a Redis store, every call awaits an engine of the caller's own event
      loop, opened on its first call there (same URL and options, its own
      connections) and closed when that loop shuts down (`asyncio.run` ends)
      or the store closes, whichever is first (a store closed from a coroutine
      closes that coroutine's loop's engine when the loop shuts down): no thread
      hop, and any number of loops may share the store. A read cache
      (`read_cache_size`) belongs to each engine, so values written through
      another loop's engine, or through `Bucket`, may be read up to
      `read_cache_ms` stale, as across hosts. Each engine has its own
      connection pool (`max_connections` each).
    - On a local store (LMDB, memory), validation and the reads (`get`,
      `get_many`, `exists`, `ttl`, `list_keys`, `scan`, `items`) run inline on
      the caller's loop; the writes (`set`, `set_with_ttl`, `delete`,
      `delete_many`, `increment`, `compare_and_swap`, `set_many`) run on the
      store's writer thread, so waiting for the writer lock never blocks the
      loop. An engine handed to `KvStore` without `open_async_engine` is driven
      this way too.

    A write whose caller is cancelled may or may not have happened.
    """

    __slots__ = ("_bucket", "_engines", "_ns", "tenant")

    def __init__(self, bucket: Bucket, engines: LoopEngines | ThreadedStore) -> None:
        self.tenant: Tenant = bucket.tenant
        self._bucket = bucket
        self._ns = bucket._ns
        self._engines = engines

    @property
    def name(self) -> str:
        """The bucket's name."""
        return self._bucket.name

    async def _begin(self) -> tuple[AsyncStore | ThreadedStore, Quota]:
        # The quota is refreshed through the same engine, so that no call reaches for the sync one.
        engine = await self._engines.engine()
        return engine, await self.tenant._aquota(engine.tenant_quota)

    async def get(self, key: Key) -> bytes | None:
        """The value stored at `key`, or None if it is missing or expired.

        Raises:
            InvalidKey, RateLimited: as `Bucket.get`.
        """
        engine, quota = await self._begin()
        return await engine.get(self._ns, self._bucket._key(quota, key))

    async def set(self, key: Key, value: bytes) -> None:
        """Store `value` at `key`, removing any TTL.

        Raises:
            InvalidKey, ValueTooLarge, QuotaExceeded, RateLimited: as `Bucket.set`; nothing is written.
        """
        engine, quota = await self._begin()
        await engine.set(*self._bucket._set_args(quota, key, value))

    async def set_with_ttl(self, key: Key, value: bytes, ttl_ms: int) -> None:
        """Store `value` at `key`, to expire `ttl_ms` milliseconds from now.

        Raises:
            InvalidArgument, InvalidKey, ValueTooLarge, QuotaExceeded, RateLimited: as `Bucket.set_with_ttl`.
        """
        engine, quota = await self._begin()
        await engine.set(*self._bucket._set_args(quota, key, value, ttl_ms))

    async def delete(self, key: Key) -> bool:
        """Remove `key`; True if it existed (and had not expired).

        Raises:
            InvalidKey, RateLimited: as `Bucket.delete`.
        """
        engine, quota = await self._begin()
        return await engine.delete(self._ns, self._bucket._key(quota, key))

    async def exists(self, key: Key) -> bool:
        """Whether `key` holds a live value.

        Raises:
            InvalidKey, RateLimited: as `Bucket.exists`.
        """
        engine, quota = await self._begin()
        return await engine.exists(self._ns, self._bucket._key(quota, key))

    async def ttl(self, key: Key) -> int | None:
        """Milliseconds before `key` expires; None if it has no TTL or does not exist.

        Raises:
            InvalidKey, RateLimited: as `Bucket.ttl`.
        """
        engine, quota = await self._begin()
        return await engine.ttl(self._ns, self._bucket._key(quota, key))

    async def increment(self, key: Key, delta: int = 1) -> int:
        """Add `delta` to the signed 64-bit counter at `key` and return the new value (missing counts as 0).

        Raises:
            InvalidArgument, NotANumber, IntegerOverflow, InvalidKey, QuotaExceeded, RateLimited:
                as `Bucket.increment`; nothing is written.
        """
        engine, quota = await self._begin()
        return await engine.increment(*self._bucket._increment_args(quota, key, delta))

    async def compare_and_swap(self, key: Key, expected: bytes | None, new: bytes) -> bool:
        """Atomically set `new` if the value at `key` equals `expected` (None: absent); True if swapped.

        Raises:
            InvalidKey, ValueTooLarge, QuotaExceeded, RateLimited: as `Bucket.compare_and_swap`.
        """
        engine, quota = await self._begin()
        return await engine.compare_and_swap(*self._bucket._cas_args(quota, key, expected, new))

    async def list_keys(
        self,
        prefix: Key = "",
        cursor: str | None = None,
        limit: int = DEFAULT_LIST_LIMIT,
        *,
        start: Key | None = None,
        end: Key | None = None,
        reverse: bool = False,
    ) -> KeyPage:
        """One page of the keys starting with `prefix`, in byte order; pass its `cursor` back for the next.

        Raises:
            InvalidKey, InvalidArgument, RateLimited: as `Bucket.list_keys`.
        """
        engine, quota = await self._begin()
        key_range, after, limit = self._bucket._page_args(quota, prefix, start, end, reverse, cursor, limit)
        keys, more = await engine.list_keys(self._ns, key_range, after, limit)
        return self._bucket._key_page(key_range, keys, more)

    async def scan(
        self,
        prefix: Key = "",
        *,
        start: Key | None = None,
        end: Key | None = None,
        cursor: str | None = None,
        limit: int = DEFAULT_LIST_LIMIT,
        reverse: bool = False,
    ) -> ScanPage:
        """One page of (key, value) pairs from one consistent snapshot; pass its `cursor` back for the next.

        Raises:
            InvalidKey, InvalidArgument, RateLimited: as `Bucket.scan`.
        """
        engine, quota = await self._begin()
        key_range, after, limit = self._bucket._page_args(quota, prefix, start, end, reverse, cursor, limit)
        found, more = await engine.scan(self._ns, key_range, after, limit, SCAN_PAGE_MAX_BYTES)
        return self._bucket._scan_page(key_range, found, more)

    async def items(
        self,
        prefix: Key = "",
        *,
        start: Key | None = None,
        end: Key | None = None,
        reverse: bool = False,
        page_size: int = DEFAULT_LIST_LIMIT,
    ) -> AsyncIterator[tuple[str, bytes]]:
        """Every (key, value) pair `scan` would page through, one page in memory at a time (`async for`).

        Raises:
            InvalidKey, InvalidArgument, RateLimited: as `Bucket.items`, when a page is read.
        """
        cursor: str | None = None
        while True:
            page = await self.scan(prefix, start=start, end=end, cursor=cursor, limit=page_size, reverse=reverse)
            for item in page.items:
                yield item
            if page.cursor is None:
                return
            cursor = page.cursor

    async def get_many(self, keys: Iterable[Key]) -> list[bytes | None]:
        """The values at `keys`, in order (None where missing); at most 1000 keys, each read once.

        Raises:
            InvalidKey, RateLimited, InvalidArgument: as `Bucket.get_many`.
        """
        engine, quota = await self._begin()
        raw = self._bucket._keys(quota, keys)
        unique = list(dict.fromkeys(raw))
        return self._bucket._in_order(raw, unique, await engine.get_many(self._ns, unique))

    async def set_many(self, items: Mapping[Key, bytes] | Iterable[tuple[Key, bytes]]) -> None:
        """Store several values at once, all or nothing; clears their TTLs. At most 1000 items.

        Raises:
            InvalidKey, ValueTooLarge, QuotaExceeded, RateLimited, InvalidArgument: as `Bucket.set_many`.
        """
        engine, quota = await self._begin()
        await engine.set_many(*self._bucket._set_many_args(quota, items))

    async def delete_many(self, keys: Iterable[Key]) -> int:
        """Remove several keys at once; the number that existed. At most 1000 keys.

        Raises:
            InvalidKey, RateLimited, InvalidArgument: as `Bucket.delete_many`; nothing is removed.
        """
        engine, quota = await self._begin()
        return await engine.delete_many(self._ns, self._bucket._keys(quota, keys))

    def __repr__(self) -> str:
        return f"AsyncBucket(tenant={self.tenant.name!r}, name={self.name!r})"
