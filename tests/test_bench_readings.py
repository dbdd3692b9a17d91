"""How bench/_prom.py reads a percentile from the admission histograms of two /metrics scrapes:
the bucket holding it and a value interpolated inside it (Prometheus' histogram_quantile)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _prom() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_prom", BENCH / "_prom.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_prom", module)
    spec.loader.exec_module(module)
    return module


INF = float("inf")


def test_the_p99_is_interpolated_inside_its_bucket_and_the_bucket_is_reported() -> None:
    prom = _prom()
    cumulative = {0.05: 10.0, 0.075: 50.0, 0.1: 90.0, 0.125: 100.0, INF: 100.0}
    assert prom.quantile(cumulative, 0.99) == 0.125
    assert prom.bucket_of(cumulative, 0.99) == (0.1, 0.125)
    assert prom.interpolated(cumulative, 0.99) == pytest.approx(0.1 + 0.025 * 9 / 10)
    assert prom.interpolated(cumulative, 0.5) == pytest.approx(0.075)  # the bucket's top
    assert prom.interpolated(cumulative, 0.05) == pytest.approx(0.025)  # first bucket from 0


def test_wait_figures_give_edge_bucket_and_estimate_in_ms() -> None:
    prom = _prom()
    delta = {
        "shed": {"standing_queue": 99.0, "queue_timeout": 1.0, "queue_full": 0.0},
        "buckets": {"shed": {0.0001: 80.0, 0.005: 98.0, 0.075: 99.0, 0.1: 100.0, INF: 100.0}},
    }
    out = prom.wait_figures(delta)
    assert out["shed_by_reason"] == {"standing_queue": 99, "queue_timeout": 1}
    shed = out["shed"]
    assert shed["count"] == 100
    assert shed["p99_ms_le"] == pytest.approx(75.0)
    assert shed["p99_bucket_ms"] == pytest.approx([5.0, 75.0])
    assert shed["p99_ms"] == pytest.approx(75.0)
    assert shed["p50_bucket_ms"] == pytest.approx([0.0, 0.1])


def test_an_empty_histogram_has_no_percentile() -> None:
    prom = _prom()
    assert prom.interpolated({}, 0.99) is None
    assert prom.bucket_of({0.1: 0.0, INF: 0.0}, 0.99) is None
    # everything above the top edge: the estimate is the top finite edge (never invented)
    assert prom.interpolated({0.1: 0.0, 5.0: 0.0, INF: 3.0}, 0.99) == 5.0
