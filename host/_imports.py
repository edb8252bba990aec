"""The bodies of the wasmkv ABI imports (`kv.*` and `host.*`), over one instance's memory and grant.

Each body reads its arguments from the raw slots of the call (see `_ffi`),
checks every pointer against the guest memory, calls the tenant's buckets and
answers with an i32. A `kv.KvError` becomes its status code and an
`AbiStatusError` its status; anything else is a host bug and traps the call.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping
from typing import Final

import msgpack

from .. import kv
from ..abi import ENV_MODULE, HOST_MODULE, KV_MODULE, LIST_MAX_LIMIT, Status, status_name
from ._errors import AbiStatusError
from ._ffi import GuestMemory, RawCallback, Slots
from ._limits import Limits
from ._requests import key_list, key_value_map, small_map
from ._stats import KV_OPS, OpCounts
from ._text import safe_text

__all__ = ["KV_OPS", "LOG_BYTES_PER_CALL", "AbiImports", "CallDeadline", "Grant", "PluginLog", "StartFunctionCall"]

_I32_MAX: Final = 2**31 - 1
_LOG_LEVELS: Final = {0: logging.DEBUG, 1: logging.INFO, 2: logging.WARNING, 3: logging.ERROR}
#: What one call may write to its plugin's log; past it, one "truncated" line and nothing more.
LOG_BYTES_PER_CALL: Final = 64 * 1024
#: What each record costs against that cap beyond its text (so at most 4096 records a call).
LOG_RECORD_COST: Final = 16
#: The most of an abort message or file name read from the guest (a hostile length is cut here).
_ABORT_TEXT_BYTES: Final = 2048
_ABORT_TEXT_CHARS: Final = 1024
_monotonic = time.monotonic
# The statuses `kv.get` returns inline, as plain ints: reading an enum member is a metaclass lookup
# (~0.13 µs here), and ctypes stores a plain int into the result slot faster.
_NOT_FOUND: Final = int(Status.NOT_FOUND)
_BAD_HANDLE: Final = int(Status.BAD_HANDLE)
_BAD_POINTER: Final = int(Status.BAD_POINTER)
#: (op, status) → the (op, outcome) a refusal is counted under: naming a status builds an enum member.
_REFUSALS: dict[tuple[str, int], tuple[str, str]] = {}


@dataclasses.dataclass(frozen=True, slots=True)
class Grant:
    """What one plugin may touch: its tenant, the buckets granted to it, its limits, and its log."""

    plugin: str
    tenant: kv.Tenant
    buckets: frozenset[str]
    limits: Limits
    logger: logging.Logger
    #: Whether the plugin may import WASI preview 1 (see `host._wasi`).
    wasi: bool = False
    #: What an Extism plugin reads with `config_get` (see `host._extism`).
    config: Mapping[str, str] = dataclasses.field(default_factory=dict)


class StartFunctionCall(Exception):
    """A start function called an import: the instance has no memory bound yet."""


class CallDeadline(Exception):
    """An import was called after the call's deadline: the call ends as a timeout."""


class GuestAbort(Exception):
    """The guest's runtime aborted (AssemblyScript's `abort`): the call traps with this message."""


class PluginLog:
    """A plugin's log for one call at a time: escaped lines, at most `LOG_BYTES_PER_CALL` bytes of UTF-8 per call."""

    def __init__(self, logger: logging.Logger, extra: dict[str, str] | None = None) -> None:
        self.logger = logger
        self.written = 0
        # Fields every record carries (plugin, tenant, export, version) for structured log output.
        self.extra: dict[str, str] = extra if extra is not None else {}

    def begin_call(self) -> None:
        """Start counting a new call's log volume."""
        self.written = 0

    @property
    def room(self) -> int:
        """How much more this call may log."""
        return max(0, LOG_BYTES_PER_CALL - self.written)

    @property
    def full(self) -> bool:
        """Whether this call has used up its log volume."""
        return self.room == 0

    def write(self, level: int, raw: bytes, *, cut: bool = False) -> None:
        """Log one message at `level`, escaped; past the per-call cap, say so once and drop the rest.

        `cut` says `raw` is only the start of a longer message (the caller read no more than `room`).
        """
        if self.full or not self.logger.isEnabledFor(level):
            return
        text = safe_text(raw)
        room = self.room
        # The cap counts the UTF-8 a handler writes: escapes and characters outside ASCII make it longer
        # than the text's length (a line of emoji is four bytes a character).
        size = len(text) if text.isascii() else len(text.encode())
        # A record costs more than its text: empty lines must not get past the cap for free.
        self.written += size + LOG_RECORD_COST + (room if cut else 0)
        if cut or size + LOG_RECORD_COST > room:
            kept = text[:room] if text.isascii() else text.encode()[:room].decode(errors="ignore")
            self.logger.log(level, "%s", kept, extra=self.extra)
            self.logger.warning(
                "log truncated: this call wrote over %d bytes of log", LOG_BYTES_PER_CALL, extra=self.extra
            )
            return
        self.logger.log(level, "%s", text, extra=self.extra)


