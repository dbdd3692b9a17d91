"""The Flask extension on real servers: settings applied, watch installed, shedding, the
teardown safety net, the start-up budget check, and /metrics that Prometheus can parse."""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text
from sqlalchemy.orm import Session

from pooltender.budget import BudgetError
from pooltender.flask import WATCHED_PING_AFTER_IDLE, Pooltender
from pooltender.liveness import idle_ping_of
from pooltender.settings import SettingsError
from pooltender.shedding import SheddingQueuePool
from pooltender.watch import watch_of
from tests.conftest import create_database, drop_database


@pytest.fixture(scope="module", params=["mariadb", "postgresql"])
def server_url(request: pytest.FixtureRequest) -> Iterator[str]:
    name = f"pt_flask_{secrets.token_hex(4)}"
    url = create_database(request.param, name)
    yield url
    drop_database(request.param, name)


def sleep_sql(url: str, seconds: float) -> str:
    return f"SELECT SLEEP({seconds})" if url.startswith("mysql") else f"SELECT pg_sleep({seconds})"


def make_app(url: str, **config: Any) -> tuple[Flask, SQLAlchemy]:
    db = SQLAlchemy()
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = url
    app.config.update(config)
    Pooltender(app, db, public=True)

    @app.get("/query")
    def query() -> dict[str, int]:
        return {"one": db.session.execute(text("SELECT 1")).scalar_one()}

    @app.get("/slow")
    def slow() -> dict[str, bool]:
        db.session.execute(text(sleep_sql(url, 1.5)))
        return {"ok": True}

    return app, db


@pytest.fixture
def built(server_url: str) -> Iterator[tuple[Flask, SQLAlchemy]]:
    app, db = make_app(server_url, POOLTENDER_POOL_SIZE=2, POOLTENDER_MAX_OVERFLOW=1)
    yield app, db
    with app.app_context():
        db.engine.dispose()


def test_settings_reach_the_engine_and_the_watch_is_installed(
    built: tuple[Flask, SQLAlchemy],
) -> None:
    app, db = built
    with app.app_context():
        pool = db.engine.pool
        assert isinstance(pool, SheddingQueuePool)
        assert pool.size() == 2
        assert pool._max_overflow == 1
        assert watch_of(db.engine) is not None
        # the liveness check is the idle-window ping, not a round trip on every checkout
        ping = idle_ping_of(db.engine)
        assert ping is not None
        assert ping.after_idle == WATCHED_PING_AFTER_IDLE
        assert pool._pre_ping is False
    client = app.test_client()
    assert client.get("/query").get_json() == {"one": 1}
    stats = client.get("/pooltender/stats").get_json()
    engine = stats["engines"]["default"]
    assert engine["checkouts"] >= 1
    assert engine["checked_out"] == 0
    assert stats["settings"]["pool_size"] == 2
    advice = stats["recommendation"]["default"]  # Little's law on the measured figures
    assert advice["pool_size"] >= 1
    assert advice["hold_time_mean_s"] > 0
    assert client.get("/pooltender/health").get_json()["status"] == "ok"


def test_metrics_parse_with_prometheus_clients_parser(built: tuple[Flask, SQLAlchemy]) -> None:
    app, _db = built
    client = app.test_client()
    for _ in range(3):
        client.get("/query")
    response = client.get("/metrics")
    assert response.status_code == 200
    families = {f.name: f for f in text_string_to_metric_families(response.get_data(as_text=True))}
    checkouts = families["pooltender_pool_checkouts"]
    assert checkouts.type == "counter"
    assert sum(s.value for s in checkouts.samples if s.name.endswith("_total")) >= 3
    hold = families["pooltender_pool_hold_seconds"]
    assert hold.type == "histogram"
    count = [s.value for s in hold.samples if s.name.endswith("_count")]
    assert count
    assert count[0] >= 3
    assert families["pooltender_pool_connections"].type == "gauge"
    assert "pooltender_requests_shed" in families


