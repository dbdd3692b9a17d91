"""Walk files, parse once, run the selected rules, apply ``# noqa``, apply fixes.

Contract:

* Never raises on file content. A file that cannot be read, decoded or parsed is reported as
  **POL000**; an exception inside a rule (a bug of ours) is reported as **POL999** and the other
  rules still run -- so a crash is countable, which the standard-library test does.
* Parse cheaply first: a file is parsed with the standard library's ``ast`` (C speed; also the
  syntax check), each selected rule's text triggers and then its necessary condition on that
  tree (:mod:`pooltender.lint.prefilter`) decide whether it can fire, and libcst parses the
  file only when one can. Finding positions come from the same ``ast`` tree where possible.
  This is what makes linting a large tree cheap. ``all_rules=True`` turns the shortcut off;
  tests/pooltender/lint/test_modes.py requires both paths to report the same findings.
* Fixes: the applicable fixes of a pass are applied together when their ranges do not overlap,
  the result is re-parsed and re-linted, up to :data:`MAX_FIX_PASSES`; a fix whose output does
  not parse is discarded and reported as POL999. Only ``safe`` fixes apply unless
  ``unsafe_fixes``; suppressed (``# noqa``) findings are never fixed.
* Project-wide facts (relationship names for POL008) come from one text scan of all files
  before linting, so results do not depend on the order or grouping of files.
"""

from __future__ import annotations

import ast
import io
import os
import re
import tokenize
import warnings
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from fnmatch import fnmatch
from multiprocessing import get_context
from pathlib import Path
from typing import TypedDict, Unpack

import libcst as cst

from pooltender.lint.base import FileContext, Finding, Fix, Replacement, Violation
from pooltender.lint.config import LintConfig
from pooltender.lint.noqa import find_directives
from pooltender.lint.prefilter import FileFacts, facts_of
from pooltender.lint.rules import ALIASES, ALL_CODES, RULES, engine_code_severity
from pooltender.lint.scopes import file_kind
from pooltender.lint.summaries import (
    FunctionSummary,
    merge_maps,
    summarize_source,
    summarize_tree,
)

MAX_FIX_PASSES = 10
_KNOWN = frozenset(ALL_CODES)
PARALLEL_MIN_FILES = 16


class PathError(ValueError):
    """A path given to the linter does not exist."""


@dataclass(frozen=True)
class FileResult:
    """The outcome for one file: remaining violations, fixes applied, lines, internal errors."""

    path: str
    violations: tuple[Violation, ...]
    lines: int = 0
    fixes_applied: int = 0
    fixed_source: str | None = None
    crashed: bool = False
    notes: tuple[str, ...] = ()


@dataclass
class LintReport:
    """All files' results; ``violations`` sorted as printed."""

    results: list[FileResult] = field(default_factory=list)

    @property
    def violations(self) -> list[Violation]:
        return sorted(v for r in self.results for v in r.violations)

    @property
    def files(self) -> int:
        return len(self.results)

    @property
    def lines(self) -> int:
        return sum(r.lines for r in self.results)

    @property
    def fixes_applied(self) -> int:
        return sum(r.fixes_applied for r in self.results)

    @property
    def notes(self) -> list[str]:
        """Why rules skipped findings or fixes (versions, bindings), each once."""
        return sorted({n for r in self.results for n in r.notes})

    @property
    def crashes(self) -> list[Violation]:
        return [v for v in self.violations if v.code == "POL999"]


# -- discovery -------------------------------------------------------------------------------


def is_excluded(path: Path, root: Path, patterns: Sequence[str]) -> bool:
    """True when a glob matches the path relative to ``root`` or any one of its parts."""
    try:
        rel = path.relative_to(root).as_posix()
    except ValueError:
        rel = path.as_posix()
    parts = rel.split("/")
    return any(fnmatch(rel, p) or any(fnmatch(part, p) for part in parts) for p in patterns)


def discover(paths: Iterable[Path], config: LintConfig) -> list[Path]:
    """Python files under ``paths``: directories walked for ``*.py``/``*.pyi`` (excludes
    applied), files given by name always linted. Raises :class:`PathError` for a missing path.
    """
    found: list[Path] = []
    for given in paths:
        if not given.exists():
            raise PathError(f"path does not exist: {given}")
        if given.is_file():
            found.append(given)
            continue
        for dirpath, dirnames, filenames in os.walk(given):
            here = Path(dirpath)
            dirnames[:] = sorted(
                d for d in dirnames if not is_excluded(here / d, given, config.exclude)
            )
            for name in sorted(filenames):
                candidate = here / name
                if name.endswith((".py", ".pyi")) and not is_excluded(
                    candidate, given, config.exclude
                ):
                    found.append(candidate)
    return list(dict.fromkeys(found))


