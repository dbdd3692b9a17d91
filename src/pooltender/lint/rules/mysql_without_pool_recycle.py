"""POL007 mysql-without-pool-recycle: a MySQL engine created without ``pool_recycle``.

## What it does
Reports ``create_engine("mysql...")`` / ``create_async_engine("mysql...")`` (the URL a string
literal naming a ``mysql`` dialect, positionally or as ``url=``) with no ``pool_recycle``
argument and no ``**options`` that might carry one.

Flask-SQLAlchemy configuration (``SQLALCHEMY_DATABASE_URI``) is deliberately not reported:
Flask-SQLAlchemy 3 already sets ``pool_recycle=7200`` for MySQL URLs
(``_apply_driver_defaults``), so a finding there would be a false positive.

## Why is this bad?
MySQL closes connections idle longer than ``wait_timeout`` (8 hours by default, often far less
behind a proxy). Without ``pool_recycle`` the pool hands out a dead connection and the request
fails with "MySQL server has gone away". The post-mortem added ``pool_recycle = 1800``.

## Example
```python
engine = create_engine("mysql+pymysql://app@db/coupons", pool_size=20)
```

## Use instead
```python
engine = create_engine("mysql+pymysql://app@db/coupons", pool_size=20, pool_recycle=1800)
```

## Fix safety
Unsafe: adds ``pool_recycle=1800``, which changes connection lifetimes; check it is below the
server's ``wait_timeout``.
"""

from __future__ import annotations

from collections.abc import Iterator

import libcst as cst

from pooltender.lint.base import FileContext, Finding, Fix, module_rule
from pooltender.lint.helpers import has_star_kwargs, keyword, last_name, string_value

CODE = "POL007"
NAME = "mysql-without-pool-recycle"
SUMMARY = "MySQL engine created without pool_recycle"
RECYCLE = 1800


def _url(call: cst.Call) -> str | None:
    arg = keyword(call, "url")
    if arg is None and call.args and call.args[0].keyword is None and not call.args[0].star:
        arg = call.args[0]
    return string_value(arg.value) if arg is not None else None


def _fix(call: cst.Call) -> Fix:
    args = list(call.args)
    last = args[-1]
    new = cst.Arg(
        value=cst.Integer(str(RECYCLE)),
        keyword=cst.Name("pool_recycle"),
        equal=cst.AssignEqual(
            whitespace_before=cst.SimpleWhitespace(""), whitespace_after=cst.SimpleWhitespace("")
        ),
    )
    if isinstance(last.comma, cst.Comma):  # trailing comma: keep the layout
        separator = args[-2].comma if len(args) > 1 else last.comma
        new = new.with_changes(comma=last.comma)
        args[-1] = last.with_changes(comma=separator)
    else:
        args[-1] = last.with_changes(comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" ")))
    args.append(new)
    return Fix("unsafe", ((call, call.with_changes(args=args)),), f"add pool_recycle={RECYCLE}")


def check(ctx: FileContext) -> Iterator[Finding]:
    for call in ctx.nodes(cst.Call):
        if last_name(call.func) not in ("create_engine", "create_async_engine"):
            continue
        url = _url(call)
        if url is None or not url.lower().startswith("mysql"):
            continue
        if keyword(call, "pool_recycle") is not None or has_star_kwargs(call):
            continue
        yield Finding(
            CODE,
            call,
            f"MySQL engine without pool_recycle: MySQL drops idle connections after "
            f"wait_timeout; pass pool_recycle={RECYCLE} (below the server's wait_timeout)",
            _fix(call),
        )


RULE = module_rule(
    __name__,
    triggers=(("mysql",), ("create_engine", "create_async_engine")),
    fix="unsafe",
)
