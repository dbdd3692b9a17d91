"""Idempotency keys with Stripe's semantics, without Flask.

A client sends ``Idempotency-Key: <key>`` with a POST. The first request with a key runs;
any later request with the same key (per user) gets the first one's response replayed:

* same key, same endpoint and body, first request finished -> :class:`Replay` of its response;
* same key, different endpoint or body -> :class:`Unprocessable` (``idempotency_key_reused``);
* same key while the first request is still running -> the second request *waits* for the
  first (on the key's unique index) and then replays its response; if the first rolled back
  or its process died, the second runs at once;
* a key older than its time to live is gone: the next request with it runs afresh.

Protocol, in transactions of the one scoped ``db.session``:

1. :func:`claim` reads the key's committed row, if any: a stored response is a
   :class:`Replay`, another request's fingerprint is refused; no row gives a :class:`Claim`
   (nothing is written yet).
2. :func:`execute` inserts the key row, runs the effect and stores its response, all in
   *one* transaction: the key, the effect and the response commit together or not at all.
   A worker SIGKILLed mid-request, a database restart, a connection lost before COMMIT: the
   server rolls the transaction back, and no key row is left to block the client's retry
   (the earlier protocol committed the claim first and left it "in progress" for a 120 s
   lease after such faults: 11-12 stuck keys per 5 s outage). A concurrent twin's insert
   blocks on the uncommitted row and, when that commits, fails on the unique key: the twin
   then replays the committed response (``StoredResponse.replayed``).
   A refusal (:class:`ServiceError`, a 4xx) rolls the effect back; its error response is
   then stored with the key in a transaction of its own, so it replays too.

A disconnect *at* COMMIT leaves the outcome unknown to this process; the client's retry with
the same key finds either the committed row (replay) or none (runs afresh): never twice.
Rows in progress (``response_status`` NULL) are only written by the earlier protocol (a
rolling deploy); they keep the 120 s :data:`IN_PROGRESS_LEASE`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Final

from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.exc import IntegrityError

from coupons.db import db, transaction
from coupons.errors import BadRequest, Conflict, ServiceError, Unprocessable
from coupons.models import IdempotencyKey, utcnow

log = logging.getLogger(__name__)

MAX_KEY_LENGTH: Final = 255
MAX_ENDPOINT_LENGTH: Final = 200
_CLAIM_ATTEMPTS: Final = 3


@dataclass(frozen=True)
class StoredResponse:
    """A response as recorded: HTTP status and the JSON body text, byte for byte.

    ``replayed`` is true when :func:`execute` found that a concurrent request with the same
    key committed first, so this is that request's response (send ``Idempotent-Replayed``).
    """

    status: int
    body: str
    replayed: bool = field(default=False, compare=False)


@dataclass(frozen=True)
class Claim:
    """No committed row holds the key: this request may :func:`execute` under it."""

    user_id: int
    key: str
    endpoint: str
    request_hash: str
    ttl: int
    now: dt.datetime


class _KeyTaken(Exception):
    """The key row's insert hit the unique key: a concurrent request committed it first."""


@dataclass(frozen=True)
class Replay:
    """The key was used before, with the same request: answer with ``response``."""

    response: StoredResponse


#: How long a claimed key may stay "in progress" before a retry may take it over.
IN_PROGRESS_LEASE: Final = dt.timedelta(seconds=120)


def check_key(key: str) -> str:
    """The key as sent, or :class:`BadRequest` when it is blank or longer than 255 chars."""
    if not key.strip():
        raise BadRequest("the Idempotency-Key header is empty", code="invalid_idempotency_key")
    if len(key) > MAX_KEY_LENGTH:
        raise BadRequest(
            f"the Idempotency-Key header is longer than {MAX_KEY_LENGTH} characters",
            code="idempotency_key_too_long",
        )
    return key


def request_fingerprint(payload: Any) -> str:
    """SHA-256 of ``payload`` as canonical JSON (sorted keys), so key order does not matter."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _insert(
    user_id: int,
    key: str,
    endpoint: str,
    request_hash: str,
    now: dt.datetime,
    ttl: int,
    response: StoredResponse | None = None,
) -> int:
    result = db.session.execute(
        insert(IdempotencyKey).values(
            user_id=user_id,
            key=key,
            endpoint=endpoint[:MAX_ENDPOINT_LENGTH],
            request_hash=request_hash,
            response_status=None if response is None else response.status,
            response_body=None if response is None else response.body,
            created_at=now,
            expires_at=now + dt.timedelta(seconds=ttl),
        )
    )
    assert isinstance(result, CursorResult)
    (key_id,) = result.inserted_primary_key or (None,)
    if key_id is None:  # pragma: no cover
        raise RuntimeError("the database returned no id for the idempotency key")
    return int(key_id)


def _insert_claimed(claimed: Claim, response: StoredResponse | None = None) -> int:
    """Insert the key row in the caller's transaction; :class:`_KeyTaken` on a duplicate.

    The raise ends the caller's transaction (a failed statement aborts it on PostgreSQL
    anyway); the caller then reads the committed row in a new one.
    """
    try:
        key_id = _insert(
            claimed.user_id,
            claimed.key,
            claimed.endpoint,
            claimed.request_hash,
            claimed.now,
            claimed.ttl,
            response,
        )
    except IntegrityError:
        raise _KeyTaken from None
    return key_id


def _inspect(
    user_id: int, key: str, endpoint: str, request_hash: str, now: dt.datetime
) -> Replay | None:
    """What the key's committed row says: a replay, a refusal (raised), or None (free)."""
    # Plain columns, not an entity: nothing lands in the identity map to go stale.
    row = db.session.execute(
        select(
            IdempotencyKey.id,
            IdempotencyKey.endpoint,
            IdempotencyKey.request_hash,
            IdempotencyKey.response_status,
            IdempotencyKey.response_body,
            IdempotencyKey.created_at,
            IdempotencyKey.expires_at,
        ).where(IdempotencyKey.user_id == user_id, IdempotencyKey.key == key)
    ).one_or_none()
    if row is None:
        return None
    if row.expires_at <= now:
        transaction(
            lambda: db.session.execute(
                delete(IdempotencyKey).where(
                    IdempotencyKey.id == row.id, IdempotencyKey.expires_at <= now
                )
            )
        )
        return None
    if row.endpoint != endpoint[:MAX_ENDPOINT_LENGTH] or row.request_hash != request_hash:
        raise Unprocessable(
            "this Idempotency-Key was used with a different request; "
            "use a new key for a new request",
            code="idempotency_key_reused",
        )
    if row.response_status is None or row.response_body is None:
        # A claim committed by the earlier protocol (a rolling deploy): leased.
        if row.created_at <= now - IN_PROGRESS_LEASE:
            transaction(
                lambda: db.session.execute(
                    delete(IdempotencyKey).where(
                        IdempotencyKey.id == row.id,
                        IdempotencyKey.response_status.is_(None),
                        IdempotencyKey.created_at <= now - IN_PROGRESS_LEASE,
                    )
                )
            )
            return None
        raise Conflict(
            "a request with this Idempotency-Key is still in progress; retry later",
            code="idempotency_key_in_progress",
        )
    return Replay(StoredResponse(row.response_status, row.response_body))


