"""Session helpers for the post-mortem's patterns, for a plain ``Session`` or a
``scoped_session`` (Flask-SQLAlchemy's ``db.session`` is one).

* :func:`transaction_scope` -- "use try/except around a transaction": commit on success,
  rollback and re-raise on any error (``BaseException``: a ``KeyboardInterrupt`` or a
  cancelled greenlet must not leave a transaction open either).
* :func:`unit_of_work` -- the post-mortem's consumer loop, one message at a time: commit,
  rollback on error, and ``remove()`` in ``finally`` so the connection goes back to the pool
  between messages instead of being held by a long-running consumer.
* :func:`bulk_insert_chunks` / :func:`bulk_update_chunks` -- consume an iterator chunk by
  chunk (memory stays flat whatever N) and send each chunk as one executemany: a multi-row
  ``INSERT`` (``session.execute(insert(table), chunk)``), or the ORM's bulk ``UPDATE`` by
  primary key (``session.execute(update(Model), chunk)``). They neither begin nor commit:
  run them inside a :func:`transaction_scope` (one transaction) or commit per chunk yourself.
* :func:`retry_transaction` -- re-run a whole transaction the database aborted to break a
  deadlock or a serialization conflict (MySQL/MariaDB 1213 and 1205, PostgreSQL 40001,
  40P01 and 55P03, SQLite "database is locked"; :func:`pooltender.failures.classify`'s
  ``CONFLICT``), a bounded number of times with jittered backoff.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from itertools import islice
from typing import Any, Final, TypeVar, cast

from sqlalchemy import Executable, Table, insert, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, scoped_session

from pooltender.failures import (
    MYSQL_CONFLICT,
    POSTGRES_CONFLICT,
    describe,
    is_retryable_conflict,
    is_retryable_disconnect,
)
from pooltender.watch import unit_scope

__all__ = [
    "bulk_insert_chunks",
    "bulk_update_chunks",
    "is_retryable_conflict",
    "is_retryable_disconnect",
    "retry_transaction",
    "transaction_scope",
    "unit_of_work",
]

logger = logging.getLogger("pooltender.session")

S = TypeVar("S", bound=Session)
T = TypeVar("T")

AnySession = Session | scoped_session[Any]

#: Kept importable from here; the classification lives in :mod:`pooltender.failures`.
MYSQL_RETRYABLE: Final = MYSQL_CONFLICT
POSTGRES_RETRYABLE: Final = POSTGRES_CONFLICT


def _current(session: AnySession) -> Session:
    return session() if isinstance(session, scoped_session) else session


def _rollback_quietly(session: Session) -> None:
    """Roll back; if that fails too (dead connection), log it and let the first error win."""
    try:
        session.rollback()
    except Exception:
        logger.exception("rollback failed after an error; re-raising the original error")


@contextmanager
def transaction_scope(session: AnySession) -> Iterator[Session]:
    """Commit on success; on any error roll back and re-raise. Yields the ``Session``.

    Works whether or not the session already has a transaction: the scope ends the
    session's *current* transaction, so work done on the session before entering is
    committed (or rolled back) with it -- a session has one transaction at a time.
    """
    current = _current(session)
    try:
        yield current
        current.commit()
    except BaseException:
        _rollback_quietly(current)
        raise


@contextmanager
def unit_of_work(session: scoped_session[S]) -> Iterator[S]:
    """One consumer message: yield the scoped session; commit; roll back and re-raise on
    error; always ``remove()`` the session so its connection returns to the pool.

    The post-mortem's loop logged and swallowed the error; here it propagates so the caller
    decides (nack, dead-letter, log). Use inside an app context with Flask-SQLAlchemy.

    The block is a unit of work (:func:`pooltender.watch.unit_scope`): a second connection
    checked out in it is reported, and one still out after ``remove()`` is logged once and
    then owned by nobody, so the next message on the same thread is not blamed for it.
    """
    with unit_scope("unit_of_work"):
        try:
            with transaction_scope(session) as current:
                yield cast(S, current)
        finally:
            session.remove()


def _chunks(rows: Iterable[Mapping[str, Any]], size: int) -> Iterator[list[Mapping[str, Any]]]:
    if size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {size!r}")
    it = iter(rows)
    while chunk := list(islice(it, size)):
        yield chunk


def _execute_in_chunks(
    session: AnySession, stmt: Executable, rows: Iterable[Mapping[str, Any]], chunk_size: int
) -> int:
    """``stmt`` as one executemany per chunk of ``rows``; the number of rows sent."""
    current = _current(session)
    total = 0
    for chunk in _chunks(rows, chunk_size):
        current.execute(stmt, chunk)
        total += len(chunk)
    return total


def bulk_insert_chunks(
    session: AnySession,
    target: Table | type[Any],
    rows: Iterable[Mapping[str, Any]],
    chunk_size: int = 1000,
) -> int:
    """Insert ``rows`` in chunks of ``chunk_size``, one multi-row INSERT per chunk; return N.

    ``target`` is a ``Table`` (keys are column names) or a mapped class (keys are attribute
    names; ORM bulk INSERT). ``rows`` is consumed lazily: only one chunk is in memory.
    """
    return _execute_in_chunks(session, insert(target), rows, chunk_size)


def bulk_update_chunks(
    session: AnySession,
    model: type[Any],
    rows: Iterable[Mapping[str, Any]],
    chunk_size: int = 1000,
) -> int:
    """ORM bulk UPDATE by primary key: each mapping names the primary key and the new values.

    Sends one executemany per chunk; returns the number of mappings sent (the rows that
    exist are updated; a mapping whose key matches no row changes nothing).
    """
    return _execute_in_chunks(session, update(model), rows, chunk_size)


def retry_transaction(
    session: AnySession,
    fn: Callable[[Session], T],
    attempts: int = 3,
    *,
    backoff: float = 0.05,
    max_backoff: float = 1.0,
) -> T:
    """Run ``fn(session)`` in a :func:`transaction_scope`; retry conflicts up to ``attempts``.

    Each retry starts a new transaction after ``backoff * 2**n`` seconds (jittered 50-100 %,
    capped at ``max_backoff``). ``fn`` is re-run from the start, so it must have no effects
    outside the database. Errors that are not conflicts, and the last conflict, propagate.

    A connection that dies under one of ``fn``'s statements (:func:`is_retryable_disconnect`)
    is retried once, at once, on a fresh connection; this retry does not count against
    ``attempts``. A failure of the COMMIT itself is never retried: whether it committed is
    unknown, and only an idempotency key can answer that.
    """
    if attempts < 1:
        raise ValueError(f"attempts must be >= 1, got {attempts!r}")
    reconnected = False
    attempt = 1
    while True:
        try:
            # transaction_scope(session), written out: this runs once per request, and the
            # context manager's generator and frames cost more than the four lines
            current = _current(session)
            try:
                result = fn(current)
                current.commit()
            except BaseException:
                _rollback_quietly(current)
                raise
            return result
        except DBAPIError as err:
            if not reconnected and is_retryable_disconnect(err):
                # The connection died under a statement, before COMMIT: the server rolled the
                # transaction back and SQLAlchemy discarded the connection; run it once more
                # on a fresh one (a second disconnect means the server is down: it propagates).
                reconnected = True
                logger.info("connection lost before COMMIT (%s); retrying once", describe(err))
                continue
            if attempt == attempts or not is_retryable_conflict(err):
                raise
            delay = min(max_backoff, backoff * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
            logger.info(
                "transaction conflict (%s), retry %d of %d in %.3f s",
                err.orig,
                attempt,
                attempts - 1,
                delay,
            )
            time.sleep(delay)
            attempt += 1
