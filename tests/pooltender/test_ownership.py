"""The owner of a checkout is the unit of work -- the request under the Flask extension,
pooltender.session.unit_of_work, the asyncio task -- not the thread (threads are reused).

The Flask case reproduces what was seen in a small app: one request leaked a connection and
every later clean request on the same (reused) thread was blamed for it.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, scoped_session, sessionmaker

from pooltender.flask import Pooltender
from pooltender.session import unit_of_work
from pooltender.shedding import current_shed_wait
from pooltender.units import UnitOfWork, current_unit
from pooltender.watch import WatchedQueuePool, install_watch, watch_of
from tests.conftest import create_database, drop_database


@pytest.fixture(scope="module", params=["mariadb", "postgresql"])
def server_url(request: pytest.FixtureRequest) -> Iterator[str]:
    name = f"pt_owner_{secrets.token_hex(4)}"
    url = create_database(request.param, name)
    yield url
    drop_database(request.param, name)


def test_a_leak_is_reported_once_and_never_blamed_on_later_requests_of_the_same_thread(
    server_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    db = SQLAlchemy()
    app = Flask(__name__)
    app.config.update(
        SQLALCHEMY_DATABASE_URI=server_url, POOLTENDER_POOL_SIZE=3, POOLTENDER_MAX_OVERFLOW=1
    )
    Pooltender(app, db, public=True)
    kept: list[Any] = []

    @app.get("/leaky")
    def leaky() -> dict[str, bool]:
        conn = db.engine.connect()  # outside db.session, never closed: the one real leak
        conn.execute(text("SELECT 1"))
        kept.append(conn)
        return {"ok": True}

    @app.get("/clean")
    def clean() -> dict[str, int]:
        return {"one": db.session.execute(text("SELECT 1")).scalar_one()}

    @app.get("/second")
    def second() -> dict[str, bool]:
        db.session.execute(text("SELECT 1"))
        with Session(bind=db.engine) as other:  # the genuine second checkout
            other.execute(text("SELECT 1"))  # genuine-second
        return {"ok": True}

    client = app.test_client()
    worker = ThreadPoolExecutor(max_workers=1)  # one thread serves every request, in turn
    try:
        caplog.set_level(logging.WARNING, logger="pooltender")
        assert worker.submit(lambda: client.get("/leaky").status_code).result() == 200
        leak_lines = [r for r in caplog.records if "still checked out" in r.getMessage()]
        assert len(leak_lines) == 1
        caplog.clear()
        for _ in range(5):
            assert worker.submit(lambda: client.get("/clean").status_code).result() == 200
        assert [r.getMessage() for r in caplog.records] == []
        assert worker.submit(lambda: client.get("/second").status_code).result() == 200
        seconds = [r for r in caplog.records if "second connection" in r.getMessage()]
        assert len(seconds) == 1
        with app.app_context():
            watch = watch_of(db.engine)
            assert watch is not None
            stats = watch.stats()
        assert stats.second_checkouts == 1
        report = stats.second_checkout_reports[0]
        line = next(
            n
            for n, src in enumerate(Path(__file__).read_text().splitlines(), start=1)
            if "# genuine-second" in src and "next(" not in src
        )
        assert report.where == f"{__file__}:{line}"
        assert report.first_stack == () or report.first_stack[0].lineno != line
        assert app.extensions["pooltender"].requests_leaked == 1
        assert stats.checked_out == 1  # the leaked one is still out, owned by nobody
    finally:
        worker.shutdown()
        for conn in kept:
            conn.close()
        with app.app_context():
            db.engine.dispose()


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = create_engine(
        f"sqlite:///{tmp_path / 'o.db'}", poolclass=WatchedQueuePool, pool_size=3, max_overflow=0
    )
    yield engine
    watch = watch_of(engine)
    if watch is not None:
        watch.remove()
    engine.dispose()


def test_unit_of_work_owns_its_checkouts_and_disowns_a_leak_at_its_end(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    watch = install_watch(engine, capture_stacks=True)
    session = scoped_session(sessionmaker(bind=engine))
    leaked: list[Any] = []
    caplog.set_level(logging.WARNING, logger="pooltender")
    with unit_of_work(session) as current:
        current.execute(text("SELECT 1"))
        leaked.append(engine.connect())  # a second checkout in the unit, never closed
    assert watch.stats().second_checkouts == 1
    ended = [r for r in caplog.records if "ended with 1 connection" in r.getMessage()]
    assert len(ended) == 1
    caplog.clear()
    for _ in range(3):  # later units on the same thread hold nothing of the leak's
        with unit_of_work(session) as current:
            current.execute(text("SELECT 1"))
    assert watch.stats().second_checkouts == 1
    assert caplog.records == []
    assert watch.held_by_current_owner() == 0
    leaked[0].close()  # a disowned connection comes back without upsetting the counts
    stats = watch.stats()
    assert stats.checked_out == 0
    assert stats.checkouts == stats.checkins
    session.remove()


def test_asyncio_tasks_are_owners_of_their_own(engine: Engine) -> None:
    watch = install_watch(engine)

    async def hold(seconds: float) -> None:
        conn = engine.connect()  # a blocking call is fine here: SQLite, no I/O to speak of
        try:
            await asyncio.sleep(seconds)
        finally:
            conn.close()

    async def main() -> None:
        await asyncio.gather(hold(0.05), hold(0.05))

    asyncio.run(main())
    stats = watch.stats()
    assert stats.checkouts == 2
    assert stats.high_water_checked_out == 2  # both out at once, on one thread ...
    assert stats.second_checkouts == 0  # ... but each task holds only its own


def test_the_request_scope_begins_and_ends_the_unit_and_shed_wait_of_each_request(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """RequestScope (the WSGI wrapper) begins the request's unit and shed wait; the teardown
    ends both, once, after the session was removed; an app context pushed inside the view is
    not the request's end."""
    db = SQLAlchemy()
    app = Flask(__name__)
    app.config.update(
        SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path / 'scope.db'}", POOLTENDER_SHED_WAIT=0.25
    )
    Pooltender(app, db, public=True)
    seen: list[tuple[Any, Any, Any, float | None]] = []

    @app.get("/nested")
    def nested() -> dict[str, bool]:
        db.session.execute(text("SELECT 1"))  # the request holds a connection meanwhile
        before = current_unit()
        with app.app_context():  # a nested app context: its teardown must not end the unit
            pass
        seen.append((before, current_unit(), before.name if before else None, current_shed_wait()))
        return {"ok": True}

    caplog.set_level(logging.WARNING, logger="pooltender")
    client = app.test_client()
    for _ in range(2):
        assert client.get("/nested").status_code == 200
    (first, first_after, name, wait), (second, _, _, _) = seen
    assert isinstance(first, UnitOfWork)
    assert first_after is first
    assert name == "request GET /nested"
    assert wait == 0.25
    assert second is not first  # one unit per request
    assert current_unit() is None
    assert current_shed_wait() is None
    assert [r.getMessage() for r in caplog.records] == []  # no false "still checked out"
    assert app.extensions["pooltender"].requests_leaked == 0
    with app.app_context():
        stats = watch_of(db.engine).stats()  # type: ignore[union-attr]
        db.engine.dispose()
    assert stats.checked_out == 0
    assert stats.second_checkouts == 0
