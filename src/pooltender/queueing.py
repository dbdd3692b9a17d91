"""How often a checkout waits for a connection, and for how long: queueing models of a pool.

Little's law (:func:`pooltender.budget.littles_law`) gives the *mean* number of busy
connections, ``L = lambda x H``; it says nothing about how often a request finds every
connection busy. A pool of ``c`` connections serving checkouts is a ``c``-server queue, so the
classical results answer that:

* **Open loop, exponential holds: M/M/c (Erlang C).** Checkouts arrive as a Poisson stream at
  ``lambda`` per second and hold a connection for an exponential time of mean ``H = 1/mu``.
  With offered load ``a = lambda/mu`` (Erlangs) and ``a < c``, the probability that an arrival
  waits is Erlang's C formula, and the wait is exponential beyond that atom at zero::

      P(W > t) = C(c, a) exp(-(c mu - lambda) t),    E[W] = C(c, a) / (c mu - lambda)

  C is computed through Erlang B's recursion ``B(0) = 1, B(k) = a B(k-1) / (k + a B(k-1))``
  and ``C = B / (1 - (a/c)(1 - B))``, which never forms ``a^c / c!`` and so stays accurate
  for thousands of servers. Sources: L. Kleinrock, *Queueing Systems, Vol. 1: Theory*
  (Wiley, 1975), sec. 3.5 (M/M/m, eq. 3.40 and the waiting-time distribution); D. Gross,
  J. Shortle, J. Thompson, C. Harris, *Fundamentals of Queueing Theory*, 4th ed. (Wiley,
  2008), sec. 2.3 and 2.5; the recursion is the standard one, e.g. in Gross et al. sec. 2.5.
* **Closed loop: a finite population.** ``N`` clients (threads, greenlets) each think for an
  exponential time of mean ``Z`` between checkouts and then hold for mean ``H``. That is the
  machine-interference model M/M/c//N (Kleinrock sec. 3.10, Gross et al. sec. 2.8). Its state
  probabilities follow from birth rates ``(N - k)/Z`` and death rates ``min(k, c)/H``; by the
  arrival theorem an arriving client sees the stationary state of the same system with
  ``N - 1`` clients, so ``P(wait) = sum_{k >= c} pi_{N-1}(k)`` and, FIFO, a client that finds
  ``k >= c`` busy waits an Erlang(``k - c + 1``, ``c/H``) time. :func:`engset_blocking` is the
  loss version of the same population (Engset's formula: the share of attempts finding all
  ``c`` busy when nobody waits), for a pool with no wait at all.
* **Measured hold times: simulation.** Real hold times are not exponential (a mix of fast
  reads and slow writes, long tails from lock waits). :func:`simulate_open` runs the FIFO
  ``c``-server queue exactly by the Kiefer-Wolfowitz recursion (each arrival takes the
  earliest-free server: J. Kiefer, J. Wolfowitz, "On the theory of queues with many
  servers", *Trans. AMS* 78, 1955) with Poisson arrivals and holds drawn from the measured
  samples; :func:`simulate_closed` does the same for ``N`` closed-loop clients.

What the models leave out, so their answers are a lower bound on a real pool's waits: opening
an overflow connection (time added to the first hold), a server slowed by its own load, and
QueuePool's wake-up order (a ``threading.Condition``, close to but not guaranteed FIFO).
"""

from __future__ import annotations

import bisect
import heapq
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "FiniteSourceQueue",
    "MMcQueue",
    "SimulatedWaits",
    "engset_blocking",
    "erlang_b",
    "erlang_c",
    "percentile",
    "simulate_closed",
    "simulate_open",
    "smallest_pool",
]


def _check_positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    ok = math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")


def _check_servers(c: int) -> None:
    if isinstance(c, bool) or not isinstance(c, int) or c < 1:
        raise ValueError(f"servers (pool connections) must be a whole number >= 1, got {c!r}")


def erlang_b(c: int, a: float) -> float:
    """Erlang's B formula: the share of arrivals finding all ``c`` servers busy in a *loss*
    system (M/M/c/c) with offered load ``a`` Erlangs. Stable recursion, no factorials."""
    _check_servers(c)
    _check_positive("offered load", a, allow_zero=True)
    b = 1.0
    for k in range(1, c + 1):
        b = a * b / (k + a * b)
    return b


