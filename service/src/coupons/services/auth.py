"""Users, passwords and tokens.

Access tokens are short-lived JWTs (HS256) that carry the user's id and role, so checking
one costs no database connection. Refresh tokens are random, stored only as SHA-256
hashes, and rotate on every use; presenting an already-rotated token revokes its whole
family (theft detection, as in OAuth 2.0 Security BCP section 4.14).

Connection discipline (the post-mortem's lesson): argon2id deliberately burns ~20 MiB and
tens of milliseconds per call. Holding a pooled connection across that work turns a login
burst into pool exhaustion, so every function here follows the same three steps:

1. a short read through ``db.session``, ended with ``db.session.rollback()`` so the
   connection goes back to the pool,
2. hashing or verifying with **no** transaction open,
3. the writes in a new transaction through :func:`coupons.db.transaction`.

The password hasher is the module attribute :data:`hasher`; it is looked up at call time,
so tests may replace it (cheaper parameters, or a spy asserting that no connection is
checked out while it runs). Nothing in this module imports Flask: the API layer passes
plain values (email, password, client address, :class:`~coupons.config.Settings`).

No function here logs or returns a password, a refresh token or an access token except
as the intended return value of :func:`login` / :func:`refresh`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import logging
import math
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import jwt
from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from coupons.config import Settings
from coupons.db import db, transaction
from coupons.errors import Conflict, TooManyRequests, Unauthorized, Unprocessable
from coupons.models import LoginThrottle, RefreshToken, Role, User, utcnow
from pooltender.failures import is_retryable_disconnect

log = logging.getLogger(__name__)

T = TypeVar("T")

ISSUER = "coupons"

# OWASP Password Storage Cheat Sheet, argon2id, first recommended configuration.
ARGON2_MEMORY_COST = 19456  # KiB = 19 MiB
ARGON2_TIME_COST = 2
ARGON2_PARALLELISM = 1

MIN_PASSWORD_LENGTH = 12
# An upper bound keeps a single request from feeding megabytes into the hasher.
MAX_PASSWORD_LENGTH = 1024
MAX_EMAIL_LENGTH = 254
_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s.]+(\.[^@\s.]+)+$")

TOKEN_TYPE = "Bearer"  # noqa: S105  (the OAuth token type, not a secret)
_INVALID_CREDENTIALS = "the email or password is not correct"
_MAX_SCOPE_KEY = 300  # login_throttle.scope_key is VARCHAR(300)


def make_hasher() -> PasswordHasher:
    """The production argon2id hasher (OWASP parameters)."""
    return PasswordHasher(
        time_cost=ARGON2_TIME_COST,
        memory_cost=ARGON2_MEMORY_COST,
        parallelism=ARGON2_PARALLELISM,
        hash_len=32,
        salt_len=16,
        type=Type.ID,
    )


#: The hasher every function of this module uses, looked up at call time (replaceable).
hasher: PasswordHasher = make_hasher()

_dummy: tuple[PasswordHasher, str] | None = None


@dataclass(frozen=True)
class Principal:
    """Who is calling: from a verified access token. ``family`` is the refresh-token family
    the token was issued with (None for tokens minted outside login/refresh)."""

    user_id: int
    email: str
    role: str
    family: str | None = None


@dataclass(frozen=True)
class UserInfo:
    """A user as callers may see it (never the password hash)."""

    id: int
    email: str
    role: str
    created_at: dt.datetime


@dataclass(frozen=True)
class TokenPair:
    """What login and refresh return; ``refresh_token`` is shown to the client once."""

    access_token: str
    refresh_token: str
    expires_in: int
    token_type: str = TOKEN_TYPE

    def __repr__(self) -> str:  # keep tokens out of logs and tracebacks
        return f"TokenPair(token_type={self.token_type!r}, expires_in={self.expires_in})"


# --------------------------------------------------------------------------- access tokens


_ROLE_VALUES: Final = frozenset(role.value for role in Role)


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
    if principal.family is not None:
        claims["fam"] = principal.family
    return jwt.encode(claims, secret, algorithm="HS256")


class VerifiedTokens:
    """Access tokens this process has verified, until they expire: a bounded LRU map.

    Keyed by ``(raw token, secret)`` (an entry proves the token's signature under that
    secret and its claims), valued ``(expiry, Principal)``. A hit skips PyJWT's base64,
    JSON and HMAC work (about a tenth of a validate's CPU in bench/request_cpu.py); it is
    checked against the clock on every hit, so an expired token still answers
    ``token_expired`` to the second. Only the *token* is cached: whether its account is
    still active, holds the token's role and its session is not logged out is the
    :class:`AccountCache`'s check, made on every request after this lookup, so a disabled
    user or a logged-out session loses access exactly as fast as without this cache.

    Least recently used eviction over an insertion-ordered dict (a hit moves its entry to
    the end), as :func:`functools.lru_cache` does with its linked list; bounded by
    ``maxsize`` entries (a few hundred bytes each). Thread-safe under one lock held only
    for the dict operations.
    """

    def __init__(self, maxsize: int = 4096) -> None:
        self.maxsize = maxsize
        self._entries: dict[tuple[str, str], tuple[float, Principal]] = {}
        self._lock = threading.Lock()

    def get(self, token: str, secret: str) -> tuple[float, Principal] | None:
        key = (token, secret)
        with self._lock:
            entry = self._entries.pop(key, None)
            if entry is not None:
                self._entries[key] = entry
        return entry

    def put(self, token: str, secret: str, expires: float, principal: Principal) -> None:
        with self._lock:
            self._entries[(token, secret)] = (expires, principal)
            while len(self._entries) > self.maxsize:
                del self._entries[next(iter(self._entries))]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


#: The process's verified access tokens (:func:`decode_access_token` reads and fills it).
verified_tokens: Final = VerifiedTokens()


def decode_access_token(token: str, secret: str) -> Principal:
    """Verify an access token; raise :class:`Unauthorized` with the reason otherwise.

    A token verified before in this process and not expired since is answered from
    :data:`verified_tokens` (the same Principal, the same ``token_expired`` once it expires).
    """
    cached = verified_tokens.get(token, secret)
    if cached is not None:
        if cached[0] <= time.time():  # PyJWT's rule: expired when exp <= now
            raise Unauthorized("the access token has expired", code="token_expired")
        return cached[1]
    principal, expires = _verify_access_token(token, secret)
    verified_tokens.put(token, secret, expires, principal)
    return principal


def _verify_access_token(token: str, secret: str) -> tuple[Principal, float]:
    """PyJWT's verification and our claim checks: the Principal and its token's expiry."""
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
    sub, email, role = claims.get("sub"), claims.get("email"), claims.get("role")
    family = claims.get("fam")
    # A token signed with our key can still carry claims we never issue (a leaked key, an
    # old format, a hand-made test token): each claim is checked, a bad one is a 401.
    if (
        claims.get("typ") != "access"
        or not isinstance(sub, str)
        or not (sub.isascii() and sub.isdigit() and 0 < len(sub) <= 19)
        or not isinstance(email, str)
        or not email
        or role not in _ROLE_VALUES
        or not (family is None or (isinstance(family, str) and 0 < len(family) <= 32))
    ):
        raise Unauthorized("the access token is not valid", code="invalid_token")
    principal = Principal(user_id=int(sub), email=email, role=role, family=family)
    return principal, float(int(claims["exp"]))


# --------------------------------------------------------------------------- validation


def normalize_email(email: str) -> str:
    """Strip and lower-case ``email``: the one spelling stored and looked up."""
    return email.strip().lower()


def validate_email(email: str) -> str:
    """Return the normalized email, or raise 422 ``validation_error``."""
    normalized = normalize_email(email)
    if len(normalized) > MAX_EMAIL_LENGTH or not _EMAIL_RE.match(normalized):
        raise Unprocessable("email: not a valid email address", code="validation_error")
    return normalized


def validate_password(password: str) -> None:
    """Raise 422 ``validation_error`` unless ``password`` has an acceptable length."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise Unprocessable(
            f"password: must be at least {MIN_PASSWORD_LENGTH} characters",
            code="validation_error",
        )
    if len(password) > MAX_PASSWORD_LENGTH:
        raise Unprocessable(
            f"password: must be at most {MAX_PASSWORD_LENGTH} characters",
            code="validation_error",
        )


