"""Listing endpoints."""

from __future__ import annotations

from flask_smorest import Blueprint

URL_PREFIX = ""
blp = Blueprint("listing", __name__, description="Listing")
