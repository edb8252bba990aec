"""What a host has done: per-plugin call, KV-operation and reload counts, kept without dependencies.

`Host.stats()` returns a `HostStats` snapshot built from these counters; `wasmkv
serve` turns the same events into Prometheus metrics through an `Observer`.
"""

from __future__ import annotations

import bisect
import dataclasses
import logging
import threading
from collections.abc import Mapping
from typing import Final, NamedTuple, Protocol

__all__ = [
    "CALL_OUTCOMES",
    "KV_OPS",
    "SECONDS_BUCKETS",
    "CallRecord",
    "ExportStats",
    "HostStats",
    "Observer",
    "OpCounts",
    "PluginCounters",
    "PluginStats",
]

_log = logging.getLogger("wasmkv.host")

#: What a call can end as (`CallRecord.outcome`).
CALL_OUTCOMES: Final = ("ok", "error", "timeout", "fuel_exhausted", "trap", "unknown_export", "closed")
#: Upper bounds (seconds) of the call-duration histogram's buckets; a last bucket takes the rest.
SECONDS_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: The KV imports counted per call (`OpCounts.made` is indexed so; `get` first, counted inline).
KV_OPS: Final = (
    "get",
    "set",
    "set_with_ttl",
    "delete",
    "exists",
    "increment",
    "compare_and_swap",
    "list_keys",
    "scan",
    "get_many",
    "set_many",
    "delete_many",
)
_NO_OPS: Final = [0] * len(KV_OPS)
_FIRST_BOUND_S: Final = SECONDS_BUCKETS[0]


class CallRecord(NamedTuple):
    """One finished plugin call, as observers see it (a named tuple: one is built per call)."""

    plugin: str
    tenant: str
    export: str
    #: The sha256 of the module version that ran it.
    version: str
    #: One of `CALL_OUTCOMES`.
    outcome: str
    seconds: float
    #: For a call that returned a non-zero status, that status (e.g. -6); else None.
    status: int | None
    #: KV operations the call made: (op, outcome) → count; outcome is "ok" or a status name
    #: in lower case such as "quota_exceeded" or "rate_limited".
    kv_ops: Mapping[tuple[str, str], int]


class Observer(Protocol):
    """Told of every finished call and every reload; must be quick and must not raise."""

    def call_done(self, record: CallRecord) -> None:
        """A call ended (whatever its outcome)."""

    def reloaded(self, plugin: str, tenant: str, outcome: str) -> None:
        """A reload of `plugin` ended as "ok" or "failed"."""


@dataclasses.dataclass(frozen=True, slots=True)
class ExportStats:
    """Calls to one entry point of one plugin since the host started."""

    export: str
    #: Outcome (see `CALL_OUTCOMES`) → calls.
    outcomes: Mapping[str, int]
    #: Total seconds spent in these calls.
    seconds: float
    #: Calls per duration bucket: `buckets[i]` counts calls of at most `SECONDS_BUCKETS[i]` seconds
    #: and more than the bound before it; the last entry counts the longer ones.
    buckets: tuple[int, ...]

    @property
    def calls(self) -> int:
        """All calls, whatever their outcome."""
        return sum(self.outcomes.values())


@dataclasses.dataclass(frozen=True, slots=True)
class PluginStats:
    """One loaded plugin: where it runs, what it has done."""

    name: str
    tenant: str
    #: The sha256 of the module now serving.
    version: str
    pool_size: int
    #: Calls running now.
    busy: int
    exports: Mapping[str, ExportStats]
    #: (op, outcome) → count, as in `CallRecord.kv_ops`.
    kv_ops: Mapping[tuple[str, str], int]
    #: "ok" / "failed" → reloads.
    reloads: Mapping[str, int]

    @property
    def quota_rejections(self) -> int:
        """KV writes refused for the tenant's quota."""
        return sum(count for (_op, outcome), count in self.kv_ops.items() if outcome == "quota_exceeded")

    @property
    def rate_limited(self) -> int:
        """KV operations refused for the tenant's `ops_per_second`."""
        return sum(count for (_op, outcome), count in self.kv_ops.items() if outcome == "rate_limited")


@dataclasses.dataclass(frozen=True, slots=True)
class HostStats:
    """A snapshot of `Host.stats()`: every loaded plugin's counters, taken at `taken_at` (Unix time)."""

    plugins: Mapping[str, PluginStats]
    taken_at: float


