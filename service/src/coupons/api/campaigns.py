"""Campaigns endpoints: create, read and update campaigns; add one code to a campaign.

``GET /campaigns`` (the list) lives in :mod:`coupons.api.listing`; bulk code generation in
:mod:`coupons.api.codes`.
"""

from __future__ import annotations

from typing import Any

from flask_smorest import Blueprint

from coupons.api.common import BEARER, require_role
from coupons.api.schemas import (
    ROW_ID,
    ApiErrorSchema,
    CampaignPatchSchema,
    CampaignSchema,
    CodeCreateSchema,
    CouponSchema,
)
from coupons.models import Role
from coupons.services import coupon as service

URL_PREFIX = ""
blp = Blueprint("campaigns", __name__, description="Campaigns")


@blp.route("/campaigns", methods=["POST"])
@require_role(Role.ADMIN)
@blp.arguments(CampaignSchema)
@blp.response(201, CampaignSchema)
@blp.alt_response(422, schema=ApiErrorSchema, description="invalid campaign values")
@blp.doc(security=BEARER, summary="Create a campaign (admin)")
def create_campaign(data: dict[str, Any]) -> service.CampaignView:
    return service.create_campaign(**data)


@blp.route(f"/campaigns/<{ROW_ID}:campaign_id>", methods=["GET"])
@require_role(Role.SERVICE)
@blp.response(200, CampaignSchema)
@blp.alt_response(404, schema=ApiErrorSchema, description="campaign_not_found")
@blp.doc(security=BEARER, summary="Read a campaign (service or admin)")
def get_campaign(campaign_id: int) -> service.CampaignView:
    return service.get_campaign(campaign_id)


@blp.route(f"/campaigns/<{ROW_ID}:campaign_id>", methods=["PATCH"])
@require_role(Role.ADMIN)
@blp.arguments(CampaignPatchSchema)
@blp.response(200, CampaignSchema)
@blp.alt_response(404, schema=ApiErrorSchema, description="campaign_not_found")
@blp.alt_response(
    409,
    schema=ApiErrorSchema,
    description="max_redemptions_below_count: the cap is below the count",
)
@blp.alt_response(422, schema=ApiErrorSchema, description="the merged campaign is not valid")
@blp.doc(security=BEARER, summary="Change some fields of a campaign (admin)")
def update_campaign(changes: dict[str, Any], campaign_id: int) -> service.CampaignView:
    return service.update_campaign(campaign_id, changes)


@blp.route(f"/campaigns/<{ROW_ID}:campaign_id>/codes", methods=["POST"])
@require_role(Role.ADMIN)
@blp.arguments(CodeCreateSchema)
@blp.response(201, CouponSchema)
@blp.alt_response(404, schema=ApiErrorSchema, description="campaign_not_found")
@blp.alt_response(409, schema=ApiErrorSchema, description="code_taken")
@blp.doc(security=BEARER, summary="Add one code, explicit or random, to a campaign (admin)")
def create_code(data: dict[str, Any], campaign_id: int) -> service.CouponView:
    return service.create_code(campaign_id, code=data["code"], max_uses=data["max_uses"])