class _NoMemory:
    """Stands in for the guest memory until instantiation has bound it (a start function runs before)."""

    view = memoryview(b"")

    def fits(self, pointer: int, length: int) -> bool:
        raise StartFunctionCall()


def _past_deadline() -> CallDeadline:
    return CallDeadline("the call's deadline passed while it was calling imports")


def packed_values_size(values: list[bytes | None]) -> int:
    """The exact length of `msgpack.packb(values, use_bin_type=True)`, computed without building it."""
    count = len(values)
    size = 1 if count < 16 else 3 if count < 65536 else 5
    for value in values:
        if value is None:
            size += 1
        else:
            length = len(value)
            size += length + (2 if length < 256 else 3 if length < 65536 else 5)
    return size


def _str_size(length: int) -> int:
    return length + (1 if length < 32 else 2 if length < 256 else 3 if length < 65536 else 5)


def packed_scan_size(items: list[tuple[str, bytes]], cursor: str | None) -> int:
    """The exact length of the `kv.scan` reply for `items` and `cursor`, computed without building it."""
    count = len(items)
    # {"items": [...], "cursor": ...}: a fixmap header, two fixstr names.
    size = 1 + 6 + 7 + (1 if count < 16 else 3 if count < 65536 else 5)
    for key, value in items:
        length = len(value)
        # Keys are str of their UTF-8; ours are printable, mostly ASCII, so len() of the str is
        # only a guess: measure the bytes.
        size += 1 + _str_size(len(key.encode())) + length + (2 if length < 256 else 3 if length < 65536 else 5)
    return size + (1 if cursor is None else _str_size(len(cursor)))


_SCAN_FIELDS: Final = frozenset({"prefix", "start", "end", "cursor", "limit", "reverse"})
_SCAN_REQUEST: Final = (
    "a msgpack map with only prefix, start, end, cursor (str), limit (int) and reverse (bool), each at most once"
)


def _bad_pointer() -> AbiStatusError:
    # Raised fresh each time: re-raising one shared instance would chain every traceback onto
    # it, and a plugin looping on bad pointers would grow host memory.
    return AbiStatusError(Status.BAD_POINTER, "a pointer/length pair reaches outside the plugin's memory")


def _i64(slots: Slots, slot: int) -> int:
    value: int = (slots[4 * slot + 1] << 32) | (slots[4 * slot] & 0xFFFFFFFF)
    return value


