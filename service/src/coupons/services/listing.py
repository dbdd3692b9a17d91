"""Keyset-paginated lists of campaigns and of coupons, returned as views.

Each page is one SQL statement (see :mod:`coupons.lib.query`): coupons come with their
campaign through an INNER JOIN loaded into the relationship (``contains_eager``), never one
query per coupon. The page is turned into frozen views inside :func:`coupons.db.read`, so
the transaction has ended before the caller serializes anything.
"""

from __future__ import annotations

from typing import Final

from sqlalchemy import ColumnElement, and_, or_, select

from coupons.db import db, read
from coupons.lib.query import Page, join_and_load, keyset_page, where_all, where_equal
from coupons.models import Campaign, Coupon
from coupons.services.views import CampaignView, ListedCoupon

AVAILABLE: Final = "available"
EXHAUSTED: Final = "exhausted"
STATUSES: Final = (AVAILABLE, EXHAUSTED)


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


def list_campaigns(
    *, active: bool | None = None, limit: int | None = None, cursor: str | None = None
) -> Page[CampaignView]:
    """One page of campaigns by id, optionally only those with this active flag."""

    def work() -> Page[CampaignView]:
        stmt = where_equal(select(Campaign), {Campaign.is_active: active})
        page = keyset_page(db.session, stmt, Campaign.id, limit=limit, cursor=cursor)
        return Page([CampaignView.of(c) for c in page.items], page.next_cursor)

    return read(work)


def list_coupons(
    *,
    campaign_id: int | None = None,
    status: str | None = None,
    limit: int | None = None,
    cursor: str | None = None,
) -> Page[ListedCoupon]:
    """One page of coupons by id with their campaign, optionally of one campaign or status."""

    def work() -> Page[ListedCoupon]:
        # One statement per page: the join both filters (status) and fills Coupon.campaign.
        stmt = join_and_load(select(Coupon), Coupon.campaign)
        stmt = where_equal(stmt, {Coupon.campaign_id: campaign_id})
        stmt = where_all(stmt, [_status_filter(status)])
        page = keyset_page(db.session, stmt, Coupon.id, limit=limit, cursor=cursor)
        items = [ListedCoupon.of(c, c.campaign, status=coupon_status(c)) for c in page.items]
        return Page(items, page.next_cursor)

    return read(work)
