"""Coupons endpoints."""

from __future__ import annotations

from flask_smorest import Blueprint

URL_PREFIX = ""
blp = Blueprint("coupons", __name__, description="Coupons")
