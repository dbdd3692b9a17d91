"""Per-request samples of a load run (from bench/wrk/coupons.lua or bench/openloop.py) and
what bench/service_load.py reports from them.

A sample line is ``kind status send_us recv_us error_code`` (CLOCK_MONOTONIC microseconds);
lines starting with ``#`` carry the generator's own counters as ``key=value`` pairs.

Definitions (docs/benchmarks.md, "Service benchmark"):

* the *window* is ``[start + warmup, start + warmup + duration]``;
* *goodput*: responses 200/201 received inside the window, per second of window;
* latency percentiles are over requests *sent* (or, open loop, *due*) inside the window:
  *admitted* = every response but a 503 (the request was let in and answered), *shed* = 503;
  requests still unanswered at the end (status -1, open loop only) are counted, not timed;
* errors by kind: each non-2xx status with the error code of its JSON body
  (``500 internal_error``, ``503 service_unavailable``, ``409 already_redeemed`` ...),
  transport errors (status 0) by exception name.

Percentiles use the nearest-rank method (the smallest value with at least q of the values at
or below it), as HdrHistogram and wrk report them.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GOOD = (200, 201)
SHED = 503


@dataclass(frozen=True)
class Sample:
    kind: str
    status: int
    send: float  # seconds, CLOCK_MONOTONIC
    recv: float
    code: str

    @property
    def latency(self) -> float:
        return self.recv - self.send


@dataclass
class RunSamples:
    samples: list[Sample] = field(default_factory=list)
    meta: dict[str, str] = field(default_factory=dict)


def read_samples(path: Path) -> RunSamples:
    """Parse a sample file; a missing file (the generator died) gives no samples."""
    run = RunSamples()
    if not path.exists():
        return run
    for line in path.read_text().splitlines():
        if not line:
            continue
        if line.startswith("#"):
            for word in line.split()[1:]:
                key, sep, value = word.partition("=")
                if sep:
                    run.meta[key] = value
            continue
        parts = line.split()
        if len(parts) < 4:
            continue
        kind, status, send, recv = parts[0], int(parts[1]), int(parts[2]), int(parts[3])
        code = parts[4] if len(parts) > 4 else "-"
        run.samples.append(Sample(kind, status, send / 1e6, recv / 1e6, code))
    return run


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of ``values`` (q in 0..1); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


@dataclass
class Summary:
    """What one run's clients saw inside the window."""

    window_s: float
    goodput: float
    answered: int
    admitted_p50_ms: float | None
    admitted_p99_ms: float | None
    shed: int
    shed_p99_ms: float | None
    unfinished: int
    by_status: dict[str, int]
    by_kind: dict[str, int]
    server_errors_non_503: int
    conflicts_409: int
    mysql_1040_in_bodies: int
    admitted_latencies_ms: list[float] = field(repr=False, default_factory=list)

    def as_json(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out.pop("admitted_latencies_ms")
        out["latency_histogram_ms"] = log_histogram(self.admitted_latencies_ms)
        return out


def summarize(run: RunSamples, window_start: float, window_end: float) -> Summary:
    """The run's figures inside ``[window_start, window_end]`` (see the module doc)."""
    window = window_end - window_start
    inside_recv = [s for s in run.samples if window_start <= s.recv <= window_end]
    good = sum(1 for s in inside_recv if s.status in GOOD)
    sent = [s for s in run.samples if window_start <= s.send <= window_end]
    admitted = [s.latency * 1e3 for s in sent if s.status > 0 and s.status != SHED]
    shed = [s.latency * 1e3 for s in sent if s.status == SHED]
    statuses: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    for s in sent:
        kinds[s.kind] += 1
        if s.status in GOOD:
            statuses[str(s.status)] += 1
        else:
            statuses[f"{s.status} {s.code}"] += 1
    return Summary(
        window_s=window,
        goodput=good / window if window > 0 else 0.0,
        answered=sum(1 for s in sent if s.status > 0),
        admitted_p50_ms=percentile(admitted, 0.50),
        admitted_p99_ms=percentile(admitted, 0.99),
        shed=len(shed),
        shed_p99_ms=percentile(shed, 0.99),
        unfinished=sum(1 for s in sent if s.status == -1),
        by_status=dict(sorted(statuses.items())),
        by_kind=dict(sorted(kinds.items())),
        server_errors_non_503=sum(1 for s in sent if s.status >= 500 and s.status != SHED),
        conflicts_409=sum(1 for s in sent if s.status == 409),
        mysql_1040_in_bodies=sum(
            1 for s in sent if "1040" in s.code or "too_many_connections" in s.code
        ),
        admitted_latencies_ms=admitted,
    )


def log_histogram(values_ms: list[float], per_decade: int = 10) -> dict[str, int]:
    """Counts in log-spaced bins (``per_decade`` per factor of 10), keyed by the bin's upper
    edge in ms: compact enough to keep every run's distribution in the JSON."""
    bins: Counter[float] = Counter()
    for value in values_ms:
        exponent = math.ceil(math.log10(max(value, 1e-3)) * per_decade) / per_decade
        bins[round(10**exponent, 4)] += 1
    return {f"{edge:g}": bins[edge] for edge in sorted(bins)}
