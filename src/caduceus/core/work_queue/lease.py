"""Claiming a task from the shared queue with a lease, keeping the lease, and releasing it.

A claim is one guarded UPDATE: it succeeds only if nobody holds a live lease on the task. A
worker renews its lease while it works; one that dies stops renewing, its lease expires, and
the task is claimed again, at once when its holder is known to be dead (core/lease_owners).
Dispatchers and processors share this; each says which tasks are its own with a condition.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

from sqlalchemy import ColumnElement, Engine, and_, not_, or_, select, update
from sqlalchemy.exc import DBAPIError

from caduceus.core.db.models import TASKS
from caduceus.core.db_contact import DATABASE, Contact
from caduceus.core.lease_owners import dead_owners
from caduceus.core.work_queue.guard import held_by, leased_to

log = logging.getLogger("caduceus.queue")

LEASE = timedelta(minutes=10)
# A holder on another host whose heartbeat is this quiet is taken for dead.
OWNER_SILENT_AFTER = timedelta(seconds=60)


def claim(
    engine: Engine,
    owner: str,
    mine: ColumnElement[bool],
    now: datetime | None = None,
    lease: timedelta = LEASE,
    silent_after: timedelta = OWNER_SILENT_AFTER,
    contact: Contact = DATABASE,
) -> str | None:
    """Lease the most urgent due task that matches `mine`; None when there is none.

    A task is free when nobody holds a live lease on it, or when its holder is known to be
    dead (lease_owners.dead_owners): a killed worker's task is taken over at once, not after
    its lease. Holders on other hosts are judged only once this process (`contact`) has
    reached the database without a break for `silent_after`."""
    try:
        return _claim(engine, owner, mine, now or datetime.now(UTC), lease, silent_after, contact)
    except DBAPIError:
        contact.lost()
        raise


def _claim(
    engine: Engine,
    owner: str,
    mine: ColumnElement[bool],
    now: datetime,
    lease: timedelta,
    silent_after: timedelta,
    contact: Contact,
) -> str | None:
    # A worker claims only when it holds nothing, so a task still leased to its own name was
    # left behind when a database error also kept it from being released: take it again now,
    # not when that lease runs out.
    free = or_(TASKS.c.lease_expires.is_(None), TASKS.c.lease_expires < now, leased_to(owner))
    due = or_(TASKS.c.not_before.is_(None), TASKS.c.not_before <= now)
    with engine.begin() as conn:
        held = (
            conn.execute(select(TASKS.c.lease_owner).where(and_(mine, due, not_(free))).distinct())
            .scalars()
            .all()
        )
        contact.reached()
        # After an outage every holder elsewhere looks silent, having been unable to beat.
        steady = contact.steady_for() >= silent_after.total_seconds()
        dead = (
            dead_owners(conn, [h for h in held if h], silent_after, judge_remote=steady)
            if held
            else []
        )
        if dead:
            free = or_(free, TASKS.c.lease_owner.in_(dead))
        candidates = conn.execute(
            select(TASKS.c.id, TASKS.c.lease_owner)
            .where(and_(mine, due, free))
            .order_by(TASKS.c.priority, TASKS.c.created_at)
            .limit(5)
        ).all()
        for task_id, previous in candidates:
            # Guarded by the same conditions: another worker may have moved the task on since
            # it was selected (done, error, handed to the dispatcher), or taken it over first.
            taken = conn.execute(
                update(TASKS)
                .where(and_(TASKS.c.id == task_id, mine, due, free))
                .values(lease_owner=owner, lease_expires=now + lease)
            ).rowcount
            if taken:
                if previous in dead:
                    log.warning(
                        "task %s: taken over from %s, which no longer runs", task_id, previous
                    )
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
                update(TASKS).where(held_by(task_id, owner)).values(lease_expires=now + lease)
            ).rowcount
        )


@contextmanager
def keep_lease(
    engine: Engine, task_id: str, owner: str, lease: timedelta = LEASE
) -> Iterator[threading.Event]:
    """Renew the lease in the background while the work runs; the event it yields is set
    when the lease was lost to another worker, so long work can stop early."""
    done = threading.Event()
    lost = threading.Event()

    def renewing() -> None:
        while not done.wait(lease.total_seconds() / 4):
            try:
                if not renew(engine, task_id, owner, lease=lease):
                    log.warning("task %s: lease lost to another worker", task_id)
                    lost.set()
                    return
            except Exception:
                log.exception("task %s: lease renewal failed; trying again", task_id)

    thread = threading.Thread(target=renewing, name=f"lease-{task_id[:8]}", daemon=True)
    thread.start()
    try:
        yield lost
    finally:
        done.set()
        thread.join()


def release(engine: Engine, task_id: str, owner: str) -> None:
    """Give the task back to the queue at once (if the lease is still ours)."""
    with engine.begin() as conn:
        conn.execute(
            update(TASKS)
            .where(held_by(task_id, owner))
            .values(lease_owner=None, lease_expires=None)
        )
