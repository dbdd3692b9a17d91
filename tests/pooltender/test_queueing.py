"""Queueing models of a pool: textbook values, properties, and the simulation against the
closed forms (fixed seeds, so a run is reproducible)."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pooltender.queueing import (
    FiniteSourceQueue,
    MMcQueue,
    engset_blocking,
    erlang_b,
    erlang_c,
    percentile,
    simulate_closed,
    simulate_open,
    smallest_pool,
)

servers = st.integers(min_value=1, max_value=400)
loads = st.floats(min_value=0.0, max_value=500.0, allow_nan=False)


def exponential_holds(mean: float, n: int = 20_000, seed: int = 1) -> list[float]:
    """``n`` exponential draws rescaled to exactly ``mean`` (so the comparison measures the
    queue, not the sampling error of the hold-time mean)."""
    rng = random.Random(seed)
    draws = [rng.expovariate(1 / mean) for _ in range(n)]
    scale = mean * n / sum(draws)
    return [d * scale for d in draws]


# ------------------------------------------------------------------ textbook values


def test_erlang_c_three_servers_two_erlangs_is_four_ninths() -> None:
    """M/M/3 at a = 2: P0 = 1/9, C = (a^3/3!)(3/(3-2)) P0 = 4/9 (Kleinrock eq. 3.40)."""
    assert erlang_c(3, 2.0) == pytest.approx(4 / 9, rel=1e-12)


def test_erlang_b_table_value() -> None:
    """Erlang B tables: 10 trunks at 5 Erlangs block 1.838 % of calls."""
    assert erlang_b(10, 5.0) == pytest.approx(0.018385, abs=1e-6)


def test_mm1_reduces_to_rho() -> None:
    """M/M/1: P(wait) = rho and E[W] = rho / (mu - lambda)."""
    q = MMcQueue(arrival_rate=80.0, hold_time=0.01, servers=1)
    assert q.p_wait == pytest.approx(0.8)
    assert q.mean_wait == pytest.approx(0.8 / (100 - 80))
    # p99: 0.8 exp(-20 t) = 0.01  ->  t = ln(80) / 20
    assert q.wait_percentile(0.99) == pytest.approx(math.log(80) / 20)


def test_many_servers_stay_finite_and_accurate() -> None:
    """No a^c/c! overflow: 2,000 servers at 1,900 Erlangs gives a probability."""
    c = erlang_c(2000, 1900.0)
    assert 0.0 < c < 1.0
    assert erlang_c(2000, 1999.999) < 1.0


def test_unstable_queue_always_waits() -> None:
    q = MMcQueue(arrival_rate=1000.0, hold_time=0.01, servers=10)
    assert not q.stable
    assert q.p_wait == 1.0
    assert q.mean_wait == math.inf
    assert q.wait_percentile(0.99) == math.inf


def test_percentile_zero_when_few_wait() -> None:
    q = MMcQueue(arrival_rate=100.0, hold_time=0.002, servers=4)  # a = 0.2
    assert q.p_wait < 0.01
    assert q.wait_percentile(0.99) == 0.0


def test_smallest_pool_is_the_first_that_meets_the_target() -> None:
    q = smallest_pool(400.0, 0.005, max_wait=0.001)  # a = 2 Erlangs
    assert q.wait_percentile(0.99) <= 0.001
    smaller = MMcQueue(arrival_rate=400.0, hold_time=0.005, servers=q.servers - 1)
    assert smaller.wait_percentile(0.99) > 0.001
    with pytest.raises(ValueError, match="give max_p_wait"):
        smallest_pool(1.0, 1.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"arrival_rate": -1.0, "hold_time": 1.0, "servers": 1}, "arrival_rate"),
        ({"arrival_rate": 1.0, "hold_time": 0.0, "servers": 1}, "hold_time"),
        ({"arrival_rate": 1.0, "hold_time": 1.0, "servers": 0}, "servers"),
    ],
)
def test_bad_inputs_name_the_figure(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MMcQueue(**kwargs)  # type: ignore[arg-type]


# ------------------------------------------------------------------------ properties


@given(servers, loads)
def test_erlang_c_is_a_probability_at_least_erlang_b(c: int, a: float) -> None:
    b, w = erlang_b(c, a), erlang_c(c, a)
    assert 0.0 <= b <= 1.0
    assert 0.0 <= w <= 1.0
    assert w >= b - 1e-12  # waiting is at least as likely as blocking


@given(servers, loads)
def test_erlang_c_decreases_with_more_servers(c: int, a: float) -> None:
    assert erlang_c(c + 1, a) <= erlang_c(c, a) + 1e-12


@given(servers, st.floats(min_value=0.01, max_value=0.99))
def test_wait_tail_is_monotone_and_matches_percentile(c: int, rho: float) -> None:
    q = MMcQueue(arrival_rate=rho * c / 0.01, hold_time=0.01, servers=c)
    t99 = q.wait_percentile(0.99)
    if t99 > 0:
        assert q.p_wait_longer(t99) == pytest.approx(0.01, rel=1e-6)
    assert q.p_wait_longer(0.0) == pytest.approx(q.p_wait)
    assert q.p_wait_longer(0.01) <= q.p_wait_longer(0.001)


@given(st.integers(1, 60), st.integers(1, 60), st.floats(0.01, 10.0))
def test_engset_is_a_probability_below_erlang_b_of_the_same_load(
    n: int, c: int, think: float
) -> None:
    """Finite sources block less than an infinite (Poisson) stream of the same intensity."""
    hold = 0.01
    blocked = engset_blocking(n, c, hold, think)
    assert 0.0 <= blocked <= 1.0
    assert blocked <= erlang_b(c, n * hold / think) + 1e-9


@given(st.integers(1, 40), st.integers(1, 40), st.floats(0.001, 1.0))
def test_finite_source_probabilities(n: int, c: int, think: float) -> None:
    q = FiniteSourceQueue(sources=n, servers=c, hold_time=0.01, think_time=think)
    assert 0.0 <= q.p_wait <= 1.0
    if n <= c:
        assert q.p_wait == pytest.approx(0.0, abs=1e-12)
    assert q.throughput <= min(n, c) / 0.01 + 1e-9


# ------------------------------------------------------------------- limits agree


def test_engset_tends_to_erlang_b_with_many_sources() -> None:
    """N sources of intensity a/N each: as N grows, Engset -> Erlang B(c, a)."""
    c, a, hold = 8, 6.0, 0.01
    n = 50_000
    think = n * hold / a
    assert engset_blocking(n, c, hold, think) == pytest.approx(erlang_b(c, a), rel=1e-3)


def test_finite_source_tends_to_erlang_c_with_many_sources() -> None:
    c, a, hold = 8, 6.0, 0.01
    n = 20_000
    q = FiniteSourceQueue(sources=n, servers=c, hold_time=hold, think_time=n * hold / a)
    mmc = MMcQueue(arrival_rate=a / hold, hold_time=hold, servers=c)
    assert q.p_wait == pytest.approx(mmc.p_wait, rel=2e-3)
    assert q.wait_percentile(0.99) == pytest.approx(mmc.wait_percentile(0.99), rel=5e-3)


def test_open_simulation_converges_to_erlang_c() -> None:
    """Exponential holds, Poisson arrivals: the simulation agrees with the closed form."""
    mmc = MMcQueue(arrival_rate=700.0, hold_time=0.01, servers=10)  # rho 0.7
    sim = simulate_open(700.0, exponential_holds(0.01), 10, checkouts=100_000, seed=7)
    assert sim.p_wait == pytest.approx(mmc.p_wait, rel=0.08)
    assert sim.mean_wait == pytest.approx(mmc.mean_wait, rel=0.12)
    assert sim.wait_percentile(0.99) == pytest.approx(mmc.wait_percentile(0.99), rel=0.12)
    assert sim.throughput == pytest.approx(700.0, rel=0.03)


def test_closed_simulation_converges_to_finite_source_model() -> None:
    q = FiniteSourceQueue(sources=16, servers=6, hold_time=0.01, think_time=0.015)
    sim = simulate_closed(
        16, exponential_holds(0.01), 6, think_time=0.015, checkouts=60_000, seed=3
    )
    assert sim.p_wait == pytest.approx(q.p_wait, rel=0.08)
    assert sim.mean_wait == pytest.approx(q.mean_wait, rel=0.12)
    assert sim.wait_percentile(0.99) == pytest.approx(q.wait_percentile(0.99), rel=0.12)
    assert sim.throughput == pytest.approx(q.throughput, rel=0.03)


def test_constant_holds_wait_less_than_exponential() -> None:
    """M/D/c waits less than M/M/c at the same mean (less variable service): the
    simulation answers what the closed form cannot."""
    mmc = MMcQueue(arrival_rate=700.0, hold_time=0.01, servers=10)
    sim = simulate_open(700.0, [0.01], 10, checkouts=40_000, seed=5)
    assert sim.mean_wait < 0.75 * mmc.mean_wait


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 8), st.floats(0.1, 0.9), st.integers(0, 2**16))
def test_simulated_waits_are_sorted_non_negative(c: int, rho: float, seed: int) -> None:
    sim = simulate_open(rho * c / 0.01, [0.005, 0.01, 0.02], c, checkouts=500, seed=seed)
    assert list(sim.waits) == sorted(sim.waits)
    assert sim.waits[0] >= 0.0
    assert 0.0 <= sim.p_wait <= 1.0


def test_percentile_nearest_rank() -> None:
    data = [float(x) for x in range(1, 101)]
    assert percentile(data, 0.99) == 99.0
    assert percentile(data, 1.0) == 100.0
    with pytest.raises(ValueError, match="no samples"):
        percentile([], 0.5)


def test_pool_stats_recommendation_carries_erlang_c(tmp_path: Path) -> None:
    """The recommendation in /pooltender/stats puts Erlang C's P(wait) and p99 wait for the
    measured rate and hold time beside the measured p99 wait."""
    from sqlalchemy import create_engine, text

    from pooltender.flask import _recommend
    from pooltender.watch import install_watch

    engine = create_engine(f"sqlite:///{tmp_path / 'w.db'}", pool_size=2, max_overflow=1)
    watch = install_watch(engine)
    try:
        for _ in range(20):
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        stats = watch.stats()
        advice = _recommend(stats)
        assert stats.hold_time_mean > 0
        expected = MMcQueue(
            arrival_rate=stats.checkouts_per_second, hold_time=stats.hold_time_mean, servers=3
        )
        assert advice["p_wait_current_cap"] == pytest.approx(expected.p_wait)
        assert 0.0 <= advice["p_wait_recommended_cap"] <= 1.0
        assert advice["p99_wait_s_measured"] == stats.checkout_wait.p99
    finally:
        engine.dispose()
