"""The pool's reset without the ROLLBACK that does nothing (pooltender.reset), on the real
MariaDB and PostgreSQL and on SQLite.

Two things must hold: a connection whose transaction ended (COMMIT, ROLLBACK) goes back
without another ROLLBACK (MariaDB counts them: ``Com_rollback``), and every other return is
rolled back as SQLAlchemy's own reset would: uncommitted work of a raw driver cursor, a
transaction left open, a COMMIT that failed.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import Engine, create_engine, event, exc, text
from sqlalchemy.pool import NullPool

from pooltender.flask import Pooltender
from pooltender.reset import CLEAN_KEY, clean_reset_installed, install_clean_reset
from tests.conftest import create_database, drop_database


def server_database(backend: str) -> Iterator[str]:
    name = f"pt_reset_{secrets.token_hex(4)}"
    database = create_database(backend, name)
    yield database
    drop_database(backend, name)


@pytest.fixture(scope="module", params=["mariadb", "postgresql", "sqlite"])
def url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('reset') / 'reset.db'}"
    else:
        yield from server_database(request.param)


@pytest.fixture(scope="module")
def mariadb_url() -> Iterator[str]:
    yield from server_database("mariadb")


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    yield from server_database("postgresql")


@pytest.fixture(scope="module", params=["postgresql", "sqlite"])
def telling_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A backend whose driver tells whether a transaction is open (psycopg, sqlite3)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('reset_t') / 'reset.db'}"
    else:
        yield from server_database(request.param)


def fresh_engine(url: str) -> Engine:
    built = create_engine(url, pool_size=1, max_overflow=0)
    with built.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS reset_t"))
        conn.execute(text("CREATE TABLE reset_t (id INTEGER PRIMARY KEY)"))
    built.dispose()
    assert install_clean_reset(built)
    return built


@pytest.fixture
def engine(url: str) -> Iterator[Engine]:
    built = fresh_engine(url)
    yield built
    built.dispose()


def visible_rows(url: str) -> int:
    """Rows of reset_t that another connection sees (committed ones only)."""
    other = create_engine(url, poolclass=NullPool)
    try:
        with other.connect() as conn:
            return int(conn.execute(text("SELECT COUNT(*) FROM reset_t")).scalar_one())
    finally:
        other.dispose()


def rollbacks_sent(engine: Engine) -> Callable[[], int]:
    """A counter of the ROLLBACKs the pool's one connection has sent to MariaDB so far
    (``Com_rollback`` of its session, read on that same connection: the read's own
    transaction is ended by a commit, which the counter does not count)."""

    def count() -> int:
        with engine.connect() as conn:
            value = conn.exec_driver_sql("SHOW SESSION STATUS LIKE 'Com_rollback'").one()[1]
            conn.commit()
        return int(value)

    return count


def test_mariadb_a_committed_or_rolled_back_connection_is_returned_without_a_rollback(
    mariadb_url: str,
) -> None:
    url = mariadb_url
    engine = fresh_engine(url)
    count = rollbacks_sent(engine)
    before = count()
    with engine.connect() as conn:
        conn.execute(text("INSERT INTO reset_t VALUES (1)"))
        conn.commit()
    assert count() == before  # COMMIT then return: no ROLLBACK
    with engine.connect() as conn:
        conn.execute(text("INSERT INTO reset_t VALUES (2)"))
        conn.rollback()
    assert count() == before + 1  # the ROLLBACK asked for, and none on return
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))  # left open: Connection.close() rolls it back, once
    assert count() == before + 2
    # SQLAlchemy's own reset, for comparison: one more ROLLBACK after the COMMIT
    plain = create_engine(url, pool_size=1, max_overflow=0)
    try:
        plain_count = rollbacks_sent(plain)
        start = plain_count()
        with plain.connect() as conn:
            conn.execute(text("INSERT INTO reset_t VALUES (3)"))
            conn.commit()
        # two: the return of the COMMITted insert, and that of the counter's own read
        assert plain_count() == start + 2
    finally:
        plain.dispose()
        engine.dispose()
    assert visible_rows(url) == 2


def test_uncommitted_work_of_a_raw_driver_cursor_is_rolled_back_on_return(
    engine: Engine, url: str
) -> None:
    raw = engine.raw_connection()
    cursor = raw.cursor()
    cursor.execute("INSERT INTO reset_t VALUES (10)")
    cursor.close()
    raw.close()  # back to the pool unclean: rolled back
    assert visible_rows(url) == 0
    with engine.connect() as conn:  # the same connection, and its insert is gone
        assert conn.execute(text("SELECT COUNT(*) FROM reset_t")).scalar_one() == 0


def test_each_checkout_starts_unclean(engine: Engine, url: str) -> None:
    with engine.connect() as conn:
        conn.execute(text("INSERT INTO reset_t VALUES (20)"))
        conn.commit()
        assert conn.connection._connection_record.info[CLEAN_KEY] is True
    # the clean mark was consumed by that return: raw work on the next checkout is undone
    raw = engine.raw_connection()
    assert raw._connection_record.info.get(CLEAN_KEY) is False
    cursor = raw.cursor()
    cursor.execute("INSERT INTO reset_t VALUES (21)")
    cursor.close()
    raw.close()
    assert visible_rows(url) == 1


def test_a_transaction_begun_after_a_commit_and_left_open_is_rolled_back(
    engine: Engine, url: str
) -> None:
    with engine.connect() as conn:
        conn.execute(text("INSERT INTO reset_t VALUES (30)"))
        conn.commit()
        conn.execute(text("INSERT INTO reset_t VALUES (31)"))  # autobegins a new one
        # a raw statement inside that transaction: rolled back with it by close()
        conn.connection.dbapi_connection.cursor().execute("INSERT INTO reset_t VALUES (32)")
    assert visible_rows(url) == 1
    with engine.connect() as conn:  # and nothing of it is left on the connection
        assert conn.execute(text("SELECT COUNT(*) FROM reset_t")).scalar_one() == 1


def test_a_commit_that_fails_leaves_the_connection_unclean(postgres_url: str) -> None:
    """A COMMIT that fails without a disconnect: PostgreSQL's deferred foreign key."""
    url = postgres_url
    engine = create_engine(url, pool_size=1, max_overflow=0)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS reset_child, reset_parent"))
        conn.execute(text("CREATE TABLE reset_parent (id INTEGER PRIMARY KEY)"))
        conn.execute(
            text(
                "CREATE TABLE reset_child (id INTEGER PRIMARY KEY, parent INTEGER REFERENCES "
                "reset_parent (id) DEFERRABLE INITIALLY DEFERRED)"
            )
        )
    engine.dispose()
    install_clean_reset(engine)
    states: list[Any] = []

    @event.listens_for(engine, "checkin")
    def after_reset(dbapi_connection: Any, record: Any) -> None:
        states.append(dbapi_connection.info.transaction_status)

    try:
        with engine.connect() as conn:
            conn.execute(text("INSERT INTO reset_parent VALUES (1)"))
            conn.commit()  # succeeds: the entry is clean
            info = conn.connection._connection_record.info
            assert info[CLEAN_KEY] is True
            conn.execute(text("INSERT INTO reset_child VALUES (1, 99)"))
            with pytest.raises(exc.IntegrityError):
                conn.commit()  # the deferred foreign key fails at COMMIT
            assert info[CLEAN_KEY] is False  # so the return rolls back, as SQLAlchemy's would
        import psycopg

        assert states == [psycopg.pq.TransactionStatus.IDLE]
        with engine.connect() as conn:
            assert conn.execute(text("SELECT COUNT(*) FROM reset_child")).scalar_one() == 0
            assert conn.execute(text("SELECT COUNT(*) FROM reset_parent")).scalar_one() == 1
    finally:
        engine.dispose()


