"""The admins' sign-in page for pooltender's pages: a form, a cookie, a redirect.

``GET /admin/sign-in`` shows an email/password form; ``POST`` checks them with
:func:`coupons.services.auth.login` (argon2, the login throttle: the same attempts are
counted as on ``POST /auth/login``) and, for an admin, sets :data:`ADMIN_PAGE_COOKIE` to the
access token login issued and redirects (303) to the dashboard. The refresh token login also
issues is not handed out (a browser has no use for it here); its row expires with
``REFRESH_TOKEN_TTL``, and it ties the cookie's token to a family a logout can revoke.

The cookie is HttpOnly, ``SameSite=Strict``, ``Secure`` outside development, lives as long as
the access token (``ACCESS_TOKEN_TTL``) and is sent only to pooltender's pages (its path is the
pages' common prefix, ``/pooltender`` by default): the API never reads it, so it cannot be used
to forge API calls (the pages only answer GET).

A browser that opens a guarded page without a valid cookie is redirected (302) here instead of
reading a JSON 401: see :func:`sign_in_redirect`. API clients (a bearer token, or an ``Accept``
that prefers JSON over HTML, such as the dashboard's own polling) keep the JSON error.

The page is server-rendered (``templates/coupons/sign_in.html``), needs no script, and a POST
from another site is refused (``Origin`` / ``Sec-Fetch-Site``), so no page elsewhere can sign
a browser in behind its user's back. Passwords are never logged nor echoed back in the form.
"""

from __future__ import annotations

import posixpath
from typing import Final
from urllib.parse import urlsplit

from flask import Blueprint, Flask, Response, current_app, redirect, render_template, request
from flask import url_for as flask_url_for
from werkzeug.routing import BuildError
from werkzeug.wrappers import Response as BaseResponse

from coupons.api.common import client_address
from coupons.appsettings import settings_of
from coupons.errors import TooManyRequests, Unauthorized
from coupons.models import Role
from coupons.services import auth as service

#: Cookie that carries an admin access token to pooltender's read-only pages, so a browser
#: can open the dashboard (those pages only answer GET; the API never reads this cookie).
ADMIN_PAGE_COOKIE: Final = "coupons_admin_token"
SIGN_IN_PATH: Final = "/admin/sign-in"
_MAX_EMAIL_INPUT: Final = 320  # what POST /auth/login accepts; the service normalizes it

blp = Blueprint("coupons_sign_in", __name__, template_folder="../templates")

_PAGE_HEADERS: Final = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}


def _url(endpoint: str) -> str | None:
    try:
        return flask_url_for(endpoint)
    except BuildError:
        return None


def dashboard_url() -> str | None:
    """Where the dashboard is mounted (``POOLTENDER_DASHBOARD_PATH``), if it is on."""
    return _url("pooltender_dashboard.page")


def pages_path() -> str:
    """The cookie's path: the common prefix of pooltender's pages (dashboard, stats), or the
    dashboard's own path when they share none."""
    paths = [p.rstrip("/") for p in (dashboard_url(), _url("pooltender_stats")) if p]
    if not paths:
        return "/pooltender"
    common = posixpath.commonpath(paths)
    return common if common != "/" else paths[0]


def _safe_next(target: str | None) -> str | None:
    """``target`` if it is a local path under :func:`pages_path` (no open redirect)."""
    if not target:
        return None
    parts = urlsplit(target)
    base = pages_path()
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return None
    if parts.path != base and not parts.path.startswith(base.rstrip("/") + "/"):
        return None
    return target


def _landing(target: str | None) -> str:
    return _safe_next(target) or dashboard_url() or _url("pooltender_stats") or "/"


def wants_sign_in_page() -> bool:
    """True for a browser opening a guarded page: a GET without an Authorization header whose
    ``Accept`` prefers HTML to JSON, on a path the cookie is sent to (so the round trip ends)."""
    if request.method != "GET" or "Authorization" in request.headers:
        return False
    if request.accept_mimetypes.best_match(["application/json", "text/html"]) != "text/html":
        return False
    base = pages_path()
    return request.path == base or request.path.startswith(base.rstrip("/") + "/")


def sign_in_redirect() -> BaseResponse:
    """302 to the sign-in page, coming back here afterwards; a stale cookie is dropped."""
    here = request.full_path.rstrip("?")
    response = redirect(flask_url_for("coupons_sign_in.page", next=here), code=302)
    if ADMIN_PAGE_COOKIE in request.cookies:
        response.delete_cookie(ADMIN_PAGE_COOKIE, path=pages_path())
    return response


def _render(status: int, *, message: str | None = None, email: str = "") -> Response:
    html = render_template(
        "coupons/sign_in.html",
        message=message,
        email=email,
        next=_safe_next(request.values.get("next")) or "",
        action=flask_url_for("coupons_sign_in.page"),
    )
    return Response(html, status=status, mimetype="text/html", headers=_PAGE_HEADERS)


def _cross_site() -> bool:
    """A form posted from another site: Fetch Metadata's ``Sec-Fetch-Site`` when the browser
    sends it (all current ones do), else the ``Origin`` header (RFC 6454) against this host.
    An opaque ``Origin: null`` (privacy settings) is not taken as evidence either way."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None:
        return site not in ("same-origin", "none")
    origin = request.headers.get("Origin")
    if origin is None or origin == "null":
        return False
    return origin.rstrip("/") != request.host_url.rstrip("/")


@blp.get(SIGN_IN_PATH)
def page() -> Response:
    return _render(200)


@blp.post(SIGN_IN_PATH)
def sign_in() -> BaseResponse:
    if _cross_site():
        return _render(403, message="This form can only be sent from this site's own page.")
    email = request.form.get("email", "").strip()
    password = request.form.get("password", "")
    shown_email = email[:_MAX_EMAIL_INPUT]
    if not email or not password:
        return _render(200, message="Enter your email and password.", email=shown_email)
    if len(email) > _MAX_EMAIL_INPUT or len(password) > service.MAX_PASSWORD_LENGTH:
        return _render(200, message="The email or password is not correct.", email=shown_email)
    settings = settings_of(current_app)
    try:
        tokens = service.login(email, password, client_address(), settings)
    except Unauthorized:
        return _render(200, message="The email or password is not correct.", email=shown_email)
    except TooManyRequests as exc:
        response = _render(
            429,
            message=f"Too many failed sign-ins; try again in {exc.retry_after} s.",
            email=shown_email,
        )
        response.headers["Retry-After"] = str(exc.retry_after)
        return response
    principal = service.decode_access_token(tokens.access_token, settings.secret_key)
    if principal.role != Role.ADMIN:
        return _render(403, message="These pages are for admins only.", email=shown_email)
    landing = redirect(_landing(request.form.get("next")), code=303)
    landing.set_cookie(
        ADMIN_PAGE_COOKIE,
        tokens.access_token,
        max_age=tokens.expires_in,
        path=pages_path(),
        secure=settings.environment != "development",
        httponly=True,
        samesite="Strict",
    )
    landing.headers["Cache-Control"] = "no-store"
    return landing


def register_sign_in(app: Flask) -> None:
    """Serve the sign-in page on ``app`` (outside ``/api/v1`` and the OpenAPI document)."""
    app.register_blueprint(blp)
