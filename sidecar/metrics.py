"""Prometheus metrics, built per app so tests can run many apps side by side.

Names and labels are the seed's (`cache_hits_total{key_prefix}` ...). Labels are bounded:
a rule's key prefix or name, an operation, a status code; never an id or a token.

With `SIDECAR_WORKERS` > 1 the supervisor sets `PROMETHEUS_MULTIPROC_DIR` for every process
before prometheus-client is imported: values then live in per-process files there, and the
supervisor's scrape (`workers_registry`) merges them. Counters and histograms are summed
(a dead worker's counts stay in the sum, so totals never go backwards); the two gauges are
`livemax`: a dead worker's value is dropped and the others keep the one-process meaning
(`cache_breaker_open` 1 while any worker's breaker is open, `config_info{hash}` 1 for each
rules hash some worker serves, so a half-done reload shows as two hashes);
`cache_backend_up` is `livemin` (0 while any live worker's breaker is open). `process_*` and
`python_info` come from prometheus-client's collectors in one process; with workers the
supervisor's scrape adds them per process (`process_metrics.py`).
"""

from __future__ import annotations

import asyncio
import os
from bisect import bisect_left
from typing import Any

from opentelemetry.metrics import Meter, NoOpMeter
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.multiprocess import MultiProcessCollector

from sidecar.process_metrics import Processes, WorkerProcesses
from sidecar.version import version

# From 100 µs: a Redis round trip on a pod's network is well under the 5 ms default floor.
CACHE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                 0.25, 0.5, 1.0)
REQUEST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0, 30.0)
NO_RULE = "none"
BAD_REQUEST_KINDS = ("bad-request-line", "bad-header", "too-large", "other")


