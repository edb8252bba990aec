"""`SyncBridge` turns an `AsyncStore` into a `Store`: bounded waits, errors passed through, idempotent close."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence

import pytest

from wasmkv import kv

NS = kv.Namespace("acme", "default")
QUOTA = kv.Quota()


class SlowStore:
    """An `AsyncStore` whose every call takes `delay_s`; it records cancellations and closes."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.data: dict[bytes, bytes] = {}
        self.quotas: dict[str, kv.Quota] = {}
        self.cancelled = 0
        self.closed = 0
        self.loops: set[int] = set()

    async def _pause(self) -> None:
        self.loops.add(id(asyncio.get_running_loop()))
        try:
            await asyncio.sleep(self.delay_s)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise

    async def get(self, ns: kv.Namespace, key: bytes) -> bytes | None:
        await self._pause()
        return self.data.get(key)

    async def get_many(self, ns: kv.Namespace, keys: Sequence[bytes]) -> list[bytes | None]:
        await self._pause()
        return [self.data.get(key) for key in keys]

    async def exists(self, ns: kv.Namespace, key: bytes) -> bool:
        await self._pause()
        return key in self.data

    async def ttl(self, ns: kv.Namespace, key: bytes) -> int | None:
        await self._pause()
        return None

    async def set(self, ns: kv.Namespace, key: bytes, value: bytes, ttl_ms: int | None, quota: kv.Quota) -> None:
        await self._pause()
        if len(self.data) >= quota.max_keys and key not in self.data:
            raise kv.QuotaExceeded(f"quota exceeded: max_keys is {quota.max_keys}")
        self.data[key] = value

    async def set_many(self, ns: kv.Namespace, items: Sequence[tuple[bytes, bytes]], quota: kv.Quota) -> None:
        await self._pause()
        self.data.update(items)

    async def delete(self, ns: kv.Namespace, key: bytes) -> bool:
        await self._pause()
        return self.data.pop(key, None) is not None

    async def delete_many(self, ns: kv.Namespace, keys: Sequence[bytes]) -> int:
        await self._pause()
        return sum(self.data.pop(key, None) is not None for key in set(keys))

    async def increment(self, ns: kv.Namespace, key: bytes, delta: int, quota: kv.Quota) -> int:
        await self._pause()
        total = int(self.data.get(key, b"0")) + delta
        self.data[key] = str(total).encode()
        return total

    async def compare_and_swap(
        self, ns: kv.Namespace, key: bytes, expected: bytes | None, new: bytes, quota: kv.Quota
    ) -> bool:
        await self._pause()
        if self.data.get(key) != expected:
            return False
        self.data[key] = new
        return True

    async def list_keys(
        self, ns: kv.Namespace, key_range: kv.KeyRange, after: bytes | None, limit: int
    ) -> tuple[list[bytes], bool]:
        found, more = await self.scan(ns, key_range, after, limit, 1 << 30)
        return [key for key, _, _ in found], more

    async def scan(
        self, ns: kv.Namespace, key_range: kv.KeyRange, after: bytes | None, limit: int, max_bytes: int
    ) -> tuple[list[kv.ScanItem], bool]:
        await self._pause()
        keys = sorted(
            (
                k
                for k in self.data
                if key_range.holds(k) and (after is None or (k < after if key_range.reverse else k > after))
            ),
            reverse=key_range.reverse,
        )
        return [(k, self.data[k], None) for k in keys[:limit]], len(keys) > limit

    async def usage(self, tenant: str) -> kv.Usage:
        await self._pause()
        return kv.Usage(keys=len(self.data), bytes=sum(len(k) + len(v) for k, v in self.data.items()))

    async def sweep(self, limit: int) -> int:
        await self._pause()
        return min(limit, 3)

    async def tenants(self) -> list[str]:
        await self._pause()
        return ["acme"] if self.data else []

    async def buckets(self, tenant: str) -> list[str]:
        await self._pause()
        return ["default"] if self.data and tenant == "acme" else []

    async def tenant_quota(self, tenant: str) -> kv.Quota | None:
        await self._pause()
        return self.quotas.get(tenant)

    async def put_tenant_quota(self, tenant: str, quota: kv.Quota, *, only_if_absent: bool = False) -> kv.Quota:
        await self._pause()
        if only_if_absent:
            return self.quotas.setdefault(tenant, quota)
        self.quotas[tenant] = quota
        return quota

    async def delete_tenant(self, tenant: str) -> int:
        await self._pause()
        removed = len(self.data)
        self.data.clear()
        self.quotas.pop(tenant, None)
        return removed

    async def aclose(self) -> None:
        self.closed += 1