def display_path(path: Path) -> str:
    try:
        return os.path.relpath(path)
    except ValueError:  # another drive on Windows
        return str(path)


# -- project facts ---------------------------------------------------------------------------

_NO_SUMMARY = frozenset({"test", "migration"})
# A file none of whose functions can have a summary worth keeping is not parsed for one.
_SUMMARY_WORDS = re.compile(
    r"session|query|sleep|requests|httpx|urlopen|hash|password|bcrypt|upload|download|subprocess"
    r"|Popen|system|_object|_blob|verify"
)

_RELATIONSHIP = re.compile(
    r"^[ \t]*(?P<name>\w+)\s*(?::[^=\n]+)?=\s*(?:[\w.]+\.)?relationship\(", re.MULTILINE
)
_BACKREF = re.compile(r"""backref\s*(?:=|\(\s*)\s*["'](?P<name>\w+)["']""")
_LAZY = re.compile(r"""lazy\s*=\s*["']?(?P<how>\w+)""")
_NOT_N_PLUS_ONE = frozenset({"joined", "selectin", "subquery", "immediate", "raise"})
_NOT_N_PLUS_ONE |= {"raise_on_sql", "noload", "write_only"}


def _call_text(text: str, start: int) -> str:
    """The text of a call's argument list starting just after its ``(``."""
    depth = 1
    for i in range(start, min(len(text), start + 4000)):
        if text[i] == "(":
            depth += 1
        elif text[i] == ")":
            depth -= 1
            if depth == 0:
                return text[start:i]
    return text[start : start + 4000]


def scan_relationships(text: str) -> dict[str, bool]:
    """Relationship attribute names declared in ``text`` -> True when lazily loaded.

    A text scan (models are rarely in the file that loops over them): ``name = relationship(``
    or ``db.relationship(`` with any annotation, plus ``backref="name"`` names.
    """
    found: dict[str, bool] = {}
    if "relationship(" not in text:
        return found
    for match in _RELATIONSHIP.finditer(text):
        args = _call_text(text, match.end())
        lazy = _LAZY.search(args)
        found[match.group("name")] = not (lazy and lazy.group("how") in _NOT_N_PLUS_ONE)
        for back in _BACKREF.finditer(args):
            found.setdefault(back.group("name"), True)
    return found


def read_text(path: Path) -> tuple[str | None, str, str | None]:
    """``(text, encoding, error)``: the decoded file honouring its PEP 263 cookie."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return None, "utf-8", f"cannot read file: {exc.strerror or exc}"
    try:
        encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
    except SyntaxError as exc:
        return None, "utf-8", f"cannot decode file: {exc.msg}"
    try:
        return data.decode(encoding), encoding, None
    except (UnicodeDecodeError, LookupError) as exc:
        return None, encoding, f"cannot decode file as {encoding}: {exc}"


# -- one source ------------------------------------------------------------------------------


class _ApplyEdits(cst.CSTTransformer):
    def __init__(self, edits: Mapping[int, Replacement]) -> None:
        self.edits = edits

    def on_leave(  # type: ignore[override]
        self, original_node: cst.CSTNode, updated_node: cst.CSTNode
    ) -> cst.CSTNode | cst.RemovalSentinel:
        replacement = self.edits.get(id(original_node))
        return updated_node if replacement is None else replacement


def _count_lines(source: str) -> int:
    return source.count("\n") + (1 if source and not source.endswith("\n") else 0)


def _syntax_violation(path: str, exc: Exception) -> Violation:
    line, col = 1, 1
    if isinstance(exc, cst.ParserSyntaxError):
        line, col = exc.raw_line, exc.raw_column + 1
        message = str(exc).splitlines()[0]
    elif isinstance(exc, SyntaxError):
        line, col = exc.lineno or 1, exc.offset or 1
        message = exc.msg
    else:
        message = f"{type(exc).__name__}: {exc}"
    return Violation(path, max(line, 1), max(col, 1), "POL000", f"syntax error: {message}")


def _parse(source: str, path: str, need_cst: bool) -> tuple[cst.Module | None, Violation | None]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SyntaxWarning for odd escapes is not ours
            if not need_cst:
                compile(source, path, "exec", dont_inherit=True, flags=0x400)  # ONLY_AST
                return None, None
            return cst.parse_module(source), None
    except RecursionError:
        return None, Violation(path, 1, 1, "POL000", "syntax error: nesting too deep to parse")
    except (SyntaxError, ValueError, cst.ParserSyntaxError) as exc:
        return None, _syntax_violation(path, exc)
    except Exception as exc:  # libcst raises a few others on exotic input
        return None, _syntax_violation(path, exc)


def _parse_ast(source: str, path: str) -> tuple[ast.Module | None, Violation | None]:
    """The stdlib ``ast`` tree (C parser), or the syntax error as POL000."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = compile(source, path, "exec", dont_inherit=True, flags=ast.PyCF_ONLY_AST)
    except RecursionError:
        return None, Violation(path, 1, 1, "POL000", "syntax error: nesting too deep to parse")
    except (SyntaxError, ValueError) as exc:
        return None, _syntax_violation(path, exc)
    except Exception as exc:
        return None, _syntax_violation(path, exc)
    assert isinstance(tree, ast.Module)
    return tree, None


