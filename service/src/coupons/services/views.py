"""What the service layer returns: frozen views of rows, built while the rows were at hand.

Views carry plain values (no ORM instance, no lazy load), so serializing one after the
transaction ended needs no connection. Attribute names match the models', so one
marshmallow schema dumps a view and a model alike.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, fields
from decimal import Decimal
from functools import cache
from typing import Any, Final, Self


@cache
def _names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))


def _attributes(cls: type, row: Any) -> dict[str, Any]:
    """The attributes of ``row`` named like the fields of the dataclass ``cls``."""
    return {name: getattr(row, name) for name in _names(cls)}


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
        """From anything with the campaign's attributes (an ORM row, a Core row, a view)."""
        return cls(**_attributes(cls, row))


#: The coupon's own columns, in the order views and statements list them.
COUPON_COLUMNS: Final = ("id", "code", "campaign_id", "max_uses", "use_count", "created_at")


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
    def of(cls, row: Any, campaign: Any, **extra: Any) -> Self:
        """From a coupon row and its campaign (a row or a view); ``extra``: a subclass's fields."""
        values = {name: getattr(row, name) for name in COUPON_COLUMNS}
        if not isinstance(campaign, CampaignView):
            campaign = CampaignView.of(campaign)
        return cls(**values, campaign=campaign, **extra)


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
        """From anything with the ledger row's attributes (an ORM row or a Core row)."""
        return cls(**_attributes(cls, row))


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
