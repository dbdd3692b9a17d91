"""Prometheus metrics of an admission limiter (names prefixed ``pooltender_``).

==================================  =========  ============================================
admission_limit                     gauge      the current concurrency limit
admission_in_flight                 gauge      requests admitted and not yet finished
admission_queue_length              gauge      requests waiting for a slot
admission_admitted_total            counter    requests admitted
admission_shed_total{reason}        counter    requests refused (503), by reason
admission_queue_wait_seconds        histogram  wait before admission or refusal, label
                                               ``outcome`` = admitted | shed
==================================  =========  ============================================

Single process: :class:`AdmissionCollector` reads ``stats()`` at scrape time. Under
prometheus-client's multiprocess mode (gunicorn), :class:`AdmissionMirror` copies the
figures into multiprocess metric objects (gauges ``livesum``, so the fleet's limit and
in-flight add up across workers; counter and histogram deltas), like
:class:`pooltender.metrics.MultiprocessMirror` does for pools.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from pooltender.admission.limiter import QUEUE_WAIT_BUCKETS, AdmissionStats
from pooltender.metrics import ThrottledMirror, observe_new_buckets, prometheus_buckets

__all__ = ["AdmissionCollector", "AdmissionMirror"]

_GAUGES = (
    ("admission_limit", "limit", "Current admission concurrency limit."),
    ("admission_in_flight", "in_flight", "Requests admitted and not yet finished."),
    ("admission_queue_length", "queue_length", "Requests waiting for an admission slot."),
)
_WAIT = "admission_queue_wait_seconds"
_WAIT_HELP = "Time a request waited before it was admitted or shed."


class AdmissionCollector(Collector):
    """Reads ``source()`` (an :class:`AdmissionStats`) at every scrape."""

    def __init__(self, source: Callable[[], AdmissionStats]) -> None:
        self._source = source

    def collect(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily | HistogramMetricFamily]:
        stats = self._source()
        for name, attr, help_text in _GAUGES:
            yield GaugeMetricFamily(f"pooltender_{name}", help_text, value=getattr(stats, attr))
        yield CounterMetricFamily(
            "pooltender_admission_admitted", "Requests admitted.", value=stats.admitted
        )
        shed = CounterMetricFamily(
            "pooltender_admission_shed", "Requests shed (503) by reason.", labels=["reason"]
        )
        for reason, count in stats.shed.items():
            shed.add_metric([reason], count)
        yield shed
        wait = HistogramMetricFamily(f"pooltender_{_WAIT}", _WAIT_HELP, labels=["outcome"])
        for outcome, hist in (("admitted", stats.queue_wait), ("shed", stats.shed_wait)):
            wait.add_metric([outcome], prometheus_buckets(hist), sum_value=hist.sum)
        yield wait


class AdmissionMirror(ThrottledMirror):
    """Copies one process's admission figures into multiprocess-mode metric objects.

    Call :meth:`sync` before serving a scrape (``force=True``) and after requests (throttled
    to once per ``min_interval`` seconds, without waiting for another thread's sync).
    """

    def __init__(
        self,
        source: Callable[[], AdmissionStats],
        *,
        registry: CollectorRegistry | None = None,
        min_interval: float = 1.0,
    ) -> None:
        super().__init__(min_interval)
        self._source = source
        self._gauges = {
            name: Gauge(f"pooltender_{name}", help_text, multiprocess_mode="livesum",
                        registry=registry)
            for name, _attr, help_text in _GAUGES
        }  # fmt: skip
        self._admitted = Counter(
            "pooltender_admission_admitted", "Requests admitted.", registry=registry
        )
        self._shed = Counter(
            "pooltender_admission_shed", "Requests shed (503) by reason.", ["reason"],
            registry=registry,
        )  # fmt: skip
        self._wait = Histogram(
            f"pooltender_{_WAIT}", _WAIT_HELP, ["outcome"], buckets=QUEUE_WAIT_BUCKETS,
            registry=registry,
        )  # fmt: skip
        self._seen_admitted = 0
        self._seen_shed: dict[str, int] = {}
        self._seen_buckets: dict[str, tuple[int, ...]] = {}

    def _copy(self) -> None:
        stats = self._source()
        for name, attr, _help in _GAUGES:
            self._gauges[name].set(getattr(stats, attr))
        if stats.admitted > self._seen_admitted:
            self._admitted.inc(stats.admitted - self._seen_admitted)
            self._seen_admitted = stats.admitted
        for reason, count in stats.shed.items():
            seen = self._seen_shed.get(reason, 0)
            self._shed.labels(reason)  # every reason appears, at 0 until one happens
            if count > seen:
                self._shed.labels(reason).inc(count - seen)
                self._seen_shed[reason] = count
        for outcome, hist in (("admitted", stats.queue_wait), ("shed", stats.shed_wait)):
            self._seen_buckets[outcome] = observe_new_buckets(
                self._wait.labels(outcome), hist, self._seen_buckets.get(outcome)
            )
