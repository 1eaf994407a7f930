"""The dispatcher's claim on the shared queue (core/work_queue): a task that is due to be sent."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import Engine

from caduceus.core.work_queue import DISPATCHABLE, LEASE, OWNER_SILENT_AFTER
from caduceus.core.work_queue import claim as claim_task


def claim(
    engine: Engine,
    owner: str,
    now: datetime | None = None,
    lease: timedelta = LEASE,
    silent_after: timedelta = OWNER_SILENT_AFTER,
) -> str | None:
    """Lease the most urgent task that is due to be sent; None when there is none."""
    return claim_task(engine, owner, DISPATCHABLE, now, lease, silent_after)
