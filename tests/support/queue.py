"""Tasks put straight into the queue, for tests of claiming and leasing."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, insert

from caduceus.core.db.models import TASKS
from caduceus.core.states import TaskState


def add_task(
    engine: Engine,
    owner: str | None = None,
    *,
    action: str = "route",
    state: str = TaskState.QUEUED,
    priority: int = 1,
    not_before: datetime | None = None,
) -> str:
    """A task with no files; with `owner`, leased to it for ten minutes."""
    task_id = str(uuid.uuid4())
    now = datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(
            insert(TASKS).values(
                id=task_id,
                group_key=task_id,
                created_at=now,
                updated_at=now,
                rule="r",
                action=action,
                level="series",
                state=state,
                priority=priority,
                not_before=not_before,
                lease_owner=owner,
                lease_expires=now + timedelta(minutes=10) if owner else None,
                folder=f"tasks/{task_id}",
                targets=[],
                modules=[],
                info={},
            )
        )
    return task_id
