"""Where an `AsyncBucket`'s engine calls run, which depends on the store's engine.

- A Redis store: its `KvStore.engine` is the blocking redis-py engine
  (`kv._redis_sync`), and a redis.asyncio client is bound to the loop it first
  runs on. So each event loop that uses the store gets its own async engine
  (same URL and options), opened there on first use and awaited directly, with
  no thread hop (`LoopEngines`).
- Any other engine (LMDB, memory): reads take microseconds and run inline on
  the loop; writes may wait for the writer lock that another thread or process
  holds, so they run on a writer thread of the store's own (`ThreadedStore`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import weakref
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import Final, TypeVar, TypeVarTuple

from ._errors import BackendUnavailable
from ._protocol import AsyncStore, ScanItem, Store
from ._rules import KeyRange, Namespace, Quota

__all__ = ["LoopEngines", "ThreadedStore"]

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
