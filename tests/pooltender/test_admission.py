"""Admission control with real threads: waiting, draining, standing-queue sheds, adaptive
LIFO, and the Flask integration on real SQLite and MariaDB.

No assertion is about speed. Where a test needs the queue to be *standing* it waits until
the limiter reports so (the limiter's clock is the test's in the unit tests); every blocking
step has a generous bound so a broken limiter fails the test instead of hanging it.
"""

from __future__ import annotations

import secrets
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from pooltender.admission import (
    Admission,
    AdmissionLimiter,
    AdmissionMiddleware,
    FixedLimit,
    Overloaded,
    admission_of,
)
from pooltender.flask import Pooltender
from pooltender.watch import watch_of
from tests.conftest import create_database, drop_database

BOUND = 30.0  # seconds any single blocking step may take before the test fails


def eventually(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + BOUND
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for: {what}")
        time.sleep(0.005)


class Clock:
    """A monotonic clock the test moves (the limiter's waits still run on real time)."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def limiter(limit: int = 1, **options: Any) -> AdmissionLimiter:
    return AdmissionLimiter(FixedLimit(limit), **options)


# ----------------------------------------------------------------------------- the limiter


def test_a_request_over_the_limit_waits_then_runs() -> None:
    lim = limiter(1, timeout=BOUND, interval=BOUND)
    held = lim.acquire()
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(lim.acquire)
        eventually(lambda: lim.stats().queue_length == 1, "the second request to queue")
        assert not waiting.done()  # over the limit: it waits, it is not refused
        assert lim.stats().in_flight == 1
        held.release()
        admitted = waiting.result(timeout=BOUND)
    assert isinstance(admitted, Admission)
    assert admitted.waited > 0
    stats = lim.stats()
    assert (stats.in_flight, stats.queue_length, stats.admitted_after_wait) == (1, 0, 1)
    admitted.release()
    assert lim.stats().in_flight == 0
    assert lim.stats().queue_wait.count == 2  # one at once, one after waiting


def test_nothing_is_shed_while_the_queue_keeps_draining() -> None:
    lim = limiter(2, timeout=BOUND, interval=BOUND, max_queue=64)
    high = 0
    lock = threading.Lock()
    inside = 0

    def request(_: int) -> None:
        nonlocal inside, high
        admission = lim.acquire()
        with lock:
            inside += 1
            high = max(high, inside)
        time.sleep(0.002)
        with lock:
            inside -= 1
        admission.release()

    with ThreadPoolExecutor(24) as pool:
        list(pool.map(request, range(240)))
    stats = lim.stats()
    assert stats.shed_total == 0
    assert stats.admitted == 240
    assert stats.admitted_after_wait > 0  # the queue was used...
    assert high <= 2  # ...and the limit held
    assert stats.high_water_in_flight <= 2


def test_a_standing_queue_sheds_new_arrivals_after_the_short_target() -> None:
    clock = Clock()
    lim = limiter(1, target=0.005, interval=0.1, timeout=BOUND, clock=clock)
    held = lim.acquire()
    with ThreadPoolExecutor(1) as pool:
        early = pool.submit(lim.acquire)  # the queue had just been empty: long timeout
        eventually(lambda: lim.stats().queue_length == 1, "the first waiter to queue")
        assert not lim.stats().standing
        clock.now += 0.2  # non-empty for longer than the interval
        assert lim.stats().standing
        with pytest.raises(Overloaded) as refused:
            lim.acquire()
        assert refused.value.reason == "standing_queue"
        assert not early.done()  # the early waiter keeps its long timeout
        held.release()
        early.result(timeout=BOUND).release()
    stats = lim.stats()
    assert stats.shed == {"queue_full": 0, "standing_queue": 1, "queue_timeout": 0}
    assert stats.shed_wait.count == 1


def test_a_full_queue_refuses_at_once_and_a_lapsed_wait_is_a_timeout() -> None:
    lim = limiter(1, max_queue=1, timeout=0.05, interval=BOUND)
    held = lim.acquire()
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(lim.acquire)
        eventually(lambda: lim.stats().queue_length == 1, "one waiter")
        with pytest.raises(Overloaded) as full:
            lim.acquire()
        assert (full.value.reason, full.value.waited) == ("queue_full", 0.0)
        with pytest.raises(Overloaded) as lapsed:
            waiting.result(timeout=BOUND)
    assert lapsed.value.reason == "queue_timeout"
    assert lapsed.value.queued == 0
    held.release()
    assert lim.stats().in_flight == 0
    assert lim.stats().queue_length == 0


def _queue_in_order(pool: ThreadPoolExecutor, lim: AdmissionLimiter, n: int) -> list[Future[Any]]:
    order: list[Future[Any]] = []
    for i in range(n):
        order.append(pool.submit(lim.acquire))
        eventually(lambda i=i: lim.stats().queue_length == i + 1, f"waiter {i} to queue")
    return order


@pytest.mark.parametrize(("standing", "expected"), [(False, [0, 1, 2]), (True, [2, 1, 0])])
def test_the_queue_is_fifo_normally_and_lifo_while_standing(
    standing: bool, expected: list[int]
) -> None:
    """Fail at Scale's adaptive LIFO: under a standing queue the newest waiter goes first."""
    clock = Clock()
    lim = limiter(1, target=BOUND, interval=0.1, timeout=BOUND, clock=clock)
    held = lim.acquire()
    with ThreadPoolExecutor(3) as pool:
        waiters = _queue_in_order(pool, lim, 3)
        if standing:
            clock.now += 0.2
        held.release()
        order: list[int] = []
        remaining = [0, 1, 2]
        for _ in range(3):
            eventually(lambda: any(waiters[i].done() for i in remaining), "the next admission")
            served = [i for i in remaining if waiters[i].done()]
            assert len(served) == 1  # the limit is 1: one at a time
            order.append(served[0])
            remaining.remove(served[0])
            waiters[served[0]].result().release()
    assert order == expected
    assert lim.stats().shed_total == 0
    assert lim.stats().in_flight == 0


def test_a_release_hands_the_slot_on_even_when_a_waiter_is_timing_out() -> None:
    """Many short waits racing releases: every admission is released, none is lost."""
    lim = limiter(2, timeout=0.001, interval=BOUND, max_queue=64)
    admitted = 0
    shed = 0
    lock = threading.Lock()

    def request(_: int) -> None:
        nonlocal admitted, shed
        try:
            admission = lim.acquire()
        except Overloaded:
            with lock:
                shed += 1
            return
        with lock:
            admitted += 1
        admission.release()

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(request, range(2000)))
    stats = lim.stats()
    assert admitted + shed == 2000
    assert (stats.admitted, stats.shed_total) == (admitted, shed)
    assert (stats.in_flight, stats.queue_length) == (0, 0)  # no slot leaked


