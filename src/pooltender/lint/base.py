"""The lint vocabulary: findings, fixes, rules, and the per-file context rules read.

A rule is a plain function over a :class:`FileContext`; it reports :class:`Finding` objects that
point at CST nodes. Positions are resolved by the engine only when something was found, because
libcst's position metadata costs a second pass over the tree and most files report nothing.

Fixes are node edits (``original node -> replacement``) labelled ``safe`` (behaviour preserved)
or ``unsafe`` (behaviour changes in a way the author should review), after ruff's fix safety.
"""

from __future__ import annotations

import dataclasses
import sys
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, TypeVar

import libcst as cst
from libcst.metadata import CodePosition, CodeRange, MetadataWrapper, PositionProvider

from pooltender.lint.astwalk import nodes_of

if TYPE_CHECKING:
    from pooltender.lint.facts import FunctionSummary
    from pooltender.lint.options import LintConfig


def _alias_name(alias: cst.ImportAlias, *, root: bool) -> str:
    if alias.asname is not None and isinstance(alias.asname.name, cst.Name):
        return alias.asname.name.value
    node: cst.BaseExpression = alias.name
    if root:
        while isinstance(node, cst.Attribute):
            node = node.value
    elif isinstance(node, cst.Attribute):
        return node.attr.value
    return node.value if isinstance(node, cst.Name) else ""


def _target_names(node: cst.CSTNode) -> set[str]:
    if isinstance(node, cst.Name):
        return {node.value}
    if isinstance(node, cst.Tuple | cst.List):
        out: set[str] = set()
        for element in node.elements:
            out |= _target_names(element.value)
        return out
    if isinstance(node, cst.StarredElement):
        return _target_names(node.value)
    return set()


Severity = Literal["error", "warning"]
FixSafety = Literal["safe", "unsafe"]
N = TypeVar("N", bound=cst.CSTNode)

Replacement = cst.CSTNode | cst.RemovalSentinel


@dataclass(frozen=True)
class Fix:
    """Edits that resolve one finding: each ``(node, replacement)`` swaps a node of the parsed
    module, matched by identity, for a new node (or removes it)."""

    safety: FixSafety
    edits: tuple[tuple[cst.CSTNode, Replacement], ...]
    description: str


@dataclass(frozen=True)
class Finding:
    """What a rule reports: the node to point at, the message, and an optional fix."""

    code: str
    node: cst.CSTNode
    message: str
    fix: Fix | None = None


@dataclass(frozen=True, order=True)
class Violation:
    """A located finding, as printed. ``line``/``col`` are 1-based (flake8/ruff convention).

    Ordering is (path, line, col, code, message): the output order the CLI promises.
    """

    path: str
    line: int
    col: int
    code: str
    message: str
    end_line: int = field(default=0, compare=False)
    end_col: int = field(default=0, compare=False)
    severity: Severity = field(default="error", compare=False)
    fix_safety: FixSafety | None = field(default=None, compare=False)

    def format(self) -> str:
        """``path:line:col: CODE message``."""
        return f"{self.path}:{self.line}:{self.col}: {self.code} {self.message}"


@dataclass(frozen=True)
class Rule:
    """One rule, defined by its own module (``rules/POLxxx.py``).

    ``triggers`` are groups of substrings: for the rule to be able to fire, each group must
    have a member in the file's text; other files are skipped without parsing for this rule.
    They must be necessary conditions, never hints, or the rule loses recall.
    """

    code: str
    name: str
    summary: str
    doc: str
    check: Callable[[FileContext], Iterator[Finding]]
    triggers: tuple[tuple[str, ...], ...]
    fix: FixSafety | None = None
    severity: Severity = "error"
    #: for rules that see through helpers: the trigger groups given the project's summaries
    #: (each group extended with the names of the functions that can stand in for it)
    helper_triggers: (
        Callable[[Mapping[str, FunctionSummary]], tuple[tuple[str, ...], ...]] | None
    ) = None

    def could_fire(
        self, source: str, summaries: Mapping[str, FunctionSummary] | None = None
    ) -> bool:
        """Every group of ``triggers`` has a member in ``source``."""
        groups = self.triggers
        if self.helper_triggers is not None and summaries:
            groups = _cached_triggers(self, summaries)
        return all(any(t in source for t in group) for group in groups)