def test_pool_exhaustion_is_shed_with_503_and_retry_after(server_url: str) -> None:
    app, db = make_app(
        server_url,
        POOLTENDER_POOL_SIZE=1,
        POOLTENDER_MAX_OVERFLOW=0,
        POOLTENDER_SHED_WAIT=0.2,
        POOLTENDER_POOL_TIMEOUT=30,
        POOLTENDER_RETRY_AFTER=2,
        POOLTENDER_ADMISSION=False,  # the pool's own shed wait, without admission in front
    )
    try:
        barrier = threading.Barrier(6)

        def call(path: str) -> tuple[int, float, dict[str, Any], str | None]:
            client = app.test_client()
            barrier.wait()
            if path == "/query":
                time.sleep(0.3)  # the slow request holds the only connection by now
            started = time.monotonic()
            response = client.get(path)
            return (
                response.status_code,
                time.monotonic() - started,
                response.get_json(),
                response.headers.get("Retry-After"),
            )

        with ThreadPoolExecutor(6) as pool:
            results = list(pool.map(call, ["/slow"] + ["/query"] * 5))
        slow, shed = results[0], results[1:]
        assert slow[0] == 200
        for status, elapsed, body, retry_after in shed:
            assert status == 503, body
            assert body["error"]["code"] == "service_unavailable"
            assert retry_after == "2"
            assert elapsed < 1.0  # answered after the 0.2 s shed wait, not the 30 s timeout
        # normal load is unaffected: with the connection free, requests succeed
        client = app.test_client()
        assert [client.get("/query").status_code for _ in range(5)] == [200] * 5
        stats = client.get("/pooltender/stats").get_json()
        assert stats["requests_shed"] == 5
        assert stats["engines"]["default"]["checkout_timeouts"] == 5
    finally:
        with app.app_context():
            db.engine.dispose()


def test_a_request_leaving_a_connection_out_is_logged_and_counted(
    built: tuple[Flask, SQLAlchemy], caplog: pytest.LogCaptureFixture
) -> None:
    app, db = built
    kept: list[Any] = []

    @app.get("/leaky")
    def leaky() -> dict[str, bool]:
        conn = db.engine.connect()  # outside db.session, never closed
        conn.execute(text("SELECT 1"))
        kept.append(conn)
        return {"ok": True}

    @app.get("/second")
    def second() -> dict[str, bool]:
        db.session.execute(text("SELECT 1"))
        with Session(bind=db.engine) as other:  # the post-mortem's second Session
            other.execute(text("SELECT 1"))
        return {"ok": True}

    client = app.test_client()
    with caplog.at_level(logging.WARNING, logger="pooltender"):
        assert client.get("/leaky").status_code == 200
    for conn in kept:
        conn.close()
    assert any("still checked out outside db.session" in r.message for r in caplog.records)
    assert client.get("/second").status_code == 200
    stats = client.get("/pooltender/stats").get_json()
    assert stats["requests_leaked_connection"] == 1
    engine = stats["engines"]["default"]
    assert engine["second_checkouts"] == 1
    assert "test_flask.py" in engine["second_checkout_reports"][0]
    assert engine["checked_out"] == 0


def test_a_leaked_connection_is_reported_with_file_and_line(server_url: str) -> None:
    app, db = make_app(server_url, POOLTENDER_LEAK_THRESHOLD=0.2)
    try:
        with app.app_context():
            watch = watch_of(db.engine)
            assert watch is not None
            conn = db.engine.connect()  # leak-site: this line is reported
            time.sleep(0.4)
            watch.sweep()
            reports = watch.stats().leak_reports
            conn.close()
        assert reports, "the leak was not reported"
        source = Path(__file__).read_text().splitlines()
        line = next(n for n, t in enumerate(source, 1) if "connect()  # leak-site" in t)
        where = reports[0].where
        assert where.endswith(f"test_flask.py:{line}"), where
    finally:
        with app.app_context():
            db.engine.dispose()


