"""``# noqa`` directives: suppression, unused (POL900, warning), malformed (POL901, error)."""

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
        (f"{BAD}\n", [(1, "POL009")]),
        (f"{BAD}  # noqa: POL009\n", []),
        (f"{BAD}  # noqa\n", []),
        (f"{BAD}  # NOQA:POL009,POL001\n", [(1, "POL900")]),
        (f"{BAD}  # noqa: E501\n", [(1, "POL009")]),  # another tool's code: not ours
        (f"{BAD}  # noqa: E501, POL009 long line\n", []),
        (f"{BAD}  # noqa: POL003\n", [(1, "POL009"), (1, "POL900")]),
        ("x = 1  # noqa: POL003\n", [(1, "POL900")]),
        ("x = 1  # noqa\n", []),  # bare noqa belongs to every tool: never reported unused
        ("x = 1  # noqa: PTX\n", [(1, "POL901")]),
        ("x = 1  # noqa: POLX\n", [(1, "POL901")]),
        # the old codes are aliases for one release (issue 11)
        (f"{BAD}  # noqa: PT009\n", []),
        (f"{BAD}  # noqa: pt009, E501\n", []),
        ("x = 1  # noqa: PT003\n", [(1, "POL900")]),
        ("x = 1  # noqa: PT01X\n", [(1, "POL901")]),
        ("x = 1  # noqa: PT011\n", []),  # flake8-pytest-style's code (ruff): not ours
        ("x = 1  # noqa:\n", [(1, "POL901")]),
        ("x = '# noqa: PTX'\n", []),  # in a string: not a directive
        (f"{BAD}  # noqa: PTX\n", [(1, "POL009"), (1, "POL901")]),  # malformed suppresses nothing
    ],
)
def test_directives(source: str, expected: list[tuple[int, str]]) -> None:
    assert _found(source) == expected


def test_unused_warning_is_a_warning() -> None:
    result = lint_source("x = 1  # noqa: POL003\n", "case.py", default_config())
    assert [v.severity for v in result.violations] == ["warning"]


def test_unused_only_for_selected_codes() -> None:
    config = default_config(select=frozenset({"POL009", "POL900"}))
    assert lint_source("x = 1  # noqa: POL003\n", "c.py", config).violations == ()


def test_suppressed_findings_are_not_fixed() -> None:
    source = f"{BAD}  # noqa: POL009\n"
    result = lint_source(source, "c.py", default_config(), fix=True, unsafe_fixes=True)
    assert result.fixed_source is None
