"""The admission queue-wait histograms from the service's ``/metrics`` (Prometheus text), and a
percentile read from the difference of two scrapes, so a phase gets its own figures although
the service's counters run across phases.

Parsing is prometheus-client's own (``prometheus_client.parser``). A percentile is given two
ways: the bucket holding it (``(lower, upper]``: the conservative reading, the upper edge
never understates the wait) and a value interpolated linearly inside that bucket, as
Prometheus' ``histogram_quantile`` does (it assumes the observations spread evenly across
the bucket: an estimate, good to the bucket's width). The admission histograms' edges are
fine around 0.1 s (0.075 / 0.1 / 0.125 / 0.15), and 0.1 s is an edge, so both readings agree
on whether a p99 is within issue 10's 100 ms.
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


def bucket_of(cumulative: dict[float, float], q: float) -> tuple[float, float] | None:
    """``(lower, upper)`` edges (seconds) of the bucket holding the q-quantile; None when the
    histogram is empty. The first bucket's lower edge is 0."""
    upper = quantile(cumulative, q)
    if upper is None:
        return None
    below = [le for le in cumulative if le < upper]
    return (max(below) if below else 0.0, upper)


def interpolated(cumulative: dict[float, float], q: float) -> float | None:
    """The q-quantile (seconds) interpolated linearly inside its bucket (Prometheus'
    ``histogram_quantile``); the lower edge when it falls in the +Inf bucket; None when empty."""
    edges = sorted(cumulative)
    if not edges or cumulative[edges[-1]] <= 0:
        return None
    rank = q * cumulative[edges[-1]]
    lower, below = 0.0, 0.0
    for le in edges:
        count = cumulative[le]
        if count >= rank:
            if math.isinf(le):
                return lower
            inside = count - below
            return le if inside <= 0 else lower + (le - lower) * (rank - below) / inside
        lower, below = le, count
    return None


def wait_figures(delta: dict[str, Any]) -> dict[str, Any]:
    """Per outcome: the count, and p50 / p99 in ms both as their bucket's upper edge
    (``p*_ms_le``), the bucket (``p*_bucket_ms``) and interpolated inside it (``p*_ms``);
    and the sheds by reason."""
    out: dict[str, Any] = {"shed_by_reason": {k: int(v) for k, v in delta["shed"].items() if v}}
    for outcome, cumulative in delta["buckets"].items():
        count = max(cumulative.values()) if cumulative else 0
        figures: dict[str, Any] = {"count": int(count)}
        for name, q in (("p50", 0.5), ("p99", 0.99)):
            edge, bucket, value = (
                quantile(cumulative, q),
                bucket_of(cumulative, q),
                interpolated(cumulative, q),
            )
            figures[f"{name}_ms_le"] = None if edge is None else edge * 1e3
            figures[f"{name}_bucket_ms"] = None if bucket is None else [b * 1e3 for b in bucket]
            figures[f"{name}_ms"] = None if value is None else round(value * 1e3, 2)
        out[outcome] = figures
    return out
