"""The linter never crashes on the Python standard library, and our own code obeys it.

Crash means an internal exception: the engine reports one as POL999 instead of raising, so the
test counts POL999 findings. Unparsable files (Lib/test's deliberately broken modules, files
libcst cannot parse) are POL000 findings: handled, not crashed.
"""

from __future__ import annotations

import os
import sysconfig
from pathlib import Path

import pytest

from pooltender.lint.config import default_config
from pooltender.lint.engine import discover, lint_paths
from tests._paths import SOURCE_TREES

STDLIB = Path(sysconfig.get_paths()["stdlib"])
REPO = Path(__file__).resolve().parents[3]
JOBS = min(os.cpu_count() or 1, 4)


def test_no_crash_on_the_stdlib(capsys: pytest.CaptureFixture[str]) -> None:
    config = default_config(exclude=("site-packages", "__pycache__"))
    report = lint_paths([STDLIB], config, jobs=JOBS)
    parse_errors = sum(1 for v in report.violations if v.code == "POL000")
    with capsys.disabled():
        print(
            f"\nstdlib {STDLIB}: {report.files} files, {report.lines} lines, "
            f"{len(report.crashes)} crashes, {parse_errors} unparsable (POL000, handled)"
        )
    assert report.files > 1000
    assert report.crashes == []


def test_every_rule_on_a_stdlib_sample_no_crash(capsys: pytest.CaptureFixture[str]) -> None:
    """Every rule on every file of a deterministic sample (every 8th file), bypassing the
    trigger prefilter, so rules meet code they would normally never see."""
    config = default_config(exclude=("site-packages", "__pycache__"))
    sample = discover([STDLIB], config)[::8]
    report = lint_paths(sample, config, all_rules=True, jobs=JOBS)
    with capsys.disabled():
        print(f"\nstdlib sample, all rules: {report.files} files, {len(report.crashes)} crashes")
    assert report.files == len(sample)
    assert report.crashes == []


def test_our_repository_is_clean() -> None:
    from pooltender.cli.lint import lint

    outcome = lint(list(SOURCE_TREES), config_file=REPO / "pyproject.toml", jobs=1)
    assert [v.format() for v in outcome.failing] == []
