"""What the services wrote to the database, read back as plain dicts for assertions."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import select

from caduceus.core.db.models import ASSOCIATIONS, EVENTS, TASKS
from tests.support.processes import Caduceus


def tasks(receiver: Caduceus) -> list[dict[str, Any]]:
    """Every task, oldest first."""
    with receiver.engine().connect() as conn:
        return [dict(r._mapping) for r in conn.execute(select(TASKS).order_by(TASKS.c.created_at))]


def events(receiver: Caduceus, kind: str) -> list[dict[str, Any]]:
    """The events of one kind (such as "task.created")."""
    with receiver.engine().connect() as conn:
        return [dict(r._mapping) for r in conn.execute(select(EVENTS).where(EVENTS.c.kind == kind))]


def associations(receiver: Caduceus) -> list[dict[str, object]]:
    """Every association the receiver recorded, in the order they began."""
    with receiver.engine().connect() as conn:
        return [
            dict(r._mapping) for r in conn.execute(select(ASSOCIATIONS).order_by(ASSOCIATIONS.c.id))
        ]


def wait_closed(receiver: Caduceus, count: int = 1) -> list[dict[str, object]]:
    """Associations are closed in the database just after the socket closes: wait for it."""
    deadline = time.monotonic() + 10
    rows = associations(receiver)
    while time.monotonic() < deadline:
        rows = associations(receiver)
        if len(rows) >= count and all(r["status"] != "open" for r in rows):
            return rows
        time.sleep(0.05)
    return rows
