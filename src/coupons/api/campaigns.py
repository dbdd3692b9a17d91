"""Campaigns endpoints."""

from __future__ import annotations

from flask_smorest import Blueprint

URL_PREFIX = "/campaigns"
blp = Blueprint("campaigns", __name__, description="Campaigns")
