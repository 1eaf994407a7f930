"""Rows that more than one service writes."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from caduceus.core.states import TargetState


def pending_targets(task_id: str, targets: list[str], now: datetime) -> list[dict[str, Any]]:
    """task_targets rows for targets that are still to be sent to."""
    return [
        {
            "task_id": task_id,
            "target": t,
            "state": TargetState.PENDING,
            "attempts": 0,
            "updated_at": now,
        }
        for t in targets
    ]
