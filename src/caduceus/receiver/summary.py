"""Connections that never became an association, counted instead of recorded one by one.

A port scanner, a fuzzer or a flood opens thousands of connections; one association row each
would grow the history without bound and bury the real ones. Instead each worker counts them
per peer address and reason, and every interval writes one `connection.dropped` event (and one
log line) per address with the counts. Rejected association requests are summarised the same
way: the first of a kind from an address in an interval keeps its association row and event,
the repeats are counted into one `association.rejected` summary event.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import Engine

from caduceus.core.events import record_event

log = logging.getLogger("caduceus.receiver")

# Distinct addresses remembered per interval; beyond that they are counted together, so a
# flood from many addresses cannot grow this table without bound either.
MAX_PEERS = 10_000
OTHERS = "(other addresses)"
# Rejections of different kinds (AE titles, reasons) recorded in full per address and interval.
MAX_KINDS_RECORDED = 10


@dataclass(slots=True)
class _Rejections:
    first_id: int | None
    calling: str
    called: str
    reason: str
    repeats: int = 0


@dataclass(slots=True)
class _Interval:
    since: datetime = field(default_factory=lambda: datetime.now(UTC))
    dropped: dict[str, Counter[str]] = field(default_factory=dict)
    rejected: dict[tuple[str, str], _Rejections] = field(default_factory=dict)
    recorded: Counter[str] = field(default_factory=Counter)


class ConnectionSummary:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.current = _Interval()

    def _peer(self, table: dict[str, Counter[str]], host: str) -> str:
        return host if host in table or len(table) < MAX_PEERS else OTHERS

    def dropped(self, host: str, why: str) -> bool:
        """A connection closed before it became an association (timeout, garbage, limit...).

        True if it is the first for this reason from this address in the interval (a caller
        that logs a line of its own logs that one only)."""
        with self.lock:
            table = self.current.dropped
            reasons = table.setdefault(self._peer(table, host), Counter())
            reasons[why] += 1
            return reasons[why] == 1

    def first_rejection(self, host: str, kind: str) -> bool:
        """True if this is the first rejection of this kind from host in the interval.

        Each address gets at most MAX_KINDS_RECORDED rows an interval, so a peer varying its
        AE titles is still summarised.
        """
        with self.lock:
            interval = self.current
            if host not in interval.recorded and len(interval.recorded) >= MAX_PEERS:
                host = OTHERS
            entry = interval.rejected.get((host, kind))
            if entry is None and interval.recorded[host] >= MAX_KINDS_RECORDED:
                kind = "(other kinds)"
                entry = interval.rejected.setdefault(
                    (host, kind), _Rejections(None, "", "", "rejections of other kinds")
                )
            if entry is not None:
                entry.repeats += 1
                return False
            interval.recorded[host] += 1
            interval.rejected[(host, kind)] = _Rejections(None, "", "", kind)
            return True

    def rejection_recorded(
        self, host: str, kind: str, association_id: int, calling: str, called: str, reason: str
    ) -> None:
        with self.lock:
            entry = self.current.rejected.get((host, kind))
            if entry is not None:
                entry.first_id, entry.calling, entry.called = association_id, calling, called
                entry.reason = reason

    def flush(self, engine: Engine) -> None:
        """Write the interval's summary events and start a new interval."""
        with self.lock:
            done, self.current = self.current, _Interval()
        until = datetime.now(UTC)
        repeats = {key: e for key, e in done.rejected.items() if e.repeats}
        if not done.dropped and not repeats:
            return
        span = {"since": done.since.isoformat(), "until": until.isoformat()}
        with engine.begin() as conn:
            for host, reasons in done.dropped.items():
                count = sum(reasons.values())
                text = ", ".join(f"{n} {why}" for why, n in reasons.most_common())
                log.warning(
                    "%d connection(s) from %s closed before associating: %s", count, host, text
                )
                record_event(
                    conn,
                    "connection.dropped",
                    f"{count} connection(s) from {host} closed before associating: {text}",
                    severity="warning",
                    details={"peer": host, "count": count, "reasons": dict(reasons), **span},
                )
            for (host, _), entry in repeats.items():
                log.warning(
                    "%d more association request(s) from %s rejected: %s",
                    entry.repeats,
                    host,
                    entry.reason,
                )
                record_event(
                    conn,
                    "association.rejected",
                    f"{entry.repeats} more like this from {host}: {entry.reason}",
                    severity="warning",
                    association_id=entry.first_id,
                    details={
                        "peer": host,
                        "count": entry.repeats,
                        "calling_aet": entry.calling,
                        "called_aet": entry.called,
                        **span,
                    },
                )