def validate_role(role: str) -> Role:
    try:
        return Role(role)
    except ValueError:
        allowed = ", ".join(r.value for r in Role)
        raise Unprocessable(f"role: must be one of {allowed}", code="validation_error") from None


# --------------------------------------------------------------------------- passwords


def hash_password(password: str) -> str:
    """argon2id hash of ``password``. Call only while no database connection is held."""
    return hasher.hash(password)


def _verify(password_hash: str, password: str) -> bool:
    """True when ``password`` matches; any malformed or foreign hash simply fails."""
    try:
        return hasher.verify(password_hash, password)
    except InvalidHashError:
        _dummy_verify(password)  # e.g. a disabled "!unusable" hash: keep the timing even
        return False
    except VerificationError:
        return False


def _dummy_verify(password: str) -> None:
    """Spend one verification on a throwaway hash so unknown emails cost as much as known."""
    global _dummy
    current = hasher
    if _dummy is None or _dummy[0] is not current:
        _dummy = (current, current.hash(secrets.token_urlsafe(16)))
    with contextlib.suppress(VerificationError):
        current.verify(_dummy[1], password)


def _end_read() -> None:
    """End the read transaction so its connection returns to the pool before hashing."""
    db.session.rollback()


# --------------------------------------------------------------------------- users


