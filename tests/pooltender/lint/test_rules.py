"""Every rule against its table: must fail, must pass, fixed-to (parses, no longer triggers,
idempotent)."""

from __future__ import annotations

import libcst as cst
import pytest

from pooltender.lint.config import LintConfig, default_config
from pooltender.lint.engine import lint_source
from pooltender.lint.rules import RULES

from .cases import CASES


def _config(code: str) -> LintConfig:
    return default_config(select=frozenset({code}), **CASES[code].config)


def _codes(source: str, code: str, *, all_rules: bool = False) -> list[str]:
    config = _config(code)
    result = lint_source(source, "case.py", config, all_rules=all_rules)
    assert not result.crashed, result.violations
    return [v.code for v in result.violations]


def _params(kind: str) -> list[object]:
    return [
        pytest.param(code, i, id=f"{code}-{kind}-{i}")
        for code, cases in CASES.items()
        for i in range(len(getattr(cases, kind)))
    ]


def test_every_rule_has_cases() -> None:
    for rule in RULES:
        cases = CASES[rule.code]
        assert cases.fail, rule.code
        assert cases.ok, rule.code
        if rule.fix is not None:
            assert cases.fixed, f"{rule.code} has a fix but no fixed-to case"


@pytest.mark.parametrize(("code", "i"), _params("fail"))
def test_must_fail(code: str, i: int) -> None:
    source = CASES[code].fail[i]
    assert code in _codes(source, code)
    # the trigger prefilter must never hide a finding
    assert code in _codes(source, code, all_rules=True)


@pytest.mark.parametrize(("code", "i"), _params("ok"))
def test_must_pass(code: str, i: int) -> None:
    assert code not in _codes(CASES[code].ok[i], code, all_rules=True)


@pytest.mark.parametrize(("code", "i"), _params("fixed"))
def test_fixed_to(code: str, i: int) -> None:
    before, after, unsafe = CASES[code].fixed[i]
    config = _config(code)
    if unsafe:  # an unsafe fix is not applied without --unsafe-fixes
        safe_only = lint_source(before, "case.py", config, fix=True)
        assert safe_only.fixed_source is None
    result = lint_source(before, "case.py", config, fix=True, unsafe_fixes=True)
    assert result.fixed_source == after
    cst.parse_module(after)  # the fixed code parses
    assert code not in [v.code for v in result.violations]  # and no longer triggers
    again = lint_source(after, "case.py", config, fix=True, unsafe_fixes=True)
    assert again.fixed_source is None  # a second --fix changes nothing


@pytest.mark.parametrize(("code", "i"), _params("unchanged"))
def test_left_unchanged_by_unsafe_fixes(code: str, i: int) -> None:
    source = CASES[code].unchanged[i]
    config = default_config(**CASES[code].config)  # every rule, as a user's --fix would run
    result = lint_source(source, "case.py", config, fix=True, unsafe_fixes=True)
    assert not result.crashed, result.violations
    assert result.fixed_source is None, result.fixed_source


def test_rule_modules_follow_the_template() -> None:
    for rule in RULES:
        assert rule.doc.startswith(f"{rule.code} {rule.name}:"), rule.code
        for heading in ("## What it does", "## Why is this bad?", "## Example", "## Use instead"):
            assert heading in rule.doc, (rule.code, heading)
        assert "## Fix safety" in rule.doc, rule.code
