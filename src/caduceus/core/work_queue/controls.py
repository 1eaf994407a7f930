"""Suspending and resuming queues: "dispatch", "dispatch:<target>" and "process"."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Engine, select

from caduceus.core.db.models import QUEUE_CONTROLS


def set_suspended(engine: Engine, name: str, value: bool, author: str) -> None:
    """Suspend or resume a queue ("dispatch", "dispatch:<target>", "process"), as an event."""
    from caduceus.core.db.upsert import insert_or_update
    from caduceus.core.events import record_event

    with engine.begin() as conn:
        conn.execute(
            insert_or_update(
                conn.dialect.name,
                QUEUE_CONTROLS,
                {
                    "name": name,
                    "suspended": value,
                    "changed_at": datetime.now(UTC),
                    "changed_by": author,
                },
                "name",
                ["suspended", "changed_at", "changed_by"],
                returning=None,
            )
        )
        record_event(conn, "queue.suspended" if value else "queue.resumed", f"{name} by {author}")


def suspended(engine: Engine) -> set[str]:
    """Names of suspended queues ("dispatch", "dispatch:<target>", "process", ...)."""
    with engine.connect() as conn:
        return set(
            conn.execute(
                select(QUEUE_CONTROLS.c.name).where(QUEUE_CONTROLS.c.suspended.is_(True))
            ).scalars()
        )
