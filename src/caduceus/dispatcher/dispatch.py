"""Sending one task to its targets, each tracked on its own, with retries and backoff."""

from __future__ import annotations

import logging
import random
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine, and_, func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from caduceus.core.clock import as_utc
from caduceus.core.config.models import Config
from caduceus.core.db.models import DELIVERIES, TASK_INSTANCES, TASK_TARGETS, TASKS
from caduceus.core.events import record_event
from caduceus.core.lifecycle import any_set
from caduceus.core.states import TargetState, TaskState
from caduceus.core.storage import DataRoot
from caduceus.core.work_queue import held_by, still_mine
from caduceus.dispatcher.targets import Shipment, TargetError, plugin_for
from caduceus.dispatcher.tuning import MAX_BACKOFF

log = logging.getLogger("caduceus.dispatcher")


def backoff(attempt: int, base_seconds: int) -> timedelta:
    """Exponential with full jitter: base * 2^(attempt-1), randomised in [50%, 100%]."""
    raw = min(MAX_BACKOFF.total_seconds(), base_seconds * 2 ** max(0, attempt - 1))
    return timedelta(seconds=raw * random.uniform(0.5, 1.0))


def dispatch(
    engine: Engine,
    root: DataRoot,
    config: Config,
    task_id: str,
    suspended: set[str],
    now: datetime | None = None,
    owner: str | None = None,
    lost: threading.Event | None = None,
    stop: threading.Event | None = None,
) -> str:
    """Send what is due; return the task's new state.

    With `owner`, everything is written only while that dispatcher still holds its lease: one
    that lost it (it stalled past the lease) must not overwrite the task's or its targets' state,
    nor free the lease, of the dispatcher that took the task over. Once the lease is known lost
    (`lost` is set, or a write found it gone) no further target is sent to.

    Once `stop` is set (the dispatcher is stopping) or `lost`, the send in hand stops after the
    instance in hand: what the target confirmed is recorded, the target stays pending without
    a failed attempt, and the task is released for the next dispatcher at once, instead of
    the stop waiting for a long send (and being cut off by SIGKILL) and the task waiting out
    its lease before all of it is sent again.
    """
    now = now or datetime.now(UTC)
    with engine.connect() as conn:
        task = conn.execute(select(TASKS).where(TASKS.c.id == task_id)).one()
        targets = conn.execute(select(TASK_TARGETS).where(TASK_TARGETS.c.task_id == task_id)).all()
        delivered = {
            (d.target, d.file_name)
            for d in conn.execute(select(DELIVERIES).where(DELIVERIES.c.task_id == task_id))
        }
        expected = conn.execute(
            select(func.count()).where(TASK_INSTANCES.c.task_id == task_id)
        ).scalar_one()
    # A processed task sends the pipeline's result, which the processor published as out/.
    sent = "out" if task.action == "both" else "in"
    files = sorted((root.home / task.folder / sent).glob("*.dcm"))
    if task.file_count is not None:
        expected = task.file_count
    # Never "deliver" what is not there: a missing file (an unmounted data volume, a folder
    # removed by hand or by the cleaner) is a failed attempt, so the series is not sent half.
    problem = ""
    if task.cleaned_at is not None:
        problem = "the task's files were removed by the cleaner"
    elif len(files) < expected:
        problem = (
            f"only {len(files)} of the task's {expected} files are in "
            f"{task.folder}/{sent}; nothing sent"
        )
    info = (task.info or {}).get("info", {})
    interrupted = any_set(stop, lost)
    shipment = Shipment(
        task_id,
        sender_aet=info.get("sender_aet", ""),
        sender_address=info.get("sender_address", ""),
        receiver_aet=info.get("receiver_aet", ""),
        interrupted=interrupted,
    )
    for row in targets:
        if row.state != TargetState.PENDING or f"dispatch:{row.target}" in suspended:
            continue
        if row.next_attempt_at is not None and as_utc(row.next_attempt_at) > now:
            continue
        if interrupted():
            break
        if not _send_to(
            engine,
            config,
            shipment,
            row.target,
            row.attempts,
            files,
            delivered,
            now,
            problem,
            owner,
        ):
            break
    return _settle(engine, task_id, now, owner)


