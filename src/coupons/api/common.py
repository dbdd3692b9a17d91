"""What every handler shares: JSON errors, bearer-token roles, the caller's identity."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar, cast

from flask import Flask, Response, current_app, g, jsonify, request
from werkzeug.exceptions import HTTPException

from coupons.appsettings import settings_of
from coupons.errors import Forbidden, ServiceError, TooManyRequests, Unauthorized
from coupons.models import Role
from coupons.services.auth import Principal, decode_access_token

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


def install_error_handlers(app: Flask) -> None:
    """Map service errors and HTTP errors to the JSON error shape."""

    @app.errorhandler(ServiceError)
    def _service_error(exc: ServiceError) -> Response:
        response = error_response(exc.status, exc.code, exc.message, **exc.details)
        if isinstance(exc, TooManyRequests):
            response.headers["Retry-After"] = str(exc.retry_after)
        return response

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        data = getattr(exc, "data", None) or {}
        if status == 422 and "messages" in data:
            message, fields = _validation_message(data["messages"])
            return error_response(422, "validation_error", message, fields=fields)
        code = _HTTP_CODES.get(status, "http_error")
        message = exc.description or exc.name
        return error_response(status, code, message)

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


def authenticate() -> Principal:
    """Decode the bearer token of this request; no database access."""
    settings = settings_of(current_app)
    principal = decode_access_token(_bearer_token(), settings.secret_key)
    g.principal = principal
    return principal


def require_admin() -> Principal:
    """Authenticate this request and refuse anyone but an admin (403)."""
    return _admin_only(authenticate())


def require_admin_token(token: str) -> Principal:
    """Like :func:`require_admin` for a token that did not come in the Authorization header."""
    principal = decode_access_token(token, settings_of(current_app).secret_key)
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
    """The caller's address as the WSGI server saw it (put a proxy fix in front if needed)."""
    return request.remote_addr or "unknown"
