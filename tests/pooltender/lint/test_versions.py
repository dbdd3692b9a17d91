"""Version and binding awareness: pinned SQLAlchemy / Flask-SQLAlchemy read from the project's
files, fixes that need a newer API withheld (the reason shown once), ``db-names`` validated."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from pooltender.cli import main
from pooltender.lint.config import ConfigError, load_config
from pooltender.lint.versions import lowest_allowed, read_pins

LEGACY = "from app import db\n\n\ndef load(uid):\n    return User.query.get(uid)\n"


@pytest.mark.parametrize(
    ("spec", "lowest"),
    [
        ("==1.3.24", (1, 3, 24)),
        (">=1.3.0,<2", (1, 3, 0)),
        ("~=1.4.37", (1, 4, 37)),
        ("^1.4", (1, 4)),
        ("<2", None),
        ("*", None),
        ("!=1.4.0", None),
    ],
)
def test_lowest_allowed(spec: str, lowest: tuple[int, ...] | None) -> None:
    assert lowest_allowed(spec) == lowest


@pytest.mark.parametrize(
    ("name", "text", "sqlalchemy"),
    [
        ("requirements.txt", "Flask==2.0\nSQLAlchemy==1.3.24  # pinned\n", (1, 3, 24)),
        ("pyproject.toml", "[project]\ndependencies = ['sqlalchemy>=2.0.1']\n", (2, 0, 1)),
        (
            "pyproject.toml",
            "[tool.poetry.dependencies]\npython = '^3.11'\nSQLAlchemy = '^1.4'\n",
            (1, 4),
        ),
        ("setup.py", "install_requires=['SQLAlchemy>=1.3,<2', 'flask']\n", (1, 3)),
        ("setup.cfg", "[options]\ninstall_requires =\n    sqlalchemy ~= 1.4.3\n", (1, 4, 3)),
        ("requirements.txt", "flask\n", None),
    ],
)
def test_read_pins(tmp_path: Path, name: str, text: str, sqlalchemy: object) -> None:
    (tmp_path / name).write_text(text)
    assert read_pins(tmp_path / "pkg").sqlalchemy == sqlalchemy


def test_lock_file_wins_over_a_range(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[project]\ndependencies = ['sqlalchemy>=1.3']\n")
    (tmp_path / "uv.lock").write_text('[[package]]\nname = "sqlalchemy"\nversion = "2.0.36"\n')
    assert read_pins(tmp_path).sqlalchemy == (2, 0, 36)


def _project(tmp_path: Path, requirements: str) -> Path:
    (tmp_path / "requirements.txt").write_text(requirements)
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    pkg = tmp_path / "app"
    pkg.mkdir()
    (pkg / "users.py").write_text(LEGACY)
    return pkg


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["lint", *args])
    return result.exit_code, result.stdout, result.stderr


def test_sqlalchemy_13_pin_leaves_code_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pkg = _project(tmp_path, "SQLAlchemy==1.3.24\nFlask-SQLAlchemy==2.5.1\n")
    monkeypatch.chdir(tmp_path)
    code, out, err = _run("--fix", "--unsafe-fixes", "app")
    assert (pkg / "users.py").read_text() == LEGACY  # no Session.get in 1.3: no rewrite
    assert code == 0  # and no finding suggesting an API that does not exist
    assert out == ""
    assert err.count("POL009 get: not reported, SQLAlchemy is pinned at 1.3.24") == 1


def test_unpinned_project_gets_the_finding_without_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pkg = _project(tmp_path, "flask\n")
    (pkg / "more.py").write_text(LEGACY)
    monkeypatch.chdir(tmp_path)
    code, out, err = _run("--fix", "app")
    assert code == 1
    assert out.count("POL009") == 2
    assert (pkg / "users.py").read_text() == LEGACY
    assert err.count("reported without a fix, no SQLAlchemy version is pinned") == 1  # once


def test_pinned_new_enough_is_fixed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = _project(tmp_path, "SQLAlchemy>=2.0\n")
    monkeypatch.chdir(tmp_path)
    assert _run("--fix", "app")[0] == 0
    assert "db.session.get(User, uid)" in (pkg / "users.py").read_text()


def test_config_override(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.pooltender.lint]\nsqlalchemy-version = '1.3'\n")
    assert load_config(search_from=tmp_path).pins.sqlalchemy == (1, 3)
    (tmp_path / "pyproject.toml").write_text("[tool.pooltender.lint]\nsqlalchemy-version = 13\n")
    with pytest.raises(ConfigError, match="sqlalchemy-version"):
        load_config(search_from=tmp_path)


@pytest.mark.parametrize("entry", ["db.session", "app.db()", "", "1db", "models.User.query"])
def test_unusable_db_names_are_errors(tmp_path: Path, entry: str) -> None:
    (tmp_path / "pyproject.toml").write_text(f"[tool.pooltender.lint]\ndb-names = ['{entry}']\n")
    with pytest.raises(ConfigError, match="db-names entry"):
        load_config(search_from=tmp_path)


def test_dotted_db_names_entry_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "pyproject.toml").write_text(
        "[tool.pooltender.lint]\ndb-names = ['db', 'extensions.database']\n"
    )
    (tmp_path / "w.py").write_text(
        "@celery.task\ndef t():\n    extensions.database.session.commit()\n"
    )
    monkeypatch.chdir(tmp_path)
    code, out, _ = _run("w.py")
    assert code == 1
    assert "POL003" in out
