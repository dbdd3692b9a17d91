"""Redemption and rollback: the write path, with exact caps under concurrency.

Every statement here is a Core statement built once at import (bound values are
``bindparam`` placeholders), so each execution hits SQLAlchemy's compiled cache with a
memoized cache key and no ORM machinery: the rows are counters and a ledger the identity
map has nothing to offer for. Input is parsed and checked before the transaction starts;
the response is built from values already in hand, so the rows stay locked only for the
statements themselves.

Exact caps under concurrency
----------------------------
Counters are never read, incremented in Python and written back (a lost update under
concurrency). Each counter is changed by one *conditional* ``UPDATE`` (or upsert) whose
``WHERE`` clause carries the cap, and the statement's row count says whether it applied:

* MariaDB/MySQL (InnoDB, REPEATABLE READ): an ``UPDATE`` is a locking read; it locks the row
  and evaluates its condition against the latest *committed* version, not the
  transaction's snapshot, so a waiter sees the increment of the transaction it waited for.
* PostgreSQL (READ COMMITTED): an ``UPDATE`` (and ``ON CONFLICT DO UPDATE``) that waited for
  a row lock re-evaluates its ``WHERE`` clause on the newly committed row version
  (EvalPlanQual) before applying.
* SQLite: :func:`~coupons.db.transaction` opens ``BEGIN IMMEDIATE``, so writers are serialized.

A redemption sends, in this order (lock order coupon -> campaign -> ledger -> usage):

1. ``SELECT ... FROM coupons JOIN campaigns ... WHERE code = ? FOR UPDATE`` (on PostgreSQL
   ``FOR NO KEY UPDATE``, which leaves foreign-key checks of other inserts unblocked): one
   locking read of both rows, latest committed versions, and no InnoDB snapshot is opened
   (MariaDB 11.6+ with ``innodb_snapshot_isolation=ON`` fails a write to a row changed
   after a snapshot with error 1020 instead of waiting). Both rows are locked exclusively
   from the start, never upgraded from a shared lock, so deadlocks are rare; those that
   happen are retried by ``transaction()``.
2. ``INSERT INTO redemptions``: the unique key on (campaign_id, active_order_key) answers
   ``already_redeemed`` before any cap is looked at.
3. The counters: on MariaDB one multi-table ``UPDATE coupons, campaigns SET use_count =
   use_count + 1, redemption_count = redemption_count + 1 WHERE <both caps>`` (it matched
   two rows or the cap is reached); elsewhere two conditional ``UPDATE``\\ s.
4. The customer's usage, one statement where the database can say whether it applied:
   PostgreSQL and SQLite ``INSERT ... ON CONFLICT DO UPDATE SET count = count + 1 WHERE
   count < limit RETURNING count`` (no row back: the limit is reached; psycopg reports no
   row count for an INSERT); MariaDB without a limit ``INSERT ... ON
   DUPLICATE KEY UPDATE count = count + 1`` (an exclusive lock at once, not a shared one to
   upgrade), with a limit a conditional ``UPDATE`` and, only for a customer's first use of
   the campaign, an ``INSERT`` (a duplicate key then means the limit is reached: MySQL's
   upsert row count cannot tell "unchanged" from "inserted"). Every writer of a campaign's
   usage rows (redeem, rollback, the order-event consumer through them) holds that
   campaign's row lock first, so two first uses never meet in the index gap (where two
   UPDATEs' gap locks would deadlock their INSERTs; ``transaction()`` would retry it).

Any refusal raises a :class:`~coupons.errors.ServiceError` inside the transaction, which
rolls back every statement already made, so a refused redemption writes nothing.

A rollback locks the ledger row, then its coupon and campaign in one joined ``SELECT ...
FOR UPDATE`` (exclusively from the start: on InnoDB, changing the ledger's unique entry
checks its foreign key with a *shared* lock on the campaign row, and two rollbacks that
upgrade shared to exclusive deadlock each other), flips the status (the arbiter: of
concurrent rollbacks exactly one matches ``status='redeemed'``) and restores the counts.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from decimal import Decimal
from typing import Any, Final, cast

from sqlalchemy import (
    Connection,
    Executable,
    Table,
    and_,
    bindparam,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import CursorResult
from sqlalchemy.exc import IntegrityError

from coupons.db import db, read, transaction
from coupons.models import Campaign, Coupon, CustomerUsage, Redemption, RedemptionStatus, utcnow
from coupons.services.rules import (
    CampaignRules,
    already_redeemed,
    check_money,
    compute_discount,
    coupon_not_found_in_body,
    customer_limit,
    exhausted,
    lookup_key,
    redemption_not_found,
    refusal,
)
from coupons.services.views import RedemptionView

coupons = cast(Table, Coupon.__table__)
campaigns = cast(Table, Campaign.__table__)
ledger = cast(Table, Redemption.__table__)
usage = cast(Table, CustomerUsage.__table__)

REDEEMED: Final = RedemptionStatus.REDEEMED.value
ROLLED_BACK: Final = RedemptionStatus.ROLLED_BACK.value

# --------------------------------------------------------------------------- statements
# Built once; bind names differ from column names (SQLAlchemy reserves those in SET/VALUES).

_code_left = or_(coupons.c.max_uses.is_(None), coupons.c.use_count < coupons.c.max_uses)
_campaign_left = or_(
    campaigns.c.max_redemptions.is_(None),
    campaigns.c.redemption_count < campaigns.c.max_redemptions,
)

#: 1. both rows locked, latest committed versions (FOR NO KEY UPDATE on PostgreSQL).
LOCK_CODE: Final = (
    select(
        coupons.c.id,
        coupons.c.campaign_id,
        campaigns.c.discount_type,
        campaigns.c.discount_value,
        campaigns.c.currency,
        campaigns.c.starts_at,
        campaigns.c.ends_at,
        campaigns.c.per_customer_limit,
        campaigns.c.min_order_total,
        campaigns.c.is_active,
    )
    .join_from(coupons, campaigns, coupons.c.campaign_id == campaigns.c.id)
    .where(coupons.c.code == bindparam("b_code"))
    .with_for_update(key_share=True)
)

#: 2. the ledger row.
INSERT_LEDGER: Final = insert(ledger)

#: 3. counters: MariaDB's multi-table form (two matched rows = both applied) ...
TAKE_USES_MYSQL: Final = (
    update(coupons)
    .where(
        coupons.c.id == bindparam("b_coupon_id"),
        campaigns.c.id == coupons.c.campaign_id,
        _code_left,
        _campaign_left,
    )
    .values(
        {
            coupons.c.use_count: coupons.c.use_count + 1,
            campaigns.c.redemption_count: campaigns.c.redemption_count + 1,
        }
    )
)
#: ... and the two single-table UPDATEs elsewhere.
TAKE_CODE_USE: Final = (
    update(coupons)
    .where(coupons.c.id == bindparam("b_coupon_id"), _code_left)
    .values(use_count=coupons.c.use_count + 1)
)
TAKE_CAMPAIGN_USE: Final = (
    update(campaigns)
    .where(campaigns.c.id == bindparam("b_campaign_id"), _campaign_left)
    .values(redemption_count=campaigns.c.redemption_count + 1)
)

#: 4. the customer's usage.
_usage_key = and_(
    usage.c.campaign_id == bindparam("b_campaign_id"),
    usage.c.customer_id == bindparam("b_customer_id"),
)
_first_use = {
    "campaign_id": bindparam("b_campaign_id"),
    "customer_id": bindparam("b_customer_id"),
    "count": 1,
}
_within_limit = usage.c.count < bindparam("b_limit")
_usage_pk = [usage.c.campaign_id, usage.c.customer_id]
USE_LIMITED: Final[dict[str, Executable]] = {
    "postgresql": postgresql.insert(usage)
    .values(_first_use)
    .on_conflict_do_update(
        index_elements=_usage_pk, set_={"count": usage.c.count + 1}, where=_within_limit
    )
    .returning(usage.c.count),
    "sqlite": sqlite.insert(usage)
    .values(_first_use)
    .on_conflict_do_update(
        index_elements=_usage_pk, set_={"count": usage.c.count + 1}, where=_within_limit
    )
    .returning(usage.c.count),
}
USE_UNLIMITED: Final[dict[str, Executable]] = {
    "postgresql": postgresql.insert(usage)
    .values(_first_use)
    .on_conflict_do_update(index_elements=_usage_pk, set_={"count": usage.c.count + 1}),
    "sqlite": sqlite.insert(usage)
    .values(_first_use)
    .on_conflict_do_update(index_elements=_usage_pk, set_={"count": usage.c.count + 1}),
    "mysql": mysql.insert(usage)
    .values(_first_use)
    .on_duplicate_key_update(count=usage.c.count + 1),
}
USE_LIMITED_MYSQL_UPDATE: Final = (
    update(usage).where(_usage_key, _within_limit).values(count=usage.c.count + 1)
)
USE_LIMITED_MYSQL_FIRST: Final = insert(usage).values(_first_use)

#: Rollback: the ledger row, then coupon and campaign in one locking read.
LOCK_LEDGER: Final = (
    select(ledger).where(ledger.c.id == bindparam("b_id")).with_for_update(key_share=True)
)
LOCK_COUPON_AND_CAMPAIGN: Final = (
    select(coupons.c.id, campaigns.c.id.label("campaign_id"))
    .join_from(coupons, campaigns, coupons.c.campaign_id == campaigns.c.id)
    .where(coupons.c.id == bindparam("b_coupon_id"))
    .with_for_update(key_share=True)
)
FLIP_TO_ROLLED_BACK: Final = (
    update(ledger)
    .where(ledger.c.id == bindparam("b_id"), ledger.c.status == REDEEMED)
    .values(status=ROLLED_BACK, active_order_key=None, rolled_back_at=bindparam("b_now"))
)
GIVE_BACK_MYSQL: Final = (
    update(coupons)
    .where(
        coupons.c.id == bindparam("b_coupon_id"),
        campaigns.c.id == coupons.c.campaign_id,
    )
    .values(
        {
            coupons.c.use_count: func.greatest(coupons.c.use_count - 1, 0),
            campaigns.c.redemption_count: func.greatest(campaigns.c.redemption_count - 1, 0),
        }
    )
)
GIVE_BACK_CODE_USE: Final = (
    update(coupons)
    .where(coupons.c.id == bindparam("b_coupon_id"), coupons.c.use_count > 0)
    .values(use_count=coupons.c.use_count - 1)
)
GIVE_BACK_CAMPAIGN_USE: Final = (
    update(campaigns)
    .where(campaigns.c.id == bindparam("b_campaign_id"), campaigns.c.redemption_count > 0)
    .values(redemption_count=campaigns.c.redemption_count - 1)
)
GIVE_BACK_CUSTOMER_USE: Final = (
    update(usage).where(_usage_key, usage.c.count > 0).values(count=usage.c.count - 1)
)

READ_LEDGER: Final = select(ledger).where(ledger.c.id == bindparam("b_id"))


def _dialect(conn: Connection) -> str:
    name = conn.dialect.name
    return "mysql" if name == "mariadb" else name


def _rowcount(result: Any) -> int:
    """Rows a DML statement matched (SQLAlchemy's MySQL dialect asks for found rows)."""
    return int(cast(CursorResult[Any], result).rowcount)


def _is_active_order_violation(exc: IntegrityError) -> bool:
    text = str(exc.orig)
    return "uq_redemptions_active_order" in text or "redemptions.active_order_key" in text


# --------------------------------------------------------------------------- redeem


def redeem_in_transaction(
    *,
    code: str,
    customer_id: str,
    order_id: str,
    order_total: Decimal,
    now: dt.datetime,
) -> RedemptionView:
    """The body of :func:`redeem`; call it only inside :func:`coupons.db.transaction`.

    Exposed so a caller can add its own writes to the same transaction (the idempotency
    layer stores the response beside the redemption; the order-event consumer its message
    id). The statements and why they keep the caps exact are in the module docstring.
    """
    check_money("order_total", order_total)
    key = lookup_key(code)
    if key is None:
        raise coupon_not_found_in_body()
    conn = db.session.connection()
    dialect = _dialect(conn)
    found = conn.execute(LOCK_CODE, {"b_code": key}).first()
    if found is None:
        raise coupon_not_found_in_body()
    refused = refusal(cast(CampaignRules, found), order_total, now)
    if refused is not None:
        raise refused.exception()
    coupon_id, campaign_id, limit = found.id, found.campaign_id, found.per_customer_limit
    values: dict[str, Any] = {
        "coupon_id": coupon_id,
        "campaign_id": campaign_id,
        "code": key,
        "customer_id": customer_id,
        "order_id": order_id,
        "active_order_key": order_id,
        "order_total": order_total,
        "discount_amount": compute_discount(found.discount_type, found.discount_value, order_total),
        "currency": found.currency,
        "status": REDEEMED,
        "redeemed_at": now,
        "rolled_back_at": None,
    }
    try:
        inserted = cast(CursorResult[Any], conn.execute(INSERT_LEDGER, values))
    except IntegrityError as exc:
        if _is_active_order_violation(exc):
            raise already_redeemed(order_id) from None
        raise
    (redemption_id,) = inserted.inserted_primary_key or (None,)
    if redemption_id is None:  # pragma: no cover
        raise RuntimeError("the database returned no id for the new redemption")

    ids = {"b_coupon_id": coupon_id, "b_campaign_id": campaign_id}
    if dialect == "mysql":
        if _rowcount(conn.execute(TAKE_USES_MYSQL, ids)) != 2:
            _raise_which_cap(conn, coupon_id)
    else:
        if _rowcount(conn.execute(TAKE_CODE_USE, ids)) == 0:
            raise exhausted("the code has no uses left")
        if _rowcount(conn.execute(TAKE_CAMPAIGN_USE, ids)) == 0:
            raise exhausted("the campaign has no redemptions left")

    who = {"b_campaign_id": campaign_id, "b_customer_id": customer_id}
    if limit is None:
        conn.execute(USE_UNLIMITED[dialect], who)
    elif dialect != "mysql":
        if conn.execute(USE_LIMITED[dialect], {**who, "b_limit": limit}).first() is None:
            raise customer_limit(limit)
    elif _rowcount(conn.execute(USE_LIMITED_MYSQL_UPDATE, {**who, "b_limit": limit})) == 0:
        try:
            conn.execute(USE_LIMITED_MYSQL_FIRST, who)
        except IntegrityError:
            raise customer_limit(limit) from None

    del values["active_order_key"]
    return RedemptionView(id=int(redemption_id), **values)


def _raise_which_cap(conn: Connection, coupon_id: int) -> None:
    """After the combined UPDATE matched fewer than two rows: say which cap was reached.

    The rows are locked by this transaction, so this read sees what the UPDATE saw.
    """
    row = conn.execute(
        select(_code_left.label("code_left")).where(coupons.c.id == coupon_id)
    ).scalar_one()
    if not row:
        raise exhausted("the code has no uses left")
    raise exhausted("the campaign has no redemptions left")


def redeem(
    *,
    code: str,
    customer_id: str,
    order_id: str,
    order_total: Decimal,
    now: dt.datetime | None = None,
) -> RedemptionView:
    """Redeem ``code`` for one order, atomically, or raise the reason it cannot be.

    422 (:class:`~coupons.errors.Unprocessable`): ``coupon_not_found``, ``invalid_amount``,
    ``campaign_inactive``, ``coupon_not_yet_valid``, ``coupon_expired``,
    ``order_total_below_minimum``. 409 (:class:`~coupons.errors.Conflict`):
    ``coupon_exhausted`` (code or campaign cap reached), ``customer_limit_reached``,
    ``already_redeemed``. Nothing is written on refusal.
    """
    check_money("order_total", order_total)  # before the transaction: no lock held for it
    when = now or utcnow()
    return transaction(
        lambda: redeem_in_transaction(
            code=code,
            customer_id=customer_id,
            order_id=order_id,
            order_total=order_total,
            now=when,
        )
    )


# --------------------------------------------------------------------------- rollback


def rollback_in_transaction(redemption_id: int, *, now: dt.datetime) -> RedemptionView:
    """The body of :func:`rollback_redemption`; call it only inside ``transaction()``.

    Locks the ledger row, then its coupon and campaign (see the module docstring). Every
    statement is a locking one, so no InnoDB snapshot is opened, and the answer is built
    from the locked read: the latest committed row, plus this rollback's own change.
    """
    conn = db.session.connection()
    row = conn.execute(LOCK_LEDGER, {"b_id": redemption_id}).first()
    if row is None:
        raise redemption_not_found(redemption_id)
    ids = {
        "b_coupon_id": row.coupon_id,
        "b_campaign_id": row.campaign_id,
        "b_customer_id": row.customer_id,
    }
    conn.execute(LOCK_COUPON_AND_CAMPAIGN, ids).all()
    view = RedemptionView.of(row)
    # An UPDATE reads the latest committed row on InnoDB and re-checks it after the lock on
    # PostgreSQL, so of concurrent rollbacks exactly one flips it and restores the counts.
    if _rowcount(conn.execute(FLIP_TO_ROLLED_BACK, {"b_id": redemption_id, "b_now": now})):
        if _dialect(conn) == "mysql":
            conn.execute(GIVE_BACK_MYSQL, ids)
        else:
            conn.execute(GIVE_BACK_CODE_USE, ids)
            conn.execute(GIVE_BACK_CAMPAIGN_USE, ids)
        conn.execute(GIVE_BACK_CUSTOMER_USE, ids)
        view = _rolled_back(view, now)
    return view


def _rolled_back(view: RedemptionView, now: dt.datetime) -> RedemptionView:
    """``view`` as the flip left it (stored times are UTC, microsecond-precise)."""
    return dataclasses.replace(view, status=ROLLED_BACK, rolled_back_at=now.astimezone(dt.UTC))


def rollback_redemption(redemption_id: int, *, now: dt.datetime | None = None) -> RedemptionView:
    """Roll a redemption back and restore the counts it took; idempotent.

    Rolling back a redemption that is already rolled back changes nothing and returns it as
    it is. :class:`~coupons.errors.NotFound` (``redemption_not_found``) for an unknown id.
    """
    when = now or utcnow()
    return transaction(lambda: rollback_in_transaction(redemption_id, now=when))


def get_redemption(redemption_id: int) -> RedemptionView:
    """One ledger row; :class:`~coupons.errors.NotFound` (``redemption_not_found``) otherwise."""

    def work() -> RedemptionView:
        row = db.session.connection().execute(READ_LEDGER, {"b_id": redemption_id}).first()
        if row is None:
            raise redemption_not_found(redemption_id)
        return RedemptionView.of(row)

    return read(work)
