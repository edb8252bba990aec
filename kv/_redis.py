"""The clustered engine: `RedisStore`, an `AsyncStore` on Redis (one node) or Redis Cluster.

Imported only by `KvStore.from_url` (and `kv.RedisStore`), so the embedded
default never loads redis-py.

Every write is one Lua script (EVALSHA, see `kv._redis_scripts`) that reads,
checks the tenant's quota, writes and updates the usage counters atomically on
the server, so quotas are exact however many hosts write at once. Reads are
plain commands. The URL, the client and the translation of driver errors live
in `kv._redis_client`; the optional read cache wraps this engine (`kv._read_cache`).

Key layout, for key prefix `P` (default `wkv`), tenant `T`, bucket `B`, key `K`
(all of a tenant's keys share the hash tag `{T}`, so they live in one cluster
slot: its scripts and listings run on one node, and one tenant cannot spread
over several nodes; tenants spread over the cluster)::

    P:{T}:d:B:K   string  the value; a TTL'd one also carries a native expiry (PXAT)
    P:{T}:i:B     zset    every stored key of bucket B, score 0, so ZRANGEBYLEX lists in byte order
    P:{T}:x       zset    "B:K" -> the last live millisecond of every TTL'd key (sweep order)
    P:{T}:t       hash    "B:K" -> "<last live ms> <value bytes>" for every TTL'd key
    P:{T}:u       hash    keys, bytes: every stored record of the tenant, expired or not yet swept
    P:{T}:o:<id>  string  a write's result, kept `timeout_s` + 5 s, so a resent write runs once
    P:{T}:b       set     the tenant's buckets that hold keys (kept by the write scripts)
    P:{T}:q       string  the tenant's quota (msgpack), if it has a record
    P:tenants     set     every tenant with a record or data (outside any hash tag: it spans tenants)
    P:format      string  the store format (2); a store of the first format (no such key) is upgraded
                          in place on first use: its tenant and bucket sets are built by a SCAN

redis-py resends a command whose connection dropped (a failover, or its own
topology refresh closing busy connections) although the server may already
have run it; each write carries a random id and answers a resend from its
record, so increments, CAS and quotas stay exact through retries.

Redis hides an expired value from every command the moment it expires (it
compares against its own clock, and keeps a key live through its `PXAT`
millisecond, so we store the last live millisecond). The index, the `t` hash
and the usage counters are swept lazily, like the local engine: usage can
only overstate live usage, and a write that fails the quota check sweeps the
tenant's expired keys and decides again, inside the same script. Scripts judge
TTL'd keys by the server's `TIME` and the `t` hash, never by whether Redis has
dropped the value yet, so a script's view is consistent. Redis 7 replicates a
script's effects, not the script, so `TIME` is allowed before writes.

Redis must not evict keys (`maxmemory-policy noeviction`, its default): an
evicted value would leave the usage counters behind.
"""

from __future__ import annotations

import asyncio
import math
import os
from collections.abc import Awaitable, Coroutine, Sequence
from typing import Any, Final, TypeVar, cast

from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript

from . import _redis_scripts as lua
from ._errors import BackendUnavailable, InvalidArgument, NotANumber, ValueTooLarge
from ._protocol import ScanItem
from ._redis_client import DRIVER_ERRORS, Client, check_timeout, connect, translate
from ._rules import (
    DEFAULT_KEY_PREFIX,
    DEFAULT_REDIS_MAX_CONNECTIONS,
    DEFAULT_REDIS_TIMEOUT_S,
    KeyRange,
    Namespace,
    Quota,
    Usage,
    add_counter,
    check_name,
    parse_counter,
    quota_exceeded,
)

__all__ = [
    "DEFAULT_KEY_PREFIX",
    "DEFAULT_REDIS_TIMEOUT_S",
    "RedisStore",
]

#: The layout this code writes. 1: the first release; 2: adds the tenant, bucket and quota records.
STORE_FORMAT: Final = 2
#: How much longer than `timeout_s` a write's record (its exactly-once guard) stays on the server.
_OP_RECORD_MARGIN_MS: Final = 5000

T = TypeVar("T")


