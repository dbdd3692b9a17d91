"""Text that leaves the process: database URLs with their secrets masked, error messages
scrubbed of them, and the one line of an exception a log or a CLI shows.

The contract: nothing that passes through :func:`mask_url` or :func:`scrub` shows a password,
whether it sits in the URL's userinfo (``user:secret@host``) or in a credential-bearing
query parameter (``?password=secret``, ``passwd``, ``pwd``, ``sslpassword``, ``token`` ...,
which some drivers accept in the URL). Masked values read ``***``. A URL that cannot be
parsed is never echoed (it may be a password pasted in the wrong place).

Every command line, the server inspector, the killer and the dashboard use these helpers,
so there is one definition of "masked" to review.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["CREDENTIAL_PARAMETERS", "MASK", "first_line", "mask_url", "one_line", "scrub"]

MASK: Final = "***"

#: Query parameter names (lower case) whose value is a credential.
CREDENTIAL_PARAMETERS: Final = frozenset(
    {
        "password",
        "passwd",
        "pwd",
        "pass",
        "sslpassword",
        "ssl_key_password",
        "token",
        "access_token",
        "auth_token",
        "api_key",
        "apikey",
        "secret",
    }
)

_USERINFO_PASSWORD = re.compile(r"(://[^:/@\s]*:)[^@\s]*@")
_CREDENTIAL_QUERY = re.compile(
    r"([?&;](?:" + "|".join(sorted(CREDENTIAL_PARAMETERS, key=len, reverse=True)) + r")=)"
    r"[^&;#\s'\"]*",
    re.IGNORECASE,
)


def mask_url(url: str) -> str:
    """``url`` with the password of its userinfo and of any credential query parameter
    replaced by ``***``; an unparsable URL comes back as ``<unparsable URL>``."""
    from sqlalchemy.engine import make_url

    try:
        shown = make_url(url).render_as_string(hide_password=True)
    except Exception:  # ArgumentError, or ValueError for a bad port
        return "<unparsable URL>"
    return _CREDENTIAL_QUERY.sub(rf"\1{MASK}", shown)


def scrub(message: str, url: str | None = None) -> str:
    """``message`` with ``url`` (when given) masked and its secrets removed wherever they
    appear, and any other URL's userinfo password or credential query value masked."""
    if url:
        from sqlalchemy.engine import make_url

        message = message.replace(url, mask_url(url))
        secrets: list[str] = []
        try:
            parsed = make_url(url)
        except Exception:
            parsed = None
        if parsed is not None:
            if parsed.password:
                secrets.append(str(parsed.password))
            for key, value in parsed.query.items():
                if key.lower() in CREDENTIAL_PARAMETERS:
                    secrets.extend([value] if isinstance(value, str) else list(value))
        for secret in sorted(secrets, key=len, reverse=True):
            if secret and secret != MASK:
                message = message.replace(secret, MASK)
    message = _USERINFO_PASSWORD.sub(rf"\1{MASK}@", message)
    return _CREDENTIAL_QUERY.sub(rf"\1{MASK}", message)


def one_line(value: object, limit: int | None = None) -> str:
    """``str(value)`` with every run of whitespace (newlines included) folded to one space,
    cut to ``limit`` characters: a message that stays one line in a log or a CLI answer."""
    text = " ".join(str(value).split())
    return text if limit is None else text[:limit]


def first_line(exc: BaseException, *, with_type: bool = True) -> str:
    """The first non-blank line of ``exc``'s message, prefixed with its type name
    (``"OperationalError: (2003, ...)"``); only the type name when the message is empty.
    ``with_type=False`` leaves the prefix out (still the type name for an empty message)."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    name = type(exc).__name__
    if not lines:
        return name
    return f"{name}: {lines[0].strip()}" if with_type else lines[0].strip()
