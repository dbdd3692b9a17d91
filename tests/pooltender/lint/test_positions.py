"""Finding positions taken from the stdlib ``ast`` twin of a node equal libcst's own
PositionProvider (start and end), over every fixture and this repository's own source."""

from __future__ import annotations

import libcst as cst
import pytest
from libcst.metadata import MetadataWrapper, PositionProvider

from pooltender.lint.base import _AST_TWIN, FileContext
from pooltender.lint.config import default_config
from tests._paths import SOURCE_TREES

from .cases import CASES


def _sources() -> list[object]:
    out: list[object] = []
    for code, cases in CASES.items():
        for i, text in enumerate([*cases.fail, *cases.ok, *cases.unchanged]):
            out.append(pytest.param(text, id=f"{code}-{i}"))
    for path in sorted(p for tree in SOURCE_TREES for p in tree.rglob("*.py")):
        out.append(pytest.param(path.read_text(encoding="utf-8"), id=path.name))
    out.append(pytest.param("s = f'{a(1)} and {b.c(2)!r:>{w()}}'\nx = d(f'{e()}')\n", id="fstr"))
    out.append(pytest.param("x = 'é' + f(g(1), (h)(2))\nwhile (a):\n    pass\n", id="unicode"))
    return out


@pytest.mark.parametrize("source", _sources())
def test_ast_positions_match_libcst(source: str) -> None:
    module = cst.parse_module(source)
    ctx = FileContext("x.py", source, module, default_config())
    expected = MetadataWrapper(module, unsafe_skip_copy=True).resolve(PositionProvider)
    for node_type in _AST_TWIN:
        for node in ctx.nodes(node_type):
            fast = ctx._ast_position(node)
            if fast is None:
                continue
            want = expected[node]
            assert (fast.start.line, fast.start.column) == (want.start.line, want.start.column)
            assert (fast.end.line, fast.end.column) == (want.end.line, want.end.column), node
    fell_back = [n for t in _AST_TWIN for n in ctx.nodes(t) if ctx._ast_position(n) is None]
    # only dotted module names in imports have no ast twin, unless the whole file falls back
    # (a call inside a multi-line f-string, where ast positions are unreliable before 3.12)
    whole_file = not any(ctx._ast_map.values()) if ctx._ast_map is not None else True
    assert whole_file or all(ctx._in_import(n) for n in fell_back), fell_back[:3]