def create_user(email: str, password: str, role: str) -> UserInfo:
    """Create a user; 422 ``validation_error`` on bad input, 409 ``email_taken`` if it exists.

    The existence check is a short read that ends before hashing (so a duplicate costs no
    hash); the unique constraint on ``users.email`` still decides a race between two
    creators, and either way nothing is written on error.
    """
    normalized = validate_email(email)
    validate_password(password)
    role_value = validate_role(role).value

    try:
        exists = db.session.execute(
            select(User.id).where(User.email == normalized)
        ).scalar_one_or_none()
    finally:
        _end_read()
    if exists is not None:
        raise _email_taken()

    password_hash = hash_password(password)  # no connection held

    def insert_user() -> UserInfo:
        user = User(email=normalized, password_hash=password_hash, role=role_value, is_active=True)
        db.session.add(user)
        db.session.flush()
        return UserInfo(id=user.id, email=user.email, role=user.role, created_at=user.created_at)

    try:
        info = transaction(insert_user)
    except IntegrityError:
        raise _email_taken() from None
    log.info("user %s created with role %s", info.id, info.role)
    return info


def _email_taken() -> Conflict:
    return Conflict("a user with this email already exists", code="email_taken")


def get_user(user_id: int) -> UserInfo:
    """The active user ``user_id``, or 401 ``invalid_token`` if gone or disabled."""
    try:
        user = db.session.execute(
            select(User.id, User.email, User.role, User.is_active, User.created_at).where(
                User.id == user_id
            )
        ).one_or_none()
    finally:
        _end_read()
    if user is None or not user.is_active:
        raise Unauthorized("the user of this token is gone or disabled", code="invalid_token")
    return UserInfo(id=user.id, email=user.email, role=user.role, created_at=user.created_at)


# --------------------------------------------------------------------------- throttling


def account_scope(email: str) -> str:
    return f"account:{normalize_email(email)}"[:_MAX_SCOPE_KEY]


def address_scope(address: str) -> str:
    return f"address:{address}"[:_MAX_SCOPE_KEY]


@dataclass(frozen=True)
class _Throttle:
    failures: int
    window_started_at: dt.datetime
    locked_until: dt.datetime | None


def _throttles(scopes: Iterable[str]) -> dict[str, _Throttle]:
    """The throttle rows of ``scopes``, by key. Reads only."""
    rows = db.session.execute(
        select(
            LoginThrottle.scope_key,
            LoginThrottle.failures,
            LoginThrottle.window_started_at,
            LoginThrottle.locked_until,
        ).where(LoginThrottle.scope_key.in_(list(scopes)))
    ).all()
    return {row.scope_key: _Throttle(row[1], row[2], row[3]) for row in rows}


def _seconds_left(until: dt.datetime | None, now: dt.datetime) -> int:
    return 0 if until is None or until <= now else math.ceil((until - now).total_seconds())


def _refusal(
    account: str, address: str, found: dict[str, _Throttle], now: dt.datetime, window: int
) -> int:
    """Seconds the login must wait (0: it may go ahead).

    The account's lock applies from every address. The address's lock applies only to an
    account that already failed within its window: an address over its limit (a password
    sprayer, or a NAT full of typos) can no longer retry accounts, but its other accounts,
    the admin and the service account among them, still log in.
    """
    account_row = found.get(account)
    address_row = found.get(address)
    wait = _seconds_left(account_row.locked_until if account_row else None, now)
    if wait:
        return wait
    address_wait = _seconds_left(address_row.locked_until if address_row else None, now)
    account_failed_recently = (
        account_row is not None
        and account_row.failures > 0
        and account_row.window_started_at > now - dt.timedelta(seconds=window)
    )
    return address_wait if account_failed_recently else 0


