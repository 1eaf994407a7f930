"""Retention for the history itself, separate from the images' retention.

After `history_retention_days`, the cleaner deletes what the history no longer needs to keep:
events, finished tasks whose files are long gone, and received series, studies and
associations whose files were removed. Deletion goes in bounded batches, each in a transaction
of its own, so a pass never holds the database for long, and is itself recorded as an event
with the counts. What work still going on needs (its task's events, its instances, an event a
notification still waits to tell) stays.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Column, Engine, Table, and_, delete, exists, select

from caduceus.cleaner.tuning import HISTORY_BATCH
from caduceus.core.config.models import Config
from caduceus.core.db.models import (
    ASSOCIATIONS,
    EVENTS,
    INSTANCES,
    NOTIFICATIONS,
    SERIES,
    STUDIES,
    TASK_INSTANCES,
    TASKS,
    WEB_SESSIONS,
)
from caduceus.core.events import record_event
from caduceus.core.states import FINISHED_TASKS, SeriesState


@dataclass
class Pruned:
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def _prune(engine: Engine, table: Table, key: Column[Any], condition: Any, limit: int) -> int:
    """Delete up to `limit` rows meeting the condition, in a transaction of their own; the
    condition is checked again by the DELETE, so a row that changed meanwhile stays."""
    with engine.begin() as conn:
        ids = conn.execute(select(key).where(condition).limit(limit)).scalars().all()
        if not ids:
            return 0
        return int(conn.execute(delete(table).where(and_(key.in_(ids), condition))).rowcount)


FINISHED = FINISHED_TASKS


def prune_history(engine: Engine, config: Config, now: datetime) -> Pruned:
    """One bounded pass of the history's retention; returns what it deleted, by table.

    The order matters: events and tasks first, so that series no task refers to any more can
    go, then their instances, and only then the studies and associations left empty. Each
    table gets its own batch and transaction, so a large backlog takes several passes rather
    than one long lock; what is left is taken by the next pass. Expired web sessions go too.
    """
    cutoff = now - timedelta(days=config.settings.history_retention_days)
    pruned = Pruned()
    unfinished_task = exists().where(
        and_(TASKS.c.id == EVENTS.c.task_id, TASKS.c.state.not_in(FINISHED))
    )
    awaited = exists().where(
        and_(NOTIFICATIONS.c.event_id == EVENTS.c.id, NOTIFICATIONS.c.state == "pending")
    )
    # Events of work still going on, and those a notification still waits to tell, stay.
    pruned.counts["events"] = _prune(
        engine,
        EVENTS,
        EVENTS.c.id,
        and_(EVENTS.c.at < cutoff, ~unfinished_task, ~awaited),
        HISTORY_BATCH,
    )
    pruned.counts["notifications"] = _prune(
        engine,
        NOTIFICATIONS,
        NOTIFICATIONS.c.id,
        and_(NOTIFICATIONS.c.created_at < cutoff, NOTIFICATIONS.c.state != "pending"),
        HISTORY_BATCH,
    )
    # Finished tasks whose files the cleaner removed: their rows, targets and deliveries.
    pruned.counts["tasks"] = _prune(
        engine,
        TASKS,
        TASKS.c.id,
        and_(
            TASKS.c.state.in_(FINISHED),
            TASKS.c.cleaned_at.is_not(None),
            TASKS.c.updated_at < cutoff,
        ),
        HISTORY_BATCH,
    )
    # Received series whose files are gone and that no task refers to any more; their
    # instances go with them. Few per pass: a series may have thousands of instances.
    in_use = (
        exists()
        .where(INSTANCES.c.series_id == SERIES.c.id)
        .where(TASK_INSTANCES.c.instance_id == INSTANCES.c.id)
    )
    old_series = and_(
        SERIES.c.state != SeriesState.RECEIVING,
        SERIES.c.last_received_at < cutoff,
        SERIES.c.files_removed_through >= SERIES.c.last_received_at,
        ~in_use,
    )
    with engine.begin() as conn:
        series = list(conn.execute(select(SERIES.c.id).where(old_series).limit(50)).scalars())
        if series:
            pruned.counts["instances"] = int(
                conn.execute(
                    delete(INSTANCES).where(
                        and_(
                            INSTANCES.c.series_id.in_(series),
                            INSTANCES.c.received_at < cutoff,
                        )
                    )
                ).rowcount
            )
            pruned.counts["series"] = int(
                conn.execute(
                    delete(SERIES).where(
                        and_(
                            SERIES.c.id.in_(series),
                            old_series,
                            ~exists().where(INSTANCES.c.series_id == SERIES.c.id),
                        )
                    )
                ).rowcount
            )
    pruned.counts["studies"] = _prune(
        engine,
        STUDIES,
        STUDIES.c.id,
        and_(
            STUDIES.c.last_received_at < cutoff,
            ~exists().where(SERIES.c.study_id == STUDIES.c.id),
        ),
        HISTORY_BATCH,
    )
    pruned.counts["associations"] = _prune(
        engine,
        ASSOCIATIONS,
        ASSOCIATIONS.c.id,
        and_(
            ASSOCIATIONS.c.started_at < cutoff,
            ~exists().where(INSTANCES.c.association_id == ASSOCIATIONS.c.id),
        ),
        HISTORY_BATCH,
    )
    with engine.begin() as conn:
        conn.execute(delete(WEB_SESSIONS).where(WEB_SESSIONS.c.expires_at < now))
        pruned.counts = {k: v for k, v in pruned.counts.items() if v}
        if pruned.counts:
            record_event(
                conn,
                "history.pruned",
                f"older than {config.settings.history_retention_days} days: "
                + ", ".join(f"{n} {k}" for k, n in pruned.counts.items()),
                details=pruned.counts,
            )
    return pruned
