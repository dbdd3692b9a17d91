"""The hot routes' hand-built bodies equal what the response schemas would dump.

coupons.api.lean builds the bodies of redeem, rollback, validate and ``GET /coupons/{code}``
without marshmallow (CPU on the request path); these tests hold each equal to the schema's
own ``dump`` over values that exercise every field: None, rounding, whole amounts, time
zones. If a schema in coupons.api.schemas changes, a test here fails until the body does.
"""

from __future__ import annotations

import datetime as dt
import itertools
from decimal import Decimal

import pytest

from coupons.api.lean import coupon_body, redemption_body, validation_body
from coupons.api.schemas import CouponSchema, RedemptionSchema, ValidationResultSchema
from coupons.services.views import CampaignView, CouponView, RedemptionView, ValidationResult

NOW = dt.datetime(2026, 3, 1, 12, 30, 45, 123456, tzinfo=dt.UTC)
LATER = dt.datetime(2026, 4, 1, tzinfo=dt.timezone(dt.timedelta(hours=2)))
AMOUNTS = [Decimal("80"), Decimal("12.5"), Decimal("0.01"), Decimal("9999999999.99")]


def campaign(**overrides: object) -> CampaignView:
    values: dict[str, object] = {
        "id": 7,
        "name": "Spring",
        "discount_type": "percent",
        "discount_value": Decimal("10"),
        "currency": "EUR",
        "starts_at": None,
        "ends_at": None,
        "max_redemptions": None,
        "redemption_count": 0,
        "per_customer_limit": None,
        "min_order_total": None,
        "is_active": True,
        "created_at": NOW,
        "updated_at": NOW,
    }
    values.update(overrides)
    return CampaignView(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("amount", "rolled_back_at"), list(itertools.product(AMOUNTS, [None, NOW, LATER]))
)
def test_redemption_body(amount: Decimal, rolled_back_at: dt.datetime | None) -> None:
    view = RedemptionView(
        id=1,
        coupon_id=2,
        campaign_id=3,
        code="SPRING-1",
        customer_id="cust-1",
        order_id="order-1",
        order_total=amount,
        discount_amount=amount / 3,
        currency="EUR",
        status="rolled_back" if rolled_back_at else "redeemed",
        redeemed_at=NOW,
        rolled_back_at=rolled_back_at,
    )
    assert redemption_body(view) == RedemptionSchema().dump(view)


@pytest.mark.parametrize(
    "campaign_view",
    [
        campaign(),
        campaign(
            discount_type="fixed",
            discount_value=Decimal("5.5"),
            starts_at=NOW,
            ends_at=LATER,
            min_order_total=Decimal("0"),
            is_active=False,
        ),
    ],
)
@pytest.mark.parametrize("max_uses", [None, 3])
def test_coupon_body(campaign_view: CampaignView, max_uses: int | None) -> None:
    view = CouponView(
        id=5,
        code="SPRING-1",
        campaign_id=campaign_view.id,
        max_uses=max_uses,
        use_count=1,
        created_at=LATER,
        campaign=campaign_view,
    )
    assert coupon_body(view) == CouponSchema().dump(view)


@pytest.mark.parametrize(
    "result",
    [
        ValidationResult(
            valid=True,
            code="SPRING-1",
            order_total=Decimal("80"),
            campaign_id=3,
            discount=Decimal("8.005"),
            currency="EUR",
        ),
        ValidationResult(
            valid=False,
            code="NOPE",
            order_total=Decimal("12.50"),
            reason="coupon_not_found",
            message="no coupon has this code",
        ),
        ValidationResult(
            valid=False,
            code="SPRING-1",
            order_total=Decimal("1"),
            campaign_id=3,
            reason="order_total_below_minimum",
            message="the order total must be at least 5.00 EUR",
        ),
    ],
)
def test_validation_body(result: ValidationResult) -> None:
    assert validation_body(result) == ValidationResultSchema().dump(result)
