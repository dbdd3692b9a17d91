"""Prometheus metrics of watched pools, with conventional names and base units.

Single process: :class:`PoolCollector` is a custom collector that reads each watch's
``stats()`` at scrape time, so the checkout path pays nothing for metrics.

Under gunicorn (``PROMETHEUS_MULTIPROC_DIR`` set) every worker has its own pools and
prometheus-client aggregates across processes only the values written to its multiprocess
files, which custom collectors do not reach. :class:`MultiprocessMirror` therefore copies
each process's figures into ordinary metric objects (gauges as ``livesum``/``livemax``,
counter deltas, histogram bucket deltas observed at each bucket's upper bound, so the
``_sum`` is an upper estimate) when a scrape is served and, throttled, after requests.

Names (all prefixed ``pooltender_``, label ``engine``):

============================================  =========  ======================================
pool_connections{state=checked_out|idle}      gauge      connections by state now
pool_size / pool_max_overflow                  gauge      configured sizes
pool_overflow_in_use                           gauge      overflow connections open now
pool_checked_out_high_water                    gauge      most connections checked out at once
pool_checkouts_total                           counter
pool_connects_total                            counter    new DBAPI connections opened
pool_invalidations_total                       counter    connections discarded as broken
pool_ping_failures_total                       counter    dead connections caught at checkout
pool_recycles_total                            counter    closed for age (pool_recycle)
pool_checkout_timeouts_total                   counter    waits that ran out (incl. shed)
pool_second_checkouts_total                    counter    a unit of work took a 2nd connection
pool_leaks_reported_total                      counter    held past the leak threshold
pool_checkout_wait_seconds                     histogram  time blocked waiting for a connection
pool_hold_seconds                              histogram  time a connection was checked out
requests_shed_total                            counter    requests answered 503 (no connection)
requests_leaked_connection_total               counter    requests ending with a connection out
requests_unavailable_total                     counter    requests answered 503 (database down)
admission_limit                                gauge      admission concurrency limit now
admission_in_flight                            gauge      requests admitted, not yet finished
admission_queue_length                         gauge      requests waiting for admission
admission_admitted_total                       counter    requests admitted
admission_shed_total{reason}                   counter    503s: queue_full, standing_queue,
                                                          queue_timeout
admission_queue_wait_seconds{outcome}          histogram  wait before admitted / shed
============================================  =========  ======================================

The admission metrics (no ``engine`` label) come from :mod:`pooltender.admission.metrics`.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector

from pooltender.stats import HistogramSnapshot, PoolStats

__all__ = [
    "MultiprocessMirror",
    "PoolCollector",
    "ThrottledMirror",
    "multiprocess_enabled",
    "observe_new_buckets",
    "prometheus_buckets",
]

#: (metric name without prefix, PoolStats attribute, help)
_COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("pool_checkouts", "checkouts", "Connections checked out of the pool."),
    ("pool_connects", "connects", "New DBAPI connections opened."),
    ("pool_invalidations", "invalidations", "Connections discarded as broken."),
    ("pool_ping_failures", "ping_failures", "Dead connections caught at checkout."),
    ("pool_recycles", "recycles", "Connections closed for age (pool_recycle)."),
    ("pool_checkout_timeouts", "checkout_timeouts", "Checkouts that gave up waiting."),
    ("pool_second_checkouts", "second_checkouts", "Second connections taken by one owner."),
    ("pool_leaks_reported", "leaks_reported", "Connections held past the leak threshold."),
)
_HISTOGRAMS: tuple[tuple[str, str, str], ...] = (
    ("pool_checkout_wait_seconds", "checkout_wait", "Time blocked waiting for a connection."),
    ("pool_hold_seconds", "hold_time", "Time a connection stayed checked out."),
)

StatsSource = Callable[[], Mapping[str, PoolStats]]


def multiprocess_enabled() -> bool:
    """True under prometheus-client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``)."""
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def _gauges(stats: PoolStats) -> Iterator[tuple[str, str, dict[str, str], float]]:
    yield "pool_connections", "Connections by state.", {"state": "checked_out"}, stats.checked_out
    if stats.idle is not None:
        yield "pool_connections", "Connections by state.", {"state": "idle"}, stats.idle
    if stats.pool_size is not None:
        yield "pool_size", "Configured pool_size.", {}, stats.pool_size
    if stats.max_overflow is not None:
        yield "pool_max_overflow", "Configured max_overflow.", {}, stats.max_overflow
    if stats.overflow_in_use is not None:
        yield "pool_overflow_in_use", "Overflow connections open.", {}, stats.overflow_in_use
    yield (
        "pool_checked_out_high_water",
        "Most connections checked out at once.",
        {},
        stats.high_water_checked_out,
    )


def prometheus_buckets(snapshot: HistogramSnapshot) -> list[tuple[str, float]]:
    """``snapshot``'s cumulative ``(le, count)`` buckets as a ``HistogramMetricFamily`` takes
    them, the last one ``+Inf`` (shared with :mod:`pooltender.admission.metrics`)."""
    pairs = [(repr(float(le)), float(n)) for le, n in snapshot.cumulative()[:-1]]
    pairs.append(("+Inf", float(snapshot.count)))
    return pairs


def observe_new_buckets(
    metric: Histogram, hist: HistogramSnapshot, before: Sequence[int] | None
) -> tuple[int, ...]:
    """Observe on ``metric`` what ``hist`` counted since the per-bucket counts ``before``
    (None: nothing yet), each at its bucket's upper bound (twice the top bound for +Inf), so
    a mirrored ``_sum`` is an upper estimate; returns the counts to pass as ``before`` next."""
    bounds = hist.bounds
    prior = (0,) * len(hist.counts) if before is None else before
    for index, (count, seen) in enumerate(zip(hist.counts, prior, strict=True)):
        value = bounds[index] if index < len(bounds) else bounds[-1] * 2
        for _ in range(count - seen):
            metric.observe(value)
    return tuple(hist.counts)


class ThrottledMirror:
    """The sync discipline of a multiprocess mirror: :meth:`sync` copies (:meth:`_copy`)
    when forced (before a scrape, waiting for another thread's copy) or at most once per
    ``min_interval`` seconds (after requests, never waiting)."""

    def __init__(self, min_interval: float) -> None:
        self._min_interval = min_interval
        self._last = 0.0
        self._lock = threading.Lock()

    def sync(self, *, force: bool = False) -> None:
        """Bring the metric objects up to date with this process's figures."""
        now = time.monotonic()
        if not force and now - self._last < self._min_interval:
            return
        if not self._lock.acquire(blocking=force):
            return
        try:
            self._last = now
            self._copy()
        finally:
            self._lock.release()

    def _copy(self) -> None:  # pragma: no cover - each mirror defines it
        raise NotImplementedError


class PoolCollector(Collector):
    """Reads ``source()`` (engine name -> PoolStats) at every scrape."""

    def __init__(
        self, source: StatsSource, extra: Callable[[], Mapping[str, float]] | None = None
    ) -> None:
        self._source = source
        self._extra = extra

    def collect(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily | HistogramMetricFamily]:
        snapshot = self._source()
        gauges: dict[str, GaugeMetricFamily] = {}
        for engine, stats in snapshot.items():
            for name, help_text, labels, value in _gauges(stats):
                family = gauges.get(name)
                if family is None:
                    family = gauges[name] = GaugeMetricFamily(
                        f"pooltender_{name}", help_text, labels=["engine", *labels]
                    )
                family.add_metric([engine, *labels.values()], value)
        yield from gauges.values()
        for name, attr, help_text in _COUNTERS:
            counter = CounterMetricFamily(f"pooltender_{name}", help_text, labels=["engine"])
            for engine, stats in snapshot.items():
                counter.add_metric([engine], getattr(stats, attr))
            yield counter
        for name, attr, help_text in _HISTOGRAMS:
            histogram = HistogramMetricFamily(f"pooltender_{name}", help_text, labels=["engine"])
            for engine, stats in snapshot.items():
                hist: HistogramSnapshot = getattr(stats, attr)
                histogram.add_metric([engine], prometheus_buckets(hist), sum_value=hist.sum)
            yield histogram
        if self._extra is not None:
            for name, value in self._extra().items():
                counter = CounterMetricFamily(f"pooltender_{name}", name.replace("_", " ") + ".")
                counter.add_metric([], value)
                yield counter


class MultiprocessMirror(ThrottledMirror):
    """Copies this process's figures into multiprocess-mode metric objects.

    Call :meth:`sync` before serving a scrape and (cheaply throttled) after requests.
    """

    def __init__(
        self,
        source: StatsSource,
        extra: Callable[[], Mapping[str, float]] | None = None,
        *,
        registry: CollectorRegistry | None = None,
        min_interval: float = 1.0,
    ) -> None:
        super().__init__(min_interval)
        self._source = source
        self._extra = extra
        self._seen: dict[tuple[str, str], float] = {}
        self._seen_buckets: dict[tuple[str, str], tuple[int, ...]] = {}
        self._gauges: dict[str, Gauge] = {}
        self._gauge_labels: dict[str, tuple[str, ...]] = {}
        self._counters = {
            name: Counter(f"pooltender_{name}", help_text, ["engine"], registry=registry)
            for name, _attr, help_text in _COUNTERS
        }
        self._histograms: dict[str, Histogram] = {}
        self._registry = registry
        self._extra_counters: dict[str, Counter] = {}

    def _gauge(self, name: str, help_text: str, labels: tuple[str, ...]) -> Gauge:
        gauge = self._gauges.get(name)
        if gauge is None:
            high_water = name == "pool_checked_out_high_water"
            gauge = self._gauges[name] = Gauge(
                f"pooltender_{name}",
                help_text,
                ["engine", *labels],
                multiprocess_mode="livemax" if high_water else "livesum",
                registry=self._registry,
            )
        return gauge

    def _histogram(self, name: str, help_text: str, bounds: tuple[float, ...]) -> Histogram:
        histogram = self._histograms.get(name)
        if histogram is None:
            histogram = self._histograms[name] = Histogram(
                f"pooltender_{name}",
                help_text,
                ["engine"],
                buckets=bounds,
                registry=self._registry,
            )
        return histogram

    def _copy(self) -> None:
        for engine, stats in self._source().items():
            self._sync_engine(engine, stats)
        if self._extra is not None:
            for name, value in self._extra().items():
                counter = self._extra_counters.get(name)
                if counter is None:
                    counter = self._extra_counters[name] = Counter(
                        f"pooltender_{name}",
                        name.replace("_", " ") + ".",
                        registry=self._registry,
                    )
                delta = value - self._seen.get(("", name), 0.0)
                if delta > 0:
                    counter.inc(delta)
                self._seen[("", name)] = value

    def _sync_engine(self, engine: str, stats: PoolStats) -> None:
        for name, help_text, labels, value in _gauges(stats):
            self._gauge(name, help_text, tuple(labels)).labels(engine, *labels.values()).set(value)
        for name, attr, _help in _COUNTERS:
            value = float(getattr(stats, attr))
            delta = value - self._seen.get((engine, name), 0.0)
            if delta > 0:
                self._counters[name].labels(engine).inc(delta)
            self._seen[(engine, name)] = value
        for name, attr, help_text in _HISTOGRAMS:
            hist: HistogramSnapshot = getattr(stats, attr)
            bounds = tuple(float(b) for b in hist.bounds)
            metric = self._histogram(name, help_text, bounds).labels(engine)
            key = (engine, name)
            self._seen_buckets[key] = observe_new_buckets(metric, hist, self._seen_buckets.get(key))
