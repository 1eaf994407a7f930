"""INSERT ... ON CONFLICT for the two backends we support."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite


def insert_or_update(
    dialect: str,
    table: Table,
    values: dict[str, Any],
    key: str,
    update: list[str],
    returning: str | None = "id",
) -> Any:
    """An upsert on the unique column key that updates the named columns (returns the id)."""
    module = postgresql if dialect == "postgresql" else sqlite
    stmt = module.insert(table).values(**values)
    upsert = stmt.on_conflict_do_update(
        index_elements=[key], set_={col: stmt.excluded[col] for col in update}
    )
    return upsert.returning(table.c[returning]) if returning else upsert


def insert_or_ignore(dialect: str, table: Table, key: str) -> Any:
    """An insert that does nothing when the unique column key exists, returning the new id.

    Unlike a look-up followed by an insert, two concurrent writers of the same key never
    fail: the second waits for the first to commit and then inserts nothing.
    """
    module = postgresql if dialect == "postgresql" else sqlite
    return module.insert(table).on_conflict_do_nothing(index_elements=[key]).returning(table.c.id)
