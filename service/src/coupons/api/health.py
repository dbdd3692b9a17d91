"""Liveness and readiness probes."""

from __future__ import annotations

from typing import Any

from flask import Flask
from flask_smorest import Blueprint
from marshmallow import Schema, fields
from sqlalchemy import text

from coupons.api.common import error_response
from coupons.db import db

URL_PREFIX = ""
blp = Blueprint("health", __name__, description="Liveness and readiness probes")


class ProbeSchema(Schema):
    status = fields.String(required=True, metadata={"enum": ["ok"]})
    database = fields.String(metadata={"enum": ["ok"], "description": "readyz only"})


def _alive() -> dict[str, Any]:
    return {"status": "ok"}


def _ready() -> Any:
    try:
        db.session.execute(text("SELECT 1"))
    except Exception:
        return error_response(503, "database_unavailable", "the database is not reachable")
    finally:
        db.session.rollback()
    return {"status": "ok", "database": "ok"}


@blp.route("/healthz")
@blp.response(200, ProbeSchema)
@blp.doc(summary="The process is alive (no database access)")
def healthz() -> dict[str, Any]:
    return _alive()


@blp.route("/readyz")
@blp.response(200, ProbeSchema)
@blp.doc(summary="The database is reachable", responses={"503": {"description": "not ready"}})
def readyz() -> Any:
    return _ready()


def register_probes(app: Flask) -> None:
    """Also answer the probes at the root, where orchestrators look for them."""
    app.add_url_rule("/healthz", "healthz", _alive)
    app.add_url_rule("/readyz", "readyz", _ready)
