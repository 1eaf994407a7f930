"""Stored times, read back: always aware UTC datetimes; the database's own time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import ColumnElement, DateTime, func, type_coerce


def as_utc(value: datetime) -> datetime:
    """SQLite returns stored times naive, and everything caduceus stores is UTC; an aware time
    (PostgreSQL's, or a bound a user gave with another offset) is converted to UTC."""
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)


def database_now(dialect: str, earlier_by: timedelta = timedelta(0)) -> ColumnElement[datetime]:
    """The database's current time (less `earlier_by`), as SQL. Heartbeats are written and
    judged by this one clock, so a host whose clock is off neither looks silent itself nor
    finds others silent."""
    if dialect == "sqlite":
        # UTC text like SQLAlchemy's own (which it compares with as text), to the millisecond.
        seconds = f"{-earlier_by.total_seconds()} seconds"
        return type_coerce(
            func.strftime("%Y-%m-%d %H:%M:%f", "now", seconds), DateTime(timezone=True)
        )
    return type_coerce(func.now() - earlier_by, DateTime(timezone=True))
