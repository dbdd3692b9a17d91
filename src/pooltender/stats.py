"""Pool statistics as plain values: what :class:`~pooltender.watch.PoolWatch` reports.

These are frozen snapshots with no reference to a pool, an engine or a lock, so the readers
-- the Flask extension's JSON endpoints, the Prometheus collector (:mod:`pooltender.metrics`)
and the dashboard -- import this module, not the watch, and never each other.
:func:`pool_stats_json` is the one JSON shape of a :class:`PoolStats`, served by
``/pooltender/stats`` and the dashboard's ``/data``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Final

from pooltender.leaks import GcReturnReport, LeakReport, Stack, format_stack, stack_where

__all__ = [
    "CHECKOUT_WAIT_BUCKETS",
    "HOLD_TIME_BUCKETS",
    "HistogramSnapshot",
    "PoolStats",
    "SecondCheckoutReport",
    "pool_stats_json",
]

#: Upper bounds (seconds, ``le``) of the checkout-wait histogram; +Inf is implicit.
CHECKOUT_WAIT_BUCKETS: Final[tuple[float, ...]] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
#: Upper bounds (seconds, ``le``) of the connection-hold-time histogram; +Inf is implicit.
HOLD_TIME_BUCKETS: Final[tuple[float, ...]] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
)  # fmt: skip


@dataclass(frozen=True)
class HistogramSnapshot:
    """Fixed-bucket histogram: ``counts[i]`` observations with ``bounds[i-1] < v <= bounds[i]``.

    ``counts`` has one more entry than ``bounds``: the last is the +Inf bucket. The shape is
    Prometheus's (``cumulative()`` gives its ``_bucket`` series); quantiles are estimated by
    linear interpolation inside the bucket, as ``histogram_quantile`` does.
    """

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    count: int
    sum: float  # seconds

    @property
    def mean(self) -> float:
        return self.sum / self.count if self.count else 0.0

    @property
    def p50(self) -> float:
        return self.quantile(0.5)

    @property
    def p99(self) -> float:
        return self.quantile(0.99)

    def to_json(self) -> dict[str, float]:
        """The JSON form (``/pooltender/stats``, the dashboard): count, and mean, p50 and p99
        in seconds."""
        return {"count": self.count, "mean_s": self.mean, "p50_s": self.p50, "p99_s": self.p99}

    def cumulative(self) -> tuple[tuple[float, int], ...]:
        """``(le, cumulative count)`` pairs, the last with ``le = inf``."""
        out: list[tuple[float, int]] = []
        running = 0
        for le, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            out.append((le, running))
        return tuple(out)

    def quantile(self, q: float) -> float:
        """Estimated ``q``-quantile in seconds (0.0 when empty; the top bound if in +Inf)."""
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile must be within [0, 1], got {q!r}")
        if not self.count:
            return 0.0
        rank = q * self.count
        seen = 0
        for i, n in enumerate(self.counts):
            if n and seen + n >= rank:
                if i == len(self.bounds):
                    return self.bounds[-1]
                lower = self.bounds[i - 1] if i else 0.0
                return lower + (self.bounds[i] - lower) * ((rank - seen) / n)
            seen += n
        return self.bounds[-1]


@dataclass(frozen=True)
class SecondCheckoutReport:
    """An owner checked out another connection while already holding ``held`` of them."""

    owner: str
    thread_name: str
    held: int
    stack: Stack
    first_stack: Stack
    reported_at: float  # time.time()

    @property
    def where(self) -> str:
        """``file:line`` of the user's code that made the second checkout."""
        return stack_where(self.stack)

    def __str__(self) -> str:
        text = (
            f"thread {self.thread_name!r} checked out connection #{self.held} from the same "
            f"engine while holding {self.held - 1}, at:\n{format_stack(self.stack)}"
        )
        if self.first_stack:
            text += f"\n  the first was checked out at:\n{format_stack(self.first_stack)}"
        return text


@dataclass(frozen=True)
class PoolStats:
    """A consistent snapshot of one engine's pool (taken under the watch lock).

    Gauges: ``checked_out`` (by the watch's own count), ``idle``, ``overflow_in_use``,
    ``pool_size``, ``max_overflow`` (the last four None for pools without those notions).
    Counters since install: everything named as a count. Times in seconds.
    """

    pool_class: str
    pool_size: int | None
    max_overflow: int | None
    checked_out: int
    idle: int | None
    overflow_in_use: int | None
    high_water_checked_out: int
    checkouts: int
    checkins: int
    detaches: int
    connects: int
    closes: int
    invalidations: int
    soft_invalidations: int
    ping_failures: int
    recycles: int
    checkout_timeouts: int
    wait_measured: bool
    checkout_wait: HistogramSnapshot
    hold_time: HistogramSnapshot
    second_checkouts: int
    second_checkout_reports: tuple[SecondCheckoutReport, ...]
    leak_threshold: float
    leaks_reported: int
    leaks_returned: int
    leak_reports: tuple[LeakReport, ...]
    gc_returns: int
    gc_return_reports: tuple[GcReturnReport, ...]
    uptime_seconds: float
    window_seconds: float
    window_checkouts: int

    @property
    def hold_time_mean(self) -> float:
        """Mean seconds a connection stays checked out (Little's law ``W``)."""
        return self.hold_time.mean

    @property
    def checkouts_per_second(self) -> float:
        """Checkouts per second since install or :meth:`PoolWatch.reset` (Little's lambda)."""
        return self.window_checkouts / self.window_seconds if self.window_seconds > 0 else 0.0

    @property
    def busy_connections(self) -> float:
        """Little's law: mean connections busy = checkout rate x mean hold time."""
        return self.checkouts_per_second * self.hold_time_mean


def pool_stats_json(stats: PoolStats) -> dict[str, Any]:
    """A JSON-ready dict of a PoolStats snapshot: every field (histograms as count, mean,
    p50 and p99 in seconds; report records as their text), plus the derived
    ``hold_time_mean`` and ``checkouts_per_second``."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(stats):
        value = getattr(stats, f.name)
        if isinstance(value, HistogramSnapshot):
            out[f.name] = value.to_json()
        elif isinstance(value, tuple):
            out[f.name] = [str(item) for item in value]
        else:
            out[f.name] = value
    out["hold_time_mean"] = stats.hold_time_mean
    out["checkouts_per_second"] = stats.checkouts_per_second
    return out
