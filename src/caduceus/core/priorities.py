"""Task priorities and the offpeak window."""

from __future__ import annotations

from datetime import datetime, time, timedelta

URGENT, NORMAL, OFFPEAK = 0, 1, 2
PRIORITY = {"urgent": URGENT, "normal": NORMAL, "offpeak": OFFPEAK}


def in_window(moment: time, start: time, end: time) -> bool:
    """Whether a local time lies in [start, end), a window that may wrap past midnight."""
    if start <= end:
        return start <= moment < end
    return moment >= start or moment < end


def next_offpeak_start(now: datetime, start: time, end: time) -> datetime | None:
    """None while inside the window; otherwise the next moment the window opens (local time)."""
    local = now.astimezone()
    if in_window(local.time().replace(tzinfo=None), start, end):
        return None
    candidate = local.replace(hour=start.hour, minute=start.minute, second=0, microsecond=0)
    if candidate <= local:
        candidate += timedelta(days=1)
    return candidate
