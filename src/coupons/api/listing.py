"""List endpoints: ``GET /campaigns`` and ``GET /coupons``, keyset-paginated.

Both answer ``{"items": [...], "next_cursor": "<opaque>" | null}``; pass ``next_cursor``
back as ``cursor`` for the next page. Each page is one SQL statement (see
:mod:`coupons.lib.query`): coupons come with their campaign through an INNER JOIN loaded
into the relationship (``contains_eager``), never one query per coupon.
"""

from __future__ import annotations

from typing import Any

from flask_smorest import Blueprint
from marshmallow import Schema, fields, validate
from sqlalchemy import ColumnElement, and_, or_, select

from coupons.api.common import BEARER, require_role
from coupons.db import db
from coupons.lib.query import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    join_and_load,
    keyset_page,
    where_all,
    where_equal,
)
from coupons.models import Campaign, Coupon, Role

URL_PREFIX = ""
blp = Blueprint("listing", __name__, description="Listing campaigns and coupons")

AVAILABLE = "available"
EXHAUSTED = "exhausted"

_LIST_ERRORS = {
    "400": {"description": "invalid_cursor: the cursor was not returned by this API"},
    "401": {"description": "missing or invalid access token"},
    "403": {"description": "the caller's role may not list"},
    "422": {"description": "validation_error: a query parameter is out of range"},
}


class KeysetQuerySchema(Schema):
    limit = fields.Integer(
        load_default=DEFAULT_LIMIT,
        validate=validate.Range(min=1, max=MAX_LIMIT),
        metadata={"description": f"page size, 1..{MAX_LIMIT}"},
    )
    cursor = fields.String(
        load_default=None, metadata={"description": "next_cursor of the previous page"}
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


class CampaignListItemSchema(Schema):
    id = fields.Integer()
    name = fields.String()
    discount_type = fields.String()
    discount_value = fields.Decimal(as_string=True, places=2)
    currency = fields.String()
    starts_at = fields.DateTime(allow_none=True)
    ends_at = fields.DateTime(allow_none=True)
    max_redemptions = fields.Integer(allow_none=True)
    redemption_count = fields.Integer()
    per_customer_limit = fields.Integer(allow_none=True)
    min_order_total = fields.Decimal(as_string=True, places=2, allow_none=True)
    is_active = fields.Boolean()
    created_at = fields.DateTime()
    updated_at = fields.DateTime()


class CouponListCampaignSchema(Schema):
    id = fields.Integer()
    name = fields.String()
    discount_type = fields.String()
    discount_value = fields.Decimal(as_string=True, places=2)
    currency = fields.String()


class CouponListItemSchema(Schema):
    id = fields.Integer()
    code = fields.String()
    campaign_id = fields.Integer()
    max_uses = fields.Integer(allow_none=True)
    use_count = fields.Integer()
    status = fields.Method("_status", metadata={"enum": [AVAILABLE, EXHAUSTED]})
    created_at = fields.DateTime()
    campaign = fields.Nested(CouponListCampaignSchema)

    def _status(self, coupon: Coupon) -> str:
        return coupon_status(coupon)


class CampaignPageSchema(Schema):
    items = fields.List(fields.Nested(CampaignListItemSchema))
    next_cursor = fields.String(allow_none=True)


class CouponPageSchema(Schema):
    items = fields.List(fields.Nested(CouponListItemSchema))
    next_cursor = fields.String(allow_none=True)


def coupon_status(coupon: Coupon) -> str:
    """``exhausted`` when the code's own uses or its campaign's cap are used up."""
    campaign = coupon.campaign
    if coupon.max_uses is not None and coupon.use_count >= coupon.max_uses:
        return EXHAUSTED
    if campaign.max_redemptions is not None and (
        campaign.redemption_count >= campaign.max_redemptions
    ):
        return EXHAUSTED
    return AVAILABLE


def _status_filter(status: str | None) -> ColumnElement[bool] | None:
    """The SQL twin of :func:`coupon_status` (needs ``campaigns`` joined)."""
    if status is None:
        return None
    code_left = or_(Coupon.max_uses.is_(None), Coupon.use_count < Coupon.max_uses)
    campaign_left = or_(
        Campaign.max_redemptions.is_(None), Campaign.redemption_count < Campaign.max_redemptions
    )
    available = and_(code_left, campaign_left)
    return available if status == AVAILABLE else ~available


@blp.route("/campaigns")
@require_role(Role.SERVICE)
@blp.arguments(CampaignListQuerySchema, location="query")
@blp.response(200, CampaignPageSchema)
@blp.doc(summary="List campaigns (keyset pagination)", security=BEARER, responses=_LIST_ERRORS)
def list_campaigns(args: dict[str, Any]) -> dict[str, Any]:
    stmt = where_equal(select(Campaign), {Campaign.is_active: args["active"]})
    page = keyset_page(db.session, stmt, Campaign.id, limit=args["limit"], cursor=args["cursor"])
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
    # One statement per page: the join both filters (status) and fills Coupon.campaign.
    stmt = join_and_load(select(Coupon), Coupon.campaign)
    stmt = where_equal(stmt, {Coupon.campaign_id: args["campaign_id"]})
    stmt = where_all(stmt, [_status_filter(args["status"])])
    page = keyset_page(db.session, stmt, Coupon.id, limit=args["limit"], cursor=args["cursor"])
    return {"items": page.items, "next_cursor": page.next_cursor}