def test_the_middleware_answers_a_shed_without_calling_the_app() -> None:
    calls: list[str] = []

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        calls.append(environ["PATH_INFO"])
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    lim = limiter(1, max_queue=0)
    wrapped = AdmissionMiddleware(app, lim, exempt=["/healthz", "/metrics"], retry_after=3)
    held = lim.acquire()
    seen: list[tuple[str, list[tuple[str, str]]]] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc: Any = None) -> None:
        seen.append((status, headers))

    body = b"".join(wrapped({"PATH_INFO": "/orders"}, start_response))
    assert calls == []
    assert seen[-1][0].startswith("503")
    headers = dict(seen[-1][1])
    assert headers["Retry-After"] == "3"
    assert headers["Content-Type"] == "application/json"
    assert int(headers["Content-Length"]) == len(body)
    assert b'"code": "overloaded"' in body
    for path in ("/healthz", "/metrics", "/metrics/x"):
        assert b"".join(wrapped({"PATH_INFO": path}, start_response)) == b"ok"
    b"".join(wrapped({"PATH_INFO": "/metricsx"}, start_response))  # not a segment match
    assert calls == ["/healthz", "/metrics", "/metrics/x"]
    held.release()
    assert b"".join(wrapped({"PATH_INFO": "/orders"}, start_response)) == b"ok"
    assert lim.stats().in_flight == 0


# ----------------------------------------------------------------------------- Flask


@pytest.fixture(scope="module", params=["sqlite", "mariadb"])
def database(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('admission') / 'app.db'}"
        return
    name = f"pt_admission_{secrets.token_hex(4)}"
    url = create_database("mariadb", name)
    yield url
    drop_database("mariadb", name)


class Gate:
    """Holds ``/hold`` requests inside the app (with a connection checked out)."""

    def __init__(self) -> None:
        self.entered = threading.Semaphore(0)
        self.release = threading.Event()


