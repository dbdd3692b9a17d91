"""SQL helpers shared by the modules that read the server (limits, snapshot).

Every statement here is read-only and takes its names as bound parameters, never as text.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import bindparam, text
from sqlalchemy.engine import Connection

__all__ = ["name_value_pairs"]


def name_value_pairs(connection: Connection, sql: str, names: Iterable[str]) -> dict[str, str]:
    """``{name: value}`` from a two-column statement filtered by ``IN :names`` (expanded),
    e.g. ``SHOW GLOBAL VARIABLES WHERE Variable_name IN :names`` or
    ``SELECT name, setting FROM pg_settings WHERE name IN :names``. Values come back as
    text, as the server reports them; a name the server does not know is simply absent."""
    statement = text(sql).bindparams(bindparam("names", list(names), expanding=True))
    return {str(row[0]): str(row[1]) for row in connection.execute(statement)}
