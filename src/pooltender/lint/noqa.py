"""``# noqa`` directives, themselves checked (after sqlfluff's ``core/rules/noqa.py``).

Contract:

* ``# noqa: POL001`` (or ``# noqa: POL001,POL003``) suppresses those codes on that physical
  line; a bare ``# noqa`` suppresses every code on it. The old codes (``# noqa: PT003``) are
  accepted as aliases of their successors for one release.
* Codes of other tools (``E501``, ``S608``) in the same comment are left alone: the comment is
  shared with flake8/ruff.
* A malformed directive -- ``# noqa:`` with no code, or a first token that is not a code, or
  a ``POL`` (or old ``PT``) token that is not code-shaped (``# noqa: POLX``) -- is reported as
  **POL901** (error): a directive that silently suppresses nothing is worse than none. A
  well-formed ``PT`` code that is not one of our aliases (``PT011``) is left alone: it is
  ruff's flake8-pytest-style (PT001-PT031), which this repository selects -- the reason our
  prefix moved to ``POL``.
* A ``# noqa: POLxxx`` naming a selected code that was not reported on its line is reported as
  **POL900** (warning). Bare ``# noqa`` is never reported unused: other tools read it too.

Comments are found with :mod:`tokenize`, so ``"# noqa"`` inside a string is not a directive;
files without the text ``noqa`` are not tokenized at all.
"""

from __future__ import annotations

import io
import re
import tokenize
from collections.abc import Mapping
from dataclasses import dataclass

_NOQA = re.compile(r"#\s*noqa(?P<sep>\s*:)?(?P<codes>[^#]*)", re.IGNORECASE)
_CODE = re.compile(r"^[A-Z]+[0-9]+$")
_OUR = re.compile(r"^(POL|PT)", re.IGNORECASE)


@dataclass(frozen=True)
class Directive:
    """One ``# noqa`` comment: ``codes`` None means bare (suppress all)."""

    line: int
    col: int
    codes: frozenset[str] | None
    malformed: str | None = None


def parse_comment(
    comment: str,
    line: int,
    col: int,
    known: frozenset[str],
    aliases: Mapping[str, str] | None = None,
) -> Directive | None:
    """The directive in one comment token, or None when it has no ``noqa``. ``aliases`` maps
    old codes to the current ones (the directive then holds the current code)."""
    aliases = aliases or {}
    match = _NOQA.search(comment)
    if match is None:
        return None
    col = col + match.start()
    if match.group("sep") is None:
        rest = match.group("codes")
        if rest.strip() and not rest[:1].isspace():  # a longer word: no directive
            return None
        return Directive(line, col, None)
    tokens = [t for t in re.split(r"[\s,]+", match.group("codes").strip()) if t]
    if not tokens:
        return Directive(line, col, frozenset(), "`# noqa:` names no code")
    ours: set[str] = set()
    for token in tokens:
        upper = token.upper()
        upper = aliases.get(upper, upper)
        if upper in known:
            ours.add(upper)
        elif _OUR.match(upper) and not _CODE.match(upper):
            return Directive(line, col, frozenset(), f"`# noqa:` names malformed code {token!r}")
        elif not _CODE.match(upper):
            if token is tokens[0]:
                return Directive(line, col, frozenset(), f"`# noqa:` has malformed code {token!r}")
            break  # free text after the codes ("
    return Directive(line, col, frozenset(ours))


def find_directives(
    source: str, known: frozenset[str], aliases: Mapping[str, str] | None = None
) -> list[Directive]:
    """Every ``# noqa`` comment in ``source`` (which must tokenize; else none are found)."""
    if "noqa" not in source.lower():
        return []
    found = []
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT:
                directive = parse_comment(
                    tok.string, tok.start[0], tok.start[1] + 1, known, aliases
                )
                if directive is not None:
                    found.append(directive)
    except (tokenize.TokenError, SyntaxError, IndentationError):
        return found
    return found
