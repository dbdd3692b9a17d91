"""Idempotency keys with Stripe's semantics, without Flask.

A client sends ``Idempotency-Key: <key>`` with a POST. The first request with a key runs;
any later request with the same key (per user) gets the first one's response replayed:

* same key, same endpoint and body, first request finished -> :class:`Replay` of its response;
* same key, different endpoint or body -> :class:`Unprocessable` (``idempotency_key_reused``);
* same key while the first request is still running -> :class:`Conflict`
  (``idempotency_key_in_progress``);
* a key older than its time to live is gone: the next request with it runs afresh.

Protocol, in transactions of the one scoped ``db.session``:

1. :func:`claim` inserts the key row with ``response_status`` NULL (in progress) and commits.
   The unique key (user_id, key) arbitrates between racing requests: exactly one insert wins.
2. :func:`execute` runs the effect and stores its response on the key row in the *same*
   transaction, so a committed effect always has its response recorded and vice versa.
   A refusal (:class:`ServiceError`, a 4xx) rolls the effect back; its error response is
   then stored in a transaction of its own, so it replays too. Any other exception deletes
   the key row, so the client may retry with the same key.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
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
    """A response as recorded: HTTP status and the JSON body text, byte for byte."""

    status: int
    body: str


@dataclass(frozen=True)
class Claim:
    """This request owns the key row ``key_id``; it must :func:`execute` (or release) it."""

    key_id: int


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
    user_id: int, key: str, endpoint: str, request_hash: str, now: dt.datetime, ttl: int
) -> int:
    result = db.session.execute(
        insert(IdempotencyKey).values(
            user_id=user_id,
            key=key,
            endpoint=endpoint[:MAX_ENDPOINT_LENGTH],
            request_hash=request_hash,
            response_status=None,
            response_body=None,
            created_at=now,
            expires_at=now + dt.timedelta(seconds=ttl),
        )
    )
    assert isinstance(result, CursorResult)
    (key_id,) = result.inserted_primary_key or (None,)
    if key_id is None:  # pragma: no cover
        raise RuntimeError("the database returned no id for the idempotency key")
    return int(key_id)


def _load(user_id: int, key: str) -> IdempotencyKey | None:
    """The key row, locked: its latest version, safe to delete (no InnoDB snapshot opened)."""
    return db.session.execute(
        select(IdempotencyKey)
        .where(IdempotencyKey.user_id == user_id, IdempotencyKey.key == key)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).scalar_one_or_none()


def claim(
    *,
    user_id: int,
    key: str,
    endpoint: str,
    request_hash: str,
    ttl: int,
    now: dt.datetime | None = None,
) -> Claim | Replay:
    """Take ``key`` for this request, or say what the earlier request with it got.

    Raises :class:`Unprocessable` (``idempotency_key_reused``) when the key was used for a
    different endpoint or body, :class:`Conflict` (``idempotency_key_in_progress``) while
    the first request with it is still running. An expired row is deleted and the key
    claimed afresh.
    """
    check_key(key)
    now = now or utcnow()
    for _ in range(_CLAIM_ATTEMPTS):
        try:
            key_id = transaction(lambda: _insert(user_id, key, endpoint, request_hash, now, ttl))
            return Claim(key_id)
        except IntegrityError:
            pass  # the key exists; transaction() rolled the failed insert back

        def inspect() -> Claim | Replay | None:
            row = _load(user_id, key)
            if row is None:
                return None  # deleted since (expired, or its request failed): insert again
            if row.expires_at <= now:
                db.session.execute(
                    delete(IdempotencyKey).where(
                        IdempotencyKey.id == row.id, IdempotencyKey.expires_at <= now
                    )
                )
                return None
            if row.endpoint != endpoint[:MAX_ENDPOINT_LENGTH] or row.request_hash != request_hash:
                raise Unprocessable(
                    "this Idempotency-Key was used with a different request; "
                    "use a new key for a new request",
                    code="idempotency_key_reused",
                )
            if row.response_status is None and row.created_at <= now - IN_PROGRESS_LEASE:
                # The claimer is gone (gunicorn kills a worker after 60 s). Its effect and its
                # stored response commit in one transaction, so no response means no effect:
                # taking the key over cannot apply the request twice.
                db.session.execute(
                    delete(IdempotencyKey).where(
                        IdempotencyKey.id == row.id,
                        IdempotencyKey.response_status.is_(None),
                        IdempotencyKey.created_at <= now - IN_PROGRESS_LEASE,
                    )
                )
                return None
            if row.response_status is None or row.response_body is None:
                raise Conflict(
                    "a request with this Idempotency-Key is still in progress; retry later",
                    code="idempotency_key_in_progress",
                )
            return Replay(StoredResponse(row.response_status, row.response_body))

        outcome = transaction(inspect)
        if outcome is not None:
            return outcome
    raise Conflict(
        "a request with this Idempotency-Key is still in progress; retry later",
        code="idempotency_key_in_progress",
    )


def _store(claimed: Claim, response: StoredResponse) -> None:
    result = db.session.execute(
        update(IdempotencyKey)
        .where(IdempotencyKey.id == claimed.key_id, IdempotencyKey.response_status.is_(None))
        .values(response_status=response.status, response_body=response.body)
        .execution_options(synchronize_session=False)
    )
    assert isinstance(result, CursorResult)
    if result.rowcount != 1:
        # Only possible if the row was purged mid-request; refuse to commit an effect whose
        # response could not be recorded (a retry would apply it twice).
        raise RuntimeError(f"idempotency key row {claimed.key_id} vanished during its request")


def release(claimed: Claim) -> None:
    """Delete the key row so the client can retry with the same key."""
    transaction(
        lambda: db.session.execute(
            delete(IdempotencyKey).where(IdempotencyKey.id == claimed.key_id)
        )
    )


def execute(
    claimed: Claim,
    effect: Callable[[], StoredResponse],
    render_error: Callable[[ServiceError], StoredResponse],
) -> StoredResponse:
    """Run ``effect`` and record its response in the same transaction; return the response.

    ``effect`` runs inside :func:`coupons.db.transaction` (so it may run again on a deadlock
    retry) and must use the ``*_in_transaction`` service functions. A :class:`ServiceError`
    it raises is rendered with ``render_error``, recorded, and returned like a success;
    any other exception releases the key and propagates.
    """

    def work() -> StoredResponse:
        response = effect()
        _store(claimed, response)
        return response

    try:
        return transaction(work)
    except ServiceError as exc:
        refused = render_error(exc)
        try:
            transaction(lambda: _store(claimed, refused))
        except Exception:
            _release_quietly(claimed)
            raise
        return refused
    except BaseException:
        _release_quietly(claimed)
        raise


def _release_quietly(claimed: Claim) -> None:
    try:
        release(claimed)
    except Exception:  # the original error matters more; the row expires anyway
        log.exception("could not release idempotency key row %s", claimed.key_id)


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
