"""One classification of database errors, shared by the Flask integration, consumers and CLIs.

:func:`classify` answers what kind of failure an exception is, from the driver's error
number or SQLSTATE (never from the message text, except SQLite which has neither):

``UNAVAILABLE``
    the database cannot be reached or dropped the connection: connection refused or host
    unreachable (MySQL client 2002/2003), server gone away (2006), lost connection (2013,
    2055), too many connections (1040, PostgreSQL 53300), server shutting down (1053), the
    connection killed (1927, 4031), a read-only server after a failover (1290, 1836, 1792,
    PostgreSQL 25006), PostgreSQL admin/crash shutdown and "cannot connect now"
    (57P01/57P02/57P03), any PostgreSQL connection exception (class ``08``), a psycopg
    operational error without SQLSTATE (libpq's connection failures carry none), and a
    connection SQLAlchemy invalidated as disconnected. Answer: 503 + Retry-After; a
    consumer backs off and retries without limit.
``POOL_EXHAUSTED``
    no connection free in this process's pool within the caller's wait (SQLAlchemy's pool
    ``TimeoutError``, :class:`~pooltender.shedding.PoolExhausted`). Answer: 503 too.
``CONFLICT``
    the database aborted the transaction to break a deadlock or a serialization conflict,
    or a lock wait ran out (MySQL 1213, 1205, 1020; PostgreSQL 40001, 40P01, 55P03; SQLite
    "database is locked"). A retry of the whole transaction can succeed
    (:func:`pooltender.session.retry_transaction`).
``INTEGRITY``
    a constraint refused the write (``IntegrityError``, SQLSTATE class ``23``).
``DATA``
    a value the column cannot hold (``DataError``, SQLSTATE class ``22``, MySQL 1264,
    1265, 1292, 1366, 1406).

Anything else is ``None``: a bug or a case the caller handles itself.

The codes come from the MariaDB error reference
(https://mariadb.com/kb/en/mariadb-error-codes/) and PostgreSQL's appendix A
(https://www.postgresql.org/docs/current/errcodes-appendix.html).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from sqlalchemy import exc as sa_exc

from pooltender.text import one_line

if TYPE_CHECKING:
    from flask import Flask, Response

__all__ = [
    "MYSQL_CONFLICT",
    "MYSQL_UNAVAILABLE",
    "POSTGRES_CONFLICT",
    "Failure",
    "classify",
    "describe",
    "is_retryable_conflict",
    "is_retryable_disconnect",
    "is_unavailable",
    "register_error_handlers",
]

log = logging.getLogger("pooltender.failures")


class Failure(enum.StrEnum):
    """What kind of failure a database error is (see the module doc)."""

    UNAVAILABLE = "unavailable"
    POOL_EXHAUSTED = "pool_exhausted"
    CONFLICT = "conflict"
    INTEGRITY = "integrity"
    DATA = "data"


#: MySQL / MariaDB error numbers (server and client) meaning the database is not serving us.
MYSQL_UNAVAILABLE: Final = frozenset(
    {
        1040,  # ER_CON_COUNT_ERROR: too many connections
        1053,  # ER_SERVER_SHUTDOWN
        1152,  # ER_ABORTING_CONNECTION
        1290,  # ER_OPTION_PREVENTS_STATEMENT (--read-only: a demoted primary)
        1792,  # ER_CANT_EXECUTE_IN_READ_ONLY_TRANSACTION
        1836,  # ER_READ_ONLY_MODE
        1927,  # ER_CONNECTION_KILLED
        2002,  # CR_CONNECTION_ERROR (socket)
        2003,  # CR_CONN_HOST_ERROR: connection refused / unreachable
        2005,  # CR_UNKNOWN_HOST
        2006,  # CR_SERVER_GONE_ERROR
        2011,  # CR_TCP_CONNECTION
        2013,  # CR_SERVER_LOST
        2026,  # CR_SSL_CONNECTION_ERROR
        2055,  # CR_SERVER_LOST_EXTENDED
        4031,  # ER_CLIENT_INTERACTION_TIMEOUT (MariaDB / MySQL 8.0.24+)
    }
)
#: MySQL / MariaDB: deadlock (1213), lock wait timeout (1205), snapshot conflict (1020).
MYSQL_CONFLICT: Final = frozenset({1213, 1205, 1020})
#: MySQL / MariaDB: out of range, truncated, bad datetime, bad string value, too long.
MYSQL_DATA: Final = frozenset({1264, 1265, 1292, 1366, 1406})
#: PostgreSQL SQLSTATEs meaning unavailable, besides the whole connection-exception class 08.
POSTGRES_UNAVAILABLE: Final = frozenset({"57P01", "57P02", "57P03", "53300", "25006"})
#: PostgreSQL: serialization_failure, deadlock_detected, lock_not_available.
POSTGRES_CONFLICT: Final = frozenset({"40001", "40P01", "55P03"})

_MAX_CAUSE_DEPTH = 5


def _mysql_errno(orig: object) -> int | None:
    args = getattr(orig, "args", ())
    if args and isinstance(args[0], int) and not isinstance(args[0], bool):
        return args[0]
    return None


def _sqlstate(orig: object) -> str | None:
    state = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return state if isinstance(state, str) else None


def _classify_one(error: BaseException) -> Failure | None:
    if isinstance(error, sa_exc.TimeoutError):  # the pool's wait ran out (incl. PoolExhausted)
        return Failure.POOL_EXHAUSTED
    if isinstance(error, sa_exc.DisconnectionError):
        return Failure.UNAVAILABLE
    if not isinstance(error, sa_exc.DBAPIError):
        return None
    orig = error.orig
    errno = _mysql_errno(orig)
    state = _sqlstate(orig)
    module = type(orig).__module__
    if errno is not None and not module.startswith("sqlite3"):
        if errno in MYSQL_UNAVAILABLE:
            return Failure.UNAVAILABLE
        if errno in MYSQL_CONFLICT:
            return Failure.CONFLICT
        if errno in MYSQL_DATA:
            return Failure.DATA
    if state is not None:
        if state.startswith("08") or state in POSTGRES_UNAVAILABLE:
            return Failure.UNAVAILABLE
        if state in POSTGRES_CONFLICT:
            return Failure.CONFLICT
    if error.connection_invalidated:
        return Failure.UNAVAILABLE
    if isinstance(error, sa_exc.IntegrityError) or (state or "").startswith("23"):
        return Failure.INTEGRITY
    if isinstance(error, sa_exc.DataError) or (state or "").startswith("22"):
        return Failure.DATA
    # SQLite carries neither an error number in args nor a SQLSTATE: its messages are stable.
    text = str(orig)
    if "database is locked" in text or "database table is locked" in text:
        return Failure.CONFLICT
    if module.startswith("sqlite3"):
        return Failure.UNAVAILABLE if "unable to open database file" in text else None
    # libpq's connection failures (refused, closed, server terminated) carry no SQLSTATE.
    if (
        state is None
        and module.startswith("psycopg")
        and isinstance(error, sa_exc.OperationalError | sa_exc.InterfaceError)
    ):
        return Failure.UNAVAILABLE
    return None


def classify(error: BaseException) -> Failure | None:
    """The :class:`Failure` kind of ``error`` (or of what it was raised from), else None.

    Follows ``raise ... from`` (``__cause__``) a few levels, so an application error that
    wraps a database error keeps the database error's kind.
    """
    current: BaseException | None = error
    for _ in range(_MAX_CAUSE_DEPTH):
        if current is None:
            return None
        kind = _classify_one(current)
        if kind is not None:
            return kind
        current = current.__cause__
    return None


def is_unavailable(error: BaseException) -> bool:
    """True when the database is unreachable, dropped the connection, or the pool is dry.

    Both mean "not the request's fault, try again shortly": 503 on the web, backoff without
    limit in a consumer.
    """
    return classify(error) in (Failure.UNAVAILABLE, Failure.POOL_EXHAUSTED)


def is_retryable_conflict(error: BaseException) -> bool:
    """True for a deadlock / lock-wait / serialization failure that a retry can resolve."""
    return classify(error) is Failure.CONFLICT


def is_retryable_disconnect(error: BaseException) -> bool:
    """True when a *statement* failed because the connection died, so the transaction never
    reached COMMIT and the server rolled it back: safe to run again on a fresh connection.

    SQLAlchemy wraps a failed COMMIT (and a failed connect) with no statement, so
    ``error.statement is None`` excludes both: a COMMIT-time disconnect has an unknown
    outcome, and a server that refuses connections is down, not flaky.
    """
    return (
        isinstance(error, sa_exc.DBAPIError)
        and error.connection_invalidated
        and error.statement is not None
        and classify(error) is Failure.UNAVAILABLE
    )


def describe(error: BaseException) -> str:
    """One line naming the failure, no traceback: ``(2003, "Can't connect to ... (111)")``.

    The driver's own message is kept (it names the host and port, never the password);
    newlines are folded so a log line stays one line.
    """
    source: BaseException = error
    if isinstance(error, sa_exc.DBAPIError) and isinstance(error.orig, BaseException):
        source = error.orig
    text = str(source).strip()
    # SQLAlchemy appends the statement and "(Background on this error at: ...)"; keep line 1.
    return one_line(text.splitlines()[0] if text else type(source).__name__, 500)


# --------------------------------------------------------------------------- Flask


#: Methods whose requests are re-run once after a disconnect (RFC 9110 safe methods).
SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})


def register_error_handlers(
    app: Flask,
    *,
    retry_after: int = 1,
    on_unavailable: Callable[[Failure], None] | None = None,
    reset_session: Callable[[], None] | None = None,
) -> None:
    """Answer a database that is unavailable, or an exhausted pool, with 503 + Retry-After.

    The body is ``{"error": {"code": "database_unavailable" | "service_unavailable",
    "message": ...}}``; the log gets one WARNING line per request (method, path, the error's
    first line; no traceback: an outage is not a bug, and 16 clients x 2 tracebacks per
    request buried the log during one); ``on_unavailable`` is called once per such request
    (the extension counts them into ``pooltender_requests_unavailable_total``).

    With ``reset_session`` (the extension passes ``db.session.rollback``), a request of a safe
    method (GET, HEAD, OPTIONS) whose statement failed on a dead connection
    (:func:`is_retryable_disconnect`: killed, timed out by the server, dropped inside the
    idle-ping window) is run once more, view only, on a fresh connection, before any 503.

    Other database errors are re-raised, so the application's own handlers (or Flask's 500)
    see them unchanged. Handlers are registered on the exception classes that can carry an
    outage (``DBAPIError``, ``DisconnectionError``, the pool's ``TimeoutError``); a more
    specific handler the app registers (e.g. for ``IntegrityError``) still wins.
    """
    from flask import current_app, g, jsonify, request

    def _retry_once(error: Exception) -> Response | None:
        if (
            reset_session is None
            or request.method not in SAFE_METHODS
            or g.get("_pooltender_retried")
            or not is_retryable_disconnect(error)
        ):
            return None
        g._pooltender_retried = True
        log.info(
            "%s %s: connection lost (%s); retrying once",
            request.method,
            request.path,
            describe(error),
        )
        reset_session()
        try:
            return current_app.make_response(current_app.dispatch_request())
        except Exception as again:
            return _handle(again)

    def _handle(error: Exception) -> Response:
        kind = classify(error)
        if kind not in (Failure.UNAVAILABLE, Failure.POOL_EXHAUSTED):
            raise error
        retried = _retry_once(error)
        if retried is not None:
            return retried
        assert kind is not None
        if on_unavailable is not None:
            on_unavailable(kind)
        log.warning(
            "%s %s answered 503: database %s: %s",
            request.method,
            request.path,
            kind.value.replace("_", " "),
            describe(error),
        )
        if kind is Failure.POOL_EXHAUSTED:
            body = {
                "code": "service_unavailable",
                "message": "the service is busy (no database connection free); retry shortly",
            }
        else:
            body = {
                "code": "database_unavailable",
                "message": "the database is unavailable; retry shortly",
            }
        response = jsonify({"error": body})
        response.status_code = 503
        response.headers["Retry-After"] = str(retry_after)
        return response

    handled: tuple[type[Exception], ...] = (
        sa_exc.DBAPIError,
        sa_exc.DisconnectionError,
        sa_exc.TimeoutError,
    )
    for cls in handled:
        app.register_error_handler(cls, _handle)
