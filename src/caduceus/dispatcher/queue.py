"""Claiming tasks from the shared queue with a lease, so several dispatchers never collide.

A claim is one guarded UPDATE: it succeeds only if nobody holds a live lease on the task. A
dispatcher that dies simply lets its lease expire, and the task is claimed again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, and_, or_, select, update

from caduceus.core.db.models import QUEUE_CONTROLS, TASKS

log = logging.getLogger("caduceus.dispatcher")

LEASE = timedelta(minutes=10)
DISPATCHABLE = ("route",)  # "both" joins once the processor hands tasks over (issue 5)


def suspended(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return set(
            conn.execute(
                select(QUEUE_CONTROLS.c.name).where(QUEUE_CONTROLS.c.suspended.is_(True))
            ).scalars()
        )


def claim(
    engine: Engine, owner: str, now: datetime | None = None, lease: timedelta = LEASE
) -> str | None:
    """Lease the most urgent task that is due; None when there is none."""
    now = now or datetime.now(UTC)
    free = or_(TASKS.c.lease_expires.is_(None), TASKS.c.lease_expires < now)
    due = or_(TASKS.c.not_before.is_(None), TASKS.c.not_before <= now)
    with engine.begin() as conn:
        candidates = (
            conn.execute(
                select(TASKS.c.id)
                .where(
                    and_(
                        TASKS.c.state.in_(("queued", "dispatching")),
                        TASKS.c.action.in_(DISPATCHABLE),
                        due,
                        free,
                    )
                )
                .order_by(TASKS.c.priority, TASKS.c.created_at)
                .limit(5)
            )
            .scalars()
            .all()
        )
        for task_id in candidates:
            taken = conn.execute(
                update(TASKS)
                .where(and_(TASKS.c.id == task_id, free))
                .values(lease_owner=owner, lease_expires=now + lease)
            ).rowcount
            if taken:
                return str(task_id)
    return None


def renew(
    engine: Engine,
    task_id: str,
    owner: str,
    now: datetime | None = None,
    lease: timedelta = LEASE,
) -> bool:
    """Extend our lease; False if it is no longer ours (it expired and someone took over)."""
    now = now or datetime.now(UTC)
    with engine.begin() as conn:
        return bool(
            conn.execute(
                update(TASKS)
                .where(and_(TASKS.c.id == task_id, TASKS.c.lease_owner == owner))
                .values(lease_expires=now + lease)
            ).rowcount
        )


@contextmanager
def keep_lease(
    engine: Engine, task_id: str, owner: str, lease: timedelta = LEASE
) -> Iterator[None]:
    """Renew the lease in the background while a long send runs, so that nobody else takes
    the task from a dispatcher that is alive; a dead one stops renewing and its lease expires."""
    done = threading.Event()

    def renewing() -> None:
        while not done.wait(lease.total_seconds() / 4):
            try:
                if not renew(engine, task_id, owner, lease=lease):
                    log.warning("task %s: lease lost to another dispatcher", task_id)
                    return
            except Exception:
                log.exception("task %s: lease renewal failed; trying again", task_id)

    thread = threading.Thread(target=renewing, name=f"lease-{task_id[:8]}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def release(engine: Engine, task_id: str, owner: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            update(TASKS)
            .where(and_(TASKS.c.id == task_id, TASKS.c.lease_owner == owner))
            .values(lease_owner=None, lease_expires=None)
        )