def _bump(key: str, limit: int, window: dt.timedelta, now: dt.datetime, *, reserve: bool) -> bool:
    """Count one failure against ``key`` (in the caller's transaction); lock it at ``limit``.

    With ``reserve``, the count is taken *before* the password is checked and only while
    the scope is under its limit (``failures < limit``, atomically in the UPDATE): when
    eight wrong passwords arrive at once, exactly ``limit`` of them get a password check
    and the others are refused, instead of all reading "not locked yet". Returns False when
    a reservation was refused.
    """
    row = LoginThrottle.scope_key == key
    unlocked = LoginThrottle.locked_until.is_(None) | (LoginThrottle.locked_until <= now)
    db.session.execute(
        update(LoginThrottle)
        .where(row, LoginThrottle.window_started_at <= now - window, unlocked)
        .values(failures=0, window_started_at=now, locked_until=None)
    )
    condition = [row, unlocked, LoginThrottle.failures < limit] if reserve else [row]
    bumped = db.session.execute(
        update(LoginThrottle).where(*condition).values(failures=LoginThrottle.failures + 1)
    )
    if bumped.rowcount == 0:  # type: ignore[attr-defined]
        exists = db.session.execute(select(LoginThrottle.failures).where(row)).first()
        if exists is not None:  # at the limit, or locked: refused
            return False
        db.session.execute(
            insert(LoginThrottle).values(
                scope_key=key, failures=1, window_started_at=now, locked_until=None
            )
        )
    locked = db.session.execute(
        update(LoginThrottle)
        .where(row, LoginThrottle.failures >= limit, unlocked)
        .values(locked_until=now + window)
    )
    if locked.rowcount:  # type: ignore[attr-defined]
        log.warning("login throttled: %s locked for %d s", key, window.total_seconds())
    return True


def _counted(work: Callable[[], T]) -> T:
    """Run a throttle write; two processes inserting one new scope at once make one hit the
    primary key: that transaction is run again and finds the row."""
    for attempt in range(3):
        try:
            return transaction(work)
        except IntegrityError:
            if attempt == 2:
                raise
            log.debug("a concurrent login created a throttle row first; counting again")
    raise AssertionError("unreachable")  # pragma: no cover


def _reserve_attempt(account: str, settings: Settings) -> bool:
    """Take one of the account's attempts before checking its password (see :func:`_bump`)."""
    window = dt.timedelta(seconds=settings.login_failure_window)
    return _counted(
        lambda: _bump(account, settings.login_max_failures, window, utcnow(), reserve=True)
    )


def _record_address_failure(address: str, settings: Settings) -> None:
    """Count a failed login against the client address (its own, higher limit)."""
    window = dt.timedelta(seconds=settings.login_failure_window)
    _counted(
        lambda: _bump(
            address, settings.login_max_failures_per_address, window, utcnow(), reserve=False
        )
    )


def unlock(*, email: str | None = None, address: str | None = None) -> int:
    """Lift the lock and clear the failures of an account and/or an address; rows removed.

    The operator's answer to a lockout (``coupons unlock --email/--address``).
    """
    keys = [account_scope(email)] if email else []
    if address:
        keys.append(address_scope(address))
    if not keys:
        raise ValueError("give an email, an address or both")

    def work() -> int:
        result = db.session.execute(delete(LoginThrottle).where(LoginThrottle.scope_key.in_(keys)))
        return int(result.rowcount)  # type: ignore[attr-defined]

    return transaction(work)


# --------------------------------------------------------------------------- login / tokens


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _new_refresh_token(user_id: int, family_id: str, now: dt.datetime, ttl: int) -> str:
    """Insert a refresh token row (in the caller's transaction); return the token itself."""
    token = secrets.token_urlsafe(32)
    db.session.execute(
        insert(RefreshToken).values(
            user_id=user_id,
            token_hash=_token_hash(token),
            family_id=family_id,
            created_at=now,
            expires_at=now + dt.timedelta(seconds=ttl),
            revoked_at=None,
        )
    )
    return token


