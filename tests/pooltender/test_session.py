"""Session helpers on SQLite, MariaDB and PostgreSQL: transaction scope, unit of work,
chunked bulk insert / update (memory flat for 200k rows), deadlock retry.

Each server backend gets a throw-away database created here and dropped afterwards.
"""

from __future__ import annotations

import os
import secrets
import threading
import tracemalloc
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import (
    Column,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    func,
    select,
    text,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import Session, registry, scoped_session, sessionmaker

from pooltender.session import (
    bulk_insert_chunks,
    bulk_update_chunks,
    is_retryable_conflict,
    retry_transaction,
    transaction_scope,
    unit_of_work,
)

try:
    from tests.pooltender._servers import mariadb_url, postgres_url
except ImportError:  # tests/ is not a package here: the module sits beside this file
    from _servers import mariadb_url, postgres_url  # type: ignore[no-redef]

metadata = MetaData()
items = Table(
    "pt_items",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(50), nullable=False, unique=True),
    Column("qty", Integer, nullable=False, default=0),
)
mapper_registry = registry()


class Item:
    id: int
    name: str
    qty: int


mapper_registry.map_imperatively(Item, items)


def _server_database(base_url: str, backend: str) -> Iterator[str]:
    name = f"pooltender_t_{os.getpid()}_{secrets.token_hex(3)}"
    admin = create_engine(base_url, isolation_level="AUTOCOMMIT")
    quoted = f"`{name}`" if backend == "mariadb" else f'"{name}"'
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {quoted}"))
    try:
        yield make_url(base_url).set(database=name).render_as_string(hide_password=False)
    finally:
        force = "" if backend == "mariadb" else " WITH (FORCE)"
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {quoted}{force}"))
        admin.dispose()


@pytest.fixture(scope="module", params=["sqlite", "mariadb", "postgresql"])
def database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    backend: str = request.param
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('session') / 's.db'}"
        return
    base = mariadb_url() if backend == "mariadb" else postgres_url()
    yield from _server_database(base, backend)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_engine(database_url)
    metadata.create_all(engine)
    yield engine
    metadata.drop_all(engine)
    checked_out = engine.pool.checkedout()  # type: ignore[attr-defined]
    engine.dispose()
    assert checked_out == 0, "a helper left a connection checked out"


def count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(items)).scalar_one())


# ---------------------------------------------------------------------------- transaction_scope


def test_transaction_scope_commits(engine: Engine) -> None:
    with Session(engine) as session, transaction_scope(session) as current:
        current.add(Item(name="a", qty=1))
    assert count(engine) == 1


def test_transaction_scope_rolls_back_and_reraises(engine: Engine) -> None:
    def failing_work(session: Session) -> None:
        with transaction_scope(session) as current:
            current.add(Item(name="a", qty=1))
            current.flush()
            raise RuntimeError("boom")

    with Session(engine) as session:
        with pytest.raises(RuntimeError, match="boom"):
            failing_work(session)
        assert not session.in_transaction()
    assert count(engine) == 0


def test_transaction_scope_when_a_transaction_is_already_open(engine: Engine) -> None:
    with Session(engine) as session:
        session.execute(select(func.count()).select_from(items))  # autobegins
        assert session.in_transaction()
        with transaction_scope(session) as current:
            current.add(Item(name="b", qty=2))
        assert not session.in_transaction()
    assert count(engine) == 1


def test_transaction_scope_rolls_back_a_failed_commit(engine: Engine) -> None:
    with Session(engine) as session:
        with transaction_scope(session) as current:
            current.add(Item(name="dup", qty=1))
        with pytest.raises(IntegrityError), transaction_scope(session) as current:
            current.add(Item(name="dup", qty=2))  # fails at commit (flush)
        assert not session.in_transaction()
    assert count(engine) == 1


def test_transaction_scope_with_scoped_session(engine: Engine) -> None:
    scoped = scoped_session(sessionmaker(bind=engine))
    with transaction_scope(scoped) as current:
        assert current is scoped()
        current.add(Item(name="s", qty=1))
    scoped.remove()
    assert count(engine) == 1


# ---------------------------------------------------------------------------- unit_of_work


