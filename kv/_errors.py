"""Errors raised by the store.

Every error derives from `KvError` and carries a stable integer `code`; the
plugin ABI returns that code negated (see `abi.Status`)::

    KvError
    ├── InvalidKey            2   empty, too long, not UTF-8, control character
    ├── ValueTooLarge         3   value over the tenant's max_value_bytes
    ├── QuotaExceeded         4   write would pass max_keys or max_bytes
    ├── NotANumber            5   increment of a non-integer value
    ├── IntegerOverflow       6   increment leaving the signed 64-bit range
    ├── AccessDenied          7   bucket not granted
    ├── RateLimited          10   tenant over its ops_per_second
    ├── BackendUnavailable   11   engine or server unreachable, closed, timed out
    └── InvalidArgument      12   any other malformed argument (TTL, limit, name…)
"""

from __future__ import annotations

from typing import ClassVar

from ..abi import Status

__all__ = [
    "AccessDenied",
    "BackendUnavailable",
    "IntegerOverflow",
    "InvalidArgument",
    "InvalidKey",
    "KvError",
    "NotANumber",
    "QuotaExceeded",
    "RateLimited",
    "ValueTooLarge",
]


class KvError(Exception):
    """Root of every error the store raises; `code` is its stable ABI code."""

    code: ClassVar[int] = 0


class InvalidKey(KvError):
    """The key is not a valid key: wrong type, empty, too long, not UTF-8, or has a control character."""

    code = -Status.INVALID_KEY


class ValueTooLarge(KvError):
    """The value is larger than the tenant's `max_value_bytes`."""

    code = -Status.VALUE_TOO_LARGE


class QuotaExceeded(KvError):
    """The write would take the tenant past `max_keys` or `max_bytes`; nothing was written."""

    code = -Status.QUOTA_EXCEEDED


class NotANumber(KvError):
    """`increment` found a value that is not a signed 64-bit decimal integer."""

    code = -Status.NOT_A_NUMBER


class IntegerOverflow(KvError):
    """`increment` would leave the signed 64-bit range."""

    code = -Status.INTEGER_OVERFLOW


class AccessDenied(KvError):
    """The caller may not use this bucket."""

    code = -Status.ACCESS_DENIED


class RateLimited(KvError):
    """The tenant is over its `ops_per_second` quota."""

    code = -Status.RATE_LIMITED


class BackendUnavailable(KvError):
    """The engine or server behind the store cannot serve now (closed, unreachable, timed out, full)."""

    code = -Status.BACKEND_UNAVAILABLE


class InvalidArgument(KvError):
    """An argument other than the key is malformed: a TTL, limit, cursor, name, quota or request."""

    code = -Status.INVALID_ARGUMENT
