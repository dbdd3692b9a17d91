"""What every handler shares: JSON errors, bearer-token roles, the caller's identity."""

from __future__ import annotations

import functools
import json
import logging
import re
import threading
from collections.abc import Callable
from typing import Any, TypeVar, cast

from flask import Flask, Response, current_app, g, jsonify, request
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DataError
from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.middleware.proxy_fix import ProxyFix

from coupons.appsettings import settings_of
from coupons.db import db
from coupons.errors import Forbidden, ServiceError, TooManyRequests, Unauthorized
from coupons.models import Role
from coupons.services.auth import AccountCache, Principal, decode_access_token
from pooltender.failures import describe

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

BEARER: list[dict[str, list[str]]] = [{"bearerAuth": []}]

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "too_many_requests",
    503: "service_unavailable",
}


def error_response(status: int, code: str, message: str, **extra: Any) -> Response:
    """The one error shape: ``{"error": {"code": ..., "message": ..., ...}}``."""
    body: dict[str, Any] = {"code": code, "message": message}
    body.update(extra)
    response = jsonify({"error": body})
    response.status_code = status
    return response


def _validation_message(messages: Any) -> tuple[str, Any]:
    """webargs puts field errors under a location key (json, query, ...); flatten it."""
    fields: Any = messages
    if isinstance(messages, dict) and len(messages) == 1:
        (fields,) = messages.values()
    if isinstance(fields, dict) and fields:
        name, problems = next(iter(sorted(fields.items())))
        text = problems[0] if isinstance(problems, list) and problems else str(problems)
        if isinstance(text, dict):
            text = "invalid value"
        return f"{name}: {text}", fields
    return "the request body is not valid", fields


#: Largest request body accepted (413 above): the biggest legitimate body is a campaign,
#: well under 2 KiB; 64 KiB bounds the work a hostile body can cause before it is parsed.
MAX_BODY_BYTES = 64 * 1024
#: Deepest JSON nesting accepted (400 above). Python's json module recurses per level, so
#: ``[`` x 100,000 raised RecursionError (a 500) in every route; no body here nests past 3.
MAX_JSON_DEPTH = 32
#: Characters refused in every string of a body or query: C0 controls (NUL, CR, LF, tab...),
#: DEL, and lone UTF-16 surrogates (``"\ud800"`` parses to a str no driver can encode).
_REFUSED_CHARS = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = re.compile(rb"[\[\]{}]")


