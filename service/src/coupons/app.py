"""The application factory: it only assembles (settings, database, API, CLI).

It runs no migration, opens no connection and reads the environment only when no
settings are given, so tests and gunicorn build apps the same way.
"""

from __future__ import annotations

from flask import Flask, abort, request
from flask_smorest import Api

from coupons.api import register
from coupons.api.common import require_admin, require_admin_token
from coupons.api.lean import NoCookieSession
from coupons.api.schemas import CouponsApi
from coupons.api.signin import (
    ADMIN_PAGE_COOKIE,
    register_sign_in,
    sign_in_redirect,
    wants_sign_in_page,
)
from coupons.appsettings import attach_settings, settings_of
from coupons.config import Settings
from coupons.db import db, install_sqlite_hooks
from coupons.errors import Unauthorized
from pooltender.flask import Pooltender

__all__ = ["ADMIN_PAGE_COOKIE", "create_app", "settings_of"]


def create_app(settings: Settings | None = None) -> Flask:
    """Build the Flask app for ``settings`` (default: read from the environment)."""
    settings = settings or Settings.from_env()
    app = Flask("coupons")
    app.config.update(
        SECRET_KEY=settings.secret_key,
        SQLALCHEMY_DATABASE_URI=settings.database_url,
        SQLALCHEMY_ENGINE_OPTIONS=settings.connect_options(),
        SQLALCHEMY_ECHO=settings.echo,
        API_TITLE="Coupons",
        API_VERSION="v1",
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="openapi.json",
        JSON_SORT_KEYS=False,
    )
    app.config.update(settings.pooltender_config)
    app.session_interface = NoCookieSession()
    attach_settings(app, settings)
    # Pooltender sizes and watches the pool, sheds exhaustion as 503, and calls db.init_app.
    Pooltender(app, db, settings=settings.pool, protect=_require_admin)
    if settings.backend == "sqlite":
        with app.app_context():
            install_sqlite_hooks(db.engine)

    api: Api = CouponsApi(
        app, spec_kwargs={"info": {"description": "Coupon campaigns, codes, redemptions"}}
    )
    register(app, api)
    register_sign_in(app)
    return app


def _require_admin() -> None:
    """Pooltender's stats and dashboard pages are for admins: a bearer token, or the
    :data:`ADMIN_PAGE_COOKIE` holding one (set by the sign-in page, :mod:`coupons.api.signin`).

    A browser without a valid cookie is redirected (302) to the sign-in page; a caller with a
    bearer token or preferring JSON gets the JSON 401, as before.
    """
    cookie = request.cookies.get(ADMIN_PAGE_COOKIE)
    try:
        if cookie and "Authorization" not in request.headers:
            require_admin_token(cookie)
        else:
            require_admin()
    except Unauthorized:
        if wants_sign_in_page():
            abort(sign_in_redirect())
        raise
