"""POL006 pool-too-large: ``pool_size`` / ``max_overflow`` literals above a threshold.

## What it does
Reports an integer literal above ``pool-size-limit`` (default 50) for ``pool_size`` or above
``max-overflow-limit`` (default 100) for ``max_overflow``, wherever the setting is spelled:
a keyword argument (``create_engine(url, pool_size=200)``), a dict entry
(``SQLALCHEMY_ENGINE_OPTIONS = {"pool_size": 200}``), an assignment (``pool_size = 200``,
a dataclass default) or the legacy Flask-SQLAlchemy keys ``SQLALCHEMY_POOL_SIZE`` /
``SQLALCHEMY_MAX_OVERFLOW`` (as names or ``app.config[...]`` items).

## Why is this bad?
The pool is per process: the server sees workers x hosts x (pool_size + max_overflow)
connections. The post-mortem's service ran ``pool_size=200, max_overflow=500`` and exhausted
MySQL's ``max_connections``; the fix was 20 and 50. Size pools with ``pooltender budget``.

## Example
```python
SQLALCHEMY_ENGINE_OPTIONS = {"pool_size": 200, "max_overflow": 500}
```

## Use instead
```python
SQLALCHEMY_ENGINE_OPTIONS = {"pool_size": 20, "max_overflow": 50, "pool_recycle": 1800}
```

## Configuration
``pool-size-limit`` and ``max-overflow-limit`` in ``[tool.pooltender.lint]``.

## Fix safety
No fix: the right size depends on the fleet (see ``pooltender budget``).
"""

from __future__ import annotations

from collections.abc import Iterator

import libcst as cst

from pooltender.lint.base import FileContext, Finding, module_rule
from pooltender.lint.helpers import int_value, string_value

CODE = "POL006"
NAME = "pool-too-large"
SUMMARY = "pool_size / max_overflow above the configured threshold"

_KEYS = {
    "pool_size": "pool_size",
    "max_overflow": "max_overflow",
    "SQLALCHEMY_POOL_SIZE": "pool_size",
    "SQLALCHEMY_MAX_OVERFLOW": "max_overflow",
}


def _limit(setting: str, ctx: FileContext) -> tuple[int, str]:
    if setting == "pool_size":
        return ctx.config.pool_size_limit, "pool-size-limit"
    return ctx.config.max_overflow_limit, "max-overflow-limit"


def _pairs(ctx: FileContext) -> Iterator[tuple[str, cst.BaseExpression]]:
    for arg in ctx.nodes(cst.Arg):
        if arg.keyword is not None and arg.keyword.value in _KEYS:
            yield arg.keyword.value, arg.value
    for element in ctx.nodes(cst.DictElement):
        key = string_value(element.key)
        if key in _KEYS:
            yield key, element.value
    for assign in ctx.nodes(cst.Assign):
        for target in assign.targets:
            key = _target_key(target.target)
            if key in _KEYS:
                yield key, assign.value
    for ann in ctx.nodes(cst.AnnAssign):
        key = _target_key(ann.target)
        if key in _KEYS and ann.value is not None:
            yield key, ann.value


def _target_key(target: cst.BaseExpression) -> str | None:
    if isinstance(target, cst.Name):
        return target.value
    if isinstance(target, cst.Attribute):
        return target.attr.value
    if isinstance(target, cst.Subscript) and len(target.slice) == 1:
        index = target.slice[0].slice
        if isinstance(index, cst.Index):
            return string_value(index.value)
    return None


def check(ctx: FileContext) -> Iterator[Finding]:
    for key, value in _pairs(ctx):
        number = int_value(value)
        if number is None:
            continue
        setting = _KEYS[key]
        limit, option = _limit(setting, ctx)
        if number > limit:
            yield Finding(
                CODE,
                value,
                f"{setting}={number} is above {limit} ({option}): every worker process may hold "
                f"this many connections; size the pool with `pooltender budget`",
            )


RULE = module_rule(
    __name__,
    triggers=(("pool_size", "max_overflow", "POOL_SIZE", "MAX_OVERFLOW"),),
)