def _tokens_for(
    principal: Principal, refresh_token: str, settings: Settings, family_id: str
) -> TokenPair:
    with_family = Principal(principal.user_id, principal.email, principal.role, family_id)
    return TokenPair(
        access_token=issue_access_token(
            with_family, settings.secret_key, settings.access_token_ttl
        ),
        refresh_token=refresh_token,
        expires_in=settings.access_token_ttl,
    )


def login(email: str, password: str, address: str, settings: Settings) -> TokenPair:
    """Exchange email and password for an access token and a new refresh-token family.

    - 429 ``too_many_attempts`` (with ``retry_after``) while the account is locked out, or
      the client address is and this account already failed in the window; checked before
      any hashing, nothing written.
    - Each attempt takes one of the account's ``login_max_failures`` attempts *before* the
      password check (atomically), so concurrent wrong passwords get exactly that many
      checks; a success gives it back (the account's counter is cleared).
    - 401 ``invalid_credentials`` for a wrong password, an unknown email or a disabled
      user, with one message and (through a dummy verification) similar timing for all;
      the failure is also counted against the address (its own, higher limit).
    - On success the account's failure counter is cleared (not the address's: one valid
      account must not launder an address's failures), and the stored hash is upgraded
      when :data:`hasher`'s parameters changed since it was made.
    """
    normalized = normalize_email(email)
    scopes = (account_scope(normalized), address_scope(address))
    too_many = TooManyRequests(
        "too many failed logins; try again later", retry_after=1, code="too_many_attempts"
    )

    # 1. short read: locks and the user; the connection goes back to the pool after it.
    try:
        now = utcnow()
        retry_after = _refusal(*scopes, _throttles(scopes), now, settings.login_failure_window)
        user = (
            None
            if retry_after
            else db.session.execute(
                select(User.id, User.email, User.role, User.is_active, User.password_hash).where(
                    User.email == normalized
                )
            ).one_or_none()
        )
    finally:
        _end_read()
    if retry_after:
        too_many.retry_after = retry_after
        raise too_many

    # 2. reserve one of the account's attempts, then verify with no connection held.
    if not _reserve_attempt(scopes[0], settings):
        try:
            too_many.retry_after = max(1, _refusal(*scopes, _throttles(scopes), utcnow(), 0))
        finally:
            _end_read()
        raise too_many
    if user is None:
        _dummy_verify(password)
        ok = False
    else:
        ok = _verify(user.password_hash, password) and bool(user.is_active)
    if not ok:
        _record_address_failure(scopes[1], settings)
        raise Unauthorized(_INVALID_CREDENTIALS, code="invalid_credentials")
    assert user is not None
    user_id, old_hash = int(user.id), str(user.password_hash)
    principal = Principal(user_id=user_id, email=str(user.email), role=str(user.role))
    new_hash = hash_password(password) if hasher.check_needs_rehash(old_hash) else None

    # 3. write: clear the account counter, upgrade the hash, start a refresh-token family.
    def grant() -> TokenPair:
        now = utcnow()
        still_active = db.session.execute(
            select(User.is_active).where(User.id == user_id)
        ).scalar_one_or_none()
        if not still_active:
            raise Unauthorized(_INVALID_CREDENTIALS, code="invalid_credentials")
        db.session.execute(delete(LoginThrottle).where(LoginThrottle.scope_key == scopes[0]))
        if new_hash is not None:  # only if nobody changed the password meanwhile
            db.session.execute(
                update(User)
                .where(User.id == user_id, User.password_hash == old_hash)
                .values(password_hash=new_hash)
            )
        family_id = secrets.token_hex(16)
        token = _new_refresh_token(user_id, family_id, now, settings.refresh_token_ttl)
        return _tokens_for(principal, token, settings, family_id)

    return transaction(grant)