def module_rule(
    module: str,
    *,
    triggers: tuple[tuple[str, ...], ...],
    fix: FixSafety | None = None,
    helper_triggers: (
        Callable[[Mapping[str, FunctionSummary]], tuple[tuple[str, ...], ...]] | None
    ) = None,
) -> Rule:
    """The :class:`Rule` a rule module declares: its ``CODE``, ``NAME``, ``SUMMARY``, its
    docstring (the rule's documentation) and its ``check()``; call it at the module's end as
    ``RULE = module_rule(__name__, triggers=...)``, so every rule is assembled the same way."""
    declared = sys.modules[module]
    return Rule(
        code=declared.CODE,
        name=declared.NAME,
        summary=declared.SUMMARY,
        doc=declared.__doc__ or "",
        check=declared.check,
        triggers=triggers,
        fix=fix,
        helper_triggers=helper_triggers,
    )


_TRIGGER_CACHE: dict[tuple[str, int], tuple[Mapping[str, object], tuple[tuple[str, ...], ...]]] = {}


def _cached_triggers(
    rule: Rule, summaries: Mapping[str, FunctionSummary]
) -> tuple[tuple[str, ...], ...]:
    key = (rule.code, id(summaries))
    hit = _TRIGGER_CACHE.get(key)
    if hit is not None and hit[0] is summaries:
        return hit[1]
    assert rule.helper_triggers is not None
    groups = rule.helper_triggers(summaries)
    if len(_TRIGGER_CACHE) > 64:
        _TRIGGER_CACHE.clear()
    _TRIGGER_CACHE[key] = (summaries, groups)
    return groups


# Fields that only hold whitespace, brackets and punctuation: never walked (no rule reads
# them, and skipping them makes a walk several times cheaper than libcst's visitors).
_SKIP_FIELDS = frozenset(
    {
        "leading_lines",
        "lines_after_decorators",
        "header",
        "footer",
        "lpar",
        "rpar",
        "lbracket",
        "rbracket",
        "lbrace",
        "rbrace",
        "comma",
        "semicolon",
        "trailing_whitespace",
        "equal",
        "colon",
        "dot",
        "operator",
        "newline",
    }
)
_CHILD_FIELDS: dict[type[cst.CSTNode], tuple[str, ...]] = {}


def _child_fields(node_type: type[cst.CSTNode]) -> tuple[str, ...]:
    names = _CHILD_FIELDS.get(node_type)
    if names is None:
        names = tuple(
            f.name
            for f in dataclasses.fields(node_type)
            if f.name not in _SKIP_FIELDS and not f.name.startswith("whitespace")
        )
        _CHILD_FIELDS[node_type] = names
    return names


def iter_children(node: cst.CSTNode) -> Iterator[cst.CSTNode]:
    """Syntactic children of ``node`` in field order (source order for the nodes rules read),
    without whitespace and punctuation. Iterative callers never recurse, so deeply nested
    expressions (a 3,000-part implicit string concatenation) cannot overflow the stack."""
    for name in _child_fields(type(node)):
        value = getattr(node, name)
        if isinstance(value, cst.CSTNode):
            yield value
        elif isinstance(value, list | tuple):
            for item in value:
                if isinstance(item, cst.CSTNode):
                    yield item


# libcst node types located through their stdlib-ast twins (see FileContext.position)
_AST_TWIN: dict[type[cst.CSTNode], str] = {
    cst.Call: "call",
    cst.While: "while",
    cst.For: "for",
    cst.ExceptHandler: "except",
    cst.Attribute: "attribute",  # except dotted module names in imports (strings in ast)
}


def _std_kinds() -> dict[type, str]:
    import ast as std_ast

    return {
        std_ast.Call: "call",
        std_ast.While: "while",
        std_ast.For: "for",
        std_ast.AsyncFor: "for",
        std_ast.ExceptHandler: "except",
        std_ast.Attribute: "attribute",
    }


_STD_KIND = _std_kinds()
# Python 3.11 reports exact positions inside f-strings, multi-line ones included (checked by
# tests/pooltender/lint/test_positions.py and on the 49,000 calls, loops and except clauses of
# the lint corpus); older interpreters fall back to libcst's positions for such files.
_FSTRING_GUARD = sys.version_info < (3, 11)


# libcst's field order differs from source order for these types (decorators, bases and
# return annotations after a body, an except clause's type after its body, positional-only
# parameters last, a conditional expression's test first)
_SOURCE_ORDER: dict[type[cst.CSTNode], tuple[str, ...]] = {
    cst.ClassDef: ("decorators", "name", "type_parameters", "bases", "keywords", "body"),
    cst.FunctionDef: ("decorators", "name", "type_parameters", "params", "returns", "body"),
    cst.ExceptHandler: ("type", "name", "body"),
    cst.Parameters: (
        "posonly_params",
        "posonly_ind",
        "params",
        "star_arg",
        "kwonly_params",
        "star_kwarg",
    ),
    cst.IfExp: ("body", "test", "orelse"),
}


