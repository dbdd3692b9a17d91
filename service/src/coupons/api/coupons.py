"""Coupons endpoints: read one code, and validate it for an order without side effects.

``GET /coupons`` (the list) lives in :mod:`coupons.api.listing`.
"""

from __future__ import annotations

from flask import Response
from flask_smorest import Blueprint

from coupons.api.common import BEARER, require_role
from coupons.api.lean import coupon_body, documented, json_body, respond, validation_body
from coupons.api.schemas import (
    ApiErrorSchema,
    CouponSchema,
    ValidateRequestSchema,
    ValidationResultSchema,
)
from coupons.models import Role
from coupons.services import validation as service

URL_PREFIX = ""
blp = Blueprint("coupons", __name__, description="Coupons")


_validate_request = ValidateRequestSchema()


@blp.route("/coupons/<string:code>", methods=["GET"])
@documented(
    blp.response(200, CouponSchema),
    blp.alt_response(404, schema=ApiErrorSchema, description="coupon_not_found"),
    blp.doc(security=BEARER, summary="Read a code (case-insensitive) with its campaign"),
)
@require_role(Role.SERVICE)
def get_coupon(code: str) -> Response:
    return respond(200, coupon_body(service.get_coupon(code)))


@blp.route("/coupons/<string:code>/validate", methods=["POST"])
@documented(
    blp.arguments(ValidateRequestSchema),
    blp.response(200, ValidationResultSchema),
    blp.doc(
        security=BEARER,
        summary="Would this code apply to this order now? Writes nothing",
        description=(
            "Always 200: `valid: true` with the discount, or `valid: false` with `reason`, the "
            "error code a redemption would fail with now."
        ),
    ),
)
@require_role(Role.SERVICE)
def validate_coupon(code: str) -> Response:
    data = json_body(_validate_request)
    result = service.validate_coupon(
        code, customer_id=data["customer_id"], order_total=data["order_total"]
    )
    return respond(200, validation_body(result))
