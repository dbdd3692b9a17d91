"""The CLI without an optional dependency: the subcommand that needs it says which extra to
install (one line, exit 2), and every other subcommand keeps working. Run in a fresh
interpreter where ``import libcst`` fails, as it does when the lint extra is not installed."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests._paths import pythonpath

WITHOUT_LIBCST = (
    "import sys\n"
    "sys.modules['libcst'] = None  # what an absent package looks like to import\n"
    "from pooltender.cli import main\n"
    "main(sys.argv[1:], prog_name='pooltender')\n"
)


def run_without_libcst(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": pythonpath()}
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_LIBCST, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_lint_without_libcst_names_the_extra() -> None:
    result = run_without_libcst("lint", "src", "--fix")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "Error: pooltender lint needs libcst, which is not installed: "
        "pip install 'pooltender[lint]'"
    ]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("args", [["--help"], ["budget", "--help"], ["doctor", "--help"]])
def test_other_subcommands_keep_working_without_libcst(args: list[str]) -> None:
    result = run_without_libcst(*args)
    assert result.returncode == 0, result.stderr
    assert "Usage: pooltender" in result.stdout


def test_budget_runs_without_libcst() -> None:
    result = run_without_libcst(
        "budget", "--hosts", "2", "--processes", "4", "--max-connections", "151"
    )
    assert result.returncode == 0, result.stderr
    assert "libcst" not in result.stdout + result.stderr


def test_a_missing_pooltender_module_is_not_hidden() -> None:
    code = "import sys\nsys.modules['pooltender.lint.engine'] = None\nimport pooltender.cli\n"
    env = {**os.environ, "PYTHONPATH": pythonpath()}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode != 0
    assert "ModuleNotFoundError" in result.stderr