@dataclass
class _Analysis:
    violations: list[Violation]
    fixes: list[tuple[Violation, Fix]]
    module: cst.Module | None
    ctx: FileContext | None
    notes: tuple[str, ...] = ()


def _analyze(
    source: str,
    path: str,
    config: LintConfig,
    relationships: Mapping[str, bool],
    all_rules: bool,
    summaries: Mapping[str, FunctionSummary] | None = None,
    syntax_ok: bool = False,
) -> _Analysis:
    """``syntax_ok``: the source already parsed cleanly with ``ast`` (the syntax check is not
    repeated for a file no rule can fire on)."""
    rules = [
        r
        for r in RULES
        if r.code in config.select and (all_rules or r.could_fire(source, summaries))
    ]
    module: cst.Module | None = None
    error: Violation | None = None
    tree: ast.Module | None = None
    syntax_known = syntax_ok
    facts: FileFacts | None = None
    pre_notes: list[str] = []
    if rules and not all_rules:  # ast (C speed) decides which rules can fire at all
        tree, error = _parse_ast(source, path)
        syntax_known = True
        if tree is not None:
            facts = facts_of(tree, path, source, [r.code for r in rules])
            codes = facts.could_fire(
                [r.code for r in rules], summaries or {}, relationships, config.pins
            )
            if any(r.code == "POL009" for r in rules) and "POL009" not in codes:
                pre_notes.extend(facts.notes(config.pins))
            rules = [r for r in rules if r.code in codes]
    if error is None and (rules or not syntax_known):
        module, error = _parse(source, path, need_cst=bool(rules))
    violations: list[Violation] = []
    fixes: list[tuple[Violation, Fix]] = []
    if error is not None:
        if "POL000" in config.select:
            violations.append(error)
        return _Analysis(violations, fixes, None, None, tuple(pre_notes))
    ctx = None
    found: list[tuple[Finding, str]] = []
    if module is not None:
        ctx = FileContext(path, source, module, config, relationships, summaries, tree)
        for rule in rules:
            try:
                found.extend((f, rule.severity) for f in rule.check(ctx))
            except Exception as exc:  # a bug of ours: report, keep going
                if "POL999" in config.select:
                    detail = f"{type(exc).__name__}: {exc}"[:200]
                    violations.append(
                        Violation(path, 1, 1, "POL999", f"internal error in {rule.code}: {detail}")
                    )
    for finding, severity in found:
        try:
            rng = ctx.position(finding.node) if ctx is not None else None
        except RecursionError:  # libcst's metadata pass recurses: too deep, report at the top
            rng = None
        except Exception as exc:  # position metadata failed: still report, at the top
            rng = None
            detail = f"{type(exc).__name__}: {exc}"[:200]
            violations.append(Violation(path, 1, 1, "POL999", f"internal error: {detail}"))
        line, col, end_line, end_col = (1, 1, 1, 1)
        if rng is not None:
            line, col = rng.start.line, rng.start.column + 1
            end_line, end_col = rng.end.line, rng.end.column + 1
        violation = Violation(
            path,
            line,
            col,
            finding.code,
            finding.message,
            end_line=end_line,
            end_col=end_col,
            severity=severity,  # type: ignore[arg-type]
            fix_safety=finding.fix.safety if finding.fix else None,
        )
        violations.append(violation)
        if finding.fix is not None:
            fixes.append((violation, finding.fix))
    violations = _apply_noqa(source, path, violations, config)
    kept = set(violations)
    fixes = [(v, f) for v, f in fixes if v in kept]
    return _Analysis(violations, fixes, module, ctx, tuple(pre_notes))


