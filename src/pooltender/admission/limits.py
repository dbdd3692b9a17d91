"""Concurrency-limit algorithms: how many requests one process lets run at once.

Each algorithm is a port of the one of the same name in Netflix's concurrency-limits
(https://github.com/Netflix/concurrency-limits, ``concurrency-limits-core/src/main/java/com/
netflix/concurrency/limits/limit/``; read at commit 78a74b9), where the limit is estimated
from measured latency the way TCP congestion control estimates a window from round-trip
times. A *sample* is one finished request: its service time (admitted to done, queue wait
excluded), how many requests were in flight when it was admitted, and whether it was
*dropped* (the application itself answered 503, e.g. the pool's last-line shed wait fired).

* :class:`Gradient2Limit` (``Gradient2Limit.java``), the default: compares the recent mean
  latency with a long-term exponential average and shrinks the limit when the ratio says a
  queue is forming (``gradient = clamp(tolerance * long / short, 0.5, 1)``, ``new = limit *
  gradient + queue_size``, smoothed). It uses the mean, not the minimum, so bursty request
  costs do not pull the baseline impractically low.
* :class:`VegasLimit` (``VegasLimit.java``, after TCP Vegas): estimates the queue as
  ``limit * (1 - rtt_noload / rtt)`` from the minimum latency seen and moves the limit by
  small steps to keep that queue between ``alpha`` and ``beta``.
* :class:`AIMDLimit` (``AIMDLimit.java``): additive increase while requests keep the limit
  busy, multiplicative decrease (x0.9) on a drop or a latency past ``timeout``.
* :class:`FixedLimit`: a constant, for when the right number is known (or for sync workers).

:class:`WindowedLimit` (``WindowedLimit.java``) feeds an algorithm one aggregate sample per
window (mean latency, max in flight, any drop) rather than one per request, which filters
noise and keeps the per-request cost to a few additions. Limits are floats internally; the
limiter uses ``int(limit)``, never less than 1.

Every algorithm is clamped to ``[minimum, maximum]``, which
:class:`~pooltender.admission.settings.AdmissionSettings` sets by default to ``[pool cap,
2 x pool cap]``: the latency these algorithms read also grows with CPU contention from other
processes (the database and the other workers on the same cores), which they cannot tell from
queueing, and a limit below the pool's cap only leaves connections idle while requests are
refused (settings.py, "min = the pool's cap"). Note that Gradient2 with the square-root queue
size cannot fall below about 4 from a limit of 4 or less (``0.5 x 4 + sqrt(4) = 4``): on
pools of 1-2 connections its working range is effectively ``[4, maximum]``.

None of these take a lock: :class:`~pooltender.admission.limiter.AdmissionLimiter` calls
``on_sample`` with its own lock held.
"""

from __future__ import annotations

import math
import random
from typing import Protocol

__all__ = [
    "AIMDLimit",
    "FixedLimit",
    "Gradient2Limit",
    "Limit",
    "VegasLimit",
    "WindowedLimit",
]


class Limit(Protocol):
    """An algorithm that turns samples into a concurrency limit."""

    @property
    def limit(self) -> int:
        """The current limit, at least 1."""
        ...

    def on_sample(self, rtt: float, in_flight: int, dropped: bool) -> None:
        """Account for one (possibly aggregate) sample: latency ``rtt`` in seconds, the
        requests in flight when it was admitted, and whether it was dropped."""
        ...


def _log10_root(value: float) -> int:
    """``max(1, int(log10(value)))``: Netflix's Log10RootIntFunction with baseline 0."""
    return max(1, int(math.log10(value))) if value >= 1 else 1


def _square_root(value: float) -> int:
    """``max(1, int(sqrt(value)))``: Netflix's SquareRootFunction."""
    return max(1, int(math.sqrt(max(value, 0.0))))