def make_app(url: str, gate: Gate, **config: Any) -> tuple[Flask, SQLAlchemy]:
    db = SQLAlchemy()
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = url
    app.config.update(POOLTENDER_RETRY_AFTER=2, **config)
    Pooltender(app, db, public=True)

    @app.get("/hold")
    def hold() -> dict[str, int]:
        value = db.session.execute(text("SELECT 1")).scalar_one()  # connection checked out
        gate.entered.release()
        assert gate.release.wait(BOUND)
        return {"one": value}

    @app.get("/query")
    def query() -> dict[str, int]:
        return {"one": db.session.execute(text("SELECT 1")).scalar_one()}

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app, db


@pytest.fixture
def gate() -> Iterator[Gate]:
    g = Gate()
    yield g
    g.release.set()


@pytest.fixture
def built(database: str, gate: Gate) -> Iterator[tuple[Flask, SQLAlchemy]]:
    app, db = make_app(
        database,
        gate,
        POOLTENDER_POOL_SIZE=2,
        POOLTENDER_MAX_OVERFLOW=0,
        POOLTENDER_ADMISSION_LIMIT="fixed",
        POOLTENDER_ADMISSION_INITIAL="1",
        POOLTENDER_ADMISSION_INTERVAL="0.05",
        POOLTENDER_ADMISSION_TARGET="0.005",
        POOLTENDER_ADMISSION_TIMEOUT=str(BOUND),
    )
    yield app, db
    with app.app_context():
        db.engine.dispose()


def get(app: Flask, path: str) -> Any:
    return app.test_client().get(path)


def checked_out(app: Flask, db: SQLAlchemy) -> int:
    with app.app_context():
        watch = watch_of(db.engine)
        assert watch is not None
        return watch.stats().checked_out


def test_waiting_requests_hold_no_connection_and_run_once_the_slot_frees(
    built: tuple[Flask, SQLAlchemy], gate: Gate
) -> None:
    app, db = built
    installed = admission_of(app)
    assert installed is not None
    assert installed.limiter is not None
    lim = installed.limiter
    with ThreadPoolExecutor(4) as pool:
        holder = pool.submit(get, app, "/hold")
        assert gate.entered.acquire(timeout=BOUND)
        waiting = [pool.submit(get, app, "/query") for _ in range(3)]
        eventually(lambda: lim.stats().queue_length == 3, "three requests to queue")
        # three requests are waiting, and only the one running holds a connection
        assert checked_out(app, db) == 1
        assert not any(w.done() for w in waiting)
        gate.release.set()
        assert holder.result(timeout=BOUND).status_code == 200
        assert [w.result(timeout=BOUND).status_code for w in waiting] == [200, 200, 200]
    stats = get(app, "/pooltender/stats").get_json()["admission"]
    assert stats["enabled"] is True
    assert stats["shed_total"] == 0
    assert stats["admitted_after_wait"] == 3
    assert stats["in_flight"] == 0
    assert checked_out(app, db) == 0


def test_a_standing_queue_is_shed_with_503_retry_after_and_a_json_error(
    built: tuple[Flask, SQLAlchemy], gate: Gate
) -> None:
    app, _db = built
    installed = admission_of(app)
    assert installed is not None
    assert installed.limiter is not None
    lim = installed.limiter
    with ThreadPoolExecutor(2) as pool:
        holder = pool.submit(get, app, "/hold")
        assert gate.entered.acquire(timeout=BOUND)
        early = pool.submit(get, app, "/query")
        eventually(lambda: lim.stats().standing, "the queue to be standing")
        refused = get(app, "/query")
        assert refused.status_code == 503
        assert refused.headers["Retry-After"] == "2"
        error = refused.get_json()["error"]
        assert error["code"] == "overloaded"
        assert "overloaded" in error["message"]
        # health, metrics and pooltender's own pages are never queued
        assert get(app, "/healthz").status_code == 200
        metrics = get(app, "/metrics")
        assert metrics.status_code == 200
        stats = get(app, "/pooltender/stats").get_json()["admission"]
        assert stats["queue_length"] == 1
        assert stats["in_flight"] == 1
        assert stats["shed"]["standing_queue"] == 1
        gate.release.set()
        assert holder.result(timeout=BOUND).status_code == 200
        assert early.result(timeout=BOUND).status_code == 200  # the queue drained: served
    families = {
        f.name: f for f in text_string_to_metric_families(get(app, "/metrics").get_data(True))
    }
    assert families["pooltender_admission_limit"].samples[0].value == 1
    assert families["pooltender_admission_in_flight"].type == "gauge"
    assert families["pooltender_admission_queue_length"].samples[0].value == 0
    shed = {
        s.labels["reason"]: s.value
        for s in families["pooltender_admission_shed"].samples
        if s.name.endswith("_total")
    }
    assert shed == {"queue_full": 0, "standing_queue": 1, "queue_timeout": 0}
    wait = families["pooltender_admission_queue_wait_seconds"]
    assert wait.type == "histogram"
    counts = {s.labels["outcome"]: s.value for s in wait.samples if s.name.endswith("_count")}
    assert counts["shed"] == 1
    assert counts["admitted"] >= 2


