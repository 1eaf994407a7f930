"""Discarding a task by hand: it is neither processed nor sent, and the cleaner takes it.

The processor and the dispatcher claim only queued, processing and dispatching tasks, so a
discarded one is never claimed again; the cleaner removes its folder after the discard
retention, counted from the moment of the discard (updated_at).
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Engine, and_, or_, select, update

from caduceus.core.db.models import TASKS
from caduceus.core.events import record_event
from caduceus.core.states import TaskState

DISCARDABLE = (TaskState.QUEUED, TaskState.PROCESSING, TaskState.DISPATCHING, TaskState.ERROR)


class TaskBusy(Exception):
    """The task cannot be discarded now: a worker holds it, or it is finished."""


def discard(engine: Engine, task_id: str, author: str, now: datetime | None = None) -> str:
    """Discard a waiting or failed task; returns the state it was in.

    LookupError if there is no such task; TaskBusy if a processor or dispatcher is working on
    it (a live lease) or it has ended already.
    """
    now = now or datetime.now(UTC)
    idle = or_(TASKS.c.lease_expires.is_(None), TASKS.c.lease_expires < now)
    with engine.begin() as conn:
        state = conn.execute(select(TASKS.c.state).where(TASKS.c.id == task_id)).scalar()
        if state is None:
            raise LookupError(f"no task {task_id}")
        if state not in DISCARDABLE:
            raise TaskBusy(f"the task is {state} already")
        # One guarded statement: a worker that claims the task first wins, and one that claims
        # it later finds it discarded. The lease owner is cleared, so a worker that lost its
        # lease cannot write a state over the discard.
        changed = conn.execute(
            update(TASKS)
            .where(and_(TASKS.c.id == task_id, TASKS.c.state == state, idle))
            .values(
                state=TaskState.DISCARDED,
                not_before=None,
                lease_owner=None,
                lease_expires=None,
                updated_at=now,
            )
        ).rowcount
        if not changed:
            raise TaskBusy(f"the task is being worked on ({state}); try again when it waits")
        record_event(
            conn,
            "task.discarded",
            f"discarded by {author} (was {state})",
            task_id=task_id,
            details={"by": author, "was": state},
        )
    return str(state)
