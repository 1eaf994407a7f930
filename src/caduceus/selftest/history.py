"""Finished runs as the history keeps them: the selftest.passed/failed events carry the whole
run, so its result outlives the process that ran it (a restart, another web process)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, select

from caduceus.core.db.models import EVENTS

OUTCOMES = ("selftest.passed", "selftest.failed")
LOOK_BACK = 50


def recorded(engine: Engine, run_id: str | None = None) -> dict[str, Any] | None:
    """The newest finished run (or the one with this id among the recent ones)."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(EVENTS.c.details)
            .where(EVENTS.c.kind.in_(OUTCOMES))
            .order_by(EVENTS.c.id.desc())
            .limit(1 if run_id is None else LOOK_BACK)
        ).scalars()
        for details in rows:
            if isinstance(details, dict) and (run_id is None or details.get("id") == run_id):
                return details
    return None
