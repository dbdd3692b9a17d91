"""The query library: keyset pagination, filters and eager loading, on the caller's session.

The post-mortem's ``app/lib/query.py`` closed the session after each helper
(``db.session.close()``), which handed connections back mid-request and hid the real
problem. These helpers never open, close or commit anything: they build statements and
run them on the session they are given (in this service always the scoped ``db.session``),
so the session's owner (the request, the CLI command) decides the transaction.

Pagination is keyset (cursor) based, never ``OFFSET``: a page costs one index range scan
``WHERE id > :last ORDER BY id LIMIT :n+1`` however deep the client pages, and rows
inserted while a client pages cannot shift rows into or out of the pages it has not read.
The cursor is opaque to clients (url-safe base64 of a small JSON object) and validated on
the way in: a cursor that was not made by :func:`encode_cursor` is a 400 ``invalid_cursor``.

Lists that show a relationship must eager-load it (:func:`eager`): the models declare their
relationships ``lazy="raise_on_sql"``, so a forgotten eager load fails loudly in tests
instead of issuing one query per row (N+1) in production.

This module imports SQLAlchemy only (no Flask), so services and the CLI can use it too.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from sqlalchemy import ColumnElement, Select, and_
from sqlalchemy.orm import (
    InstrumentedAttribute,
    QueryableAttribute,
    Session,
    contains_eager,
    joinedload,
    scoped_session,
    selectinload,
)
from sqlalchemy.orm.interfaces import LoaderOption

from coupons.errors import BadRequest, Unprocessable

M = TypeVar("M")

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
_CURSOR_VERSION = 1
_MAX_CURSOR_LENGTH = 200

AnySession = Session | scoped_session[Any]


class InvalidCursor(BadRequest):
    """The ``cursor`` parameter was not produced by this service (400 ``invalid_cursor``)."""

    code = "invalid_cursor"


def encode_cursor(last_id: int) -> str:
    """The opaque cursor that continues a listing after the row with id ``last_id``.

    url-safe base64 without padding, so it can go into a query string unescaped.
    """
    raw = json.dumps({"v": _CURSOR_VERSION, "id": last_id}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).rstrip(b"=").decode("ascii")


def decode_cursor(cursor: str) -> int:
    """The last id a cursor encodes; :class:`InvalidCursor` for anything else.

    Accepts exactly what :func:`encode_cursor` produces (padding optional): a JSON object
    of this cursor version with a non-negative integer id.
    """
    invalid = InvalidCursor("the cursor is not valid; use the next_cursor of a previous page")
    if not cursor or len(cursor) > _MAX_CURSOR_LENGTH:
        raise invalid
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        raw = base64.b64decode(padded.encode("ascii"), altchars=b"-_", validate=True)
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeError, ValueError, binascii.Error):
        raise invalid from None
    if not isinstance(data, dict) or data.get("v") != _CURSOR_VERSION:
        raise invalid
    last_id = data.get("id")
    # bool is an int subclass: {"id": true} must not pass as 1.
    if type(last_id) is not int or last_id < 0:
        raise invalid
    return last_id


def check_limit(limit: int | None) -> int:
    """``limit`` within 1..MAX_LIMIT (default DEFAULT_LIMIT); 422 ``invalid_limit`` otherwise.

    The HTTP schemas enforce the same bounds; this guards callers that skip them.
    """
    if limit is None:
        return DEFAULT_LIMIT
    if not 1 <= limit <= MAX_LIMIT:
        raise Unprocessable(
            f"limit must be between 1 and {MAX_LIMIT}, got {limit}", code="invalid_limit"
        )
    return limit


@dataclass(frozen=True)
class Page(Generic[M]):
    """One page of a keyset listing: its rows and the cursor of the next page (or None)."""

    items: Sequence[M]
    next_cursor: str | None


def keyset_page(
    session: AnySession,
    stmt: Select[M],
    key: InstrumentedAttribute[int],
    *,
    limit: int | None = None,
    cursor: str | None = None,
) -> Page[M]:
    """Run ``stmt`` for one page ordered by the unique, increasing integer column ``key``.

    ``stmt`` selects one entity (``select(Model)``, with any filters, joins and loader
    options). One SQL statement: ``... AND key > :last ORDER BY key LIMIT :limit + 1``;
    the extra row only tells whether a next page exists, so the last page has
    ``next_cursor`` None and no empty page is ever needed to find the end.
    """
    limit = check_limit(limit)
    if cursor is not None:
        stmt = stmt.where(key > decode_cursor(cursor))
    rows = session.scalars(stmt.order_by(key).limit(limit + 1)).unique().all()
    items = rows[:limit]
    next_cursor = None
    if len(rows) > limit:
        next_cursor = encode_cursor(int(getattr(items[-1], key.key)))
    return Page(items=items, next_cursor=next_cursor)


def where_equal(stmt: Select[M], conditions: Mapping[QueryableAttribute[Any], Any]) -> Select[M]:
    """Add ``column = value`` for each condition whose value is not None.

    Optional query parameters map straight onto this: an absent parameter is None and
    filters nothing. (To filter on IS NULL, add the condition yourself.)
    """
    clauses = [column == value for column, value in conditions.items() if value is not None]
    return stmt.where(and_(*clauses)) if clauses else stmt


def where_all(stmt: Select[M], clauses: Iterable[ColumnElement[bool] | None]) -> Select[M]:
    """Add every clause that is not None (a filter helper returns None when not asked for)."""
    present = [clause for clause in clauses if clause is not None]
    return stmt.where(and_(*present)) if present else stmt


def eager(
    *relationships: QueryableAttribute[Any],
    strategy: Literal["joined", "selectin"] = "joined",
) -> list[LoaderOption]:
    """Loader options that load ``relationships`` with the rows, in a bounded number of queries.

    ``joined`` (default) is right for many-to-one (each row has at most one related row):
    one statement with an INNER JOIN when the foreign key is NOT NULL, else a LEFT JOIN.
    ``selectin`` is right for collections (one-to-many): one extra
    ``SELECT ... WHERE fk IN (...)`` per relationship per page, and no row multiplication
    under LIMIT. Either way the number of statements does not grow with the page size.
    """
    options: list[LoaderOption] = []
    for relationship in relationships:
        if strategy == "selectin":
            options.append(selectinload(relationship))
        else:
            prop = relationship.property
            inner = all(not column.nullable for column in getattr(prop, "local_columns", ()))
            options.append(joinedload(relationship, innerjoin=inner and not prop.uselist))
    return options


def join_and_load(stmt: Select[M], relationship: QueryableAttribute[Any]) -> Select[M]:
    """INNER JOIN a many-to-one ``relationship`` and fill it from that same join.

    For lists that filter on the related table *and* show it: one statement does both
    (``JOIN`` + ``contains_eager``), where :func:`eager` would join the table a second
    time under an alias. The joined table's columns are then usable in ``where``.
    """
    return stmt.join(relationship).options(contains_eager(relationship))
