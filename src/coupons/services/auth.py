"""Users, passwords and tokens.

Access tokens are short-lived JWTs (HS256) that carry the user's id and role, so checking
one costs no database connection. Refresh tokens are random, stored only as SHA-256
hashes, and rotate on every use.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import jwt

from coupons.errors import Unauthorized

ISSUER = "coupons"


@dataclass(frozen=True)
class Principal:
    """Who is calling: from a verified access token."""

    user_id: int
    email: str
    role: str


def issue_access_token(principal: Principal, secret: str, ttl: int) -> str:
    now = dt.datetime.now(dt.UTC)
    claims = {
        "sub": str(principal.user_id),
        "email": principal.email,
        "role": principal.role,
        "iss": ISSUER,
        "iat": now,
        "exp": now + dt.timedelta(seconds=ttl),
        "typ": "access",
    }
    return jwt.encode(claims, secret, algorithm="HS256")


def decode_access_token(token: str, secret: str) -> Principal:
    """Verify an access token; raise :class:`Unauthorized` with the reason otherwise."""
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=["HS256"],
            issuer=ISSUER,
            options={"require": ["exp", "sub", "iss"]},
        )
    except jwt.ExpiredSignatureError:
        raise Unauthorized("the access token has expired", code="token_expired") from None
    except jwt.InvalidTokenError:
        raise Unauthorized("the access token is not valid", code="invalid_token") from None
    if claims.get("typ") != "access":
        raise Unauthorized("the access token is not valid", code="invalid_token")
    return Principal(user_id=int(claims["sub"]), email=claims["email"], role=claims["role"])