def test_unit_of_work_commits_and_removes(engine: Engine) -> None:
    scoped = scoped_session(sessionmaker(bind=engine))
    for n in range(3):  # a consumer loop: one unit of work per message
        with unit_of_work(scoped) as session:
            session.add(Item(name=f"m{n}", qty=n))
            session.flush()
            assert engine.pool.checkedout() == 1  # type: ignore[attr-defined]
        assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        assert not scoped.registry.has()
    assert count(engine) == 3


def test_unit_of_work_rolls_back_reraises_and_removes(engine: Engine) -> None:
    scoped = scoped_session(sessionmaker(bind=engine))

    def handle_message() -> None:
        with unit_of_work(scoped) as session:
            session.add(Item(name="x", qty=1))
            session.flush()
            raise ValueError("bad message")

    with pytest.raises(ValueError, match="bad message"):
        handle_message()
    assert not scoped.registry.has()
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    assert count(engine) == 0


# ---------------------------------------------------------------------------- bulk helpers


def rows(n: int, start: int = 0) -> Iterator[Mapping[str, Any]]:
    for i in range(start, start + n):
        yield {"name": f"item-{i}", "qty": i % 7}


def test_bulk_insert_chunks_table_and_model(engine: Engine) -> None:
    with Session(engine) as session, transaction_scope(session) as current:
        assert bulk_insert_chunks(current, items, rows(2500), chunk_size=1000) == 2500
        assert bulk_insert_chunks(current, Item, rows(10, start=5000), chunk_size=3) == 10
        assert bulk_insert_chunks(current, items, iter(()), chunk_size=3) == 0
    assert count(engine) == 2510
    with Session(engine) as session, pytest.raises(ValueError, match="chunk_size"):
        bulk_insert_chunks(session, items, rows(1), chunk_size=0)


def test_bulk_update_chunks_by_primary_key(engine: Engine) -> None:
    with Session(engine) as session, transaction_scope(session) as current:
        bulk_insert_chunks(current, items, rows(1200))
    with engine.connect() as conn:
        ids = list(conn.execute(select(items.c.id).order_by(items.c.id)).scalars())
    updates = ({"id": i, "qty": 1000 + i} for i in ids)
    with Session(engine) as session, transaction_scope(session) as current:
        assert bulk_update_chunks(current, Item, updates, chunk_size=500) == 1200
    with engine.connect() as conn:
        wrong = conn.execute(
            select(func.count()).select_from(items).where(items.c.qty != 1000 + items.c.id)
        ).scalar_one()
    assert wrong == 0