def claim(
    *,
    user_id: int,
    key: str,
    endpoint: str,
    request_hash: str,
    ttl: int,
    now: dt.datetime | None = None,
) -> Claim | Replay:
    """Say what an earlier request with ``key`` got, or give a :class:`Claim` to execute.

    Raises :class:`Unprocessable` (``idempotency_key_reused``) when the key was used for a
    different endpoint or body. An expired row is deleted. Nothing is written for a new key:
    :func:`execute` inserts it with the effect.
    """
    check_key(key)
    now = now or utcnow()
    try:
        found = _inspect(user_id, key, endpoint, request_hash, now)
    finally:
        db.session.rollback()  # end the read: no snapshot or lock outlives it
    if found is not None:
        return found
    return Claim(user_id, key, endpoint[:MAX_ENDPOINT_LENGTH], request_hash, ttl, now)


def _replay_of(claimed: Claim) -> StoredResponse:
    """The response a concurrent request committed under ``claimed``'s key."""
    for _ in range(_CLAIM_ATTEMPTS):
        try:
            found = _inspect(
                claimed.user_id, claimed.key, claimed.endpoint, claimed.request_hash, claimed.now
            )
        finally:
            db.session.rollback()
        if found is not None:
            return replace(found.response, replayed=True)
    raise Conflict(
        "a request with this Idempotency-Key is still in progress; retry later",
        code="idempotency_key_in_progress",
    )


def _store(key_id: int, response: StoredResponse) -> None:
    result = db.session.execute(
        update(IdempotencyKey)
        .where(IdempotencyKey.id == key_id, IdempotencyKey.response_status.is_(None))
        .values(response_status=response.status, response_body=response.body)
        .execution_options(synchronize_session=False)
    )
    assert isinstance(result, CursorResult)
    if result.rowcount != 1:  # pragma: no cover - the row was inserted in this transaction
        raise RuntimeError(f"idempotency key row {key_id} vanished during its request")


def release(claimed: Claim) -> None:
    """Nothing to release: a claim writes nothing until its effect commits (kept for callers
    of the earlier protocol)."""


def execute(
    claimed: Claim,
    effect: Callable[[], StoredResponse],
    render_error: Callable[[ServiceError], StoredResponse],
) -> StoredResponse:
    """Insert the key, run ``effect`` and record its response, in one transaction.

    ``effect`` runs inside :func:`coupons.db.transaction` (so it may run again on a deadlock
    retry) and must use the ``*_in_transaction`` service functions. A :class:`ServiceError`
    it raises is rendered with ``render_error``, recorded with the key, and returned like a
    success. When a concurrent request with the key committed first, its response is
    returned with ``replayed=True`` and ``effect`` is not run. Any other exception
    propagates; the rollback leaves no key row behind, so the client may retry at once.
    """

    def work() -> StoredResponse:
        key_id = _insert_claimed(claimed)  # first: a twin waits here, holding no other lock
        response = effect()
        _store(key_id, response)
        return response

    try:
        return transaction(work)
    except _KeyTaken:
        return _replay_of(claimed)
    except ServiceError as exc:
        refused = render_error(exc)
        try:
            transaction(lambda: _insert_claimed(claimed, refused))
        except _KeyTaken:
            return _replay_of(claimed)
        return refused


def purge_expired(*, now: dt.datetime | None = None, limit: int = 500) -> int:
    """Delete up to ``limit`` expired key rows; return how many went.

    Ids are read first (skipping rows another transaction holds) and deleted by primary key,
    so the DELETE takes row locks only (a range DELETE on ``expires_at`` would take gap locks
    on InnoDB that block new keys).
    """
    now = now or utcnow()

    def work() -> int:
        ids = list(
            db.session.execute(
                select(IdempotencyKey.id)
                .where(IdempotencyKey.expires_at <= now)
                .limit(limit)
                .with_for_update(skip_locked=True)
            ).scalars()
        )
        if not ids:
            return 0
        result = db.session.execute(
            delete(IdempotencyKey).where(
                IdempotencyKey.id.in_(ids), IdempotencyKey.expires_at <= now
            )
        )
        assert isinstance(result, CursorResult)
        return int(result.rowcount)

    return transaction(work)
