"""The domain's rules as pure functions: codes, money, campaign consistency, refusals.

No database access here: every function takes values and returns values or raises a
:class:`~coupons.errors.ServiceError`, so the services can run them *before* a transaction
starts (parsing and checking input is not hold time) or on rows they already hold.
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Final, Protocol

from coupons.errors import Conflict, NotFound, ServiceError, Unprocessable
from coupons.models import DiscountType

CENT: Final = Decimal("0.01")
MAX_MONEY: Final = Decimal("9999999999.99")  # Numeric(12, 2)
CODE_PATTERN: Final = re.compile(r"^[A-Z0-9-]{3,64}$")
#: The one alphabet of new codes, random and generated: 32 characters without the
#: look-alikes 0/O and 1/I (codes are upper-case, so an ``L`` cannot pass for a ``1``);
#: 32 = 2**5, so every random byte maps to a character. Codes stored before (another
#: alphabet, or chosen by hand) stay valid: lookups only normalize case and spaces.
CODE_ALPHABET: Final = "23456789ABCDEFGHJKLMNPQRSTUVWXYZ"
RANDOM_CODE_GROUPS: Final = 3
RANDOM_CODE_GROUP_LEN: Final = 4
#: Longest campaign name (the column is VARCHAR(200)) and largest cap (a 32-bit INTEGER
#: column): checked here so every caller (API, CLI) is refused alike, not by the database.
MAX_CAMPAIGN_NAME: Final = 200
MAX_CAP: Final = 2_147_483_647


class CampaignRules(Protocol):
    """What :func:`refusal` reads of a campaign (an ORM row, a Core row or a view)."""

    is_active: bool
    starts_at: dt.datetime | None
    ends_at: dt.datetime | None
    min_order_total: Decimal | None
    currency: str


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a coupon cannot be used, as both a ``validate`` answer and a raisable error."""

    error: type[ServiceError]
    code: str
    message: str

    def exception(self) -> ServiceError:
        return self.error(self.message, code=self.code)


def normalize_code(raw: str) -> str:
    """The stored form of a code: stripped and upper-cased; refuse malformed codes.

    Raises :class:`Unprocessable` (``invalid_code``) unless the result is 3..64 characters
    of A-Z, 0-9 and '-'.
    """
    code = raw.strip().upper()
    if not CODE_PATTERN.fullmatch(code):
        raise Unprocessable("a code is 3 to 64 characters of A-Z, 0-9 and '-'", code="invalid_code")
    return code


def lookup_key(raw: str) -> str | None:
    """The normalized form to look ``raw`` up by, or None when no stored code can match."""
    code = raw.strip().upper()
    return code if CODE_PATTERN.fullmatch(code) else None


def random_code() -> str:
    """A fresh code like ``K7QM-9XTR-H2WD``: 12 symbols of :data:`CODE_ALPHABET` (60 bits)."""
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


def check_money(name: str, value: Decimal, *, allow_zero: bool = False) -> None:
    """``invalid_amount`` unless ``value`` is a finite, positive amount of whole cents."""
    if not value.is_finite() or value < 0 or (value == 0 and not allow_zero):
        raise Unprocessable(f"{name} must be a positive amount", code="invalid_amount")
    if value > MAX_MONEY:
        raise Unprocessable(f"{name} must be at most {MAX_MONEY}", code="invalid_amount")
    if value != value.quantize(CENT):
        raise Unprocessable(f"{name} has more than 2 decimal places", code="invalid_amount")


def check_max_uses(max_uses: int | None) -> None:
    """``invalid_max_uses`` unless a code's use cap is absent or at least 1."""
    if max_uses is not None and max_uses < 1:
        raise Unprocessable("max_uses must be at least 1", code="invalid_max_uses")