class Metrics:
    """Prometheus families; the seed's three are mirrored to an OTLP meter when one is set."""

    def __init__(self, meter: Meter | None = None) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # `*_created` series double the scrape for no use here
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.hits = Counter("cache_hits", "Requests answered from the cache.",
                            ["key_prefix"], registry=r)
        self.misses = Counter("cache_misses", "Cacheable requests the cache could not answer.",
                              ["key_prefix"], registry=r)
        self.cache_latency = Histogram(
            "cache_latency_seconds", "Duration of cache operations.",
            ["operation", "key_prefix"], buckets=CACHE_BUCKETS, registry=r)
        self.cache_errors = Counter(
            "cache_errors", "Cache operations that failed or were skipped by the breaker; "
            "the request went upstream.", ["operation", "reason"], registry=r)
        self.breaker_open = Gauge(
            "cache_breaker_open", "1 while the cache circuit breaker stops Redis calls.",
            registry=r, multiprocess_mode="livemax")
        self.bypass = Counter("cache_bypass", "Requests that did not use the cache, by reason.",
                              ["reason"], registry=r)
        self.requests = Histogram(
            "sidecar_request_duration_seconds", "Proxied request duration.",
            ["rule", "cache", "status"], buckets=REQUEST_BUCKETS, registry=r)
        self.upstream = Histogram(
            "sidecar_upstream_duration_seconds", "Time to the upstream's response headers.",
            ["rule"], buckets=REQUEST_BUCKETS, registry=r)
        self.upstream_errors = Counter(
            "sidecar_upstream_errors", "Upstream failures mapped to 502/504.",
            ["rule", "kind"], registry=r)
        self.not_stored = Counter(
            "cache_not_stored", "Responses to cacheable requests that were not stored.",
            ["key_prefix", "reason"], registry=r)
        self.stale = Counter("cache_stale_served", "Stale entries served, by reason.",
                             ["key_prefix", "reason"], registry=r)
        self.revalidations = Counter(
            "cache_revalidations", "Conditional GETs for stale entries with a validator, by "
            "result (304: refreshed without the body; 200: replaced; other; error).",
            ["key_prefix", "result"], registry=r)
        self.coalesced = Counter(
            "cache_coalesced", "Requests that waited for another's upstream fetch.",
            ["key_prefix", "scope"], registry=r)
        self.invalidations = Counter(
            "cache_invalidations", "Entities erased, by kind (write, deferred, purge).",
            ["kind"], registry=r)
        self.near_hits = Counter(
            "cache_near_hits", "Hits answered by the in-process near tier (also counted in "
            "cache_hits_total).", ["key_prefix"], registry=r)
        self.near_flushes = Counter(
            "cache_near_flushes", "Near tier flushes: the invalidation channel was lost or "
            "(re)established, or the Redis breaker opened.", registry=r)
        self.conservative_erases = Counter(
            "cache_conservative_erases", "Writes to an id the sidecar could not read, which "
            "erased every entity under the rule's prefix.", ["key_prefix"], registry=r)
        self.purges = Counter("cache_purges", "Purge requests on the admin port, by result.",
                              ["scope", "result"], registry=r)
        self.decrypt_failures = Counter(
            "cache_decrypt_failures", "Stored values that did not open (wrong key, tampering).",
            registry=r)
        self.audit_failures = Counter(
            "cache_audit_failures", "Audit lines of cached reads that could not be written.",
            registry=r)
        self.reloads = Counter("config_reload", "Rule reload attempts.", ["result"],
                               registry=r)
        self.bad_requests = Counter(
            "sidecar_bad_requests", "Requests the HTTP parser refused with a 400, by kind.",
            ["kind"], registry=r)
        for kind in BAD_REQUEST_KINDS:  # every series from the start, at 0
            self.bad_requests.labels(kind)
        self.config_info = Gauge("config_info", "The loaded rules file (hash label).",
                                 ["hash"], registry=r, multiprocess_mode="livemax")
        self.backend_up = Gauge(
            "cache_backend_up", "1 while the cache backend is usable (its health watcher says "
            "up and the breaker is closed), 0 while requests are served from the upstream "
            "alone (fail-open); absent with the cache off.", ["backend"],
            registry=r, multiprocess_mode="livemin")
        self.build_info = Gauge("sidecar_build_info", "The running sidecar's version.",
                                ["version"], registry=r, multiprocess_mode="livemax")
        self.build_info.labels(version()).set(1)
        if not multiprocess():  # with workers, the supervisor's scrape adds them per process
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)

        self._hit_children: dict[str, Any] = {}
        self._near_children: dict[str, Any] = {}
        self._latency_children: dict[tuple[str, str], Any] = {}
        self._request_children: dict[tuple[str, str, int], Any] = {}
        self._bounds = REQUEST_BUCKETS
        self._counts: dict[Any, int] = {}
        self._durations: dict[tuple[str, str, int], list[int]] = {}
        self._duration_sums: dict[tuple[str, str, int], float] = {}
        self._scheduled = False
        # No OTLP exporter: skip the no-op meter's calls on the hot path entirely.
        self._otel = meter is not None and not isinstance(meter, NoOpMeter)
        meter = meter or NoOpMeter("sidecar")
        self._otel_hits = meter.create_counter("cache_hits", description="Cache hits.")
        self._otel_misses = meter.create_counter("cache_misses", description="Cache misses.")
        self._otel_latency = meter.create_histogram(
            "cache_latency_seconds", unit="s", description="Duration of cache operations.")

    def rules_loaded(self, digest: str, previous: str | None = None) -> None:
        """`config_info{hash}` follows the rules in force: the new hash 1, the old one gone.

        Multiprocess files cannot drop a series (prometheus-client warns and keeps it), so
        there the old hash is set to 0 first; the drift alert counts only `== 1`.
        """
        if previous is not None and previous != digest:
            self.config_info.labels(previous).set(0)
            if not multiprocess():
                self.config_info.remove(previous)
        self.config_info.labels(digest).set(1)

    # Label children resolved once per label set: `.labels()` costs a lock and a tuple
    # hash on every hit otherwise. The label values are bounded (rules, outcomes, statuses).

    def hit(self, key_prefix: str) -> None:
        child = self._hit_children.get(key_prefix)
        if child is None:
            child = self._hit_children[key_prefix] = self.hits.labels(key_prefix)
        self._count(child)
        if self._otel:
            self._otel_hits.add(1, {"key_prefix": key_prefix})

    def near_hit(self, key_prefix: str) -> None:
        child = self._near_children.get(key_prefix)
        if child is None:
            child = self._near_children[key_prefix] = self.near_hits.labels(key_prefix)
        self._count(child)

    def miss(self, key_prefix: str) -> None:
        self.misses.labels(key_prefix).inc()
        if self._otel:
            self._otel_misses.add(1, {"key_prefix": key_prefix})

    def cache_time(self, operation: str, key_prefix: str, seconds: float) -> None:
        key = (operation, key_prefix)
        child = self._latency_children.get(key)
        if child is None:
            child = self._latency_children[key] = self.cache_latency.labels(*key)
        child.observe(seconds)
        if self._otel:
            self._otel_latency.record(seconds, {"operation": operation, "key_prefix": key_prefix})

    def request_time(self, rule: str, cache: str, status: int, seconds: float) -> None:
        key = (rule, cache, status)
        pending = self._durations.get(key)
        if pending is None:
            pending = self._durations[key] = [0] * (len(self._bounds) + 1)
        pending[bisect_left(self._bounds, seconds)] += 1  # the first bucket with le >= it
        self._duration_sums[key] = self._duration_sums.get(key, 0.0) + seconds
        if not self._scheduled:
            self._schedule()

    # The request path's counts (hits, near hits, request durations) are added to
    # prometheus-client's values once per event-loop iteration, not once per request: each
    # of its updates takes a lock, and a histogram's walks its buckets. A scrape flushes
    # first (admin.py); a worker's files are at most one iteration behind.
    def flush(self) -> None:
        self._scheduled = False
        counts, self._counts = self._counts, {}
        for child, n in counts.items():
            child.inc(n)
        durations, self._durations = self._durations, {}
        sums, self._duration_sums = self._duration_sums, {}
        for key, pending in durations.items():
            child = self._request_children.get(key)
            if child is None:
                rule, cache, status = key
                child = self._request_children[key] = self.requests.labels(
                    rule, cache, str(status))
            add_observations(child, pending, sums[key])

    def _count(self, child: Any) -> None:
        counts = self._counts
        counts[child] = counts.get(child, 0) + 1
        if not self._scheduled:
            self._schedule()

    def _schedule(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a script, a unit test): nothing to batch with
            self.flush()
            return
        self._scheduled = True
        loop.call_soon(self.flush)


def add_observations(child: Any, per_bucket: list[int], total: float) -> None:
    """Observations counted per bucket (`REQUEST_BUCKETS`, then +Inf) added to a histogram
    child as `observe` adds them one at a time: to the bucket's value and to the sum (the
    scrape makes the buckets cumulative). prometheus-client's own attributes: a unit test
    compares the result with `observe`'s, so an upgrade that changes them fails there."""
    buckets = child._buckets
    for i, n in enumerate(per_bucket):
        if n:
            buckets[i].inc(n)
    child._sum.inc(total)


def multiprocess() -> bool:
    """Values go to `PROMETHEUS_MULTIPROC_DIR` files (set only by the workers' supervisor)."""
    return "PROMETHEUS_MULTIPROC_DIR" in os.environ


def workers_registry(path: str, processes: Processes = tuple) -> CollectorRegistry:
    """One scrape's registry: every process's files in `path`, merged (built per scrape),
    and the `process_*` series of each of `processes`."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path)  # type: ignore[no-untyped-call]
    registry.register(WorkerProcesses(processes))
    PlatformCollector(registry=registry)
    return registry
