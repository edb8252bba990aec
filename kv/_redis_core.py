"""What both Redis engines share: the key layout, and every operation written once, without I/O.

`RedisStore` (`kv._redis`, on redis.asyncio) and `RedisSyncStore`
(`kv._redis_sync`, on redis-py's blocking clients) differ only in how they
send a call to Redis. So each operation is a generator here (`RedisCore`): it
yields each call to make (a `Call`: the key whose slot it goes to, and a
function of the client to send it with, which returns the reply, or with
redis.asyncio an awaitable of it), is sent the reply back, and returns the
operation's result. An engine drives it (`drive` or `RedisStore._run`),
choosing the client and bounding and translating each call at its edge.
Work that grows with the store (a SCAN of the keyspace, an UNLINK of what it
found) is a call per page, so an engine bounds and resends each page alone.
Both engines thus build the same keys, run the same scripts with the same
arguments and read the replies alike, so either reads what the other wrote.

Every write is one Lua script (EVALSHA, see `kv._redis_scripts`) that reads,
checks the tenant's quota, writes and updates the usage counters atomically on
the server, so quotas are exact however many hosts write at once. Reads are
plain commands.

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

A driver resends a call whose connection dropped (a failover, a topology
refresh closing busy connections) although the server may already have run
it; each write carries a random id and answers a resend from its record, so
increments, CAS and quotas stay exact through retries.

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

import math
import os
import re
import threading
from collections.abc import Callable, Generator, Sequence
from typing import Any, Final, Self, TypeVar

import redis
import redis.asyncio
import redis.exceptions

from . import _redis_scripts as lua
from ._errors import BackendUnavailable, InvalidArgument, NotANumber, ValueTooLarge
from ._protocol import ScanItem
from ._redis_client import Target, check_timeout, connect
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

__all__ = ["SCAN_COUNT", "STORE_FORMAT", "UNLINK_BATCH", "UPGRADE_BATCH", "Call", "Op", "RedisCore", "drive"]

#: The layout this code writes. 1: the first release; 2: adds the tenant, bucket and quota records.
STORE_FORMAT: Final = 2
#: How much longer than `timeout_s` a write's record (its exactly-once guard) stays on the server.
_OP_RECORD_MARGIN_MS: Final = 5000
#: Index keys a first-format upgrade counts (ZCARD) and records (SADD) per round trip, pipelined.
UPGRADE_BATCH: Final = 1000
#: Keys a SCAN examines per round trip (matching or not: a large keyspace is many pages), and an UNLINK removes
#: at once.
SCAN_COUNT: Final = 1000
UNLINK_BATCH: Final = 500
#: The clients of a cluster, either engine's: their SCAN goes to one node at a time.
_CLUSTER_CLIENTS: Final = (redis.RedisCluster, redis.asyncio.RedisCluster)

T = TypeVar("T")
#: One call to Redis: the key whose slot it goes to (None: any node, or all), and a function of the
#: client to send it with that returns the reply, or (redis.asyncio) an awaitable of it.
Call = tuple[bytes | None, Callable[[Any], Any]]
#: An operation: yields calls, is sent their replies, returns its result.
Op = Generator[Call, Any, T]
#: Picks one script of an engine's `Scripts`.
_Pick = Callable[[lua.Scripts[Any]], Any]


def drive(op: Op[T], send: Callable[[Call], Any]) -> T:
    """Run `op` to its result, making each call it yields with `send` (a blocking engine's edge)."""
    try:
        call = next(op)
        while True:
            call = op.send(send(call))
    except StopIteration as stop:
        result: T = stop.value
        return result
    finally:
        op.close()


class RedisCore:
    """The state and the operations of a Redis engine, with no I/O: see the module's docstring.

    A subclass sets `scripts` (registered on its client) before it drives an
    operation. Operations whose work grows with the store (a SCAN of the
    keyspace, an upgrade's batches, a sweep) make a call per page of it, and
    report each page done through `_progressed`.

    Raises:
        InvalidArgument: if `timeout_s` is out of range or `key_prefix` is not a valid name.
    """

    #: The scripts, registered on the engine's client.
    scripts: lua.Scripts[Any]

    def __init__(self, *, key_prefix: str, timeout_s: float, where: str) -> None:
        # A brace or colon in the prefix would move the hash tag or blur the layout; names are safe.
        check_name("key_prefix", key_prefix)
        self.key_prefix = key_prefix
        self.timeout_s = check_timeout(timeout_s)
        self.where = where
        # An operation's record must outlive every resend of it, which all happen within `timeout_s`.
        self.op_record_ttl_ms = math.ceil(self.timeout_s * 1000) + _OP_RECORD_MARGIN_MS
        # Tenants this store gave TTL'd keys, with a counter of those writes, for `sweep()`; the lock
        # keeps a count from being lost, or a tenant dropped as a write for it starts, between threads.
        self._ttl_tenants: dict[str, int] = {}
        self._ttl_lock = threading.Lock()
        # Tenants this store has recorded in the tenants set, so that each costs one SADD per store.
        self._known_tenants: set[str] = set()

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
    ) -> Self:
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
        target = connect(
            url, timeout_s=timeout_s, max_connections=max_connections, password=password, tls_ca_file=tls_ca_file
        )
        return cls._on(target, key_prefix=key_prefix, timeout_s=timeout_s)

    @classmethod
    def _on(cls, target: Target, *, key_prefix: str, timeout_s: float) -> Self:
        """A store on `target`, for `from_url`."""
        raise NotImplementedError

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

    # -- work that grows with the store: a call per page -----------------------------------------

    def _progressed(self) -> None:
        """A page of work that grows with the store is done, and more follows.

        The blocking engine restarts the deadline its store call shares (see
        `kv._redis_sync`); by default nothing: an engine that bounds each call on
        its own (`kv._redis`) already gives every page a whole bound.
        """

    def _unlink_within(self, base: bytes) -> Op[None]:
        """Unlink every key under `base` (a tenant's: they share a cluster slot), `UNLINK_BATCH` per call, as a
        SCAN finds them; only those, whatever the SCAN returns."""
        walk = _ScanWalk(base + b"*", self._progressed, self.where)
        batch: list[bytes] = []
        while not walk.done:
            for key in (yield from walk.page()):
                if not key.startswith(base):
                    continue  # not what the pattern matches: a server that is not Redis
                batch.append(key)
                if len(batch) == UNLINK_BATCH:
                    yield _command("unlink", *batch)
                    batch = []
                    self._progressed()
        if batch:
            yield _command("unlink", *batch)

    # -- the store format ------------------------------------------------------------------------

    def _check_format(self) -> Op[None]:
        """Record the store format, upgrading a first-format store in place; refuse a newer one."""
        format_key = self._format_key()
        raw = yield format_key, lambda c: c.get(format_key)
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
        # The glob matches more than index keys (a data key may hold "}:i:", and a server that is not Redis may
        # answer anything): only keys of an index key's exact shape are taken, tenant and bucket valid names.
        index_key = re.compile(
            re.escape(self.key_prefix.encode()) + rb":\{([A-Za-z0-9_-]{1,64})\}:i:([A-Za-z0-9_-]{1,64})"
        )
        walk = _ScanWalk(f"{self.key_prefix}:{{*}}:i:*".encode(), self._progressed, self.where)
        while not walk.done:
            # Page by page (memory: a page), a batch of keys per round trip, not a round trip per key: a store
            # of many buckets upgrades in as many round trips as it has batches.
            matched = [match for key in (yield from walk.page()) if (match := index_key.fullmatch(key))]
            for start in range(0, len(matched), UPGRADE_BATCH):
                batch = matched[start : start + UPGRADE_BATCH]
                counts = yield _pipelined([("zcard", match[0]) for match in batch])
                records: list[tuple[Any, ...]] = []
                for match, count in zip(batch, counts, strict=True):
                    if count:
                        tenant, bucket = match[1].decode(), match[2]
                        records += [("sadd", self._base(tenant) + b"b", bucket), ("sadd", self._tenants_key(), tenant)]
                if records:
                    yield _pipelined(records)
                if start + UPGRADE_BATCH < len(matched):
                    self._progressed()
        yield format_key, lambda c: c.set(format_key, str(STORE_FORMAT), nx=True)

    # -- reads ---------------------------------------------------------------------------------

    def _get(self, ns: Namespace, key: bytes) -> Op[bytes | None]:
        # The client never decodes responses, so strings come back as bytes.
        value: bytes | None = yield _command("get", self._data(ns, key))
        return value

    def _get_many(self, ns: Namespace, keys: Sequence[bytes]) -> Op[list[bytes | None]]:
        # One MGET: a tenant's keys share a slot.
        if not keys:
            return []
        names = [self._data(ns, key) for key in keys]
        values: list[bytes | None] = yield names[0], lambda c: c.mget(names)
        return values

    def _exists(self, ns: Namespace, key: bytes) -> Op[bool]:
        return bool((yield _command("exists", self._data(ns, key))))

    def _ttl(self, ns: Namespace, key: bytes) -> Op[int | None]:
        left = int((yield _command("pttl", self._data(ns, key))))
        return _time_left(left)

    def _range(
        self, ns: Namespace, key_range: KeyRange, after: bytes | None, limit: int, max_bytes: int | None
    ) -> Op[tuple[list[Any], bool]]:
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
        args += [int(max_bytes is not None), max_bytes or 0]
        index = base + b"i:" + bucket
        out, more = yield index, lambda c: self.scripts.range(keys=[index], args=args, client=c)
        return list(out), bool(more)

    def _list_keys(
        self, ns: Namespace, key_range: KeyRange, after: bytes | None, limit: int
    ) -> Op[tuple[list[bytes], bool]]:
        keys, more = yield from self._range(ns, key_range, after, limit, None)
        return [bytes(key) for key in keys], more

    def _scan(
        self, ns: Namespace, key_range: KeyRange, after: bytes | None, limit: int, max_bytes: int
    ) -> Op[tuple[list[ScanItem], bool]]:
        flat, more = yield from self._range(ns, key_range, after, limit, max_bytes)
        items: list[ScanItem] = [
            (bytes(flat[i]), bytes(flat[i + 1]), _time_left(int(flat[i + 2]))) for i in range(0, len(flat), 3)
        ]
        return items, more

    def _usage(self, tenant: str) -> Op[Usage]:
        # The script sweeps the tenant's expired keys first, so they never count.
        _, keys, size = yield from self._tenant_script(lambda s: s.usage, tenant, [])
        return Usage(keys=int(keys), bytes=int(size))

    def _tenants(self) -> Op[list[str]]:
        names = yield _command("smembers", self._tenants_key())
        return [bytes(name).decode() for name in sorted(names)]

    def _buckets(self, tenant: str) -> Op[list[str]]:
        names = yield _command("smembers", self._base(tenant) + b"b")
        return [bytes(name).decode() for name in sorted(names)]

    def _tenant_quota(self, tenant: str) -> Op[Quota | None]:
        record = yield _command("get", self._base(tenant) + b"q")
        return None if record is None else Quota.from_record(record)

    # -- tenant records --------------------------------------------------------------------------

    def _put_tenant_quota(self, tenant: str, quota: Quota, only_if_absent: bool) -> Op[Quota]:
        key = self._base(tenant) + b"q"
        stored = yield key, lambda c: c.set(key, quota.to_record(), nx=only_if_absent)
        yield _command("sadd", self._tenants_key(), tenant)
        self._known_tenants.add(tenant)
        if stored:
            return quota
        existing = yield from self._tenant_quota(tenant)
        return quota if existing is None else existing

    def _delete_tenant(self, tenant: str) -> Op[int]:
        # Not atomic: a write the tenant makes meanwhile may survive it. All the tenant's keys share
        # one slot, so each batch is one multi-key UNLINK. The count is the tenant's own, read first: one
        # taken from the walk would count a key SCAN returns twice (while Redis rehashes) twice, and one from
        # the UNLINKs' replies nothing for a batch whose reply was lost and was resent.
        removed = (yield from self._usage(tenant)).keys
        yield from self._unlink_within(self._base(tenant))
        yield _command("srem", self._tenants_key(), tenant)
        self._known_tenants.discard(tenant)
        with self._ttl_lock:
            self._ttl_tenants.pop(tenant, None)
        return removed

    # -- writes ----------------------------------------------------------------------------------

    def _tenant_script(self, pick: _Pick, tenant: str, args: list[Any], op_key: bytes | None = None) -> Op[list[Any]]:
        base = self._base(tenant)
        keys = self._tenant_keys(base) + ([] if op_key is None else [op_key])
        result: list[Any] = yield keys[0], lambda c: pick(self.scripts)(keys=keys, args=[base, *args], client=c)
        return result

    def _write(self, pick: _Pick, ns: Namespace, args: list[Any]) -> Op[list[Any]]:
        if ns.tenant not in self._known_tenants:
            yield _command("sadd", self._tenants_key(), ns.tenant)
            self._known_tenants.add(ns.tenant)
        # The same id on every resend of this call: the script answers a resend from its record.
        op_key = self._base(ns.tenant) + b"o:" + os.urandom(12)
        return (yield from self._tenant_script(pick, ns.tenant, args, op_key))

    def _set(self, ns: Namespace, key: bytes, value: bytes, ttl_ms: int | None, quota: Quota) -> Op[None]:
        if ttl_ms is not None:
            with self._ttl_lock:
                self._ttl_tenants[ns.tenant] = self._ttl_tenants.get(ns.tenant, 0) + 1
        args = [ns.bucket, key, value, "" if ttl_ms is None else ttl_ms, quota.max_keys, quota.max_bytes]
        result = yield from self._write(lambda s: s.set, ns, args)
        if result[0] == lua.QUOTA:
            _raise_quota(quota, result)

    def _set_many(self, ns: Namespace, items: Sequence[tuple[bytes, bytes]], quota: Quota) -> Op[None]:
        # A key named twice takes its last value, as successive sets would.
        final = dict(items)
        if not final:
            return
        args: list[Any] = [ns.bucket, quota.max_keys, quota.max_bytes]
        for key, value in final.items():
            args += (key, value)
        result = yield from self._write(lambda s: s.set_many, ns, args)
        if result[0] == lua.QUOTA:
            _raise_quota(quota, result)

    def _delete_many(self, ns: Namespace, keys: Sequence[bytes]) -> Op[int]:
        unique = list(dict.fromkeys(keys))
        if not unique:
            return 0
        result = yield from self._write(lambda s: s.delete_many, ns, [ns.bucket, *unique])
        return int(result[1])

    def _increment(self, ns: Namespace, key: bytes, delta: int, quota: Quota) -> Op[int]:
        args = [ns.bucket, key, delta, quota.max_keys, quota.max_bytes, quota.max_value_bytes]
        result = yield from self._write(lambda s: s.increment, ns, args)
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
        _raise_quota(quota, result)
        raise AssertionError("unreachable")  # pragma: no cover

    def _compare_and_swap(
        self, ns: Namespace, key: bytes, expected: bytes | None, new: bytes, quota: Quota
    ) -> Op[bool]:
        flag, wanted = ("0", b"") if expected is None else ("1", expected)
        args = [ns.bucket, key, flag, wanted, new, quota.max_keys, quota.max_bytes]
        result = yield from self._write(lambda s: s.compare_and_swap, ns, args)
        if result[0] == lua.QUOTA:
            _raise_quota(quota, result)
        return bool(result[1])

    def _sweep(self, limit: int) -> Op[int]:
        removed = 0
        with self._ttl_lock:
            due = list(self._ttl_tenants.items())
        for tenant, writes in due:
            _, count, left = yield from self._tenant_script(lambda s: s.sweep, tenant, [limit - removed])
            removed += int(count)
            # Forget the tenant only if no TTL write for it started meanwhile.
            with self._ttl_lock:
                if not left and self._ttl_tenants.get(tenant) == writes:
                    del self._ttl_tenants[tenant]
            if removed >= limit:
                break
            self._progressed()
        return removed