class OpCounts:
    """The KV operations of an instance's current call, in integer slots: cheap to count, folded when it ends.

    `made[i]` counts calls of `KV_OPS[i]`, refused ones included; `refused` counts the
    refusals by (op, outcome). Used by one thread at a time: the instance's.
    """

    __slots__ = ("made", "refused")

    def __init__(self) -> None:
        self.made = [0] * len(KV_OPS)
        self.refused: dict[tuple[str, str], int] = {}

    def as_dict(self) -> dict[tuple[str, str], int]:
        """The counts as `CallRecord.kv_ops` gives them: (op, outcome) → count."""
        counts: dict[tuple[str, str], int] = {}
        made, refused = self.made, self.refused
        if made != _NO_OPS:
            for op, count in zip(KV_OPS, made, strict=True):
                if count:
                    ok = count - sum(n for (name, _), n in refused.items() if name == op)
                    if ok > 0:
                        counts[op, "ok"] = ok
        counts.update(refused)
        return counts


class _ExportCounts:
    __slots__ = ("buckets", "ok", "outcomes", "seconds")

    def __init__(self) -> None:
        self.ok = 0  # the common outcome in a plain attribute: one add, no dict lookups
        self.outcomes: dict[str, int] = {}  # the others
        self.seconds = 0.0
        self.buckets = [0] * (len(SECONDS_BUCKETS) + 1)

    def by_outcome(self) -> dict[str, int]:
        outcomes = {"ok": self.ok} if self.ok else {}
        outcomes.update(self.outcomes)
        return outcomes


class PluginCounters:
    """The running counts of one plugin (kept across reloads), updated by each call under `lock`.

    The lock is one a call holds anyway (its plugin's pool lock), so counting it takes no other.
    """

    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock
        self._exports: dict[str, _ExportCounts] = {}
        # Totals as `OpCounts` keeps them; the (op, outcome) map is built only for a snapshot.
        self._kv = OpCounts()
        self._reloads: dict[str, int] = {}

    def record(self, export: str, outcome: str, seconds: float, ops: OpCounts | None) -> None:
        """Count one finished call, and its KV operations `ops` (then reset to zero for the next call).

        The caller holds the lock given to the constructor.
        """
        counts = self._exports.get(export)
        if counts is None:
            counts = self._exports[export] = _ExportCounts()
        if outcome == "ok":
            counts.ok += 1
        else:
            outcomes = counts.outcomes
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
        counts.seconds += seconds
        if seconds <= _FIRST_BOUND_S:  # most calls: no bisection
            counts.buckets[0] += 1
        else:
            counts.buckets[bisect.bisect_left(SECONDS_BUCKETS, seconds)] += 1
        if ops is None:
            return
        made = ops.made
        if made != _NO_OPS:  # one C-level compare: most calls make few kinds of operation, many none
            totals = self._kv.made
            for index, count in enumerate(made):
                if count:
                    totals[index] += count
                    made[index] = 0
        if ops.refused:
            refused = self._kv.refused
            for key, count in ops.refused.items():
                refused[key] = refused.get(key, 0) + count
            ops.refused.clear()

    def reloaded(self, outcome: str) -> None:
        """Count one reload that ended as `outcome`."""
        with self._lock:
            self._reloads[outcome] = self._reloads.get(outcome, 0) + 1

    def snapshot(self, name: str, tenant: str, version: str, pool_size: int, busy: int) -> PluginStats:
        """These counts as a `PluginStats`."""
        with self._lock:
            exports = {
                export: ExportStats(export, counts.by_outcome(), counts.seconds, tuple(counts.buckets))
                for export, counts in self._exports.items()
            }
            return PluginStats(
                name=name,
                tenant=tenant,
                version=version,
                pool_size=pool_size,
                busy=busy,
                exports=exports,
                kv_ops=self._kv.as_dict(),
                reloads=dict(self._reloads),
            )


def notify(observers: list[Observer], record: CallRecord) -> None:
    """Tell every observer of `record`; an observer's failure is logged, never the call's."""
    for observer in observers:
        try:
            observer.call_done(record)
        except Exception:
            _log.exception("observer %r failed on a call record", observer)
