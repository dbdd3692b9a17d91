"""Walking a stdlib ``ast`` tree fast: one list of every node, cached on the tree.

A leaf module (it imports nothing of the linter), so the engine's base, the prefilter and
the project-wide summaries can all walk trees without importing each other.
"""

from __future__ import annotations

import ast

__all__ = ["all_nodes", "dotted_name", "last_name", "nodes_of"]


def all_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node of ``tree`` (order unspecified): :func:`ast.walk` without its generator
    frames per node, about twice as fast."""
    out: list[ast.AST] = []
    stack = [tree]
    append = out.append
    push = stack.append
    ast_type = ast.AST
    while stack:
        node = stack.pop()
        append(node)
        for name in node._fields:
            value = getattr(node, name, None)
            if isinstance(value, ast_type):
                push(value)
            elif isinstance(value, list):
                for item in value:
                    if isinstance(item, ast_type):
                        push(item)
    return out


def nodes_of(tree: ast.AST) -> list[ast.AST]:
    """All nodes, for callers that walk the same tree again (cached on the tree)."""
    cached = getattr(tree, "_pooltender_nodes", None)
    if cached is None:
        cached = all_nodes(tree)
        tree._pooltender_nodes = cached  # type: ignore[attr-defined]
    return cached


def dotted_name(node: ast.AST) -> str | None:
    """``a.b.c`` for a Name/Attribute chain, else None (the stdlib-``ast`` twin of
    :func:`pooltender.lint.helpers.dotted`)."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = dotted_name(node.value)
        return None if base is None else f"{base}.{node.attr}"
    return None


def last_name(node: ast.AST) -> str | None:
    """The final identifier of a Name/Attribute (``b`` for ``a.b``), else None."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None
