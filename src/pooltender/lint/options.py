""":class:`LintConfig`, the values a lint run is parameterised by, and their defaults.

Apart from :mod:`pooltender.lint.config` (which reads them from pyproject.toml and the
command line, and needs the rule registry to check codes) so that the engine's base can name
the type without importing the registry that imports it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pooltender.lint.versions import Pins

__all__ = ["DEFAULT_EXCLUDE", "LintConfig"]

DEFAULT_EXCLUDE = (
    ".git",
    ".hg",
    ".venv",
    "venv",
    "__pycache__",
    "node_modules",
    ".tox",
    ".nox",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    "build",
    "dist",
    "site-packages",
)


@dataclass(frozen=True)
class LintConfig:
    """Everything a lint run is parameterised by. Picklable (worker processes get a copy)."""

    select: frozenset[str] = frozenset()
    explicitly_selected: frozenset[str] = frozenset()
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE
    db_names: tuple[str, ...] = ("db",)
    pool_size_limit: int = 50
    max_overflow_limit: int = 100
    relationships: tuple[str, ...] = ()
    pins: Pins = field(default_factory=Pins)
    source: str | None = field(default=None, compare=False)
