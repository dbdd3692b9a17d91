"""Marshmallow schemas shared by the API modules: what routes accept and what they return.

The same schemas produce ``/openapi.json``. Output schemas dump attributes by name, so they
serialize the service layer's frozen views and the ORM models alike (the view classes use
the models' attribute names). Money is a string with two decimals on output ("12.50") and
a number or a string on input.
"""

from __future__ import annotations

import datetime as dt
import decimal
import re
from typing import Any

from flask_smorest import Api
from marshmallow import (
    INCLUDE,
    Schema,
    ValidationError,
    fields,
    post_dump,
    validate,
    validates_schema,
)
from werkzeug import exceptions as http_errors
from werkzeug.routing import IntegerConverter
from werkzeug.routing import ValidationError as RouteValidationError

from coupons.models import DiscountType

MAX_MONEY = decimal.Decimal("9999999999.99")
#: The integer columns are 32-bit (INTEGER / INT): a larger value is refused here (422)
#: instead of reaching the database (MariaDB 1264, a 500).
MAX_INT = 2_147_483_647
#: The converter name of an id in a route (``/campaigns/<row_id:campaign_id>``), see
#: :class:`RowIdConverter`.
ROW_ID = "row_id"
CODE_REGEX = r"^\s*[A-Za-z0-9-]{3,64}\s*$"
#: The documented money pattern, ASCII digits only: Arabic-Indic or fullwidth digits,
#: "8_0.00", "1e2" and " 12.50" are refused (Python's Decimal accepts each of them).
MONEY_PATTERN = re.compile(r"[0-9]+(\.[0-9]{1,2})?", re.ASCII)
#: Datetimes accepted on input, in UTC. The bounds keep every offset conversion inside
#: Python's range (``0001-01-01T00:00:00+14:00`` overflowed in the UTC column type) and
#: inside MariaDB's DATETIME (years 1000-9999).
EARLIEST = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
LATEST = dt.datetime(9999, 12, 30, tzinfo=dt.UTC)


