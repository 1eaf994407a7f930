"""Stored times, read back: always aware UTC datetimes."""

from __future__ import annotations

from datetime import UTC, datetime


def as_utc(value: datetime) -> datetime:
    """SQLite returns stored times naive, and everything caduceus stores is UTC; an aware time
    (PostgreSQL's, or a bound a user gave with another offset) is converted to UTC."""
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
