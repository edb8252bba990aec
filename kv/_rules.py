"""The store's rules that do no I/O: names, keys, values, TTLs, counters, cursors, quotas.

Every engine (local or clustered) shares these, so they are written once here
and the engines only move bytes.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import math
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Sized
from itertools import islice
from typing import Any, Final, cast

import msgpack

from ..abi import BATCH_MAX_ITEMS, LIST_MAX_LIMIT
from ._errors import (
    BackendUnavailable,
    IntegerOverflow,
    InvalidArgument,
    InvalidKey,
    KvError,
    NotANumber,
    QuotaExceeded,
    RateLimited,
    ValueTooLarge,
)

DEFAULT_MAX_KEYS: Final = 10_000
DEFAULT_MAX_BYTES: Final = 64 * 1024 * 1024
DEFAULT_MAX_VALUE_BYTES: Final = 1024 * 1024
DEFAULT_MAX_KEY_BYTES: Final = 512
#: The most `Quota.max_key_bytes` may be: LMDB stores a long key's tail with a 2-byte length.
MAX_KEY_BYTES_CEILING: Final = 65_535
DEFAULT_LIST_LIMIT: Final = 100
#: How often the background sweeper reclaims the space of expired keys.
DEFAULT_SWEEP_INTERVAL_S: Final = 1.0
#: Every key a Redis store writes starts with this, so a Redis shared with other data stays apart.
DEFAULT_KEY_PREFIX: Final = "wkv"
#: The most one Redis operation (retries across a failover included) may take before `BackendUnavailable`.
DEFAULT_REDIS_TIMEOUT_S: Final = 2.0
#: Connections a Redis client keeps open per node.
DEFAULT_REDIS_MAX_CONNECTIONS: Final = 100
#: Staleness bound of the optional read cache.
DEFAULT_READ_CACHE_MS: Final = 50
#: TTLs are capped so that deadlines stay far inside a signed 64-bit millisecond clock.
MAX_TTL_MS: Final = 100 * 365 * 24 * 3600 * 1000
MAX_NAME_CHARS: Final = 64
I64_MIN: Final = -(2**63)
I64_MAX: Final = 2**63 - 1

Clock = Callable[[], float]
"""A clock returns seconds since the epoch as a float, like `time.time`."""

_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
_BAD_KEY_BYTE = re.compile(rb"[\x00-\x1f\x7f]")
_COUNTER = re.compile(rb"-?[0-9]{1,19}\Z")
#: Cursors of version 1 named only the prefix; version 2 names the whole listing (see `KeyRange`).
_CURSOR_V1: Final = 1
_CURSOR_VERSION: Final = 2
_URLSAFE: Final = bytes.maketrans(b"+/", b"-_")
#: The most key and value bytes one scan page carries (a first pair larger than this comes alone).
SCAN_PAGE_MAX_BYTES: Final = 1024 * 1024


@dataclasses.dataclass(frozen=True, slots=True)
class Quota:
    """Limits on one tenant, across all its buckets.

    Bytes are counted as key bytes plus value bytes. `ops_per_second=None`
    means no rate limit.
    """

    max_keys: int = DEFAULT_MAX_KEYS
    max_bytes: int = DEFAULT_MAX_BYTES
    max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES
    max_key_bytes: int = DEFAULT_MAX_KEY_BYTES
    ops_per_second: float | None = None

    def __post_init__(self) -> None:
        for field in ("max_keys", "max_bytes", "max_value_bytes", "max_key_bytes"):
            value = getattr(self, field)
            if type(value) is not int or value < 1:
                raise InvalidArgument(f"Quota.{field} must be a positive int, got {value!r}")
        if self.max_key_bytes > MAX_KEY_BYTES_CEILING:
            raise InvalidArgument(f"Quota.max_key_bytes is at most {MAX_KEY_BYTES_CEILING}, got {self.max_key_bytes}")
        ops = self.ops_per_second
        if ops is not None and (
            isinstance(ops, bool) or not isinstance(ops, int | float) or not math.isfinite(ops) or ops <= 0
        ):
            raise InvalidArgument(f"Quota.ops_per_second must be a positive number or None, got {ops!r}")

    def check(self, usage: Usage, add_keys: int, add_bytes: int) -> None:
        """Check that growing `usage` by `add_keys` keys and `add_bytes` bytes stays in the quota.

        Shrinking is always allowed, so an overwrite that does not grow usage
        succeeds even at the limit.

        Raises:
            QuotaExceeded: if a growing dimension would end past its limit.
        """
        if add_keys > 0 and usage.keys + add_keys > self.max_keys:
            raise quota_exceeded("max_keys", self.max_keys, usage.keys, add_keys)
        if add_bytes > 0 and usage.bytes + add_bytes > self.max_bytes:
            raise quota_exceeded("max_bytes", self.max_bytes, usage.bytes, add_bytes)

    def to_record(self) -> bytes:
        """The quota as engines store it with the tenant: a msgpack map of its fields."""
        return msgpack.packb(dataclasses.asdict(self))

    @classmethod
    def from_record(cls, record: bytes) -> Quota:
        """A quota stored with `to_record`; a field it lacks (a newer wasmkv may add some) takes its default.

        Raises:
            BackendUnavailable: if the record is not one `to_record` wrote (the store is damaged).
        """
        try:
            fields = msgpack.unpackb(record)
            known = {field.name for field in dataclasses.fields(cls)}
            kept = {name: value for name, value in fields.items() if name in known}
            # Stored before the ceiling existed: no longer key could have been stored on LMDB anyway.
            if type(kept.get("max_key_bytes")) is int and kept["max_key_bytes"] > MAX_KEY_BYTES_CEILING:
                kept["max_key_bytes"] = MAX_KEY_BYTES_CEILING
            return cls(**kept)
        except (ValueError, TypeError, AttributeError, KvError) as exc:
            raise BackendUnavailable(f"a stored tenant record is damaged: {exc}") from None

    def differences(self, other: Quota) -> dict[str, tuple[object, object]]:
        """The fields where `other` differs: name -> (this quota's value, the other's)."""
        return {
            field.name: (getattr(self, field.name), getattr(other, field.name))
            for field in dataclasses.fields(self)
            if getattr(self, field.name) != getattr(other, field.name)
        }


def quota_exceeded(field: str, limit: int, used: int, adds: object, *, what: str = "this write") -> QuotaExceeded:
    """The error for `what` taking quota `field` past `limit`: one wording for every engine, write and import."""
    return QuotaExceeded(f"quota exceeded: {field} is {limit}, {used} in use and {what} adds {adds}")


def values_too_heavy(max_bytes: int) -> ValueTooLarge:
    """The error for a `get_many` whose values weigh more than its `max_bytes`, on every engine."""
    return ValueTooLarge(f"the values asked for weigh more than max_bytes={max_bytes} together: ask for fewer keys")


@dataclasses.dataclass(frozen=True, slots=True)
class Usage:
    """What a tenant holds now: live keys and their key + value bytes."""

    keys: int = 0
    bytes: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class Namespace:
    """A tenant's bucket: the unit of isolation every engine keys its data by.

    `prefix` is the tenant and bucket joined with NUL bytes. Neither name may
    contain NUL and no key may either, so no key can reach another namespace.
    """

    tenant: str
    bucket: str
    prefix: bytes = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_name("tenant", self.tenant)
        check_name("bucket", self.bucket)
        object.__setattr__(self, "prefix", f"{self.tenant}\0{self.bucket}\0".encode())


# Every listing builds a `KeyRange` and a page: their `__init__`s set the fields through the slots'
# descriptors, as a frozen dataclass's own does through `object.__setattr__`, at about twice the speed.


@dataclasses.dataclass(frozen=True, slots=True)
class KeyPage:
    """One page of `list_keys`: the keys in byte order, and the cursor for the next page (None at the end)."""

    keys: list[str]
    cursor: str | None

    def __init__(self, keys: list[str], cursor: str | None) -> None:
        set_keys, set_cursor = _KEY_PAGE_SLOTS
        set_keys(self, keys)
        set_cursor(self, cursor)


@dataclasses.dataclass(frozen=True, slots=True)
class ScanPage:
    """One page of `scan`: (key, value) pairs in key order, and the cursor for the next page (None at the end)."""

    items: list[tuple[str, bytes]]
    cursor: str | None

    def __init__(self, items: list[tuple[str, bytes]], cursor: str | None) -> None:
        set_items, set_cursor = _SCAN_PAGE_SLOTS
        set_items(self, items)
        set_cursor(self, cursor)


@dataclasses.dataclass(frozen=True, slots=True)
class KeyRange:
    """Which keys a listing covers, as UTF-8 bytes: those starting with `prefix`, from `start` (inclusive)
    up to `end` (exclusive), in byte order, or in reverse.

    Engines read it through `low` and `high`, the bounds the prefix and the range leave.
    """

    prefix: bytes = b""
    start: bytes | None = None
    end: bytes | None = None
    reverse: bool = False
    #: The smallest key the range can hold (inclusive).
    low: bytes = dataclasses.field(init=False, repr=False, compare=False)
    #: The bound every key of the range is below (exclusive); None if there is none.
    high: bytes | None = dataclasses.field(init=False, repr=False, compare=False)

    def __init__(
        self, prefix: bytes = b"", start: bytes | None = None, end: bytes | None = None, reverse: bool = False
    ) -> None:
        # `low` and `high` computed once: listings read them on every page.
        low = prefix if start is None or start < prefix else start
        high = prefix_end(prefix)
        if end is not None and (high is None or end < high):
            high = end
        set_prefix, set_start, set_end, set_reverse, set_low, set_high = _KEY_RANGE_SLOTS
        set_prefix(self, prefix)
        set_start(self, start)
        set_end(self, end)
        set_reverse(self, reverse)
        set_low(self, low)
        set_high(self, high)

    def empty(self) -> bool:
        """Whether no key can be in the range."""
        high = self.high
        return high is not None and high <= self.low

    def holds(self, key: bytes) -> bool:
        """Whether `key` is in the range."""
        high = self.high
        return key >= self.low and (high is None or key < high)


def _slot_setters(cls: type, *names: str) -> tuple[Callable[[object, Any], None], ...]:
    return tuple(getattr(cls, name).__set__ for name in names)


_KEY_PAGE_SLOTS: Final = _slot_setters(KeyPage, "keys", "cursor")
_SCAN_PAGE_SLOTS: Final = _slot_setters(ScanPage, "items", "cursor")
_KEY_RANGE_SLOTS: Final = _slot_setters(KeyRange, "prefix", "start", "end", "reverse", "low", "high")


def check_name(kind: str, name: object) -> str:
    """Return `name` if it is a valid tenant or bucket name.

    Raises:
        InvalidArgument: unless it is 1-64 characters of `[A-Za-z0-9_-]`.
    """
    if type(name) is not str or _NAME.match(name) is None:
        raise InvalidArgument(f"{kind} name must be 1-{MAX_NAME_CHARS} characters of [A-Za-z0-9_-], got {name!r}")
    return name


def encode_key(key: object, max_key_bytes: int, *, what: str = "key", allow_empty: bool = False) -> bytes:
    """Validate a key (a str, or its UTF-8 bytes as plugins pass it) and return its UTF-8 bytes.

    Raises:
        InvalidKey: if `key` is neither, is empty, is longer than
            `max_key_bytes` in UTF-8, is not valid UTF-8 (lone surrogates
            included), or contains a control character (U+0000-U+001F, U+007F).
    """
    # Fast path for the common key: printable ASCII (no control characters) within the limit.
    if type(key) is str and key.isascii() and key.isprintable() and 0 < len(key) <= max_key_bytes:
        return key.encode("ascii")
    if type(key) is bytes and key.isascii() and 0 < len(key) <= max_key_bytes and key.decode("ascii").isprintable():
        return key
    if allow_empty and key in ("", b""):  # the whole-bucket prefix of listings
        return b""
    if type(key) is str:
        try:
            raw = key.encode()
        except UnicodeEncodeError:
            raise InvalidKey(f"{what} is not valid UTF-8 (lone surrogate): {key!r}") from None
        return check_key_bytes(raw, max_key_bytes, what=what, allow_empty=allow_empty)
    if type(key) is bytes:
        decode_key(key, max_key_bytes, what=what, allow_empty=allow_empty)
        return key
    raise InvalidKey(f"{what} must be str (or its UTF-8 bytes), got {type(key).__name__}")


def check_key_bytes(raw: bytes, max_key_bytes: int, *, what: str = "key", allow_empty: bool = False) -> bytes:
    """Check the length and characters of a key (or prefix) in UTF-8 bytes; return it.

    Raises:
        InvalidKey: if empty (unless `allow_empty`), over `max_key_bytes`, or holding a control character.
    """
    if not raw and not allow_empty:
        raise InvalidKey(f"{what} must not be empty")
    if len(raw) > max_key_bytes:
        raise InvalidKey(f"{what} is {len(raw)} bytes, over max_key_bytes {max_key_bytes}")
    if _BAD_KEY_BYTE.search(raw) is not None:
        raise InvalidKey(f"{what} contains a control character (U+0000-U+001F or U+007F): {raw!r}")
    return raw


def decode_key(raw: bytes, max_key_bytes: int, *, what: str = "key", allow_empty: bool = False) -> str:
    """Validate a key given as UTF-8 bytes (from a plugin) and return it as str.

    Raises:
        InvalidKey: if the bytes are not UTF-8, or as `encode_key`.
    """
    check_key_bytes(raw, max_key_bytes, what=what, allow_empty=allow_empty)
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise InvalidKey(f"{what} is not valid UTF-8: {raw!r}") from None


def check_value(value: object, max_value_bytes: int) -> bytes:
    """Return `value` as bytes if it is bytes-like and within `max_value_bytes`.

    Raises:
        InvalidArgument: if it is not bytes, bytearray or memoryview.
        ValueTooLarge: if it is longer than `max_value_bytes`.
    """
    if type(value) is not bytes:
        if not isinstance(value, bytes | bytearray | memoryview):
            raise InvalidArgument(f"value must be bytes, got {type(value).__name__}")
        value = bytes(value)
    if len(value) > max_value_bytes:
        raise ValueTooLarge(f"value is {len(value)} bytes, over max_value_bytes {max_value_bytes}")
    return value


def check_ttl_ms(ttl_ms: object) -> int:
    """Return `ttl_ms` if it is an int in 1..`MAX_TTL_MS`.

    Raises:
        InvalidArgument: otherwise.
    """
    if type(ttl_ms) is not int or not 0 < ttl_ms <= MAX_TTL_MS:
        raise InvalidArgument(f"ttl_ms must be an int in 1..{MAX_TTL_MS}, got {ttl_ms!r}")
    return ttl_ms


def _url_secrets(url: str) -> tuple[str, list[str]]:
    """`url` with its password hidden, and every text that may be (part of) that password, longest first.

    The user part is taken to end at the URL's last `@` (a password with a raw
    `/`, `?` or `#` is then hidden whole, at the cost of hiding more than it when
    a later part holds an `@`), and also as a URL parser reads it. A `password`
    option (its name percent-decoded, any case) hides all that follows its `=`:
    a raw `&` or `#` in the value is not taken for its end.
    """
    secrets: list[str] = []
    scheme, sep, rest = url.partition(":")
    # A password option first, on the URL as it is: the user part below may reach into the query.
    query_at = rest.find("?")
    if query_at >= 0:
        offset = query_at + 1
        for option in rest[offset:].split("&"):
            name, equals, _ = option.partition("=")
            if equals and urllib.parse.unquote_plus(name).strip().lower() == "password":
                secrets.append(rest[offset + len(name) + 1 :])
                rest = rest[: offset + len(name) + 1] + "***"
                break
            offset += len(option) + 1
    slashes = len(rest) - len(rest.lstrip("/"))
    lead, rest = rest[:slashes], rest[slashes:]
    user, at, after = rest.rpartition("@")
    if at and ":" in user:
        secrets.append(user.partition(":")[2])
        rest = f"{user.partition(':')[0]}:***@{after}"
    # As a URL parser reads the user part: up to the first `/`, `?` or `#` (a Redis URL cut there is refused
    # before any parser quotes it, but other messages may still quote the URL as it reads it).
    credentials = url.partition("://")[2].split("/")[0].split("?")[0].split("#")[0].rpartition("@")[0]
    if ":" in credentials:
        secrets.append(credentials.partition(":")[2])
    # And each as repr() shows it. (No pieces of them: a Redis URL whose password a parser could cut, with an
    # `@` after its host or a space, is refused before any parser reads it, and an option after a password
    # option is never quoted; hiding pieces hid common words of every message.)
    every = {text for text in secrets if text}
    every |= {repr(text)[1:-1] for text in every}
    return f"{scheme}{sep}{lead}{rest}", sorted(every, key=len, reverse=True)


def shown_url(url: str) -> str:
    """`url` as a message may show it: its password, in its user part or a `password=` option, as `***`.

    Messages reach terminals and logs; the password must not.
    """
    return _url_secrets(url)[0]


def scrubbed(text: str, url: str) -> str:
    """`text` (a message about `url`, perhaps quoting a parser's error) with `url`, and any part of its password,
    shown as `shown_url` shows them."""
    shown, secrets = _url_secrets(url)
    # The URL, shown as `shown_url` shows it, is left as it is (a password "redis" must not hide its scheme);
    # the rest of the text is scrubbed.
    parts = text.replace(url, shown).split(shown)
    for secret in secrets:
        # Where it stands alone, not inside every word that holds its letters (a password "timeout" must not
        # hide "timeout_s"); a parser quoting a password quotes it whole, between delimiters.
        alone = re.compile(rf"(?<![A-Za-z0-9_]){re.escape(secret)}(?![A-Za-z0-9_])")
        parts = [alone.sub("***", part) for part in parts]
    return shown.join(parts)


def check_limit(limit: object) -> int:
    """Return a `list_keys` page size if it is an int in 1..1000.

    Raises:
        InvalidArgument: otherwise.
    """
    if type(limit) is not int or not 1 <= limit <= LIST_MAX_LIMIT:
        raise InvalidArgument(f"limit must be an int in 1..{LIST_MAX_LIMIT}, got {limit!r}")
    return limit


def check_delta(delta: object) -> int:
    """Return an `increment` delta if it is a signed 64-bit int.

    Raises:
        InvalidArgument: otherwise.
    """
    if type(delta) is not int or not I64_MIN <= delta <= I64_MAX:
        raise InvalidArgument(f"delta must be an int in the signed 64-bit range, got {delta!r}")
    return delta


def check_batch_size(count: int) -> None:
    """Check the number of items in one batch request.

    Raises:
        InvalidArgument: if over `abi.BATCH_MAX_ITEMS`.
    """
    if count > BATCH_MAX_ITEMS:
        raise InvalidArgument(f"a batch holds at most {BATCH_MAX_ITEMS} items, got {count}")


def batch_items(items: object, what: str) -> list[Any]:
    """The items of one batch request as a list, read no further than one past `abi.BATCH_MAX_ITEMS`.

    Raises:
        InvalidArgument: if `items` is not iterable, or holds more than `abi.BATCH_MAX_ITEMS`.
    """
    if isinstance(items, Sized):
        check_batch_size(len(items))
    try:
        # An endless iterator stops here, one item past the limit.
        found = list(islice(cast(Iterable[Any], items), BATCH_MAX_ITEMS + 1))
    except TypeError:
        if not isinstance(items, Iterable):
            raise InvalidArgument(f"{what}, got {type(items).__name__}") from None
        raise
    if len(found) > BATCH_MAX_ITEMS:
        raise InvalidArgument(f"a batch holds at most {BATCH_MAX_ITEMS} items, got more")
    return found


def parse_counter(value: bytes) -> int:
    """Parse a stored counter: signed 64-bit decimal ASCII, as `increment` writes it.

    Raises:
        NotANumber: if the value is anything else.
    """
    if _COUNTER.match(value) is None or not I64_MIN <= (number := int(value)) <= I64_MAX:
        shown = value[:40] + (b"..." if len(value) > 40 else b"")
        raise NotANumber(f"value is not a signed 64-bit decimal integer: {shown!r}")
    return number


def add_counter(current: int, delta: int) -> int:
    """Add with the signed 64-bit range enforced.

    Raises:
        IntegerOverflow: if the sum leaves the range (never wraps or saturates).
    """
    total = current + delta
    if not I64_MIN <= total <= I64_MAX:
        raise IntegerOverflow(f"increment of {current} by {delta} leaves the signed 64-bit range")
    return total


def deadline_ms(clock: Clock, ttl_ms: int) -> int:
    """The absolute expiry time, in epoch milliseconds, of a key set now with `ttl_ms`."""
    return int(clock() * 1000) + ttl_ms


def now_ms(clock: Clock) -> int:
    """The clock's time in epoch milliseconds."""
    return int(clock() * 1000)


def prefix_end(prefix: bytes) -> bytes | None:
    """The smallest byte string greater than every string starting with `prefix` (None if unbounded)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])


def encode_cursor(key_range: KeyRange, last_key: bytes) -> str:
    """Make the opaque cursor that resumes a listing of `key_range` after (or, reversed, before) `last_key`."""
    packed = msgpack.packb(
        [_CURSOR_VERSION, key_range.prefix, key_range.start, key_range.end, key_range.reverse, last_key]
    )
    # `base64.urlsafe_b64encode` without its layers of Python: every page with more to come makes one.
    return binascii.b2a_base64(packed, newline=False).translate(_URLSAFE).rstrip(b"=").decode("ascii")


def decode_cursor(cursor: object, key_range: KeyRange, max_key_bytes: int) -> bytes:
    """Return the key a cursor resumes from, checking it was issued for this very listing.

    A cursor is input from outside (a plugin, a client): it is bounded in length
    and decoded without ever building more than its fields. A cursor of the
    first version (prefix only) still continues a plain forward listing of its prefix.

    Raises:
        InvalidArgument: if the cursor is not one a listing of `key_range` returned.
    """
    if type(cursor) is not str:
        raise InvalidArgument(f"cursor must be a str returned by a listing, got {type(cursor).__name__}")
    # Base64 of the listing's bounds and a key, with some room: anything longer was never issued. The key
    # is a stored one, which may be longer than `max_key_bytes` now (the quota lowered since it was written).
    bounds = len(key_range.prefix) + len(key_range.start or b"") + len(key_range.end or b"")
    if len(cursor) > (bounds + MAX_KEY_BYTES_CEILING + 32) * 4 // 3 + 8:
        raise InvalidArgument(f"cursor is not one a listing returned: {len(cursor)} characters is too long")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        unpacker = msgpack.Unpacker(max_buffer_size=max(len(raw), 1), max_array_len=0, max_map_len=0, max_ext_len=0)
        unpacker.feed(raw)
        count = unpacker.read_array_header()
        if count not in (3, 6):
            raise ValueError("not a cursor's fields")
        fields = [unpacker.unpack() for _ in range(count)]
        if unpacker.tell() != len(raw):
            raise ValueError("bytes after the fields")
    except (binascii.Error, ValueError, TypeError, msgpack.UnpackException):
        raise InvalidArgument(f"cursor is not one a listing returned: {cursor[:64]!r}") from None
    if count == 3 and fields[0] == _CURSOR_V1:
        issued = KeyRange(fields[1]) if type(fields[1]) is bytes else None
    elif (
        count == 6
        and fields[0] == _CURSOR_VERSION
        and type(fields[1]) is bytes
        and all(field is None or type(field) is bytes for field in fields[2:4])
        and type(fields[4]) is bool
    ):
        issued = KeyRange(fields[1], fields[2], fields[3], fields[4])
    else:
        issued = None
    last_key = fields[-1]
    if issued is None or type(last_key) is not bytes:
        raise InvalidArgument(f"cursor is not one a listing returned: {cursor[:64]!r}")
    if issued != key_range:
        raise InvalidArgument("cursor was returned for a different listing (prefix, start, end or reverse)")
    if not key_range.holds(last_key):
        raise InvalidArgument(f"cursor is not one a listing returned: {cursor[:64]!r}")
    return last_key


class RateLimiter:
    """A token bucket: `rate` operations per second with a burst of one second's worth.

    Thread-safe. The clock is monotonic seconds (injectable for tests).
    """

    __slots__ = ("_clock", "_lock", "_rate", "_stamp", "_tokens")

    def __init__(self, rate: float, clock: Clock = time.monotonic) -> None:
        self._rate = float(rate)
        self._tokens = max(self._rate, 1.0)
        self._clock = clock
        self._stamp = clock()
        self._lock = threading.Lock()

    def charge(self, count: int) -> None:
        """Spend `count` more tokens for work already done (a scan page's pairs past its first).

        As with batches, the operation costs at most one second's budget, the
        token it acquired included: the balance may go below zero by less than
        that, and later operations then wait until it has refilled.
        """
        with self._lock:
            self._tokens -= min(float(count), max(self._rate, 1.0) - 1.0)

    def acquire(self, count: int = 1) -> None:
        """Take `count` tokens, or the whole burst if `count` is larger.

        A batch larger than one second's budget costs a full bucket rather than
        failing forever: it waits for the bucket to refill, then spends all of it.

        Raises:
            RateLimited: if the bucket holds fewer; then none are taken.
        """
        with self._lock:
            now = self._clock()
            burst = max(self._rate, 1.0)
            cost = min(float(count), burst)
            self._tokens = min(burst, self._tokens + (now - self._stamp) * self._rate)
            self._stamp = now
            if self._tokens < cost:
                raise RateLimited(f"rate limited: ops_per_second is {self._rate:g}")
            self._tokens -= cost
