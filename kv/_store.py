"""The front layer every caller goes through: `KvStore` → `Tenant` → `Bucket` (or `AsyncBucket`).

It owns the policy (names, key and value validation, rate limits, which quota
applies) and hands engines only valid input; see `kv._protocol.Store`.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Any, Final

from ..abi import BATCH_MAX_ITEMS
from ._async_engines import LoopEngines, ThreadedStore
from ._backends import BACKENDS, backend_for, check_options
from ._errors import BackendUnavailable, InvalidArgument
from ._protocol import AsyncStore, DirectReads, ScanItem, Store
from ._rules import (
    DEFAULT_LIST_LIMIT,
    DEFAULT_SWEEP_INTERVAL_S,
    SCAN_PAGE_MAX_BYTES,
    Clock,
    KeyPage,
    KeyRange,
    Namespace,
    Quota,
    RateLimiter,
    ScanPage,
    Usage,
    batch_items,
    check_delta,
    check_limit,
    check_name,
    check_ttl_ms,
    check_value,
    decode_cursor,
    encode_cursor,
    encode_key,
    values_too_heavy,
)

__all__ = [
    "DEFAULT_SWEEP_INTERVAL_S",
    "DEFAULT_TENANT_REFRESH_S",
    "AsyncBucket",
    "Bucket",
    "KvStore",
    "Tenant",
]

#: How stale a process's copy of a tenant's stored quota may get: a quota change reaches every process within it.
DEFAULT_TENANT_REFRESH_S: Final = 1.0
#: Expired keys one engine `sweep` call reclaims at most, so a sweep never holds the engine for long.
_SWEEP_BATCH: Final = 1000


class _Unset:
    """The type of `_UNSET`: an argument left out, as opposed to one passed as None."""


_UNSET: Final = _Unset()

Key = str | bytes
"""A key: a str, or its UTF-8 bytes (as plugins pass them)."""

_log = logging.getLogger("wasmkv.kv")


#: The bytes a key may hold that the batch check deletes: what remains of the keys is a control character.
_PRINTABLE_ASCII: Final = bytes(range(0x20, 0x7F))
#: The same for str keys joined by newlines and encoded: UTF-8 holds a byte below 0x80 only as that character.
_PRINTABLE_UTF8_OR_NEWLINE: Final = _PRINTABLE_ASCII + b"\n" + bytes(range(0x80, 0x100))


_JUST_STR: Final = {str}
_JUST_BYTES: Final = {bytes}
#: As `_PRINTABLE_UTF8_OR_NEWLINE`, for bytes keys (which take the fast path only when ASCII).
_PRINTABLE_ASCII_OR_NEWLINE: Final = _PRINTABLE_ASCII + b"\n"


def _batch_fast_path(keys: list[Key], prefix: bytes, max_key_bytes: int) -> tuple[list[bytes], int] | None:
    """Validate a batch of keys (all str, or all ASCII bytes) in a few passes in C: each key's `prefix` +
    UTF-8, and the length of the longest of those.

    None if any key needs the full per-key check (which also rejects keys of any other type).
    """
    kinds = set(map(type, keys))  # exactly str or bytes, as `encode_key` takes (it refuses a subclass)
    if kinds == _JUST_STR:
        try:
            joined = "\n".join(keys).encode()  # type: ignore[arg-type]
        except UnicodeEncodeError:  # a lone surrogate
            return None
        allowed = _PRINTABLE_UTF8_OR_NEWLINE
    elif kinds == _JUST_BYTES:
        joined = b"\n".join(keys)  # type: ignore[arg-type]
        if not joined.isascii():  # UTF-8 to be checked: the full check does it
            return None
        allowed = _PRINTABLE_ASCII_OR_NEWLINE
    else:
        return None
    # A control character other than newline is left behind; an empty key leaves two newlines together,
    # or one at an end.
    if (
        not joined
        or joined.translate(None, allowed)
        or b"\n\n" in joined
        or joined[:1] == b"\n"
        or joined[-1:] == b"\n"
    ):
        return None
    stored = (prefix + joined.replace(b"\n", b"\n" + prefix) if prefix else joined).split(b"\n")
    longest = max(map(len, stored))
    # A key holding a newline splits in two.
    if len(stored) != len(keys) or longest > max_key_bytes + len(prefix):
        return None
    return stored, longest


def _decoded(keys: list[bytes]) -> list[str]:
    """The keys decoded from UTF-8 in one pass in C (no key holds NUL)."""
    return b"\0".join(keys).decode().split("\0") if keys else []


class KvStore:
    """A key-value store: tenants with quotas, each with named buckets.

    Build one with `KvStore.open(path)` (durable) or `KvStore.memory()`, or
    wrap any engine implementing `kv.Store`. Thread-safe; a context manager.

    `open_async_engine` is for a store whose async engine is bound to one event
    loop (Redis: a redis.asyncio client is): it opens an async engine on the same
    data, which `AsyncBucket`s then use, one per event loop, so that asyncio code
    awaits it on its own loop.
    Without it, `AsyncBucket`s drive `engine` itself (see `AsyncBucket`).
    """

    def __init__(
        self,
        engine: Store,
        *,
        clock: Clock = time.time,
        sweep_interval_s: float | None = DEFAULT_SWEEP_INTERVAL_S,
        on_close: Callable[[], None] | None = None,
        tenant_refresh_s: float = DEFAULT_TENANT_REFRESH_S,
        open_async_engine: Callable[[], AsyncStore] | None = None,
    ) -> None:
        self.engine = engine
        # Checked once: an engine that reads in the shape `Bucket` returns saves it work on every read.
        self._direct: DirectReads | None = engine if isinstance(engine, DirectReads) else None
        # What `AsyncBucket`s await: a twin engine per event loop, or this engine with its writes off the loop.
        self._async: LoopEngines | ThreadedStore = (
            ThreadedStore(engine) if open_async_engine is None else LoopEngines(open_async_engine)
        )
        self.clock = clock
        self.tenant_refresh_s = tenant_refresh_s
        self._tenants: dict[str, Tenant] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._on_close = on_close
        self._sweeper: threading.Thread | None = None
        if sweep_interval_s is not None:
            self._sweeper = threading.Thread(
                target=self._sweep_forever, args=(sweep_interval_s,), name="kv-sweeper", daemon=True
            )
            self._sweeper.start()

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        fsync: bool = False,
        map_size: int | None = None,
        writemap: bool | None = None,
        clock: Clock = time.time,
        sweep_interval_s: float | None = DEFAULT_SWEEP_INTERVAL_S,
    ) -> KvStore:
        """Open (or create) a durable store in directory `path`.

        Every write that returns is on disk when the process dies, however it
        dies. `fsync=True` also makes it survive power loss (an fsync per commit).

        `map_size` is the address space LMDB reserves for the data, in bytes: at
        least 1 MiB, rounded up to whole pages; None is 64 GiB, or what the store
        already has if it is open in this process. The file grows only as data is
        written. A write that finds the map full doubles it, in this process and
        in any other that has the store open, up to 1 TiB or `map_size` if larger;
        past that the write fails with `BackendUnavailable` and writes nothing.

        `writemap=True` has LMDB write through a writable map (writes about 1.5x
        faster): every byte of the map is then allocated on disk before LMDB
        writes there, so a full disk stays an error and is never SIGBUS; the map
        starts at 8 MiB (or `map_size` if smaller) and doubles from there. It
        needs ext4 or tmpfs (on a copy-on-write filesystem allocating up
        front guarantees nothing). Processes with and without it may not share
        a store. None (the default) uses it where the filesystem allows and no
        other process has the store open without it.

        Raises:
            BackendUnavailable: if the directory cannot be opened as a store, or not with the
                `writemap` asked for (another process has it open in the other mode, or the
                filesystem is not one of those).
            InvalidArgument: if `map_size` is not an integer of at least 1 MiB, or the store
                is already open in this process with another `fsync`, `map_size` or `writemap`.
        """
        options = {"fsync": fsync, "map_size": map_size, "writemap": writemap}
        return cls._opened("lmdb", os.fspath(path), options, clock, sweep_interval_s)

    @classmethod
    def memory(
        cls,
        *,
        map_size: int | None = None,
        clock: Clock = time.time,
        sweep_interval_s: float | None = DEFAULT_SWEEP_INTERVAL_S,
    ) -> KvStore:
        """A store that lives in RAM and vanishes on `close()`, for tests and scratch work.

        It is the embedded engine in a private directory on a RAM-backed
        filesystem (`/dev/shm` where there is one), so it behaves exactly like
        a durable store; `map_size` as for `open`.

        Raises:
            InvalidArgument: if `map_size` is not an integer of at least 1 MiB.
        """
        return cls._opened("memory", "", {"map_size": map_size}, clock, sweep_interval_s)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        clock: Clock = time.time,
        sweep_interval_s: float | _Unset | None = _UNSET,
        **options: Any,
    ) -> KvStore:
        """Open the store a URL names (see `kv.BACKENDS` for every backend and its options).

        - a plain path or `lmdb:///abs/path`: `KvStore.open` (option `fsync`)
        - `memory:`: `KvStore.memory`
        - `redis://host:port/db`, `rediss://...` (TLS): one Redis node
        - `redis+cluster://host:port[,host:port...]`, `rediss+cluster://...` (TLS): a Redis
          Cluster, any nodes as startup nodes

        Redis options: `timeout_s` (per operation, default 2 s), `read_cache_size`
        (0 = off), `read_cache_ms`, `key_prefix`, `max_connections`, `password`
        (else the URL's, else `$WASMKV_REDIS_PASSWORD`), `tls_ca_file`. Options
        may also come in the URL's query (`?key_prefix=app&timeout_s=2`); a
        keyword overrides the query. redis-py is imported only for a Redis URL.
        `clock` is honoured by the embedded engine; a server expires keys by its own clock.

        Raises:
            InvalidArgument: if the URL scheme is unknown, the URL malformed or an option unknown or invalid.
            BackendUnavailable: if a local store cannot be opened (Redis connects lazily:
                its first operation reports an unreachable server).
        """
        backend, location, from_query = backend_for(url)
        options = {**from_query, **options}
        interval: float | None = options.pop("sweep_interval_s", DEFAULT_SWEEP_INTERVAL_S)
        if not isinstance(sweep_interval_s, _Unset):
            interval = sweep_interval_s
        opened = backend.open(location, check_options(backend, options), clock)
        return cls(
            opened.engine,
            clock=clock,
            sweep_interval_s=interval,
            on_close=opened.on_close,
            open_async_engine=opened.open_async,
        )

    @classmethod
    def _opened(
        cls, scheme: str, location: str, options: dict[str, Any], clock: Clock, sweep_interval_s: float | None
    ) -> KvStore:
        opened = BACKENDS[scheme].open(location, options, clock)
        return cls(
            opened.engine,
            clock=clock,
            sweep_interval_s=sweep_interval_s,
            on_close=opened.on_close,
            open_async_engine=opened.open_async,
        )

    def tenant(self, name: str, quota: Quota | None = None) -> Tenant:
        """The tenant called `name`; with `quota`, first store that quota as the tenant's.

        A tenant's quota is stored with its data, so every process and host
        that opens the store enforces the same one. Without `quota`, the tenant
        has its stored quota (the default `Quota()` if it has no record).
        Storing a quota is atomic and reaches every other process within
        `tenant_refresh_s` (1 s); a quota below the tenant's usage is allowed
        (writes that grow it fail until usage drops). Asking again for the same
        name returns the same tenant.

        Raises:
            InvalidArgument: if the name is not 1-64 chars of `[A-Za-z0-9_-]` or `quota` is not a `Quota`.
            BackendUnavailable: if the engine cannot read or store the record.
        """
        check_name("tenant", name)
        if quota is not None and not isinstance(quota, Quota):
            raise InvalidArgument(f"quota must be a kv.Quota, got {type(quota).__name__}")
        tenant = self._tenant(name)
        if quota is not None:
            tenant.set_quota(quota)
        return tenant

    def ensure_tenant(self, name: str, quota: Quota) -> Tenant:
        """The tenant called `name`, storing `quota` as its quota only if it has no record yet.

        Where the stored quota differs from `quota`, the stored one wins (so
        hosts configured differently never flip a quota back and forth):
        compare `tenant.quota` with `quota` to report it.

        Raises:
            InvalidArgument, BackendUnavailable: as `tenant`.
        """
        check_name("tenant", name)
        if not isinstance(quota, Quota):
            raise InvalidArgument(f"quota must be a kv.Quota, got {type(quota).__name__}")
        tenant = self._tenant(name)
        tenant._use(self.engine.put_tenant_quota(name, quota, only_if_absent=True))
        return tenant

    def tenants(self) -> list[str]:
        """Every tenant with a stored quota or data in this store, in byte order.

        Raises:
            BackendUnavailable: if the engine fails.
        """
        return self.engine.tenants()

    def delete_tenant(self, name: str) -> int:
        """Remove all of a tenant's keys, in every bucket, and its record; the number of keys removed.

        Raises:
            InvalidArgument: if the name is not a valid tenant name.
            BackendUnavailable: if the engine fails.
        """
        check_name("tenant", name)
        removed = self.engine.delete_tenant(name)
        with self._lock:
            self._tenants.pop(name, None)
        return removed

    def _tenant(self, name: str) -> Tenant:
        with self._lock:
            tenant = self._tenants.get(name)
            if tenant is None:
                tenant = self._tenants[name] = Tenant(self, name)
            return tenant

    def sweep(self) -> int:
        """Reclaim expired keys now (the background sweeper does this every second); the number reclaimed."""
        total = 0
        while count := self.engine.sweep(_SWEEP_BATCH):
            total += count
        return total

    def close(self) -> None:
        """Stop the sweeper, close what `AsyncBucket`s use (see `AsyncBucket`), then the engine; idempotent."""
        if self._closed.is_set():
            return
        self._closed.set()
        if self._sweeper is not None:
            self._sweeper.join()
        self._async.close()
        self.engine.close()
        if self._on_close is not None:
            self._on_close()

    @property
    def closed(self) -> bool:
        """Whether `close()` has been called."""
        return self._closed.is_set()

    def __enter__(self) -> KvStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _sweep_forever(self, interval_s: float) -> None:
        while not self._closed.wait(interval_s):
            try:
                while self.engine.sweep(_SWEEP_BATCH) and not self._closed.is_set():
                    pass
            except BackendUnavailable as exc:
                _log.warning("expired-key sweep failed: %s", exc)


class Tenant:
    """One tenant of a store: a quota, stored with the tenant and shared by all its buckets."""

    def __init__(self, store: KvStore, name: str) -> None:
        self.store = store
        self.name = name
        self._quota = Quota()
        self._limiter: RateLimiter | None = None
        self._fetched_at = -math.inf

    @property
    def quota(self) -> Quota:
        """The tenant's quota: the stored one, as read at most `tenant_refresh_s` ago (default `Quota()`)."""
        if time.monotonic() - self._fetched_at > self.store.tenant_refresh_s:
            self._refresh()
        return self._quota

    def _refresh(self) -> None:
        try:
            stored = self.store.engine.tenant_quota(self.name)
        except BackendUnavailable:
            # Keep the quota last read; the operation under way meets the same engine and says so.
            stored = self._quota
        self._use(Quota() if stored is None else stored)

    async def _aquota(self, read: Callable[[str], Awaitable[Quota | None]]) -> Quota:
        """`quota`, refreshed when due by awaiting `read` (an async engine's `tenant_quota`), as `_refresh` does."""
        if time.monotonic() - self._fetched_at > self.store.tenant_refresh_s:
            try:
                stored = await read(self.name)
            except BackendUnavailable:
                stored = self._quota
            self._use(Quota() if stored is None else stored)
        return self._quota

    def _use(self, quota: Quota) -> None:
        if quota != self._quota or (self._limiter is None) != (quota.ops_per_second is None):
            rate = quota.ops_per_second
            self._limiter = None if rate is None else RateLimiter(rate, time.monotonic)
            self._quota = quota
        self._fetched_at = time.monotonic()

    def set_quota(self, quota: Quota) -> None:
        """Store a new quota for this tenant, atomically, for every process; data already stored stays.

        Raises:
            InvalidArgument: if `quota` is not a `Quota`.
            BackendUnavailable: if the engine cannot store it.
        """
        if not isinstance(quota, Quota):
            raise InvalidArgument(f"quota must be a kv.Quota, got {type(quota).__name__}")
        self._use(self.store.engine.put_tenant_quota(self.name, quota))

    def bucket(self, name: str = "default") -> Bucket:
        """The bucket called `name` in this tenant.

        Raises:
            InvalidArgument: if the name is not 1-64 chars of `[A-Za-z0-9_-]`.
        """
        return Bucket(self, Namespace(self.name, check_name("bucket", name)))

    def async_bucket(self, name: str = "default") -> AsyncBucket:
        """The bucket called `name` in this tenant, for asyncio code: `Bucket`'s methods, awaited.

        Raises:
            InvalidArgument: if the name is not 1-64 chars of `[A-Za-z0-9_-]`.
        """
        return AsyncBucket(self.bucket(name), self.store._async)

    def usage(self) -> Usage:
        """Keys and bytes (key + value) this tenant holds now; expired keys never count."""
        return self.store.engine.usage(self.name)

    def __repr__(self) -> str:
        return f"Tenant({self.name!r}, quota={self.quota!r})"


def _check_max_bytes(max_bytes: int | None) -> None:
    if max_bytes is not None and (type(max_bytes) is not int or max_bytes < 0):
        raise InvalidArgument(f"max_bytes must be None or an int >= 0, got {max_bytes!r}")


def _weighed(values: list[bytes | None], max_bytes: int | None) -> list[bytes | None]:
    """`values`, read by an engine without a bounded read (Redis answers in one reply), held to `max_bytes`."""
    if max_bytes is not None and sum(len(value) for value in values if value is not None) > max_bytes:
        raise values_too_heavy(max_bytes)
    return values


class Bucket:
    """A tenant's named key space. Every method validates its input and changes nothing on error.

    Keys are `str` (or their UTF-8 bytes), 1..`max_key_bytes` bytes with no
    control characters; values are `bytes` up to `max_value_bytes`.
    """

    __slots__ = ("_direct", "_engine", "_ns", "_read", "tenant")

    def __init__(self, tenant: Tenant, ns: Namespace) -> None:
        self.tenant = tenant
        self._ns = ns
        self._engine = engine = tenant.store.engine
        self._direct = direct = tenant.store._direct
        # What `get` calls with the key, bound once: `get` is the hot path.
        self._read: Callable[[bytes], bytes | None] = (
            functools.partial(engine.get, ns) if direct is None else direct.reader(ns)
        )

    @property
    def name(self) -> str:
        """The bucket's name."""
        return self._ns.bucket

    # The validation every method does, shared with `AsyncBucket`. Each takes the quota the caller read once
    # (an `AsyncBucket` reads it without the sync engine) and spends the rate only once its input is valid.

    def _key(self, quota: Quota, key: Key) -> bytes:
        raw = encode_key(key, quota.max_key_bytes)
        # Validate first: a rejected call must not spend the tenant's rate.
        limiter = self.tenant._limiter
        if limiter is not None:
            limiter.acquire()
        return raw

    def _keys(self, quota: Quota, keys: Iterable[Key]) -> list[bytes]:
        if isinstance(keys, str | bytes):
            raise InvalidArgument("keys must be a collection of keys, not a single key")
        keys = batch_items(keys, "keys must be a collection of keys")
        found = _batch_fast_path(keys, b"", quota.max_key_bytes) if keys else None
        raw = [encode_key(key, quota.max_key_bytes) for key in keys] if found is None else found[0]
        limiter = self.tenant._limiter
        if limiter is not None:
            limiter.acquire(max(1, len(raw)))
        return raw

    def _set_args(
        self, quota: Quota, key: Key, value: bytes, ttl_ms: int | _Unset = _UNSET
    ) -> tuple[Namespace, bytes, bytes, int | None, Quota]:
        value = check_value(value, quota.max_value_bytes)
        ttl = None if isinstance(ttl_ms, _Unset) else check_ttl_ms(ttl_ms)
        return self._ns, self._key(quota, key), value, ttl, quota

    def _increment_args(self, quota: Quota, key: Key, delta: int) -> tuple[Namespace, bytes, int, Quota]:
        delta = check_delta(delta)
        return self._ns, self._key(quota, key), delta, quota

    def _cas_args(
        self, quota: Quota, key: Key, expected: bytes | None, new: bytes
    ) -> tuple[Namespace, bytes, bytes | None, bytes, Quota]:
        if expected is not None:
            # No size limit on `expected`: a value longer than any storable one simply never matches.
            if not isinstance(expected, bytes | bytearray | memoryview):
                raise InvalidArgument(f"expected must be bytes or None, got {type(expected).__name__}")
            expected = bytes(expected)
        new = check_value(new, quota.max_value_bytes)
        return self._ns, self._key(quota, key), expected, new, quota

    def _set_many_args(
        self, quota: Quota, items: Mapping[Key, bytes] | Iterable[tuple[Key, bytes]]
    ) -> tuple[Namespace, list[tuple[bytes, bytes]], Quota]:
        pairs = batch_items(
            items.items() if isinstance(items, Mapping) else items, "set_many takes a mapping or (key, value) pairs"
        )
        for pair in pairs:
            if not isinstance(pair, tuple) or len(pair) != 2:
                raise InvalidArgument(f"set_many takes a mapping or (key, value) pairs, got {pair!r:.80}")
        values = [check_value(value, quota.max_value_bytes) for _, value in pairs]
        raw = self._keys(quota, (key for key, _ in pairs))
        return self._ns, list(zip(raw, values, strict=True)), quota

    def _page_args(
        self,
        quota: Quota,
        prefix: Key,
        start: Key | None,
        end: Key | None,
        reverse: bool,
        cursor: str | None,
        limit: int,
    ) -> tuple[KeyRange, bytes | None, int]:
        """A listing's range, where it resumes and its page size, validated; spends one rate token."""
        max_key_bytes = quota.max_key_bytes
        if type(reverse) is not bool:
            raise InvalidArgument(f"reverse must be True or False, got {reverse!r}")
        key_range = KeyRange(
            # The whole bucket, the usual listing, without a call.
            b""
            if type(prefix) is str and not prefix
            else encode_key(prefix, max_key_bytes, what="prefix", allow_empty=True),
            None if start is None else encode_key(start, max_key_bytes, what="start", allow_empty=True),
            None if end is None else encode_key(end, max_key_bytes, what="end", allow_empty=True),
            reverse,
        )
        limit = check_limit(limit)
        after = None if cursor is None else decode_cursor(cursor, key_range, max_key_bytes)
        limiter = self.tenant._limiter
        if limiter is not None:
            limiter.acquire()
        return key_range, after, limit

    @staticmethod
    def _key_page(key_range: KeyRange, keys: list[bytes], more: bool) -> KeyPage:
        next_cursor = encode_cursor(key_range, keys[-1]) if more and keys else None
        return KeyPage(keys=_decoded(keys), cursor=next_cursor)

    def _scan_page(self, key_range: KeyRange, found: list[ScanItem], more: bool) -> ScanPage:
        self._charge_scan(len(found))
        next_cursor = encode_cursor(key_range, found[-1][0]) if more and found else None
        keys = _decoded([key for key, _, _ in found])
        return ScanPage(items=list(zip(keys, [value for _, value, _ in found], strict=True)), cursor=next_cursor)

    def _charge_scan(self, count: int) -> None:
        # The page's first pair was paid for up front; the rest are charged now that their number is known.
        limiter = self.tenant._limiter
        if limiter is not None and count > 1:
            limiter.charge(count - 1)

    @staticmethod
    def _in_order(raw: list[bytes], unique: list[bytes], values: list[bytes | None]) -> list[bytes | None]:
        """The values read for `unique` (the distinct keys of `raw`), one per key of `raw`."""
        if len(unique) == len(raw):
            return values
        by_key = dict(zip(unique, values, strict=True))
        return [by_key[key] for key in raw]

    def get(self, key: Key) -> bytes | None:
        """The value stored at `key`, or None if it is missing or expired.

        Raises:
            InvalidKey: if the key is invalid.
            RateLimited: if the tenant is over `ops_per_second`.
        """
        # The hot path, `tenant.quota` and `_key` inlined: refresh the quota when due, validate, spend one
        # rate token, read.
        tenant = self.tenant
        if time.monotonic() - tenant._fetched_at > tenant.store.tenant_refresh_s:
            tenant._refresh()
        max_key_bytes = tenant._quota.max_key_bytes
        # `encode_key`'s own fast path, inlined: a printable ASCII str.
        if type(key) is str and key.isascii() and key.isprintable() and 0 < len(key) <= max_key_bytes:
            raw = key.encode()
        else:
            raw = encode_key(key, max_key_bytes)
        limiter = tenant._limiter
        if limiter is not None:
            limiter.acquire()
        return self._read(raw)

    def set(self, key: Key, value: bytes) -> None:
        """Store `value` at `key`, removing any TTL.

        Raises:
            InvalidKey, ValueTooLarge, QuotaExceeded, RateLimited: as named; nothing is written.
        """
        # The hot path, `_set_args` inlined: validate the value, then the key, then spend one rate token.
        tenant = self.tenant
        quota = tenant.quota
        if type(value) is not bytes or len(value) > quota.max_value_bytes:
            value = check_value(value, quota.max_value_bytes)
        raw = encode_key(key, quota.max_key_bytes)
        if tenant._limiter is not None:
            tenant._limiter.acquire()
        self._engine.set(self._ns, raw, value, None, quota)

    def set_with_ttl(self, key: Key, value: bytes, ttl_ms: int) -> None:
        """Store `value` at `key`, to expire `ttl_ms` milliseconds from now.

        Raises:
            InvalidArgument: unless 0 < ttl_ms <= `MAX_TTL_MS`.
            InvalidKey, ValueTooLarge, QuotaExceeded, RateLimited: as named; nothing is written.
        """
        self._engine.set(*self._set_args(self.tenant.quota, key, value, ttl_ms))

    def delete(self, key: Key) -> bool:
        """Remove `key`; True if it existed (and had not expired).

        Raises:
            InvalidKey, RateLimited: as named.
        """
        return self._engine.delete(self._ns, self._key(self.tenant.quota, key))

    def exists(self, key: Key) -> bool:
        """Whether `key` holds a live value.

        Raises:
            InvalidKey, RateLimited: as named.
        """
        return self._engine.exists(self._ns, self._key(self.tenant.quota, key))

    def ttl(self, key: Key) -> int | None:
        """Milliseconds before `key` expires; None if it has no TTL or does not exist.

        Raises:
            InvalidKey, RateLimited: as named.
        """
        return self._engine.ttl(self._ns, self._key(self.tenant.quota, key))

    def increment(self, key: Key, delta: int = 1) -> int:
        """Add `delta` to the signed 64-bit counter at `key` and return the new value.

        A missing key counts as 0. The value is stored as decimal ASCII (so
        `get` returns e.g. `b"42"`), and the key keeps its TTL.

        Raises:
            InvalidArgument: if `delta` is not a signed 64-bit int.
            NotANumber: if the stored value is not a signed 64-bit decimal integer.
            IntegerOverflow: if the result leaves the signed 64-bit range.
            InvalidKey, QuotaExceeded, RateLimited: as named; nothing is written.
        """
        return self._engine.increment(*self._increment_args(self.tenant.quota, key, delta))

    def compare_and_swap(self, key: Key, expected: bytes | None, new: bytes) -> bool:
        """Atomically set `new` if the value at `key` equals `expected`; True if swapped.

        `expected=None` means "only if absent" (an expired key is absent). A
        successful swap behaves like `set`: it clears the TTL.

        Raises:
            InvalidKey, ValueTooLarge, QuotaExceeded, RateLimited: as named; nothing is written.
        """
        return self._engine.compare_and_swap(*self._cas_args(self.tenant.quota, key, expected, new))

    def list_keys(
        self,
        prefix: Key = "",
        cursor: str | None = None,
        limit: int = DEFAULT_LIST_LIMIT,
        *,
        start: Key | None = None,
        end: Key | None = None,
        reverse: bool = False,
    ) -> KeyPage:
        """One page of the keys starting with `prefix`, in the byte order of their UTF-8.

        `start` (inclusive) and `end` (exclusive) narrow the listing further;
        `reverse=True` lists the same keys in descending order. Pass the
        returned `cursor` back, with the same prefix, start, end and reverse,
        to get the next page; it is None when the listing is complete. Keys not
        written during the listing appear exactly once.

        Raises:
            InvalidKey: if the prefix, start or end is too long or has a control character.
            InvalidArgument: if `limit` is not in 1..1000, or the cursor is not one this listing returned.
            RateLimited: as named.
        """
        key_range, after, limit = self._page_args(self.tenant.quota, prefix, start, end, reverse, cursor, limit)
        direct = self._direct
        if direct is not None:
            keys, more = direct.list_keys_text(self._ns, key_range, after, limit)
            return KeyPage(keys=keys, cursor=encode_cursor(key_range, keys[-1].encode()) if more and keys else None)
        found, more = self._engine.list_keys(self._ns, key_range, after, limit)
        return self._key_page(key_range, found, more)

    def scan(
        self,
        prefix: Key = "",
        *,
        start: Key | None = None,
        end: Key | None = None,
        cursor: str | None = None,
        limit: int = DEFAULT_LIST_LIMIT,
        reverse: bool = False,
    ) -> ScanPage:
        """One page of (key, value) pairs, in key order (or reversed), read from one consistent snapshot.

        The keys are those `list_keys` would list with the same arguments, each
        with its value as of the same moment. A page holds at most `limit`
        pairs and at most 1 MiB of keys and values (a first pair larger than
        that comes alone). Pass the returned `cursor` back with the same
        arguments for the next page; it is None at the end. A scan costs one
        rate token per pair returned.

        Raises:
            InvalidKey, InvalidArgument, RateLimited: as `list_keys`.
        """
        key_range, after, limit = self._page_args(self.tenant.quota, prefix, start, end, reverse, cursor, limit)
        direct = self._direct
        if direct is not None:
            items, more = direct.scan_text(self._ns, key_range, after, limit, SCAN_PAGE_MAX_BYTES)
            if len(items) > 1:
                self._charge_scan(len(items))
            next_cursor = encode_cursor(key_range, items[-1][0].encode()) if more and items else None
            return ScanPage(items=items, cursor=next_cursor)
        found, more = self._engine.scan(self._ns, key_range, after, limit, SCAN_PAGE_MAX_BYTES)
        return self._scan_page(key_range, found, more)

    def items(
        self,
        prefix: Key = "",
        *,
        start: Key | None = None,
        end: Key | None = None,
        reverse: bool = False,
        page_size: int = DEFAULT_LIST_LIMIT,
    ) -> Iterator[tuple[str, bytes]]:
        """Every (key, value) pair `scan` would page through, one page in memory at a time.

        Each page is one consistent snapshot; pages are read as iteration
        reaches them, so a pair written meanwhile may or may not be seen (those
        left untouched are seen exactly once).

        Raises:
            InvalidKey, InvalidArgument, RateLimited: as `scan`, when a page is read.
        """
        cursor: str | None = None
        while True:
            page = self.scan(prefix, start=start, end=end, cursor=cursor, limit=page_size, reverse=reverse)
            yield from page.items
            if page.cursor is None:
                return
            cursor = page.cursor

    def get_many(self, keys: Iterable[Key], *, max_bytes: int | None = None) -> list[bytes | None]:
        """The values at `keys`, in order (None where missing); at most 1000 keys.

        A key named several times is read once, and its one value object is repeated. With
        `max_bytes`, values that weigh more together (each distinct key counted once) are refused:
        on LMDB before much more than that is read, which bounds what a caller who answers
        someone else's request (a plugin's) spends on it.

        Raises:
            InvalidKey, RateLimited: as named.
            InvalidArgument: if more than 1000 keys are given, or `max_bytes` is not a non-negative int.
            ValueTooLarge: if the values weigh more than `max_bytes`.
        """
        _check_max_bytes(max_bytes)
        direct = self._direct
        if direct is not None and type(keys) is list and 0 < len(keys) <= BATCH_MAX_ITEMS:
            # The hot path: the keys validated and made the engine's in a few passes in C.
            quota = self.tenant.quota
            found = _batch_fast_path(keys, self._ns.prefix, quota.max_key_bytes)
            if found is not None:
                stored, longest = found
                limiter = self.tenant._limiter
                if limiter is not None:
                    limiter.acquire(len(stored))
                if len(set(stored)) == len(stored):
                    return direct.get_many_stored(self._ns, stored, longest, max_bytes)
                unique = list(dict.fromkeys(stored))  # a repeated key is read once: see below
                return self._in_order(stored, unique, direct.get_many_stored(self._ns, unique, longest, max_bytes))
        raw = self._keys(self.tenant.quota, keys)
        # Never read a repeated key again: 1000 names of one 1 MiB value would be 1 GiB of copies, where
        # reading it once keeps the reply's real cost (and a plugin's get_many) at one value's size.
        unique = list(dict.fromkeys(raw))
        if direct is not None and unique:
            prefix = self._ns.prefix
            stored = [prefix + key for key in unique]
            values = direct.get_many_stored(self._ns, stored, max(map(len, stored)), max_bytes)
        else:
            values = _weighed(self._engine.get_many(self._ns, unique), max_bytes)
        return self._in_order(raw, unique, values)

    def set_many(self, items: Mapping[Key, bytes] | Iterable[tuple[Key, bytes]]) -> None:
        """Store several values at once, all or nothing; clears their TTLs. At most 1000 items.

        Raises:
            InvalidKey, ValueTooLarge, QuotaExceeded, RateLimited, InvalidArgument: as named; nothing is written.
        """
        self._engine.set_many(*self._set_many_args(self.tenant.quota, items))

    def delete_many(self, keys: Iterable[Key]) -> int:
        """Remove several keys at once; the number that existed. At most 1000 keys.

        Raises:
            InvalidKey, RateLimited, InvalidArgument: as named; nothing is removed.
        """
        return self._engine.delete_many(self._ns, self._keys(self.tenant.quota, keys))

    def __repr__(self) -> str:
        return f"Bucket(tenant={self.tenant.name!r}, name={self.name!r})"


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

    async def get_many(self, keys: Iterable[Key], *, max_bytes: int | None = None) -> list[bytes | None]:
        """The values at `keys`, in order (None where missing); at most 1000 keys, each read once.

        `max_bytes` as `Bucket.get_many`'s, checked once the values are read.

        Raises:
            InvalidKey, RateLimited, InvalidArgument, ValueTooLarge: as `Bucket.get_many`.
        """
        _check_max_bytes(max_bytes)
        engine, quota = await self._begin()
        raw = self._bucket._keys(quota, keys)
        unique = list(dict.fromkeys(raw))
        return self._bucket._in_order(raw, unique, _weighed(await engine.get_many(self._ns, unique), max_bytes))

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
