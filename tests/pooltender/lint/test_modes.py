"""The fast path and the full path report the same findings.

Without ``all_rules`` the engine parses a file with the standard library's ``ast`` and lets
libcst parse it only when a selected rule's necessary condition holds
(:mod:`pooltender.lint.prefilter`); ``all_rules=True`` runs every rule on every file through
libcst. Over every fixture of the rule tables (must-fail, must-pass, fixed-to inputs and
outputs, must-stay-unchanged), with every rule selected, both must report exactly the same
violations -- and so must a ``--fix`` run before it applies anything.
"""

from __future__ import annotations

import pytest

from pooltender.lint.config import default_config
from pooltender.lint.engine import lint_source

from .cases import CASES


def _sources() -> list[object]:
    out: list[object] = []
    for code, cases in CASES.items():
        texts = [*cases.fail, *cases.ok, *cases.unchanged]
        texts += [t for before, after, _ in cases.fixed for t in (before, after)]
        out += [pytest.param(code, t, id=f"{code}-{i}") for i, t in enumerate(texts)]
    return out


@pytest.mark.parametrize(("code", "source"), _sources())
def test_fast_path_equals_full_path(code: str, source: str) -> None:
    config = default_config(**CASES[code].config)
    fast = lint_source(source, "case.py", config)
    full = lint_source(source, "case.py", config, all_rules=True)
    assert not fast.crashed, fast.violations
    assert [v.format() for v in fast.violations] == [v.format() for v in full.violations]


@pytest.mark.parametrize(("code", "source"), _sources())
def test_fix_mode_sees_the_same_findings(code: str, source: str) -> None:
    config = default_config(**CASES[code].config)
    plain = lint_source(source, "case.py", config)
    fixing = lint_source(source, "case.py", config, fix=True, unsafe_fixes=True)
    if fixing.fixed_source is None:  # nothing applied: the findings must be the same ones
        assert [v.format() for v in fixing.violations] == [v.format() for v in plain.violations]
    else:  # re-linting the fixed text must equal linting it from scratch
        again = lint_source(fixing.fixed_source, "case.py", config)
        assert [v.format() for v in fixing.violations] == [v.format() for v in again.violations]
