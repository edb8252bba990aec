"""The Lua scripts of the Redis engine, and the result codes they return.

Every write is one script (EVALSHA) that reads, checks the tenant's quota,
writes and updates the usage counters atomically on the server. Both engines
(`kv._redis.RedisStore` on redis.asyncio, `kv._redis_sync.RedisSyncStore` on
redis-py's blocking clients) register these same texts with `register`, so
they write identical data; nothing else here runs.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Final, Generic, TypeVar

__all__ = ["NOT_A_NUMBER", "OK", "OVERFLOW", "QUOTA", "TOO_LARGE", "Scripts", "register"]

# Script result codes; the engine turns them into the same errors, with the same words, as the local engine.
OK: Final = 0
QUOTA: Final = 1
NOT_A_NUMBER: Final = 2
OVERFLOW: Final = 3
TOO_LARGE: Final = 4

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
  redis.call('SADD', base .. 'b', bucket)
end

-- Drop `key` from its bucket's index, and the bucket from the tenant's list once it is empty.
local function unindex(bucket, key)
  local index = base .. 'i:' .. bucket
  redis.call('ZREM', index, key)
  if redis.call('ZCARD', index) == 0 then redis.call('SREM', base .. 'b', bucket) end
end

local function remove(bucket, key, member)
  local size, live = stored(member)
  if size == nil then return false end
  redis.call('DEL', base .. 'd:' .. member)
  unindex(bucket, key)
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
    unindex(bucket, key)
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

# A read: no preamble, and one snapshot (a script runs alone). KEYS[1]: the bucket's index; ARGV: data
# key prefix "P:{T}:d:B:", low and high lex bounds, limit, reverse ('1'/'0'), values ('1': scan, '0': list),
# max_bytes (scans). Stored keys are in the index until swept, so expired ones are skipped by asking Redis
# whether the value lives. Returns {keys, more} for a listing, {{key, value, pttl, ...}, more} for a scan.
_RANGE = r"""
local data, low, high, limit = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local reverse, values, max_bytes = ARGV[5] == '1', ARGV[6] == '1', tonumber(ARGV[7])
local batch = limit + 1
local out, count, size = {}, 0, 0
while true do
  local keys
  if reverse then
    keys = redis.call('ZREVRANGEBYLEX', KEYS[1], high, low, 'LIMIT', 0, batch)
  else
    keys = redis.call('ZRANGEBYLEX', KEYS[1], low, high, 'LIMIT', 0, batch)
  end
  for _, key in ipairs(keys) do
    if values then
      local value = redis.call('GET', data .. key)
      if value then
        if count == limit then return {out, 1} end
        size = size + #key + #value
        if count > 0 and size > max_bytes then return {out, 1} end
        count = count + 1
        out[#out + 1] = key
        out[#out + 1] = value
        out[#out + 1] = redis.call('PTTL', data .. key)
      end
    elseif redis.call('EXISTS', data .. key) == 1 then
      if count == limit then return {out, 1} end
      count = count + 1
      out[#out + 1] = key
    end
  end
  if #keys < batch then return {out, 0} end
  if reverse then high = '(' .. keys[#keys] else low = '(' .. keys[#keys] end
end
"""


#: redis-py's `Script` (blocking client) or `AsyncScript` (redis.asyncio).
S = TypeVar("S")


@dataclasses.dataclass(frozen=True, slots=True)
class Scripts(Generic[S]):
    """The engine's scripts, registered on one client."""

    set: S
    set_many: S
    delete_many: S
    increment: S
    compare_and_swap: S
    usage: S
    sweep: S
    range: S


def register(client: Any, op_record_ttl_ms: int) -> Scripts[Any]:
    """Register every script on `client`; a write's exactly-once record lives `op_record_ttl_ms`."""
    preamble = _PREAMBLE.replace("OP_RECORD_TTL_MS", str(op_record_ttl_ms))
    script = client.register_script
    return Scripts(
        set=script(preamble + _SET),
        set_many=script(preamble + _SET_MANY),
        delete_many=script(preamble + _DELETE_MANY),
        increment=script(preamble + _INCREMENT),
        compare_and_swap=script(preamble + _COMPARE_AND_SWAP),
        usage=script(preamble + _USAGE),
        sweep=script(preamble + _SWEEP),
        range=script(_RANGE),
    )