class FixedLimit:
    """A limit that never changes."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("a fixed limit must be at least 1")
        self._limit = limit

    @property
    def limit(self) -> int:
        return self._limit

    def on_sample(self, rtt: float, in_flight: int, dropped: bool) -> None:
        """Samples change nothing."""

    def __repr__(self) -> str:
        return f"FixedLimit(limit={self._limit})"


class AIMDLimit:
    """Additive increase, multiplicative decrease (Netflix ``AIMDLimit``).

    A drop, or a latency above ``timeout`` seconds, multiplies the limit by ``backoff``
    (0.5 <= backoff < 1); a sample that found at least half the limit in flight adds 1 (the
    limit only grows while it is actually the constraint). Always within [minimum, maximum].
    """

    def __init__(
        self,
        *,
        initial: int,
        minimum: int = 1,
        maximum: int = 200,
        backoff: float = 0.9,
        timeout: float = 5.0,
    ) -> None:
        if not 0.5 <= backoff < 1.0:
            raise ValueError("backoff must be within [0.5, 1.0)")
        self._limit = float(min(maximum, max(minimum, initial)))
        self.minimum, self.maximum, self.backoff, self.timeout = minimum, maximum, backoff, timeout

    @property
    def limit(self) -> int:
        return max(1, int(self._limit))

    def on_sample(self, rtt: float, in_flight: int, dropped: bool) -> None:
        current = int(self._limit)
        if dropped or rtt > self.timeout:
            current = int(current * self.backoff)
        elif in_flight * 2 >= current:
            current += 1
        self._limit = float(min(self.maximum, max(self.minimum, current)))

    def __repr__(self) -> str:
        return f"AIMDLimit(limit={self.limit})"


class _ExpAvg:
    """Netflix ``ExpAvgMeasurement``: the plain mean of the first ``warmup`` samples, then an
    exponential average with factor ``2 / (window + 1)``."""

    def __init__(self, window: int, warmup: int) -> None:
        self.value = 0.0
        self._sum = 0.0
        self._count = 0
        self._factor = 2.0 / (window + 1)
        self._warmup = warmup

    def add(self, sample: float) -> float:
        if self._count < self._warmup:
            self._count += 1
            self._sum += sample
            self.value = self._sum / self._count
        else:
            self.value = self.value * (1 - self._factor) + sample * self._factor
        return self.value


class Gradient2Limit:
    """Netflix ``Gradient2Limit``: the limit follows the gradient of long- vs short-term latency.

    Per sample (a window's mean latency ``short``)::

        long = exponential average of short over ``long_window`` samples
        if long / short > 2: long *= 0.95          # recover quickly after a long overload
        if in_flight < limit / 2: keep the limit   # app-limited: no evidence either way
        gradient = clamp(tolerance * long / short, 0.5, 1.0)
        new = limit * gradient + queue_size(limit)
        limit = clamp(limit * (1 - smoothing) + new * smoothing, minimum, maximum)

    ``tolerance`` (1.5) is how much slower than the baseline a request may get before the
    limit shrinks: on a CPU-bound process latency grows with concurrency, so the limit settles
    where requests take about 1.5x what they take unqueued. ``queue_size`` is Netflix's
    square-root option rather than its fixed 4, because our limits are small (a handful per
    process) and +4 per window would overshoot them. Netflix's defaults otherwise: smoothing
    0.2, long window 600 samples with a 10-sample warm-up.
    """

    def __init__(
        self,
        *,
        initial: int,
        minimum: int = 1,
        maximum: int = 200,
        smoothing: float = 0.2,
        tolerance: float = 1.5,
        long_window: int = 600,
    ) -> None:
        if tolerance < 1.0:
            raise ValueError("tolerance must be >= 1.0")
        self._limit = float(min(maximum, max(minimum, initial)))
        self.minimum, self.maximum = minimum, maximum
        self.smoothing, self.tolerance = smoothing, tolerance
        self._long = _ExpAvg(long_window, 10)
        self.last_rtt = 0.0

    @property
    def limit(self) -> int:
        return max(1, int(self._limit))

    @property
    def long_rtt(self) -> float:
        """The long-term (baseline) latency in seconds."""
        return self._long.value

    def on_sample(self, rtt: float, in_flight: int, dropped: bool) -> None:
        if rtt <= 0:
            return
        limit = self._limit
        queue_size = _square_root(limit)
        self.last_rtt = short = rtt
        long = self._long.add(rtt)
        if long / short > 2:
            self._long.value *= 0.95
        if in_flight < limit / 2:
            return
        gradient = max(0.5, min(1.0, self.tolerance * long / short))
        new = limit * gradient + queue_size
        new = limit * (1 - self.smoothing) + new * self.smoothing
        self._limit = max(float(self.minimum), min(float(self.maximum), new))

    def __repr__(self) -> str:
        return f"Gradient2Limit(limit={self.limit}, long_rtt={self.long_rtt:.6f})"


class VegasLimit:
    """Netflix ``VegasLimit``, after TCP Vegas: keep the estimated queue between alpha and beta.

    ``rtt_noload`` is the smallest latency seen (re-probed every ``probe_multiplier x limit``
    samples, jittered, so it can follow a slower steady state). Per sample::

        queue = ceil(limit * (1 - rtt_noload / rtt))
        drop              -> limit - log10(limit)
        in_flight*2 < limit -> unchanged (app-limited)
        queue <= log10(limit)        -> limit + beta     (no queueing: grow fast)
        queue <  alpha               -> limit + log10(limit)
        queue >  beta                -> limit - log10(limit)

    with alpha = 3 log10(limit) and beta = 6 log10(limit) (each at least 3 and 6), Netflix's
    defaults; smoothing 1.0 (no smoothing).
    """

    def __init__(
        self,
        *,
        initial: int,
        minimum: int = 1,
        maximum: int = 1000,
        smoothing: float = 1.0,
        probe_multiplier: int = 30,
        rng: random.Random | None = None,
    ) -> None:
        self._limit = float(min(maximum, max(minimum, initial)))
        self.minimum, self.maximum = minimum, maximum
        self.smoothing = smoothing
        self.probe_multiplier = probe_multiplier
        self.rtt_noload = 0.0
        self._rng = rng or random.Random()
        self._probe_count = 0
        self._probe_jitter = self._rng.uniform(0.5, 1.0)

    @property
    def limit(self) -> int:
        return max(1, int(self._limit))

    def on_sample(self, rtt: float, in_flight: int, dropped: bool) -> None:
        if rtt <= 0:
            return
        self._probe_count += 1
        if self._probe_jitter * self.probe_multiplier * self._limit <= self._probe_count:
            self._probe_jitter = self._rng.uniform(0.5, 1.0)
            self._probe_count = 0
            self.rtt_noload = rtt
            return
        if self.rtt_noload == 0 or rtt < self.rtt_noload:
            self.rtt_noload = rtt
            return
        limit = self._limit
        queue = math.ceil(limit * (1 - self.rtt_noload / rtt))
        step = _log10_root(limit)
        if dropped:
            new = limit - step
        elif in_flight * 2 < limit:
            return
        else:
            alpha, beta, threshold = 3 * step, 6 * step, step
            if queue <= threshold:
                new = limit + beta
            elif queue < alpha:
                new = limit + step
            elif queue > beta:
                new = limit - step
            else:
                return
        new = max(float(self.minimum), min(float(self.maximum), new))
        self._limit = (1 - self.smoothing) * limit + self.smoothing * new

    def __repr__(self) -> str:
        return f"VegasLimit(limit={self.limit}, rtt_noload={self.rtt_noload:.6f})"


class WindowedLimit:
    """Netflix ``WindowedLimit``: one aggregate sample per window to the wrapped algorithm.

    Samples accumulate (count, sum, minimum latency, max in flight, any drop) until a sample
    ends after the window's end; then, if the window holds at least ``min_samples``, the
    algorithm sees its mean latency, max in flight and drop flag. The next window lasts
    ``clamp(2 x the window's minimum latency, min_window, max_window)`` seconds. Samples
    shorter than ``min_rtt`` (100 us) are ignored as not measuring anything (Netflix's
    threshold). Defaults are Netflix's: 1 s windows of at least 10 samples.

    The per-request part is the accumulation alone: a few comparisons and additions on
    plain attributes, no call; the algorithm runs once per window. ``limit`` is a plain
    attribute, the algorithm's limit as of its last window (refreshed each time the
    algorithm is fed, and by :meth:`refresh` after the algorithm was changed otherwise), so
    the limiter reads it without a property call on every acquire and release.
    """

    __slots__ = (
        "_count",
        "_dropped",
        "_max_in_flight",
        "_min_rtt",
        "_next_update",
        "_total",
        "delegate",
        "limit",
        "max_window",
        "min_rtt",
        "min_samples",
        "min_window",
    )

    def __init__(
        self,
        delegate: Limit,
        *,
        min_window: float = 1.0,
        max_window: float = 1.0,
        min_samples: int = 10,
        min_rtt: float = 0.0001,
    ) -> None:
        self.delegate = delegate
        self.min_window, self.max_window = min_window, max_window
        self.min_samples, self.min_rtt = min_samples, min_rtt
        self._reset()
        self._next_update = 0.0
        self.limit: int = delegate.limit

    def _reset(self) -> None:
        self._count = 0
        self._total = 0.0
        self._min_rtt = math.inf
        self._max_in_flight = 0
        self._dropped = False

    def refresh(self) -> int:
        """Re-read the algorithm's limit (after changing the algorithm directly)."""
        self.limit = self.delegate.limit
        return self.limit

    def on_sample_at(self, end: float, rtt: float, in_flight: int, dropped: bool) -> None:
        """Add a sample that ended at monotonic time ``end``."""
        if rtt < self.min_rtt:
            return
        self._count += 1
        self._total += rtt
        if rtt < self._min_rtt:
            self._min_rtt = rtt
        if in_flight > self._max_in_flight:
            self._max_in_flight = in_flight
        if dropped:
            self._dropped = True
        if end > self._next_update:
            self._flush(end)

    def _flush(self, end: float) -> None:
        """Close the window that ``end`` ended: feed the algorithm, start the next one."""
        count, total, min_rtt = self._count, self._total, self._min_rtt
        max_in_flight, dropped = self._max_in_flight, self._dropped
        self._reset()
        self._next_update = end + min(max(min_rtt * 2, self.min_window), self.max_window)
        if count >= self.min_samples:
            self.delegate.on_sample(total / count, max_in_flight, dropped)
            self.limit = self.delegate.limit

    def __repr__(self) -> str:
        return f"WindowedLimit({self.delegate!r})"
