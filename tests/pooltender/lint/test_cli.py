"""``pooltender lint`` end to end: output, exit codes, configuration, fixes, odd files."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from click.testing import CliRunner

from pooltender.cli import main
from pooltender.lint.rules import ALL_CODES

# The SARIF 2.1.0 schema (final "rtm.5" text, version enum "2.1.0"), vendored from the npm
# package @microsoft/jest-sarif 1.0.0-beta.0 (MIT), lib/schemas/sarif-2.1.0-rtm.5.json: tests
# have no network. Its JSON-Schema dialect is draft-04; jsonschema picks the validator from it.
SCHEMA = Path(__file__).with_name("sarif-schema-2.1.0.json")

BAD = """\
from app import db


def get_user():
    user = User.query.get(1)
    db.session.close()
    return user, Post.query.count()


def teardown(exc):
    db.session.remove()
    db.session.close()
"""


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "pyproject.toml").write_text(
        "[project]\nname = 'x'\ndependencies = ['SQLAlchemy>=2.0', 'Flask-SQLAlchemy>=3.1']\n"
    )
    pkg = tmp_path / "app"
    pkg.mkdir()
    (pkg / "views.py").write_text(BAD)
    (pkg / "clean.py").write_text("def f():\n    return db.session.get(User, 1)\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["lint", *args])
    return result.exit_code, result.stdout


def test_text_output_sorted_and_exit_1(project: Path) -> None:
    code, out = run("app")
    assert code == 1
    lines = out.splitlines()
    assert lines == [
        "app/views.py:5:12: POL009 legacy Query.get(); use db.session.get(User, ...)",
        "app/views.py:6:5: POL002 db.session.close() in the middle of a unit of work: line 7 "
        "uses the session again (a new transaction; objects loaded before are detached); "
        "delete the close() and let teardown end the session",
        "app/views.py:12:5: POL002 redundant db.session.close() right after "
        "db.session.remove() (which closes the session); delete it",
    ]


def test_clean_exit_0(project: Path) -> None:
    assert run("app/clean.py") == (0, "")


@pytest.mark.parametrize(
    "args",
    [
        ("--select", "POL123", "app"),
        ("--ignore", "XX1", "app"),
        ("missing_dir",),
        ("--config", "nope.toml", "app"),
        ("--format", "xml", "app"),
        (),
    ],
)
def test_usage_errors_exit_2(project: Path, args: tuple[str, ...]) -> None:
    assert run(*args)[0] == 2


def test_bad_config_exit_2(project: Path) -> None:
    (project / "pyproject.toml").write_text("[tool.pooltender.lint]\nselct = ['POL001']\n")
    assert run("app")[0] == 2
    (project / "pyproject.toml").write_text("[tool.pooltender.lint\n")
    assert run("app")[0] == 2


def test_select_ignore_and_config(project: Path) -> None:
    code, out = run("--select", "POL009", "app")
    assert code == 1
    assert [line.split()[1] for line in out.splitlines()] == ["POL009"]
    assert run("--ignore", "POL002,POL009", "app") == (0, "")
    (project / "pyproject.toml").write_text(
        "[tool.pooltender.lint]\nignore = ['POL002']\npool-size-limit = 10\n"
    )
    (project / "app" / "cfg.py").write_text("OPTS = {'pool_size': 20}\n")
    _, out = run("app")
    assert "POL002" not in out
    assert "app/cfg.py:1:22: POL006 pool_size=20 is above 10 (pool-size-limit)" in out


def test_exclude(project: Path) -> None:
    assert run("--exclude", "views.py", "app") == (0, "")


def test_warning_fails_only_when_selected_by_name(project: Path) -> None:
    (project / "app" / "w.py").write_text("x = 1  # noqa: POL003\n")
    code, out = run("app/w.py")
    assert code == 0
    assert "POL900" in out
    assert run("--select", "POL900,POL003", "app/w.py")[0] == 1


def test_fix_then_idempotent(project: Path) -> None:
    code, _ = run("--fix", "app")
    assert code == 1  # the unsafe close() fix is not applied: POL002 remains on line 6
    fixed = (project / "app" / "views.py").read_text()
    assert "db.session.get(User, 1)" in fixed
    assert fixed.count("db.session.close()") == 1
    code, out = run("--fix", "--unsafe-fixes", "app")
    assert code == 0, out
    once = (project / "app" / "views.py").read_text()
    assert "close()" not in once
    assert run("--fix", "--unsafe-fixes", "app") == (0, "")
    assert (project / "app" / "views.py").read_text() == once


def test_unparsable_binary_and_undecodable_files(project: Path) -> None:
    (project / "app" / "broken.py").write_text("def f(:\n    pass\n")
    (project / "app" / "binary.py").write_bytes(b"\x00\x01\x02\xff\xfe")
    (project / "app" / "latin.py").write_bytes(b"x = '\xe9'\n")
    (project / "app" / "cookie.py").write_bytes(b"# -*- coding: latin-1 -*-\nx = '\xe9'\n")
    code, out = run("--select", "POL000", "app")
    assert code == 1
    found = sorted(line.split(":")[0] for line in out.splitlines())
    assert found == ["app/binary.py", "app/broken.py", "app/latin.py"]
    assert "app/broken.py:1:7: POL000 syntax error" in out


def test_json_output(project: Path) -> None:
    code, out = run("--format", "json", "app")
    assert code == 1
    rows = json.loads(out)
    assert [r["code"] for r in rows] == ["POL009", "POL002", "POL002"]
    assert rows[0] | {"message": ""} == {
        "path": "app/views.py",
        "line": 5,
        "column": 12,
        "end_line": 5,
        "end_column": 29,
        "code": "POL009",
        "message": "",
        "severity": "error",
        "fix": "safe",
    }


def test_sarif_validates_against_the_2_1_0_schema(project: Path) -> None:
    (project / "app" / "w.py").write_text("x = 1  # noqa: POL003\n")
    code, out = run("--format", "sarif", "app")
    assert code == 1
    log = json.loads(out)
    schema = json.loads(SCHEMA.read_text())
    jsonschema.validate(log, schema)
    run_ = log["runs"][0]
    assert [r["id"] for r in run_["tool"]["driver"]["rules"]] == list(ALL_CODES)
    assert {r["ruleId"] for r in run_["results"]} == {"POL002", "POL009", "POL900"}
    assert {r["level"] for r in run_["results"]} == {"error", "warning"}


def test_api_is_the_command(project: Path) -> None:
    from pooltender.cli.lint import lint

    outcome = lint([Path("app")], select=["POL009"], jobs=1)
    assert outcome.exit_code == 1
    assert [v.code for v in outcome.violations] == ["POL009"]
