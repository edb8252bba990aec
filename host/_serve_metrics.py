"""`wasmkv serve`'s Prometheus metrics: an `Observer` of the host's calls and reloads, HTTP answers, tenant usage.

prometheus-client is imported here only, when an app is made: the rest of wasmkv never needs it.
With several worker processes (`PROMETHEUS_MULTIPROC_DIR` set, as `wasmkv serve --workers N`
does), counters and histograms go through prometheus-client's multiprocess files, so a scrape of
any worker shows every worker's counts; tenant usage is read from the store at scrape time, which
every worker shares, so it is never summed across workers.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Final

from .. import kv
from ._stats import SECONDS_BUCKETS, CallRecord

__all__ = ["CONTENT_TYPE", "INSTALL_HINT", "ServeMetrics"]

#: What /metrics answers when prometheus-client is not installed.
INSTALL_HINT: Final = "metrics need prometheus-client: pip install 'wasmkv[serve]'\n"
#: Prometheus's text exposition format.
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
#: The export label of a call to an export the plugin does not have: names from requests must not
#: become label values (each would be a new time series for as long as the process lives).
UNKNOWN_EXPORT_LABEL: Final = ""

_log = logging.getLogger("wasmkv.serve")


class _Usage:
    """A collector of `wasmkv_tenant_keys` and `wasmkv_tenant_bytes`, read from the store at each scrape."""

    def __init__(self, store: kv.KvStore, tenants: Callable[[], Iterable[str]], family: Any) -> None:
        self._store = store
        self._tenants = tenants
        self._family = family  # prometheus_client.core.GaugeMetricFamily

    def _families(self) -> tuple[Any, Any]:
        keys = self._family("wasmkv_tenant_keys", "Keys the tenant holds now, all buckets together", labels=["tenant"])
        size = self._family("wasmkv_tenant_bytes", "Key and value bytes the tenant holds now", labels=["tenant"])
        return keys, size

    def describe(self) -> Iterator[Any]:
        # Without `describe`, registering would call `collect` (and read the store) at once.
        yield from self._families()

    def collect(self) -> Iterator[Any]:
        keys, size = self._families()
        for name in sorted(set(self._tenants())):
            try:
                usage = self._store.tenant(name).usage()
            except kv.KvError as exc:
                _log.warning("metrics: cannot read the usage of tenant %s: %s", name, exc)
                continue
            keys.add_metric([name], usage.keys)
            size.add_metric([name], usage.bytes)
        yield keys
        yield size


class ServeMetrics:
    """The metrics of one `wasmkv serve` worker; an `Observer` to register with `host.add_observer`.

    `call_done` and `reloaded` run on the calling thread and only bump counters (their label
    children are cached, so a call costs a dict lookup and a few locked additions).

    Raises:
        ImportError: if prometheus-client is not installed (see `ServeMetrics.create`).
    """

    def __init__(self, store: kv.KvStore, tenants: Callable[[], Iterable[str]]) -> None:
        client = importlib.import_module("prometheus_client")
        core = importlib.import_module("prometheus_client.core")
        self._client = client
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        # Single process: a registry of this app's own, so several apps in one process never clash.
        # Multiprocess: values live in the shared files; a scrape builds a registry that reads them.
        self._registry = None if self.multiprocess else client.CollectorRegistry(auto_describe=True)
        registry = self._registry
        counter, histogram = client.Counter, client.Histogram
        self._calls = counter(
            "wasmkv_calls",
            "Plugin calls by outcome (ok, error, timeout, fuel_exhausted, trap, unknown_export, closed)",
            ["tenant", "plugin", "export", "outcome"],
            registry=registry,
        )
        self._seconds = histogram(
            "wasmkv_call_seconds",
            "Duration of plugin calls, in seconds",
            ["tenant", "plugin", "export"],
            buckets=SECONDS_BUCKETS,
            registry=registry,
        )
        self._kv_ops = counter(
            "wasmkv_kv_ops",
            "KV operations plugins made, by op and outcome (ok, or the refusal such as quota_exceeded)",
            ["tenant", "plugin", "op", "outcome"],
            registry=registry,
        )
        self._quota = counter(
            "wasmkv_quota_rejections",
            "KV writes refused for the tenant's quota",
            ["tenant", "plugin"],
            registry=registry,
        )
        self._rate = counter(
            "wasmkv_rate_limited",
            "KV operations refused for the tenant's ops_per_second",
            ["tenant", "plugin"],
            registry=registry,
        )
        self._reloads = counter(
            "wasmkv_reloads",
            "Plugin reloads by outcome (ok, failed)",
            ["tenant", "plugin", "outcome"],
            registry=registry,
        )
        self._http = counter(
            "wasmkv_http_requests",
            "HTTP requests by route and status code (401, 403, 413, 429 are the server's own refusals)",
            ["route", "code"],
            registry=registry,
        )
        self._usage = _Usage(store, tenants, core.GaugeMetricFamily)
        if registry is not None:
            registry.register(self._usage)
        self._children: dict[tuple[object, ...], Any] = {}
        self._children_lock = threading.Lock()

    @classmethod
    def create(cls, store: kv.KvStore, tenants: Callable[[], Iterable[str]]) -> ServeMetrics | None:
        """The metrics, or None (one warning line) when prometheus-client is not installed."""
        try:
            return cls(store, tenants)
        except ImportError:
            _log.warning("prometheus-client is not installed: /metrics is off (pip install 'wasmkv[serve]')")
            return None

    def _child(self, metric: Any, labels: tuple[str, ...]) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            with self._children_lock:
                child = self._children.get(key)
                if child is None:
                    child = self._children[key] = metric.labels(*labels)
        return child

    # -- Observer ---------------------------------------------------------------------------------

    def call_done(self, record: CallRecord) -> None:
        """Count one finished call: outcome, duration, KV operations and their refusals."""
        tenant, plugin = record.tenant, record.plugin
        export = UNKNOWN_EXPORT_LABEL if record.outcome == "unknown_export" else record.export
        self._child(self._calls, (tenant, plugin, export, record.outcome)).inc()
        self._child(self._seconds, (tenant, plugin, export)).observe(record.seconds)
        for (op, outcome), count in record.kv_ops.items():
            self._child(self._kv_ops, (tenant, plugin, op, outcome)).inc(count)
            if outcome == "quota_exceeded":
                self._child(self._quota, (tenant, plugin)).inc(count)
            elif outcome == "rate_limited":
                self._child(self._rate, (tenant, plugin)).inc(count)

    def reloaded(self, plugin: str, tenant: str, outcome: str) -> None:
        """Count one reload of `plugin` that ended as "ok" or "failed"."""
        self._child(self._reloads, (tenant, plugin, outcome)).inc()

    # -- the server's own ---------------------------------------------------------------------------

    def request(self, route: str, code: int) -> None:
        """Count one HTTP answer; `route` is a route's template, never a path from the request."""
        self._child(self._http, (route, str(code))).inc()

    def render(self) -> bytes:
        """The text a scrape gets (reads the store for tenant usage: call it off the event loop)."""
        client = self._client
        registry = self._registry
        if registry is None:
            multiprocess = importlib.import_module("prometheus_client.multiprocess")
            registry = client.CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            registry.register(self._usage)
        text: bytes = client.generate_latest(registry)
        return text
