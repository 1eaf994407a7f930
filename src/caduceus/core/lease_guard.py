"""Writing for a task only while holding its lease, checked in the writing transaction itself."""

from __future__ import annotations

from sqlalchemy import Connection, and_, update

from caduceus.core.db.models import TASKS


def still_mine(conn: Connection, task_id: str, owner: str | None) -> bool:
    """True if `owner` holds the task's lease; call first in the transaction that writes.

    It is an UPDATE, not a SELECT, so that it locks: PostgreSQL holds the task's row lock and
    SQLite its writer lock until the transaction ends, so no other worker can take the task over
    between this check and the writes that follow it. Without an owner there is nothing to check
    (a one-off dispatch from the command line or a test).
    """
    if owner is None:
        return True
    touched = conn.execute(
        update(TASKS)
        .where(and_(TASKS.c.id == task_id, TASKS.c.lease_owner == owner))
        .values(lease_owner=owner)
    ).rowcount
    return bool(touched)
