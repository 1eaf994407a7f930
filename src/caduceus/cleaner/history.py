"""Retention for the history itself, separate from the images' retention.

After `history_retention_days`, the cleaner deletes what the history no longer needs to keep:
events, finished tasks whose files are long gone, and received series, studies and
associations whose files were removed. Deletion goes in bounded batches, so a pass never
holds the database for long, and is itself recorded as an event with the counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Column, Connection, Engine, Table, and_, delete, exists, select

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

BATCH = 5000


@dataclass
class Pruned:
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def _delete_ids(conn: Connection, table: Table, column: Column[Any], ids: list[Any]) -> int:
    if not ids:
        return 0
    return int(conn.execute(delete(table).where(column.in_(ids))).rowcount)


def prune_history(engine: Engine, config: Config, now: datetime) -> Pruned:
    cutoff = now - timedelta(days=config.settings.history_retention_days)
    pruned = Pruned()
    with engine.begin() as conn:
        ids = (
            conn.execute(
                select(EVENTS.c.id).where(EVENTS.c.at < cutoff).order_by(EVENTS.c.id).limit(BATCH)
            )
            .scalars()
            .all()
        )
        pruned.counts["events"] = _delete_ids(conn, EVENTS, EVENTS.c.id, list(ids))
        ids = (
            conn.execute(
                select(NOTIFICATIONS.c.id)
                .where(
                    and_(NOTIFICATIONS.c.created_at < cutoff, NOTIFICATIONS.c.state != "pending")
                )
                .limit(BATCH)
            )
            .scalars()
            .all()
        )
        pruned.counts["notifications"] = _delete_ids(
            conn, NOTIFICATIONS, NOTIFICATIONS.c.id, list(ids)
        )
        # Finished tasks whose files the cleaner removed: their rows, targets and deliveries.
        ids = (
            conn.execute(
                select(TASKS.c.id)
                .where(
                    and_(
                        TASKS.c.state.in_(("done", "discarded", "error")),
                        TASKS.c.cleaned_at.is_not(None),
                        TASKS.c.updated_at < cutoff,
                    )
                )
                .limit(BATCH)
            )
            .scalars()
            .all()
        )
        pruned.counts["tasks"] = _delete_ids(conn, TASKS, TASKS.c.id, list(ids))
        # Received series whose files are gone and that nothing waits for any more.
        ids = (
            conn.execute(
                select(SERIES.c.id)
                .where(
                    and_(
                        SERIES.c.state != "receiving",
                        SERIES.c.last_received_at < cutoff,
                        SERIES.c.files_removed_through >= SERIES.c.last_received_at,
                        # A task still at work keeps its instances' history.
                        ~exists()
                        .where(INSTANCES.c.series_id == SERIES.c.id)
                        .where(TASK_INSTANCES.c.instance_id == INSTANCES.c.id)
                        .where(TASKS.c.id == TASK_INSTANCES.c.task_id),
                    )
                )
                .limit(BATCH // 10)
            )
            .scalars()
            .all()
        )
        series = list(ids)
        if series:
            pruned.counts["instances"] = int(
                conn.execute(delete(INSTANCES).where(INSTANCES.c.series_id.in_(series))).rowcount
            )
        pruned.counts["series"] = _delete_ids(conn, SERIES, SERIES.c.id, series)
        ids = (
            conn.execute(
                select(STUDIES.c.id)
                .where(
                    and_(
                        STUDIES.c.last_received_at < cutoff,
                        ~exists().where(SERIES.c.study_id == STUDIES.c.id),
                    )
                )
                .limit(BATCH)
            )
            .scalars()
            .all()
        )
        pruned.counts["studies"] = _delete_ids(conn, STUDIES, STUDIES.c.id, list(ids))
        ids = (
            conn.execute(
                select(ASSOCIATIONS.c.id)
                .where(
                    and_(
                        ASSOCIATIONS.c.started_at < cutoff,
                        ~exists().where(INSTANCES.c.association_id == ASSOCIATIONS.c.id),
                    )
                )
                .limit(BATCH)
            )
            .scalars()
            .all()
        )
        pruned.counts["associations"] = _delete_ids(
            conn, ASSOCIATIONS, ASSOCIATIONS.c.id, list(ids)
        )
        conn.execute(delete(WEB_SESSIONS).where(WEB_SESSIONS.c.expires_at < now))
        pruned.counts = {k: v for k, v in pruned.counts.items() if v}
        if pruned.counts:
            record_event(
                conn,
                "history.pruned",
                "older than "
                f"{config.settings.history_retention_days} days: "
                + ", ".join(f"{n} {k}" for k, n in pruned.counts.items()),
                details=pruned.counts,
            )
    return pruned
