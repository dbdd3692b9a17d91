"""Codes endpoints."""

from __future__ import annotations

from flask_smorest import Blueprint

URL_PREFIX = ""
blp = Blueprint("codes", __name__, description="Codes")