def _apply_noqa(
    source: str, path: str, violations: list[Violation], config: LintConfig
) -> list[Violation]:
    directives = find_directives(source, _KNOWN, ALIASES)
    if not directives:
        return violations
    by_line = {d.line: d for d in directives}
    used: dict[int, set[str]] = {}
    kept = []
    for v in violations:
        d = by_line.get(v.line)
        if d is not None and d.malformed is None and (d.codes is None or v.code in d.codes):
            used.setdefault(v.line, set()).add(v.code)
            continue
        kept.append(v)
    for d in directives:
        if d.malformed is not None:
            if "POL901" in config.select:
                kept.append(
                    Violation(
                        path, d.line, d.col, "POL901", f"malformed noqa directive: {d.malformed}"
                    )
                )
        elif d.codes:
            unused = sorted(c for c in d.codes - used.get(d.line, set()) if c in config.select)
            if unused and "POL900" in config.select:
                kept.append(
                    Violation(
                        path,
                        d.line,
                        d.col,
                        "POL900",
                        f"unused noqa directive for {', '.join(unused)} (nothing reported here)",
                        severity=engine_code_severity("POL900"),
                    )
                )
    return kept


def _pick_fixes(analysis: _Analysis, unsafe_fixes: bool) -> tuple[dict[int, Replacement], int]:
    """Non-overlapping edits of the applicable fixes, and how many fixes they make up."""
    assert analysis.ctx is not None
    ctx = analysis.ctx
    taken: list[tuple[tuple[int, int], tuple[int, int]]] = []
    edits: dict[int, Replacement] = {}
    count = 0
    for _violation, fix in sorted(analysis.fixes, key=lambda vf: vf[0]):
        if fix.safety == "unsafe" and not unsafe_fixes:
            continue
        ranges = []
        for node, _ in fix.edits:
            rng = ctx.position(node)
            ranges.append(((rng.start.line, rng.start.column), (rng.end.line, rng.end.column)))
        overlaps = any(
            not (end <= o_start or o_end <= start)
            for start, end in ranges
            for o_start, o_end in taken
        )
        if overlaps:
            continue
        taken.extend(ranges)
        for node, replacement in fix.edits:
            edits[id(node)] = replacement
        count += 1
    return edits, count


def lint_source(
    source: str,
    path: str = "<string>",
    config: LintConfig | None = None,
    *,
    relationships: Mapping[str, bool] | None = None,
    summaries: Mapping[str, FunctionSummary] | None = None,
    syntax_ok: bool = False,
    fix: bool = False,
    unsafe_fixes: bool = False,
    all_rules: bool = False,
) -> FileResult:
    """Lint (and with ``fix`` rewrite) one source text; the API the CLI and tests share.

    ``summaries`` are the project's function summaries (:mod:`pooltender.lint.summaries`);
    without them the source's own functions are summarised."""
    from pooltender.lint.config import default_config

    config = config or default_config()
    rels = dict(scan_relationships(source))
    rels.update(relationships or {})
    rels.update(dict.fromkeys(config.relationships, True))
    if summaries is None:
        summaries = summarize_source(source, config.db_names)
    analysis = _analyze(source, path, config, rels, all_rules, summaries, syntax_ok)
    applied = 0
    original = source
    notes: set[str] = set(analysis.notes)
    if analysis.ctx is not None:
        notes |= analysis.ctx.notes
    for _ in range(MAX_FIX_PASSES if fix else 0):
        if analysis.module is None or not analysis.fixes:
            break
        edits, count = _pick_fixes(analysis, unsafe_fixes)
        if not edits:
            break
        new_source = analysis.module.visit(_ApplyEdits(edits)).code
        if new_source == source:
            break
        try:
            cst.parse_module(new_source)
        except Exception:
            bad = Violation(path, 1, 1, "POL999", "internal error: a fix produced unparsable code")
            analysis.violations.append(bad)
            break
        source = new_source
        applied += count
        analysis = _analyze(source, path, config, rels, all_rules, summaries)
        if analysis.ctx is not None:
            notes |= analysis.ctx.notes
    return FileResult(
        path=path,
        violations=tuple(sorted(analysis.violations)),
        lines=_count_lines(source),
        fixes_applied=applied,
        fixed_source=source if source != original else None,
        crashed=any(v.code == "POL999" for v in analysis.violations),
        notes=tuple(sorted(notes)),
    )