def _send_to(
    engine: Engine,
    config: Config,
    shipment: Shipment,
    target: str,
    attempts: int,
    files: list[Path],
    delivered: set[tuple[str, str]],
    now: datetime,
    problem: str = "",
    owner: str | None = None,
) -> bool:
    """Send to one target and record the outcome; False when no further target is to be sent
    to (the lease was found lost, or the send was interrupted)."""
    task_id = shipment.task_id
    todo = [f for f in files if (target, f.name) not in delivered]
    error = problem
    accepted: list[Path] = []
    interrupted = False
    seconds = 0.0
    if error:
        pass
    elif target not in config.targets:
        error = f"target {target!r} is no longer configured"
    else:
        with engine.begin() as conn:
            if not still_mine(conn, task_id, owner):
                return _lease_lost(task_id, target, owner)
            record_event(
                conn,
                "dispatch.started",
                f"{target}: sending {len(todo)} instance(s), attempt {attempts + 1}",
                task_id=task_id,
                details={"target": target, "attempt": attempts + 1, "instances": len(todo)},
            )
        try:
            began = time.monotonic()
            report = plugin_for(config.targets[target]).send(todo, shipment)
            seconds = round(time.monotonic() - began, 3)
            accepted = report.accepted
            if report.failed:
                first = next(iter(report.failed.items()))
                error = (
                    f"{len(report.failed)} of {len(todo)} instance(s) failed, "
                    f"e.g. {first[0].name}: {first[1]}"
                )
            else:
                interrupted = report.interrupted
        except TargetError as exc:
            error = str(exc)
        except Exception as exc:  # a plug-in bug must not kill the dispatcher
            log.exception("target %s failed unexpectedly", target)
            error = f"internal error: {type(exc).__name__}"
    attempt = attempts + 1
    retry_max = config.settings.retry_max
    with engine.begin() as conn:
        if not still_mine(conn, task_id, owner):
            # The new owner's view of the target stands; what this send delivered is not
            # recorded, so the target may receive those instances again, but never zero times.
            return _lease_lost(task_id, target, owner)
        if accepted:
            # Another dispatcher that took the task over may have recorded some already.
            dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
            conn.execute(
                dialect.insert(DELIVERIES).on_conflict_do_nothing(),
                [
                    {"task_id": task_id, "target": target, "file_name": f.name, "delivered_at": now}
                    for f in accepted
                ],
            )
        if interrupted:
            # Not an attempt that failed: the target stays pending as it was, and the next
            # dispatcher sends only what is not recorded above.
            record_event(
                conn,
                "dispatch.interrupted",
                f"{target}: stopped after {len(accepted)} of {len(todo)} instance(s); "
                "the rest is sent when a dispatcher takes the task up again",
                task_id=task_id,
                details={"target": target, "sent": len(accepted), "instances": len(todo)},
            )
            return False
        if not error:
            values = {
                "state": TargetState.DONE,
                "attempts": attempt,
                "last_error": None,
                "next_attempt_at": None,
            }
            record_event(
                conn,
                "dispatch.done",
                f"{target}: {len(accepted)} instance(s) sent",
                task_id=task_id,
                details={"target": target, "attempt": attempt, "seconds": seconds},
            )
        elif attempt > retry_max:
            values = {"state": TargetState.ERROR, "attempts": attempt, "last_error": error}
            record_event(
                conn,
                "dispatch.error",
                f"{target}: giving up after {attempt} attempt(s): {error}",
                severity="error",
                task_id=task_id,
                details={"target": target},
            )
        else:
            wait = backoff(attempt, config.settings.retry_delay)
            values = {"attempts": attempt, "last_error": error, "next_attempt_at": now + wait}
            record_event(
                conn,
                "dispatch.retry",
                f"{target}: attempt {attempt} failed ({error}); "
                f"next try in {int(wait.total_seconds())} s",
                severity="warning",
                task_id=task_id,
                details={
                    "target": target,
                    "attempt": attempt,
                    "sent": len(accepted),
                    "seconds": seconds,
                },
            )
        conn.execute(
            update(TASK_TARGETS)
            .where(and_(TASK_TARGETS.c.task_id == task_id, TASK_TARGETS.c.target == target))
            .values(updated_at=now, **values)
        )
    return True


