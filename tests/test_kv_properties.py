"""Random operation sequences against a plain reference model, TTLs driven by a fake clock."""

from __future__ import annotations

import re

import hypothesis.strategies as st
from conftest import FakeClock
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from wasmkv import kv

KEYS = st.sampled_from(["a", "b", "ab", "abc", "b/1", "é", "🎉", "z" * 20])
VALUES = st.binary(max_size=12)
BUCKETS = st.sampled_from([("t1", "default"), ("t1", "other"), ("t2", "default")])
QUOTA = kv.Quota(max_keys=6, max_bytes=90, max_value_bytes=10)
I64 = 2**63


class Model:
    """The reference: a dict per bucket of key -> (value, expires_ms or None)."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.data: dict[tuple[str, str], dict[str, tuple[bytes, int | None]]] = {}

    def now(self) -> int:
        return int(self.clock() * 1000)

    def live(self, ns: tuple[str, str]) -> dict[str, tuple[bytes, int | None]]:
        items = self.data.setdefault(ns, {})
        for key in [k for k, (_, exp) in items.items() if exp is not None and exp <= self.now()]:
            del items[key]
        return items

    def usage(self, tenant: str) -> kv.Usage:
        keys = size = 0
        for ns in list(self.data):
            if ns[0] == tenant:
                for key, (value, _) in self.live(ns).items():
                    keys += 1
                    size += len(key.encode()) + len(value)
        return kv.Usage(keys, size)

    def fits(self, tenant: str, writes: dict[tuple[tuple[str, str], str], bytes]) -> bool:
        before = self.usage(tenant)
        keys, size = before.keys, before.bytes
        for (ns, key), value in writes.items():
            old = self.live(ns).get(key)
            if old is None:
                keys += 1
                size += len(key.encode()) + len(value)
            else:
                size += len(value) - len(old[0])
        return (keys <= before.keys or keys <= QUOTA.max_keys) and (size <= before.bytes or size <= QUOTA.max_bytes)


class StoreMachine(RuleBasedStateMachine):
    """Drives a real store and the model with the same operations; every answer must agree."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.store = kv.KvStore.memory(clock=self.clock, sweep_interval_s=None)
        self.model = Model(self.clock)

    def bucket(self, ns: tuple[str, str]) -> kv.Bucket:
        return self.store.tenant(ns[0], QUOTA).bucket(ns[1])

    @rule(ns=BUCKETS, key=KEYS, value=VALUES)
    def set(self, ns: tuple[str, str], key: str, value: bytes) -> None:
        self._set(ns, key, value, None)

    @rule(ns=BUCKETS, key=KEYS, value=VALUES, ttl=st.integers(1, 3000))
    def set_with_ttl(self, ns: tuple[str, str], key: str, value: bytes, ttl: int) -> None:
        self._set(ns, key, value, ttl)

    def _set(self, ns: tuple[str, str], key: str, value: bytes, ttl: int | None) -> None:
        if len(value) > QUOTA.max_value_bytes:
            expected_error: type[kv.KvError] | None = kv.ValueTooLarge
        elif not self.model.fits(ns[0], {(ns, key): value}):
            expected_error = kv.QuotaExceeded
        else:
            expected_error = None
        try:
            if ttl is None:
                self.bucket(ns).set(key, value)
            else:
                self.bucket(ns).set_with_ttl(key, value, ttl)
        except kv.KvError as exc:
            assert type(exc) is expected_error
            return
        assert expected_error is None
        self.model.live(ns)[key] = (value, None if ttl is None else self.model.now() + ttl)

    @rule(ns=BUCKETS, key=KEYS)
    def get(self, ns: tuple[str, str], key: str) -> None:
        entry = self.model.live(ns).get(key)
        assert self.bucket(ns).get(key) == (None if entry is None else entry[0])
        assert self.bucket(ns).exists(key) == (entry is not None)

    @rule(ns=BUCKETS, key=KEYS)
    def delete(self, ns: tuple[str, str], key: str) -> None:
        assert self.bucket(ns).delete(key) == (self.model.live(ns).pop(key, None) is not None)

    @rule(ns=BUCKETS, key=KEYS, delta=st.one_of(st.integers(-5, 5), st.sampled_from([I64 - 1, -I64])))
    def increment(self, ns: tuple[str, str], key: str, delta: int) -> None:
        entry = self.model.live(ns).get(key)
        expected_error: type[kv.KvError] | None = None
        current = 0
        if entry is not None:
            if re.fullmatch(rb"-?[0-9]{1,19}", entry[0]) and -I64 <= int(entry[0]) < I64:
                current = int(entry[0])
            else:
                expected_error = kv.NotANumber
        total = current + delta
        if expected_error is None and not -I64 <= total < I64:
            expected_error = kv.IntegerOverflow
        new = str(total).encode()
        if expected_error is None and len(new) > QUOTA.max_value_bytes:
            expected_error = kv.ValueTooLarge
        if expected_error is None and not self.model.fits(ns[0], {(ns, key): new}):
            expected_error = kv.QuotaExceeded
        try:
            result = self.bucket(ns).increment(key, delta)
        except kv.KvError as exc:
            assert type(exc) is expected_error, (exc, expected_error)
            return
        assert expected_error is None
        assert result == total
        self.model.live(ns)[key] = (new, None if entry is None else entry[1])

    @rule(ns=BUCKETS, key=KEYS, expected=st.one_of(st.none(), VALUES), new=VALUES)
    def compare_and_swap(self, ns: tuple[str, str], key: str, expected: bytes | None, new: bytes) -> None:
        entry = self.model.live(ns).get(key)
        matches = (entry is None) if expected is None else (entry is not None and entry[0] == expected)
        expected_error: type[kv.KvError] | None = None
        if len(new) > QUOTA.max_value_bytes:
            expected_error = kv.ValueTooLarge
        elif matches and not self.model.fits(ns[0], {(ns, key): new}):
            expected_error = kv.QuotaExceeded
        try:
            swapped = self.bucket(ns).compare_and_swap(key, expected, new)
        except kv.KvError as exc:
            assert type(exc) is expected_error
            return
        assert expected_error is None
        assert swapped == matches
        if swapped:
            self.model.live(ns)[key] = (new, None)

    @rule(ns=BUCKETS, items=st.dictionaries(KEYS, VALUES, max_size=4))
    def set_many(self, ns: tuple[str, str], items: dict[str, bytes]) -> None:
        if any(len(v) > QUOTA.max_value_bytes for v in items.values()):
            expected_error: type[kv.KvError] | None = kv.ValueTooLarge
        elif not self.model.fits(ns[0], {(ns, k): v for k, v in items.items()}):
            expected_error = kv.QuotaExceeded
        else:
            expected_error = None
        try:
            self.bucket(ns).set_many(items)
        except kv.KvError as exc:
            assert type(exc) is expected_error
            return
        assert expected_error is None
        self.model.live(ns).update({k: (v, None) for k, v in items.items()})

    @rule(ns=BUCKETS, keys=st.lists(KEYS, max_size=4))
    def delete_many(self, ns: tuple[str, str], keys: list[str]) -> None:
        live = self.model.live(ns)
        expected = sum(live.pop(key, None) is not None for key in dict.fromkeys(keys))
        assert self.bucket(ns).delete_many(keys) == expected

    @rule(ns=BUCKETS, prefix=st.sampled_from(["", "a", "b", "z"]), limit=st.integers(1, 4))
    def list_all(self, ns: tuple[str, str], prefix: str, limit: int) -> None:
        expected = sorted((k for k in self.model.live(ns) if k.startswith(prefix)), key=str.encode)
        seen: list[str] = []
        cursor = None
        while True:
            page = self.bucket(ns).list_keys(prefix, cursor=cursor, limit=limit)
            assert len(page.keys) <= limit
            seen += page.keys
            if (cursor := page.cursor) is None:
                break
        assert seen == expected

    @rule(
        ns=BUCKETS,
        prefix=st.sampled_from(["", "a", "b"]),
        start=st.none() | KEYS,
        end=st.none() | KEYS,
        reverse=st.booleans(),
        limit=st.integers(1, 4),
    )
    def scan_range(
        self, ns: tuple[str, str], prefix: str, start: str | None, end: str | None, reverse: bool, limit: int
    ) -> None:
        def wanted(key: str) -> bool:
            raw = key.encode()
            return (
                key.startswith(prefix)
                and (start is None or raw >= start.encode())
                and (end is None or raw < end.encode())
            )

        live = self.model.live(ns)
        expected = sorted(((k, v) for k, (v, _) in live.items() if wanted(k)), key=lambda kv_: kv_[0].encode())
        if reverse:
            expected.reverse()
        seen: list[tuple[str, bytes]] = []
        cursor = None
        while True:
            page = self.bucket(ns).scan(prefix, start=start, end=end, cursor=cursor, limit=limit, reverse=reverse)
            assert len(page.items) <= limit
            seen += page.items
            if (cursor := page.cursor) is None:
                break
        assert seen == expected
        assert list(self.bucket(ns).items(prefix, start=start, end=end, reverse=reverse, page_size=limit)) == expected

    @rule(ms=st.integers(1, 2000))
    def tick(self, ms: int) -> None:
        self.clock.tick(ms)

    @rule()
    def sweep(self) -> None:
        self.store.sweep()

    @invariant()
    def usage_matches(self) -> None:
        for tenant in ("t1", "t2"):
            assert self.store.tenant(tenant, QUOTA).usage() == self.model.usage(tenant)

    def teardown(self) -> None:
        self.store.close()


TestStoreMachine = StoreMachine.TestCase
TestStoreMachine.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
