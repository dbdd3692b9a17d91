"""Redemptions endpoints: redeem a code for an order, read and roll back a redemption.

Both POSTs honour an ``Idempotency-Key`` header (Stripe's semantics, see
:mod:`coupons.services.idempotency`): the first response for a key is recorded in the same
transaction as the redemption or rollback, and replayed for a retry of the same request with
the header ``Idempotent-Replayed: true``.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Final

from flask import Response, current_app, request
from flask_smorest import Blueprint

from coupons.api.common import BEARER, current_principal, error_response, require_role
from coupons.api.lean import documented, json_body, redemption_body, respond
from coupons.api.schemas import ROW_ID, ApiErrorSchema, RedeemRequestSchema, RedemptionSchema
from coupons.appsettings import settings_of
from coupons.db import transaction
from coupons.errors import ServiceError
from coupons.models import Role, utcnow
from coupons.services import idempotency
from coupons.services import redemptions as service
from coupons.services.views import RedemptionView

URL_PREFIX = ""
blp = Blueprint("redemptions", __name__, description="Redemptions")

IDEMPOTENCY_HEADER: Final = "Idempotency-Key"
REPLAYED_HEADER: Final = "Idempotent-Replayed"
#: Share of keyed requests that also purge expired keys (bounded batch, off the hot path).
PURGE_PROBABILITY: Final = 0.01

_KEY_DOC: Final = {
    "parameters": [
        {
            "in": "header",
            "name": IDEMPOTENCY_HEADER,
            "required": False,
            "schema": {
                "type": "string",
                "minLength": 1,
                "maxLength": idempotency.MAX_KEY_LENGTH,
                "pattern": r"\S",  # a blank key is refused: 400 invalid_idempotency_key
            },
            "description": (
                "Retry-safe key: the same key and body replay the first response for 24 h; "
                "the same key with another body is refused with 422 idempotency_key_reused."
            ),
        }
    ]
}
_redeem_request = RedeemRequestSchema()


def _json_response(status: int, body: str, *, replayed: bool = False) -> Response:
    response = Response(body, status=status, mimetype="application/json")
    if replayed:
        response.headers[REPLAYED_HEADER] = "true"
    return response


def _render_error(exc: ServiceError) -> idempotency.StoredResponse:
    rendered = error_response(exc.status, exc.code, exc.message, **exc.details)
    return idempotency.StoredResponse(rendered.status_code, rendered.get_data(as_text=True))


def _idempotent(status: int, effect: Callable[[], RedemptionView]) -> RedemptionView | Response:
    """Run ``effect`` (a ``*_in_transaction`` call) under the request's Idempotency-Key.

    Without the header, run it in a plain transaction and return the view to serialize.
    """
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        return transaction(effect)
    settings = settings_of(current_app)
    endpoint = f"{request.method} {request.path}"
    claimed = idempotency.claim(
        user_id=current_principal().user_id,
        key=key,
        endpoint=endpoint,
        request_hash=idempotency.request_fingerprint(request.get_json(silent=True)),
        ttl=settings.idempotency_ttl,
    )
    if isinstance(claimed, idempotency.Replay):
        return _json_response(claimed.response.status, claimed.response.body, replayed=True)

    def run() -> idempotency.StoredResponse:
        body = json.dumps(redemption_body(effect()))
        return idempotency.StoredResponse(status, body)

    response = idempotency.execute(claimed, run, _render_error)
    if random.random() < PURGE_PROBABILITY:
        idempotency.purge_expired()
    return _json_response(response.status, response.body, replayed=response.replayed)


@blp.route("/redemptions", methods=["POST"])
@documented(
    blp.arguments(RedeemRequestSchema),
    blp.response(201, RedemptionSchema),
    blp.alt_response(
        409,
        schema=ApiErrorSchema,
        description="coupon_exhausted, customer_limit_reached, already_redeemed, "
        "idempotency_key_in_progress",
    ),
    blp.alt_response(
        422,
        schema=ApiErrorSchema,
        description="coupon_not_found, coupon_expired, coupon_not_yet_valid, campaign_inactive, "
        "order_total_below_minimum, idempotency_key_reused, validation_error",
    ),
    blp.doc(security=BEARER, summary="Redeem a code for an order (service or admin)", **_KEY_DOC),
)
@require_role(Role.SERVICE)
def redeem() -> Response:
    # Parsed and checked before the transaction: none of it is hold time.
    data = json_body(_redeem_request)
    now = utcnow()
    result = _idempotent(
        201,
        lambda: service.redeem_in_transaction(
            code=data["code"],
            customer_id=data["customer_id"],
            order_id=data["order_id"],
            order_total=data["order_total"],
            now=now,
        ),
    )
    return result if isinstance(result, Response) else respond(201, redemption_body(result))


@blp.route(f"/redemptions/<{ROW_ID}:redemption_id>", methods=["GET"])
@require_role(Role.SERVICE)
@blp.response(200, RedemptionSchema)
@blp.alt_response(404, schema=ApiErrorSchema, description="redemption_not_found")
@blp.doc(security=BEARER, summary="Read a redemption (service or admin)")
def get_redemption(redemption_id: int) -> RedemptionView:
    return service.get_redemption(redemption_id)


@blp.route(f"/redemptions/<{ROW_ID}:redemption_id>/rollback", methods=["POST"])
@documented(
    blp.response(200, RedemptionSchema),
    blp.alt_response(404, schema=ApiErrorSchema, description="redemption_not_found"),
    blp.doc(
        security=BEARER,
        summary="Roll a redemption back, restoring its counts; idempotent (service or admin)",
        **_KEY_DOC,
    ),
)
@require_role(Role.SERVICE)
def rollback(redemption_id: int) -> Response:
    now = utcnow()
    result = _idempotent(200, lambda: service.rollback_in_transaction(redemption_id, now=now))
    return result if isinstance(result, Response) else respond(200, redemption_body(result))
