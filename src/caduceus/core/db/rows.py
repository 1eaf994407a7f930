"""Rows that more than one service writes."""

from __future__ import annotations

from datetime import datetime
from typing import Any


def pending_targets(task_id: str, targets: list[str], now: datetime) -> list[dict[str, Any]]:
    """task_targets rows for targets that are still to be sent to."""
    return [
        {"task_id": task_id, "target": t, "state": "pending", "attempts": 0, "updated_at": now}
        for t in targets
    ]
