"""Turning events into notifications: a consumer of the events table with a cursor.

The consumer reads the events after its cursor in id order, a batch at a time, and in ONE
transaction inserts the notifications they call for and moves the cursor past them: a consumer
that dies loses no event and, restarted, makes no notification twice (the unique key on
(event, rule, channel) would refuse a second one anyway).

Which events matter, for the rule of the event's task:

- reception: ``task.created``, if ``on_reception``;
- error: ``dispatch.error`` (a target gave up) and ``process.error``, if ``on_error``;
- completion: once per task, at the first of ``dispatch.done``, ``process.done`` and
  ``task.done`` that finds the task finished: in state done, or with every target done (the
  dispatcher records a target's ``dispatch.done`` with the target's state and sets the task's
  state a moment later). With ``on_completion_on_request`` only if a module asked for it
  (a ``process.notification`` event with ``requested``), as in mercure.

A notification-only rule (action "notification") has nothing else to do: the consumer marks its
task done when it sees it created, and the ``task.done`` event it records brings the completion.

Ids are handed out before commit: on PostgreSQL a transaction can commit an event with a lower
id after one with a higher id was read. The consumer therefore stops before a gap in the ids
until the event after the gap is `GAP_GRACE` old; by then the missing id belongs to a
transaction that rolled back.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, and_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from caduceus.core.clock import as_utc
from caduceus.core.config.models import Config, Notification
from caduceus.core.db.engine import writer
from caduceus.core.db.models import CURSORS, EVENTS, NOTIFICATIONS, TASK_TARGETS, TASKS
from caduceus.core.events import record_event
from caduceus.core.states import TargetState, TaskState
from caduceus.notifier.tuning import EVENT_BATCH, FIRST_LOOKBACK, GAP_GRACE

log = logging.getLogger("caduceus.notifier")

CURSOR = "notifier"

RECEPTION_KINDS = frozenset({"task.created"})
COMPLETION_KINDS = frozenset({"dispatch.done", "process.done", "task.done"})
ERROR_KINDS = frozenset({"dispatch.error", "process.error"})
KINDS = RECEPTION_KINDS | COMPLETION_KINDS | ERROR_KINDS


@dataclass
class Consumed:
    events: int = 0  # events read past
    created: int = 0  # notifications made
    more: bool = False  # a full batch: call again at once


def channels(notification: Notification) -> list[str]:
    found = []
    if notification.webhook_url:
        found.append("webhook")
    if notification.email:
        found.append("email")
    return found


def consume(
    engine: Engine, config: Config, now: datetime | None = None, batch: int = EVENT_BATCH
) -> Consumed:
    """Read one batch of events; make their notifications and move the cursor, atomically."""
    now = now or datetime.now(UTC)
    with writer(engine).begin() as conn:
        position = _cursor(conn, now)
        rows = conn.execute(
            select(EVENTS.c.id, EVENTS.c.kind, EVENTS.c.at, EVENTS.c.task_id, EVENTS.c.details)
            .where(EVENTS.c.id > position)
            .order_by(EVENTS.c.id)
            .limit(batch)
        ).all()
        taken: list[Any] = []
        expected = position + 1
        for row in rows:
            if row.id != expected and as_utc(row.at) > now - GAP_GRACE:
                break  # an earlier id may still commit
            taken.append(row)
            expected = row.id + 1
        if not taken:
            return Consumed(more=False)
        made: list[dict[str, Any]] = []
        completed: set[str] = set()
        for row in taken:
            made.extend(_notifications_for(conn, config, row, now, completed))
        if made:
            dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
            conn.execute(
                dialect.insert(NOTIFICATIONS).on_conflict_do_nothing(
                    index_elements=["event_id", "rule", "channel"]
                ),
                made,
            )
        moved = conn.execute(
            update(CURSORS)
            .where(and_(CURSORS.c.name == CURSOR, CURSORS.c.last_event_id == position))
            .values(last_event_id=taken[-1].id)
        ).rowcount
        if moved != 1:  # another consumer got there first: leave it all to that one
            conn.rollback()
            return Consumed(more=False)
    return Consumed(events=len(taken), created=len(made), more=len(taken) == batch)


def _cursor(conn: Connection, now: datetime) -> int:
    def read() -> int | None:
        # FOR UPDATE: a second consumer on PostgreSQL waits here for the first to commit.
        value = conn.execute(
            select(CURSORS.c.last_event_id).where(CURSORS.c.name == CURSOR).with_for_update()
        ).scalar()
        return None if value is None else int(value)

    found = read()
    if found is not None:
        return found
    start = conn.execute(
        select(EVENTS.c.id)
        .where(EVENTS.c.at < now - FIRST_LOOKBACK)
        .order_by(EVENTS.c.at.desc(), EVENTS.c.id.desc())
        .limit(1)
    ).scalar()
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    conn.execute(
        dialect.insert(CURSORS)
        .values(name=CURSOR, last_event_id=int(start or 0))
        .on_conflict_do_nothing(index_elements=["name"])
    )
    return read() or 0


def _notifications_for(
    conn: Connection, config: Config, event: Any, now: datetime, completed: set[str]
) -> list[dict[str, Any]]:
    if event.kind not in KINDS or not event.task_id:
        return []
    task = conn.execute(
        select(TASKS.c.id, TASKS.c.rule, TASKS.c.action, TASKS.c.state).where(
            TASKS.c.id == event.task_id
        )
    ).first()
    if task is None:
        return []
    if event.kind == "task.created" and task.action == "notification":
        _finish_notification_task(conn, task.id, now)
    rule = config.rules.get(task.rule)
    if rule is None:
        return []
    settings = rule.notification
    wanted = channels(settings)
    if not wanted:
        return []
    trigger = ""
    if event.kind in RECEPTION_KINDS and settings.on_reception:
        trigger = "reception"
    elif event.kind in ERROR_KINDS and settings.on_error:
        trigger = "error"
    elif event.kind in COMPLETION_KINDS and (
        settings.on_completion or settings.on_completion_on_request
    ):
        if task.id in completed or not _finished(conn, task, event):
            return []
        completed.add(task.id)
        if _already_notified(conn, task.id, task.rule):
            return []
        if settings.on_completion_on_request and not _requested(conn, task.id):
            return []
        trigger = "completion"
    if not trigger:
        return []
    return [
        {
            "event_id": event.id,
            "rule": task.rule,
            "channel": channel,
            "trigger": trigger,
            "task_id": task.id,
            "state": "pending",
            "attempts": 0,
            "next_attempt_at": None,
            "last_error": None,
            "created_at": now,
            "sent_at": None,
        }
        for channel in wanted
    ]


def _finished(conn: Connection, task: Any, event: Any) -> bool:
    if task.state == TaskState.DONE:
        return True
    if event.kind != "dispatch.done" or task.state not in (TaskState.QUEUED, TaskState.DISPATCHING):
        return False
    states = conn.execute(
        select(TASK_TARGETS.c.state).where(TASK_TARGETS.c.task_id == task.id)
    ).scalars()
    found = list(states)
    return bool(found) and all(state == TargetState.DONE for state in found)


def _already_notified(conn: Connection, task_id: str, rule: str) -> bool:
    return (
        conn.execute(
            select(NOTIFICATIONS.c.id)
            .where(
                NOTIFICATIONS.c.task_id == task_id,
                NOTIFICATIONS.c.rule == rule,
                NOTIFICATIONS.c.trigger == "completion",
            )
            .limit(1)
        ).first()
        is not None
    )


def _requested(conn: Connection, task_id: str) -> bool:
    rows = conn.execute(
        select(EVENTS.c.details).where(
            EVENTS.c.task_id == task_id, EVENTS.c.kind == "process.notification"
        )
    ).scalars()
    return any((details or {}).get("requested") for details in rows)


def _finish_notification_task(conn: Connection, task_id: str, now: datetime) -> None:
    done = conn.execute(
        update(TASKS)
        .where(
            and_(
                TASKS.c.id == task_id,
                TASKS.c.action == "notification",
                TASKS.c.state == TaskState.QUEUED,
            )
        )
        .values(state=TaskState.DONE, updated_at=now)
    ).rowcount
    if done:
        record_event(
            conn, "task.done", "notification-only task: nothing else to do", task_id=task_id
        )
