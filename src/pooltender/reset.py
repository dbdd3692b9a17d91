"""Return connections to the pool without a ROLLBACK that does nothing.

SQLAlchemy's pool resets every connection it gets back with a ``ROLLBACK``
(``reset_on_return="rollback"``), except when :meth:`Connection.close` has just rolled back
a transaction that was still open. After the usual end of a unit of work -- a ``COMMIT``,
or a ``ROLLBACK`` that already ended it (``Session.rollback()`` and then the session's
close) -- there is nothing left to roll back, but the pool sends one anyway: one more
round trip per request, on the server and in the client, while the request still holds
its connection. On the coupons service (issue 10, ``bench/request_cpu.py``) that was
0.26 ms of a redeem's 3.46 ms wall time and 5-14% of its client CPU.

:func:`install_clean_reset` keeps the reset and skips only that ROLLBACK:

* the engine's pool stops resetting by itself (``reset_on_return`` none) and a ``reset``
  listener does it instead -- SQLAlchemy's documented recipe for a custom reset ("Custom
  Reset Schemes", the pooling chapter of its documentation). A failing ROLLBACK there
  invalidates the connection, as the pool's own would;
* the engine's dialect reports each transaction's end: ``do_commit`` and ``do_rollback``,
  when they *return* (a COMMIT that raised leaves the connection unclean), mark the pool
  entry *clean*; ``do_begin`` marks it unclean again;
* on return, a clean entry is not rolled back; every other one is, exactly as before: a
  connection checked out by ``engine.raw_connection()``, one whose transaction is still
  open, or one whose COMMIT failed. The mark is consumed by the return, so each checkout
  starts unclean.

**Hazard.** Statements sent on the *driver's* connection behind SQLAlchemy's back (the
DBAPI cursor of ``connection.connection``) after SQLAlchemy's last COMMIT or ROLLBACK of a
checkout are not seen, and their transaction would go back to the pool open. pooltender's
linter has no rule for that, since it is rare; an application that does it sets
``POOLTENDER_RESET_ON_RETURN=always`` (SQLAlchemy's own behaviour). Two-phase and
savepoint operations are not hooked: a transaction that uses them begins with ``do_begin``
and ends with ``do_commit`` or ``do_rollback`` like any other (a two-phase transaction,
which begins with ``do_begin_twophase``, stays unclean and is rolled back as before).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import event
from sqlalchemy.pool.base import reset_none, reset_rollback

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine
    from sqlalchemy.pool import PoolResetState

__all__ = ["CLEAN_KEY", "clean_reset_installed", "install_clean_reset"]

#: ``record.info`` key: True from the end of a transaction until the next begins or the
#: connection goes back to the pool.
CLEAN_KEY: Final = "pooltender.clean"

_INSTALLED: Final = "pooltender.clean_reset"


def _record_info(connection: Any) -> dict[str, Any] | None:
    """The pool entry's ``info`` of the connection the dialect was handed (a pool proxy;
    a bare driver connection, as during a first connect, has none)."""
    record = getattr(connection, "_connection_record", None)
    return None if record is None else record.info


def clean_reset_installed(engine: Engine) -> bool:
    """Whether :func:`install_clean_reset` runs ``engine``'s resets."""
    return bool(engine.dialect.__dict__.get(_INSTALLED))


def install_clean_reset(engine: Engine) -> bool:
    """Skip the pool's reset ROLLBACK of ``engine`` when the connection is clean (module doc).

    Installs only over SQLAlchemy's default reset (``pool_reset_on_return="rollback"``): an
    engine created with another choice (``"commit"``, ``None``) keeps it, and False is
    returned. Idempotent: True when installed, now or before; survives ``engine.dispose()``
    (the recreated pool keeps the reset setting and the listeners).
    """
    pool, dialect = engine.pool, engine.dialect
    if dialect.__dict__.get(_INSTALLED):
        return True
    if pool._reset_on_return is not reset_rollback:
        return False
    begin, commit, rollback = dialect.do_begin, dialect.do_commit, dialect.do_rollback

    def do_begin(dbapi_connection: Any) -> None:
        info = _record_info(dbapi_connection)
        if info is not None:
            info[CLEAN_KEY] = False
        begin(dbapi_connection)

    def do_commit(dbapi_connection: Any) -> None:
        commit(dbapi_connection)
        info = _record_info(dbapi_connection)
        if info is not None:
            info[CLEAN_KEY] = True

    def do_rollback(dbapi_connection: Any) -> None:
        rollback(dbapi_connection)
        info = _record_info(dbapi_connection)
        if info is not None:
            info[CLEAN_KEY] = True

    def on_reset(dbapi_connection: Any, record: Any, state: PoolResetState) -> None:
        if record is not None:
            info = record.info
            if info.get(CLEAN_KEY):
                info[CLEAN_KEY] = False  # consumed: the next checkout starts unclean
                return
        if state.transaction_was_reset or not state.asyncio_safe:
            return  # Connection.close() just rolled back; or no IO allowed (the pool's rule)
        rollback(dbapi_connection)  # what the pool's reset_rollback does; failing invalidates

    # The dialect is this engine's own (create_engine builds one per engine): instance
    # attributes shadow its methods for this engine alone.
    dialect.do_begin = do_begin  # type: ignore[method-assign]
    dialect.do_commit = do_commit  # type: ignore[method-assign]
    dialect.do_rollback = do_rollback  # type: ignore[method-assign]
    event.listen(engine, "reset", on_reset)
    pool._reset_on_return = reset_none
    dialect.__dict__[_INSTALLED] = True
    return True