def test_the_bridge_is_a_store_and_passes_every_call_through() -> None:
    with kv.SyncBridge(SlowStore()) as bridge:
        assert isinstance(bridge, kv.Store)
        bridge.set(NS, b"a", b"1", None, QUOTA)
        bridge.set_many(NS, [(b"b", b"2"), (b"c", b"3")], QUOTA)
        assert bridge.get(NS, b"a") == b"1"
        assert bridge.get_many(NS, [b"b", b"x"]) == [b"2", None]
        assert bridge.exists(NS, b"c") is True
        assert bridge.ttl(NS, b"c") is None
        assert bridge.increment(NS, b"n", 5, QUOTA) == 5
        assert bridge.compare_and_swap(NS, b"n", b"5", b"6", QUOTA) is True
        assert bridge.list_keys(NS, kv.KeyRange(), None, 2) == ([b"a", b"b"], True)
        assert bridge.scan(NS, kv.KeyRange(reverse=True), None, 1, 100) == ([(b"n", b"6", None)], True)
        assert bridge.delete(NS, b"a") is True
        assert bridge.delete_many(NS, [b"b", b"c", b"zz"]) == 2
        assert bridge.usage("acme") == kv.Usage(keys=1, bytes=2)
        assert bridge.sweep(2) == 2
        assert bridge.tenants() == ["acme"]
        assert bridge.buckets("acme") == ["default"]
        assert bridge.buckets("other") == []
        small = kv.Quota(max_keys=3)
        assert bridge.tenant_quota("acme") is None
        assert bridge.put_tenant_quota("acme", small, only_if_absent=True) == small
        assert bridge.put_tenant_quota("acme", QUOTA, only_if_absent=True) == small
        assert bridge.put_tenant_quota("acme", QUOTA) == QUOTA
        assert bridge.tenant_quota("acme") == QUOTA
        assert bridge.delete_tenant("acme") == 1


def test_a_store_error_reaches_the_caller_unchanged() -> None:
    with kv.SyncBridge(SlowStore()) as bridge:
        tiny = kv.Quota(max_keys=1)
        bridge.set(NS, b"a", b"", None, tiny)
        with pytest.raises(kv.QuotaExceeded, match="max_keys is 1"):
            bridge.set(NS, b"b", b"", None, tiny)


def test_a_slow_call_raises_backend_unavailable_within_the_timeout_and_is_cancelled() -> None:
    store = SlowStore(delay_s=30)
    with kv.SyncBridge(store, timeout_s=0.2) as bridge:
        started = time.monotonic()
        with pytest.raises(kv.BackendUnavailable, match=r"did not answer within the bridge timeout of 0\.2 s"):
            bridge.get(NS, b"k")
        elapsed = time.monotonic() - started
        assert 0.2 <= elapsed < 0.2 + 1.5  # never early; late only by a loaded machine's scheduling
        # The abandoned call does not run on unseen: it is cancelled on the loop.
        deadline = time.monotonic() + 2
        while store.cancelled == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert store.cancelled == 1


def test_the_bridge_keeps_serving_after_a_timeout() -> None:
    store = SlowStore(delay_s=0.5)
    with kv.SyncBridge(store, timeout_s=0.1) as bridge:
        with pytest.raises(kv.BackendUnavailable):
            bridge.get(NS, b"k")
        store.delay_s = 0
        assert bridge.get(NS, b"k") is None


def test_calls_from_many_threads_run_concurrently_on_one_loop() -> None:
    store = SlowStore(delay_s=0.2)
    with kv.SyncBridge(store, timeout_s=2) as bridge:
        results: list[int] = []
        threads = [
            threading.Thread(target=lambda n=n: results.append(bridge.increment(NS, b"k%d" % n, n, QUOTA)))
            for n in range(20)
        ]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        # 20 calls of 0.2 s each overlap on the loop instead of queueing.
        assert time.monotonic() - started < 1.5
        assert sorted(results) == list(range(20))
        assert len(store.loops) == 1


def test_close_is_idempotent_closes_the_store_once_and_later_calls_fail_cleanly() -> None:
    store = SlowStore()
    bridge = kv.SyncBridge(store)
    bridge.close()
    bridge.close()
    assert store.closed == 1
    assert bridge.closed
    assert not bridge._thread.is_alive()
    with pytest.raises(kv.BackendUnavailable, match="closed"):
        bridge.get(NS, b"k")


def test_close_ends_calls_in_flight_promptly() -> None:
    store = SlowStore(delay_s=30)
    bridge = kv.SyncBridge(store, timeout_s=20)
    errors: list[BaseException] = []

    def call() -> None:
        try:
            bridge.get(NS, b"k")
        except BaseException as exc:
            errors.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    time.sleep(0.1)  # let the call reach the loop
    started = time.monotonic()
    bridge.close()
    caller.join(5)
    assert time.monotonic() - started < 2
    assert len(errors) == 1 and isinstance(errors[0], kv.BackendUnavailable)


@pytest.mark.parametrize("timeout", [0, -1, float("nan"), float("inf"), "1", True], ids=repr)
def test_the_timeout_must_be_a_positive_number(timeout: object) -> None:
    with pytest.raises(kv.InvalidArgument, match="timeout_s"):
        kv.SyncBridge(SlowStore(), timeout_s=timeout)  # type: ignore[arg-type]


def test_a_kv_store_over_the_bridge_runs_the_front_layer() -> None:
    with kv.KvStore(kv.SyncBridge(SlowStore()), sweep_interval_s=None) as store:
        bucket = store.tenant("acme").bucket()
        bucket.set("k", b"v")
        assert bucket.get("k") == b"v"
        with pytest.raises(kv.InvalidKey):
            bucket.get("")
