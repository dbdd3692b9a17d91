"""Every error code the service can answer with is in docs/architecture.md's table, once.

The test walks the :class:`~coupons.errors.ServiceError` classes (every subclass, after
importing every coupons module), then reads the source of service/src/coupons with ``ast`` for each
place one is built with a literal code (``Unprocessable(..., code="x")``, or without one:
the class's default), a subclass outside errors.py with its own ``code = "x"``, a
``Refusal(Conflict, "x", ...)``, an ``error_response(503, "x", ...)``), and adds the
HTTP-level codes of the API's error handlers. Each (code, status) pair must be a row of
the table, and each row must still be produced somewhere: one code per condition, and no
stale documentation.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
from pathlib import Path

import coupons
from coupons.api import common
from coupons.errors import ServiceError
from tests._paths import SERVICE_SRC

ROOT = Path(__file__).resolve().parents[1]
SOURCE = SERVICE_SRC / "coupons"
TABLE_HEADING = "## Error codes"


def error_classes() -> dict[str, type[ServiceError]]:
    for module in pkgutil.walk_packages(coupons.__path__, "coupons."):
        if ".migrations" not in module.name:
            importlib.import_module(module.name)
    found: dict[str, type[ServiceError]] = {}
    todo: list[type[ServiceError]] = [ServiceError]
    while todo:
        cls = todo.pop()
        found[cls.__name__] = cls
        todo.extend(cls.__subclasses__())
    return found


def _literal(node: ast.expr | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def produced_codes() -> set[tuple[str, int]]:
    """(code, status) of every error built with a literal code in service/src/coupons."""
    classes = error_classes()
    pairs: set[tuple[str, int]] = set()
    for path in SOURCE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and node.name in classes and path.name != "errors.py":
                for item in node.body:
                    if (
                        isinstance(item, ast.Assign)
                        and any(isinstance(t, ast.Name) and t.id == "code" for t in item.targets)
                        and (code := _literal(item.value))
                    ):
                        pairs.add((code, classes[node.name].status))
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
                continue
            name = node.func.id
            if name in classes:
                code = next((_literal(k.value) for k in node.keywords if k.arg == "code"), None)
                pairs.add((code or classes[name].code, classes[name].status))
            elif name == "error_response" and len(node.args) >= 2:
                status, code = node.args[0], _literal(node.args[1])
                if isinstance(status, ast.Constant) and isinstance(status.value, int) and code:
                    pairs.add((code, status.value))
            elif name == "Refusal" and len(node.args) >= 2:
                cls, code = node.args[0], _literal(node.args[1])
                if isinstance(cls, ast.Name) and cls.id in classes and code:
                    pairs.add((code, classes[cls.id].status))
    return pairs


def http_codes() -> set[tuple[str, int]]:
    """What the API's error handlers answer outside the services."""
    pairs = {(code, status) for status, code in common._HTTP_CODES.items()}
    pairs.add(("internal_error", 500))
    return pairs


def documented_codes() -> list[tuple[str, int]]:
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    section = text.split(TABLE_HEADING, 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([a-z_]+)` \| (\d{3}) \|", section, flags=re.MULTILINE)
    return [(code, int(status)) for code, status in rows]


def test_the_walk_finds_the_known_codes() -> None:
    produced = produced_codes()
    assert {("coupon_not_found", 404), ("coupon_not_found", 422)} <= produced
    assert ("campaign_not_found", 404) in produced
    assert ("invalid_max_uses", 422) in produced


def test_every_code_is_documented_once_and_every_documented_code_exists() -> None:
    documented = documented_codes()
    assert len(documented) == len(set(documented)), "a (code, status) row appears twice"
    expected = produced_codes() | http_codes()
    assert sorted(expected - set(documented)) == [], "undocumented codes"
    assert sorted(set(documented) - expected) == [], "documented codes nothing produces"


def test_one_code_per_condition_not_found() -> None:
    """No bare ``not_found`` from a service: each missing thing has its own code."""
    assert not any(code == "not_found" for code, _ in produced_codes())