class AbiImports:
    """The `kv` and `host` imports of one instance, with the state of its current call (input, output).

    Used by one thread at a time: the instance's.
    """

    def __init__(self, grant: Grant) -> None:
        self.grant = grant
        self.memory: GuestMemory | _NoMemory = _NoMemory()
        self.handles: list[kv.Bucket] = []
        self.handle_of: dict[bytes, int] = {}
        self.input = b""
        self.output = bytearray()
        self.log = PluginLog(grant.logger, {"plugin": grant.plugin, "tenant": grant.tenant.name})
        # Monotonic seconds at which the current call ends; an import called later ends the call.
        self.deadline = float("inf")
        # KV operations of the current call, folded into the plugin's counters when it ends.
        self.ops = OpCounts()
        self.op_calls = self.ops.made  # the bodies count here, by index into KV_OPS

    def bodies(self) -> dict[tuple[str, str], RawCallback]:
        """Every import body, by (module, name); each checks the call's deadline first."""
        timed, counted = self.timed, self.counted
        return {
            (KV_MODULE, "open"): timed(self._open),
            (KV_MODULE, "get"): self._get,  # the hot path checks the deadline and counts inline
            (KV_MODULE, "set"): counted("set", self._set),
            (KV_MODULE, "set_with_ttl"): counted("set_with_ttl", self._set_with_ttl),
            (KV_MODULE, "delete"): counted("delete", self._delete),
            (KV_MODULE, "exists"): counted("exists", self._exists),
            (KV_MODULE, "increment"): counted("increment", self._increment),
            (KV_MODULE, "compare_and_swap"): counted("compare_and_swap", self._compare_and_swap),
            (KV_MODULE, "list_keys"): counted("list_keys", self._list_keys),
            (KV_MODULE, "scan"): counted("scan", self._scan),
            (KV_MODULE, "get_many"): counted("get_many", self._get_many),
            (KV_MODULE, "set_many"): counted("set_many", self._set_many),
            (KV_MODULE, "delete_many"): counted("delete_many", self._delete_many),
            (HOST_MODULE, "input"): timed(self._input),
            (HOST_MODULE, "output"): timed(self._output),
            (HOST_MODULE, "log"): timed(self._log),
            (ENV_MODULE, "abort"): self._abort,
        }

    def timed(self, body: RawCallback) -> RawCallback:
        """`body`, first ending the call if its deadline has passed (every import is wrapped so)."""

        def timed(slots: Slots) -> int | None:
            # The epoch ends a call inside wasm; this ends one that spends its time calling imports.
            if _monotonic() > self.deadline:
                raise _past_deadline()
            return body(slots)

        return timed

    def counted(self, op: str, body: RawCallback) -> RawCallback:
        """`body` timed (see `timed`) and counted as KV operation `op` (one of `KV_OPS`)."""
        calls, index = self.op_calls, KV_OPS.index(op)

        def counted(slots: Slots) -> int | None:
            if _monotonic() > self.deadline:
                raise _past_deadline()
            calls[index] += 1
            return body(slots)

        return counted

    def refused(self, op: str, status: int) -> None:
        """Count KV operation `op` of this call as refused with `status` (it was counted as made)."""
        key = _REFUSALS.get((op, status))
        if key is None:  # a few dozen pairs at most: the ops and the statuses this module answers with
            key = _REFUSALS[op, status] = (op, (status_name(status) or str(status)).lower())
        refused = self.ops.refused
        refused[key] = refused.get(key, 0) + 1

    def status_of(self, exc: BaseException) -> int | None:
        """The status an exception from a body returns to the guest; None if it is a host bug."""
        if isinstance(exc, kv.KvError):
            return -exc.code
        if isinstance(exc, AbiStatusError):
            return exc.status
        return None

    def begin_call(self, input: bytes, deadline: float) -> None:
        """Reset the per-call state for a call with `input` that ends at `deadline` (monotonic seconds)."""
        self.input = input
        if self.output:  # else the last call's output was taken, leaving the buffer empty
            self.output = bytearray()
        self.log.written = 0
        self.deadline = deadline

    def take_output(self) -> bytes:
        """What the call wrote with `host.output`, which is the caller's now: the buffer is released."""
        output = self.output
        if not output:
            return b""
        self.output = bytearray()
        return bytes(output)

    # -- memory ---------------------------------------------------------------------------------

    def _read(self, pointer: int, length: int) -> bytes:
        memory = self.memory
        if not memory.fits(pointer, length):
            raise _bad_pointer()
        return memory.view[pointer : pointer + length].tobytes()

    def _reply(self, data: bytes, pointer: int, capacity: int) -> int:
        """The buffer rule: write `data` only if it fits; return its length."""
        if not self.memory.fits(pointer, capacity):
            raise _bad_pointer()
        length = len(data)
        self._check_reply(length)
        if length <= capacity:
            self.memory.view[pointer : pointer + length] = data
        return length

    def _reply_ceiling(self) -> int:
        """The largest reply this plugin's memory could hold."""
        return min(self.grant.limits.memory_bytes, _I32_MAX)

    def _reply_too_large(self, length: object) -> AbiStatusError:
        return AbiStatusError(
            Status.VALUE_TOO_LARGE,
            f"reply of {length} bytes is over the plugin's memory_bytes limit of {self.grant.limits.memory_bytes}",
        )

    def _check_reply(self, length: int) -> None:
        """Refuse a reply no plugin memory could hold, before anything that large is built."""
        if length > self._reply_ceiling():
            raise self._reply_too_large(length)

    def _bucket(self, handle: int) -> kv.Bucket:
        if handle < 0 or handle >= len(self.handles):
            raise AbiStatusError(Status.BAD_HANDLE, f"store handle {handle} was not returned by open")
        return self.handles[handle]

    # -- kv imports -----------------------------------------------------------------------------

    def _open(self, s: Slots) -> int:
        raw = self._read(s[0], s[4])
        handle = self.handle_of.get(raw)
        if handle is not None:
            return handle
        try:
            name = kv.check_name("bucket", raw.decode("ascii"))
        except UnicodeDecodeError:
            raise AbiStatusError(Status.INVALID_ARGUMENT, f"bucket name is not ASCII: {raw!r}") from None
        if name not in self.grant.buckets:
            raise kv.AccessDenied(f"bucket {name!r} is not granted to plugin {self.grant.plugin!r}")
        self.handles.append(self.grant.tenant.bucket(name))
        handle = self.handle_of[raw] = len(self.handles) - 1
        return handle

    def _get(self, s: Slots) -> int:
        # The hottest import: bounds checks and the handle lookup inlined.
        if _monotonic() > self.deadline:
            raise _past_deadline()
        self.op_calls[0] += 1
        handle, key_pointer, key_length, out_pointer, capacity = s[0], s[4], s[8], s[12], s[16]
        handles = self.handles
        if handle < 0 or handle >= len(handles):
            if not handles and type(self.memory) is _NoMemory:  # no handle yet: maybe a start function
                raise StartFunctionCall()
            self.refused("get", _BAD_HANDLE)  # as the other imports count it, from the error they raise
            return _BAD_HANDLE
        memory = self.memory
        view = memory.view
        size = len(view)
        if (
            key_pointer < 0
            or key_length < 0
            or capacity < 0
            or out_pointer < 0
            or key_pointer + key_length > size
            or (capacity and out_pointer + capacity > size)
        ):
            if not (memory.fits(key_pointer, key_length) and memory.fits(out_pointer, capacity)):
                self.refused("get", _BAD_POINTER)
                return _BAD_POINTER
            view = memory.view
        value = handles[handle].get(view[key_pointer : key_pointer + key_length].tobytes())
        if value is None:
            return _NOT_FOUND
        length = len(value)
        if length <= capacity:
            view[out_pointer : out_pointer + length] = value
        return length

    def _set(self, s: Slots) -> int:
        bucket = self._bucket(s[0])
        bucket.set(self._read(s[4], s[8]), self._read(s[12], s[16]))
        return 0

    def _set_with_ttl(self, s: Slots) -> int:
        bucket = self._bucket(s[0])
        bucket.set_with_ttl(self._read(s[4], s[8]), self._read(s[12], s[16]), _i64(s, 5))
        return 0

    def _delete(self, s: Slots) -> int:
        return int(self._bucket(s[0]).delete(self._read(s[4], s[8])))

    def _exists(self, s: Slots) -> int:
        return int(self._bucket(s[0]).exists(self._read(s[4], s[8])))

    def _increment(self, s: Slots) -> int:
        bucket = self._bucket(s[0])
        key = self._read(s[4], s[8])
        out_pointer = s[16]
        # Check the result slot first, so a bad pointer changes nothing.
        if not self.memory.fits(out_pointer, 8):
            raise _bad_pointer()
        total = bucket.increment(key, _i64(s, 3))
        self.memory.view[out_pointer : out_pointer + 8] = total.to_bytes(8, "little", signed=True)
        return 0

    def _compare_and_swap(self, s: Slots) -> int:
        bucket = self._bucket(s[0])
        key = self._read(s[4], s[8])
        expected = None if s[16] == -1 else self._read(s[12], s[16])
        return int(bucket.compare_and_swap(key, expected, self._read(s[20], s[24])))

    def _list_keys(self, s: Slots) -> int:
        bucket = self._bucket(s[0])
        prefix = self._read(s[4], s[8])
        cursor_raw = self._read(s[12], s[16])
        out_pointer, capacity = s[24], s[28]
        if not self.memory.fits(out_pointer, capacity):
            raise _bad_pointer()
        try:
            cursor = cursor_raw.decode("ascii") if cursor_raw else None
        except UnicodeDecodeError:
            raise AbiStatusError(Status.INVALID_ARGUMENT, "cursor is not one returned by list_keys") from None
        page = bucket.list_keys(prefix, cursor, s[20])
        return self._reply(msgpack.packb({"keys": page.keys, "cursor": page.cursor}), out_pointer, capacity)

    def _scan(self, s: Slots) -> int:
        bucket = self._bucket(s[0])
        out_pointer, capacity = s[12], s[16]
        if not self.memory.fits(out_pointer, capacity):
            raise _bad_pointer()
        request = small_map(self._read(s[4], s[8]), _SCAN_FIELDS, _SCAN_REQUEST)
        cursor = request.get("cursor")
        limit = request.get("limit", kv.DEFAULT_LIST_LIMIT)
        reverse = request.get("reverse", False)
        if cursor is not None and type(cursor) is not str:
            raise AbiStatusError(Status.INVALID_ARGUMENT, "scan cursor must be a str returned by scan, or nil")
        if type(limit) is not int:
            raise AbiStatusError(Status.INVALID_ARGUMENT, f"scan limit must be an int in 1..{LIST_MAX_LIMIT}")
        if type(reverse) is not bool:
            raise AbiStatusError(Status.INVALID_ARGUMENT, "scan reverse must be true or false")
        page = bucket.scan(
            request.get("prefix", ""),
            start=request.get("start"),
            end=request.get("end"),
            cursor=cursor,
            limit=limit,
            reverse=reverse,
        )
        # Sized before it is built, as get_many: a page asked for its length only is not packed.
        length = packed_scan_size(page.items, page.cursor)
        self._check_reply(length)
        if length > capacity:
            return length
        reply = msgpack.packb({"items": page.items, "cursor": page.cursor}, use_bin_type=True)
        return self._reply(reply, out_pointer, capacity)

    def _get_many(self, s: Slots) -> int:
        bucket = self._bucket(s[0])
        out_pointer, capacity = s[12], s[16]
        if not self.memory.fits(out_pointer, capacity):
            raise _bad_pointer()
        ceiling = self._reply_ceiling()
        try:
            # Values heavier together than any reply this plugin could hold are refused as they are read,
            # not after: 400 values of 1 MiB asked for by a plugin of 256 KiB would cost the host 800 MiB.
            values = bucket.get_many(key_list(self._read(s[4], s[8])), max_bytes=ceiling)
        except kv.ValueTooLarge:
            raise self._reply_too_large(f"over {ceiling}") from None
        # Sized before it is built: a reply asked for its length only, or too large for any plugin
        # memory, is never packed (a key repeated 1000 times must not cost 1000 copies).
        length = packed_values_size(values)
        self._check_reply(length)
        if length > capacity:
            return length
        return self._reply(msgpack.packb(values, use_bin_type=True), out_pointer, capacity)

    def _set_many(self, s: Slots) -> int:
        bucket = self._bucket(s[0])
        bucket.set_many(key_value_map(self._read(s[4], s[8])))
        return 0

    def _delete_many(self, s: Slots) -> int:
        return self._bucket(s[0]).delete_many(key_list(self._read(s[4], s[8])))

    # -- host imports ---------------------------------------------------------------------------

    def _input(self, s: Slots) -> int:
        return self._reply(self.input, s[0], s[4])

    def _output(self, s: Slots) -> int:
        cap = self.grant.limits.memory_bytes
        # Refused before it is read: a plugin at the cap calling output(0, 64 MiB) in a loop copied 64 MiB a call.
        if s[4] > 0 and len(self.output) + s[4] > cap:
            if not self.memory.fits(s[0], s[4]):
                raise _bad_pointer()
            raise AbiStatusError(Status.INVALID_ARGUMENT, f"output is capped at memory_bytes ({cap}) per call")
        data = self._read(s[0], s[4])
        self.output += data
        return 0

    def _log(self, s: Slots) -> None:
        log = self.log
        pointer, length = s[4], s[8]
        if not self.memory.fits(pointer, length):
            raise _bad_pointer()
        if log.full:  # past the cap, the text is not even read
            return
        # Never more than the call may still log: a message the size of the whole memory is cut as it is read.
        take = min(length, log.room)
        log.write(
            _LOG_LEVELS.get(s[0], logging.INFO), self.memory.view[pointer : pointer + take].tobytes(), cut=take < length
        )

    # -- env imports (toolchains' runtimes) -----------------------------------------------------

    def _abort(self, s: Slots) -> None:
        message, file = self._as_string(s[0]), self._as_string(s[4])
        raise GuestAbort(f"abort: {message or 'no message'} at {file or '?'}:{s[8]}:{s[12]}")

    def _as_string(self, pointer: int) -> str:
        """An AssemblyScript string (UTF-16LE, its byte length in the u32 before it), escaped and cut short."""
        memory = self.memory
        if pointer < 4 or not memory.fits(pointer - 4, 4):
            return ""
        size = int.from_bytes(memory.view[pointer - 4 : pointer], "little")
        size = min(size, _ABORT_TEXT_BYTES) & ~1
        if not memory.fits(pointer, size):
            return ""
        text = safe_text(memory.view[pointer : pointer + size].tobytes().decode("utf-16-le", "replace").encode())
        # Escapes lengthen text (a NUL is four characters): the cap holds for what is shown.
        return text if len(text) <= _ABORT_TEXT_CHARS else text[:_ABORT_TEXT_CHARS] + "..."
