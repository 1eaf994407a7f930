"""The two ways a route reaches the database."""

from __future__ import annotations

from fastapi import Request
from sqlalchemy import Engine


def reader(request: Request) -> Engine:
    """For reads: never SQLite's write lock, which the receiver needs for every instance."""
    return request.app.state.engine  # type: ignore[no-any-return]


def writer(request: Request) -> Engine:
    """For changes: takes SQLite's write lock up front, as every writing service does."""
    return request.app.state.writer  # type: ignore[no-any-return]
