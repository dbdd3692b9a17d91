"""The admission queue-wait histograms from the service's ``/metrics`` (Prometheus text), and a
percentile read from the difference of two scrapes, so a phase gets its own figures although
the service's counters run across phases.

Parsing is prometheus-client's own (``prometheus_client.parser``). A percentile from bucket
counts is the upper edge of the first bucket whose cumulative count reaches q of the total --
the conservative reading of a histogram (Prometheus' ``histogram_quantile`` interpolates
inside the bucket instead; the upper edge never understates the wait).
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

WAIT_METRIC = "pooltender_admission_queue_wait_seconds"
SHED_METRIC = "pooltender_admission_shed"


def scrape(text: str) -> dict[str, Any]:
    """``{"buckets": {outcome: {le: count}}, "shed": {reason: count}}`` from a scrape."""
    buckets: dict[str, dict[float, float]] = defaultdict(dict)
    shed: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == f"{WAIT_METRIC}_bucket":
                outcome = sample.labels.get("outcome", "all")
                le = float(sample.labels["le"])
                buckets[outcome][le] = buckets[outcome].get(le, 0.0) + sample.value
            elif sample.name == f"{SHED_METRIC}_total":
                reason = sample.labels.get("reason", "all")
                shed[reason] = shed.get(reason, 0.0) + sample.value
    return {"buckets": {k: dict(v) for k, v in buckets.items()}, "shed": shed}


def difference(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Counts added between two scrapes."""
    buckets: dict[str, dict[float, float]] = {}
    for outcome, counts in after["buckets"].items():
        old = before["buckets"].get(outcome, {})
        buckets[outcome] = {le: n - old.get(le, 0.0) for le, n in counts.items()}
    shed = {r: n - before["shed"].get(r, 0.0) for r, n in after["shed"].items()}
    return {"buckets": buckets, "shed": shed}


def quantile(cumulative: dict[float, float], q: float) -> float | None:
    """Upper bucket edge holding the q-quantile (seconds); None when the histogram is empty."""
    if not cumulative:
        return None
    edges = sorted(cumulative)
    total = cumulative[edges[-1]]
    if total <= 0:
        return None
    for le in edges:
        if cumulative[le] >= q * total:
            return le if not math.isinf(le) else float("inf")
    return None


def wait_figures(delta: dict[str, Any]) -> dict[str, Any]:
    """Count and p50 / p99 (upper edges, ms) per outcome, and sheds by reason."""
    out: dict[str, Any] = {"shed_by_reason": {k: int(v) for k, v in delta["shed"].items() if v}}
    for outcome, cumulative in delta["buckets"].items():
        count = max(cumulative.values()) if cumulative else 0
        p50, p99 = quantile(cumulative, 0.5), quantile(cumulative, 0.99)
        out[outcome] = {
            "count": int(count),
            "p50_ms_le": None if p50 is None else p50 * 1e3,
            "p99_ms_le": None if p99 is None else p99 * 1e3,
        }
    return out