def test_admission_off_is_the_plain_app(database: str, gate: Gate) -> None:
    app, db = make_app(database, gate, POOLTENDER_ADMISSION="false")
    try:
        assert not isinstance(app.wsgi_app, AdmissionMiddleware)
        assert get(app, "/query").status_code == 200
        assert get(app, "/pooltender/stats").get_json()["admission"] == {"enabled": False}
        families = {
            f.name for f in text_string_to_metric_families(get(app, "/metrics").get_data(True))
        }
        assert "pooltender_admission_limit" not in families
    finally:
        with app.app_context():
            db.engine.dispose()


def test_the_default_limit_is_the_pool_cap_and_moved_pages_stay_exempt(
    tmp_path: Path, gate: Gate
) -> None:
    app, db = make_app(
        f"sqlite:///{tmp_path / 'd.db'}",
        gate,
        POOLTENDER_POOL_SIZE=3,
        POOLTENDER_MAX_OVERFLOW=2,
        POOLTENDER_ENDPOINTS="/ops/pt",
        POOLTENDER_METRICS_PATH="/ops/metrics",
    )
    try:
        installed = admission_of(app)
        assert installed is not None
        assert installed.limiter is not None
        assert installed.limiter.limit == 5
        assert installed.settings.max_limit == 10
        middleware = app.wsgi_app
        assert isinstance(middleware, AdmissionMiddleware)
        assert middleware.is_exempt("/ops/pt/stats")
        assert middleware.is_exempt("/ops/metrics")
        assert not middleware.is_exempt("/query")
    finally:
        with app.app_context():
            db.engine.dispose()


def test_the_dashboard_shows_the_limit_in_flight_and_queue(tmp_path: Path, gate: Gate) -> None:
    app, db = make_app(
        f"sqlite:///{tmp_path / 'dash.db'}",
        gate,
        POOLTENDER_DASHBOARD=True,
        POOLTENDER_ADMISSION_LIMIT="fixed",
        POOLTENDER_ADMISSION_INITIAL=3,
    )
    try:
        client = app.test_client()
        page = client.get("/pooltender/dashboard/")
        assert page.status_code == 200
        html = page.get_data(as_text=True)
        assert 'data-metric="admission.limit" data-value="3"' in html
        assert 'data-metric="admission.queue_length"' in html
        data = client.get("/pooltender/dashboard/data").get_json()["admission"]
        assert (data["enabled"], data["limit"], data["in_flight"]) == (True, 3, 0)
        with client.get("/pooltender/dashboard/static/dashboard.js") as script:
            assert "drawAdmission" in script.get_data(as_text=True)
    finally:
        with app.app_context():
            db.engine.dispose()


def test_the_dashboard_script_draws_the_admission_line_in_a_browser(
    tmp_path: Path, gate: Gate
) -> None:
    from tests.pooltender.test_dashboard import LiveServer, _chromium_flags, chromium_path

    chromium = chromium_path()
    app, db = make_app(
        f"sqlite:///{tmp_path / 'browser.db'}",
        gate,
        POOLTENDER_DASHBOARD=True,
        POOLTENDER_ADMISSION_LIMIT="fixed",
        POOLTENDER_ADMISSION_INITIAL=4,
    )
    live = LiveServer(app)
    try:
        done = subprocess.run(
            [
                chromium,
                *_chromium_flags(str(tmp_path / "profile")),
                "--virtual-time-budget=3000",
                "--dump-dom",
                live.url("/pooltender/dashboard/"),
            ],
            capture_output=True,
            timeout=60,
            check=False,
        )
        dom = done.stdout.decode()
        assert done.returncode == 0, done.stderr.decode()[-2000:]
        assert int(dom.split('data-polls="')[1].split('"')[0]) >= 2  # drawn, then polled
        line = dom.split('id="admission-line"')[1].split("</p>")[0]
        assert 'data-metric="admission.limit" data-value="4"' in line
        assert "(FixedLimit)" in line
        assert "wait p99" in line  # only the script writes the wait figure
    finally:
        live.stop()
        with app.app_context():
            db.engine.dispose()
