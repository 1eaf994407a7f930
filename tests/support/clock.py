"""Times for the services' passes, which take `now`: a test moves the clock instead of
waiting for it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


def later(seconds: float) -> datetime:
    """The time `seconds` from now, as a pass run then would see it."""
    return datetime.now(UTC) + timedelta(seconds=seconds)
