"""List endpoints: ``GET /campaigns`` and ``GET /coupons``, keyset-paginated.

Both answer ``{"items": [...], "next_cursor": "<opaque>" | null}``; pass ``next_cursor``
back as ``cursor`` for the next page. The pages come from :mod:`coupons.services.listing`
as views (one SQL statement per page, the transaction ended before serialization).
"""

from __future__ import annotations

from typing import Any

from flask_smorest import Blueprint
from marshmallow import Schema, fields, validate

from coupons.api.common import BEARER, require_role
from coupons.api.schemas import Money
from coupons.lib.query import DEFAULT_LIMIT, MAX_LIMIT
from coupons.models import Role
from coupons.services import listing as service
from coupons.services.listing import AVAILABLE, EXHAUSTED
from coupons.services.views import ListedCoupon

URL_PREFIX = ""
blp = Blueprint("listing", __name__, description="Listing campaigns and coupons")

_LIST_ERRORS = {
    "400": {"description": "invalid_cursor: the cursor was not returned by this API"},
    "401": {"description": "missing or invalid access token"},
    "422": {"description": "validation_error: a query parameter is out of range"},
}


class KeysetQuerySchema(Schema):
    limit = fields.Integer(
        load_default=DEFAULT_LIMIT,
        validate=validate.Range(min=1, max=MAX_LIMIT),
        metadata={"description": f"page size, 1..{MAX_LIMIT}"},
    )
    cursor = fields.String(
        load_default=None,
        validate=validate.Length(min=1),  # an empty cursor is not one this API returned
        metadata={"description": "next_cursor of the previous page"},
    )


class CampaignListQuerySchema(KeysetQuerySchema):
    active = fields.Boolean(
        load_default=None, metadata={"description": "only campaigns with this active flag"}
    )


class CouponListQuerySchema(KeysetQuerySchema):
    campaign_id = fields.Integer(
        load_default=None, validate=validate.Range(min=1), metadata={"description": "campaign"}
    )
    status = fields.String(
        load_default=None,
        validate=validate.OneOf([AVAILABLE, EXHAUSTED]),
        metadata={
            "description": "available: uses left on the code and on the campaign cap; "
            "exhausted: either is used up"
        },
    )


class CouponListCampaignSchema(Schema):
    """The campaign fields a listed coupon carries; a listed campaign starts with the same."""

    id = fields.Integer()
    name = fields.String()
    discount_type = fields.String()
    discount_value = Money()
    currency = fields.String()


class CampaignListItemSchema(CouponListCampaignSchema):
    """A listed campaign: the fields of :class:`CouponListCampaignSchema`, then the rest."""

    starts_at = fields.DateTime(allow_none=True)
    ends_at = fields.DateTime(allow_none=True)
    max_redemptions = fields.Integer(allow_none=True)
    redemption_count = fields.Integer()
    per_customer_limit = fields.Integer(allow_none=True)
    min_order_total = Money(minimum="0", allow_none=True)
    is_active = fields.Boolean()
    created_at = fields.DateTime()
    updated_at = fields.DateTime()


class CouponListItemSchema(Schema):
    id = fields.Integer()
    code = fields.String()
    campaign_id = fields.Integer()
    max_uses = fields.Integer(allow_none=True)
    use_count = fields.Integer()
    status = fields.Method("_status", metadata={"enum": [AVAILABLE, EXHAUSTED]})
    created_at = fields.DateTime()
    campaign = fields.Nested(CouponListCampaignSchema)

    def _status(self, coupon: ListedCoupon) -> str:
        return coupon.status


class CampaignPageSchema(Schema):
    items = fields.List(fields.Nested(CampaignListItemSchema))
    next_cursor = fields.String(allow_none=True)


class CouponPageSchema(Schema):
    items = fields.List(fields.Nested(CouponListItemSchema))
    next_cursor = fields.String(allow_none=True)


@blp.route("/campaigns")
@require_role(Role.SERVICE)
@blp.arguments(CampaignListQuerySchema, location="query")
@blp.response(200, CampaignPageSchema)
@blp.doc(summary="List campaigns (keyset pagination)", security=BEARER, responses=_LIST_ERRORS)
def list_campaigns(args: dict[str, Any]) -> dict[str, Any]:
    page = service.list_campaigns(active=args["active"], limit=args["limit"], cursor=args["cursor"])
    return {"items": page.items, "next_cursor": page.next_cursor}


@blp.route("/coupons")
@require_role(Role.SERVICE)
@blp.arguments(CouponListQuerySchema, location="query")
@blp.response(200, CouponPageSchema)
@blp.doc(
    summary="List coupons with their campaign (keyset pagination)",
    security=BEARER,
    responses=_LIST_ERRORS,
)
def list_coupons(args: dict[str, Any]) -> dict[str, Any]:
    page = service.list_coupons(
        campaign_id=args["campaign_id"],
        status=args["status"],
        limit=args["limit"],
        cursor=args["cursor"],
    )
    return {"items": page.items, "next_cursor": page.next_cursor}
