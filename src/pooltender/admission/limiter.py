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
* CoDel itself (RFC 8289, "Controlled Delay Active Queue Management", 2018), section 3: once
  the sojourn time has exceeded the target for an interval, CoDel *stays* in its dropping
  state until a packet leaves with a sojourn below target. Here: a refusal within the last
  ``interval`` keeps the queue standing, whether or not refusals have just emptied it.

Under a standing queue two more rules keep overload cheap (issue 10's benchmark, 2+0 per
worker at 2x capacity: 318-600 responses/s against 622-787/s at saturation, 503s after a
median 110-150 ms and a p99 of 250 ms although the long timeout was 100 ms and the short
one 5 ms):

* **The standing backlog is short** (``standing_backlog``: the limit when None, which is
  this class's default; pooltender's settings default to 1, ``POOLTENDER_ADMISSION_BACKLOG``).
  A longer queue adds no goodput -- each release hands its slot to one waiter, and arrivals
  refill the queue faster than it drains -- but every extra waiter is a thread of a gthread
  worker asleep until its timeout, which then wakes into a contended GIL (the recorded run
  had 28-30 of a worker's 32 threads parked in the queue and refusals up to 150 ms after
  their deadline) while gunicorn's own request queue, which nothing bounds, grows behind
  them.
  An arrival beyond the backlog is refused at once (``standing_queue``, 0 s waited), as
  Netflix's ``SimpleLimiter`` refuses everything over its limit.
* **The standing wait is** ``min(target, timeout)``.