def check_campaign(values: Mapping[str, Any]) -> None:
    """Rules a whole campaign obeys; checked on create and on the merged state of a PATCH."""
    if values["discount_type"] not in (DiscountType.PERCENT, DiscountType.FIXED):
        raise Unprocessable("discount_type must be 'percent' or 'fixed'", code="invalid_discount")
    check_money("discount_value", values["discount_value"])
    if values["discount_type"] == DiscountType.PERCENT and values["discount_value"] > 100:
        raise Unprocessable("a percent discount cannot exceed 100", code="invalid_discount")
    if not re.fullmatch(r"[A-Z]{3}", values["currency"]):
        raise Unprocessable("currency must be an ISO 4217 code", code="invalid_currency")
    starts_at, ends_at = values["starts_at"], values["ends_at"]
    if starts_at is not None and ends_at is not None and ends_at <= starts_at:
        raise Unprocessable("ends_at must be after starts_at", code="invalid_window")
    if values["max_redemptions"] is not None and values["max_redemptions"] < 1:
        raise Unprocessable("max_redemptions must be at least 1", code="invalid_max_redemptions")
    if values["max_redemptions"] is not None and values["max_redemptions"] > MAX_CAP:
        raise Unprocessable(
            f"max_redemptions must be at most {MAX_CAP}", code="invalid_max_redemptions"
        )
    if values["per_customer_limit"] is not None and values["per_customer_limit"] < 1:
        raise Unprocessable(
            "per_customer_limit must be at least 1", code="invalid_per_customer_limit"
        )
    if values["per_customer_limit"] is not None and values["per_customer_limit"] > MAX_CAP:
        raise Unprocessable(
            f"per_customer_limit must be at most {MAX_CAP}", code="invalid_per_customer_limit"
        )
    if values["min_order_total"] is not None:
        check_money("min_order_total", values["min_order_total"], allow_zero=True)
    if not values["name"].strip():
        raise Unprocessable("name must not be blank", code="invalid_name")
    if len(values["name"]) > MAX_CAMPAIGN_NAME:
        raise Unprocessable(
            f"name must be at most {MAX_CAMPAIGN_NAME} characters", code="invalid_name"
        )


def refusal(campaign: CampaignRules, order_total: Decimal, now: dt.datetime) -> Refusal | None:
    """The first rule of ``campaign`` that ``order_total`` at ``now`` breaks, if any.

    Caps are not checked here: reads cannot decide them; redemption's UPDATEs do.
    """
    if not campaign.is_active:
        return Refusal(Unprocessable, "campaign_inactive", "the coupon's campaign is not active")
    if campaign.starts_at is not None and now < campaign.starts_at:
        return Refusal(
            Unprocessable,
            "coupon_not_yet_valid",
            f"the coupon is valid from {campaign.starts_at.isoformat()}",
        )
    if campaign.ends_at is not None and now >= campaign.ends_at:
        return Refusal(
            Unprocessable, "coupon_expired", f"the coupon expired at {campaign.ends_at.isoformat()}"
        )
    if campaign.min_order_total is not None and order_total < campaign.min_order_total:
        return Refusal(
            Unprocessable,
            "order_total_below_minimum",
            f"the order total must be at least {campaign.min_order_total} {campaign.currency}",
        )
    return None


# The errors of one condition each, built in one place so the code never drifts.

COUPON_NOT_FOUND_MESSAGE: Final = "no coupon has this code"


def coupon_not_found_in_body() -> Unprocessable:
    """An unknown code sent in a request body (redeem): 422 ``coupon_not_found``."""
    return Unprocessable(COUPON_NOT_FOUND_MESSAGE, code="coupon_not_found")


def coupon_not_found_in_url() -> NotFound:
    """An unknown code in the URL (``GET /coupons/{code}``): 404 ``coupon_not_found``."""
    return NotFound(COUPON_NOT_FOUND_MESSAGE, code="coupon_not_found")


def campaign_not_found(campaign_id: int) -> NotFound:
    return NotFound(f"no campaign has id {campaign_id}", code="campaign_not_found")


def redemption_not_found(redemption_id: int) -> NotFound:
    return NotFound(f"no redemption has id {redemption_id}", code="redemption_not_found")


def exhausted(message: str) -> Conflict:
    return Conflict(message, code="coupon_exhausted")


def customer_limit(limit: int | None) -> Conflict:
    return Conflict(
        f"this customer has used this campaign the most times allowed ({limit})",
        code="customer_limit_reached",
    )


def already_redeemed(order_id: str) -> Conflict:
    return Conflict(
        f"order {order_id} already has a redemption in this campaign", code="already_redeemed"
    )
