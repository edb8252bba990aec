"""Batch requests from plugins, decoded without ever building more than the request's own shape.

A request is msgpack from guest memory: hostile. `msgpack.unpackb` would build
whatever it describes first and let us check the shape after, and a few bytes
can describe millions of nested empty arrays (seconds of work, gigabytes, with
the GIL held). Here the container header is read and its count checked first,
then each item is decoded with nesting refused, so the work is bounded by the
request's length and the batch limit.
"""

from __future__ import annotations

from typing import Any

import msgpack

from ..abi import BATCH_MAX_ITEMS, Status
from ._errors import AbiStatusError

__all__ = ["key_list", "key_value_map", "small_map"]


def _unpacker(request: bytes, *, raw: bool) -> msgpack.Unpacker:
    unpacker = msgpack.Unpacker(
        raw=raw,
        # raw=False keeps a non-UTF-8 str key alive (surrogateescape) until the bucket's key check
        # answers it as an invalid key (-2), rather than failing the whole request (-12).
        unicode_errors="surrogateescape",
        strict_map_key=False,
        max_buffer_size=max(len(request), 1),
        # Items are scalars: an array, a map or an ext inside a request is refused as it is read.
        max_array_len=0,
        max_map_len=0,
        max_ext_len=0,
    )
    unpacker.feed(request)
    return unpacker


def _invalid(what: str) -> AbiStatusError:
    return AbiStatusError(Status.INVALID_ARGUMENT, f"request must be {what}")


def _finish(unpacker: msgpack.Unpacker, request: bytes, what: str) -> None:
    if unpacker.tell() != len(request):
        raise _invalid(what + ", with nothing after it")


def key_list(request: bytes) -> list[bytes]:
    """A msgpack array of at most `BATCH_MAX_ITEMS` str (or bin) keys, as their bytes.

    Raises:
        AbiStatusError: INVALID_ARGUMENT if it is anything else.
    """
    what = f"a msgpack array of at most {BATCH_MAX_ITEMS} str keys"
    unpacker = _unpacker(request, raw=True)
    try:
        count = unpacker.read_array_header()
        if count > BATCH_MAX_ITEMS:
            raise AbiStatusError(Status.INVALID_ARGUMENT, f"a batch holds at most {BATCH_MAX_ITEMS} items, got {count}")
        keys = [unpacker.unpack() for _ in range(count)]
    except (ValueError, msgpack.UnpackException):
        raise _invalid(what) from None
    if not all(type(key) is bytes for key in keys):
        raise _invalid(what)
    _finish(unpacker, request, what)
    return keys


def key_value_map(request: bytes) -> dict[str | bytes, bytes]:
    """A msgpack map of at most `BATCH_MAX_ITEMS` str (or bin) keys to bin values.

    Raises:
        AbiStatusError: INVALID_ARGUMENT if it is anything else.
    """
    what = f"a msgpack map of at most {BATCH_MAX_ITEMS} str keys to bin values"
    unpacker = _unpacker(request, raw=False)
    items: dict[str | bytes, bytes] = {}
    try:
        count = unpacker.read_map_header()
        if count > BATCH_MAX_ITEMS:
            raise AbiStatusError(Status.INVALID_ARGUMENT, f"a batch holds at most {BATCH_MAX_ITEMS} items, got {count}")
        for _ in range(count):
            key, value = unpacker.unpack(), unpacker.unpack()
            if not isinstance(key, str | bytes) or type(value) is not bytes:
                raise _invalid(what)
            items[key] = value
    except (ValueError, msgpack.UnpackException):
        raise _invalid(what) from None
    _finish(unpacker, request, what)
    return items


def small_map(request: bytes, fields: frozenset[str], what: str) -> dict[str, Any]:
    """A msgpack map whose keys are among `fields` (each at most once) and whose values are scalars.

    Raises:
        AbiStatusError: INVALID_ARGUMENT if it is anything else, naming `what` it must be.
    """
    unpacker = _unpacker(request, raw=False)
    found: dict[str, Any] = {}
    try:
        count = unpacker.read_map_header()
        if count > len(fields):
            raise _invalid(what)
        for _ in range(count):
            key, value = unpacker.unpack(), unpacker.unpack()
            if key not in fields or key in found:
                raise _invalid(what)
            found[key] = value
    except (ValueError, msgpack.UnpackException):
        raise _invalid(what) from None
    _finish(unpacker, request, what)
    return found
