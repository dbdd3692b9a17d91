"""Coupons endpoints: read one code, and validate it for an order without side effects.

``GET /coupons`` (the list) lives in :mod:`coupons.api.listing`.
"""

from __future__ import annotations

from typing import Any

from flask_smorest import Blueprint

from coupons.api.common import BEARER, require_role
from coupons.api.schemas import (
    ApiErrorSchema,
    CouponSchema,
    ValidateRequestSchema,
    ValidationResultSchema,
)
from coupons.models import Role
from coupons.services import coupon as service

URL_PREFIX = ""
blp = Blueprint("coupons", __name__, description="Coupons")


@blp.route("/coupons/<string:code>", methods=["GET"])
@require_role(Role.SERVICE)
@blp.response(200, CouponSchema)
@blp.alt_response(404, schema=ApiErrorSchema, description="coupon_not_found")
@blp.doc(security=BEARER, summary="Read a code (case-insensitive) with its campaign")
def get_coupon(code: str) -> service.CouponView:
    return service.get_coupon(code)


@blp.route("/coupons/<string:code>/validate", methods=["POST"])
@require_role(Role.SERVICE)
@blp.arguments(ValidateRequestSchema)
@blp.response(200, ValidationResultSchema)
@blp.doc(
    security=BEARER,
    summary="Would this code apply to this order now? Writes nothing",
    description=(
        "Always 200: `valid: true` with the discount, or `valid: false` with `reason`, the "
        "error code a redemption would fail with now."
    ),
)
def validate_coupon(data: dict[str, Any], code: str) -> service.ValidationResult:
    return service.validate_coupon(
        code, customer_id=data["customer_id"], order_total=data["order_total"]
    )
