"""One association's refused C-STOREs: one event and a log line or two per kind, not per instance.

A sender that meets a full disk, or sends a whole study of a SOP class it did not propose, may be
refused thousands of times in one association. Each refusal is counted in one `instance.refused`
event per association and status, which keeps the count, the first few SOP Instance UIDs and
the first few distinct reasons. The event is written at the first refusal (so it exists before
the sender hears the answer), brought up to date at most once a second while refusals go on,
and finally when the association ends. Log lines are bounded per process as well.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine

from caduceus.receiver import records

log = logging.getLogger("caduceus.receiver")

MAX_UIDS = 10
MAX_REASONS = 5
MAX_UID_CHARS = 80
MAX_TEXT_CHARS = 300
UPDATE_INTERVAL = 1.0  # seconds between writes of a growing event
LOG_LINES_PER_MINUTE = 30  # refusal log lines per receiver process


def printable(text: str, limit: int) -> str:
    """Peer-supplied text made safe for a log line or a page: escaped and cut to size."""
    escaped = text.encode("unicode_escape").decode("ascii")
    return escaped if len(escaped) <= limit else escaped[: limit - 3] + "..."


class LogBudget:
    """At most `lines` log lines per `period` seconds; what is held back is told in the next."""

    def __init__(self, lines: int = LOG_LINES_PER_MINUTE, period: float = 60.0):
        self.lines = lines
        self.period = period
        self.lock = threading.Lock()
        self.window_start = time.monotonic()
        self.used = 0
        self.held_back = 0

    def warning(self, message: str, *args: object) -> None:
        with self.lock:
            now = time.monotonic()
            if now - self.window_start >= self.period:
                self.window_start, self.used = now, 0
            if self.used >= self.lines:
                self.held_back += 1
                return
            self.used += 1
            held_back, self.held_back = self.held_back, 0
        if held_back:
            message += " (%d similar lines were held back)"
            args = (*args, held_back)
        log.warning(message, *args)


BUDGET = LogBudget()


@dataclass(slots=True)
class _Tally:
    code: int
    first_reason: str
    sop_class: str
    transfer_syntax: str
    count: int = 0
    uids: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    quarantined: list[str] = field(default_factory=list)
    event_id: int | None = None
    written_count: int = 0
    tried_at: float | None = None  # when the last write, done or failed, ended


class Refusals:
    """Counts one association's refusals by status and keeps their event up to date."""

    def __init__(self, engine: Engine, association_id: int, calling_aet: str, peer: str):
        self.engine = engine
        self.association_id = association_id
        self.calling = printable(calling_aet, 32)
        self.peer = peer
        self.tallies: dict[int, _Tally] = {}

    def add(
        self,
        code: int,
        reason: str,
        sop_class: str,
        sop_instance: str,
        transfer_syntax: str = "",
        quarantined_as: str | None = None,
    ) -> None:
        reason = printable(reason, MAX_TEXT_CHARS)
        tally = self.tallies.get(code)
        if tally is None:
            tally = self.tallies[code] = _Tally(
                code, reason, printable(sop_class, MAX_UID_CHARS), transfer_syntax
            )
            BUDGET.warning(
                "association %s from %s@%s: refused an instance with status 0x%04X: %s "
                "(further refusals with this status are counted in one event)",
                self.association_id,
                self.calling,
                self.peer,
                code,
                reason,
            )
        tally.count += 1
        if len(tally.uids) < MAX_UIDS:
            tally.uids.append(printable(sop_instance, MAX_UID_CHARS))
        if reason not in tally.reasons and len(tally.reasons) < MAX_REASONS:
            tally.reasons.append(reason)
        if quarantined_as is not None and len(tally.quarantined) < MAX_UIDS:
            tally.quarantined.append(quarantined_as)
        # Also while the first write has not succeeded: under a database outage each attempt
        # waits the busy timeout, and a refused instance must not wait it every time.
        if tally.tried_at is None or time.monotonic() - tally.tried_at >= UPDATE_INTERVAL:
            self._write(tally)

    def flush(self) -> None:
        """The association ended: every event gets its final count, and the log a summary."""
        for tally in self.tallies.values():
            if tally.written_count != tally.count or tally.event_id is None:
                self._write(tally)
            if tally.count > 1:
                BUDGET.warning(
                    "association %s from %s@%s: %d instances refused with status 0x%04X (event %s)",
                    self.association_id,
                    self.calling,
                    self.peer,
                    tally.count,
                    tally.code,
                    tally.event_id,
                )

    def _details(self, tally: _Tally) -> dict[str, Any]:
        return {
            "status": f"0x{tally.code:04X}",
            "count": tally.count,
            "sop_instance_uids": tally.uids,
            "reasons": tally.reasons,
            "sop_class_uid": tally.sop_class,
            "transfer_syntax": tally.transfer_syntax,
            "quarantined_as": tally.quarantined,
            "calling_aet": self.calling,
            "peer": self.peer,
        }

    def _write(self, tally: _Tally) -> None:
        try:
            if tally.event_id is None:
                tally.event_id = records.record_refusals(
                    self.engine, self.association_id, tally.first_reason, self._details(tally)
                )
            else:
                records.update_refusals(self.engine, tally.event_id, self._details(tally))
            tally.written_count = tally.count
        except Exception as exc:
            # The database may be why the instance was refused; the count is retried later.
            BUDGET.warning(
                "could not record refusals of association %s: %s",
                self.association_id,
                type(exc).__name__,
            )
        finally:
            tally.tried_at = time.monotonic()