def refresh(refresh_token: str, settings: Settings) -> TokenPair:
    """Rotate ``refresh_token``: revoke it and return a new access and refresh token.

    - 401 ``invalid_refresh_token`` when unknown, expired, or its user is gone or
      disabled; nothing written.
    - 401 ``refresh_token_reused`` when the token was already revoked (rotated or logged
      out): someone else may hold the family, so every token of the family is revoked,
      and that revocation is committed before the error is raised.
    """
    token_hash = _token_hash(refresh_token)
    reused = "reused"

    def rotate() -> TokenPair | str:
        now = utcnow()
        row = db.session.execute(
            select(
                RefreshToken.id,
                RefreshToken.user_id,
                RefreshToken.family_id,
                RefreshToken.expires_at,
                RefreshToken.revoked_at,
            )
            .where(RefreshToken.token_hash == token_hash)
            .with_for_update()
        ).one_or_none()
        if row is None or (row.revoked_at is None and row.expires_at <= now):
            raise Unauthorized("the refresh token is not valid", code="invalid_refresh_token")
        if row.revoked_at is not None:
            _revoke_family(row.family_id, now)
            return reused
        user = db.session.execute(
            select(User.id, User.email, User.role, User.is_active).where(User.id == row.user_id)
        ).one_or_none()
        if user is None or not user.is_active:
            raise Unauthorized("the refresh token is not valid", code="invalid_refresh_token")
        revoked = db.session.execute(
            update(RefreshToken)
            .where(RefreshToken.id == row.id, RefreshToken.revoked_at.is_(None))
            .values(revoked_at=now)
        )
        if revoked.rowcount != 1:  # type: ignore[attr-defined]  # lost a race: a reuse
            _revoke_family(row.family_id, now)
            return reused
        new_token = _new_refresh_token(user.id, row.family_id, now, settings.refresh_token_ttl)
        principal = Principal(user_id=user.id, email=user.email, role=user.role)
        return _tokens_for(principal, new_token, settings, row.family_id)

    outcome = transaction(rotate)
    if isinstance(outcome, TokenPair):
        return outcome
    log.warning("refresh token reuse detected; token family revoked")
    raise Unauthorized(
        "this refresh token was already used; its session has been revoked",
        code="refresh_token_reused",
    )


