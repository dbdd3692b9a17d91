"""Redemptions endpoints."""

from __future__ import annotations

from flask_smorest import Blueprint

URL_PREFIX = ""
blp = Blueprint("redemptions", __name__, description="Redemptions")
