"""Campaigns endpoints."""

from __future__ import annotations

from flask_smorest import Blueprint

URL_PREFIX = ""
blp = Blueprint("campaigns", __name__, description="Campaigns")
