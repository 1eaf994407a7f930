"""Opening the database named by the settings, migrated to the current schema."""

from __future__ import annotations

from sqlalchemy import Engine

from caduceus.core.db.engine import make_engine, writer
from caduceus.core.db.migrate import upgrade
from caduceus.core.settings import Settings


def open_database(settings: Settings, *, migrate: bool = False, pool_size: int = 5) -> Engine:
    """The engine for writers (SQLite transactions take the write lock at BEGIN)."""
    engine = make_engine(
        settings.resolved_database_url,
        pool_size=pool_size,
        durable=settings.fsync,
        busy_timeout=settings.database_busy_timeout_seconds,
    )
    if migrate:
        upgrade(engine)
    return writer(engine)