class RedisStore:
    """An `AsyncStore` on a `redis.asyncio.Redis` or `redis.asyncio.cluster.RedisCluster` client.

    Build one with `RedisStore.from_url`, or pass a client you configured.
    Operations are atomic on the server and quotas exact across any number of
    hosts. Each operation takes at most `timeout_s` (driver retries across a
    failover included) and then raises `BackendUnavailable`.

    A client you pass must not decode responses (`decode_responses=False`, the default).
    Use one store from one event loop (`SyncBridge` does).

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
        # A brace or colon in the prefix would move the hash tag or blur the layout; names are safe.
        check_name("key_prefix", key_prefix)
        self.client = client
        self.key_prefix = key_prefix
        self.timeout_s = check_timeout(timeout_s)
        self.where = where or ("Redis Cluster" if isinstance(client, RedisCluster) else "Redis")
        # Tenants this store gave TTL'd keys, with a counter of those writes, for `sweep()`.
        self._ttl_tenants: dict[str, int] = {}
        # Tenants this store has recorded in the tenants set, so that each costs one SADD per store.
        self._known_tenants: set[str] = set()
        self._closed = False
        self._ready = False
        self._init_lock = asyncio.Lock()
        # An operation's record must outlive every resend of it, which all happen within `timeout_s`.
        self._scripts = lua.register(client, math.ceil(self.timeout_s * 1000) + _OP_RECORD_MARGIN_MS)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        timeout_s: float = DEFAULT_REDIS_TIMEOUT_S,
        max_connections: int = DEFAULT_REDIS_MAX_CONNECTIONS,
        password: str | None = None,
        tls_ca_file: str | None = None,
    ) -> RedisStore:
        """A store on a Redis URL (`redis://`, `rediss://`, `redis+cluster://`, `rediss+cluster://`).

        Connects lazily: an unreachable server is reported by the first operation.
        `password` is used when the URL carries none; `tls_ca_file` names the CAs
        a TLS server's certificate is checked against.

        Raises:
            InvalidArgument: if the URL or an option is malformed.
        """
        timeout_s = check_timeout(timeout_s)
        if type(max_connections) is not int or max_connections < 1:
            raise InvalidArgument(f"max_connections must be an int >= 1, got {max_connections!r}")
        client, where = connect(
            url, timeout_s=timeout_s, max_connections=max_connections, password=password, tls_ca_file=tls_ca_file
        )
        return cls(client, key_prefix=key_prefix, timeout_s=timeout_s, where=where)

    # -- key names -----------------------------------------------------------------------------

    def _base(self, tenant: str) -> bytes:
        return f"{self.key_prefix}:{{{tenant}}}:".encode()

    def _data(self, ns: Namespace, key: bytes) -> bytes:
        return self._base(ns.tenant) + b"d:" + ns.bucket.encode() + b":" + key

    def _tenant_keys(self, base: bytes) -> list[bytes]:
        return [base + b"u", base + b"x", base + b"t"]

    def _tenants_key(self) -> bytes:
        return f"{self.key_prefix}:tenants".encode()

    def _format_key(self) -> bytes:
        return f"{self.key_prefix}:format".encode()

    # -- the edge: every call to Redis goes through here ---------------------------------------

    async def _guard(self, call: Awaitable[T]) -> T:
        """Await `call` within `timeout_s`, translating every driver error into `BackendUnavailable`, once."""
        if self._closed:
            _discard(call)
            raise BackendUnavailable("the store is closed")
        try:
            if not self._ready:
                try:
                    await self._initialize()
                except BaseException:
                    _discard(call)
                    raise
            async with asyncio.timeout(self.timeout_s):
                return await call
        except DRIVER_ERRORS as exc:
            raise translate(self.where, self.timeout_s, exc) from exc

    async def _initialize(self) -> None:
        # Concurrent first calls on a cluster client that has no slot map yet go to random nodes, and the
        # MOVED replies make redis-py rebuild its topology under busy connections; load the map once first.
        async with self._init_lock:
            if not self._ready:
                async with asyncio.timeout(self.timeout_s):
                    if isinstance(self.client, RedisCluster):
                        await self.client.initialize()
                    raw = cast(bytes | None, await self.client.get(self._format_key()))
                # An upgrade is not bound by one operation's timeout (each of its commands is).
                await self._check_format(raw)
                self._ready = True

    async def _check_format(self, raw: bytes | None) -> None:
        """Record the store format, upgrading a first-format store in place; refuse a newer one."""
        if raw is not None:
            found = int(raw) if bytes(raw).isdigit() else None
            if found is None or found > STORE_FORMAT:
                shown = "unreadable" if found is None else str(found)
                raise BackendUnavailable(
                    f"{self.where} (key prefix {self.key_prefix!r}) has store format {shown}, newer than this "
                    f"wasmkv reads ({STORE_FORMAT}): open it with a newer wasmkv"
                )
            return
        # No format key: a new store, or one of the first format, which kept no sets of tenants and
        # buckets. Build them from the tenants' index keys; an empty store costs one SCAN that finds nothing.
        pattern = f"{self.key_prefix}:{{*}}:i:*".encode()
        async for key in self.client.scan_iter(match=pattern, count=1000):
            tenant, bucket = _tenant_and_bucket(bytes(key), len(self.key_prefix) + 2)
            base = self._base(tenant)
            if await self.client.zcard(key):
                await self.client.sadd(base + b"b", bucket)
                await self.client.sadd(self._tenants_key(), tenant)
        await self.client.set(self._format_key(), str(STORE_FORMAT), nx=True)

    async def _script(self, script: AsyncScript, base: bytes, keys: list[bytes], args: list[Any]) -> list[Any]:
        result: list[Any] = await self._guard(script(keys=keys, args=[base, *args]))
        return result

    # -- reads ---------------------------------------------------------------------------------

    async def get(self, ns: Namespace, key: bytes) -> bytes | None:
        """The live value, or None.

        Raises:
            BackendUnavailable: if Redis is unreachable, fails, or does not answer within `timeout_s`.
        """
        # The client never decodes responses, so strings come back as bytes.
        return cast(bytes | None, await self._guard(self.client.get(self._data(ns, key))))

    async def get_many(self, ns: Namespace, keys: Sequence[bytes]) -> list[bytes | None]:
        """The live values, in the order of `keys` (one MGET: a tenant's keys share a slot).

        Raises:
            BackendUnavailable: as `get`.
        """
        if not keys:
            return []
        return cast(list[bytes | None], await self._guard(self.client.mget([self._data(ns, key) for key in keys])))

    async def exists(self, ns: Namespace, key: bytes) -> bool:
        """Whether the key is live.

        Raises:
            BackendUnavailable: as `get`.
        """
        return bool(await self._guard(self.client.exists(self._data(ns, key))))

    async def ttl(self, ns: Namespace, key: bytes) -> int | None:
        """Milliseconds left before the key expires; None if it has no TTL or is missing.

        Raises:
            BackendUnavailable: as `get`.
        """
        left = int(await self._guard(self.client.pttl(self._data(ns, key))))
        # The native expiry is the last live millisecond, so the time left is one more than PTTL says.
        return None if left < 0 else left + 1

    async def _range(
        self, ns: Namespace, key_range: KeyRange, after: bytes | None, limit: int, max_bytes: int | None
    ) -> tuple[list[bytes], bool]:
        """One script over the bucket's sorted index: O(log n + page + expired keys skipped)."""
        if key_range.empty():
            return [], False
        base = self._base(ns.tenant)
        bucket = ns.bucket.encode()
        low, high = b"[" + key_range.low, b"+" if key_range.high is None else b"(" + key_range.high
        if after is not None:
            if key_range.reverse:
                high = b"(" + after if key_range.high is None or after < key_range.high else high
            else:
                low = b"(" + after if after >= key_range.low else low
        args: list[Any] = [base + b"d:" + bucket + b":", low, high, limit, int(key_range.reverse)]
        args.append(int(max_bytes is not None))
        out, more = await self._guard(self._scripts.range(keys=[base + b"i:" + bucket], args=[*args, max_bytes or 0]))
        return list(out), bool(more)

    async def list_keys(
        self, ns: Namespace, key_range: KeyRange, after: bytes | None, limit: int
    ) -> tuple[list[bytes], bool]:
        """Up to `limit` live keys of `key_range` past `after`, in its order, and whether more follow.

        Raises:
            BackendUnavailable: as `get`.
        """
        return await self._range(ns, key_range, after, limit, None)

    async def scan(
        self, ns: Namespace, key_range: KeyRange, after: bytes | None, limit: int, max_bytes: int
    ) -> tuple[list[ScanItem], bool]:
        """As `list_keys`, with each key's value and TTL left, from one script (one snapshot).

        Raises:
            BackendUnavailable: as `get`.
        """
        flat, more = await self._range(ns, key_range, after, limit, max_bytes)
        # A native expiry is the key's last live millisecond: the time left is one more than PTTL says.
        items: list[ScanItem] = [
            (bytes(flat[i]), bytes(flat[i + 1]), None if int(flat[i + 2]) < 0 else int(flat[i + 2]) + 1)
            for i in range(0, len(flat), 3)
        ]
        return items, more

    async def usage(self, tenant: str) -> Usage:
        """The tenant's live keys and bytes; sweeps its expired keys first so they never count.

        Raises:
            BackendUnavailable: as `get`.
        """
        base = self._base(tenant)
        _, keys, size = await self._script(self._scripts.usage, base, self._tenant_keys(base), [])
        return Usage(keys=int(keys), bytes=int(size))

    async def tenants(self) -> list[str]:
        """Every tenant that has written to this store (through this version of wasmkv), in byte order.

        Raises:
            BackendUnavailable: as `get`.
        """
        names = cast(set[bytes], await self._guard(self.client.smembers(self._tenants_key())))
        return [name.decode() for name in sorted(names)]

    async def buckets(self, tenant: str) -> list[str]:
        """The tenant's buckets that hold at least one stored key, in byte order.

        Raises:
            BackendUnavailable: as `get`.
        """
        names = cast(set[bytes], await self._guard(self.client.smembers(self._base(tenant) + b"b")))
        return [name.decode() for name in sorted(names)]

    async def tenant_quota(self, tenant: str) -> Quota | None:
        """The quota stored with the tenant, or None if it has no record.

        Raises:
            BackendUnavailable: as `get`.
        """
        record = cast(bytes | None, await self._guard(self.client.get(self._base(tenant) + b"q")))
        return None if record is None else Quota.from_record(record)

    async def put_tenant_quota(self, tenant: str, quota: Quota, *, only_if_absent: bool = False) -> Quota:
        """Store the tenant's quota atomically (only if it has none, with `only_if_absent`); the quota stored now.

        Raises:
            BackendUnavailable: as `get`.
        """
        key = self._base(tenant) + b"q"
        stored = await self._guard(self.client.set(key, quota.to_record(), nx=only_if_absent))
        await self._guard(self.client.sadd(self._tenants_key(), tenant))
        self._known_tenants.add(tenant)
        if stored:
            return quota
        existing = await self.tenant_quota(tenant)
        return quota if existing is None else existing

    async def delete_tenant(self, tenant: str) -> int:
        """Remove every key of the tenant, its usage and its record; the number of keys removed.

        Not atomic: a write the tenant makes meanwhile may survive it. All the tenant's keys
        share one slot, so each batch is one multi-key UNLINK.

        Raises:
            BackendUnavailable: as `get`.
        """
        base = self._base(tenant)

        async def remove() -> int:
            data = base + b"d:"
            removed = 0
            batch: list[bytes] = []
            async for key in self.client.scan_iter(match=base + b"*", count=1000):
                batch.append(key)
                removed += key.startswith(data)
                if len(batch) == 500:
                    await self.client.unlink(*batch)
                    batch = []
            if batch:
                await self.client.unlink(*batch)
            await self.client.srem(self._tenants_key(), tenant)
            return removed

        removed = await self._guard(remove())
        self._known_tenants.discard(tenant)
        self._ttl_tenants.pop(tenant, None)
        return removed

    # -- writes ----------------------------------------------------------------------------------

    async def _write(self, script: AsyncScript, ns: Namespace, args: list[Any]) -> list[Any]:
        if ns.tenant not in self._known_tenants:
            await self._guard(self.client.sadd(self._tenants_key(), ns.tenant))
            self._known_tenants.add(ns.tenant)
        base = self._base(ns.tenant)
        op_key = base + b"o:" + os.urandom(12)
        return await self._script(script, base, [*self._tenant_keys(base), op_key], args)

    @staticmethod
    def _raise_quota(quota: Quota, result: list[Any]) -> None:
        _, keys, size, add_keys, add_bytes = (int(n) for n in result)
        # The script judged these same figures, so the check raises; the line after it is a backstop.
        quota.check(Usage(keys=keys, bytes=size), add_keys, add_bytes)
        raise quota_exceeded("max_keys", quota.max_keys, keys, add_keys)

    async def set(self, ns: Namespace, key: bytes, value: bytes, ttl_ms: int | None, quota: Quota) -> None:
        """Store a value, replacing any TTL with `ttl_ms`.

        Raises:
            QuotaExceeded: if the write would pass `max_keys` or `max_bytes`; nothing is written.
            BackendUnavailable: as `get`; the write may or may not have happened.
        """
        if ttl_ms is not None:
            self._ttl_tenants[ns.tenant] = self._ttl_tenants.get(ns.tenant, 0) + 1
        args = [ns.bucket, key, value, "" if ttl_ms is None else ttl_ms, quota.max_keys, quota.max_bytes]
        result = await self._write(self._scripts.set, ns, args)
        if result[0] == lua.QUOTA:
            self._raise_quota(quota, result)

    async def set_many(self, ns: Namespace, items: Sequence[tuple[bytes, bytes]], quota: Quota) -> None:
        """Store several values at once, all or nothing; clears their TTLs.

        Raises:
            QuotaExceeded, BackendUnavailable: as `set`.
        """
        # A key named twice takes its last value, as successive sets would.
        final = dict(items)
        if not final:
            return
        args: list[Any] = [ns.bucket, quota.max_keys, quota.max_bytes]
        for key, value in final.items():
            args += (key, value)
        result = await self._write(self._scripts.set_many, ns, args)
        if result[0] == lua.QUOTA:
            self._raise_quota(quota, result)

    async def delete(self, ns: Namespace, key: bytes) -> bool:
        """Remove a key; True if it was live.

        Raises:
            BackendUnavailable: as `set`.
        """
        return bool(await self.delete_many(ns, (key,)))

    async def delete_many(self, ns: Namespace, keys: Sequence[bytes]) -> int:
        """Remove keys; the number that were live.

        Raises:
            BackendUnavailable: as `set`.
        """
        unique = list(dict.fromkeys(keys))
        if not unique:
            return 0
        result = await self._write(self._scripts.delete_many, ns, [ns.bucket, *unique])
        return int(result[1])

    async def increment(self, ns: Namespace, key: bytes, delta: int, quota: Quota) -> int:
        """Add `delta` to a decimal counter (missing = 0), keeping its TTL; the new value.

        Raises:
            NotANumber: if the live value is not a signed 64-bit decimal integer.
            IntegerOverflow: if the sum leaves the signed 64-bit range.
            ValueTooLarge: if the new value's decimal form is over `max_value_bytes`.
            QuotaExceeded, BackendUnavailable: as `set`.
        """
        args = [ns.bucket, key, delta, quota.max_keys, quota.max_bytes, quota.max_value_bytes]
        result = await self._write(self._scripts.increment, ns, args)
        code = result[0]
        if code == lua.OK:
            return int(result[1])
        if code == lua.NOT_A_NUMBER:
            parse_counter(bytes(result[1]))  # raises NotANumber with the local engine's words
            raise NotANumber(f"value is not a signed 64-bit decimal integer: {bytes(result[1])[:40]!r}")
        if code == lua.OVERFLOW:
            add_counter(parse_counter(bytes(result[1])), delta)  # raises IntegerOverflow likewise
        if code == lua.TOO_LARGE:
            raise ValueTooLarge(f"value is {result[1]} bytes, over max_value_bytes {quota.max_value_bytes}")
        self._raise_quota(quota, result)
        raise AssertionError("unreachable")  # pragma: no cover

    async def compare_and_swap(
        self, ns: Namespace, key: bytes, expected: bytes | None, new: bytes, quota: Quota
    ) -> bool:
        """Set `new` (clearing the TTL) if the live value equals `expected` (None = absent).

        Raises:
            QuotaExceeded, BackendUnavailable: as `set`.
        """
        flag, wanted = ("0", b"") if expected is None else ("1", expected)
        args = [ns.bucket, key, flag, wanted, new, quota.max_keys, quota.max_bytes]
        result = await self._write(self._scripts.compare_and_swap, ns, args)
        if result[0] == lua.QUOTA:
            self._raise_quota(quota, result)
        return bool(result[1])

    async def sweep(self, limit: int) -> int:
        """Reclaim up to `limit` expired keys of the tenants this store wrote TTLs for; the number reclaimed.

        Redis frees expired values itself; this drops their index entries and
        usage. Tenants only other hosts wrote TTLs for are swept by those hosts,
        and by any `usage()` or failing quota check here.

        Raises:
            BackendUnavailable: as `get`.
        """
        removed = 0
        for tenant, writes in list(self._ttl_tenants.items()):
            base = self._base(tenant)
            _, count, left = await self._script(self._scripts.sweep, base, self._tenant_keys(base), [limit - removed])
            removed += int(count)
            # Forget the tenant only if no TTL write for it started meanwhile.
            if not left and self._ttl_tenants.get(tenant) == writes:
                del self._ttl_tenants[tenant]
            if removed >= limit:
                break
        return removed

    async def aclose(self) -> None:
        """Close the client's connections; idempotent."""
        if self._closed:
            return
        self._closed = True
        await self.client.aclose()


def _discard(call: Awaitable[Any]) -> None:
    # A call that will never be awaited is closed, or Python warns about it when it is collected.
    if isinstance(call, Coroutine):
        call.close()


def _tenant_and_bucket(index_key: bytes, start: int) -> tuple[str, bytes]:
    """The tenant and bucket of an index key `P:{T}:i:B`, reading from `start` (just past `P:{`)."""
    close = index_key.index(b"}:i:", start)
    return index_key[start:close].decode(), index_key[close + 4 :]
