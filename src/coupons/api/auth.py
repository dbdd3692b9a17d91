"""Auth endpoints."""

from __future__ import annotations

from flask_smorest import Blueprint

URL_PREFIX = ""
blp = Blueprint("auth", __name__, description="Auth")
