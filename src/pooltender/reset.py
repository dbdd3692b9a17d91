"""Return connections to the pool without a ROLLBACK that does nothing.

SQLAlchemy's pool resets every connection it gets back with a ``ROLLBACK``
(``reset_on_return="rollback"``), except when :meth:`Connection.close` has just rolled back
a transaction that was still open. After the usual end of a unit of work -- a ``COMMIT``,
or a ``Connection.rollback()`` followed by its ``close()`` -- there is nothing left to
roll back, but the pool sends one anyway: one more round trip, on the server and in the
client, while the request still holds its connection. On the coupons service (issue 10;
docs/benchmarks.md, "Results", the experiments of run G's session) a redeem sent 7
statements instead of 6, and the extra one cost about 0.26 ms of its 3.46 ms wall time in
one A/B run on a noisy host.

:func:`install_clean_reset` keeps the reset and skips only that ROLLBACK:

* the engine's pool stops resetting by itself (``reset_on_return`` none) and a ``reset``
  listener does it instead -- SQLAlchemy's documented recipe for a custom reset ("Custom
  Reset Schemes", the pooling chapter of its documentation). A failing ROLLBACK there
  invalidates the connection, as the pool's own would;
* the engine's dialect reports each transaction's end: ``do_commit`` and ``do_rollback``
  mark the pool entry *clean* when they return, and unclean when they raise;
* on return, a clean entry is not rolled back; every other one is, exactly as before: a
  connection checked out by ``engine.raw_connection()``, or one whose COMMIT or ROLLBACK
  failed. The mark is consumed by the return, so each checkout starts unclean. A
  transaction SQLAlchemy began after the last COMMIT and left open is rolled back by
  ``Connection.close()`` itself (SQLAlchemy's own rule: the pool's reset is skipped then,
  with or without this module); no hook on BEGIN is needed for it.

**Hazard.** Statements sent on the *driver's* connection behind SQLAlchemy's back (the
DBAPI cursor of ``connection.connection``) after SQLAlchemy's last COMMIT or ROLLBACK of a
checkout are not seen, and their transaction would go back to the pool open. pooltender's
linter has no rule for that, since it is rare; an application that does it sets
``POOLTENDER_RESET_ON_RETURN=always`` (SQLAlchemy's own behaviour). Two-phase and
savepoint operations are not hooked: a transaction with savepoints still ends with
``do_commit`` or ``do_rollback``, and a two-phase one (``do_commit_twophase``) leaves the
entry unclean, so it is rolled back on return as before.
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
    commit, rollback = dialect.do_commit, dialect.do_rollback

    def marking(end: Any) -> Any:
        """``end`` (the dialect's do_commit or do_rollback) marking the pool entry of the
        pool proxy it is handed (a bare driver connection, as during a first connect, has
        none): clean when it returns, unclean when it raises, so a failed end is rolled
        back on return (and invalidates the connection if that fails too, as SQLAlchemy's
        own reset does). One runs per transaction."""

        def hook(dbapi_connection: Any) -> None:
            record = getattr(dbapi_connection, "_connection_record", None)
            try:
                end(dbapi_connection)
            except BaseException:
                if record is not None:
                    record.info[CLEAN_KEY] = False
                raise
            if record is not None:
                record.info[CLEAN_KEY] = True

        return hook

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
    dialect.do_commit = marking(commit)  # type: ignore[method-assign]
    dialect.do_rollback = marking(rollback)  # type: ignore[method-assign]
    event.listen(engine, "reset", on_reset)
    pool._reset_on_return = reset_none
    dialect.__dict__[_INSTALLED] = True
    return True