@pytest.mark.slow
def test_bulk_insert_memory_stays_flat_for_200k_rows(engine: Engine, database_url: str) -> None:
    n = 200_000
    tracemalloc.start()
    try:
        with Session(engine) as session, transaction_scope(session) as current:
            inserted = bulk_insert_chunks(current, items, rows(n), chunk_size=1000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert inserted == n
    assert count(engine) == n
    # a list of 200k dicts alone would be ~60 MB; one chunk of 1000 is well under 1 MB
    assert peak < 20 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB"


# ---------------------------------------------------------------------------- retry


def test_retry_gives_up_at_once_on_other_errors(engine: Engine) -> None:
    calls = 0

    def bad(session: Session) -> None:
        nonlocal calls
        calls += 1
        session.execute(text("SELECT * FROM no_such_table"))

    with Session(engine) as session, pytest.raises(DBAPIError):
        retry_transaction(session, bad, attempts=5)
    assert calls == 1
    assert not is_retryable_conflict(ValueError("x"))


@pytest.mark.parametrize("database_url", ["mariadb", "postgresql"], indirect=True)
def test_retry_resolves_a_real_deadlock(engine: Engine, database_url: str) -> None:
    """Row-lock deadlocks exist on the servers only; SQLite's 'database is locked' is below."""
    with Session(engine) as session, transaction_scope(session) as current:
        current.add_all([Item(name="A", qty=0), Item(name="B", qty=0)])
    barrier = threading.Barrier(2, timeout=10)
    attempts: dict[str, int] = {"AB": 0, "BA": 0}
    errors: list[BaseException] = []

    def transfer(order: str) -> None:
        def fn(session: Session) -> None:
            attempts[order] += 1
            first, second = order
            session.execute(items.update().where(items.c.name == first).values(qty=items.c.qty + 1))
            if attempts[order] == 1:
                barrier.wait()  # both hold their first row lock: a deadlock follows
            session.execute(
                items.update().where(items.c.name == second).values(qty=items.c.qty + 1)
            )

        try:
            with Session(engine) as session:
                retry_transaction(session, fn, attempts=5, backoff=0.01)
        except BaseException as err:  # asserted below
            errors.append(err)

    threads = [threading.Thread(target=transfer, args=(order,)) for order in attempts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert attempts["AB"] + attempts["BA"] >= 3  # the deadlock victim ran again
    with engine.connect() as conn:
        assert sorted(conn.execute(select(items.c.qty)).scalars()) == [2, 2]


@pytest.mark.parametrize("database_url", ["mariadb"], indirect=True)
def test_retry_rides_out_a_real_mariadb_1020_snapshot_conflict(
    engine: Engine, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Error 1020 ("Record has changed since last read"), provoked for real: under
    ``innodb_snapshot_isolation`` (a session variable; MariaDB 10.6.18+ / 10.11.8+, the
    default from 11.6) a write to a row another transaction changed after this one's
    snapshot fails instead of waiting. retry_transaction runs the transaction again."""
    with engine.connect() as conn:
        if not conn.execute(text("SHOW VARIABLES LIKE 'innodb_snapshot_isolation'")).all():
            pytest.skip("this MariaDB has no innodb_snapshot_isolation (10.6.18+/10.11.8+)")
    with Session(engine) as session, transaction_scope(session) as current:
        current.add(Item(name="snap", qty=0))
    calls = 0
    codes: list[int] = []

    def bump(session: Session) -> int:
        nonlocal calls
        calls += 1
        session.execute(text("SET SESSION innodb_snapshot_isolation = ON"))
        qty = session.execute(select(items.c.qty).where(items.c.name == "snap")).scalar_one()
        if calls == 1:  # another client commits a change to the row read above
            with engine.begin() as other:
                other.execute(
                    items.update().where(items.c.name == "snap").values(qty=items.c.qty + 10)
                )
        try:
            session.execute(
                items.update().where(items.c.name == "snap").values(qty=items.c.qty + 1)
            )
        except DBAPIError as err:
            codes.append(int(err.orig.args[0]))  # type: ignore[union-attr]
            raise
        return int(qty)

    caplog.set_level("INFO", logger="pooltender.session")
    with Session(engine) as session:
        seen = retry_transaction(session, bump, attempts=3, backoff=0.01)
    assert codes == [1020]
    assert calls == 2
    assert seen == 10  # the retry read the other client's committed change ...
    with engine.connect() as conn:  # ... and both increments stand
        assert conn.execute(select(items.c.qty).where(items.c.name == "snap")).scalar_one() == 11
    assert any("transaction conflict" in r.getMessage() for r in caplog.records)


def test_retry_rides_out_sqlite_database_is_locked(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'locked.db'}"
    engine = create_engine(url, connect_args={"timeout": 0.01})
    metadata.create_all(engine)
    holder = create_engine(url).raw_connection()
    cursor = holder.cursor()
    cursor.execute("BEGIN EXCLUSIVE")
    released = threading.Timer(0.3, holder.commit)
    released.start()
    calls = 0

    def write(session: Session) -> None:
        nonlocal calls
        calls += 1
        session.add(Item(name="w", qty=1))
        session.flush()

    try:
        with Session(engine) as session:
            retry_transaction(session, write, attempts=20, backoff=0.05, max_backoff=0.1)
    finally:
        released.join()
        cursor.close()
        holder.close()
    assert calls > 1
    assert count(engine) == 1
    engine.dispose()


def test_is_retryable_conflict_recognises_the_codes() -> None:
    class MySQLError(Exception):
        pass

    class PgError(Exception):
        sqlstate = "40P01"

    assert is_retryable_conflict(OperationalError("x", {}, MySQLError(1213, "Deadlock found")))
    assert is_retryable_conflict(OperationalError("x", {}, MySQLError(1205, "Lock wait")))
    assert not is_retryable_conflict(OperationalError("x", {}, MySQLError(1146, "no table")))
    assert is_retryable_conflict(OperationalError("x", {}, PgError("deadlock detected")))
    assert is_retryable_conflict(OperationalError("x", {}, Exception("database is locked")))
