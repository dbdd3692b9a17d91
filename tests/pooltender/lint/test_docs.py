"""docs/rules/ is generated from the rule modules' docstrings and must be up to date."""

from __future__ import annotations

from pathlib import Path

from pooltender.lint.docs import render_index, render_rule
from pooltender.lint.rules import RULES

DOCS = Path(__file__).resolve().parents[3] / "docs" / "rules"
REGENERATE = "regenerate with: .venv/bin/python -m pooltender.lint.docs docs/rules"


def test_rule_pages_up_to_date() -> None:
    for rule in RULES:
        page = DOCS / f"{rule.code}.md"
        assert page.read_text(encoding="utf-8") == render_rule(rule), REGENERATE


def test_index_up_to_date() -> None:
    assert (DOCS / "README.md").read_text(encoding="utf-8") == render_index(), REGENERATE
