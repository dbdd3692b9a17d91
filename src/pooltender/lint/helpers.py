"""CST predicates shared by the rules: names, ``db.session`` calls, enclosing scopes, edits.

Everything here is syntactic. ``db`` means a name listed in ``db-names`` (default ``db``), the
usual name of the Flask-SQLAlchemy extension object; a dotted receiver (``models.db.session``,
``models.User.query``) counts when its first name is bound by an import in the file, so a module
attribute is resolved from the imports, while ``self.db`` or ``app.db`` is not taken for it.
"""

from __future__ import annotations

from collections.abc import Iterator

import libcst as cst

from pooltender.lint.base import FileContext, Replacement, iter_children

SESSION_END = frozenset({"commit", "rollback", "remove", "close"})


def dotted(node: cst.CSTNode) -> str | None:
    """``a.b.c`` for a Name/Attribute chain, else None."""
    if isinstance(node, cst.Name):
        return node.value
    if isinstance(node, cst.Attribute):
        base = dotted(node.value)
        return None if base is None else f"{base}.{node.attr.value}"
    return None


def call_name(call: cst.Call) -> str | None:
    return dotted(call.func)


def last_name(node: cst.CSTNode) -> str | None:
    """The final identifier of a Name/Attribute (``b`` for ``a.b``), else None."""
    if isinstance(node, cst.Name):
        return node.value
    if isinstance(node, cst.Attribute):
        return node.attr.value
    return None


def is_db(node: cst.CSTNode, ctx: FileContext) -> bool:
    """``db`` (a configured extension name), ``pkg.models.db`` whose root is an imported
    name, or a dotted ``db-names`` entry written out (``extensions.db``)."""
    if isinstance(node, cst.Name):
        return node.value in ctx.config.db_names
    if isinstance(node, cst.Attribute):
        name = dotted(node)
        if name is None:
            return False
        if name in ctx.config.db_names:
            return True
        return node.attr.value in ctx.config.db_names and name.split(".", 1)[0] in ctx.imports
    return False


def is_db_session(node: cst.CSTNode, ctx: FileContext) -> bool:
    """``db.session`` (``db`` as :func:`is_db` accepts it)."""
    return (
        isinstance(node, cst.Attribute) and node.attr.value == "session" and is_db(node.value, ctx)
    )


def session_method(call: cst.Call, ctx: FileContext) -> str | None:
    """``m`` for a call ``db.session.m(...)``, else None."""
    func = call.func
    if isinstance(func, cst.Attribute) and is_db_session(func.value, ctx):
        return func.attr.value
    return None


def is_model_query(node: cst.CSTNode, ctx: FileContext | None = None) -> bool:
    """``Model.query`` with a capitalised class-like name (Flask-SQLAlchemy's query property);
    with ``ctx`` also ``models.Model.query`` whose root name is imported."""
    if not (isinstance(node, cst.Attribute) and node.attr.value == "query"):
        return False
    owner = node.value
    if isinstance(owner, cst.Name):
        return owner.value[:1].isupper()
    if ctx is not None and isinstance(owner, cst.Attribute) and owner.attr.value[:1].isupper():
        name = dotted(owner)
        return name is not None and name.split(".", 1)[0] in ctx.imports
    return False


def model_of_query(node: cst.Attribute) -> str:
    """The model as written for a ``Model.query`` / ``models.Model.query`` node."""
    return dotted(node.value) or ""


def enclosing_function(ctx: FileContext, node: cst.CSTNode) -> cst.FunctionDef | None:
    """The innermost function around ``node``; a class body in between means none."""
    for anc in ctx.ancestors(node):
        if isinstance(anc, cst.FunctionDef):
            return anc
        if isinstance(anc, cst.ClassDef):
            return None
    return None