def erlang_c(c: int, a: float) -> float:
    """Erlang's C formula: the probability that an arrival waits in M/M/c with offered load
    ``a = lambda x H`` Erlangs. 1.0 when ``a >= c`` (the queue grows without bound)."""
    b = erlang_b(c, a)
    if a >= c:
        return 1.0
    return min(1.0, b / (1.0 - (a / c) * (1.0 - b)))


@dataclass(frozen=True, kw_only=True)
class MMcQueue:
    """A pool of ``servers`` connections fed by Poisson checkouts (open loop), exponential
    holds. ``arrival_rate`` is checkouts per second, ``hold_time`` the mean seconds held."""

    arrival_rate: float
    hold_time: float
    servers: int

    def __post_init__(self) -> None:
        _check_positive("arrival_rate", self.arrival_rate, allow_zero=True)
        _check_positive("hold_time", self.hold_time)
        _check_servers(self.servers)

    @property
    def offered_load(self) -> float:
        """``a = lambda x H``: Little's law's mean number of busy connections (Erlangs)."""
        return self.arrival_rate * self.hold_time

    @property
    def utilisation(self) -> float:
        """``rho = a / c``: the share of the pool's capacity in use; must be below 1."""
        return self.offered_load / self.servers

    @property
    def stable(self) -> bool:
        return self.offered_load < self.servers

    @property
    def p_wait(self) -> float:
        """Probability that a checkout finds every connection busy (Erlang C)."""
        return erlang_c(self.servers, self.offered_load)

    @property
    def _drain_rate(self) -> float:
        """``c mu - lambda``: the rate at which the queue empties, per second."""
        return self.servers / self.hold_time - self.arrival_rate

    @property
    def mean_wait(self) -> float:
        """Mean wait over all checkouts (zero waits included), seconds; inf if unstable."""
        if not self.stable:
            return math.inf
        return self.p_wait / self._drain_rate

    def p_wait_longer(self, t: float) -> float:
        """``P(W > t) = C(c, a) exp(-(c mu - lambda) t)`` for ``t >= 0``."""
        _check_positive("t", t, allow_zero=True)
        if not self.stable:
            return 1.0
        return self.p_wait * math.exp(-self._drain_rate * t)

    def wait_percentile(self, q: float) -> float:
        """The ``q``-quantile of the wait (``q`` in (0, 1), e.g. 0.99), seconds: 0 when fewer
        than ``1 - q`` of checkouts wait at all; inf if unstable."""
        if not 0 < q < 1:
            raise ValueError(f"quantile must be strictly between 0 and 1, got {q!r}")
        if not self.stable:
            return math.inf
        tail = 1.0 - q
        c_wait = self.p_wait
        if c_wait <= tail:
            return 0.0
        return math.log(c_wait / tail) / self._drain_rate


def smallest_pool(
    arrival_rate: float,
    hold_time: float,
    *,
    max_p_wait: float | None = None,
    max_wait: float | None = None,
    quantile: float = 0.99,
    limit: int = 100_000,
) -> MMcQueue:
    """The smallest M/M/c pool meeting the targets: P(wait) at most ``max_p_wait`` and/or the
    ``quantile`` of the wait at most ``max_wait`` seconds. At least one target is required.
    Erlang C decreases in ``c``, so the first ``c`` that meets them is the answer."""
    if max_p_wait is None and max_wait is None:
        raise ValueError("give max_p_wait, max_wait or both")
    if max_p_wait is not None and not 0 < max_p_wait <= 1:
        raise ValueError(f"max_p_wait must be in (0, 1], got {max_p_wait!r}")
    if max_wait is not None:
        _check_positive("max_wait", max_wait, allow_zero=True)
    start = max(1, math.floor(arrival_rate * hold_time) + 1)
    for c in range(start, limit + 1):
        queue = MMcQueue(arrival_rate=arrival_rate, hold_time=hold_time, servers=c)
        if max_p_wait is not None and queue.p_wait > max_p_wait:
            continue
        if max_wait is not None and queue.wait_percentile(quantile) > max_wait:
            continue
        return queue
    raise ValueError(f"no pool of at most {limit} connections meets the target")


# ------------------------------------------------------------------ finite population


def engset_blocking(sources: int, servers: int, hold_time: float, think_time: float) -> float:
    """Engset's formula: the share of checkout attempts that find all ``servers`` busy when
    ``sources`` clients, each idle for mean ``think_time`` between holds of mean
    ``hold_time``, are turned away instead of waiting (a pool with no wait)."""
    _check_servers(servers)
    _check_positive("hold_time", hold_time)
    _check_positive("think_time", think_time)
    if sources < 1:
        raise ValueError(f"sources must be at least 1, got {sources!r}")
    if servers >= sources:
        return 0.0
    beta = hold_time / think_time
    # terms C(N-1, k) beta^k for k = 0..c, built by ratio to stay in floating range
    term, total = 1.0, 1.0
    for k in range(1, servers + 1):
        term *= (sources - k) / k * beta
        total += term
    return term / total


