"""Service heartbeats: each service process says every few seconds that it still runs.

A process registers a row in `service_heartbeats` (service, host, pid) when it starts, moves
its beat_at forward from a daemon thread, and sets its state to stopped when it ends cleanly.
`caduceus run` marks a child that died as restarting until it starts it again. A row whose
beat is older than SILENT_AFTER is shown as silent: the process hangs, or died unseen.

A beat is one UPDATE by primary key in its own short transaction: SQLite's write lock is held
for that statement only, never while the service works. Beats are written and judged on the
database's clock: hosts' clocks may differ. Each beat tells core/db_contact whether the
database was reached.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import ColumnElement, Connection, Engine, and_, delete, insert, or_, select, update

from caduceus.core.clock import as_utc, database_now
from caduceus.core.db.models import SERVICE_HEARTBEATS
from caduceus.core.db_contact import DATABASE, Contact

log = logging.getLogger("caduceus.heartbeat")

INTERVAL = 5.0
SILENT_AFTER = timedelta(seconds=3 * INTERVAL)
# Rows of processes that are long gone (a host that was replaced, a pod that moved).
FORGET_AFTER = timedelta(days=7)
# Set by `caduceus run` for the child it starts: how often that service was restarted.
RESTARTS_ENV = "CADUCEUS_SERVICE_RESTARTS"

_HB = SERVICE_HEARTBEATS


def _now() -> datetime:
    return datetime.now(UTC)


class Heartbeat:
    """The heartbeat of this process, for one service."""

    def __init__(
        self,
        engine: Engine,
        service: str,
        *,
        detail: str = "",
        restarts: int | None = None,
        interval: float = INTERVAL,
        contact: Contact = DATABASE,
    ):
        self.engine = engine
        self.service = service
        self.detail = detail
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.restarts = restarts if restarts is not None else _restarts_from_env()
        self.interval = interval
        self.contact = contact
        self.started_at = _now()
        self.row_id: int | None = None
        self._last = 0.0
        self._failing = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- writing ----------------------------------------------------------------------------

    def begin(self) -> None:
        """Register this process; rows its dead predecessors on this host left go."""
        with self.engine.begin() as conn:
            dialect = conn.dialect.name
            conn.execute(
                delete(_HB).where(
                    or_(
                        _HB.c.beat_at < database_now(dialect, FORGET_AFTER),
                        and_(
                            _HB.c.service == self.service,
                            _HB.c.host == self.host,
                            or_(
                                _HB.c.pid == self.pid,
                                _HB.c.state != "running",
                                _HB.c.beat_at < database_now(dialect, SILENT_AFTER),
                            ),
                        ),
                    )
                )
            )
            self.row_id = self._insert(conn, database_now(dialect))
        self._last = _now().timestamp()

    def _insert(self, conn: Connection, now: ColumnElement[datetime]) -> int:
        return int(
            conn.execute(
                insert(_HB)
                .values(
                    service=self.service,
                    host=self.host,
                    pid=self.pid,
                    started_at=self.started_at,
                    beat_at=now,
                    state="running",
                    restarts=self.restarts,
                    detail=self.detail,
                )
                .returning(_HB.c.id)
            ).scalar_one()
        )

    def beat(self) -> None:
        """Move the beat forward; a database that does not answer is logged, never raised."""
        started = _now()
        try:
            if self.row_id is None:
                self.begin()
            else:
                with self.engine.begin() as conn:
                    now = database_now(conn.dialect.name)
                    found = conn.execute(
                        update(_HB)
                        .where(_HB.c.id == self.row_id)
                        .values(beat_at=now, state="running")
                    ).rowcount
                    if not found:  # pruned as silent while this process hung
                        self.row_id = self._insert(conn, now)
            self.contact.reached()
            self._last = started.timestamp()
            if self._failing:
                log.info("heartbeat recorded again")
            self._failing = False
        except Exception as exc:
            self.contact.lost()
            if not self._failing:  # once per outage, not every few seconds
                log.warning("cannot record the heartbeat: %s: %s", type(exc).__name__, exc)
            self._failing = True

    def beat_if_due(self) -> None:
        """For a loop that must not run a thread (it forks): beat when the interval passed."""
        if _now().timestamp() - self._last >= self.interval:
            self.beat()

    def end(self, state: str = "stopped", detail: str | None = None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.interval + 5)
        if self.row_id is None:
            return
        values: dict[str, object] = {
            "state": state,
            "beat_at": database_now(self.engine.dialect.name),
        }
        if detail is not None:
            values["detail"] = detail
        try:
            with self.engine.begin() as conn:
                conn.execute(update(_HB).where(_HB.c.id == self.row_id).values(**values))
        except Exception as exc:
            log.warning("cannot record that %s %s: %s", self.service, state, exc)

    # -- the thread --------------------------------------------------------------------------

    def start_thread(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name=f"heartbeat-{self.service}", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.beat()


def _restarts_from_env() -> int:
    try:
        return max(0, int(os.environ.get(RESTARTS_ENV, "0")))
    except ValueError:
        return 0


@contextmanager
def beating(engine: Engine, service: str, detail: str = "") -> Iterator[Heartbeat]:
    """Beat from a daemon thread while the block runs; stopped (or failed) when it ends."""
    heart = Heartbeat(engine, service, detail=detail)
    heart.beat()
    heart.start_thread()
    try:
        yield heart
    except BaseException as exc:
        reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else type(exc).__name__
        heart.end("stopped", f"ended by an error: {reason}")
        raise
    heart.end("stopped")


def record_restarting(
    engine: Engine, service: str, pid: int, restarts: int, detail: str, started_at: datetime
) -> None:
    """`caduceus run` saw a child die and waits before starting it again."""
    host = socket.gethostname()
    mine = and_(_HB.c.service == service, _HB.c.host == host, _HB.c.pid == pid)
    with engine.begin() as conn:
        found = conn.execute(
            update(_HB).where(mine).values(state="restarting", restarts=restarts, detail=detail)
        ).rowcount
        if not found:  # it died before it could register
            conn.execute(
                insert(_HB).values(
                    service=service,
                    host=host,
                    pid=pid,
                    started_at=started_at,
                    beat_at=started_at,
                    state="restarting",
                    restarts=restarts,
                    detail=detail,
                )
            )


# -- reading --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServiceState:
    service: str
    host: str
    pid: int
    state: str  # running, silent, stopped, restarting
    started_at: datetime
    beat_at: datetime
    restarts: int
    detail: str
    seconds_since_beat: float


def service_states(engine: Engine, now: datetime | None = None) -> list[ServiceState]:
    """Every process that beat, by service and host; a running one that fell quiet is silent.
    Ages are measured on the database's clock, the one beats are written with."""
    with engine.connect() as conn:
        if now is None:
            now = as_utc(conn.execute(select(database_now(conn.dialect.name))).scalar_one())
        rows = conn.execute(
            select(_HB).order_by(_HB.c.service, _HB.c.host, _HB.c.started_at.desc())
        ).all()
    found = []
    for row in rows:
        beat_at = as_utc(row.beat_at)
        age = max(0.0, (now - beat_at).total_seconds())
        state = row.state
        if state == "running" and now - beat_at > SILENT_AFTER:
            state = "silent"
        found.append(
            ServiceState(
                service=row.service,
                host=row.host,
                pid=row.pid,
                state=state,
                started_at=as_utc(row.started_at),
                beat_at=beat_at,
                restarts=row.restarts,
                detail=row.detail,
                seconds_since_beat=round(age, 1),
            )
        )
    return found