# -- files -----------------------------------------------------------------------------------


class FileOptions(TypedDict, total=False):
    """The keyword options :func:`lint_file` hands to :func:`lint_source` unchanged (one list
    of them for the file, the worker task and the call; their defaults are lint_source's)."""

    summaries: Mapping[str, FunctionSummary] | None
    syntax_ok: bool
    fix: bool
    unsafe_fixes: bool
    all_rules: bool


def lint_file(
    path: Path,
    config: LintConfig,
    relationships: Mapping[str, bool] | None = None,
    **options: Unpack[FileOptions],
) -> FileResult:
    """Lint one file; with ``fix`` the file is rewritten in its own encoding. ``syntax_ok``:
    the engine's first pass parsed it cleanly (the syntax check is not repeated)."""
    shown = display_path(path)
    text, encoding, error = read_text(path)
    if text is None:
        violations: tuple[Violation, ...] = ()
        if "POL000" in config.select:
            violations = (Violation(shown, 1, 1, "POL000", error or "cannot read file"),)
        return FileResult(shown, violations)
    try:
        result = lint_source(text, shown, config, relationships=relationships, **options)
    except Exception as exc:  # last line of defence: never crash the run
        crash = Violation(shown, 1, 1, "POL999", f"internal error: {type(exc).__name__}: {exc}")
        return FileResult(shown, (crash,), _count_lines(text), crashed=True)
    if result.fixed_source is not None:
        with open(path, "w", encoding=encoding, newline="") as out:
            out.write(result.fixed_source)
    return result


_Task = tuple[Path, LintConfig, Mapping[str, bool], FileOptions]


def _worker(args: _Task) -> FileResult:
    path, config, rels, options = args
    return lint_file(path, config, rels, **options)


def lint_paths(
    paths: Iterable[Path],
    config: LintConfig,
    *,
    fix: bool = False,
    unsafe_fixes: bool = False,
    all_rules: bool = False,
    jobs: int | None = 1,
) -> LintReport:
    """Lint every Python file under ``paths``. ``jobs`` > 1 (or None: one per CPU) runs files
    in worker processes when there are enough of them to pay for the start-up."""
    files = discover(paths, config)
    rels: dict[str, bool] = {}
    per_file: list[Mapping[str, FunctionSummary]] = []
    parsed: set[Path] = set()  # parsed cleanly here: the lint pass skips the syntax check
    for f in files:
        text, _, _ = read_text(f)
        if text is None:
            continue
        if "POL008" in config.select:
            rels.update(scan_relationships(text))
        shown = display_path(f)
        # tests and migrations: the rules that look through helpers skip them, and their
        # helpers are never called from application code
        if not _SUMMARY_WORDS.search(text) or file_kind(shown, text) in _NO_SUMMARY:
            continue
        tree, _error = _parse_ast(text, shown)
        if tree is None:
            continue  # the lint pass reports the syntax error
        parsed.add(f)
        per_file.append(summarize_tree(tree, config.db_names, text))
    summaries = merge_maps(per_file)
    rels.update(dict.fromkeys(config.relationships, True))
    workers = jobs if jobs is not None else (os.cpu_count() or 1)
    options = FileOptions(
        summaries=summaries, fix=fix, unsafe_fixes=unsafe_fixes, all_rules=all_rules
    )
    tasks: list[_Task] = [(f, config, rels, {**options, "syntax_ok": f in parsed}) for f in files]
    report = LintReport()
    if workers > 1 and len(files) >= PARALLEL_MIN_FILES:
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
            report.results.extend(pool.map(_worker, tasks, chunksize=8))
    else:
        report.results.extend(_worker(t) for t in tasks)
    return report
