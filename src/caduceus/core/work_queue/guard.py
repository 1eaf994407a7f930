"""The lease-owner guard: a worker writes for a task only while it holds the task's lease.

Every statement a worker makes about its task (renew, release, record a step, settle, fail) is
guarded by the same condition, written once here, so that a worker that stalled past its lease
never overwrites what the worker that took the task over has written.
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, Connection, and_, update

from caduceus.core.db.models import TASKS


def leased_to(owner: str) -> ColumnElement[bool]:
    """Tasks whose lease `owner` holds (or last held: the expiry is not looked at)."""
    return TASKS.c.lease_owner == owner


def held_by(task_id: str, owner: str | None) -> ColumnElement[bool]:
    """The task, while `owner` holds its lease. Without an owner there is nothing to check
    (a one-off run from the command line or a test): the task itself."""
    task = TASKS.c.id == task_id
    return task if owner is None else and_(task, leased_to(owner))


def still_mine(conn: Connection, task_id: str, owner: str | None) -> bool:
    """True if `owner` holds the task's lease; call first in the transaction that writes.

    It is an UPDATE, not a SELECT, so that it locks: PostgreSQL holds the task's row lock and
    SQLite its writer lock until the transaction ends, so no other worker can take the task over
    between this check and the writes that follow it. Without an owner there is nothing to check.
    """
    if owner is None:
        return True
    touched = conn.execute(
        update(TASKS).where(held_by(task_id, owner)).values(lease_owner=owner)
    ).rowcount
    return bool(touched)
