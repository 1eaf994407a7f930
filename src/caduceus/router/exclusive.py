"""One router at a time per group: a PostgreSQL advisory lock held until the transaction ends.

Several routers may share one PostgreSQL database. Without a lock two of them can read the
same series as still receiving and both complete it: the unique task key keeps the task single,
but both link its files, write its task.json over each other and record the completion twice.
A transaction-scoped advisory lock taken before the group is read makes the second router skip
the group; it sees the group completed on its next pass. It is not a row lock, so a receiver
recording a new arrival for the series is never kept waiting. SQLite has one writer at a time
and needs no lock.
"""

from __future__ import annotations

import hashlib

from sqlalchemy import Connection, text


def lock_key(group: str) -> int:
    """A stable signed 64-bit number for a group name such as "series:42"."""
    digest = hashlib.blake2b(group.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def claim_group(conn: Connection, group: str) -> bool:
    """True if this transaction may work on the group; False if another router is on it."""
    if conn.dialect.name != "postgresql":
        return True
    return bool(
        conn.execute(
            text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": lock_key(group)}
        ).scalar()
    )


__all__ = ["claim_group", "lock_key"]
