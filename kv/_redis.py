"""The clustered engine: `RedisStore`, an `AsyncStore` on Redis (one node) or Redis Cluster.

Imported only by `KvStore.from_url` (and `kv.RedisStore`), so the embedded
default never loads redis-py.

Every write is one Lua script (EVALSHA) that reads, checks the tenant's quota,
writes and updates the usage counters atomically on the server, so quotas are
exact however many hosts write at once. Reads are plain commands.

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
import time
from collections.abc import Awaitable, Coroutine, Sequence
from typing import Any, Final, TypeVar, cast
from urllib.parse import unquote, urlsplit

import cachetools
import redis.asyncio
import redis.exceptions
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.commands.core import AsyncScript

from ._errors import BackendUnavailable, InvalidArgument, NotANumber, QuotaExceeded, ValueTooLarge
from ._rules import Namespace, Quota, Usage, add_counter, check_name, parse_counter, prefix_end

__all__ = [
    "DEFAULT_KEY_PREFIX",
    "DEFAULT_READ_CACHE_MS",
    "DEFAULT_REDIS_TIMEOUT_S",
    "RedisStore",
]

#: Every key this store writes starts with this, so a Redis shared with other data stays apart.
DEFAULT_KEY_PREFIX: Final = "wkv"
#: The most one operation (retries across a failover included) may take before `BackendUnavailable`.
DEFAULT_REDIS_TIMEOUT_S: Final = 2.0
#: Staleness bound of the optional read cache, when `read_cache_size` turns it on.
DEFAULT_READ_CACHE_MS: Final = 50
#: How much longer than `timeout_s` a write's record (its exactly-once guard) stays on the server.
_OP_RECORD_MARGIN_MS: Final = 5000
#: Expired keys one `sweep()` call reclaims at most, so a sweep never blocks Redis for long.
_SWEEP_BATCH: Final = 1000

T = TypeVar("T")
Client = redis.asyncio.Redis | RedisCluster

# Script result codes; the store turns them into the same errors, with the same words, as the local engine.
_OK: Final = 0
_QUOTA: Final = 1
_NOT_A_NUMBER: Final = 2
_OVERFLOW: Final = 3
_TOO_LARGE: Final = 4
_MISS: Final = object()

# Shared by every tenant script. KEYS: usage hash, expiry zset, ttl hash, and for writes the operation's
# record "P:{T}:o:<id>"; ARGV[1]: the tenant's key base "P:{T}:". OP_RECORD_TTL_MS is filled in per store.
_PREAMBLE = r"""
local base = ARGV[1]
local usage_key, expiry_key, ttl_key, op_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
-- The driver resends a command whose connection dropped, though the server may have run it; a write
-- that already ran answers from its record instead of running twice.
if op_key then
  local done = redis.call('GET', op_key)
  if done then return cmsgpack.unpack(done) end
end
local function finish(result)
  redis.call('SET', op_key, cmsgpack.pack(result), 'PX', OP_RECORD_TTL_MS)
  return result
end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local add_keys, add_bytes = 0, 0

-- Integers go to Redis as plain decimal text; Lua's default would use exponents past 1e14.
local function num(n) return string.format('%.0f', n) end

-- What is stored for member "B:K": value bytes (nil if nothing), whether it is live now, and its
-- last live ms (nil if no TTL). A TTL'd record is judged by the ttl hash, as Redis may have dropped it.
local function stored(member)
  local info = redis.call('HGET', ttl_key, member)
  if info then
    local deadline, size = string.match(info, '^(%d+) (%d+)$')
    deadline = tonumber(deadline)
    return tonumber(size), deadline >= now, deadline
  end
  local d = base .. 'd:' .. member
  local size = redis.call('STRLEN', d)
  if size > 0 or redis.call('EXISTS', d) == 1 then return size, true, nil end
  return nil, false, nil
end

