"""The coupon service's public names, gathered from the modules that do each job.

The service is split by job: :mod:`~coupons.services.views` (what it returns),
:mod:`~coupons.services.rules` (pure domain rules), :mod:`~coupons.services.campaigns`
(campaigns and single codes), :mod:`~coupons.services.validation` (reading and validating
a code), :mod:`~coupons.services.redemptions` (redeem and roll back, with the locking story
in its docstring) and :mod:`~coupons.services.listing` (paginated lists). This module keeps
the names callers already import from ``coupons.services.coupon``.

It is the post-mortem's ``app/services/coupon.py`` done right: only the scoped
``db.session`` (never a ``Session(bind=db.engine)`` of its own, never ``close()``), every
write in one :func:`coupons.db.transaction`, every read in :func:`coupons.db.read`, and no
Flask: callers pass plain values and get frozen views back.
"""

from __future__ import annotations

from coupons.services.campaigns import (
    CAMPAIGN_FIELDS,
    create_campaign,
    create_code,
    get_campaign,
    update_campaign,
)
from coupons.services.redemptions import (
    get_redemption,
    redeem,
    redeem_in_transaction,
    rollback_in_transaction,
    rollback_redemption,
)
from coupons.services.rules import (
    CENT,
    CODE_ALPHABET,
    CODE_PATTERN,
    MAX_MONEY,
    compute_discount,
    normalize_code,
    random_code,
)
from coupons.services.validation import get_coupon, validate_coupon
from coupons.services.views import CampaignView, CouponView, RedemptionView, ValidationResult

__all__ = [
    "CAMPAIGN_FIELDS",
    "CENT",
    "CODE_ALPHABET",
    "CODE_PATTERN",
    "MAX_MONEY",
    "CampaignView",
    "CouponView",
    "RedemptionView",
    "ValidationResult",
    "compute_discount",
    "create_campaign",
    "create_code",
    "get_campaign",
    "get_coupon",
    "get_redemption",
    "normalize_code",
    "random_code",
    "redeem",
    "redeem_in_transaction",
    "rollback_in_transaction",
    "rollback_redemption",
    "update_campaign",
    "validate_coupon",
]
