"""Reading a code: ``GET /coupons/{code}`` and "would this code apply to this order now?".

Both are one Core statement built at import (a join of the coupon with its campaign, and
for validation the customer's usage through an outer join), run in a read transaction that
ends before the caller serializes anything (:func:`coupons.db.read_core`: on the connection
itself, without the session's machinery). The answers are advisory: a concurrent redemption
may take the last use before the caller redeems; only
:func:`coupons.services.redemptions.redeem` decides, atomically.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from decimal import Decimal
from typing import Any, Final, cast

from sqlalchemy import and_, bindparam, select
from sqlalchemy.engine import Connection

from coupons.db import read_core
from coupons.errors import Conflict, Unprocessable
from coupons.models import utcnow
from coupons.services.redemptions import campaigns, coupons, usage
from coupons.services.rules import (
    COUPON_NOT_FOUND_MESSAGE,
    CampaignRules,
    Refusal,
    check_money,
    compute_discount,
    coupon_not_found_in_url,
    customer_limit,
    lookup_key,
    refusal,
)
from coupons.services.views import COUPON_COLUMNS, CampaignView, CouponView, ValidationResult

COUPON_FIELDS: Final = COUPON_COLUMNS
CAMPAIGN_FIELDS: Final = tuple(f.name for f in dataclasses.fields(CampaignView))

_join = coupons.join(campaigns, coupons.c.campaign_id == campaigns.c.id)

#: The coupon and its whole campaign, by normalized code.
READ_COUPON: Final = (
    select(
        *(coupons.c[name] for name in COUPON_FIELDS),
        *(campaigns.c[name].label(f"campaign_{name}") for name in CAMPAIGN_FIELDS),
    )
    .select_from(_join)
    .where(coupons.c.code == bindparam("b_code"))
)

#: What validation needs: rules, caps, and the customer's usage (NULL when none yet).
READ_FOR_VALIDATION: Final = (
    select(
        coupons.c.code,
        coupons.c.max_uses,
        coupons.c.use_count,
        campaigns.c.id,
        campaigns.c.discount_type,
        campaigns.c.discount_value,
        campaigns.c.currency,
        campaigns.c.starts_at,
        campaigns.c.ends_at,
        campaigns.c.max_redemptions,
        campaigns.c.redemption_count,
        campaigns.c.per_customer_limit,
        campaigns.c.min_order_total,
        campaigns.c.is_active,
        usage.c.count.label("used"),
    )
    .select_from(
        _join.outerjoin(
            usage,
            and_(
                usage.c.campaign_id == campaigns.c.id,
                usage.c.customer_id == bindparam("b_customer_id"),
            ),
        )
    )
    .where(coupons.c.code == bindparam("b_code"))
)


def coupon_view(row: Any) -> CouponView:
    """A :class:`CouponView` from a row of :data:`READ_COUPON`."""
    n = len(COUPON_FIELDS)
    campaign = CampaignView(**dict(zip(CAMPAIGN_FIELDS, row[n:], strict=True)))
    return CouponView(**dict(zip(COUPON_FIELDS, row[:n], strict=True)), campaign=campaign)


def get_coupon(code: str) -> CouponView:
    """The coupon with its campaign; the lookup is case-insensitive through normalization.

    404 ``coupon_not_found`` when no stored code matches (a malformed one never does).
    """
    key = lookup_key(code)
    if key is None:
        raise coupon_not_found_in_url()

    def work(connection: Connection) -> CouponView:
        row = connection.execute(READ_COUPON, {"b_code": key}).first()
        if row is None:
            raise coupon_not_found_in_url()
        return coupon_view(row)

    return read_core(work)


def validate_coupon(
    code: str, *, customer_id: str, order_total: Decimal, now: dt.datetime | None = None
) -> ValidationResult:
    """Would redeeming ``code`` now succeed, and for what discount? Reads only, writes nothing.

    ``valid: false`` carries the error code a redemption would fail with now (an unknown
    code: ``coupon_not_found``).
    """
    now = now or utcnow()
    check_money("order_total", order_total)
    key = lookup_key(code)

    def invalid(refused: Refusal, campaign_id: int | None = None) -> ValidationResult:
        return ValidationResult(
            valid=False,
            code=key or code,
            order_total=order_total,
            campaign_id=campaign_id,
            reason=refused.code,
            message=refused.message,
        )

    if key is None:
        return invalid(Refusal(Unprocessable, "coupon_not_found", COUPON_NOT_FOUND_MESSAGE))

    def work(connection: Connection) -> Any:
        params = {"b_code": key, "b_customer_id": customer_id}
        return connection.execute(READ_FOR_VALIDATION, params).first()

    row = read_core(work)  # the decision below needs no connection
    if row is None:
        return invalid(Refusal(Unprocessable, "coupon_not_found", COUPON_NOT_FOUND_MESSAGE))
    refused = refusal(cast(CampaignRules, row), order_total, now)
    if refused is None and row.max_uses is not None and row.use_count >= row.max_uses:
        refused = Refusal(Conflict, "coupon_exhausted", "the code has no uses left")
    if (
        refused is None
        and row.max_redemptions is not None
        and row.redemption_count >= row.max_redemptions
    ):
        refused = Refusal(Conflict, "coupon_exhausted", "the campaign has no redemptions left")
    limit = row.per_customer_limit
    if refused is None and limit is not None and (row.used or 0) >= limit:
        exc = customer_limit(limit)
        refused = Refusal(Conflict, exc.code, exc.message)
    if refused is not None:
        return invalid(refused, row.id)
    return ValidationResult(
        valid=True,
        code=row.code,
        order_total=order_total,
        campaign_id=row.id,
        discount=compute_discount(row.discount_type, row.discount_value, order_total),
        currency=row.currency,
    )