local function plan_put(member, key, value)
  local size = stored(member)
  if size == nil then
    add_keys = add_keys + 1
    add_bytes = add_bytes + #key + #value
  else
    add_bytes = add_bytes + #value - size
  end
end

local function put(bucket, key, member, value, deadline)
  local d = base .. 'd:' .. member
  if deadline then
    redis.call('SET', d, value, 'PXAT', num(deadline))
    redis.call('ZADD', expiry_key, num(deadline), member)
    redis.call('HSET', ttl_key, member, num(deadline) .. ' ' .. #value)
  else
    redis.call('SET', d, value)
    if redis.call('HDEL', ttl_key, member) == 1 then redis.call('ZREM', expiry_key, member) end
  end
  redis.call('ZADD', base .. 'i:' .. bucket, 0, key)
end

local function remove(bucket, key, member)
  local size, live = stored(member)
  if size == nil then return false end
  redis.call('DEL', base .. 'd:' .. member)
  redis.call('ZREM', base .. 'i:' .. bucket, key)
  if redis.call('HDEL', ttl_key, member) == 1 then redis.call('ZREM', expiry_key, member) end
  add_keys = add_keys - 1
  add_bytes = add_bytes - #key - size
  return live
end

-- Drop up to `limit` (nil: all) of the tenant's expired records, with their usage.
local function sweep(limit)
  local members
  if limit then
    members = redis.call('ZRANGEBYSCORE', expiry_key, '-inf', '(' .. num(now), 'LIMIT', 0, limit)
  else
    members = redis.call('ZRANGEBYSCORE', expiry_key, '-inf', '(' .. num(now))
  end
  local bytes = 0
  for _, member in ipairs(members) do
    local sep = string.find(member, ':', 1, true)
    local bucket, key = string.sub(member, 1, sep - 1), string.sub(member, sep + 1)
    local info = redis.call('HGET', ttl_key, member)
    if info then bytes = bytes + #key + tonumber(string.match(info, ' (%d+)$')) end
    redis.call('DEL', base .. 'd:' .. member)
    redis.call('ZREM', base .. 'i:' .. bucket, key)
    redis.call('HDEL', ttl_key, member)
    redis.call('ZREM', expiry_key, member)
  end
  if #members > 0 then
    redis.call('HINCRBY', usage_key, 'keys', -#members)
    redis.call('HINCRBY', usage_key, 'bytes', num(-bytes))
  end
  return #members
end

local function over(max_keys, max_bytes)
  local u = redis.call('HMGET', usage_key, 'keys', 'bytes')
  local keys, bytes = tonumber(u[1] or 0), tonumber(u[2] or 0)
  if (add_keys > 0 and keys + add_keys > max_keys) or (add_bytes > 0 and bytes + add_bytes > max_bytes) then
    return {1, keys, bytes, add_keys, add_bytes}
  end
  return nil
end

-- Plan with `plan`, check the quota; on failure sweep the tenant's expired records and decide again,
-- as usage counts expired records too. `plan` changes nothing, so it can run twice.
local function charge(plan, max_keys, max_bytes)
  add_keys, add_bytes = 0, 0
  plan()
  local err = over(max_keys, max_bytes)
  if err and sweep(nil) > 0 then
    add_keys, add_bytes = 0, 0
    plan()
    err = over(max_keys, max_bytes)
  end
  return err
end

local function commit_usage()
  if add_keys ~= 0 then redis.call('HINCRBY', usage_key, 'keys', add_keys) end
  if add_bytes ~= 0 then redis.call('HINCRBY', usage_key, 'bytes', num(add_bytes)) end
end
"""

# ARGV: base, bucket, key, value, ttl_ms ('' = none), max_keys, max_bytes.
_SET = r"""
local bucket, key, value = ARGV[2], ARGV[3], ARGV[4]
local member = bucket .. ':' .. key
local err = charge(function() plan_put(member, key, value) end, tonumber(ARGV[6]), tonumber(ARGV[7]))
if err then return err end
local deadline = nil
if ARGV[5] ~= '' then deadline = now + tonumber(ARGV[5]) - 1 end
put(bucket, key, member, value, deadline)
commit_usage()
return finish({0})
"""

# ARGV: base, bucket, max_keys, max_bytes, key1, value1, key2, value2, ... (keys distinct).
_SET_MANY = r"""
local bucket = ARGV[2]
local function plan()
  for i = 5, #ARGV, 2 do plan_put(bucket .. ':' .. ARGV[i], ARGV[i], ARGV[i + 1]) end
end
local err = charge(plan, tonumber(ARGV[3]), tonumber(ARGV[4]))
if err then return err end
for i = 5, #ARGV, 2 do put(bucket, ARGV[i], bucket .. ':' .. ARGV[i], ARGV[i + 1], nil) end
commit_usage()
return finish({0})
"""

# ARGV: base, bucket, key1, key2, ... (keys distinct). Returns {0, live keys removed}.
_DELETE_MANY = r"""
local bucket, live = ARGV[2], 0
for i = 3, #ARGV do
  if remove(bucket, ARGV[i], bucket .. ':' .. ARGV[i]) then live = live + 1 end
end
commit_usage()
return finish({0, live})
"""

# Signed 64-bit decimal arithmetic: Lua numbers are doubles, exact only to 2^53, so a value is
# carried as hi * 1e9 + lo, both parts with the value's sign and |lo| < 1e9, each exact in a double.
# ARGV: base, bucket, key, delta, max_keys, max_bytes, max_value_bytes. Returns {0, new value}.
_INCREMENT = r"""
local HI_MAX, LO_MAX, LO_MIN = 9223372036, 854775807, -854775808
local function out_of_range(hi, lo)
  return hi > HI_MAX or (hi == HI_MAX and lo > LO_MAX) or hi < -HI_MAX or (hi == -HI_MAX and lo < LO_MIN)
end
local function parse(s)
  local sign, digits = string.match(s, '^(%-?)(%d+)$')
  if not digits or #digits > 19 then return nil end
  local lo = tonumber(string.sub(digits, -9))
  local hi = 0
  if #digits > 9 then hi = tonumber(string.sub(digits, 1, -10)) end
  if sign == '-' then hi, lo = -hi, -lo end
  if out_of_range(hi, lo) then return nil end
  return hi, lo
end
local function add(ah, al, bh, bl)
  local hi, lo = ah + bh, al + bl
  if lo >= 1e9 then lo = lo - 1e9; hi = hi + 1 elseif lo <= -1e9 then lo = lo + 1e9; hi = hi - 1 end
  if hi > 0 and lo < 0 then hi = hi - 1; lo = lo + 1e9 elseif hi < 0 and lo > 0 then hi = hi + 1; lo = lo - 1e9 end
  return hi, lo
end
local function format(hi, lo)
  local text
  if hi ~= 0 then text = string.format('%.0f%09.0f', math.abs(hi), math.abs(lo)) else text = num(math.abs(lo)) end
  if hi < 0 or lo < 0 then text = '-' .. text end
  return text
end

local bucket, key = ARGV[2], ARGV[3]
local member = bucket .. ':' .. key
local _, live, deadline = stored(member)
local current = nil
local hi, lo = 0, 0
if live then
  current = redis.call('GET', base .. 'd:' .. member)
  hi, lo = parse(current)
  if hi == nil then return {2, current} end
else
  deadline = nil
end
local dh, dl = parse(ARGV[4])
hi, lo = add(hi, lo, dh, dl)
if out_of_range(hi, lo) then return {3, current or '0'} end
local value = format(hi, lo)
if #value > tonumber(ARGV[7]) then return {4, #value} end
local err = charge(function() plan_put(member, key, value) end, tonumber(ARGV[5]), tonumber(ARGV[6]))
if err then return err end
put(bucket, key, member, value, deadline)
commit_usage()
return finish({0, value})
"""

# ARGV: base, bucket, key, has_expected ('0'/'1'), expected, new, max_keys, max_bytes. Returns {0, 1 if swapped}.
_COMPARE_AND_SWAP = r"""
local bucket, key, new = ARGV[2], ARGV[3], ARGV[6]
local member = bucket .. ':' .. key
local size, live = stored(member)
if ARGV[4] == '1' then
  local expected = ARGV[5]
  if not live or size ~= #expected or redis.call('GET', base .. 'd:' .. member) ~= expected then return {0, 0} end
elseif live then
  return {0, 0}
end
local err = charge(function() plan_put(member, key, new) end, tonumber(ARGV[7]), tonumber(ARGV[8]))
if err then return err end
put(bucket, key, member, new, nil)
commit_usage()
return finish({0, 1})
"""

# ARGV: base. Sweeps every expired record of the tenant, then returns {0, keys, bytes}.
_USAGE = r"""
sweep(nil)
local u = redis.call('HMGET', usage_key, 'keys', 'bytes')
return {0, tonumber(u[1] or 0), tonumber(u[2] or 0)}
"""

# ARGV: base, limit. Returns {0, records reclaimed, TTL'd records left}.
_SWEEP = r"""
local removed = sweep(tonumber(ARGV[2]))
return {0, removed, redis.call('ZCARD', expiry_key)}
"""

# A read: no preamble. KEYS[1]: the bucket's index; ARGV: data key prefix "P:{T}:d:B:", low, high, limit.
# Stored keys are in the index until swept, so expired ones are skipped by asking Redis whether the value lives.
_LIST = r"""
local data, low, high, limit = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local batch = limit + 1
local out = {}
while true do
  local keys = redis.call('ZRANGEBYLEX', KEYS[1], low, high, 'LIMIT', 0, batch)
  for _, key in ipairs(keys) do
    if redis.call('EXISTS', data .. key) == 1 then
      if #out == limit then return {out, 1} end
      out[#out + 1] = key
    end
  end
  if #keys < batch then return {out, 0} end
  low = '(' .. keys[#keys]
end
"""


def _check_timeout(timeout_s: object) -> float:
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float) or not 0 < timeout_s < float("inf"):
        raise InvalidArgument(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
    return float(timeout_s)


def _check_count(name: str, value: object, minimum: int) -> int:
    if type(value) is not int or value < minimum:
        raise InvalidArgument(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


class RedisStore:
    """An `AsyncStore` on a `redis.asyncio.Redis` or `redis.asyncio.cluster.RedisCluster` client.

    Build one with `RedisStore.from_url`, or pass a client you configured.
    Operations are atomic on the server and quotas exact across any number of
    hosts. Each operation takes at most `timeout_s` (driver retries across a
    failover included) and then raises `BackendUnavailable`.

    A client you pass must not decode responses (`decode_responses=False`, the default).

    `read_cache_size > 0` turns on a per-store cache of `get` results for hot
    keys: at most that many entries, each served for up to `read_cache_ms`.
    That is weaker consistency: a host may read a value up to `read_cache_ms`
    stale (another host's write, or an expiry); its own writes invalidate its
    cache at once. Use one store from one event loop (`SyncBridge` does).

    Raises:
        InvalidArgument: if an option is out of range or `key_prefix` is not a valid name.
    """

    def __init__(
        self,
        client: Client,
        *,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        timeout_s: float = DEFAULT_REDIS_TIMEOUT_S,
        read_cache_size: int = 0,
        read_cache_ms: int = DEFAULT_READ_CACHE_MS,
        where: str | None = None,
    ) -> None:
        # A brace or colon in the prefix would move the hash tag or blur the layout; names are safe.
        check_name("key_prefix", key_prefix)
        self.client = client
        self.key_prefix = key_prefix
        self.timeout_s = _check_timeout(timeout_s)
        self.where = where or ("Redis Cluster" if isinstance(client, RedisCluster) else "Redis")
        _check_count("read_cache_size", read_cache_size, 0)
        _check_count("read_cache_ms", read_cache_ms, 1)
        self._cache: cachetools.TTLCache[tuple[bytes, bytes], bytes | None] | None = None
        if read_cache_size:
            self._cache = cachetools.TTLCache(read_cache_size, read_cache_ms / 1000, timer=time.monotonic)
        # Bumped by every write: a read that started before a write must not refill the cache after it.
        self._cache_epoch = 0
        # Tenants this store gave TTL'd keys, with a counter of those writes, for `sweep()`.
        self._ttl_tenants: dict[str, int] = {}
        self._closed = False
        self._ready = False
        self._init_lock = asyncio.Lock()
        # An operation's record must outlive every resend of it, which all happen within `timeout_s`.
        preamble = _PREAMBLE.replace("OP_RECORD_TTL_MS", str(math.ceil(self.timeout_s * 1000) + _OP_RECORD_MARGIN_MS))
        script = client.register_script
        self._set = script(preamble + _SET)
        self._set_many = script(preamble + _SET_MANY)
        self._delete_many = script(preamble + _DELETE_MANY)
        self._increment = script(preamble + _INCREMENT)
        self._cas = script(preamble + _COMPARE_AND_SWAP)
        self._usage = script(preamble + _USAGE)
        self._sweep = script(preamble + _SWEEP)
        self._list = script(_LIST)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        timeout_s: float = DEFAULT_REDIS_TIMEOUT_S,
        read_cache_size: int = 0,
        read_cache_ms: int = DEFAULT_READ_CACHE_MS,
        max_connections: int = 100,
    ) -> RedisStore:
        """A store on `redis://[user:password@]host:port[/db]` or `redis+cluster://host:port[,host:port...]`.

        Connects lazily: an unreachable server is reported by the first operation.

        Raises:
            InvalidArgument: if the URL or an option is malformed.
        """
        timeout_s = _check_timeout(timeout_s)
        _check_count("max_connections", max_connections, 1)
        # The driver gives up on one socket well inside our per-operation bound, so it can retry once.
        socket_timeout = timeout_s / 2
        parts = urlsplit(url)
        client: Client
        try:
            if parts.scheme == "redis":
                client = redis.asyncio.Redis.from_url(
                    url,
                    socket_timeout=socket_timeout,
                    socket_connect_timeout=socket_timeout,
                    max_connections=max_connections,
                )
                where = f"Redis at {parts.hostname}:{parts.port or 6379}"
            elif parts.scheme == "redis+cluster":
                nodes = [_parse_node(url, address) for address in parts.netloc.rpartition("@")[2].split(",")]
                if parts.path not in ("", "/", "/0"):
                    raise InvalidArgument(f"a Redis Cluster has only database 0, got {url!r}")
                user, _, password = parts.netloc.rpartition("@")[0].partition(":")
                client = RedisCluster(
                    startup_nodes=[ClusterNode(host, port) for host, port in nodes],
                    username=unquote(user) or None,
                    password=unquote(password) or None,
                    socket_timeout=socket_timeout,
                    socket_connect_timeout=socket_timeout,
                    max_connections=max_connections,
                    # Serve the slots that are up while another node fails over.
                    require_full_coverage=False,
                )
                where = "Redis Cluster at " + ",".join(f"{host}:{port}" for host, port in nodes)
            else:
                raise InvalidArgument(f"not a Redis URL (redis:// or redis+cluster://): {url!r}")
        except (ValueError, redis.exceptions.RedisClusterException) as exc:
            raise InvalidArgument(f"malformed Redis URL {url!r}: {exc}") from exc
        return cls(
            client,
            key_prefix=key_prefix,
            timeout_s=timeout_s,
            read_cache_size=read_cache_size,
            read_cache_ms=read_cache_ms,
            where=where,
        )

    # -- key names -----------------------------------------------------------------------------

    def _base(self, tenant: str) -> bytes:
        return f"{self.key_prefix}:{{{tenant}}}:".encode()

    def _data(self, ns: Namespace, key: bytes) -> bytes:
        return self._base(ns.tenant) + b"d:" + ns.bucket.encode() + b":" + key

    def _tenant_keys(self, base: bytes) -> list[bytes]:
        return [base + b"u", base + b"x", base + b"t"]

    # -- the edge: every call to Redis goes through here ---------------------------------------

    async def _guard(self, call: Awaitable[T]) -> T:
        """Await `call` within `timeout_s`, translating every driver error into `BackendUnavailable`, once."""
        if self._closed:
            _discard(call)
            raise BackendUnavailable("the store is closed")
        try:
            async with asyncio.timeout(self.timeout_s):
                if not self._ready:
                    try:
                        await self._initialize()
                    except BaseException:
                        _discard(call)
                        raise
                return await call
        except TimeoutError as exc:
            raise BackendUnavailable(f"{self.where} did not answer within {self.timeout_s:g} s") from exc
        except redis.exceptions.TimeoutError as exc:
            raise BackendUnavailable(
                f"{self.where} did not answer in time (operation timeout {self.timeout_s:g} s): {exc}"
            ) from exc
        except redis.exceptions.ConnectionError as exc:
            raise BackendUnavailable(f"{self.where} is unreachable: {exc}") from exc
        except (redis.exceptions.ClusterError, redis.exceptions.RedisClusterException) as exc:
            raise BackendUnavailable(f"{self.where} cannot serve: {exc}") from exc
        except (redis.exceptions.RedisError, OSError) as exc:
            raise BackendUnavailable(f"{self.where} failed: {exc}") from exc

    async def _initialize(self) -> None:
        # Concurrent first calls on a cluster client that has no slot map yet go to random nodes, and the
        # MOVED replies make redis-py rebuild its topology under busy connections; load the map once first.
        async with self._init_lock:
            if not self._ready:
                if isinstance(self.client, RedisCluster):
                    await self.client.initialize()
                self._ready = True

    async def _script(self, script: AsyncScript, base: bytes, keys: list[bytes], args: list[Any]) -> list[Any]:
        result: list[Any] = await self._guard(script(keys=keys, args=[base, *args]))
        return result

    def _forget(self, ns: Namespace, keys: Sequence[bytes]) -> None:
        self._cache_epoch += 1
        if self._cache is not None:
            for key in keys:
                self._cache.pop((ns.prefix, key), None)

    # -- reads ---------------------------------------------------------------------------------

    async def get(self, ns: Namespace, key: bytes) -> bytes | None:
        """The live value, or None (from the read cache when it is on and holds the key).

        Raises:
            BackendUnavailable: if Redis is unreachable, fails, or does not answer within `timeout_s`.
        """
        cache = self._cache
        if cache is None:
            return cast(bytes | None, await self._guard(self.client.get(self._data(ns, key))))
        cached = cache.get((ns.prefix, key), _MISS)
        if cached is not _MISS:
            return cached  # type: ignore[return-value]
        epoch = self._cache_epoch
        value = cast(bytes | None, await self._guard(self.client.get(self._data(ns, key))))
        if epoch == self._cache_epoch:
            cache[(ns.prefix, key)] = value
        return value

    async def get_many(self, ns: Namespace, keys: Sequence[bytes]) -> list[bytes | None]:
        """The live values, in the order of `keys` (one MGET: a tenant's keys share a slot).

        Raises:
            BackendUnavailable: as `get`.
        """
        if not keys:
            return []
        values = await self._guard(self.client.mget([self._data(ns, key) for key in keys]))
        return cast(list[bytes | None], values)

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

    async def list_keys(
        self, ns: Namespace, prefix: bytes, after: bytes | None, limit: int
    ) -> tuple[list[bytes], bool]:
        """Up to `limit` live keys with `prefix` after `after`, in byte order, and whether more follow.

        One script: ZRANGEBYLEX on the bucket's index, O(log n + page + expired keys skipped).

        Raises:
            BackendUnavailable: as `get`.
        """
        base = self._base(ns.tenant)
        bucket = ns.bucket.encode()
        low = b"(" + after if after is not None else b"[" + prefix if prefix else b"-"
        high_key = prefix_end(prefix)
        high = b"+" if high_key is None else b"(" + high_key
        keys, more = await self._guard(
            self._list(keys=[base + b"i:" + bucket], args=[base + b"d:" + bucket + b":", low, high, limit])
        )
        return list(keys), bool(more)

    async def usage(self, tenant: str) -> Usage:
        """The tenant's live keys and bytes; sweeps its expired keys first so they never count.

        Raises:
            BackendUnavailable: as `get`.
        """
        base = self._base(tenant)
        _, keys, size = await self._script(self._usage, base, self._tenant_keys(base), [])
        return Usage(keys=int(keys), bytes=int(size))

    # -- writes ----------------------------------------------------------------------------------

    async def _write(self, script: AsyncScript, ns: Namespace, keys: Sequence[bytes], args: list[Any]) -> list[Any]:
        base = self._base(ns.tenant)
        op_key = base + b"o:" + os.urandom(12)
        try:
            return await self._script(script, base, [*self._tenant_keys(base), op_key], args)
        finally:
            # Even a write that timed out may have happened, so the cache forgets in every case.
            self._forget(ns, keys)

    @staticmethod
    def _raise_quota(quota: Quota, result: list[Any]) -> None:
        _, keys, size, add_keys, add_bytes = (int(n) for n in result)
        quota.check(Usage(keys=keys, bytes=size), add_keys, add_bytes)
        raise QuotaExceeded(
            f"quota exceeded: {keys} keys, {size} bytes in use and this write adds {add_keys}, {add_bytes}"
        )

    async def set(self, ns: Namespace, key: bytes, value: bytes, ttl_ms: int | None, quota: Quota) -> None:
        """Store a value, replacing any TTL with `ttl_ms`.

        Raises:
            QuotaExceeded: if the write would pass `max_keys` or `max_bytes`; nothing is written.
            BackendUnavailable: as `get`; the write may or may not have happened.
        """
        if ttl_ms is not None:
            self._ttl_tenants[ns.tenant] = self._ttl_tenants.get(ns.tenant, 0) + 1
        args = [ns.bucket, key, value, "" if ttl_ms is None else ttl_ms, quota.max_keys, quota.max_bytes]
        result = await self._write(self._set, ns, (key,), args)
        if result[0] == _QUOTA:
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
        result = await self._write(self._set_many, ns, list(final), args)
        if result[0] == _QUOTA:
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
        result = await self._write(self._delete_many, ns, unique, [ns.bucket, *unique])
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
        result = await self._write(self._increment, ns, (key,), args)
        code = result[0]
        if code == _OK:
            return int(result[1])
        if code == _NOT_A_NUMBER:
            parse_counter(bytes(result[1]))  # raises NotANumber with the local engine's words
            raise NotANumber(f"value is not a signed 64-bit decimal integer: {bytes(result[1])[:40]!r}")
        if code == _OVERFLOW:
            add_counter(parse_counter(bytes(result[1])), delta)  # raises IntegerOverflow likewise
        if code == _TOO_LARGE:
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
        result = await self._write(self._cas, ns, (key,), args)
        if result[0] == _QUOTA:
            self._raise_quota(quota, result)
        return bool(result[1])

    async def sweep(self, limit: int = _SWEEP_BATCH) -> int:
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
            _, count, left = await self._script(self._sweep, base, self._tenant_keys(base), [limit - removed])
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


def _parse_node(url: str, address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidArgument(f"malformed Redis Cluster URL {url!r}: expected host:port, got {address!r}")
    return host.strip("[]"), int(port)
