"""The SQLAlchemy and Flask-SQLAlchemy versions a linted project pins.

A fix may only write an API that exists in every version the project allows, so what matters
is the **pinned version**: the lowest version the project's constraints allow. It is read from
the nearest project root at or above the linted path (the first directory holding a
``pyproject.toml``, ``setup.py``, ``setup.cfg``, ``requirements*.txt``, ``Pipfile`` or a lock
file), in these files:

* ``pyproject.toml``: PEP 621 ``[project] dependencies`` and optional dependencies, Poetry's
  ``[tool.poetry.dependencies]`` (``^1.3``, ``~1.3``, ``1.3.*``);
* ``requirements*.txt`` (also under ``requirements/``), ``setup.py``, ``setup.cfg``,
  ``Pipfile``: requirement strings found in the text;
* lock files (``poetry.lock``, ``uv.lock``, ``Pipfile.lock``, ``pdm.lock``): the exact
  locked version, which wins over ranges (it is what runs).

Several constraints intersect, so their lowest bounds combine by taking the highest.
No constraint at all gives ``None`` ("unknown"): rules then offer a fix needing SQLAlchemy >=
1.4 or Flask-SQLAlchemy >= 3 only when a constraint rules out older versions, i.e. never.
``[tool.pooltender.lint] sqlalchemy-version`` / ``flask-sqlalchemy-version`` override it.

Specifier semantics follow PEP 440 (``==``, ``===``, ``~=``, ``>=``, ``>``; ``<``, ``<=``,
``!=`` set no lower bound) and Poetry's caret / tilde forms.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

Version = tuple[int, ...]

_ROOT_MARKERS = (
    "pyproject.toml",
    "setup.py",
    "setup.cfg",
    "Pipfile",
    "requirements.txt",
    "poetry.lock",
    "uv.lock",
)
_PACKAGES = {"sqlalchemy": "sqlalchemy", "flask-sqlalchemy": "flask_sqlalchemy"}
_REQ = re.compile(
    r"""(?ix)(?<![\w.-])["']?(?P<name>flask[-_.]sqlalchemy|sqlalchemy)(?:\[[^\]]*\])?["']?
    \s*(?:=\s*["'](?P<poetry>[^"']*)["']          # Poetry / Pipfile:  sqlalchemy = "^1.3"
    |(?P<spec>(?:[<>=!~^]=?=?\s*[\w.*+!-]+\s*,?\s*)+))"""
)
_LOCK_ENTRY = re.compile(
    r"""(?im)^\s*name\s*=\s*"(?P<name>flask[-_.]sqlalchemy|sqlalchemy)"\s*\n\s*version\s*=\s*"(?P<version>[^"]+)\""""
)
_PIPFILE_LOCK = re.compile(
    r"""(?is)"(?P<name>flask[-_.]sqlalchemy|sqlalchemy)"\s*:\s*\{[^}]*?"version"\s*:\s*"==(?P<version>[^"]+)\""""
)


@dataclass(frozen=True)
class Pins:
    """Lowest allowed versions (None: no constraint found) and where they were read."""

    sqlalchemy: Version | None = None
    flask_sqlalchemy: Version | None = None
    source: str = ""

    def sqlalchemy_at_least(self, wanted: Version) -> bool:
        return self.sqlalchemy is not None and self.sqlalchemy >= wanted

    def flask_sqlalchemy_at_least(self, wanted: Version) -> bool:
        return self.flask_sqlalchemy is not None and self.flask_sqlalchemy >= wanted


def parse_version(text: str) -> Version | None:
    numbers = re.findall(r"\d+", text.split("+", 1)[0])[:3]
    parts = []
    for n in numbers:
        parts.append(int(n))
    return tuple(parts) or None


def lowest_allowed(spec: str) -> Version | None:
    """The lowest version a specifier string allows, None when it sets no lower bound."""
    best: Version | None = None
    for clause in re.split(r"[,|]", spec):
        clause = clause.strip()
        m = re.match(r"^(===|==|~=|>=|>|\^|~|<=|<|!=)?\s*([\w.*+!-]+)$", clause)
        if m is None:
            continue
        op, raw = m.group(1) or "==", m.group(2)
        if op in ("<", "<=", "!=") or raw in ("*", ""):
            continue
        version = parse_version(raw.replace("*", "0"))
        if version is None:
            continue
        if best is None or version > best:
            best = version
    return best


def _combine(a: Version | None, b: Version | None) -> Version | None:
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)


def find_root(start: Path) -> Path | None:
    start = start.resolve()
    if start.is_file():
        start = start.parent
    for directory in (start, *start.parents):
        if any((directory / marker).exists() for marker in _ROOT_MARKERS):
            return directory
    return None


def _candidate_files(root: Path) -> list[Path]:
    files = [root / n for n in ("pyproject.toml", "setup.py", "setup.cfg", "Pipfile")]
    files += sorted(root.glob("requirements*.txt")) + sorted(root.glob("requirements/*.txt"))
    files += sorted(root.glob("*/requirements*.txt"))
    return [f for f in files if f.is_file()]


def _pyproject_specs(text: str) -> list[tuple[str, str]]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return []
    found: list[tuple[str, str]] = []
    project = data.get("project", {})
    reqs = list(project.get("dependencies", []) or [])
    for extra in (project.get("optional-dependencies", {}) or {}).values():
        reqs += list(extra or [])
    for req in reqs:
        if isinstance(req, str):
            found += _text_specs(req)
    poetry = data.get("tool", {}).get("poetry", {})
    tables = [poetry.get("dependencies", {}) or {}]
    for group in (poetry.get("group", {}) or {}).values():
        tables.append((group or {}).get("dependencies", {}) or {})
    for table in tables:
        for name, value in table.items():
            key = _norm(name)
            if key in _PACKAGES:
                if isinstance(value, dict):
                    value = value.get("version", "")
                if isinstance(value, str):
                    found.append((key, value))
    return found


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name.lower())


def _text_specs(text: str) -> list[tuple[str, str]]:
    found = []
    for m in _REQ.finditer(text):
        spec = m.group("poetry") if m.group("poetry") is not None else m.group("spec")
        found.append((_norm(m.group("name")), spec or ""))
    return found


def read_pins(start: Path) -> Pins:
    """The pins of the project around ``start`` (a file or directory)."""
    root = find_root(start)
    if root is None:
        return Pins()
    lowest: dict[str, Version | None] = {"sqlalchemy": None, "flask-sqlalchemy": None}
    sources: list[str] = []
    for path in _candidate_files(root):
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        specs = _pyproject_specs(text) if path.name == "pyproject.toml" else _text_specs(text)
        for name, spec in specs:
            bound = lowest_allowed(spec)
            if bound is not None:
                lowest[name] = _combine(lowest[name], bound)
                sources.append(path.name)
    locked: dict[str, Version | None] = {}
    for lock in ("poetry.lock", "uv.lock", "pdm.lock", "Pipfile.lock"):
        path = root / lock
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        pattern = _PIPFILE_LOCK if lock == "Pipfile.lock" else _LOCK_ENTRY
        for m in pattern.finditer(text):
            locked[_norm(m.group("name"))] = parse_version(m.group("version"))
            sources.append(lock)
    lowest.update({k: v for k, v in locked.items() if v is not None})
    return Pins(
        lowest["sqlalchemy"],
        lowest["flask-sqlalchemy"],
        ", ".join(dict.fromkeys(sources)),
    )


def show(version: Version | None) -> str:
    return "unpinned" if version is None else ".".join(map(str, version))