def test_a_views_checkout_stack_stops_before_flasks_dispatch(server_url: str) -> None:
    """Leak detection keeps the frames from the user's code down to the view and stops at
    the framework that called it: the report names the checkout's line and the view, and no
    Flask or Werkzeug frame (walking those made every checkout pay for them)."""
    app, db = make_app(server_url, POOLTENDER_LEAK_THRESHOLD=60)
    seen: list[tuple[str, ...]] = []

    def check_out() -> None:
        watch = watch_of(db.engine)
        assert watch is not None
        with db.engine.connect():  # stack-site
            (checkout,) = watch.open_checkouts()
            seen.append(tuple(f"{f.filename}:{f.function}" for f in checkout.stack))
            seen.append((checkout.where,))

    @app.get("/stack")
    def stack_view() -> dict[str, bool]:
        check_out()
        return {"ok": True}

    try:
        assert app.test_client().get("/stack").status_code == 200
        frames, (where,) = seen
        source = Path(__file__).read_text().splitlines()
        line = next(n for n, t in enumerate(source, 1) if "connect():  # stack-site" in t)
        assert where == f"{__file__}:{line}"
        assert frames == (f"{__file__}:check_out", f"{__file__}:stack_view"), frames
    finally:
        with app.app_context():
            db.engine.dispose()


def test_budget_check_refuses_a_fleet_the_server_cannot_hold(server_url: str) -> None:
    with pytest.raises(BudgetError) as refused:
        make_app(
            server_url,
            POOLTENDER_POOL_SIZE=200,
            POOLTENDER_MAX_OVERFLOW=500,
            POOLTENDER_FLEET_PROCESSES=4,
            POOLTENDER_FLEET_WORKER_MODEL="gevent",
            POOLTENDER_BUDGET_CHECK="fail",
        )
    message = str(refused.value)
    assert "POOLTENDER_MAX_OVERFLOW" in message or "POOLTENDER_POOL_SIZE" in message
    assert "max_connections" in message


def test_budget_check_warns_when_asked_to(
    server_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="pooltender.budget"):
        app, db = make_app(
            server_url,
            POOLTENDER_POOL_SIZE=200,
            POOLTENDER_MAX_OVERFLOW=500,
            POOLTENDER_FLEET_PROCESSES=4,
            POOLTENDER_FLEET_WORKER_MODEL="gevent",
            POOLTENDER_BUDGET_CHECK="warn",
        )
    with app.app_context():
        db.engine.dispose()
    assert any("max_connections" in r.getMessage() for r in caplog.records)


def test_misconfiguration_is_refused_with_a_message_naming_the_fix(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    with pytest.raises(SettingsError, match="POOLTENDER_POOL_SIZ"):
        make_app(url, POOLTENDER_POOL_SIZ=3)
    with pytest.raises(SettingsError, match="clashes with POOLTENDER_POOL_SIZE=3"):
        make_app(url, SQLALCHEMY_ENGINE_OPTIONS={"pool_size": 50}, POOLTENDER_POOL_SIZE=3)
    db = SQLAlchemy()
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = url
    db.init_app(app)
    with pytest.raises(RuntimeError, match=r"instead of db\.init_app"):
        Pooltender(app, db)
    app2 = Flask(__name__)
    app2.config["SQLALCHEMY_DATABASE_URI"] = url
    extension = Pooltender(app2, SQLAlchemy())
    with pytest.raises(RuntimeError, match="already registered"):
        extension.init_app(app2, SQLAlchemy())


def test_the_module_docstring_names_every_fleet_key_and_the_proxy() -> None:
    """The docstring is where an adopter reads the config keys: each fleet key (the proxy's
    included) and POOLTENDER_PROXY are named there."""
    import pooltender.flask
    from pooltender.budget import fleet_config_keys

    doc = pooltender.flask.__doc__ or ""
    missing = [k for k in [*fleet_config_keys(), "POOLTENDER_PROXY"] if f"``{k}``" not in doc]
    assert not missing, missing
