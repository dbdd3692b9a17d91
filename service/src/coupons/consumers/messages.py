"""The order-event message format: JSON, validated with marshmallow, documented in
docs/consumer.md (which carries :data:`ORDER_EVENT_JSON_SCHEMA` verbatim).

One message is one JSON object, UTF-8, ``content_type=application/json``::

    {"message_id": "5f0c...", "type": "order.paid", "occurred_at": "2025-05-01T10:00:00Z",
     "order_id": "o-1", "customer_id": "c-1", "code": "SPRING-1234-5678",
     "order_total": "80.00", "currency": "EUR"}

Contract:

* ``message_id`` identifies the event, not the delivery: a producer that sends the same event
  again (a retry after a lost publisher confirm) sends the same id, and the consumer applies
  it once. A different id is a different event.
* ``order.paid`` needs ``customer_id``, ``code`` and ``order_total`` (a decimal *string* with
  at most two places: JSON numbers are binary floats and ``80.1`` is not ``80.10``).
* ``order.cancelled`` / ``order.refunded`` need ``order_id``; ``code`` is optional and narrows
  the rollback to that code's campaign (see :mod:`coupons.consumers.consumer`).
* Unknown fields are ignored, so producers can add fields before consumers know them.

Anything else (not JSON, not an object, a schema error) is *malformed*: :func:`parse_event`
raises :class:`MalformedMessage` and the consumer dead-letters the message at once.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate, validates_schema

ORDER_PAID: Final = "order.paid"
ORDER_CANCELLED: Final = "order.cancelled"
ORDER_REFUNDED: Final = "order.refunded"
EVENT_TYPES: Final = (ORDER_PAID, ORDER_CANCELLED, ORDER_REFUNDED)
ROLLBACK_TYPES: Final = frozenset({ORDER_CANCELLED, ORDER_REFUNDED})

#: Draft 2020-12 JSON Schema of one message; docs/consumer.md shows the same document.
ORDER_EVENT_JSON_SCHEMA: Final[dict[str, Any]] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://coupons.example/schemas/order-event.json",
    "title": "Order event",
    "type": "object",
    "required": ["message_id", "type", "occurred_at", "order_id"],
    "properties": {
        "message_id": {"type": "string", "minLength": 1, "maxLength": 128},
        "type": {"enum": list(EVENT_TYPES)},
        "occurred_at": {"type": "string", "format": "date-time"},
        "order_id": {"type": "string", "minLength": 1, "maxLength": 64},
        "customer_id": {"type": "string", "minLength": 1, "maxLength": 64},
        "code": {"type": "string", "minLength": 1, "maxLength": 64},
        "order_total": {"type": "string", "pattern": "^[0-9]{1,10}(\\.[0-9]{1,2})?$"},
        "currency": {"type": "string", "pattern": "^[A-Z]{3}$"},
    },
    "allOf": [
        {
            "if": {"properties": {"type": {"const": ORDER_PAID}}},
            "then": {"required": ["customer_id", "code", "order_total"]},
        }
    ],
}


class MalformedMessage(ValueError):
    """The body is not a valid order event; ``reason`` is a stable code, ``str()`` the detail."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class _MoneyString(fields.Decimal):
    """A decimal given as a JSON string (or integer); floats are refused, see the module doc."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise ValidationError('must be a decimal string such as "80.00"')
        return super()._deserialize(value, attr, data, **kwargs)


def _positive_cents(value: Decimal) -> None:
    if not value.is_finite() or value <= 0:
        raise ValidationError("must be a positive amount")
    if value != value.quantize(Decimal("0.01")) or value > Decimal("9999999999.99"):
        raise ValidationError("must have at most 2 decimal places and 10 integer digits")


class OrderEventSchema(Schema):
    """marshmallow schema of one order event (see :data:`ORDER_EVENT_JSON_SCHEMA`)."""

    class Meta:
        unknown = EXCLUDE

    message_id = fields.String(required=True, validate=validate.Length(min=1, max=128))
    type = fields.String(required=True, validate=validate.OneOf(EVENT_TYPES))
    occurred_at = fields.AwareDateTime(required=True)
    order_id = fields.String(required=True, validate=validate.Length(min=1, max=64))
    customer_id = fields.String(load_default=None, validate=validate.Length(min=1, max=64))
    code = fields.String(load_default=None, validate=validate.Length(min=1, max=64))
    order_total = _MoneyString(load_default=None, validate=_positive_cents)
    currency = fields.String(load_default=None, validate=validate.Regexp(r"^[A-Z]{3}$"))

    @validates_schema
    def _paid_fields(self, data: dict[str, Any], **kwargs: Any) -> None:
        if data.get("type") == ORDER_PAID:
            missing = [n for n in ("customer_id", "code", "order_total") if data.get(n) is None]
            if missing:
                raise ValidationError({n: ["required for order.paid"] for n in missing})


_SCHEMA: Final = OrderEventSchema()


@dataclass(frozen=True, kw_only=True)
class OrderEvent:
    """A validated order event. ``occurred_at`` is timezone-aware (UTC)."""

    message_id: str
    type: str
    occurred_at: dt.datetime
    order_id: str
    customer_id: str | None = None
    code: str | None = None
    order_total: Decimal | None = None
    currency: str | None = None

    def to_json(self) -> str:
        """The wire form (compact JSON; ``order_total`` as a string, None fields left out)."""
        body: dict[str, Any] = {
            "message_id": self.message_id,
            "type": self.type,
            "occurred_at": self.occurred_at.astimezone(dt.UTC).isoformat().replace("+00:00", "Z"),
            "order_id": self.order_id,
            "customer_id": self.customer_id,
            "code": self.code,
            "order_total": None if self.order_total is None else f"{self.order_total:.2f}",
            "currency": self.currency,
        }
        return json.dumps({k: v for k, v in body.items() if v is not None}, separators=(",", ":"))


def parse_event(body: bytes | str | Any) -> OrderEvent:
    """Decode and validate one message body; raise :class:`MalformedMessage` with the reason.

    Reasons: ``invalid_json`` (not UTF-8 JSON, or not an object) and ``invalid_schema``
    (the detail lists every field error).
    """
    if isinstance(body, bytes | bytearray | memoryview):
        try:
            body = bytes(body).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedMessage("invalid_json", f"body is not UTF-8: {exc}") from None
    if isinstance(body, str):
        try:
            data = json.loads(body)
        except ValueError as exc:
            raise MalformedMessage("invalid_json", f"body is not JSON: {exc}") from None
    else:
        data = body  # a transport that decoded already
    if not isinstance(data, dict):
        raise MalformedMessage("invalid_json", f"body is a JSON {type(data).__name__}, not object")
    try:
        loaded: dict[str, Any] = _SCHEMA.load(data)
    except ValidationError as exc:
        detail = json.dumps(exc.messages, sort_keys=True, default=str)
        raise MalformedMessage("invalid_schema", detail) from None
    return OrderEvent(**loaded)
