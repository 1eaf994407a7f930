"""Database engines with the settings each backend needs for safe concurrent use."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError


def make_engine(
    url: str, *, pool_size: int = 5, durable: bool = True, busy_timeout: float = 60.0
) -> Engine:
    """An engine; durable=False lets SQLite skip the fsync at each commit (tests, benchmarks).
    busy_timeout: seconds a SQLite statement waits for the lock before it fails.

    Errors never quote statement parameters: they can hold a stored secret (the configuration
    document, with its passwords, is one)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            connect_args={"timeout": busy_timeout, "check_same_thread": False},
            pool_size=pool_size,
            max_overflow=pool_size,
            hide_parameters=True,
        )
        synchronous = "FULL" if durable else "NORMAL"
        busy_ms = max(1, int(busy_timeout * 1000))
        event.listen(engine, "connect", lambda conn, _: _sqlite_pragmas(conn, synchronous, busy_ms))
        event.listen(engine, "begin", lambda conn: _sqlite_begin(conn, busy_ms))
        return engine
    return create_engine(
        url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True, hide_parameters=True
    )


def writer(engine: Engine) -> Engine:
    """The same engine, but its transactions take SQLite's write lock at BEGIN.

    A deferred transaction that reads and then writes fails at once (SQLITE_BUSY) when another
    process wrote in between; one that locks up front waits its turn on busy_timeout instead.
    PostgreSQL ignores the option.
    """
    return engine.execution_options(caduceus_write=True)


def _sqlite_begin(conn: Any, busy_ms: int) -> None:
    if not conn.get_execution_options().get("caduceus_write", False):
        conn.exec_driver_sql("BEGIN")
        return
    # SQLite's own busy handler sleeps 1, 2, 5, 10, ... 100 ms between tries, while a writer
    # holds the lock for about a millisecond: with several writers most time went to sleeping.
    # Poll for the write lock at a sub-millisecond pace instead.
    raw = conn.connection.driver_connection
    deadline = time.monotonic() + busy_ms / 1000
    delay = 0.0002
    raw.execute("PRAGMA busy_timeout=0")
    try:
        while True:
            try:
                raw.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    # As SQLAlchemy's own error, which callers (the web's 503) recognise.
                    raise OperationalError("BEGIN IMMEDIATE", None, exc) from exc
                time.sleep(delay)
                delay = min(delay * 1.5, 0.004)
    finally:
        raw.execute(f"PRAGMA busy_timeout={busy_ms}")


def _sqlite_pragmas(dbapi_conn: Any, synchronous: str, busy_ms: int) -> None:
    dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (see make_engine)
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    # FULL: a commit is on disk before it returns, which is what a C-STORE success promises.
    cur.execute(f"PRAGMA synchronous={synchronous}")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute(f"PRAGMA busy_timeout={busy_ms}")
    cur.close()