def _source_children(node: cst.CSTNode) -> list[cst.CSTNode]:
    fields = _SOURCE_ORDER.get(type(node))
    if fields is None:
        return list(iter_children(node))
    out: list[cst.CSTNode] = []
    for name in fields:
        value = getattr(node, name, None)
        if isinstance(value, cst.CSTNode):
            out.append(value)
        elif isinstance(value, list | tuple):
            out.extend(v for v in value if isinstance(v, cst.CSTNode))
    return out


class _Indexer:
    """One iterative traversal recording every node's parent and the nodes of each type."""

    def __init__(self, module: cst.Module) -> None:
        self.parents: dict[int, cst.CSTNode] = {}
        self.by_type: defaultdict[type[cst.CSTNode], list[cst.CSTNode]] = defaultdict(list)
        parents = self.parents
        by_type = self.by_type
        stack: list[cst.CSTNode] = [module]
        while stack:
            node = stack.pop()
            by_type[type(node)].append(node)
            children = list(iter_children(node))
            for child in children:
                parents[id(child)] = node
            stack.extend(reversed(children))


class FileContext:
    """A parsed file as rules see it: the module, its text, the configuration, an index of
    nodes by type with parent links, and project-wide facts (relationship attribute names)."""

    def __init__(
        self,
        path: str,
        source: str,
        module: cst.Module,
        config: LintConfig,
        relationships: Mapping[str, bool] | None = None,
        summaries: Mapping[str, FunctionSummary] | None = None,
        ast_tree: object | None = None,
    ) -> None:
        self.path = path
        self.source = source
        self.module = module
        self.config = config
        #: relationship attribute name -> True when it loads lazily (the N+1 kind)
        self.relationships: Mapping[str, bool] = relationships or {}
        #: project-wide per-function summaries (pooltender.lint.summaries), by function name
        self.summaries: Mapping[str, FunctionSummary] = summaries or {}
        self._index: _Indexer | None = None
        self._positions: Mapping[cst.CSTNode, CodeRange] | None = None
        #: one-line reasons a rule skipped a finding or a fix (printed once per run)
        self.notes: set[str] = set()
        self._imports: frozenset[str] | None = None
        self._bound: frozenset[str] | None = None
        self._ast_map: dict[str, dict[int, CodeRange]] | None = None
        self._ast_tree = ast_tree  # the stdlib tree the engine already parsed, if any
        self._pre_order: dict[cst.CSTNode, int] | None = None

    def note(self, text: str) -> None:
        self.notes.add(text)

    @property
    def imports(self) -> frozenset[str]:
        """Names bound by ``import`` / ``from ... import`` anywhere in the module."""
        if self._imports is None:
            names: set[str] = set()
            for imp in self.nodes(cst.Import):
                for alias in imp.names:
                    names.add(_alias_name(alias, root=True))
            for imp_from in self.nodes(cst.ImportFrom):
                if isinstance(imp_from.names, Sequence):
                    names.update(_alias_name(alias, root=False) for alias in imp_from.names)
            self._imports = frozenset(names)
        return self._imports

    @property
    def bound_names(self) -> frozenset[str]:
        """Every name the module binds anywhere: imports, assignment targets, defs, classes,
        parameters, ``for`` / ``with ... as`` / ``except ... as`` targets. A fix may only
        introduce a name from this set (else the fix would add an undefined name)."""
        if self._bound is None:
            names: set[str] = set(self.imports)
            for target_type in (cst.AssignTarget, cst.AnnAssign, cst.AugAssign, cst.For):
                for node in self.nodes(target_type):
                    target = getattr(node, "target", None)
                    if target is not None:
                        names.update(_target_names(target))
            for func in self.nodes(cst.FunctionDef):
                names.add(func.name.value)
                params = func.params
                for param in [*params.posonly_params, *params.params, *params.kwonly_params]:
                    names.add(param.name.value)
                for star in (params.star_arg, params.star_kwarg):
                    if isinstance(star, cst.Param):
                        names.add(star.name.value)
            for cls in self.nodes(cst.ClassDef):
                names.add(cls.name.value)
            for as_name in self.nodes(cst.AsName):
                names.update(_target_names(as_name.name))
            for walrus in self.nodes(cst.NamedExpr):
                names.update(_target_names(walrus.target))
            self._bound = frozenset(names)
        return self._bound

    def _idx(self) -> _Indexer:
        if self._index is None:
            self._index = _Indexer(self.module)
        return self._index

    def nodes(self, node_type: type[N]) -> Sequence[N]:
        """All nodes of exactly ``node_type``, in source order."""
        return self._idx().by_type.get(node_type, [])  # type: ignore[return-value]

    def parent(self, node: cst.CSTNode) -> cst.CSTNode | None:
        return self._idx().parents.get(id(node))

    def ancestors(self, node: cst.CSTNode) -> Iterator[cst.CSTNode]:
        """Parents of ``node``, innermost first."""
        parents = self._idx().parents
        current = parents.get(id(node))
        while current is not None:
            yield current
            current = parents.get(id(current))

    def position(self, node: cst.CSTNode) -> CodeRange:
        """The node's range. Calls, loops and except clauses -- what findings point at -- are
        located through the stdlib ``ast`` tree (C parser; the n-th ``Call`` of libcst in
        source order is the n-th ``ast.Call`` sorted by position), which avoids libcst's
        position pass over the whole module; anything else, or any doubt (counts differ,
        calls inside f-strings), falls back to libcst's PositionProvider."""
        fast = self._ast_position(node)
        if fast is not None:
            return fast
        if self._positions is None:
            wrapper = MetadataWrapper(self.module, unsafe_skip_copy=True)
            self._positions = wrapper.resolve(PositionProvider)
        return self._positions[node]

    def _ast_position(self, node: cst.CSTNode) -> CodeRange | None:
        kind = _AST_TWIN.get(type(node))
        if kind is None or (kind == "attribute" and self._in_import(node)):
            return None
        if self._ast_map is None:
            self._ast_map = self._build_ast_map()
        table = self._ast_map.get(kind)
        if table is None:
            return None
        return table.get(id(node))

    def _build_ast_map(self) -> dict[str, dict[int, CodeRange]]:
        import ast as std_ast

        out: dict[str, dict[int, CodeRange]] = {}
        tree = self._ast_tree
        if not isinstance(tree, std_ast.Module):
            try:
                tree = std_ast.parse(self.source)
            except (SyntaxError, ValueError, RecursionError, MemoryError):
                return out
        lines = self.source.splitlines(keepends=True)
        if _FSTRING_GUARD and any(
            isinstance(n, std_ast.JoinedStr)
            and n.lineno != n.end_lineno
            and any(isinstance(m, std_ast.Call | std_ast.Attribute) for m in std_ast.walk(n))
            for n in std_ast.walk(tree)
        ):
            return out  # positions inside multi-line f-strings: unreliable before 3.11

        def column(line: int, offset: int) -> int:
            text = lines[line - 1] if 0 < line <= len(lines) else ""
            return len(text.encode("utf-8")[:offset].decode("utf-8", errors="replace"))

        by_kind: dict[str, list[std_ast.AST]] = {}
        for n in nodes_of(tree):
            kind = _STD_KIND.get(type(n))
            if kind is not None:
                by_kind.setdefault(kind, []).append(n)
        for kind in dict.fromkeys(_AST_TWIN.values()):
            if kind in out:
                continue
            ours = [n for t, k in _AST_TWIN.items() if k == kind for n in self.nodes(t)]
            if kind == "attribute":
                ours = [n for n in ours if not self._in_import(n)]
            theirs = by_kind.get(kind, [])
            if len(ours) != len(theirs):
                continue
            theirs.sort(
                key=lambda n: (
                    n.lineno,  # type: ignore[attr-defined]
                    n.col_offset,  # type: ignore[attr-defined]
                    -(n.end_lineno or 0),  # type: ignore[attr-defined]
                    -(n.end_col_offset or 0),  # type: ignore[attr-defined]
                )
            )
            ours.sort(key=self._order().__getitem__)
            table: dict[int, CodeRange] = {}
            for mine, other in zip(ours, theirs, strict=True):
                start_line, start_off = other.lineno, other.col_offset  # type: ignore[attr-defined]
                end_line = other.end_lineno or start_line  # type: ignore[attr-defined]
                end_off = other.end_col_offset or 0  # type: ignore[attr-defined]
                table[id(mine)] = CodeRange(
                    CodePosition(start_line, column(start_line, start_off)),
                    CodePosition(end_line, column(end_line, end_off)),
                )
            out[kind] = table
        return out

    def _in_import(self, node: cst.CSTNode) -> bool:
        return any(isinstance(a, cst.Import | cst.ImportFrom) for a in self.ancestors(node))

    def _order(self) -> dict[cst.CSTNode, int]:
        """Source-order index of every node (by start, outer first): a pre-order walk whose
        children come in source order (libcst's field order puts a def's decorators after its
        body and a conditional expression's test before its body)."""
        if self._pre_order is None:
            order: dict[cst.CSTNode, int] = {}
            stack: list[cst.CSTNode] = [self.module]
            while stack:
                node = stack.pop()
                order[node] = len(order)
                stack.extend(reversed(_source_children(node)))
            self._pre_order = order
        return self._pre_order