class _ScanWalk:
    """A SCAN of the keys matching a pattern, walked a page (a call) at a time: node by node on a cluster.

    Each page is a call of its own, so an engine bounds, and resends, each page
    alone: a page resent after a dropped connection goes again from its own
    cursor, not from the first page. The walk moves on only when it reads a
    reply. A page that leaves more pages (on this node or the next) is reported
    to `progressed`.

    The nodes are taken from the client by the first page's call, not as the
    walk is made: an operation runs up to its first call before the engine has
    its client ready (`RedisSyncStore` builds its client then, `RedisStore`
    loads a cluster's slot map). They are kept for the rest of the walk: a
    cursor is one node's, and a resent page must go to the node it pages.
    """

    def __init__(self, pattern: bytes, progressed: Callable[[], None], where: str) -> None:
        self.pattern = pattern
        self._progressed = progressed
        self._where = where
        # A cluster's primaries, or [None] on one node (no target); None until the first page's call.
        self._nodes: list[Any] | None = None
        self._node = 0  # the index in `_nodes` of the node being scanned
        self._cursor = 0

    @property
    def done(self) -> bool:
        """Whether the SCAN of every node has come back to cursor 0."""
        return self._nodes is not None and self._node == len(self._nodes)

    def page(self) -> Op[list[bytes]]:
        """The next page's keys (one call); the walk then stands past it."""
        reply = yield None, self._scan
        assert self._nodes is not None  # taken by the call just made
        node = self._nodes[self._node]
        # One node's SCAN answers (cursor, keys); a cluster's, of one node, ({node name: cursor}, keys). The
        # driver checks neither shape: a server that is not Redis must fail the call in one line, not with
        # a TypeError from here, nor page for ever.
        try:
            cursor = reply[0] if node is None else reply[0][node.name]
            keys: list[bytes] = reply[1]  # bytes: the clients never decode
            readable = (
                type(cursor) is int and cursor >= 0 and type(keys) is list and all(type(k) is bytes for k in keys)
            )
        except (TypeError, KeyError, IndexError):
            readable = False
        if not readable:
            raise BackendUnavailable(f"{self._where} answered a SCAN in a way that cannot be read: {reply!r:.200}")
        if cursor:
            self._cursor = cursor
        else:
            self._node += 1
            self._cursor = 0
        if not self.done:
            self._progressed()
        return keys

    def _scan(self, client: Any) -> Any:
        """The current page's SCAN on `client`: the reply, or (redis.asyncio) an awaitable of it."""
        if self._nodes is None:
            # Through the cluster client, node by node, which refreshes its map if a node fails meanwhile.
            self._nodes = list(client.get_primaries()) if isinstance(client, _CLUSTER_CLIENTS) else [None]
            if not self._nodes:
                # Scanning no node would find no keys, and an upgrade would record an empty store as done.
                raise redis.exceptions.RedisClusterException("the cluster client knows no primary node to scan")
        node = self._nodes[self._node]
        if node is None:
            return client.scan(self._cursor, match=self.pattern, count=SCAN_COUNT)
        return client.scan(self._cursor, match=self.pattern, count=SCAN_COUNT, target_nodes=node)


def _command(name: str, key: bytes, *args: Any) -> Call:
    """A call of the client's command method `name` on `key` (and `args`), sent to `key`'s slot."""
    return key, lambda client: getattr(client, name)(key, *args)


def _pipelined(commands: Sequence[tuple[Any, ...]]) -> Call:
    """A call of the client's commands (a name and its arguments each) in one pipeline, replies in order.

    Not a transaction: on a cluster the client sends each node its share.
    """

    def send(client: Any) -> Any:
        pipe = client.pipeline(transaction=False)
        for name, *args in commands:
            getattr(pipe, name)(*args)
        return pipe.execute()  # the replies, or (redis.asyncio) an awaitable of them

    return None, send


def _time_left(pttl: int) -> int | None:
    # A native expiry is the key's last live millisecond: the time left is one more than PTTL says.
    return None if pttl < 0 else pttl + 1


def _raise_quota(quota: Quota, result: list[Any]) -> None:
    _, keys, size, add_keys, add_bytes = (int(n) for n in result)
    # The script judged these same figures, so the check raises; the line after it is a backstop.
    quota.check(Usage(keys=keys, bytes=size), add_keys, add_bytes)
    raise quota_exceeded("max_keys", quota.max_keys, keys, add_keys)
