"""What the service layer returns: frozen views of rows, built while the rows were at hand.

Views carry plain values (no ORM instance, no lazy load), so serializing one after the
transaction ended needs no connection. Attribute names match the models', so one
marshmallow schema dumps a view and a model alike.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from typing import Any


@dataclass(frozen=True, kw_only=True, slots=True)
class CampaignView:
    """A campaign as read; attribute names match :class:`~coupons.models.Campaign`."""

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
    def of(cls, row: Any) -> CampaignView:
        """From anything with the campaign's attributes (an ORM row or a Core row)."""
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


@dataclass(frozen=True, kw_only=True, slots=True)
class CouponView:
    """A code with its campaign; names match :class:`~coupons.models.Coupon`."""

    id: int
    code: str
    campaign_id: int
    max_uses: int | None
    use_count: int
    created_at: dt.datetime
    campaign: CampaignView

    @classmethod
    def of(cls, row: Any, campaign: Any) -> CouponView:
        return cls(
            id=row.id,
            code=row.code,
            campaign_id=row.campaign_id,
            max_uses=row.max_uses,
            use_count=row.use_count,
            created_at=row.created_at,
            campaign=campaign if isinstance(campaign, CampaignView) else CampaignView.of(campaign),
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class RedemptionView:
    """One ledger row; names match :class:`~coupons.models.Redemption`."""

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
    def of(cls, row: Any) -> RedemptionView:
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


@dataclass(frozen=True, kw_only=True, slots=True)
class ValidationResult:
    """What validation found: the discount, or the precise reason there is none.

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


@dataclass(frozen=True, kw_only=True, slots=True)
class ListedCoupon(CouponView):
    """A code as a list shows it: with ``status``, ``available`` or ``exhausted``."""

    status: str
