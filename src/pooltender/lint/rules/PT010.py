"""PT010 slow-work-in-transaction: slow work while ``db.session`` holds a connection.

## What it does
Within one function, follows ``db.session`` in source order: a query (``Model.query...``,
``db.session.query/execute/scalars/scalar/get/flush/merge/delete/refresh``) checks a
connection out; ``commit``/``rollback``/``remove``/``close`` gives it back. Between the two it
reports slow calls:

* sleeping: ``time.sleep``, ``sleep``, ``asyncio.sleep``, ``gevent.sleep``;
* HTTP: ``requests.*``, ``httpx.*``, ``urlopen``;
* password hashing: argon2 ``PasswordHasher().hash/verify`` (or a receiver named like
  ``ph``/``hasher``/``pwd_context``), ``bcrypt.hashpw/checkpw/kdf``,
  ``hashlib.pbkdf2_hmac/scrypt``, werkzeug ``generate_password_hash``/``check_password_hash``.

A loop body is followed twice, so a polling loop that queries, sleeps and queries again is
reported even when the sleep comes first in the text.

## Why is this bad?
After the first query the session sits in a transaction on a checked-out connection until
commit or rollback. Sleeping, waiting on a remote service or hashing a password (tens to
hundreds of milliseconds by design) in that window holds the connection idle -- the MySQL
processlist fills with ``Sleep`` rows and the pool runs dry at a fraction of its throughput.

## Example
```python
def login(email, password):
    user = User.query.filter_by(email=email).first()
    PasswordHasher().verify(user.password_hash, password)
    user.last_login = now()
    db.session.commit()
```

## Use instead
```python
def login(email, password):
    user = User.query.filter_by(email=email).first()
    db.session.commit()  # or rollback(): hand the connection back first
    PasswordHasher().verify(user.password_hash, password)
    user.last_login = now()
    db.session.commit()
```

## Fix safety
No fix: moving work across a transaction boundary changes what the transaction sees.

## Known limits
``db.session.add()`` does not count as checking out a connection (it does not touch the
database). Branches are followed as if both ran, and calls into helpers are not followed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import libcst as cst

from pooltender.lint.base import FileContext, Finding, Rule, iter_children
from pooltender.lint.helpers import dotted, is_model_query, last_name, session_method, walk

CODE = "PT010"
NAME = "slow-work-in-transaction"
SUMMARY = "sleep, HTTP call or password hashing while db.session holds a connection"

_START = frozenset(
    {"query", "execute", "scalars", "scalar", "get", "get_one", "flush", "merge", "delete"}
) | {"refresh", "connection"}
_END = frozenset({"commit", "rollback", "remove", "close"})
_SLEEP = frozenset({"time.sleep", "sleep", "asyncio.sleep", "gevent.sleep", "eventlet.sleep"})
_HTTP_VERBS = frozenset(
    {"get", "post", "put", "patch", "delete", "head", "options", "request", "send", "stream"}
)
_HASH_FUNCS = frozenset(
    {
        "bcrypt.hashpw",
        "bcrypt.checkpw",
        "bcrypt.kdf",
        "hashlib.pbkdf2_hmac",
        "hashlib.scrypt",
        "pbkdf2_hmac",
        "hashpw",
        "checkpw",
        "generate_password_hash",
        "check_password_hash",
        "security.generate_password_hash",
        "security.check_password_hash",
    }
)
_HASHER = re.compile(
    r"(?i)(hasher|^_?ph$|pwd_context|pwd_ctx|crypt_context|password_context|passlib|argon2"
    r"|pbkdf2_sha256|sha256_crypt|sha512_crypt|bcrypt_sha256)"
)


def slow_kind(call: cst.Call) -> str | None:
    """What makes ``call`` slow ("sleep", "HTTP call", "password hashing"), or None."""
    name = dotted(call.func)
    if name is None:
        func = call.func
        if (
            isinstance(func, cst.Attribute)
            and func.attr.value in ("hash", "verify")
            and isinstance(func.value, cst.Call)
            and last_name(func.value.func) in ("PasswordHasher", "CryptContext")
        ):
            return "password hashing"
        return None
    if name in _SLEEP:
        return "sleep"
    head, _, verb = name.rpartition(".")
    if head in ("requests", "httpx") and verb in _HTTP_VERBS:
        return "HTTP call"
    if name in ("urlopen", "urllib.request.urlopen", "request.urlopen"):
        return "HTTP call"
    if name in _HASH_FUNCS or name.startswith("werkzeug.security."):
        return "password hashing"
    if verb in ("hash", "verify") and head and _HASHER.search(head.rsplit(".", 1)[-1]):
        return "password hashing"
    return None


@dataclass
class _State:
    holding: cst.CSTNode | None = None
    in_loop: int = 0


def _classify(call: cst.Call, ctx: FileContext) -> str | None:
    method = session_method(call, ctx)
    if method in _END:
        return "end"
    if method in _START:
        return "start"
    if isinstance(call.func, cst.Attribute) and is_model_query(call.func.value):
        return "start"
    return None


def _events(node: cst.CSTNode, ctx: FileContext) -> Iterator[tuple[str, cst.Call, bool]]:
    """``(kind, call, in_loop)`` in evaluation-ish order; loop bodies twice."""
    stack: list[tuple[cst.CSTNode, bool]] = [(node, False)]
    while stack:
        current, in_loop = stack.pop()
        if isinstance(current, cst.FunctionDef | cst.Lambda | cst.ClassDef) and current is not node:
            continue
        if isinstance(current, cst.Call):
            kind = _classify(current, ctx) or ("slow" if slow_kind(current) else None)
            if kind is not None:
                yield kind, current, in_loop
        children = list(iter_children(current))
        if isinstance(current, cst.While | cst.For):
            body = current.body
            rest = [c for c in children if c is not body]
            ordered: list[tuple[cst.CSTNode, bool]] = [(c, in_loop) for c in rest]
            # header first, then the body twice (the second pass models the next iteration)
            ordered = [(c, in_loop) for c in rest if c is not current.orelse]
            ordered += [(body, True), (body, True)]
            if current.orelse is not None:
                ordered.append((current.orelse, in_loop))
            stack.extend(reversed(ordered))
        else:
            stack.extend((c, in_loop) for c in reversed(children))


def check(ctx: FileContext) -> Iterator[Finding]:
    for func in ctx.nodes(cst.FunctionDef):
        calls = [n for n in walk(func.body) if isinstance(n, cst.Call)]
        if not any(_classify(c, ctx) == "start" for c in calls) or not any(
            slow_kind(c) for c in calls
        ):
            continue  # nothing to hold or nothing slow: skip the loop-doubling walk
        holding: cst.Call | None = None
        reported: set[int] = set()
        for kind, call, in_loop in _events(func.body, ctx):
            if kind == "start":
                holding = holding or call
            elif kind == "end":
                holding = None
            elif holding is not None and id(call) not in reported:
                reported.add(id(call))
                what = slow_kind(call)
                since = ctx.position(holding).start.line
                loop = " in a polling loop" if in_loop else ""
                yield Finding(
                    CODE,
                    call,
                    f"{what}{loop} while db.session holds a connection (query on line {since}, "
                    "no commit/rollback since): end the transaction before the slow work",
                )


RULE = Rule(
    code=CODE,
    name=NAME,
    summary=SUMMARY,
    doc=__doc__ or "",
    check=check,
    triggers=(
        ("session", "query"),
        (
            "sleep",
            "requests",
            "httpx",
            "urlopen",
            "hash",
            "Hash",
            "verify",
            "bcrypt",
            "pbkdf2",
            "scrypt",
        ),
    ),
)