def _lease_lost(task_id: str, target: str, owner: str | None) -> bool:
    log.warning(
        "task %s: %s lost the lease to another dispatcher; not recording %s, sending no more",
        task_id,
        owner,
        target,
    )
    return False


def _settle(engine: Engine, task_id: str, now: datetime, owner: str | None = None) -> str:
    with engine.begin() as conn:
        rows = conn.execute(select(TASK_TARGETS).where(TASK_TARGETS.c.task_id == task_id)).all()
        states = {r.state for r in rows}
        if states <= {TargetState.DONE}:
            state, not_before, error = TaskState.DONE, None, None
        elif TargetState.PENDING in states:
            waits = [
                as_utc(r.next_attempt_at)
                for r in rows
                if r.state == TargetState.PENDING and r.next_attempt_at
            ]
            state, not_before, error = TaskState.DISPATCHING, min(waits) if waits else None, None
        else:
            state, not_before = TaskState.ERROR, None
            error = "; ".join(
                f"{r.target}: {r.last_error}" for r in rows if r.state == TargetState.ERROR
            )
        conn.execute(
            update(TASKS)
            .where(held_by(task_id, owner))
            .values(
                state=state,
                not_before=not_before,
                error=error,
                updated_at=now,
                lease_owner=None,
                lease_expires=None,
            )
        )
    return state


def restart(engine: Engine, task_id: str, author: str = "") -> int:
    """Send a failed task again, to the targets that failed only. Returns how many."""
    now = datetime.now(UTC)
    with engine.begin() as conn:
        task = conn.execute(
            select(
                TASKS.c.state, TASKS.c.cleaned_at, TASKS.c.action, TASKS.c.step, TASKS.c.modules
            ).where(TASKS.c.id == task_id)
        ).first()
        if task is None:
            raise LookupError(f"no task {task_id}")
        if task.cleaned_at is not None:
            raise LookupError(
                f"task {task_id} cannot be restarted: the cleaner removed its files "
                f"on {task.cleaned_at:%Y-%m-%d %H:%M}"
            )
        if task.state != TaskState.ERROR:
            raise LookupError(f"task {task_id} is {task.state}, not in error: nothing to restart")
        reopened = conn.execute(
            update(TASKS)
            .where(and_(TASKS.c.id == task_id, TASKS.c.cleaned_at.is_(None)))
            .values(state=TaskState.QUEUED, error=None, not_before=None, updated_at=now)
        ).rowcount
        if not reopened:  # the cleaner claimed it in the meantime
            raise LookupError(f"task {task_id} cannot be restarted: the cleaner removed its files")
        steps = len(task.modules or [])
        if task.action in ("process", "both") and task.step < steps:
            # Processing failed: the processor takes the task again at the step that failed.
            record_event(
                conn,
                "task.restarted",
                f"restarted by {author or 'someone'} at step {task.step + 1} of {steps}",
                task_id=task_id,
            )
            return 0
        failed = conn.execute(
            update(TASK_TARGETS)
            .where(
                and_(TASK_TARGETS.c.task_id == task_id, TASK_TARGETS.c.state == TargetState.ERROR)
            )
            .values(state=TargetState.PENDING, attempts=0, next_attempt_at=None, updated_at=now)
        ).rowcount
        if task.action == "both":
            conn.execute(
                update(TASKS).where(TASKS.c.id == task_id).values(state=TaskState.DISPATCHING)
            )
        record_event(
            conn,
            "task.restarted",
            f"restarted by {author or 'someone'}: {failed} target(s)",
            task_id=task_id,
        )
    return failed
