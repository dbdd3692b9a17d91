"""Auth endpoints: login, token refresh, logout, the caller's identity, and user creation.

Each handler validates its body with a marshmallow schema (the same schema documents the
route in ``/openapi.json``), calls one function of :mod:`coupons.services.auth` with plain
values, and serializes the result. Errors are :mod:`coupons.errors` exceptions, turned
into the JSON error shape centrally. Passwords are ``load_only`` and tokens are never
logged.
"""

from __future__ import annotations

from typing import Any

from flask import Response, current_app
from flask_smorest import Blueprint
from marshmallow import Schema, fields, validate

from coupons.api.common import BEARER, client_address, current_principal, require_role
from coupons.appsettings import settings_of
from coupons.models import Role
from coupons.services import auth as service

URL_PREFIX = ""
blp = Blueprint("auth", __name__, description="Login, tokens and users")

_ROLES = [role.value for role in Role]


class NormalizedEmail(fields.Email):
    """An email address, stripped and lower-cased before it is validated and used."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        text = super()._deserialize(value, attr, data, **kwargs)
        return service.normalize_email(text)


class LoginSchema(Schema):
    email = fields.String(
        required=True,
        validate=validate.Length(min=1, max=320),
        metadata={"description": "The account's email address (case-insensitive)."},
    )
    password = fields.String(
        required=True,
        load_only=True,
        validate=validate.Length(min=1, max=service.MAX_PASSWORD_LENGTH),
    )


class TokenSchema(Schema):
    access_token = fields.String(
        required=True, metadata={"description": "JWT for 'Authorization: Bearer'."}
    )
    token_type = fields.String(required=True, metadata={"example": service.TOKEN_TYPE})
    expires_in = fields.Integer(
        required=True, metadata={"description": "Seconds until the access token expires."}
    )
    refresh_token = fields.String(
        required=True,
        metadata={"description": "Single-use token for POST /auth/refresh; store it securely."},
    )


class RefreshTokenSchema(Schema):
    refresh_token = fields.String(required=True, validate=validate.Length(min=1, max=512))


class UserSchema(Schema):
    id = fields.Integer(dump_only=True)
    email = fields.String(dump_only=True)
    role = fields.String(dump_only=True, metadata={"enum": _ROLES})
    created_at = fields.DateTime(dump_only=True)


class MeSchema(Schema):
    id = fields.Integer(dump_only=True)
    email = fields.String(dump_only=True)
    role = fields.String(dump_only=True, metadata={"enum": _ROLES})


class UserCreateSchema(Schema):
    email = NormalizedEmail(required=True, validate=validate.Length(max=service.MAX_EMAIL_LENGTH))
    password = fields.String(
        required=True,
        load_only=True,
        validate=validate.Length(min=service.MIN_PASSWORD_LENGTH, max=service.MAX_PASSWORD_LENGTH),
    )
    role = fields.String(required=True, validate=validate.OneOf(_ROLES))


@blp.route("/auth/login", methods=["POST"])
@blp.arguments(LoginSchema)
@blp.response(200, TokenSchema)
@blp.alt_response(401, description="invalid_credentials: wrong email or password")
@blp.alt_response(
    429,
    description="too_many_attempts: the account or client address is locked out; "
    "see the Retry-After header",
)
@blp.doc(summary="Exchange email and password for an access and a refresh token")
def login(body: dict[str, Any]) -> service.TokenPair:
    return service.login(
        body["email"], body["password"], client_address(), settings_of(current_app)
    )


@blp.route("/auth/refresh", methods=["POST"])
@blp.arguments(RefreshTokenSchema)
@blp.response(200, TokenSchema)
@blp.alt_response(
    401,
    description="invalid_refresh_token (unknown or expired) or refresh_token_reused "
    "(already rotated: the whole token family is revoked)",
)
@blp.doc(summary="Rotate a refresh token: a new access token and a new refresh token")
def refresh(body: dict[str, Any]) -> service.TokenPair:
    return service.refresh(body["refresh_token"], settings_of(current_app))


@blp.route("/auth/logout", methods=["POST"])
@require_role(Role.ADMIN, Role.SERVICE)
@blp.arguments(RefreshTokenSchema)
@blp.response(204)
@blp.alt_response(401, description="missing, invalid or expired access token")
@blp.doc(
    summary="Revoke the caller's refresh token and every token rotated from it",
    security=BEARER,
)
def logout(body: dict[str, Any]) -> Response:
    service.logout(current_principal().user_id, body["refresh_token"])
    return Response(status=204)


@blp.route("/auth/me", methods=["GET"])
@require_role(Role.ADMIN, Role.SERVICE)
@blp.response(200, MeSchema)
@blp.alt_response(401, description="missing, invalid or expired token, or user disabled")
@blp.doc(summary="The authenticated user", security=BEARER)
def me() -> service.UserInfo:
    return service.get_user(current_principal().user_id)


@blp.route("/users", methods=["POST"])
@require_role(Role.ADMIN)
@blp.arguments(UserCreateSchema)
@blp.response(201, UserSchema)
@blp.alt_response(401, description="missing, invalid or expired access token")
@blp.alt_response(403, description="forbidden: the admin role is required")
@blp.alt_response(409, description="email_taken: a user with this email exists")
@blp.doc(summary="Create a user (admin only)", security=BEARER)
def create_user(body: dict[str, Any]) -> service.UserInfo:
    return service.create_user(body["email"], body["password"], body["role"])
