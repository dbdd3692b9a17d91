"""The rule registry: one module per rule, named after what it checks
(``second_session.py`` is POL001), each exporting ``RULE``.

Codes are stable: a code is never reused for another check. The prefix is ``POL``: the codes
were ``PT001``-``PT010`` until issue 11, but ``PT`` is flake8-pytest-style's in ruff (and this
project selects it, so ruff's RUF100 reported -- and its fix deleted -- a ``# noqa: PT003`` meant
for us). ``POL`` begins no rule code in ruff's registry (a test checks the installed ruff).
The old codes stay accepted as aliases in ``# noqa``, ``--select`` and ``--ignore`` for one
release (:data:`ALIASES`, :func:`canonical_code`). Engine codes have no module:
POL000 (file cannot be read or parsed), POL900 (unused ``# noqa``, a warning), POL901 (malformed
``# noqa``), POL999 (internal error: a bug in a rule, reported instead of crashing).
"""

from __future__ import annotations

from importlib import import_module

from pooltender.lint.base import Rule, Severity

PREFIX = "POL"
OLD_PREFIX = "PT"

RULE_MODULES = (
    "second_session",
    "manual_session_close",
    "commit_without_rollback",
    "loop_without_session_remove",
    "engine_per_call",
    "pool_too_large",
    "mysql_without_pool_recycle",
    "n_plus_one",
    "legacy_query_get",
    "slow_work_in_transaction",
)

RULES: tuple[Rule, ...] = tuple(
    import_module(f"pooltender.lint.rules.{name}").RULE for name in RULE_MODULES
)

ENGINE_CODES: dict[str, tuple[str, Severity]] = {
    "POL000": ("file cannot be read, decoded or parsed", "error"),
    "POL900": (
        "unused `# noqa` directive (warning; fails the run only when selected by name)",
        "warning",
    ),
    "POL901": ("malformed `# noqa` directive", "error"),
    "POL999": ("internal error in a rule (please report it)", "error"),
}

ALL_CODES: tuple[str, ...] = tuple(sorted([*(r.code for r in RULES), *ENGINE_CODES]))

BY_CODE: dict[str, Rule] = {r.code: r for r in RULES}


def engine_code_severity(code: str) -> Severity:
    return ENGINE_CODES[code][1]


def describe(code: str) -> str:
    """The one-line description of any code."""
    if code in BY_CODE:
        return BY_CODE[code].summary
    return ENGINE_CODES[code][0]


def severity(code: str) -> Severity:
    if code in BY_CODE:
        return BY_CODE[code].severity
    return ENGINE_CODES[code][1]


#: the pre-issue-11 codes (``PT003``) -> their successors (``POL003``), accepted for one release
ALIASES: dict[str, str] = {f"{OLD_PREFIX}{c[len(PREFIX) :]}": c for c in ALL_CODES}


def canonical_code(code: str) -> str:
    """The current code for ``code``: an old ``PTxxx`` alias maps to its ``POLxxx``."""
    upper = code.upper()
    return ALIASES.get(upper, upper)


def canonical_pattern(pattern: str) -> str:
    """A code or code prefix with the old ``PT`` prefix rewritten (``PT00`` -> ``POL00``)."""
    upper = pattern.upper()
    if upper.startswith(OLD_PREFIX) and not upper.startswith(PREFIX):
        rest = upper[len(OLD_PREFIX) :]
        if rest == "" or rest.isdigit():
            return PREFIX + rest
    return upper
