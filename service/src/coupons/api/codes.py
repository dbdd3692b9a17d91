"""Bulk code endpoints: generate N codes for a campaign, export its codes as CSV (admin).

Both call :mod:`coupons.services.codegen`; see there for the transaction, chunking and
space rules. The export streams: the response body is produced page by page after the
view returns, inside ``stream_with_context`` so the app context (and ``db.session``)
lives until the last page, and every page is a short read that returns its connection to
the pool before the page is sent.
"""

from __future__ import annotations

from typing import Any

from flask import Response, stream_with_context
from flask_smorest import Blueprint
from marshmallow import Schema, fields, validate

from coupons.api.common import BEARER, require_role
from coupons.api.schemas import MAX_INT, ROW_ID, StrictInteger
from coupons.services.codegen import (
    DEFAULT_ALPHABET,
    DEFAULT_PATTERN,
    MAX_CODE_LENGTH,
    MAX_COUNT,
    MIN_COUNT,
    SPACE_FACTOR,
    generate_codes,
    open_codes_export,
)

URL_PREFIX = ""
blp = Blueprint("codes", __name__, description="Bulk code generation and export")


class GenerateCodesSchema(Schema):
    count = StrictInteger(
        required=True,
        validate=validate.Range(min=MIN_COUNT, max=MAX_COUNT),
        metadata={"description": f"how many codes, {MIN_COUNT}..{MAX_COUNT}"},
    )
    pattern = fields.String(
        load_default=DEFAULT_PATTERN,
        validate=validate.Length(min=1, max=MAX_CODE_LENGTH),
        metadata={
            "description": "'#' is one random character of "
            f"{DEFAULT_ALPHABET}; A-Z, 0-9 and '-' are literal. The pattern must allow "
            f"at least {SPACE_FACTOR}x as many codes as requested.",
            "example": "SPRING-####-####",
        },
    )
    prefix = fields.String(
        load_default=None,
        validate=validate.Length(max=MAX_CODE_LENGTH),
        metadata={"description": "literal text put before the pattern"},
    )
    max_uses = StrictInteger(
        load_default=None,
        allow_none=True,
        validate=validate.Range(min=1, max=MAX_INT),
        metadata={"description": "uses per code; omitted: only the campaign's limits apply"},
    )


class GeneratedCodesSchema(Schema):
    campaign_id = fields.Integer()
    generated = fields.Integer()
    pattern = fields.String()
    sample = fields.List(fields.String(), metadata={"description": "a few of the new codes"})


@blp.route(f"/campaigns/<{ROW_ID}:campaign_id>/codes/generate", methods=["POST"])
@require_role()
@blp.arguments(GenerateCodesSchema)
@blp.response(201, GeneratedCodesSchema)
@blp.doc(
    summary="Generate codes for a campaign (all or none)",
    security=BEARER,
    responses={
        "401": {"description": "missing or invalid access token"},
        "403": {"description": "admins only"},
        "404": {"description": "campaign_not_found: no such campaign"},
        "422": {
            "description": "validation_error, invalid_pattern, pattern_space_too_small "
            "or pattern_space_exhausted; nothing written"
        },
    },
)
def generate(body: dict[str, Any], campaign_id: int) -> dict[str, Any]:
    result = generate_codes(
        campaign_id,
        body["count"],
        pattern=body["pattern"],
        prefix=body["prefix"],
        max_uses=body["max_uses"],
    )
    return {
        "campaign_id": result.campaign_id,
        "generated": result.generated,
        "pattern": result.pattern,
        "sample": list(result.sample),
    }


@blp.route(f"/campaigns/<{ROW_ID}:campaign_id>/codes.csv")
@require_role()
@blp.doc(
    summary="Export a campaign's codes as CSV (streamed)",
    security=BEARER,
    responses={
        "200": {
            "description": "code,max_uses,use_count,created_at; one row per code, by id",
            "content": {"text/csv": {"schema": {"type": "string"}}},
        },
        "401": {"description": "missing or invalid access token"},
        "403": {"description": "admins only"},
        "404": {"description": "campaign_not_found: no such campaign"},
    },
)
def export_csv(campaign_id: int) -> Response:
    pages = open_codes_export(campaign_id)  # 404 now, before any byte is sent
    return Response(
        stream_with_context(pages),
        mimetype="text/csv",
        headers={
            "Content-Disposition": f'attachment; filename="campaign-{campaign_id}-codes.csv"',
            "Cache-Control": "no-store",
        },
    )
