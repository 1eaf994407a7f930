"""What the Overview shows besides the services and the charts: queues, disk, recent errors."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, and_, func, select

from caduceus.core.clock import as_utc
from caduceus.core.config.models import Settings as ConfigSettings
from caduceus.core.db.models import EVENTS, QUEUE_CONTROLS, TASKS
from caduceus.core.states import TaskState
from caduceus.core.storage import used_percent
from caduceus.core.work_queue import DISPATCHABLE, PROCESSABLE

TASK_STATES: tuple[str, ...] = tuple(TaskState)
ERROR_WINDOW = timedelta(hours=24)


@dataclass(frozen=True)
class Queues:
    by_state: dict[str, int]  # every known state, zero when none
    to_process: int
    to_dispatch: int
    suspended: list[dict[str, Any]]  # name, changed_at, changed_by


def queues(engine: Engine) -> Queues:
    with engine.connect() as conn:
        counted: dict[str, int] = dict(
            conn.execute(select(TASKS.c.state, func.count()).group_by(TASKS.c.state)).all()
        )
        to_process = conn.execute(select(func.count()).where(PROCESSABLE)).scalar_one()
        to_dispatch = conn.execute(select(func.count()).where(DISPATCHABLE)).scalar_one()
        suspended = [
            {"name": r.name, "changed_at": as_utc(r.changed_at), "changed_by": r.changed_by}
            for r in conn.execute(
                select(QUEUE_CONTROLS)
                .where(QUEUE_CONTROLS.c.suspended.is_(True))
                .order_by(QUEUE_CONTROLS.c.name)
            )
        ]
    by_state = {state: int(counted.pop(state, 0)) for state in TASK_STATES}
    by_state.update((str(k), int(v)) for k, v in counted.items())  # states added later
    return Queues(by_state, int(to_process), int(to_dispatch), suspended)


@dataclass(frozen=True)
class Disk:
    total: int
    used: int
    free: int
    used_percent: float
    high_water: int
    low_water: int

    @property
    def state(self) -> str:
        """ok; above low (the cleaner would stop here); above high (it cleans early now)."""
        if self.used_percent >= self.high_water:
            return "high"
        if self.used_percent >= self.low_water:
            return "above-low"
        return "ok"


def disk(home: Path, settings: ConfigSettings) -> Disk:
    usage = shutil.disk_usage(home)
    percent = used_percent(usage.used, usage.total)
    return Disk(
        usage.total,
        usage.used,
        usage.free,
        round(percent, 1),
        settings.disk_high_water,
        settings.disk_low_water,
    )


@dataclass(frozen=True)
class ErrorEvent:
    id: int
    at: datetime
    kind: str
    message: str
    task_id: str | None
    series_id: int | None
    study_id: int | None


def recent_errors(engine: Engine, limit: int = 10, now: datetime | None = None) -> list[ErrorEvent]:
    """Newest events of severity error in the last day: walks the index on `at` backwards."""
    since = (now or datetime.now(UTC)) - ERROR_WINDOW
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                EVENTS.c.id,
                EVENTS.c.at,
                EVENTS.c.kind,
                EVENTS.c.message,
                EVENTS.c.task_id,
                EVENTS.c.series_id,
                EVENTS.c.study_id,
            )
            .where(and_(EVENTS.c.at >= since, EVENTS.c.severity == "error"))
            .order_by(EVENTS.c.at.desc(), EVENTS.c.id.desc())
            .limit(limit)
        ).all()
    return [
        ErrorEvent(r.id, as_utc(r.at), r.kind, r.message, r.task_id, r.series_id, r.study_id)
        for r in rows
    ]
