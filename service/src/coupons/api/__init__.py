"""HTTP API under ``/api/v1``: one flask-smorest blueprint per resource.

Handlers parse and validate input with marshmallow schemas (the same schemas produce
``/openapi.json``), call one service function, and serialize its result. They hold no
business rules and never pass Flask objects into the service layer.
"""

from __future__ import annotations

from flask import Flask
from flask_smorest import Api

from coupons.api.common import install_error_handlers
from coupons.api.schemas import ROW_ID, RowIdConverter

PREFIX = "/api/v1"


def register(app: Flask, api: Api) -> None:
    """Attach every blueprint and the JSON error handlers to ``app``."""
    from coupons.api import auth, campaigns, codes, coupons, health, listing, redemptions

    app.url_map.converters[ROW_ID] = RowIdConverter
    api.spec.components.security_scheme(
        "bearerAuth", {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
    )
    for module in (health, auth, campaigns, listing, codes, coupons, redemptions):
        api.register_blueprint(module.blp, url_prefix=PREFIX + module.URL_PREFIX)
    health.register_probes(app)
    install_error_handlers(app)