def _revoke_family(family_id: str, now: dt.datetime) -> int:
    result = db.session.execute(
        update(RefreshToken)
        .where(RefreshToken.family_id == family_id, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def logout(user_id: int, refresh_token: str) -> bool:
    """Revoke the family of ``refresh_token`` if it belongs to ``user_id``.

    Returns whether anything was revoked. Like OAuth token revocation (RFC 7009) an
    unknown, foreign or already revoked token is not an error: the caller cannot act on
    it, and answering differently would tell a caller whether someone else's token exists.
    """
    token_hash = _token_hash(refresh_token)

    def revoke() -> bool:
        row = db.session.execute(
            select(RefreshToken.user_id, RefreshToken.family_id).where(
                RefreshToken.token_hash == token_hash
            )
        ).one_or_none()
        if row is None or row.user_id != user_id:
            return False
        return _revoke_family(row.family_id, utcnow()) > 0

    return transaction(revoke)


# --------------------------------------------------------------------------- account cache


@dataclass(frozen=True)
class AccountSnapshot:
    """What the cache knows: each user's role and whether it is active, and the refresh-token
    families revoked recently enough that access tokens issued with them are still unexpired."""

    taken_at: float  # time.monotonic()
    users: Mapping[int, tuple[str, bool]]
    revoked_families: frozenset[str]


#: Execution option set on the account cache's refresh statements (value True): a listener
#: that counts one request's statements (tests/test_listing.py) leaves them out, since the
#: refresh runs at most once a second per process whichever request happens to find the
#: snapshot stale.
ACCOUNT_REFRESH_OPTION: Final = "coupons_account_refresh"


class AccountCache:
    """Makes access tokens follow their account, without a database read per request.

    An access token is checked against a per-process snapshot of the users (role, active)
    and of the recently revoked refresh-token families (a logout, or a reuse detected),
    refreshed at most once per :data:`REFRESH_EVERY` second by the request that finds it
    stale. So a user disabled, deleted or demoted, or a session logged out, loses access
    within about a second (plus one refresh's duration) in every worker process (each has
    its own cache), instead of when its token expires (``ACCESS_TOKEN_TTL``). A token for a
    user the snapshot does not know (created since) forces one refresh.

    The snapshot is read through the app's own engine and pool (``db.engine``), on a
    connection checked out for the two statements and returned at once: a separate engine
    (the earlier ``NullPool`` one) was one more server connection per process on top of the
    pool's cap (issue 10's benchmark: 9 server connections for a 4 x 2 fleet), which breaks
    the promise that a process never holds more than its pool. No request holds two
    connections because of it: the check runs in :func:`~coupons.api.common.authenticate`,
    before the view's first statement checks out the request's own connection, so the
    refresh's checkout is returned before the request's begins. Its statements carry the
    execution option :data:`ACCOUNT_REFRESH_OPTION` so that a listener counting a request's
    statements can tell the once-a-second refresh from the request's work (see :meth:`snapshot`
    for what a refresh in progress or a failed one means for other requests).

    Cost: one ``SELECT id, role, is_active FROM users`` (all users: coupons has admins and
    service accounts, not customers) and one query over the refresh tokens revoked within the
    access-token lifetime, per second per process.
    """

    REFRESH_EVERY: Final = 1.0

    def __init__(self, settings: Settings, engine: Any | None = None) -> None:
        """``engine``: where to read the snapshot; None (the default) means the current
        app's ``db.engine``, looked up at each refresh (inside the request's app context)."""
        self._settings = settings
        self._engine = engine
        self._lock = threading.Lock()
        self._snapshot: AccountSnapshot | None = None
        self._retry_after = 0.0

    def _load(self) -> AccountSnapshot:
        engine = db.engine if self._engine is None else self._engine
        since = utcnow() - dt.timedelta(seconds=self._settings.access_token_ttl + 60)
        recent = RefreshToken.__table__.alias("recent")
        live = (
            select(RefreshToken.id)
            .where(RefreshToken.family_id == recent.c.family_id, RefreshToken.revoked_at.is_(None))
            .exists()
        )
        for attempt in (1, 2):
            try:
                with engine.connect().execution_options(**{ACCOUNT_REFRESH_OPTION: True}) as conn:
                    users = {
                        int(row.id): (str(row.role), bool(row.is_active))
                        for row in conn.execute(select(User.id, User.role, User.is_active))
                    }
                    revoked = frozenset(
                        conn.execute(
                            select(recent.c.family_id)
                            .where(recent.c.revoked_at > since, ~live)
                            .distinct()
                        ).scalars()
                    )
                return AccountSnapshot(time.monotonic(), users, revoked)
            except Exception as exc:
                # A pooled connection the server dropped (killed, timed out, restarted) fails
                # its first statement; SQLAlchemy has invalidated it, so a read-only refresh
                # runs once more on a fresh one -- what the request's own statements get from
                # pooltender's retry (a NullPool engine never met a stale connection).
                if attempt == 2 or not is_retryable_disconnect(exc):
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def snapshot(self, *, force: bool = False) -> AccountSnapshot:
        """The current snapshot, refreshed first when stale (or ``force``).

        Only the first request (no snapshot yet) and a forced refresh wait for a refresh;
        otherwise a request that finds another one refreshing uses the previous snapshot.
        A failed refresh raises in the request that ran it (a 503 when the database is
        unavailable: that request already waited one driver bound) and is not retried for
        :data:`REFRESH_EVERY` seconds; other requests keep the previous snapshot meanwhile
        (and meet the database's trouble, if any, in their own statements).
        """
        current = self._snapshot
        now = time.monotonic()
        fresh = current is not None and (
            now - current.taken_at < self.REFRESH_EVERY or now < self._retry_after
        )
        if fresh and not force:
            assert current is not None
            return current
        if not self._lock.acquire(blocking=current is None or force):
            assert current is not None
            return current  # another request is refreshing it
        try:
            latest = self._snapshot
            if latest is not None and latest is not current and not force:
                return latest  # refreshed by another request while this one waited
            try:
                self._snapshot = self._load()
            except Exception:
                # This request spent its wait on the refresh: it fails (503 when the database
                # is unavailable) rather than wait again for its own statements; the others
                # keep the previous snapshot until the next attempt.
                self._retry_after = time.monotonic() + self.REFRESH_EVERY
                raise
            return self._snapshot
        finally:
            self._lock.release()

    def check(self, principal: Principal) -> None:
        """Raise 401 ``invalid_token`` unless ``principal`` still holds: its user exists, is
        active, has the token's role, and the token's family is not revoked."""
        snap = self.snapshot()
        entry = snap.users.get(principal.user_id)
        if entry is None:
            snap = self.snapshot(force=True)
            entry = snap.users.get(principal.user_id)
        revoked = principal.family is not None and principal.family in snap.revoked_families
        if entry is None or not entry[1] or entry[0] != principal.role or revoked:
            raise Unauthorized("the access token is no longer valid", code="invalid_token")
