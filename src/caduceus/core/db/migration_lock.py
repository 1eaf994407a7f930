"""One migrator at a time: processes starting together against one database take turns.

Every service migrates on start. Without this, two processes (or machines) starting at once
both find the schema behind and both try to create it; one of them fails on a duplicate
table or row (PostgreSQL) or on SQLite's write lock."""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, text

log = logging.getLogger("caduceus.migrate")

# A fixed key shared by every caduceus version: a newer one must wait for an older one's
# migration too. PostgreSQL scopes advisory locks to the database, so other databases on the
# same server are unaffected. The value spells "caduceus" in ASCII.
ADVISORY_LOCK_KEY = 0x6361647563657573


@contextmanager
def migration_lock(engine: Engine) -> Iterator[None]:
    """Held while the schema is checked and upgraded; others wait here until it is released."""
    backend = engine.dialect.name
    if backend == "postgresql":
        with _advisory_lock(engine):
            yield
    elif backend == "sqlite" and _sqlite_file(engine) is not None:
        with _file_lock(lock_file_for(engine)):
            yield
    else:
        # An in-memory SQLite database belongs to one process: nobody to wait for.
        yield


def lock_file_for(engine: Engine) -> Path:
    database = _sqlite_file(engine)
    if database is None:
        raise ValueError("not an SQLite database file")
    return database.with_name(database.name + ".migrate-lock")


def _sqlite_file(engine: Engine) -> Path | None:
    database = engine.url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


@contextmanager
def _advisory_lock(engine: Engine) -> Iterator[None]:
    # Its own connection, outside any transaction: a session lock survives the migration's
    # commit, and an idle transaction could be ended by idle_in_transaction_session_timeout.
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        key = {"key": ADVISORY_LOCK_KEY}
        if not conn.execute(text("SELECT pg_try_advisory_lock(:key)"), key).scalar():
            log.info("waiting for another process to finish migrating the database")
            conn.execute(text("SELECT pg_advisory_lock(:key)"), key)
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:key)"), key)


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Read-only is enough for flock, and lets a lock file left by another user (root running
    # `caduceus migrate` once) still be used. The kernel drops the lock if we die.
    fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process to finish migrating the database")
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
