"""Whether this process has reached the database without a break, and for how long.

A lease holder on another host is taken for dead when its heartbeat has been silent for a
while. While the database is away nobody can beat, yet every module and send goes on: when it
returns, every holder elsewhere looks silent. So a process judges holders elsewhere only once
it has itself reached the database without a break for as long as that silence; by then every
live holder has had the time to beat again. The heartbeat thread and every claim report here.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

# Two heartbeats (heartbeat.INTERVAL is 5 s): a longer pause between two successful contacts
# may hide an outage this process did not see (it was busy, stopped, or waited for a lock).
MAX_GAP = 10.0


class Contact:
    """Successful and failed contacts with the database, on a monotonic clock."""

    def __init__(
        self, max_gap: float = MAX_GAP, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_gap = max_gap
        self.clock = clock
        self._lock = threading.Lock()
        self._since: float | None = None
        self._last: float | None = None

    def reached(self) -> None:
        """A statement just succeeded."""
        with self._lock:
            now = self.clock()
            if self._since is None or self._last is None or now - self._last > self.max_gap:
                self._since = now
            self._last = now

    def lost(self) -> None:
        """A statement failed: the database may be away, for however long."""
        with self._lock:
            self._since = self._last = None

    def steady_for(self) -> float:
        """Seconds this process has reached the database without a break, up to its last
        contact; 0 when that contact is too long ago to vouch for the time since."""
        with self._lock:
            if self._since is None or self._last is None:
                return 0.0
            if self.clock() - self._last > self.max_gap:
                return 0.0
            return self._last - self._since


# This process's contact: its heartbeat thread and its claims share it.
DATABASE = Contact()
