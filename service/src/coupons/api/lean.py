"""The hot routes' request path: flask-smorest's documentation without its request wrappers.

``@blp.arguments`` / ``@blp.response`` both document a route and wrap it: at request time
webargs' location machinery and flask-smorest's response wrapper run around the view. On
redeem, validate and read (most of the service's traffic) the profile in
bench/request_cpu.py showed those layers costing as much CPU as the service itself, so
those views are registered with the same decorators applied to a stub, whose ``_apidoc``
(what flask-smorest builds ``/openapi.json`` from) they take over (:func:`documented`):
the OpenAPI document is unchanged. At request time they call the same schemas directly:
:func:`json_body` loads through the blueprint's own webargs parser (so a malformed body,
a wrong content type and a validation error answer exactly as on the other routes) and
:func:`respond` sends a body built by :func:`redemption_body`, :func:`coupon_body` or
:func:`validation_body`, which write out what the response schemas' ``dump`` would (a
marshmallow dump of these flat views cost more CPU than building the dict; the test
tests/test_lean_api.py holds them equal to the schemas), through Flask's ``jsonify`` as
flask-smorest does.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Final, TypeVar

from flask import Flask, Request, Response, jsonify, request
from flask.sessions import SessionInterface, SessionMixin
from flask_smorest import Blueprint
from marshmallow import Schema, ValidationError
from webargs.core import missing

from coupons.api.common import PARSED_JSON_KEY
from coupons.services.views import CouponView, RedemptionView, ValidationResult

F = TypeVar("F", bound=Callable[..., Any])

_PARSER = Blueprint.ARGUMENTS_PARSER


def documented(*decorators: Callable[[Any], Any]) -> Callable[[F], F]:
    """Give a view the OpenAPI documentation ``decorators`` would, without their wrappers.

    ``documented(a, b)(view)`` documents ``view`` as ``a(b(view))`` would; put it directly
    under ``@blp.route`` (flask-smorest reads the documentation when the route registers).
    """

    def stub() -> None:  # pragma: no cover - never called, only documented
        raise NotImplementedError

    wrapped: Any = stub
    for decorator in reversed(decorators):
        wrapped = decorator(wrapped)
    apidoc = wrapped._apidoc

    def attach(view: F) -> F:
        view._apidoc = apidoc  # type: ignore[attr-defined]
        return view

    return attach


def json_body(schema: Schema) -> dict[str, Any]:
    """The request's JSON body loaded with ``schema``, as ``@blp.arguments(schema)`` would.

    The body is the one :func:`coupons.api.common._guard_input` already parsed (the same
    UTF-8 decode and ``json.loads`` webargs would run); without it (the guard not installed,
    a body it could not parse) webargs' own ``load_json`` reads the body. Invalid JSON is a
    400, and a ValidationError a 422 whose messages sit under the
    ``json`` location key: webargs' own handling, through the blueprint's parser.
    """
    data = request.environ.get(PARSED_JSON_KEY, missing)  # parsed once, by the input guard
    if data is missing:
        data = _PARSER.load_json(request, schema)
    if data is missing:
        data = {}
    try:
        loaded: dict[str, Any] = schema.load(data)
    except ValidationError as error:
        error.messages = {"json": error.messages}
        _PARSER.handle_error(error, request, schema, error_status_code=None, error_headers=None)
    return loaded


def respond(status: int, body: dict[str, Any]) -> Response:
    """``body`` as JSON with ``status``, as ``@blp.response(status, ...)`` would send it."""
    response = jsonify(body)
    response.status_code = status
    return response


_CENT: Final = Decimal("0.01")


def _money(value: Decimal | None) -> str | None:
    """schemas.Money's dump: two places, half up, as a plain string."""
    if value is None:
        return None
    return format(Decimal(str(value)).quantize(_CENT, rounding=ROUND_HALF_UP), "f")


def _time(value: dt.datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def redemption_body(view: RedemptionView) -> dict[str, Any]:
    """What ``RedemptionSchema().dump(view)`` gives."""
    return {
        "id": view.id,
        "code": view.code,
        "coupon_id": view.coupon_id,
        "campaign_id": view.campaign_id,
        "customer_id": view.customer_id,
        "order_id": view.order_id,
        "order_total": _money(view.order_total),
        "discount_amount": _money(view.discount_amount),
        "currency": view.currency,
        "status": view.status,
        "redeemed_at": _time(view.redeemed_at),
        "rolled_back_at": _time(view.rolled_back_at),
    }


def coupon_body(view: CouponView) -> dict[str, Any]:
    """What ``CouponSchema().dump(view)`` gives (the campaign as ``CouponCampaign``)."""
    campaign = view.campaign
    return {
        "id": view.id,
        "code": view.code,
        "campaign_id": view.campaign_id,
        "max_uses": view.max_uses,
        "use_count": view.use_count,
        "created_at": _time(view.created_at),
        "campaign": {
            "id": campaign.id,
            "name": campaign.name,
            "discount_type": campaign.discount_type,
            "discount_value": _money(campaign.discount_value),
            "currency": campaign.currency,
            "starts_at": _time(campaign.starts_at),
            "ends_at": _time(campaign.ends_at),
            "min_order_total": _money(campaign.min_order_total),
            "is_active": campaign.is_active,
        },
    }


def validation_body(result: ValidationResult) -> dict[str, Any]:
    """What ``ValidationResultSchema().dump(result)`` gives (None values left out)."""
    body = {
        "valid": result.valid,
        "code": result.code,
        "campaign_id": result.campaign_id,
        "order_total": _money(result.order_total),
        "discount": _money(result.discount),
        "currency": result.currency,
        "reason": result.reason,
        "message": result.message,
    }
    return {name: value for name, value in body.items() if value is not None}


class NoCookieSession(SessionInterface):
    """No Flask cookie session: the API authenticates every request by its bearer token.

    Flask's default interface builds a signing serializer and looks for a session cookie
    on every request (5% of a validate's CPU in bench/request_cpu.py's profile) for a
    session this service never reads or writes. With this one ``flask.session`` is a
    ``NullSession``: reading it gives nothing, writing to it raises.
    """

    def open_session(self, app: Flask, request: Request) -> SessionMixin | None:
        return None  # Flask then hands out make_null_session()

    def save_session(self, app: Flask, session: SessionMixin, response: Response) -> None:
        return None
