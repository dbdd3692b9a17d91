"""Campaigns, codes, validation, redemption and rollback: the coupon service.

This is the post-mortem's ``app/services/coupon.py`` done right: it uses only the scoped
``db.session`` (never a ``Session(bind=db.engine)`` of its own, never ``close()``), every
write runs in one :func:`coupons.db.transaction`, and it knows nothing of Flask: callers pass
plain values and get frozen dataclasses back, built while the rows were at hand so that no
lazy load (and no second connection checkout) happens while a response is serialized.

Exact caps under concurrency
----------------------------
Counters are never read, incremented in Python and written back (a lost update under
concurrency). Each counter is changed by one *conditional* ``UPDATE`` whose ``WHERE`` clause
carries the cap, and the statement's row count says whether it applied:

* MariaDB/MySQL (InnoDB, REPEATABLE READ): an ``UPDATE`` is a locking read; it locks the row
  and evaluates ``use_count < max_uses`` against the latest *committed* version, not the
  transaction's snapshot, so a waiter sees the increment of the transaction it waited for.
* PostgreSQL (READ COMMITTED): an ``UPDATE`` that waited for a row lock re-evaluates its
  ``WHERE`` clause on the newly committed row version (EvalPlanQual) before applying.
* SQLite: :func:`~coupons.db.transaction` opens ``BEGIN IMMEDIATE``, so writers are serialized.

Redemption first reads the coupon and its campaign with a locking read (``FOR UPDATE``; on
PostgreSQL ``FOR NO KEY UPDATE``), so it validates the latest committed campaign and opens
no InnoDB snapshot (MariaDB 11.6+ with ``innodb_snapshot_isolation=ON`` fails a write to a
row changed after the snapshot with error 1020 instead of waiting). Coupon and campaign are
always locked in that order (redemption: then the new ledger row and the customer usage;
rollback: after the ledger row it restores) and exclusively from the start, never upgraded
from a shared lock, so deadlocks are rare; those that happen are retried by ``transaction()``.
The ledger's unique key on (campaign_id, active_order_key) makes one order redeem a campaign
at most once while its redemption stands. Any refusal raises a :class:`ServiceError` inside
the transaction, which rolls back every statement already made, so a refused redemption
writes nothing.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Final, TypeVar

from sqlalchemy import Insert, insert, or_, select, update
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import CursorResult
from sqlalchemy.exc import IntegrityError

from coupons.db import db, transaction
from coupons.errors import Conflict, NotFound, ServiceError, Unprocessable
from coupons.models import (
    Campaign,
    Coupon,
    CustomerUsage,
    DiscountType,
    Redemption,
    RedemptionStatus,
    utcnow,
)

T = TypeVar("T")

CENT: Final = Decimal("0.01")
MAX_MONEY: Final = Decimal("9999999999.99")  # Numeric(12, 2)
CODE_PATTERN: Final = re.compile(r"^[A-Z0-9-]{3,64}$")
#: No 0/O, 1/I/L: codes are read aloud and typed from paper.
CODE_ALPHABET: Final = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
RANDOM_CODE_GROUPS: Final = 3
RANDOM_CODE_GROUP_LEN: Final = 4
_CODE_DRAWS: Final = 5

CAMPAIGN_FIELDS: Final = frozenset(
    {
        "name",
        "discount_type",
        "discount_value",
        "currency",
        "starts_at",
        "ends_at",
        "max_redemptions",
        "per_customer_limit",
        "min_order_total",
        "is_active",
    }
)


# --------------------------------------------------------------------------- views


@dataclass(frozen=True, kw_only=True)
class CampaignView:
    """A campaign as read; attribute names match :class:`Campaign` so one schema dumps both."""

    id: int
    name: str
    discount_type: str
    discount_value: Decimal
    currency: str
    starts_at: dt.datetime | None
    ends_at: dt.datetime | None
    max_redemptions: int | None
    redemption_count: int
    per_customer_limit: int | None
    min_order_total: Decimal | None
    is_active: bool
    created_at: dt.datetime
    updated_at: dt.datetime

    @classmethod
    def of(cls, row: Campaign) -> CampaignView:
        return cls(
            id=row.id,
            name=row.name,
            discount_type=row.discount_type,
            discount_value=row.discount_value,
            currency=row.currency,
            starts_at=row.starts_at,
            ends_at=row.ends_at,
            max_redemptions=row.max_redemptions,
            redemption_count=row.redemption_count,
            per_customer_limit=row.per_customer_limit,
            min_order_total=row.min_order_total,
            is_active=row.is_active,
            created_at=row.created_at,
            updated_at=row.updated_at,
        )


@dataclass(frozen=True, kw_only=True)
class CouponView:
    """A code with its campaign; names match :class:`Coupon` (``campaign`` included)."""

    id: int
    code: str
    campaign_id: int
    max_uses: int | None
    use_count: int
    created_at: dt.datetime
    campaign: CampaignView

    @classmethod
    def of(cls, row: Coupon, campaign: Campaign) -> CouponView:
        return cls(
            id=row.id,
            code=row.code,
            campaign_id=row.campaign_id,
            max_uses=row.max_uses,
            use_count=row.use_count,
            created_at=row.created_at,
            campaign=CampaignView.of(campaign),
        )


@dataclass(frozen=True, kw_only=True)
class RedemptionView:
    """One ledger row; names match :class:`Redemption`."""

    id: int
    coupon_id: int
    campaign_id: int
    code: str
    customer_id: str
    order_id: str
    order_total: Decimal
    discount_amount: Decimal
    currency: str
    status: str
    redeemed_at: dt.datetime
    rolled_back_at: dt.datetime | None

    @classmethod
    def of(cls, row: Redemption) -> RedemptionView:
        return cls(
            id=row.id,
            coupon_id=row.coupon_id,
            campaign_id=row.campaign_id,
            code=row.code,
            customer_id=row.customer_id,
            order_id=row.order_id,
            order_total=row.order_total,
            discount_amount=row.discount_amount,
            currency=row.currency,
            status=row.status,
            redeemed_at=row.redeemed_at,
            rolled_back_at=row.rolled_back_at,
        )


@dataclass(frozen=True, kw_only=True)
class ValidationResult:
    """What :func:`validate_coupon` found: the discount, or the precise reason there is none.

    ``reason`` is the error code a redemption with the same input would fail with now.
    """

    valid: bool
    code: str
    order_total: Decimal
    campaign_id: int | None = None
    discount: Decimal | None = None
    currency: str | None = None
    reason: str | None = None
    message: str | None = None


@dataclass(frozen=True)
class _Refusal:
    """Why a coupon cannot be used, as both a ``validate`` answer and a raisable error."""

    error: type[ServiceError]
    code: str
    message: str

    def exception(self) -> ServiceError:
        return self.error(self.message, code=self.code)


# --------------------------------------------------------------------------- helpers


def normalize_code(raw: str) -> str:
    """The stored form of a code: stripped and upper-cased; refuse malformed codes.

    Raises :class:`Unprocessable` (``invalid_code``) unless the result is 3..64 characters
    of A-Z, 0-9 and '-'.
    """
    code = raw.strip().upper()
    if not CODE_PATTERN.fullmatch(code):
        raise Unprocessable("a code is 3 to 64 characters of A-Z, 0-9 and '-'", code="invalid_code")
    return code


def _lookup_key(raw: str) -> str | None:
    """The normalized form to look ``raw`` up by, or None when no stored code can match."""
    code = raw.strip().upper()
    return code if CODE_PATTERN.fullmatch(code) else None


def random_code() -> str:
    """A fresh code like ``K7QM-9XTR-H2WD``: 12 symbols of a 31-letter alphabet (~59 bits)."""
    groups = (
        "".join(secrets.choice(CODE_ALPHABET) for _ in range(RANDOM_CODE_GROUP_LEN))
        for _ in range(RANDOM_CODE_GROUPS)
    )
    return "-".join(groups)


def compute_discount(discount_type: str, value: Decimal, order_total: Decimal) -> Decimal:
    """The discount on ``order_total``, in cents, never more than the order total.

    Percent: ``order_total * value / 100`` rounded half up to the cent; fixed: ``value``.
    """
    if discount_type == DiscountType.PERCENT:
        amount = (order_total * value / Decimal(100)).quantize(CENT, rounding=ROUND_HALF_UP)
    else:
        amount = value.quantize(CENT, rounding=ROUND_HALF_UP)
    return min(amount, order_total)


def _rowcount(result: Any) -> int:
    """Rows an UPDATE matched (SQLAlchemy's MySQL dialect asks for found, not changed, rows)."""
    assert isinstance(result, CursorResult)
    return int(result.rowcount)


def _read(fn: Callable[[], T]) -> T:
    """Run read-only ``fn`` in a fresh transaction and end it at once.

    Ending the read transaction returns the connection to the pool before the caller
    serializes anything, and starting fresh means MariaDB's REPEATABLE READ snapshot is not
    one an earlier statement of the request opened.
    """
    session = db.session()
    if session.new or session.dirty or session.deleted:
        raise RuntimeError("read started with unflushed changes pending in db.session")
    session.rollback()
    try:
        return fn()
    finally:
        session.rollback()


def _check_money(name: str, value: Decimal, *, allow_zero: bool = False) -> None:
    if not value.is_finite() or value < 0 or (value == 0 and not allow_zero):
        raise Unprocessable(f"{name} must be a positive amount", code="invalid_amount")
    if value > MAX_MONEY:
        raise Unprocessable(f"{name} must be at most {MAX_MONEY}", code="invalid_amount")
    if value != value.quantize(CENT):
        raise Unprocessable(f"{name} has more than 2 decimal places", code="invalid_amount")


def _check_campaign(values: Mapping[str, Any]) -> None:
    """Rules a whole campaign obeys; checked on create and on the merged state of a PATCH."""
    if values["discount_type"] not in (DiscountType.PERCENT, DiscountType.FIXED):
        raise Unprocessable("discount_type must be 'percent' or 'fixed'", code="invalid_discount")
    _check_money("discount_value", values["discount_value"])
    if values["discount_type"] == DiscountType.PERCENT and values["discount_value"] > 100:
        raise Unprocessable("a percent discount cannot exceed 100", code="invalid_discount")
    if not re.fullmatch(r"[A-Z]{3}", values["currency"]):
        raise Unprocessable("currency must be an ISO 4217 code", code="invalid_currency")
    starts_at, ends_at = values["starts_at"], values["ends_at"]
    if starts_at is not None and ends_at is not None and ends_at <= starts_at:
        raise Unprocessable("ends_at must be after starts_at", code="invalid_window")
    for name in ("max_redemptions", "per_customer_limit"):
        if values[name] is not None and values[name] < 1:
            raise Unprocessable(f"{name} must be at least 1", code="invalid_limit")
    if values["min_order_total"] is not None:
        _check_money("min_order_total", values["min_order_total"], allow_zero=True)
    if not values["name"].strip():
        raise Unprocessable("name must not be blank", code="invalid_name")


def _refusal(campaign: Campaign, order_total: Decimal, now: dt.datetime) -> _Refusal | None:
    """The first rule of ``campaign`` that ``order_total`` at ``now`` breaks, if any.

    Caps are not checked here: reads cannot decide them; redemption's UPDATEs do.
    """
    if not campaign.is_active:
        return _Refusal(Unprocessable, "campaign_inactive", "the coupon's campaign is not active")
    if campaign.starts_at is not None and now < campaign.starts_at:
        return _Refusal(
            Unprocessable,
            "coupon_not_yet_valid",
            f"the coupon is valid from {campaign.starts_at.isoformat()}",
        )
    if campaign.ends_at is not None and now >= campaign.ends_at:
        return _Refusal(
            Unprocessable, "coupon_expired", f"the coupon expired at {campaign.ends_at.isoformat()}"
        )
    if campaign.min_order_total is not None and order_total < campaign.min_order_total:
        return _Refusal(
            Unprocessable,
            "order_total_below_minimum",
            f"the order total must be at least {campaign.min_order_total} {campaign.currency}",
        )
    return None


def _coupon_not_found() -> Unprocessable:
    return Unprocessable("no coupon has this code", code="coupon_not_found")


def _exhausted(message: str) -> Conflict:
    return Conflict(message, code="coupon_exhausted")


def _customer_limit(limit: int | None) -> Conflict:
    return Conflict(
        f"this customer has used this campaign the most times allowed ({limit})",
        code="customer_limit_reached",
    )


# --------------------------------------------------------------------------- campaigns


def create_campaign(
    *,
    name: str,
    discount_type: str,
    discount_value: Decimal,
    currency: str,
    starts_at: dt.datetime | None = None,
    ends_at: dt.datetime | None = None,
    max_redemptions: int | None = None,
    per_customer_limit: int | None = None,
    min_order_total: Decimal | None = None,
    is_active: bool = True,
) -> CampaignView:
    """Create a campaign; raise :class:`Unprocessable` when its values contradict each other."""
    values: dict[str, Any] = {
        "name": name.strip(),
        "discount_type": discount_type,
        "discount_value": discount_value,
        "currency": currency.strip().upper(),
        "starts_at": starts_at,
        "ends_at": ends_at,
        "max_redemptions": max_redemptions,
        "per_customer_limit": per_customer_limit,
        "min_order_total": min_order_total,
        "is_active": is_active,
    }
    _check_campaign(values)

    def work() -> CampaignView:
        campaign = Campaign(redemption_count=0, **values)
        db.session.add(campaign)
        db.session.flush()
        return CampaignView.of(campaign)

    return transaction(work)


def get_campaign(campaign_id: int) -> CampaignView:
    """The campaign; :class:`NotFound` (``campaign_not_found``) otherwise."""

    def work() -> CampaignView:
        campaign = db.session.get(Campaign, campaign_id)
        if campaign is None:
            raise NotFound(f"no campaign has id {campaign_id}", code="campaign_not_found")
        return CampaignView.of(campaign)

    return _read(work)


def update_campaign(campaign_id: int, changes: Mapping[str, Any]) -> CampaignView:
    """Apply a partial update; the merged campaign must satisfy every campaign rule.

    The row is read with ``SELECT ... FOR UPDATE`` (the latest committed version, locked
    until commit), so ``max_redemptions`` is compared with a ``redemption_count`` no
    redemption can raise meanwhile: redemptions' conditional UPDATE on the campaign row
    waits for this lock and then checks against the new cap. Lowering the cap below the
    count is a :class:`Conflict` (``max_redemptions_below_count``).
    """
    unknown = set(changes) - CAMPAIGN_FIELDS
    if unknown:
        raise Unprocessable(f"unknown fields: {', '.join(sorted(unknown))}", code="invalid_fields")
    cleaned = dict(changes)
    if isinstance(cleaned.get("name"), str):
        cleaned["name"] = cleaned["name"].strip()
    if isinstance(cleaned.get("currency"), str):
        cleaned["currency"] = cleaned["currency"].strip().upper()
    for name in ("name", "discount_type", "discount_value", "currency", "is_active"):
        if name in cleaned and cleaned[name] is None:
            raise Unprocessable(f"{name} cannot be null", code="invalid_fields")

    def work() -> CampaignView:
        campaign = db.session.execute(
            select(Campaign)
            .where(Campaign.id == campaign_id)
            .with_for_update(key_share=True)
            .execution_options(populate_existing=True)
        ).scalar_one_or_none()
        if campaign is None:
            raise NotFound(f"no campaign has id {campaign_id}", code="campaign_not_found")
        merged = {name: getattr(campaign, name) for name in CAMPAIGN_FIELDS}
        merged.update(cleaned)
        _check_campaign(merged)
        new_cap = merged["max_redemptions"]
        if new_cap is not None and new_cap < campaign.redemption_count:
            raise Conflict(
                f"max_redemptions cannot go below the {campaign.redemption_count} "
                "redemptions already made",
                code="max_redemptions_below_count",
            )
        for name, value in cleaned.items():
            setattr(campaign, name, value)
        db.session.flush()
        return CampaignView.of(campaign)

    return transaction(work)


# --------------------------------------------------------------------------- codes


def create_code(
    campaign_id: int, *, code: str | None = None, max_uses: int | None = None
) -> CouponView:
    """Add one code to a campaign: ``code`` normalized, or a random one drawn with ``secrets``.

    An explicit code that exists already (in any campaign) is a :class:`Conflict`
    (``code_taken``); a random code that collides is drawn again. The existence check
    answers the common case; the unique index decides races.
    """
    if max_uses is not None and max_uses < 1:
        raise Unprocessable("max_uses must be at least 1", code="invalid_limit")
    explicit = normalize_code(code) if code is not None else None

    def work(candidate: str) -> CouponView:
        campaign = db.session.get(Campaign, campaign_id)
        if campaign is None:
            raise NotFound(f"no campaign has id {campaign_id}", code="campaign_not_found")
        taken = db.session.execute(select(Coupon.id).where(Coupon.code == candidate)).first()
        if taken is not None:
            raise Conflict(f"the code {candidate} is taken", code="code_taken")
        coupon = Coupon(campaign_id=campaign_id, code=candidate, max_uses=max_uses, use_count=0)
        db.session.add(coupon)
        db.session.flush()
        return CouponView.of(coupon, campaign)

    for _ in range(_CODE_DRAWS):
        candidate = explicit or random_code()
        try:
            return transaction(functools.partial(work, candidate))
        except Conflict:
            if explicit is not None:
                raise
        except IntegrityError as exc:
            message = str(exc.orig).lower()
            if "duplicate" not in message and "unique" not in message:
                raise
            if explicit is not None:
                raise Conflict(f"the code {candidate} is taken", code="code_taken") from None
    raise Conflict("could not draw a free code; try again", code="code_taken")


def _coupon_with_campaign(key: str | None) -> tuple[Coupon, Campaign] | None:
    """The coupon of a normalized code with its campaign, in one statement (plain read)."""
    if key is None:
        return None
    row = db.session.execute(
        select(Coupon, Campaign)
        .join(Campaign, Coupon.campaign_id == Campaign.id)
        .where(Coupon.code == key)
    ).one_or_none()
    return None if row is None else (row[0], row[1])


def get_coupon(code: str) -> CouponView:
    """The coupon with its campaign; the lookup is case-insensitive through normalization."""
    key = _lookup_key(code)

    def work() -> CouponView:
        row = _coupon_with_campaign(key)
        if row is None:
            raise NotFound("no coupon has this code", code="coupon_not_found")
        return CouponView.of(row[0], row[1])

    return _read(work)


def validate_coupon(
    code: str, *, customer_id: str, order_total: Decimal, now: dt.datetime | None = None
) -> ValidationResult:
    """Would redeeming ``code`` now succeed, and for what discount? Reads only, writes nothing.

    The answer is advisory: a concurrent redemption may take the last use before this
    caller redeems; only :func:`redeem` decides, atomically.
    """
    now = now or utcnow()
    _check_money("order_total", order_total)
    key = _lookup_key(code)

    def invalid(refusal: _Refusal, campaign_id: int | None = None) -> ValidationResult:
        return ValidationResult(
            valid=False,
            code=key or code,
            order_total=order_total,
            campaign_id=campaign_id,
            reason=refusal.code,
            message=refusal.message,
        )

    def work() -> ValidationResult:
        found = _coupon_with_campaign(key)
        if found is None:
            return invalid(_Refusal(Unprocessable, "coupon_not_found", "no coupon has this code"))
        coupon, campaign = found
        refusal = _refusal(campaign, order_total, now)
        if refusal is None and coupon.max_uses is not None and coupon.use_count >= coupon.max_uses:
            refusal = _Refusal(Conflict, "coupon_exhausted", "the code has no uses left")
        if (
            refusal is None
            and campaign.max_redemptions is not None
            and campaign.redemption_count >= campaign.max_redemptions
        ):
            refusal = _Refusal(Conflict, "coupon_exhausted", "the campaign has no redemptions left")
        if refusal is None and campaign.per_customer_limit is not None:
            used = db.session.execute(
                select(CustomerUsage.count).where(
                    CustomerUsage.campaign_id == campaign.id,
                    CustomerUsage.customer_id == customer_id,
                )
            ).scalar_one_or_none()
            if (used or 0) >= campaign.per_customer_limit:
                exc = _customer_limit(campaign.per_customer_limit)
                refusal = _Refusal(Conflict, exc.code, exc.message)
        if refusal is not None:
            return invalid(refusal, campaign.id)
        return ValidationResult(
            valid=True,
            code=coupon.code,
            order_total=order_total,
            campaign_id=campaign.id,
            discount=compute_discount(campaign.discount_type, campaign.discount_value, order_total),
            currency=campaign.currency,
        )

    return _read(work)


# --------------------------------------------------------------------------- redemptions


def _usage_insert_if_missing(dialect: str, campaign_id: int, customer_id: str) -> Insert:
    """``INSERT`` the (campaign, customer) usage row at 0 unless it exists, per dialect.

    MariaDB uses ``ON DUPLICATE KEY UPDATE count = count`` rather than ``INSERT IGNORE``: it
    takes the row's exclusive lock at once instead of a shared lock to upgrade later, which
    is a classic deadlock between two waiters.
    """
    values = {"campaign_id": campaign_id, "customer_id": customer_id, "count": 0}
    table = CustomerUsage.__table__
    if dialect == "postgresql":
        return postgresql.insert(table).values(values).on_conflict_do_nothing()
    if dialect in ("mysql", "mariadb"):
        return mysql.insert(table).values(values).on_duplicate_key_update(count=table.c.count)
    if dialect == "sqlite":
        return sqlite.insert(table).values(values).on_conflict_do_nothing()
    raise RuntimeError(f"unsupported dialect {dialect}")  # pragma: no cover


def _is_active_order_violation(exc: IntegrityError) -> bool:
    text = str(exc.orig)
    return "uq_redemptions_active_order" in text or "redemptions.active_order_key" in text


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
    layer stores the response beside the redemption).

    Every statement here is a locking one (no plain SELECT), so on InnoDB no REPEATABLE READ
    snapshot is ever opened: with ``innodb_snapshot_isolation=ON`` (MariaDB 11.6+'s default)
    a write to a row changed after the snapshot fails with error 1020 instead of waiting.
    """
    _check_money("order_total", order_total)
    key = _lookup_key(code)
    if key is None:
        raise _coupon_not_found()
    session = db.session
    # Lock the coupon, then its campaign (the join's order on all three databases), reading
    # their latest committed versions: FOR UPDATE on MariaDB, FOR NO KEY UPDATE on
    # PostgreSQL (which leaves foreign-key checks of other inserts unblocked).
    found = session.execute(
        select(Coupon, Campaign)
        .join(Campaign, Coupon.campaign_id == Campaign.id)
        .where(Coupon.code == key)
        .with_for_update(key_share=True)
        .execution_options(populate_existing=True)
    ).one_or_none()
    if found is None:
        raise _coupon_not_found()
    coupon, campaign = found
    refusal = _refusal(campaign, order_total, now)
    if refusal is not None:
        raise refusal.exception()
    coupon_id, campaign_id = coupon.id, campaign.id
    per_customer_limit = campaign.per_customer_limit
    values: dict[str, Any] = {
        "coupon_id": coupon_id,
        "campaign_id": campaign_id,
        "code": key,
        "customer_id": customer_id,
        "order_id": order_id,
        "active_order_key": order_id,
        "order_total": order_total,
        "discount_amount": compute_discount(
            campaign.discount_type, campaign.discount_value, order_total
        ),
        "currency": campaign.currency,
        "status": RedemptionStatus.REDEEMED.value,
        "redeemed_at": now,
        "rolled_back_at": None,
    }
    # The ledger row first: the unique key (campaign_id, active_order_key) answers
    # already_redeemed before any cap is looked at, and a refusal below rolls it back.
    try:
        inserted = session.execute(insert(Redemption.__table__).values(values))
    except IntegrityError as exc:
        if _is_active_order_violation(exc):
            raise _already_redeemed(order_id) from None
        raise
    assert isinstance(inserted, CursorResult)
    (redemption_id,) = inserted.inserted_primary_key or (None,)
    if redemption_id is None:  # pragma: no cover
        raise RuntimeError("the database returned no id for the new redemption")

    # Conditional UPDATEs, in lock order coupon -> campaign -> customer usage. Each WHERE is
    # evaluated on the latest committed row once its lock is granted (a locking read on
    # InnoDB REPEATABLE READ, an EvalPlanQual re-check on PostgreSQL READ COMMITTED, a
    # single writer on SQLite), so two redemptions can never both take the last use: the
    # counts are exact. The locked read above already serializes redemptions of one
    # campaign; the conditions keep the counters exact on their own.
    coupon_result = session.execute(
        update(Coupon)
        .where(
            Coupon.id == coupon_id,
            or_(Coupon.max_uses.is_(None), Coupon.use_count < Coupon.max_uses),
        )
        .values(use_count=Coupon.use_count + 1)
        .execution_options(synchronize_session=False)
    )
    if _rowcount(coupon_result) == 0:
        raise _exhausted("the code has no uses left")

    campaign_result = session.execute(
        update(Campaign)
        .where(
            Campaign.id == campaign_id,
            or_(
                Campaign.max_redemptions.is_(None),
                Campaign.redemption_count < Campaign.max_redemptions,
            ),
        )
        .values(redemption_count=Campaign.redemption_count + 1)
        .execution_options(synchronize_session=False)
    )
    if _rowcount(campaign_result) == 0:
        raise _exhausted("the campaign has no redemptions left")

    dialect = session.get_bind().dialect.name
    session.execute(_usage_insert_if_missing(dialect, campaign_id, customer_id))
    # The limit comes from the campaign row this transaction holds locked: it is current.
    within_limit = (
        [CustomerUsage.count < per_customer_limit] if per_customer_limit is not None else []
    )
    usage_result = session.execute(
        update(CustomerUsage)
        .where(
            CustomerUsage.campaign_id == campaign_id,
            CustomerUsage.customer_id == customer_id,
            *within_limit,
        )
        .values(count=CustomerUsage.count + 1)
        .execution_options(synchronize_session=False)
    )
    if _rowcount(usage_result) == 0:
        raise _customer_limit(per_customer_limit)

    values.pop("active_order_key")
    return RedemptionView(id=int(redemption_id), **values)


def _already_redeemed(order_id: str) -> Conflict:
    return Conflict(
        f"order {order_id} already has a redemption in this campaign", code="already_redeemed"
    )


def redeem(
    *,
    code: str,
    customer_id: str,
    order_id: str,
    order_total: Decimal,
    now: dt.datetime | None = None,
) -> RedemptionView:
    """Redeem ``code`` for one order, atomically, or raise the reason it cannot be.

    422 (:class:`Unprocessable`): ``coupon_not_found``, ``campaign_inactive``,
    ``coupon_not_yet_valid``, ``coupon_expired``, ``order_total_below_minimum``.
    409 (:class:`Conflict`): ``coupon_exhausted`` (code or campaign cap reached),
    ``customer_limit_reached``, ``already_redeemed``. Nothing is written on refusal.
    """
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


def rollback_in_transaction(redemption_id: int, *, now: dt.datetime) -> RedemptionView:
    """The body of :func:`rollback_redemption`; call it only inside ``transaction()``.

    Locks: the ledger row, then its coupon, then its campaign, each exclusively from the
    start. On InnoDB, changing the ledger row's unique (campaign_id, active_order_key) entry
    checks its foreign key with a *shared* lock on the campaign row; two rollbacks that then
    upgrade shared to exclusive deadlock each other, hence the campaign lock up front. As in
    redemption, every statement is a locking one, so no InnoDB snapshot is ever opened.
    """
    session = db.session
    ids = session.execute(
        select(Redemption.coupon_id, Redemption.campaign_id, Redemption.customer_id)
        .where(Redemption.id == redemption_id)
        .with_for_update(key_share=True)
    ).one_or_none()
    if ids is None:
        raise NotFound(f"no redemption has id {redemption_id}", code="redemption_not_found")
    coupon_id, campaign_id, customer_id = ids
    # FOR NO KEY UPDATE on PostgreSQL (does not block foreign-key checks), FOR UPDATE elsewhere.
    session.execute(
        select(Coupon.id).where(Coupon.id == coupon_id).with_for_update(key_share=True)
    ).all()
    session.execute(
        select(Campaign.id).where(Campaign.id == campaign_id).with_for_update(key_share=True)
    ).all()
    # The status flip is the arbiter: of concurrent rollbacks exactly one matches
    # status='redeemed' (an UPDATE reads the latest committed row on InnoDB and re-checks it
    # after the lock on PostgreSQL), so the counts are restored once. active_order_key=NULL
    # frees the order for a new redemption.
    flipped = session.execute(
        update(Redemption)
        .where(
            Redemption.id == redemption_id,
            Redemption.status == RedemptionStatus.REDEEMED.value,
        )
        .values(
            status=RedemptionStatus.ROLLED_BACK.value, active_order_key=None, rolled_back_at=now
        )
        .execution_options(synchronize_session=False)
    )
    if _rowcount(flipped) == 1:
        session.execute(
            update(Coupon)
            .where(Coupon.id == coupon_id, Coupon.use_count > 0)
            .values(use_count=Coupon.use_count - 1)
            .execution_options(synchronize_session=False)
        )
        session.execute(
            update(Campaign)
            .where(Campaign.id == campaign_id, Campaign.redemption_count > 0)
            .values(redemption_count=Campaign.redemption_count - 1)
            .execution_options(synchronize_session=False)
        )
        session.execute(
            update(CustomerUsage)
            .where(
                CustomerUsage.campaign_id == campaign_id,
                CustomerUsage.customer_id == customer_id,
                CustomerUsage.count > 0,
            )
            .values(count=CustomerUsage.count - 1)
            .execution_options(synchronize_session=False)
        )
    # A locking read: on InnoDB REPEATABLE READ a plain SELECT would answer from the snapshot
    # taken above, before a concurrent rollback this one waited for had committed.
    row = session.execute(
        select(Redemption)
        .where(Redemption.id == redemption_id)
        .with_for_update(key_share=True)
        .execution_options(populate_existing=True)
    ).scalar_one()
    return RedemptionView.of(row)


def rollback_redemption(redemption_id: int, *, now: dt.datetime | None = None) -> RedemptionView:
    """Roll a redemption back and restore the counts it took; idempotent.

    Rolling back a redemption that is already rolled back changes nothing and returns it as
    it is. :class:`NotFound` (``redemption_not_found``) for an unknown id.
    """
    when = now or utcnow()
    return transaction(lambda: rollback_in_transaction(redemption_id, now=when))


def get_redemption(redemption_id: int) -> RedemptionView:
    """One ledger row; :class:`NotFound` (``redemption_not_found``) otherwise."""

    def work() -> RedemptionView:
        row = db.session.get(Redemption, redemption_id)
        if row is None:
            raise NotFound(f"no redemption has id {redemption_id}", code="redemption_not_found")
        return RedemptionView.of(row)

    return _read(work)
