"""WASI preview 1 for plugins loaded with `wasi=True`: a closed world, and time bounded by the call.

wasmtime provides the functions (`Linker.define_wasi`). What a plugin gets is
what `wasi_config` leaves open: no preopened directories (so no files), no
environment, no arguments, no sockets, an empty stdin; clocks and random are
allowed. Two things are the host's own:

- stdout and stderr become lines in the plugin's log (stderr as warnings),
  escaped and capped like `host.log`, a partial line flushed when the call ends;
- `poll_oneoff` (the only WASI call that sleeps) is replaced: a sleep never
  outlives the call's deadline, since the epoch that ends a runaway call only
  interrupts wasm code, not a host function sleeping inside it;
- `fd_write` is replaced too: wasmtime hands custom stdout to another thread
  and back, 200-350 us a write measured (`bench/bench_wasi.py`), where reading
  the iovecs here costs a few microseconds. No other descriptor is open.
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Callable
from typing import Final

import wasmtime

from ._ffi import GuestMemory, Slots
from ._imports import AbiImports, CallDeadline, PluginLog

__all__ = ["FD_WRITE", "POLL_ONEOFF", "WasiStreams", "fd_write", "poll_oneoff", "wasi_config"]

#: (name, signature) of the WASI functions the host replaces.
POLL_ONEOFF: Final = ("poll_oneoff", (("i32", "i32", "i32", "i32"), ("i32",)))
FD_WRITE: Final = ("fd_write", (("i32", "i32", "i32", "i32"), ("i32",)))

# errno values of WASI preview 1.
_ERRNO_SUCCESS: Final = 0
_ERRNO_BADF: Final = 8
_ERRNO_FAULT: Final = 21
_ERRNO_INVAL: Final = 28
_ERRNO_NOTSUP: Final = 58

_SUBSCRIPTION = struct.Struct("<QB7xIxxxxQQH6x")  # userdata, tag, clock id, timeout, precision, flags
_FD_SUBSCRIPTION = struct.Struct("<QB7xI")  # userdata, tag, fd
_EVENT = struct.Struct("<QHB5xQH6x")  # userdata, error, type, nbytes, flags
_SUBSCRIPTION_SIZE: Final = 48
_EVENT_SIZE: Final = 32
_CLOCK, _FD_READ, _FD_WRITE = 0, 1, 2
_REALTIME, _MONOTONIC = 0, 1
_ABSTIME: Final = 1
#: More subscriptions than any real program waits on at once; beyond, the call is refused.
MAX_SUBSCRIPTIONS: Final = 1024
#: Longest line kept before it is logged without its newline (a line is bounded like a log message).
_LINE_BYTES: Final = 8192


#: The most iovecs one fd_write may pass (POSIX's IOV_MAX); more is EINVAL.
MAX_IOVECS: Final = 1024
_IOVEC = struct.Struct("<II")


class WasiStreams:
    """stdout and stderr of one instance, as lines in its plugin log."""

    def __init__(self, log: PluginLog) -> None:
        self.log = log
        self._pending = {logging.INFO: bytearray(), logging.WARNING: bytearray()}
        self.stdout = self.writer(logging.INFO)
        self.stderr = self.writer(logging.WARNING)

    def writer(self, level: int) -> Callable[[bytes], None]:
        """The callback wasmtime calls with each write to the stream logged at `level`."""
        pending = self._pending[level]

        def write(data: bytes) -> None:
            if self.log.full:
                return
            pending.extend(data)
            # Complete lines go out now; a line too long to wait for goes out in pieces.
            while (end := pending.find(b"\n")) >= 0 or len(pending) >= _LINE_BYTES:
                take = end if 0 <= end < _LINE_BYTES else _LINE_BYTES
                self.log.write(level, bytes(pending[:take]))
                del pending[: take + 1 if take == end else take]
                if self.log.full:
                    pending.clear()
                    return

        return write

    def flush(self) -> None:
        """Log what is left of an unfinished line (at the end of a call)."""
        for level, pending in self._pending.items():
            if pending:
                self.log.write(level, bytes(pending))
                pending.clear()


def wasi_config(streams: WasiStreams) -> wasmtime.WasiConfig:
    """A WASI configuration that opens nothing: its output goes to `streams`."""
    config = wasmtime.WasiConfig()
    # fd_write is the host's own (below); these catch any other way wasmtime writes the streams.
    config.stdout_custom = streams.stdout
    config.stderr_custom = streams.stderr
    return config


def fd_write(imports: AbiImports, streams: WasiStreams, s: Slots) -> int:
    """`fd_write(fd, iovs, iovs_len, nwritten_out) -> errno`: stdout and stderr into the log.

    Every byte counts as written, including what the log's cap drops, so a
    program never retries a write the log will not take.
    """
    fd, iovs, count, nwritten = s[0], s[4], s[8], s[12]
    if fd not in (1, 2):
        return _ERRNO_BADF
    if count < 0 or count > MAX_IOVECS:
        return _ERRNO_INVAL
    memory = imports.memory
    if not (memory.fits(iovs, count * _IOVEC.size) and memory.fits(nwritten, 4)):
        return _ERRNO_FAULT
    assert isinstance(memory, GuestMemory)
    write = streams.stdout if fd == 1 else streams.stderr
    spans = [_IOVEC.unpack_from(memory.view, iovs + index * _IOVEC.size) for index in range(count)]
    if not all(memory.fits(pointer, length) for pointer, length in spans):
        return _ERRNO_FAULT
    total = 0
    for pointer, length in spans:
        total += length
        room = streams.log.room
        if length and room:
            # Never read more than the log may still take (plus a newline's worth to end the line).
            take = min(length, room + 1)
            write(memory.view[pointer : pointer + take].tobytes())
    if total > 0xFFFFFFFF:
        return _ERRNO_INVAL
    memory.view[nwritten : nwritten + 4] = total.to_bytes(4, "little")
    return _ERRNO_SUCCESS


def _clock_ns(clock_id: int) -> int | None:
    if clock_id == _REALTIME:
        return time.time_ns()
    if clock_id == _MONOTONIC:
        return time.monotonic_ns()
    return None


def poll_oneoff(imports: AbiImports, s: Slots) -> int:
    """`poll_oneoff(in, out, nsubscriptions, nevents_out) -> errno`, with sleeps bounded by the call's deadline.

    Clock subscriptions wait (the shortest one); file descriptor subscriptions
    on stdin/stdout/stderr are ready at once, others get EBADF.

    Raises:
        CallDeadline: if the wait would end past the call's deadline (the call ends as a timeout).
    """
    in_pointer, out_pointer, count, nevents_pointer = s[0], s[4], s[8], s[12]
    memory = imports.memory
    if count <= 0:
        return _ERRNO_INVAL
    if count > MAX_SUBSCRIPTIONS:
        return _ERRNO_NOTSUP
    if not (
        memory.fits(in_pointer, count * _SUBSCRIPTION_SIZE)
        and memory.fits(out_pointer, count * _EVENT_SIZE)
        and memory.fits(nevents_pointer, 4)
    ):
        return _ERRNO_FAULT
    assert isinstance(memory, GuestMemory)  # fits() raised otherwise: no import runs before memory is bound
    view = memory.view
    events: list[bytes] = []
    clocks: list[tuple[int, int]] = []  # (userdata, nanoseconds to wait)
    for index in range(count):
        at = in_pointer + index * _SUBSCRIPTION_SIZE
        userdata, tag, clock_id, timeout, _precision, flags = _SUBSCRIPTION.unpack_from(view, at)
        if tag == _CLOCK:
            now = _clock_ns(clock_id)
            if now is None:
                events.append(_EVENT.pack(userdata, _ERRNO_INVAL, tag, 0, 0))
                continue
            clocks.append((userdata, max(0, timeout - now) if flags & _ABSTIME else timeout))
        elif tag in (_FD_READ, _FD_WRITE):
            fd = _FD_SUBSCRIPTION.unpack_from(view, at)[2]
            events.append(_EVENT.pack(userdata, _ERRNO_SUCCESS if fd <= 2 else _ERRNO_BADF, tag, 0, 0))
        else:
            events.append(_EVENT.pack(userdata, _ERRNO_INVAL, tag, 0, 0))
    if not events and clocks:
        wait_ns = min(ns for _, ns in clocks)
        left = imports.deadline - time.monotonic()
        if wait_ns / 1e9 > left:
            # Waiting out the call's time first would only delay the same end.
            raise CallDeadline(f"the plugin slept {wait_ns / 1e6:.0f} ms, past the call's deadline")
        if wait_ns:
            time.sleep(wait_ns / 1e9)
        events.extend(_EVENT.pack(userdata, _ERRNO_SUCCESS, _CLOCK, 0, 0) for userdata, ns in clocks if ns <= wait_ns)
    view = memory.view  # the sleep released the GIL; the memory may have been refreshed
    for index, event in enumerate(events):
        at = out_pointer + index * _EVENT_SIZE
        view[at : at + _EVENT_SIZE] = event
    view[nevents_pointer : nevents_pointer + 4] = len(events).to_bytes(4, "little")
    return _ERRNO_SUCCESS
