"""Walking a stdlib ``ast`` tree fast: one list of every node, cached on the tree.

A leaf module (it imports nothing of the linter), so the engine's base, the prefilter and
the project-wide summaries can all walk trees without importing each other.
"""

from __future__ import annotations

import ast

__all__ = ["all_nodes", "nodes_of"]


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