The waits are deadlines for the sleeping thread; the figure recorded for a refusal is the
time until the refused thread ran again (its wake-up under a contended GIL included), so the
histograms say how long a 503 really took.

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
import math
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
#: Fine around 0.1 s, where issue 10's target for the wait before a 503 lies (<= 100 ms p99):
#: the earlier 0.05 / 0.1 / 0.25 edges could not tell 101 ms from 250 ms.
QUEUE_WAIT_BUCKETS: Final[tuple[float, ...]] = (
    0.0001, 0.0005, 0.001, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05,
    0.075, 0.1, 0.125, 0.15, 0.2, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip


class Overloaded(Exception):
    """The request was not admitted. ``reason`` is one of :data:`SHED_REASONS`; ``waited``
    the seconds it spent in the queue; ``limit``, ``in_flight`` and ``queued`` the limiter's
    state when it gave up (the figures that say why)."""

    code = "pooltender-overloaded"

    def __init__(self, reason: str, waited: float, limit: int, in_flight: int, queued: int):
        # No message is formatted here: a refusal is the overloaded process's cheapest path
        # and most are never printed; __str__ formats it when someone asks.
        super().__init__(reason)
        self.reason = reason
        self.waited = waited
        self.limit = limit
        self.in_flight = in_flight
        self.queued = queued

    def __str__(self) -> str:
        return (
            f"request not admitted ({self.reason}) after {self.waited * 1000:.1f} ms: limit "
            f"{self.limit}, {self.in_flight} in flight, {self.queued} queued"
        )


class _Waiter:
    """One queued request: a lock it sleeps on (held from creation) and what it was given."""

    __slots__ = ("admission", "evicted", "gate")

    def __init__(self) -> None:
        self.gate = threading.Lock()  # looked up now: gevent's patched Lock once patched
        self.gate.acquire()
        self.admission: Admission | None = None
        self.evicted = False  # taken off a standing queue's head: refused, not timed out


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
        limiter = self._limiter
        with limiter._lock:
            now = limiter._clock()
            if sample:
                limiter._limit.on_sample_at(now, now - self.started, self.in_flight, dropped)
            if limiter._queue:  # somebody waits: hand slots over (the limiter's slow path)
                limiter._hand_over(now)
            else:  # the usual release: nothing else to do under the lock
                limiter._in_flight -= 1


_new_admission = object.__new__  # the acquire fast path's constructor (no __init__ frame)


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
    long wait; ``standing_backlog`` the waiters kept while the queue is standing (None: the
    current limit; see the module docstring). ``clock`` is monotonic seconds.
    """

    def __init__(
        self,
        limit: Limit | WindowedLimit,
        *,
        max_queue: int = 64,
        target: float = 0.005,
        interval: float = 0.1,
        timeout: float = 0.05,
        min_limit: int = 1,
        max_limit: int = 0,
        standing_backlog: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limit = limit if isinstance(limit, WindowedLimit) else WindowedLimit(limit)
        self.max_queue = max_queue
        self.target, self.interval, self.timeout = target, interval, timeout
        self._standing_wait = min(target, timeout)
        self.standing_backlog = standing_backlog
        self.min_limit = min_limit
        self.max_limit = max_limit or self._limit.limit
        self._clock = clock
        self._lock = threading.Lock()
        self._in_flight = 0
        self._queue: deque[_Waiter] = deque()
        self._transit: deque[float] = deque()  # screen()'s reservations: when each was made
        self._last_empty = clock()
        self._last_shed = -math.inf
        self._admitted_at_once = 0
        self._admitted_after_wait = 0
        self._shed = dict.fromkeys(SHED_REASONS, 0)
        self._waits = _Histogram(QUEUE_WAIT_BUCKETS)
        self._shed_waits = _Histogram(QUEUE_WAIT_BUCKETS)
        self._shed_zero = 0  # refusals that did not wait, counted without a bisect
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
        """Overloaded: the queue has been non-empty for longer than the interval, or a
        request was refused within it (RFC 8289's dropping state: refusals that empty the
        queue do not make the next arrival's wait the long one again)."""
        if now - self._last_shed < self.interval:
            return True
        return bool(self._queue) and now - self._last_empty > self.interval

    # ------------------------------------------------------------------ acquire / release

    def acquire(self, *, screened: bool = False) -> Admission:
        """Admit the calling request, waiting if the limit is reached; see the module doc.
        ``screened``: :meth:`screen` reserved a place for this request, which it now takes."""
        clock = self._clock
        lock = self._lock
        with lock:
            if screened and self._transit:
                self._transit.popleft()
            now = clock()
            # The fast path (spare capacity, nobody waiting): one lock, one clock reading,
            # a comparison and two increments; the admission is built without an __init__
            # frame (its slots are set here).
            if self._in_flight < self._limit.limit and not self._queue:
                self._in_flight = in_flight = self._in_flight + 1
                self._admitted_at_once += 1
                if in_flight > self._high_in_flight:
                    self._high_in_flight = in_flight
                admitted = _new_admission(Admission)
                admitted._limiter = self
                admitted.started = now
                admitted.in_flight = in_flight
                admitted.waited = 0.0
                admitted._released = False
                return admitted
            queued = len(self._queue)
            if queued >= self.max_queue:
                raise self._refuse_now(SHED_QUEUE_FULL, now, queued)
            if not queued:
                self._last_empty = now  # the queue was empty until this moment
            if self._standing(now):
                backlog = (
                    self._limit.limit if self.standing_backlog is None else self.standing_backlog
                )
                if queued > backlog:
                    queued = self._evict_oldest(backlog)
                if queued >= backlog:
                    raise self._refuse_now(SHED_STANDING, now, queued)
                wait, reason = self._standing_wait, SHED_STANDING
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
            if admission is None:  # timed out (or evicted) and nobody handed it a slot
                if waiter.evicted:
                    reason = SHED_STANDING
                else:
                    self._queue.remove(waiter)
                waited = end - now
                self._shed[reason] += 1
                self._shed_waits.observe(waited)
                self._last_shed = end
                raise Overloaded(reason, waited, self._limit.limit, self._in_flight, queued)
            admission.waited = admission.started - now
            self._waits.observe(admission.waited)
            self._admitted_after_wait += 1
            return admission

    def screen(self) -> tuple[Overloaded | None, bool]:
        """Decide, before a request is parsed, whether it would be refused *without
        waiting*: ``(refusal, False)``, the refusal counted as one; else ``(None, reserved)``.

        For a server that can answer before it parses (:mod:`pooltender.gthread`): the
        decision :meth:`acquire` takes at once -- the queue is full, or it is standing and
        its backlog is taken -- so a refusal here keeps the queue standing as one there
        does. A request passed on while the limit is reached or others wait is *in
        transit* until the server's thread picks it up: ``reserved`` is True, the request
        counts as waiting (against ``max_queue`` and the standing backlog) until the
        server passes ``screened=True`` to its :meth:`acquire`, or for ``interval`` at most
        (a request that never arrives cannot hold the count). Without this, a poller
        dispatching a burst sees the same free backlog for every request of it, and the
        threads refuse them instead.
        It never admits, queues or evicts a waiter."""
        with self._lock:
            queued = len(self._queue)
            transit = self._transit
            if transit:
                horizon = self._clock() - self.interval
                while transit and transit[0] < horizon:
                    transit.popleft()
            if self._in_flight < self._limit.limit and not queued and not transit:
                return None, False
            now = self._clock()
            waiting = queued + len(transit)
            if waiting >= self.max_queue:
                return self._refuse_now(SHED_QUEUE_FULL, now, queued), False
            if self._standing(now):
                backlog = (
                    self._limit.limit if self.standing_backlog is None else self.standing_backlog
                )
                if waiting >= backlog:
                    return self._refuse_now(SHED_STANDING, now, queued), False
            transit.append(now)
            return None, True

    def _evict_oldest(self, keep: int) -> int:
        """Refuse the oldest waiters until ``keep`` remain (CoDel drops at the head); they
        wake at once instead of sleeping out a long timeout taken before the queue stood.
        The caller holds the lock. Returns the queue's length."""
        queue = self._queue
        while len(queue) > keep:
            waiter = queue.popleft()
            waiter.evicted = True
            waiter.gate.release()
        return len(queue)

    def _refuse_now(self, reason: str, now: float, queued: int) -> Overloaded:
        """Count a refusal that did not wait (the caller holds the lock and raises it)."""
        self._shed[reason] += 1
        self._shed_zero += 1
        self._last_shed = now
        return Overloaded(reason, 0.0, self._limit.limit, self._in_flight, queued)

    def _hand_over(self, now: float) -> None:
        """A request ended at ``now`` while others wait: give the freed slot (and any the
        limit grew by) to waiters, ``LifoBlockingLimiter.unblock``'s direct hand-over. The
        caller (:meth:`Admission.release`) holds the lock and has fed the limit."""
        limit = self._limit.limit
        in_flight = self._in_flight - 1
        queue = self._queue
        lifo = queue and self._standing(now)
        while queue and in_flight < limit:
            # Fail at Scale's adaptive LIFO: newest first while the queue is standing.
            waiter = queue.pop() if lifo else queue.popleft()
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
                shed_wait=self._shed_waits.snapshot(self._shed_zero),
                high_water_in_flight=self._high_in_flight,
                high_water_queue=self._high_queue,
                min_limit=self.min_limit,
                max_limit=self.max_limit,
            )
