"""The one scoped session of the service, and the one way to write through it.

The post-mortem's outage came from a second ``Session(bind=db.engine)`` beside
Flask-SQLAlchemy's scoped ``db.session``: two connections per request. Here there is
exactly one session, ``db.session``; Flask-SQLAlchemy removes it at app-context teardown,
so no code in this package calls ``close()`` by hand.

Every write goes through :func:`transaction`: commit on success, rollback and re-raise on
error (the post-mortem's try/except, as a context), and a bounded retry of transactions
the database aborted to break a deadlock or a lock wait, which is what correct code
meets under real concurrency on MariaDB and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import DeclarativeBase, Session

from pooltender.session import retry_transaction

T = TypeVar("T")


class Base(DeclarativeBase):
    """Declarative base of every model."""


db = SQLAlchemy(model_class=Base)


def transaction(fn: Callable[[], T], *, attempts: int = 5) -> T:
    """Run ``fn`` in one transaction of ``db.session``; commit, or roll back and re-raise.

    ``fn`` is called again (up to ``attempts`` times, with jittered backoff, through
    :func:`pooltender.session.retry_transaction`) when the database aborted the transaction
    as a deadlock victim or a serialization failure (MySQL 1213/1205/1020, PostgreSQL
    40001/40P01, SQLite "database is locked"); any
    other exception rolls back and propagates unchanged. ``fn`` must not have effects
    outside the database, since it may run more than once.

    On SQLite the transaction starts with ``BEGIN IMMEDIATE`` so concurrent writers queue
    on the busy timeout instead of failing when a read lock cannot be upgraded.
    """
    session = db.session()
    if session.in_transaction():
        if session.new or session.dirty or session.deleted:
            raise RuntimeError(
                "transaction() called with unflushed changes pending in db.session; "
                "commit them first or make them inside the transaction"
            )
        session.rollback()  # a read-only transaction left by an earlier read: end it

    def attempt(current: Session) -> T:
        current.connection(execution_options={"sqlite_begin": "IMMEDIATE"})
        return fn()

    return retry_transaction(session, attempt, attempts, backoff=0.02, max_backoff=0.5)


def read(fn: Callable[[], T]) -> T:
    """Run read-only ``fn`` in a fresh transaction of ``db.session`` and end it at once.

    The one way this package ends a read transaction. Ending it returns the connection to
    the pool before the caller serializes anything, and starting fresh means MariaDB's
    REPEATABLE READ snapshot is not one an earlier statement of the request opened.
    """
    session = db.session()
    if session.new or session.dirty or session.deleted:
        raise RuntimeError("read started with unflushed changes pending in db.session")
    if session.in_transaction():
        session.rollback()
    try:
        return fn()
    finally:
        session.rollback()


def read_core(fn: Callable[[Connection], T]) -> T:
    """Run read-only ``fn(connection)``: Core statements on a connection of ``db.engine``.

    For the hot reads of one prebuilt Core statement (validate, get a coupon), where
    :func:`read`'s session machinery (its transaction objects, autobegin and the rollback
    through them: about a seventh of a validate's CPU in bench/request_cpu.py) buys nothing.
    Still one connection per request: a transaction the session holds is ended first, so
    the session's connection is back in the pool before this one is checked out; this one
    returns (its transaction rolled back by the pool) before ``read_core`` returns, so the
    caller serializes with no connection held, and each call reads a fresh snapshot.
    """
    registry = db.session.registry
    if registry.has():  # (no session made just to find it empty: the usual validate / get)
        session = registry()
        if session.new or session.dirty or session.deleted:
            raise RuntimeError("read_core started with unflushed changes pending in db.session")
        if session.in_transaction():
            session.rollback()
    with db.engine.connect() as connection:
        return fn(connection)


def install_sqlite_hooks(engine: Engine) -> None:
    """Make SQLite behave as a multi-user database: WAL, foreign keys, explicit BEGIN.

    pysqlite's own transaction handling starts transactions lazily, which defeats
    ``BEGIN IMMEDIATE``; SQLAlchemy's documented recipe takes it over.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        if engine.url.database not in (None, "", ":memory:"):
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")