@dataclass(frozen=True, kw_only=True)
class FiniteSourceQueue:
    """M/M/c//N: ``sources`` closed-loop clients, each thinking for an exponential time of
    mean ``think_time`` between checkouts, holding for mean ``hold_time``, on ``servers``
    connections; clients that find none free wait (FIFO)."""

    sources: int
    servers: int
    hold_time: float
    think_time: float

    def __post_init__(self) -> None:
        if self.sources < 1:
            raise ValueError(f"sources must be at least 1, got {self.sources!r}")
        _check_servers(self.servers)
        _check_positive("hold_time", self.hold_time)
        _check_positive("think_time", self.think_time, allow_zero=True)

    def _state_probabilities(self, population: int) -> list[float]:
        """Stationary P(k busy or waiting), k = 0..population, computed in log space."""
        c, h, z = self.servers, self.hold_time, self.think_time
        if population == 0:
            return [1.0]
        if z == 0:  # nobody thinks: everyone is always in the system
            return [0.0] * population + [1.0]
        logs = [0.0]
        for k in range(1, population + 1):
            birth = (population - k + 1) / z
            death = min(k, c) / h
            logs.append(logs[-1] + math.log(birth / death))
        top = max(logs)
        weights = [math.exp(x - top) for x in logs]
        total = sum(weights)
        return [w / total for w in weights]

    def _seen_at_arrival(self) -> list[float]:
        """What an arriving client sees: the system with the other ``N - 1`` (arrival
        theorem for closed product-form networks)."""
        return self._state_probabilities(self.sources - 1)

    @property
    def p_wait(self) -> float:
        """Probability that a checkout finds every connection busy."""
        seen = self._seen_at_arrival()
        return sum(seen[self.servers :])

    @property
    def throughput(self) -> float:
        """Checkouts per second the closed loop achieves: ``E[busy] / H``."""
        pi = self._state_probabilities(self.sources)
        busy = sum(p * min(k, self.servers) for k, p in enumerate(pi))
        return busy / self.hold_time

    @property
    def mean_wait(self) -> float:
        """Mean wait over all checkouts, seconds (FIFO)."""
        rate = self.servers / self.hold_time
        seen = self._seen_at_arrival()
        return sum(
            p * (k - self.servers + 1) / rate for k, p in enumerate(seen) if k >= self.servers
        )

    def p_wait_longer(self, t: float) -> float:
        """``P(W > t)``: a client finding ``k >= c`` in the system waits for ``k - c + 1``
        departures at rate ``c/H``, an Erlang time (FIFO)."""
        _check_positive("t", t, allow_zero=True)
        rate = self.servers / self.hold_time
        x = rate * t
        seen = self._seen_at_arrival()
        total = 0.0
        # P(Erlang(n, rate) > t) = sum_{j<n} e^{-x} x^j / j!, accumulated as n grows
        term, tail = math.exp(-x), 0.0
        for n, k in enumerate(range(self.servers, len(seen)), start=1):
            tail += term
            term *= x / n
            total += seen[k] * tail
        return min(1.0, total)

    def wait_percentile(self, q: float, *, tolerance: float = 1e-7) -> float:
        """The ``q``-quantile of the wait, seconds, by bisection on :meth:`p_wait_longer`."""
        if not 0 < q < 1:
            raise ValueError(f"quantile must be strictly between 0 and 1, got {q!r}")
        tail = 1.0 - q
        if self.p_wait <= tail:
            return 0.0
        high = self.hold_time
        while self.p_wait_longer(high) > tail:
            high *= 2
        low = 0.0
        while high - low > tolerance * max(high, 1e-12):
            mid = (low + high) / 2
            if self.p_wait_longer(mid) > tail:
                low = mid
            else:
                high = mid
        return high


# ------------------------------------------------------------------------ simulation


def percentile(sorted_samples: Sequence[float], q: float) -> float:
    """Nearest-rank ``q``-quantile of already sorted samples (``q`` in (0, 1])."""
    if not sorted_samples:
        raise ValueError("no samples")
    if not 0 < q <= 1:
        raise ValueError(f"quantile must be in (0, 1], got {q!r}")
    rank = max(1, math.ceil(q * len(sorted_samples)))
    return sorted_samples[rank - 1]


