"""wasmkv's key-value store: tenants, quotas, TTLs, atomics and paginated listing.

`KvStore.open(path)` is durable on an embedded engine (LMDB); `KvStore.memory()`
lives in RAM. Engines implement `Store` (or `AsyncStore`, bridged with
`SyncBridge`); the front layer (`KvStore` → `Tenant` → `Bucket`) validates every
key and enforces quotas around any of them. `tenant.async_bucket()` is the same
bucket for asyncio code (`AsyncBucket`).
"""

from ._backends import BACKENDS, COMMON_OPTIONS, Backend, Option, backend_for
from ._bridge import DEFAULT_BRIDGE_TIMEOUT_S, SyncBridge
from ._dump import DUMP_FORMAT, DUMP_VERSION, ImportReport, export_tenant, import_dump
from ._errors import (
    AccessDenied,
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
from ._protocol import AsyncStore, ScanItem, Store
from ._read_cache import DEFAULT_READ_CACHE_MS, ReadCache
from ._rules import (
    DEFAULT_LIST_LIMIT,
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_KEY_BYTES,
    DEFAULT_MAX_KEYS,
    DEFAULT_MAX_VALUE_BYTES,
    MAX_NAME_CHARS,
    MAX_TTL_MS,
    SCAN_PAGE_MAX_BYTES,
    KeyPage,
    KeyRange,
    Namespace,
    Quota,
    ScanPage,
    Usage,
    check_name,
)
from ._store import DEFAULT_SWEEP_INTERVAL_S, DEFAULT_TENANT_REFRESH_S, AsyncBucket, Bucket, KvStore, Tenant

__all__ = [
    "BACKENDS",
    "COMMON_OPTIONS",
    "DEFAULT_BRIDGE_TIMEOUT_S",
    "DEFAULT_LIST_LIMIT",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_KEYS",
    "DEFAULT_MAX_KEY_BYTES",
    "DEFAULT_MAX_VALUE_BYTES",
    "DEFAULT_READ_CACHE_MS",
    "DEFAULT_SWEEP_INTERVAL_S",
    "DEFAULT_TENANT_REFRESH_S",
    "DUMP_FORMAT",
    "DUMP_VERSION",
    "MAX_NAME_CHARS",
    "MAX_TTL_MS",
    "SCAN_PAGE_MAX_BYTES",
    "AccessDenied",
    "AsyncBucket",
    "AsyncStore",
    "Backend",
    "BackendUnavailable",
    "Bucket",
    "ImportReport",
    "IntegerOverflow",
    "InvalidArgument",
    "InvalidKey",
    "KeyPage",
    "KeyRange",
    "KvError",
    "KvStore",
    "Namespace",
    "NotANumber",
    "Option",
    "Quota",
    "QuotaExceeded",
    "RateLimited",
    "ReadCache",
    "RedisStore",
    "ScanItem",
    "ScanPage",
    "Store",
    "SyncBridge",
    "Tenant",
    "Usage",
    "ValueTooLarge",
    "backend_for",
    "check_name",
    "export_tenant",
    "import_dump",
]


def __getattr__(name: str) -> object:
    # `RedisStore` is exported lazily, so that `import wasmkv.kv` never loads redis-py.
    if name == "RedisStore":
        from ._redis import RedisStore  # noqa: PLC0415

        return RedisStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
