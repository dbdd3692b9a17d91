"""``pooltender lint``: a static checker, with fixes, for the SQLAlchemy / Flask-SQLAlchemy
anti-patterns of the connection post-mortem.

The API is the CLI's: :func:`pooltender.cli.lint.lint` for paths with configuration,
:func:`lint_source` for one text, :func:`lint_paths` for files with a :class:`LintConfig`.
One module per rule under :mod:`pooltender.lint.rules`; docs in ``docs/rules/``.
"""

from __future__ import annotations

from pooltender.lint.base import Finding, Fix, Rule, Violation
from pooltender.lint.config import ConfigError, LintConfig, default_config, load_config
from pooltender.lint.engine import FileResult, LintReport, lint_file, lint_paths, lint_source
from pooltender.lint.rules import ALL_CODES, RULES

__all__ = [
    "ALL_CODES",
    "RULES",
    "ConfigError",
    "FileResult",
    "Finding",
    "Fix",
    "LintConfig",
    "LintReport",
    "Rule",
    "Violation",
    "default_config",
    "lint_file",
    "lint_paths",
    "lint_source",
    "load_config",
]
