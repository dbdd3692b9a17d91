"""Campaigns and their codes: create, read, change a campaign; add one code to it.

Writes run in one :func:`coupons.db.transaction` each, reads in :func:`coupons.db.read`;
callers pass plain values and get frozen views back. Bulk code generation is
:mod:`coupons.services.codegen`; lists are :mod:`coupons.services.listing`.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, Final

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from coupons.db import db, read, transaction
from coupons.errors import Conflict, Unprocessable
from coupons.models import Campaign, Coupon
from coupons.services.rules import (
    campaign_not_found,
    check_campaign,
    check_max_uses,
    normalize_code,
    random_code,
)
from coupons.services.views import CampaignView, CouponView

#: Random codes drawn before giving up on a collision streak.
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
    """Create a campaign; :class:`~coupons.errors.Unprocessable` if its values contradict."""
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
    check_campaign(values)

    def work() -> CampaignView:
        campaign = Campaign(redemption_count=0, **values)
        db.session.add(campaign)
        db.session.flush()
        return CampaignView.of(campaign)

    return transaction(work)


def get_campaign(campaign_id: int) -> CampaignView:
    """The campaign; :class:`~coupons.errors.NotFound` (``campaign_not_found``) otherwise."""

    def work() -> CampaignView:
        campaign = db.session.get(Campaign, campaign_id)
        if campaign is None:
            raise campaign_not_found(campaign_id)
        return CampaignView.of(campaign)

    return read(work)


def update_campaign(campaign_id: int, changes: Mapping[str, Any]) -> CampaignView:
    """Apply a partial update; the merged campaign must satisfy every campaign rule.

    The row is read with ``SELECT ... FOR UPDATE`` (the latest committed version, locked
    until commit), so ``max_redemptions`` is compared with a ``redemption_count`` no
    redemption can raise meanwhile: redemptions' conditional UPDATE on the campaign row
    waits for this lock and then checks against the new cap. Lowering the cap below the
    count is a :class:`~coupons.errors.Conflict` (``max_redemptions_below_count``).
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
            raise campaign_not_found(campaign_id)
        merged = {name: getattr(campaign, name) for name in CAMPAIGN_FIELDS}
        merged.update(cleaned)
        check_campaign(merged)
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


def create_code(
    campaign_id: int, *, code: str | None = None, max_uses: int | None = None
) -> CouponView:
    """Add one code to a campaign: ``code`` normalized, or a random one drawn with ``secrets``.

    An explicit code that exists already (in any campaign) is a :class:`~coupons.errors.Conflict`
    (``code_taken``); a random code that collides is drawn again. The existence check
    answers the common case; the unique index decides races.
    """
    check_max_uses(max_uses)
    explicit = normalize_code(code) if code is not None else None

    def work(candidate: str) -> CouponView:
        campaign = db.session.get(Campaign, campaign_id)
        if campaign is None:
            raise campaign_not_found(campaign_id)
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
