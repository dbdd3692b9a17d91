"""Ending idle connections, like ``pt-kill --match-command Sleep``, but careful by default.

:func:`kill_idle` takes one snapshot (:func:`pooltender.server.snapshot.take_snapshot`), selects the
connections that are

* client connections -- never server threads, replication threads or walsenders;
* not the connection doing the killing;
* idle: MySQL ``Sleep`` with no open InnoDB transaction, PostgreSQL state ``idle``; with
  ``include_idle_in_transaction`` also ``idle in transaction`` (MySQL: ``Sleep`` holding an
  InnoDB transaction; PostgreSQL: ``idle in transaction`` and ``... (aborted)``). Those are
  left out by default because killing them rolls back work the application may still
  commit; they are usually the ones worth ending, but that should be a decision;
* idle for at least ``older_than`` seconds, and from ``user`` / ``host`` when given;

and, only with ``apply=True``, ends them: MySQL ``KILL CONNECTION id``, PostgreSQL
``pg_terminate_backend(pid)``. A connection can become busy between the snapshot and the
kill, so each is checked again right before: on PostgreSQL the check and the terminate are
one statement; on MySQL the processlist row is re-read (still ``Sleep``, still old enough,
same user) and then killed, which leaves a window of one round trip, as with pt-kill.

Killing other accounts' connections needs ``CONNECTION ADMIN`` / ``SUPER`` (MySQL) or
superuser / ``pg_signal_backend`` membership (PostgreSQL); a refused kill is reported in
:attr:`KillReport.failed`, not raised.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

from pooltender.server.snapshot import (
    CLIENT,
    IDLE,
    InspectionError,
    ServerConnection,
    ServerSnapshot,
    connect_for_inspection,
    take_snapshot,
)
from pooltender.text import first_line, mask_url, scrub

__all__ = [
    "IdleMatch",
    "KillReport",
    "kill_idle",
    "select_idle",
    "wait_until_gone",
]


@dataclass(frozen=True, kw_only=True)
class IdleMatch:
    """Which connections count as idle enough to end (see module doc): the one value the
    selection, the re-check right before each kill and the report all read."""

    older_than: float
    user: str | None = None
    host: str | None = None
    include_idle_in_transaction: bool = False

    def matches(self, c: ServerConnection) -> bool:
        """``c`` is a client connection, not ours, idle long enough, of ``user`` / ``host``."""
        if c.kind != CLIENT or c.is_self:
            return False
        idle = c.state == IDLE or (self.include_idle_in_transaction and c.is_idle_in_transaction)
        return (
            idle
            and c.seconds_in_state >= self.older_than
            and (self.user is None or c.user == self.user)
            and (self.host is None or c.host == self.host)
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "older_than": self.older_than,
            "user": self.user,
            "host": self.host,
            "include_idle_in_transaction": self.include_idle_in_transaction,
        }


@dataclass(frozen=True, kw_only=True)
class KillReport:
    """What :func:`kill_idle` selected (by ``match``) and (with ``applied``) what it ended."""

    url: str
    backend: str
    match: IdleMatch
    applied: bool
    candidates: tuple[ServerConnection, ...]
    killed: tuple[int, ...] = ()
    failed: Mapping[int, str] = field(default_factory=dict)
    """id -> why it was not killed (gone already, became busy, not allowed)."""
    skipped_self: int = 0
    skipped_system: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "backend": self.backend,
            **self.match.to_json(),
            "applied": self.applied,
            "candidates": [c.to_json() for c in self.candidates],
            "killed": list(self.killed),
            "failed": {str(k): v for k, v in self.failed.items()},
            "counts": {
                "candidates": len(self.candidates),
                "killed": len(self.killed),
                "failed": len(self.failed),
                "skipped_self": self.skipped_self,
                "skipped_system": self.skipped_system,
            },
        }


def select_idle(snapshot: ServerSnapshot, match: IdleMatch) -> tuple[ServerConnection, ...]:
    """The connections of ``snapshot`` that :func:`kill_idle` would end (see module doc)."""
    return tuple(c for c in snapshot.connections if match.matches(c))


def kill_idle(
    target: str | Engine,
    *,
    older_than: float,
    user: str | None = None,
    host: str | None = None,
    include_idle_in_transaction: bool = False,
    apply: bool = False,
) -> KillReport:
    """Select idle connections and, with ``apply``, end them (see module doc).

    ``target`` is a URL (an inspection engine is made and disposed) or an engine. Raises
    :class:`~pooltender.server.snapshot.InspectionError` when the server cannot be reached.
    """
    if older_than < 0:
        raise ValueError(f"older_than must be >= 0 seconds, got {older_than}")
    match = IdleMatch(
        older_than=older_than,
        user=user,
        host=host,
        include_idle_in_transaction=include_idle_in_transaction,
    )
    engine = connect_for_inspection(target) if isinstance(target, str) else target
    raw_url = target if isinstance(target, str) else None
    shown = mask_url(raw_url) if raw_url else engine.url.render_as_string(hide_password=True)
    try:
        with engine.connect() as connection:
            snapshot = take_snapshot(connection, url=raw_url)
            candidates = select_idle(snapshot, match)
            connection.rollback()
            killed: list[int] = []
            failed: dict[int, str] = {}
            if apply:
                for candidate in candidates:
                    why = _kill(connection, snapshot.backend, candidate, match)
                    if why is None:
                        killed.append(candidate.id)
                    else:
                        failed[candidate.id] = why
    except InspectionError:
        raise
    except DBAPIError as exc:
        message = first_line(exc, with_type=False)
        raise InspectionError(
            f"cannot inspect {shown}: {scrub(message, raw_url)}",
            url=shown,
        ) from None
    finally:
        if isinstance(target, str):
            engine.dispose()
    return KillReport(
        url=snapshot.url,
        backend=snapshot.backend,
        match=match,
        applied=apply,
        candidates=candidates,
        killed=tuple(killed),
        failed=failed,
        skipped_self=1 if snapshot.self_id is not None else 0,
        skipped_system=sum(1 for c in snapshot.connections if c.kind != CLIENT),
    )


def _kill(
    connection: Connection,
    backend: str,
    candidate: ServerConnection,
    match: IdleMatch,
) -> str | None:
    """End one connection after checking it again (still idle by ``match``, same user);
    ``None`` when done, else why not."""
    try:
        if backend == "postgresql":
            states = ["idle"]
            if match.include_idle_in_transaction:
                states += ["idle in transaction", "idle in transaction (aborted)"]
            done = connection.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE pid = :pid AND pid <> pg_backend_pid() "
                    "AND backend_type = 'client backend' AND state = ANY(:states) "
                    "AND usename IS NOT DISTINCT FROM :user "
                    "AND now() - state_change >= make_interval(secs => :older)"
                ),
                {
                    "pid": candidate.id,
                    "states": states,
                    "user": candidate.user,
                    "older": match.older_than,
                },
            ).scalar_one_or_none()
            connection.commit()
            if done is None:
                return "no longer idle (or gone) when re-checked"
            return None if done else "pg_terminate_backend returned false"
        row = connection.execute(
            text(
                "SELECT COMMAND, TIME, USER FROM information_schema.PROCESSLIST "
                "WHERE ID = :id AND ID <> CONNECTION_ID()"
            ),
            {"id": candidate.id},
        ).one_or_none()
        if (
            row is None
            or row[0] != "Sleep"
            or float(row[1]) + 1 < match.older_than
            or row[2] != candidate.user
        ):
            connection.rollback()
            return "no longer idle (or gone) when re-checked"
        connection.execute(text(f"KILL CONNECTION {int(candidate.id)}"))
        connection.commit()
        return None
    except DBAPIError as exc:
        connection.rollback()
        return first_line(exc.orig if exc.orig is not None else exc, with_type=False)


def wait_until_gone(engine: Engine, ids: tuple[int, ...], timeout: float = 5.0) -> bool:
    """Wait until none of ``ids`` is listed any more (a killed thread lingers briefly)."""
    deadline = time.monotonic() + timeout
    while True:
        snapshot = take_snapshot(engine)
        alive = {c.id for c in snapshot.connections} & set(ids)
        if not alive:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
