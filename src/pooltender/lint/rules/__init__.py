"""The rule registry: one module per rule (``PT001.py`` ...), each exporting ``RULE``.

Codes are stable: a code is never reused for another check. Engine codes have no module:
PT000 (file cannot be read or parsed), PT900 (unused ``# noqa``, a warning), PT901 (malformed
``# noqa``), PT999 (internal error: a bug in a rule, reported instead of crashing).
"""

from __future__ import annotations

from importlib import import_module

from pooltender.lint.base import Rule, Severity

RULE_MODULES = (
    "PT001",
    "PT002",
    "PT003",
    "PT004",
    "PT005",
    "PT006",
    "PT007",
    "PT008",
    "PT009",
    "PT010",
)

RULES: tuple[Rule, ...] = tuple(
    import_module(f"pooltender.lint.rules.{name}").RULE for name in RULE_MODULES
)

ENGINE_CODES: dict[str, tuple[str, Severity]] = {
    "PT000": ("file cannot be read, decoded or parsed", "error"),
    "PT900": (
        "unused `# noqa` directive (warning; fails the run only when selected by name)",
        "warning",
    ),
    "PT901": ("malformed `# noqa` directive", "error"),
    "PT999": ("internal error in a rule (please report it)", "error"),
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


def canonical_code(code: str) -> str:
    """The current code for ``code`` (old codes map to their successors)."""
    return code
