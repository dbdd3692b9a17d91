"""The admission limiter: at most ``limit`` requests in flight; the rest wait, briefly.

Sources:

* Netflix concurrency-limits (https://github.com/Netflix/concurrency-limits): a limit on
  requests *in flight*, adapted from their measured latency by a
  :mod:`~pooltender.admission.limits` algorithm, each finished request being one sample
  (``AbstractLimiter.createListener``: in-flight count taken at admission, service time
  measured to completion); a waiting request is handed the slot of the one that finished,
  directly, as in ``LifoBlockingLimiter.unblock``.
* "Fail at Scale" (Ben Maurer, ACM Queue 13(8), 2015), section "Controlled delay" and
  "Adaptive LIFO": a queue that has not been empty for the last ``interval`` (N = 100 ms) is
  *standing*; a request that joins a standing queue may wait only ``target`` (M = 5 ms),
  otherwise up to ``timeout``; so a burst is absorbed, but under sustained overload requests
  are refused in milliseconds instead of after a long wait. While the queue is standing it is
  served last-in-first-out: the newest request has the best chance of being answered before
  its client gives up, and the oldest ones time out; otherwise it is first-in-first-out.

Contract of :meth:`AdmissionLimiter.acquire`: it returns an :class:`Admission` (call its
``release()`` exactly once when the request is done) or raises :class:`Overloaded` with a
reason, having waited at most the timeout chosen when it joined the queue. A waiting caller
holds no database connection and runs no code: it sleeps on a lock of its own, which the
finishing request releases. Only ``threading`` primitives are used, looked up when a wait
starts, so gevent's monkey-patching makes waits cooperative (a greenlet, not the hub, sleeps).

The limiter's lock guards a handful of integers and a deque; nothing blocks while holding it,
so even a limiter built before gevent patched ``threading`` (an app preloaded by gunicorn's
master) is safe: no greenlet can switch out while it holds that lock.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from pooltender.admission.limits import Limit, WindowedLimit
from pooltender.watch import HistogramSnapshot

__all__ = [
    "QUEUE_WAIT_BUCKETS",
    "SHED_REASONS",
    "Admission",
    "AdmissionLimiter",
    "AdmissionStats",
    "Overloaded",
]

#: the limit was reached and the queue was full: refused without waiting
SHED_QUEUE_FULL: Final = "queue_full"
#: joined a standing queue and was not admitted within ``target``
SHED_STANDING: Final = "standing_queue"
#: joined a queue that had drained recently and was not admitted within ``timeout``
SHED_TIMEOUT: Final = "queue_timeout"
SHED_REASONS: Final = (SHED_QUEUE_FULL, SHED_STANDING, SHED_TIMEOUT)

#: Upper bounds (seconds, ``le``) of the queue-wait histograms; +Inf is implicit. The first
#: bucket also holds every request admitted (or refused) without waiting at all.
QUEUE_WAIT_BUCKETS: Final[tuple[float, ...]] = (
    0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip


class Overloaded(Exception):
    """The request was not admitted. ``reason`` is one of :data:`SHED_REASONS`; ``waited``
    the seconds it spent in the queue; ``limit``, ``in_flight`` and ``queued`` the limiter's
    state when it gave up (the figures that say why)."""

    code = "pooltender-overloaded"

    def __init__(self, reason: str, waited: float, limit: int, in_flight: int, queued: int):
        super().__init__(
            f"request not admitted ({reason}) after {waited * 1000:.1f} ms: limit {limit}, "
            f"{in_flight} in flight, {queued} queued"
        )
        self.reason = reason
        self.waited = waited
        self.limit = limit
        self.in_flight = in_flight
        self.queued = queued


class _Waiter:
    """One queued request: a lock it sleeps on (held from creation) and what it was given."""

    __slots__ = ("admission", "gate")

    def __init__(self) -> None:
        self.gate = threading.Lock()  # looked up now: gevent's patched Lock once patched
        self.gate.acquire()
        self.admission: Admission | None = None


class Admission:
    """One admitted request's slot. ``release()`` ends it and feeds the limit one sample.

    ``started`` is when the slot was granted (monotonic seconds), so the sample is the
    service time, not the queue wait; ``in_flight`` the requests in flight, this one
    included, at that moment.
    """

    __slots__ = ("_limiter", "_released", "in_flight", "started", "waited")

    def __init__(
        self, limiter: AdmissionLimiter, started: float, in_flight: int, waited: float
    ) -> None:
        self._limiter = limiter
        self.started = started
        self.in_flight = in_flight
        self.waited = waited
        self._released = False

    def release(self, *, dropped: bool = False, sample: bool = True) -> None:
        """End the request. ``dropped``: it failed for lack of capacity (e.g. the app's own
        503), which makes loss-based limits back off. ``sample=False``: do not feed the
        limit (it failed for a reason unrelated to load). A second call does nothing."""
        if self._released:
            return
        self._released = True
        self._limiter._release(self, dropped, sample)


@dataclass(frozen=True)
class AdmissionStats:
    """A snapshot of one limiter. ``shed`` counts refusals by reason; ``queue_wait`` is the
    wait of admitted requests, ``shed_wait`` the wait of refused ones (both include those
    that did not wait, in the first bucket)."""

    algorithm: str
    limit: int
    in_flight: int
    queue_length: int
    standing: bool
    admitted: int
    admitted_after_wait: int
    shed: dict[str, int]
    queue_wait: HistogramSnapshot
    shed_wait: HistogramSnapshot
    high_water_in_flight: int
    high_water_queue: int
    min_limit: int
    max_limit: int
    limit_history: tuple[int, ...] = field(default=())

    @property
    def shed_total(self) -> int:
        return sum(self.shed.values())


class _Histogram:
    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.total += seconds

    def snapshot(self, zero: int) -> HistogramSnapshot:
        counts = list(self.counts)
        counts[0] += zero  # observations of exactly 0 s, counted without a bisect
        return HistogramSnapshot(self.bounds, tuple(counts), sum(counts), self.total)


class AdmissionLimiter:
    """A concurrency limit with a CoDel-timed, adaptively LIFO waiting queue.

    ``limit`` is the algorithm (its samples arrive through a :class:`WindowedLimit`, which
    is added if not given). ``max_queue`` bounds the waiting requests (0: refuse at once at
    the limit); ``target``, ``interval`` and ``timeout`` are Fail at Scale's M, N and the
    long wait (see the module docstring). ``clock`` is monotonic seconds.
    """

    def __init__(
        self,
        limit: Limit | WindowedLimit,
        *,
        max_queue: int = 64,
        target: float = 0.005,
        interval: float = 0.1,
        timeout: float = 0.1,
        min_limit: int = 1,
        max_limit: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limit = limit if isinstance(limit, WindowedLimit) else WindowedLimit(limit)
        self.max_queue = max_queue
        self.target, self.interval, self.timeout = target, interval, timeout
        self.min_limit = min_limit
        self.max_limit = max_limit or self._limit.limit
        self._clock = clock
        self._lock = threading.Lock()
        self._in_flight = 0
        self._queue: deque[_Waiter] = deque()
        self._last_empty = clock()
        self._admitted_at_once = 0
        self._admitted_after_wait = 0
        self._shed = dict.fromkeys(SHED_REASONS, 0)
        self._waits = _Histogram(QUEUE_WAIT_BUCKETS)
        self._shed_waits = _Histogram(QUEUE_WAIT_BUCKETS)
        self._high_in_flight = 0
        self._high_queue = 0

    @property
    def algorithm(self) -> Limit:
        """The limit algorithm (inside its window)."""
        return self._limit.delegate

    @property
    def limit(self) -> int:
        return self._limit.limit

    def _standing(self, now: float) -> bool:
        return bool(self._queue) and now - self._last_empty > self.interval

    # ------------------------------------------------------------------ acquire / release

    def acquire(self) -> Admission:
        """Admit the calling request, waiting if the limit is reached; see the module doc."""
        clock = self._clock
        lock = self._lock
        with lock:
            now = clock()
            if self._in_flight < self._limit.limit and not self._queue:
                self._in_flight = in_flight = self._in_flight + 1
                self._admitted_at_once += 1
                if in_flight > self._high_in_flight:
                    self._high_in_flight = in_flight
                return Admission(self, now, in_flight, 0.0)
            queued = len(self._queue)
            if queued >= self.max_queue:
                self._shed[SHED_QUEUE_FULL] += 1
                self._shed_waits.observe(0.0)
                raise Overloaded(SHED_QUEUE_FULL, 0.0, self._limit.limit, self._in_flight, queued)
            if not queued:
                self._last_empty = now  # the queue was empty until this moment
            standing = now - self._last_empty > self.interval
            if standing:
                wait, reason = self.target, SHED_STANDING
            else:
                wait, reason = self.timeout, SHED_TIMEOUT
            waiter = _Waiter()
            self._queue.append(waiter)
            if queued + 1 > self._high_queue:
                self._high_queue = queued + 1
        waiter.gate.acquire(timeout=wait)
        with lock:
            admission = waiter.admission
            end = clock()
            if admission is None:  # timed out and nobody handed it a slot meanwhile
                self._queue.remove(waiter)
                waited = end - now
                self._shed[reason] += 1
                self._shed_waits.observe(waited)
                raise Overloaded(reason, waited, self._limit.limit, self._in_flight, queued)
            admission.waited = admission.started - now
            self._waits.observe(admission.waited)
            self._admitted_after_wait += 1
            return admission

    def _release(self, admission: Admission, dropped: bool, sample: bool) -> None:
        with self._lock:
            now = self._clock()
            if sample:
                self._limit.on_sample_at(now, now - admission.started, admission.in_flight, dropped)
            limit = self._limit.limit
            in_flight = self._in_flight - 1
            queue = self._queue
            while queue and in_flight < limit:
                # Fail at Scale's adaptive LIFO: newest first while the queue is standing.
                waiter = queue.pop() if now - self._last_empty > self.interval else queue.popleft()
                in_flight += 1
                waiter.admission = Admission(self, now, in_flight, 0.0)
                waiter.gate.release()
            self._in_flight = in_flight
            if in_flight > self._high_in_flight:
                self._high_in_flight = in_flight

    # ------------------------------------------------------------------ reading

    def stats(self) -> AdmissionStats:
        """A consistent snapshot of the limiter's figures."""
        with self._lock:
            now = self._clock()
            shed = dict(self._shed)
            return AdmissionStats(
                algorithm=type(self._limit.delegate).__name__,
                limit=self._limit.limit,
                in_flight=self._in_flight,
                queue_length=len(self._queue),
                standing=self._standing(now),
                admitted=self._admitted_at_once + self._admitted_after_wait,
                admitted_after_wait=self._admitted_after_wait,
                shed=shed,
                queue_wait=self._waits.snapshot(self._admitted_at_once),
                shed_wait=self._shed_waits.snapshot(0),
                high_water_in_flight=self._high_in_flight,
                high_water_queue=self._high_queue,
                min_limit=self.min_limit,
                max_limit=self.max_limit,
            )
