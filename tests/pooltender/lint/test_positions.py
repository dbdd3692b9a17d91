"""Finding positions taken from the stdlib ``ast`` twin of a node equal libcst's own
PositionProvider (start and end), over every fixture and this repository's own source."""

from __future__ import annotations

from pathlib import Path

import libcst as cst
import pytest
from libcst.metadata import MetadataWrapper, PositionProvider

from pooltender.lint.base import _AST_TWIN, FileContext
from pooltender.lint.config import default_config

from .cases import CASES

ROOT = Path(__file__).resolve().parents[3]


def _sources() -> list[object]:
    out: list[object] = []
    for code, cases in CASES.items():
        for i, text in enumerate([*cases.fail, *cases.ok, *cases.unchanged]):
            out.append(pytest.param(text, id=f"{code}-{i}"))
    for path in sorted((ROOT / "src").rglob("*.py")):
        out.append(pytest.param(path.read_text(encoding="utf-8"), id=path.name))
    out.append(pytest.param("s = f'{a(1)} and {b.c(2)!r:>{w()}}'\nx = d(f'{e()}')\n", id="fstr"))
    out.append(pytest.param("x = 'é' + f(g(1), (h)(2))\nwhile (a):\n    pass\n", id="unicode"))
    return out


@pytest.mark.parametrize("source", _sources())
def test_ast_positions_match_libcst(source: str) -> None:
    module = cst.parse_module(source)
    ctx = FileContext("x.py", source, module, default_config())
    expected = MetadataWrapper(module, unsafe_skip_copy=True).resolve(PositionProvider)
    checked = 0
    for node_type in _AST_TWIN:
        for node in ctx.nodes(node_type):
            fast = ctx._ast_position(node)
            if fast is None:
                continue
            checked += 1
            want = expected[node]
            assert (fast.start.line, fast.start.column) == (want.start.line, want.start.column)
            assert (fast.end.line, fast.end.column) == (want.end.line, want.end.column), node
    assert checked or not any(ctx.nodes(t) for t in _AST_TWIN) or "f'" in source or 'f"' in source