def test_no_return_leaves_a_transaction_open(telling_url: str) -> None:
    """Whatever ended the checkout, the driver holds no transaction after the return
    (psycopg and sqlite3 say so; mysqlclient does not, MariaDB's counter is the first test)."""
    url = telling_url
    engine = fresh_engine(url)
    open_after: list[bool] = []

    @event.listens_for(engine, "checkin")
    def after_reset(dbapi_connection: Any, record: Any) -> None:
        if url.startswith("sqlite"):
            open_after.append(dbapi_connection.in_transaction)
        else:
            import psycopg

            open_after.append(
                dbapi_connection.info.transaction_status != psycopg.pq.TransactionStatus.IDLE
            )

    with engine.connect() as conn:
        conn.execute(text("INSERT INTO reset_t VALUES (40)"))
        conn.commit()
    with engine.connect() as conn:
        conn.execute(text("INSERT INTO reset_t VALUES (41)"))
        conn.rollback()
    with engine.connect() as conn:
        conn.execute(text("INSERT INTO reset_t VALUES (42)"))
    raw = engine.raw_connection()
    raw.cursor().execute("INSERT INTO reset_t VALUES (43)")
    raw.close()
    engine.dispose()
    assert open_after == [False, False, False, False]
    assert visible_rows(url) == 1


def test_install_keeps_a_reset_the_engine_chose_and_survives_dispose(tmp_path: Path) -> None:
    chosen = create_engine(f"sqlite:///{tmp_path / 'a.db'}", pool_reset_on_return="commit")
    assert install_clean_reset(chosen) is False
    assert not clean_reset_installed(chosen)
    default = create_engine(f"sqlite:///{tmp_path / 'b.db'}")
    assert install_clean_reset(default)
    assert clean_reset_installed(default)
    default.dispose()  # a new pool: the same dialect, reset setting and listeners
    assert install_clean_reset(default)
    assert clean_reset_installed(default)
    with default.connect() as conn:
        conn.execute(text("SELECT 1"))
        conn.commit()
        assert conn.connection._connection_record.info[CLEAN_KEY] is True


@pytest.mark.parametrize(("mode", "installed"), [(None, True), ("always", False)])
def test_the_flask_extension_installs_it_unless_told_always(
    tmp_path: Path, mode: str | None, installed: bool
) -> None:
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = f"sqlite:///{tmp_path / 'app.db'}"
    if mode is not None:
        app.config["POOLTENDER_RESET_ON_RETURN"] = mode
    db = SQLAlchemy()
    Pooltender(app, db, public=True)
    with app.app_context():
        assert clean_reset_installed(db.engine) is installed
        db.engine.dispose()
