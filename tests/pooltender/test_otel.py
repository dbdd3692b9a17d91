"""pooltender.otel: the nine ``db.client.connection.*`` instruments, read by the SDK's
in-memory reader, after a real checkout, a real wait (another thread holds the only
connection) and a real timeout, on a SQLite file behind a WatchedQueuePool.

Names and units are compared with the conventions' own definitions
(``opentelemetry-semantic-conventions``, installed with the SDK), not with a copy of them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.semconv._incubating.metrics import db_metrics
from sqlalchemy import Engine, create_engine, exc, text

from pooltender.otel import POOL_NAME, STATE, PoolMetrics, instrument_app, pool_name_of
from pooltender.stats import CHECKOUT_WAIT_BUCKETS
from pooltender.watch import WatchedQueuePool, install_watch, watch_of

NAMES = (
    "db.client.connection.count",
    "db.client.connection.idle.max",
    "db.client.connection.idle.min",
    "db.client.connection.max",
    "db.client.connection.pending_requests",
    "db.client.connection.timeouts",
    "db.client.connection.create_time",
    "db.client.connection.wait_time",
    "db.client.connection.use_time",
)


def collect(reader: InMemoryMetricReader) -> dict[str, Any]:
    data = reader.get_metrics_data()
    assert data is not None
    return {
        metric.name: metric
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }


def official_units() -> dict[str, str]:
    """name -> unit, from the semantic-conventions package's own instrument factories."""
    reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[reader]).get_meter("semconv")
    for name in NAMES:
        factory = getattr(db_metrics, "create_" + name.replace(".", "_"))
        instrument = factory(meter)
        (instrument.record if hasattr(instrument, "record") else instrument.add)(1)
    return {name: metric.unit for name, metric in collect(reader).items()}


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = create_engine(
        f"sqlite:///{tmp_path / 'otel.db'}",
        poolclass=WatchedQueuePool,
        pool_size=1,
        max_overflow=0,
        pool_timeout=0.3,
    )
    yield engine
    watch = watch_of(engine)
    if watch is not None:
        watch.remove()
    engine.dispose()


def points(metric: Any) -> list[Any]:
    return list(metric.data.data_points)


def test_nine_instruments_after_a_checkout_a_wait_and_a_timeout(engine: Engine) -> None:
    watch = install_watch(engine)
    reader = InMemoryMetricReader()
    instruments = PoolMetrics(meter_provider=MeterProvider(metric_readers=[reader]))
    instruments.add(watch, "main")
    attrs = {POOL_NAME: "main"}

    with engine.connect() as conn:  # a checkout: opens the connection (create_time)
        conn.execute(text("SELECT 1"))

    held = engine.connect()  # the only connection; a second thread must wait for it
    got: list[float] = []

    def waiter() -> None:
        started = time.perf_counter()
        with engine.connect() as conn:
            got.append(time.perf_counter() - started)
            conn.execute(text("SELECT 1"))

    thread = threading.Thread(target=waiter)
    thread.start()
    deadline = time.monotonic() + 5
    pending = 0
    while time.monotonic() < deadline:  # the waiter is blocked in the pool: one pending
        pending = points(collect(reader)["db.client.connection.pending_requests"])[0].value
        if pending == 1:
            break
        time.sleep(0.01)
    assert pending == 1
    time.sleep(0.2)
    held.close()
    thread.join(5)
    assert got
    assert got[0] >= 0.2

    held = engine.connect()
    with pytest.raises(exc.TimeoutError):  # a timeout: nobody gives the connection back
        engine.connect()

    metrics = collect(reader)
    held.close()
    assert set(metrics) == set(NAMES)
    units = official_units()
    for name in NAMES:
        assert metrics[name].unit == units[name], name
        for point in points(metrics[name]):
            assert point.attributes[POOL_NAME] == "main", name

    count = {p.attributes[STATE]: p.value for p in points(metrics["db.client.connection.count"])}
    assert count == {"used": 1, "idle": 0}
    assert points(metrics["db.client.connection.count"])[0].attributes.keys() == {POOL_NAME, STATE}
    for name, value in (
        ("db.client.connection.idle.max", 1),
        ("db.client.connection.idle.min", 0),
        ("db.client.connection.max", 1),
        ("db.client.connection.pending_requests", 0),
        ("db.client.connection.timeouts", 1),
    ):
        (point,) = points(metrics[name])
        assert (dict(point.attributes), point.value) == (attrs, value), name
    assert metrics["db.client.connection.timeouts"].data.is_monotonic

    (create,) = points(metrics["db.client.connection.create_time"])
    (wait,) = points(metrics["db.client.connection.wait_time"])
    (use,) = points(metrics["db.client.connection.use_time"])
    assert create.count == 1
    assert 0 < create.sum < 5
    # checkouts: first, held, waiter, held again; plus the timed-out wait (>= pool_timeout)
    assert wait.count == 5
    assert wait.max >= 0.3
    assert wait.sum >= 0.2 + 0.3
    assert use.count == 3  # first, held (>= 0.2 s), waiter; the second `held` is back too late
    assert use.max >= 0.2
    assert tuple(wait.explicit_bounds) == CHECKOUT_WAIT_BUCKETS  # the /metrics buckets

    instruments.close()
    assert watch._hot.observers == []  # the hot path is back to one truth test


def test_without_instruments_the_watch_has_no_observer(engine: Engine) -> None:
    watch = install_watch(engine)
    assert watch._hot.observers == []
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    assert watch.stats().checkouts == 1


def test_a_failing_observer_never_breaks_a_checkout(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    watch = install_watch(engine)

    def broken(kind: str, seconds: float) -> None:
        raise RuntimeError("observer bug")

    watch.add_observer(broken)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT 1")).scalar_one() == 1
    watch.remove_observer(broken)
    assert "pool observer" in caplog.text
    assert watch.stats().checkins == 1


def test_duplicate_pool_name_is_refused(engine: Engine) -> None:
    instruments = PoolMetrics(meter_provider=MeterProvider())
    instruments.add(install_watch(engine), "main")
    with pytest.raises(ValueError, match="unique"):
        instruments.add(install_watch(engine), "main")
    instruments.close()


def test_pool_name_of_hides_credentials() -> None:
    engine = create_engine("mysql+pymysql://app:secret@db.internal:3306/coupons")
    assert pool_name_of(engine) == "db.internal:3306/coupons"


def test_instrument_app_names_pools_by_bind_key(tmp_path: Path) -> None:
    from flask import Flask
    from flask_sqlalchemy import SQLAlchemy

    from pooltender.flask import Pooltender

    db = SQLAlchemy()
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = f"sqlite:///{tmp_path / 'app.db'}"
    Pooltender(app, db)
    reader = InMemoryMetricReader()
    instruments = instrument_app(app, meter_provider=MeterProvider(metric_readers=[reader]))
    try:
        with app.app_context():
            db.session.execute(text("SELECT 1"))
            db.session.remove()
        metrics = collect(reader)
        (use,) = points(metrics["db.client.connection.use_time"])
        assert dict(use.attributes) == {POOL_NAME: "default"}
        assert use.count >= 1
    finally:
        instruments.close()
        with app.app_context():
            db.engine.dispose()