def nearest_function(ctx: FileContext, node: cst.CSTNode) -> cst.FunctionDef | None:
    """The innermost ``def`` among ``node``'s ancestors, looking through class bodies (unlike
    :func:`enclosing_function`): for a class defined inside a function, that function."""
    for anc in ctx.ancestors(node):
        if isinstance(anc, cst.FunctionDef):
            return anc
    return None


def walk(node: cst.CSTNode, *, into_functions: bool = False) -> Iterator[cst.CSTNode]:
    """``node`` and its descendants in source order, not entering nested defs/lambdas/classes
    unless ``into_functions``."""
    stack = [node]
    while stack:
        current = stack.pop()
        yield current
        if (
            not into_functions
            and current is not node
            and isinstance(current, cst.FunctionDef | cst.Lambda | cst.ClassDef)
        ):
            continue
        stack.extend(reversed(list(iter_children(current))))


def calls_in(node: cst.CSTNode) -> Iterator[cst.Call]:
    for sub in walk(node):
        if isinstance(sub, cst.Call):
            yield sub


def contains_session_call(node: cst.CSTNode, ctx: FileContext, methods: frozenset[str]) -> bool:
    return any(session_method(c, ctx) in methods for c in calls_in(node))


def decorator_names(func: cst.FunctionDef) -> list[str]:
    """Dotted names of decorators, calls reduced to their callee (``app.route``)."""
    names = []
    for dec in func.decorators:
        target = dec.decorator
        if isinstance(target, cst.Call):
            target = target.func
        name = dotted(target)
        if name:
            names.append(name)
    return names


def keyword(call: cst.Call, name: str) -> cst.Arg | None:
    for arg in call.args:
        if arg.keyword is not None and arg.keyword.value == name:
            return arg
    return None


def has_star_kwargs(call: cst.Call) -> bool:
    return any(arg.star == "**" for arg in call.args)


def int_value(node: cst.BaseExpression) -> int | None:
    """The value of a plain integer literal (``20``, ``1_000``), else None."""
    if isinstance(node, cst.Integer):
        try:
            return int(node.value, 0)
        except ValueError:
            return None
    return None


def string_value(node: cst.CSTNode) -> str | None:
    """The text of a simple (non-f) string literal, or of implicitly concatenated ones."""
    if isinstance(node, cst.SimpleString):
        try:
            value = node.evaluated_value
        except Exception:  # odd prefixes/escapes: treat as unknown
            return None
        return value if isinstance(value, str) else None
    if isinstance(node, cst.ConcatenatedString):
        left, right = string_value(node.left), string_value(node.right)
        return None if left is None or right is None else left + right
    return None


def statement_of(ctx: FileContext, node: cst.CSTNode) -> cst.CSTNode | None:
    """The small statement containing ``node`` (an Expr/Assign ... inside a line)."""
    for anc in [node, *ctx.ancestors(node)]:
        if isinstance(anc, cst.BaseSmallStatement):
            return anc
        if isinstance(anc, cst.BaseCompoundStatement):
            return None
    return None


def removal_edits(
    ctx: FileContext, small: cst.CSTNode
) -> tuple[tuple[cst.CSTNode, Replacement], ...]:
    """Edits that delete a small statement without leaving an empty block.

    ``a; stmt`` drops just ``stmt``; a line holding only ``stmt`` is removed, unless it is the
    only statement of its block, where it becomes ``pass`` (keeping its comments).
    """
    line = ctx.parent(small)
    if not isinstance(line, cst.SimpleStatementLine):
        return ()
    if len(line.body) > 1:
        rest = [s for s in line.body if s is not small]
        rest[-1] = rest[-1].with_changes(semicolon=cst.MaybeSentinel.DEFAULT)
        return ((line, line.with_changes(body=rest)),)
    block = ctx.parent(line)
    if isinstance(block, cst.IndentedBlock) and len(block.body) == 1:
        return ((line, line.with_changes(body=[cst.Pass()])),)
    if isinstance(block, cst.IndentedBlock | cst.Module):
        return ((line, cst.RemoveFromParent()),)
    return ()
