"""``# noqa`` directives: suppression, unused (PT900, warning), malformed (PT901, error)."""

from __future__ import annotations

import pytest

from pooltender.lint.config import default_config
from pooltender.lint.engine import lint_source

BAD = "user = User.query.get(1)"


def _found(source: str) -> list[tuple[int, str]]:
    result = lint_source(source, "case.py", default_config())
    return [(v.line, v.code) for v in result.violations]


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (f"{BAD}\n", [(1, "PT009")]),
        (f"{BAD}  # noqa: PT009\n", []),
        (f"{BAD}  # noqa\n", []),
        (f"{BAD}  # NOQA:PT009,PT001\n", [(1, "PT900")]),
        (f"{BAD}  # noqa: E501\n", [(1, "PT009")]),  # another tool's code: not ours
        (f"{BAD}  # noqa: E501, PT009 long line\n", []),
        (f"{BAD}  # noqa: PT003\n", [(1, "PT009"), (1, "PT900")]),
        ("x = 1  # noqa: PT003\n", [(1, "PT900")]),
        ("x = 1  # noqa\n", []),  # bare noqa belongs to every tool: never reported unused
        ("x = 1  # noqa: PTX\n", [(1, "PT901")]),
        ("x = 1  # noqa: PT01X\n", [(1, "PT901")]),
        ("x = 1  # noqa: PT011\n", []),  # flake8-pytest-style's code (ruff): not ours
        ("x = 1  # noqa:\n", [(1, "PT901")]),
        ("x = '# noqa: PTX'\n", []),  # in a string: not a directive
        (f"{BAD}  # noqa: PTX\n", [(1, "PT009"), (1, "PT901")]),  # malformed suppresses nothing
    ],
)
def test_directives(source: str, expected: list[tuple[int, str]]) -> None:
    assert _found(source) == expected


def test_unused_warning_is_a_warning() -> None:
    result = lint_source("x = 1  # noqa: PT003\n", "case.py", default_config())
    assert [v.severity for v in result.violations] == ["warning"]


def test_unused_only_for_selected_codes() -> None:
    config = default_config(select=frozenset({"PT009", "PT900"}))
    assert lint_source("x = 1  # noqa: PT003\n", "c.py", config).violations == ()


def test_suppressed_findings_are_not_fixed() -> None:
    source = f"{BAD}  # noqa: PT009\n"
    result = lint_source(source, "c.py", default_config(), fix=True, unsafe_fixes=True)
    assert result.fixed_source is None
