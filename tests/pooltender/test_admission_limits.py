"""The limit algorithms adapt up and down under a synthetic latency change.

Each algorithm is driven with measured samples (no sleeping): first a steady latency with the
limit fully used, under which it must grow; then the latency quadruples (a queue has formed
behind the CPU), under which it must shrink; bounds are never crossed. The last test drives
the whole limiter, acquire to release, on a clock the test moves.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from pooltender.admission import (
    AdmissionLimiter,
    AdmissionSettings,
    build_limit,
)
from pooltender.admission.limits import (
    AIMDLimit,
    FixedLimit,
    Gradient2Limit,
    Limit,
    VegasLimit,
    WindowedLimit,
)


def feed(limit: Limit, rtt: float, samples: int, *, dropped: bool = False) -> list[int]:
    """``samples`` samples of latency ``rtt`` with the limit fully in use; the limits seen."""
    seen = []
    for _ in range(samples):
        limit.on_sample(rtt, limit.limit, dropped)
        seen.append(limit.limit)
    return seen


MAKERS: dict[str, Callable[[], Limit]] = {
    "gradient2": lambda: Gradient2Limit(initial=6, minimum=1, maximum=40),
    "vegas": lambda: VegasLimit(initial=6, minimum=1, maximum=40, rng=random.Random(7)),
}


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_latency_based_limits_grow_when_fast_and_shrink_when_slow(name: str) -> None:
    limit = MAKERS[name]()
    grown = feed(limit, 0.010, 60)
    assert max(grown) > 6, grown  # no queueing and the limit in use: probe upward
    high = limit.limit
    shrunk = feed(limit, 0.040, 60)
    assert min(shrunk) < high, shrunk  # 4x the latency: back off
    assert all(1 <= value <= 40 for value in grown + shrunk)


def test_gradient2_settles_back_near_the_minimum_under_sustained_slowdown() -> None:
    limit = Gradient2Limit(initial=12, minimum=2, maximum=24)
    feed(limit, 0.010, 20)  # baseline
    low = feed(limit, 0.100, 200)
    assert low[-1] < 12
    assert min(low) >= 2  # the floor holds


@pytest.mark.parametrize("name", ["gradient2", "vegas", "aimd"])
def test_by_default_the_limit_never_falls_below_the_pool_cap(name: str) -> None:
    """Latency ten times the baseline (CPU contention from other processes, not a queue at the
    pool) lowers an adaptive limit only down to the pool's cap, unless MIN says lower."""
    settings = AdmissionSettings.from_mapping({"POOLTENDER_ADMISSION_LIMIT": name}, pool_cap=6)
    assert (settings.minimum, settings.initial, settings.maximum) == (6, 6, 12)
    limit = build_limit(settings)
    if isinstance(limit, VegasLimit):
        # Vegas jitters when it re-probes its no-load latency (an unseeded Random): with one
        # in about 40 draws it had not yet stepped down to the floor within the 300 windows
        # (7, not 6). A fixed seed makes the run the same every time.
        limit._rng = random.Random(7)
        limit._probe_jitter = limit._rng.uniform(0.5, 1.0)
    grown = feed(limit, 0.010, 100)
    slow = feed(limit, 0.100, 300, dropped=name == "aimd")
    assert min(grown + slow) >= 6
    assert min(slow) == 6  # it did back off, to the floor
    if name == "vegas":
        return  # Vegas steps by log10(limit) per window and re-probes: too slow to show it here
    lower = build_limit(
        AdmissionSettings.from_mapping(
            {"POOLTENDER_ADMISSION_LIMIT": name, "POOLTENDER_ADMISSION_MIN": "1"}, pool_cap=6
        )
    )
    feed(lower, 0.010, 100)
    assert min(feed(lower, 0.100, 300, dropped=name == "aimd")) < 6  # the floor is what held


def test_an_app_limited_sample_does_not_move_the_limit() -> None:
    """Few requests in flight say nothing about capacity: neither growth nor backoff."""
    limit = Gradient2Limit(initial=10, minimum=1, maximum=40)
    for _ in range(50):
        limit.on_sample(0.010, 2, False)
    assert limit.limit == 10


def test_aimd_adds_one_while_busy_and_backs_off_on_drops() -> None:
    limit = AIMDLimit(initial=6, minimum=2, maximum=10)
    assert feed(limit, 0.010, 3) == [7, 8, 9]
    assert feed(limit, 0.010, 5)[-1] == 10  # capped
    assert feed(limit, 0.010, 1, dropped=True) == [9]  # x0.9
    assert feed(limit, 9.0, 30)[-1] == 2  # past the timeout: down to the floor, not below


def test_fixed_limit_never_moves() -> None:
    limit = FixedLimit(3)
    assert set(feed(limit, 0.001, 10) + feed(limit, 5.0, 10, dropped=True)) == {3}


def test_windowed_limit_feeds_one_mean_per_window() -> None:
    seen: list[tuple[float, int, bool]] = []

    class Recorder:
        limit = 5

        def on_sample(self, rtt: float, in_flight: int, dropped: bool) -> None:
            seen.append((rtt, in_flight, dropped))

    windowed = WindowedLimit(Recorder(), min_window=1.0, max_window=1.0, min_samples=3)
    windowed.on_sample_at(0.1, 0.002, 1, False)  # closes the first window (too few samples)
    for i, rtt in enumerate((0.002, 0.004, 0.006)):
        windowed.on_sample_at(0.5 + i * 0.1, rtt, 2 + i, i == 1)
    assert seen == []  # the window is still open
    windowed.on_sample_at(1.2, 0.008, 1, False)  # ends after the window (1.1): flush
    assert len(seen) == 1
    rtt, in_flight, dropped = seen[0]
    assert rtt == pytest.approx(0.005)  # mean of the four samples in the window
    assert (in_flight, dropped) == (4, True)  # max in flight, any drop


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("algorithm", ["gradient2", "vegas", "aimd"])
def test_the_limiter_adapts_from_the_service_times_it_measures(algorithm: str) -> None:
    """Requests admitted and released on a test clock: fast ones raise the limit, slow ones
    (and, for AIMD, slow past its timeout) lower it; queue wait never enters the sample."""
    clock = Clock()
    settings = AdmissionSettings(limit=algorithm, initial=4, minimum=1, maximum=32)
    limit = build_limit(settings)
    if isinstance(limit, AIMDLimit):
        limit.timeout = 0.050  # "slow" below means past AIMD's latency timeout
    windowed = WindowedLimit(limit, min_window=0.01, max_window=0.01, min_samples=4)
    limiter = AdmissionLimiter(windowed, clock=clock)

    def run(service_time: float, batches: int) -> list[int]:
        limits = []
        for _ in range(batches):
            held = [limiter.acquire() for _ in range(limiter.limit)]  # the limit fully used
            clock.now += service_time
            for admission in held:
                admission.release()
            limits.append(limiter.limit)
        return limits

    fast = run(0.005, 400)
    assert max(fast) > 4, fast[-20:]
    peak = limiter.limit
    slow = run(0.100, 400)
    assert min(slow) < peak, slow[-20:]
    assert limiter.stats().shed_total == 0
    assert all(1 <= n <= 32 for n in fast + slow)