@dataclass(frozen=True)
class SimulatedWaits:
    """Wait samples (seconds, sorted) from one simulation run, and what they add up to."""

    waits: tuple[float, ...]
    duration: float

    @property
    def p_wait(self) -> float:
        """Share of checkouts that waited at all."""
        zero = bisect.bisect_right(self.waits, 0.0)
        return (len(self.waits) - zero) / len(self.waits)

    @property
    def mean_wait(self) -> float:
        return sum(self.waits) / len(self.waits)

    @property
    def throughput(self) -> float:
        """Checkouts per simulated second."""
        return len(self.waits) / self.duration if self.duration > 0 else math.inf

    def wait_percentile(self, q: float) -> float:
        return percentile(self.waits, q)


def _hold_samples(holds: Sequence[float]) -> list[float]:
    if not holds:
        raise ValueError("hold-time samples are empty")
    for h in holds:
        _check_positive("hold-time sample", h, allow_zero=True)
    return list(holds)


class _FifoPool:
    """The pool both simulations share: ``servers`` connections handed out first come, first
    served, each checkout taking the earliest-free connection (the Kiefer-Wolfowitz
    recursion) for a hold drawn from ``holds``; the first ``warmup`` checkouts' waits are
    discarded."""

    def __init__(
        self, servers: int, holds: Sequence[float], rng: random.Random, warmup: int
    ) -> None:
        self._free_at = [0.0] * servers  # heap of the times each connection comes back
        self._holds = holds
        self._rng = rng
        self._warmup = warmup
        self._served = 0
        self._started = 0.0
        self._waits: list[float] = []

    def serve(self, now: float) -> float:
        """A checkout arriving at ``now``; returns when its connection comes back."""
        start = max(now, heapq.heappop(self._free_at))
        done = start + self._rng.choice(self._holds)
        heapq.heappush(self._free_at, done)
        if self._served == self._warmup:
            self._started = now
        if self._served >= self._warmup:
            self._waits.append(start - now)
        self._served += 1
        return done

    def result(self, now: float) -> SimulatedWaits:
        """The recorded waits, sorted, over the time since the warm-up ended."""
        return SimulatedWaits(tuple(sorted(self._waits)), now - self._started)


def simulate_open(
    arrival_rate: float,
    holds: Sequence[float],
    servers: int,
    *,
    checkouts: int = 100_000,
    warmup: int = 1_000,
    seed: int = 0,
) -> SimulatedWaits:
    """FIFO ``servers``-connection pool, Poisson checkouts at ``arrival_rate`` per second,
    each hold drawn at random from the measured ``holds`` (seconds). Exact event order by
    the Kiefer-Wolfowitz recursion; the first ``warmup`` checkouts are discarded."""
    _check_positive("arrival_rate", arrival_rate)
    _check_servers(servers)
    rng = random.Random(seed)
    pool = _FifoPool(servers, _hold_samples(holds), rng, warmup)
    now = 0.0
    for _ in range(warmup + checkouts):
        now += rng.expovariate(arrival_rate)
        pool.serve(now)
    return pool.result(now)


def simulate_closed(
    clients: int,
    holds: Sequence[float],
    servers: int,
    *,
    think_time: float,
    checkouts: int = 100_000,
    warmup: int = 1_000,
    seed: int = 0,
) -> SimulatedWaits:
    """FIFO ``servers``-connection pool used by ``clients`` closed-loop clients, each
    thinking an exponential time of mean ``think_time`` (0: none) between checkouts; holds
    drawn from the measured ``holds``. Arrivals are processed in time order, so each one
    takes the earliest-free connection as in :func:`simulate_open`."""
    _check_servers(servers)
    _check_positive("think_time", think_time, allow_zero=True)
    if clients < 1:
        raise ValueError(f"clients must be at least 1, got {clients!r}")
    rng = random.Random(seed)
    sample = _hold_samples(holds)

    def think() -> float:
        return rng.expovariate(1.0 / think_time) if think_time > 0 else 0.0

    arrivals = [(think(), n) for n in range(clients)]
    heapq.heapify(arrivals)
    pool = _FifoPool(servers, sample, rng, warmup)
    now = 0.0
    for _ in range(warmup + checkouts):
        now, client = heapq.heappop(arrivals)
        heapq.heappush(arrivals, (pool.serve(now) + think(), client))
    return pool.result(now)
