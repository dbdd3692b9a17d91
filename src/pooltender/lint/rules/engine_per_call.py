"""POL005 engine-per-call: ``create_engine()`` inside a function that runs per request or call.

## What it does
Reports ``create_engine(...)`` / ``create_async_engine(...)`` called inside a function when

* the function is a request handler or hook (decorated with ``.route``, ``.get``, ``.post``,
  ``.put``, ``.patch``, ``.delete``, ``.before_request``, ``.after_request``,
  ``.teardown_request``, ``.errorhandler``), whatever its name; or
* the function's name does not look like a factory or setup step: it contains none of
  ``create``, ``make``, ``build``, ``init``, ``setup``, ``set_up``, ``configure``, ``factory``,
  ``engine``, ``connect``, ``bootstrap``, ``main``, ``migrat``, ``load``, ``open``.

Not reported: module level; functions decorated with a cache (``cache``, ``lru_cache``,
``cached_property``); engines with ``poolclass=NullPool`` or ``StaticPool``, which keep no pool
of connections behind.

## Why is this bad?
Every engine owns a pool. An engine made per call opens a new pool (and new connections) each
time and, unless disposed, leaves the old ones open until garbage collection: connections grow
with traffic, not with ``pool_size``. Create the engine once, at import or in the app factory.

## Example
```python
@app.get("/report")
def report():
    engine = create_engine(REPORTING_URL)
    with engine.connect() as conn:
        return conn.execute(QUERY).all()
```

## Use instead
```python
reporting_engine = create_engine(REPORTING_URL)


@app.get("/report")
def report():
    with reporting_engine.connect() as conn:
        return conn.execute(QUERY).all()
```

## Fix safety
No fix: where the engine should live is a design choice.

## Heuristic trade-off
The name test trades recall for precision: a factory that *is* called per request but is named
like one (``get_engine()`` without a cache) is missed (false negative), and a one-shot script
function with an unusual name is reported (false positive; ``# noqa: POL005``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import libcst as cst

from pooltender.lint.base import FileContext, Finding, module_rule
from pooltender.lint.helpers import decorator_names, enclosing_function, keyword, last_name

CODE = "POL005"
NAME = "engine-per-call"
SUMMARY = "create_engine() inside a function that runs per request or per call"

_FACTORY = re.compile(
    r"create|make|build|init|setup|set_up|configure|factory|engine|connect|bootstrap|main"
    r"|migrat|load|open",
    re.IGNORECASE,
)
_ROUTE = frozenset(
    {
        "route",
        "get",
        "post",
        "put",
        "patch",
        "delete",
        "before_request",
        "after_request",
        "teardown_request",
        "errorhandler",
    }
)
_CACHES = frozenset({"cache", "lru_cache", "cached_property"})
_NO_POOL = frozenset({"NullPool", "StaticPool"})


def check(ctx: FileContext) -> Iterator[Finding]:
    for call in ctx.nodes(cst.Call):
        if last_name(call.func) not in ("create_engine", "create_async_engine"):
            continue
        func = enclosing_function(ctx, call)
        if func is None:
            continue
        poolclass = keyword(call, "poolclass")
        if poolclass is not None and last_name(poolclass.value) in _NO_POOL:
            continue
        decorators = [d.rsplit(".", 1)[-1] for d in decorator_names(func)]
        if any(d in _CACHES for d in decorators):
            continue
        routed = any(d in _ROUTE for d in decorators) and any(
            "." in d for d in decorator_names(func)
        )
        name = func.name.value
        if routed:
            why = f"request handler {name}()"
        elif not _FACTORY.search(name):
            why = f"{name}(), which does not look like a factory or setup function"
        else:
            continue
        yield Finding(
            CODE,
            call,
            f"engine created per call in {why}: each engine opens its own pool; create it once "
            "at module level or in the app factory",
        )


RULE = module_rule(
    __name__,
    triggers=(("create_engine", "create_async_engine"),),
)
