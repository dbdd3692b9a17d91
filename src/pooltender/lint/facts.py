"""What the project-wide pass knows about one function (:class:`FunctionSummary`).

A leaf module: :mod:`pooltender.lint.summaries` computes these, rules read them through
:class:`pooltender.lint.base.FileContext`, and neither has to import the other's module.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["NOT_ROWS", "FunctionSummary"]

#: Query methods that end a chain in something other than rows of the model (one row, a
#: number, a page, a bulk statement): iterating their result is not a loop over rows.
NOT_ROWS = frozenset(
    {
        "first",
        "one",
        "one_or_none",
        "get",
        "count",
        "scalar",
        "exists",
        "paginate",
        "with_entities",
        "add_columns",
        "values",
        "first_or_404",
        "get_or_404",
        "delete",
        "update",
    }
)


@dataclass(frozen=True)
class FunctionSummary:
    """What one function does, as far as the rules care."""

    touches_session: bool = False
    ends_transaction: bool = False
    returns_query: str | None = None
    slow: str | None = None
    #: last names of the functions it calls (for propagating ``ends_transaction``)
    calls: frozenset[str] = frozenset()

    @property
    def holds_transaction(self) -> bool:
        """Queries through the session and leaves the transaction open for its caller."""
        return self.touches_session and not self.ends_transaction
