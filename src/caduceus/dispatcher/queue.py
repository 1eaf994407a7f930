"""The dispatcher's share of the task queue: routing tasks, and processed tasks to send."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import Engine, and_, or_

from caduceus.core.db.models import TASKS
from caduceus.core.work_queue import (
    LEASE,
    OWNER_SILENT_AFTER,
    keep_lease,
    release,
    renew,
    suspended,
)
from caduceus.core.work_queue import claim as claim_task

# A "both" task becomes the dispatcher's once the processor has handed it over (dispatching).
DISPATCHABLE = or_(
    and_(TASKS.c.action == "route", TASKS.c.state.in_(("queued", "dispatching"))),
    and_(TASKS.c.action == "both", TASKS.c.state == "dispatching"),
)


def claim(
    engine: Engine,
    owner: str,
    now: datetime | None = None,
    lease: timedelta = LEASE,
    silent_after: timedelta = OWNER_SILENT_AFTER,
) -> str | None:
    """Lease the most urgent task that is due to be sent; None when there is none."""
    return claim_task(engine, owner, DISPATCHABLE, now, lease, silent_after)


__all__ = ["LEASE", "claim", "keep_lease", "release", "renew", "suspended"]