class RowIdConverter(IntegerConverter):
    """An id in a route: ASCII digits, 1..:data:`MAX_INT`; anything else is a 404.

    A larger id never reaches the driver (SQLite raised OverflowError, a 500). Out of range
    raises NotFound instead of Werkzeug's ValidationError: with the latter, a PATCH to
    ``/campaigns/99999999999`` answered 405 (the GET rule of the same path matched the
    pattern and recorded its method) while the GET answered 404.
    """

    def __init__(self, map: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(map, min=1, max=MAX_INT)

    def to_python(self, value: str) -> Any:
        try:
            return super().to_python(value)
        except RouteValidationError:
            raise http_errors.NotFound() from None


def row_id_parameter_schema(converter: RowIdConverter) -> dict[str, Any]:
    """How the document describes a :class:`RowIdConverter` path parameter."""
    return {"type": "integer", "minimum": 1, "maximum": MAX_INT}


class StrictInteger(fields.Integer):
    """A JSON integer: ``1.5``, ``"1"``, ``true`` are refused (marshmallow's own field
    truncates 1.5 to 1, and ``True`` is an ``int`` in Python)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(strict=True, **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValidationError("Not a valid integer.")
        return super()._deserialize(value, attr, data, **kwargs)


class StrictBoolean(fields.Boolean):
    """A JSON ``true`` or ``false`` only (marshmallow's field takes "false", 0, "no"...)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if not isinstance(value, bool):
            raise ValidationError("Must be true or false.")
        return value


class BoundedDateTime(fields.AwareDateTime):
    """An ISO 8601 time between :data:`EARLIEST` and :data:`LATEST`; no offset means UTC."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if not isinstance(value, str):
            raise ValidationError("Not a valid datetime.")
        parsed = super()._deserialize(value, attr, data, **kwargs)
        try:
            in_utc = parsed.astimezone(dt.UTC)
        except (OverflowError, ValueError):
            raise ValidationError(self._range_message()) from None
        if not EARLIEST <= in_utc <= LATEST:
            raise ValidationError(self._range_message())
        return parsed

    @staticmethod
    def _range_message() -> str:
        return f"Must be from {EARLIEST.isoformat()} to {LATEST.isoformat()}."


class Money(fields.Decimal):
    """An amount in a currency's major unit: at most 2 decimals, finite, number or string.

    The range is checked here rather than with ``validate.Range`` so the OpenAPI document
    does not get numeric bounds on what it describes as a string.
    """

    def __init__(self, *, minimum: str = "0.01", **kwargs: Any) -> None:
        self.minimum = decimal.Decimal(minimum)
        kwargs.setdefault(
            "metadata",
            {
                "type": "string",
                "pattern": r"^\d+(\.\d{1,2})?$",
                "example": "12.50",
                "description": (
                    f"Amount from {minimum} to {MAX_MONEY}, at most 2 decimals; "
                    'sent as a string ("12.50") or a JSON number, returned as a string.'
                ),
            },
        )
        super().__init__(
            places=2, rounding=decimal.ROUND_HALF_UP, as_string=True, allow_nan=False, **kwargs
        )

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ValidationError('Not a valid amount: send a string like "12.50".')
        if isinstance(value, str) and MONEY_PATTERN.fullmatch(value) is None:
            raise ValidationError(
                'Not a valid amount: digits 0-9 with at most 2 decimals ("12.50").'
            )
        try:
            exact = decimal.Decimal(str(value))
        except decimal.InvalidOperation:
            raise ValidationError("Not a valid number.") from None
        if not exact.is_finite():
            raise ValidationError("Must be a finite number.")
        if abs(exact) > MAX_MONEY:
            raise ValidationError(f"Must be from {self.minimum} to {MAX_MONEY}.")
        if exact != exact.quantize(decimal.Decimal("0.01")):
            raise ValidationError("At most 2 decimal places.")
        amount = super()._deserialize(value, attr, data, **kwargs)
        if not self.minimum <= amount <= MAX_MONEY:
            raise ValidationError(f"Must be from {self.minimum} to {MAX_MONEY}.")
        return amount


def _currency(**kwargs: Any) -> fields.String:
    return fields.String(
        validate=validate.Regexp(r"^[A-Za-z]{3}$", error="Must be an ISO 4217 code like EUR."),
        metadata={"example": "EUR"},
        **kwargs,
    )


def _when(description: str | None = None, **kwargs: Any) -> fields.AwareDateTime:
    """An ISO 8601 time; one without an offset is taken as UTC."""
    metadata: dict[str, Any] = {"example": "2025-03-01T00:00:00Z"}
    if description is not None:
        metadata["description"] = description
    return BoundedDateTime(allow_none=True, default_timezone=dt.UTC, metadata=metadata, **kwargs)


#: JSON Schema cannot compare two properties, so the document says it in words.
_ENDS_AFTER_STARTS = (
    "Must be strictly after starts_at when both are set (an empty window, ends_at equal to "
    "starts_at, is refused: 422 validation_error / invalid_window)."
)


class ApiErrorBodySchema(Schema):
    """The error body: a stable ``code``, a ``message`` for people, ``fields`` on validation
    errors (field name -> problems), and any details the error carries."""

    class Meta:
        unknown = INCLUDE  # service errors may add details beside code and message

    code = fields.String(required=True, metadata={"example": "coupon_exhausted"})
    message = fields.String(required=True)
    fields_ = fields.Dict(
        data_key="fields",
        keys=fields.String(),
        metadata={"description": "validation_error only: each invalid field's problems"},
    )


class ApiErrorSchema(Schema):
    """``{"error": {"code": ..., "message": ...}}``: the shape of every error response."""

    error = fields.Nested(ApiErrorBodySchema, required=True)


class CouponsApi(Api):  # type: ignore[misc]  # flask-smorest is untyped
    """flask-smorest's ``Api`` documenting the error shape the service really sends: its
    default and per-status error responses (``DEFAULT_ERROR``, ``UNPROCESSABLE_ENTITY``...)
    reference :class:`ApiErrorSchema`, not flask-smorest's ``{code, status, message, errors}``."""

    ERROR_SCHEMA = ApiErrorSchema

    def _init_spec(self, *, extra_plugins: Any = None, **options: Any) -> None:
        # every operation's error statuses and codes (coupons.api.error_responses)
        from coupons.api.error_responses import ErrorResponsesPlugin

        plugins = [*(extra_plugins or ()), ErrorResponsesPlugin()]
        super()._init_spec(extra_plugins=plugins, **options)
        self.register_converter(RowIdConverter, row_id_parameter_schema)


# --------------------------------------------------------------------------- campaigns


class CouponCampaignSchema(Schema):
    """The campaign fields shown beside a coupon (OpenAPI name ``CouponCampaign``)."""

    id = fields.Integer(dump_only=True)
    name = fields.String()
    discount_type = fields.String()
    discount_value = Money()
    currency = fields.String()
    starts_at = fields.AwareDateTime(allow_none=True)
    ends_at = fields.AwareDateTime(allow_none=True)
    min_order_total = Money(minimum="0", allow_none=True)
    is_active = fields.Boolean()


#: Import name kept for other API modules; the class name stays unique in the OpenAPI document.
CampaignSummarySchema = CouponCampaignSchema


class CampaignSchema(Schema):
    """A campaign, as created (input) and as returned (output)."""

    id = fields.Integer(dump_only=True)
    name = fields.String(required=True, validate=validate.Length(min=1, max=200))
    discount_type = fields.String(
        required=True, validate=validate.OneOf([t.value for t in DiscountType])
    )
    discount_value = Money(required=True)
    currency = _currency(required=True)
    starts_at = _when(load_default=None)
    ends_at = _when(_ENDS_AFTER_STARTS, load_default=None)
    max_redemptions = StrictInteger(
        allow_none=True, load_default=None, validate=validate.Range(min=1, max=MAX_INT)
    )
    redemption_count = fields.Integer(dump_only=True)
    per_customer_limit = StrictInteger(
        allow_none=True, load_default=None, validate=validate.Range(min=1, max=MAX_INT)
    )
    min_order_total = Money(minimum="0", allow_none=True, load_default=None)
    is_active = StrictBoolean(load_default=True)
    created_at = fields.AwareDateTime(dump_only=True)
    updated_at = fields.AwareDateTime(dump_only=True)

    @validates_schema
    def _check(self, data: dict[str, Any], **_: Any) -> None:
        if (
            data.get("discount_type") == DiscountType.PERCENT
            and data.get("discount_value") is not None
            and data["discount_value"] > 100
        ):
            raise ValidationError("A percent discount cannot exceed 100.", "discount_value")
        starts_at, ends_at = data.get("starts_at"), data.get("ends_at")
        if starts_at is not None and ends_at is not None and ends_at <= starts_at:
            raise ValidationError("Must be after starts_at.", "ends_at")


class CampaignPatchSchema(Schema):
    """A partial update: only the fields sent change; ``null`` clears an optional field."""

    name = fields.String(validate=validate.Length(min=1, max=200))
    discount_type = fields.String(validate=validate.OneOf([t.value for t in DiscountType]))
    discount_value = Money()
    currency = _currency()
    starts_at = _when()
    ends_at = _when(_ENDS_AFTER_STARTS)
    max_redemptions = StrictInteger(allow_none=True, validate=validate.Range(min=1, max=MAX_INT))
    per_customer_limit = StrictInteger(allow_none=True, validate=validate.Range(min=1, max=MAX_INT))
    min_order_total = Money(minimum="0", allow_none=True)
    is_active = StrictBoolean()


# --------------------------------------------------------------------------- coupons


class CouponSchema(Schema):
    """A code with its usage and its campaign's summary."""

    id = fields.Integer(dump_only=True)
    code = fields.String()
    campaign_id = fields.Integer(dump_only=True)
    max_uses = fields.Integer(allow_none=True)
    use_count = fields.Integer(dump_only=True)
    created_at = fields.AwareDateTime(dump_only=True)
    campaign = fields.Nested(CouponCampaignSchema, dump_only=True)


class CodeCreateSchema(Schema):
    """``POST /campaigns/{id}/codes``: an explicit code (normalized) or none for a random one."""

    code = fields.String(
        load_default=None,
        validate=validate.Regexp(
            CODE_REGEX, error="3 to 64 characters of A-Z, 0-9 and '-' (case-insensitive)."
        ),
        metadata={"example": "SPRING-2025"},
    )
    max_uses = StrictInteger(
        allow_none=True, load_default=None, validate=validate.Range(min=1, max=MAX_INT)
    )


def _id_field(example: str) -> fields.String:
    return fields.String(
        required=True,
        validate=[
            validate.Length(min=1, max=64),
            validate.Regexp(r"\S", error="Must not be blank."),
        ],
        metadata={"example": example},
    )


class ValidateRequestSchema(Schema):
    customer_id = _id_field("cust-42")
    order_total = Money(required=True)


class ValidationResultSchema(Schema):
    """``valid`` with the discount, or ``valid: false`` with ``reason`` (an error code)."""

    valid = fields.Boolean(required=True)
    code = fields.String()
    campaign_id = fields.Integer(allow_none=True)
    order_total = Money()
    discount = Money(minimum="0", allow_none=True)
    currency = fields.String(allow_none=True)
    reason = fields.String(allow_none=True, metadata={"example": "coupon_expired"})
    message = fields.String(allow_none=True)

    @post_dump
    def _drop_empty(self, data: dict[str, Any], **_: Any) -> dict[str, Any]:
        return {name: value for name, value in data.items() if value is not None}


# --------------------------------------------------------------------------- redemptions


class RedeemRequestSchema(Schema):
    code = fields.String(required=True, validate=validate.Length(min=1, max=64))
    customer_id = _id_field("cust-42")
    order_id = _id_field("order-1001")
    order_total = Money(required=True)


class RedemptionSchema(Schema):
    """One ledger row."""

    id = fields.Integer(dump_only=True)
    code = fields.String()
    coupon_id = fields.Integer()
    campaign_id = fields.Integer()
    customer_id = fields.String()
    order_id = fields.String()
    order_total = Money()
    discount_amount = Money(minimum="0")
    currency = fields.String()
    status = fields.String(metadata={"enum": ["redeemed", "rolled_back"]})
    redeemed_at = fields.AwareDateTime()
    rolled_back_at = fields.AwareDateTime(allow_none=True)