def json_depth_exceeds(body: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when ``body`` nests arrays/objects deeper than ``limit``, without parsing it.

    Cheap for ordinary bodies: unless it holds more than ``limit`` opening brackets at all,
    it cannot nest deeper. Otherwise the strings are blanked out and the brackets counted.
    """
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    depth = 0
    for match in _BRACKETS.finditer(_JSON_STRING.sub(b'""', body)):
        if match.group() in (b"[", b"{"):
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def _refused_string(value: Any, path: str) -> tuple[str, str] | None:
    """The first string under ``value`` holding a refused character: (field path, why)."""
    if isinstance(value, str):
        found = _REFUSED_CHARS.search(value)
        if found is None:
            return None
        char = found.group()
        why = (
            "Must not contain a lone UTF-16 surrogate."
            if "\ud800" <= char <= "\udfff"
            else f"Must not contain control characters (found U+{ord(char):04X})."
        )
        return path or "body", why
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            found_key = _refused_string(key, where)
            if found_key is not None:
                return found_key
            found_item = _refused_string(item, where)
            if found_item is not None:
                return found_item
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found_item = _refused_string(item, f"{path}.{index}" if path else str(index))
            if found_item is not None:
                return found_item
    return None


#: environ key of the request's JSON body as :func:`_guard_input` parsed it (set only for a
#: JSON request whose body decoded as UTF-8 and parsed): :func:`coupons.api.lean.json_body`
#: loads it instead of parsing the body a second time.
PARSED_JSON_KEY = "coupons.parsed_json"


def _guard_input() -> Response | None:
    """Refuse hostile input before any handler parses it (see :func:`install_input_guard`)."""
    path = request.path
    if not path.isascii() and any(not ch.isascii() and ch.isdigit() for ch in path):
        # Werkzeug's int converter matches any Unicode digit (Arabic-Indic one, U+0661, in
        # /campaigns/<id> reached campaign 1): the answer of a URL no route matches
        return error_response(404, _HTTP_CODES[404], "no such resource")
    for name, value in request.args.items(multi=True):
        refused = _refused_string(value, name)
        if refused is not None:
            return error_response(422, "validation_error", f"{refused[0]}: {refused[1]}")
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        return error_response(
            413, "payload_too_large", f"the request body exceeds {MAX_BODY_BYTES} bytes"
        )
    if not request.is_json:
        return None
    body = request.get_data(cache=True)  # bounded by MAX_CONTENT_LENGTH
    if not body:
        return None
    if json_depth_exceeds(body):
        return error_response(
            400, "bad_request", f"the JSON body nests deeper than {MAX_JSON_DEPTH} levels"
        )
    try:
        parsed = json.loads(body.decode("utf-8"))  # as webargs decodes it (core.parse_json)
    except ValueError:  # UnicodeDecodeError too
        return None  # webargs answers malformed JSON with its own 400
    refused = _refused_string(parsed, "")
    if refused is not None:
        return error_response(
            422,
            "validation_error",
            f"{refused[0]}: {refused[1]}",
            fields={refused[0]: [refused[1]]},
        )
    request.environ[PARSED_JSON_KEY] = parsed  # the lean routes load this, not the body again
    return None


def install_input_guard(app: Flask) -> None:
    """One input layer in front of every route, before its schema runs.

    * bodies above :data:`MAX_BODY_BYTES` are 413 (``MAX_CONTENT_LENGTH``, also enforced by
      Werkzeug while reading a body sent without a length);
    * JSON nested deeper than :data:`MAX_JSON_DEPTH` is 400, checked before parsing;
    * a string anywhere in the JSON body or the query with a control character or a lone
      surrogate is 422 ``validation_error`` naming the field;
    * a path holding non-ASCII digits is 404.

    The field rules (strict integers and booleans, money pattern, ranges, datetime bounds)
    are the schemas' (:mod:`coupons.api.schemas`).
    """
    if app.config.get("MAX_CONTENT_LENGTH") is None:
        app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.before_request(_guard_input)


def install_trusted_proxies(app: Flask) -> None:
    """Behind ``COUPONS_TRUSTED_PROXIES`` proxies, take the client address from
    X-Forwarded-For that many hops back (Werkzeug's ProxyFix); with 0 (the default) the
    header is ignored, since any client can send it."""
    hops = settings_of(app).trusted_proxies
    if hops and not isinstance(app.wsgi_app, ProxyFix):
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops)  # type: ignore[method-assign]


def install_error_handlers(app: Flask) -> None:
    """Map service errors and HTTP errors to the JSON error shape; guard the input; read the
    client address through the trusted proxies."""
    install_input_guard(app)
    install_trusted_proxies(app)

    @app.errorhandler(ServiceError)
    def _service_error(exc: ServiceError) -> Response:
        response = error_response(exc.status, exc.code, exc.message, **exc.details)
        if isinstance(exc, TooManyRequests):
            response.headers["Retry-After"] = str(exc.retry_after)
        return response

    @app.errorhandler(DataError)
    def _data_error(exc: DataError) -> Response:
        # Safety net behind the schemas: a value the column cannot hold (MariaDB 1264,
        # PostgreSQL 22003) is the request's fault, and its transaction rolled back.
        log.warning(
            "%s %s answered 422: the database refused a value: %s",
            request.method,
            request.path,
            describe(exc),
        )
        return error_response(
            422, "validation_error", "a value is out of the range the service can store"
        )

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        data = getattr(exc, "data", None) or {}
        if status == 422 and "messages" in data:
            message, fields = _validation_message(data["messages"])
            return error_response(422, "validation_error", message, fields=fields)
        if status >= 500 and status != 503:
            # Flask's InternalServerError for an error a handler re-raised (pooltender's
            # database handler re-raises what is not an outage): already logged by Flask.
            return error_response(status, "internal_error", "an unexpected error occurred")
        code = _HTTP_CODES.get(status, "http_error")
        message = exc.description or exc.name
        response = error_response(status, code, message)
        if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
            response.headers["Allow"] = ", ".join(exc.valid_methods)  # RFC 9110 15.5.6
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "internal_error", "an unexpected error occurred")


def _bearer_token() -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized(
            "send an access token as 'Authorization: Bearer <token>'", code="missing_token"
        )
    return token.strip()


def current_principal() -> Principal:
    """The authenticated caller of this request (after :func:`require_role`)."""
    principal = g.get("principal")
    if principal is None:
        raise Unauthorized("authentication required", code="missing_token")
    return cast(Principal, principal)


_ACCOUNTS_LOCK = threading.Lock()


def account_cache() -> AccountCache:
    """This app's :class:`~coupons.services.auth.AccountCache` (one per app per process)."""
    app = current_app
    cache: AccountCache | None = app.extensions.get("coupons.accounts")
    if cache is None:
        with _ACCOUNTS_LOCK:
            cache = app.extensions.get("coupons.accounts")
            if cache is None:
                settings = settings_of(app)
                url = make_url(settings.database_url)
                memory = url.get_backend_name() == "sqlite" and url.database in (
                    None,
                    "",
                    ":memory:",
                )
                # an in-memory SQLite database exists only behind the app's own engine
                cache = AccountCache(settings, db.engine if memory else None)
                app.extensions["coupons.accounts"] = cache
    return cache


def authenticate() -> Principal:
    """Decode the bearer token of this request and check it against the account cache
    (no database access, except the cache's refresh at most once a second)."""
    settings = settings_of(current_app)
    principal = decode_access_token(_bearer_token(), settings.secret_key)
    account_cache().check(principal)
    g.principal = principal
    return principal


def require_admin() -> Principal:
    """Authenticate this request and refuse anyone but an admin (403)."""
    return _admin_only(authenticate())


def require_admin_token(token: str) -> Principal:
    """Like :func:`require_admin` for a token that did not come in the Authorization header."""
    principal = decode_access_token(token, settings_of(current_app).secret_key)
    account_cache().check(principal)
    g.principal = principal
    return _admin_only(principal)


def _admin_only(principal: Principal) -> Principal:
    if principal.role != Role.ADMIN:
        raise Forbidden("this page needs the admin role")
    return principal


def require_role(*roles: Role) -> Callable[[F], F]:
    """Allow the caller in when its role is one of ``roles``; admins are always allowed."""

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            principal = authenticate()
            if principal.role != Role.ADMIN and principal.role not in roles:
                raise Forbidden(f"this action needs the {' or '.join(roles)} role")
            return view(*args, **kwargs)

        return cast(F, wrapper)

    return decorate


def client_address() -> str:
    """The caller's address: the peer, or the X-Forwarded-For entry ``COUPONS_TRUSTED_PROXIES``
    hops back when proxies are trusted (:func:`install_trusted_proxies`)."""
    return request.remote_addr or "unknown"
