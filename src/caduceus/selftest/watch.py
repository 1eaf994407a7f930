"""Watching the series go through the services, by what they wrote into the database.

Each wait has a time limit; when it runs out, the message names the service that did not
do its part and what the database shows instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from pydicom import dcmread
from sqlalchemy import Engine, and_, func, select

from caduceus.core.db.models import INSTANCES, QUEUE_CONTROLS, SERIES, TASK_TARGETS, TASKS
from caduceus.core.states import SeriesState, TaskState
from caduceus.selftest.dicom import StageFailed

T = TypeVar("T")
INTERVAL = 0.25


def poll(check: Callable[[], T | None], timeout: float) -> T | None:
    """check() until it answers something other than None, for at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found is not None or time.monotonic() >= deadline:
            return found
        time.sleep(INTERVAL)


def stored(engine: Engine, series_uid: str, expected: int, timeout: float) -> str:
    def count() -> int:
        with engine.connect() as conn:
            return int(
                conn.execute(
                    select(func.count())
                    .select_from(INSTANCES.join(SERIES, INSTANCES.c.series_id == SERIES.c.id))
                    .where(SERIES.c.series_uid == series_uid)
                ).scalar_one()
            )

    if poll(lambda: True if count() >= expected else None, timeout) is None:
        raise StageFailed(
            f"{count()} of {expected} instance(s) in the database after {timeout:.0f} s "
            "(does the web interface use the receiver's database?)"
        )
    return f"{expected} instance(s) recorded"


def routed(engine: Engine, series_uid: str, rule: str, timeout: float) -> str:
    """The id of the task the router made for this series and rule."""

    def task() -> str | None:
        with engine.connect() as conn:
            found = conn.execute(
                select(TASKS.c.id).where(
                    and_(TASKS.c.series_uid == series_uid, TASKS.c.rule == rule)
                )
            ).scalar()
        return None if found is None else str(found)

    found = poll(task, timeout)
    if found is not None:
        return found
    with engine.connect() as conn:
        state = conn.execute(
            select(SERIES.c.state).where(SERIES.c.series_uid == series_uid)
        ).scalar()
    if state == SeriesState.ERROR:
        raise StageFailed("the router could not route the series (see the series' events)")
    if state == SeriesState.COMPLETE:
        raise StageFailed(
            f"the router completed the series but made no task for rule {rule} "
            "(was the configuration changed meanwhile?)"
        )
    raise StageFailed(f"no task after {timeout:.0f} s: is the router running?")


def dispatched(engine: Engine, task_id: str, target: str, timeout: float) -> str:
    def outcome() -> tuple[str, str] | None:
        with engine.connect() as conn:
            task = conn.execute(
                select(TASKS.c.state, TASKS.c.error).where(TASKS.c.id == task_id)
            ).one()
        if task.state in (TaskState.DONE, TaskState.ERROR, TaskState.DISCARDED):
            return task.state, task.error or ""
        return None

    found = poll(outcome, timeout)
    if found is not None:
        state, error = found
        if state == TaskState.DONE:
            return f"task {task_id} delivered to {target}"
        raise StageFailed(f"task {task_id} ended as {state}" + (f": {error}" if error else ""))
    with engine.connect() as conn:
        last_error = conn.execute(
            select(TASK_TARGETS.c.last_error).where(
                and_(TASK_TARGETS.c.task_id == task_id, TASK_TARGETS.c.target == target)
            )
        ).scalar()
        paused = set(
            conn.execute(
                select(QUEUE_CONTROLS.c.name).where(
                    and_(
                        QUEUE_CONTROLS.c.suspended.is_(True),
                        QUEUE_CONTROLS.c.name.in_(("dispatch", f"dispatch:{target}")),
                    )
                )
            ).scalars()
        )
    if paused:
        raise StageFailed(f"not delivered after {timeout:.0f} s: dispatching is suspended")
    if last_error:
        raise StageFailed(f"not delivered after {timeout:.0f} s: {last_error}")
    raise StageFailed(f"not delivered after {timeout:.0f} s: is the dispatcher running?")


def arrived(folder: Path, sop_instances: set[str]) -> str:
    """Every instance sent is in the folder the target wrote, read back from the files."""
    if not folder.is_dir():
        raise StageFailed(f"the target folder {folder} is missing")
    found: set[str] = set()
    for path in folder.glob("*.dcm"):
        try:
            found.add(str(dcmread(path, stop_before_pixels=True).SOPInstanceUID))
        except Exception as exc:  # any unreadable file is a failed delivery
            raise StageFailed(f"{path.name} in the target folder is unreadable: {exc}") from exc
    missing = sop_instances - found
    if missing:
        raise StageFailed(f"{len(missing)} of {len(sop_instances)} instance(s) did not arrive")
    return f"{len(sop_instances)} of {len(sop_instances)} instance(s) read back"
