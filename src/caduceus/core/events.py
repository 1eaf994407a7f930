"""Writing events: the history of everything that happened, in the caller's transaction."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, insert

from caduceus.core.db.models import EVENTS


def record_event(
    conn: Connection,
    kind: str,
    message: str = "",
    *,
    severity: str = "info",
    details: dict[str, Any] | None = None,
    **refs: int | str | None,
) -> None:
    conn.execute(
        insert(EVENTS).values(
            at=datetime.now(UTC),
            kind=kind,
            severity=severity,
            message=message,
            details=details,
            **refs,
        )
    )
