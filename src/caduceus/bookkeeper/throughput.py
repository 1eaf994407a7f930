"""Instances received and dispatched per time bucket, for the Overview's charts.

Neither instances.received_at nor deliveries.delivered_at has an index (each would cost the
receiver or the dispatcher a write per instance), so both counts reach their rows through
indexed ranges instead:
- received: series whose last arrival is in the window (index on series.last_received_at),
  then their instances (index on instances.series_id). A series that received an instance in
  the window has its last arrival in the window too.
- dispatched: tasks with a dispatch outcome in the window (events by time), then their
  deliveries (primary key starting with task_id). Every delivery is recorded in the same
  transaction as a dispatch.done, dispatch.retry or dispatch.error event.
Buckets are counted in SQL, so a busy window costs one grouped row per bucket.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    DateTime,
    Engine,
    Integer,
    and_,
    cast,
    extract,
    func,
    literal,
    literal_column,
    select,
)

from caduceus.core.db.models import DELIVERIES, EVENTS, INSTANCES, SERIES

BUCKET = timedelta(minutes=10)
DISPATCH_OUTCOMES = ("dispatch.done", "dispatch.retry", "dispatch.error")
# Compared through an expression so that SQLite, which keeps no statistics, takes the index
# on `at` (the recent window) rather than the one on kind (every such event ever written).
_KIND = EVENTS.c.kind.concat(literal_column("''"))


@dataclass(frozen=True)
class Window:
    """The buckets of a time window: [since, until), `until` on a bucket boundary."""

    since: datetime
    until: datetime
    bucket: timedelta

    @classmethod
    def last(cls, hours: int, now: datetime | None = None, bucket: timedelta = BUCKET) -> Window:
        now = now or datetime.now(UTC)
        step = bucket.total_seconds()
        # The current bucket is the last one: the window ends at its end.
        until = datetime.fromtimestamp((now.timestamp() // step + 1) * step, UTC)
        return cls(until - timedelta(hours=hours), until, bucket)

    @property
    def count(self) -> int:
        return int((self.until - self.since) / self.bucket)

    def starts(self) -> list[datetime]:
        return [self.since + n * self.bucket for n in range(self.count)]


@dataclass(frozen=True)
class Throughput:
    window: Window
    received: list[int]
    dispatched: list[int]


def _bucket_of(conn: Connection, column: Any, window: Window) -> Any:
    since = literal(window.since, DateTime(timezone=True))
    step = window.bucket.total_seconds()
    if conn.dialect.name == "sqlite":
        seconds = (func.julianday(column) - func.julianday(since)) * 86400.0
        # Rounded a little up first: julianday's floating point puts an instant on a
        # bucket's boundary a hair before it.
        return cast((seconds + 0.0005) / step, Integer)
    return cast(func.floor(extract("epoch", column - since) / step), Integer)


def _spread(rows: Any, window: Window) -> list[int]:
    counts = [0] * window.count
    for bucket, n in rows:
        if bucket is not None and 0 <= int(bucket) < window.count:
            counts[int(bucket)] += int(n)
    return counts


def received(conn: Connection, window: Window) -> list[int]:
    bucket = _bucket_of(conn, INSTANCES.c.received_at, window)
    query = (
        select(bucket, func.count())
        .select_from(SERIES.join(INSTANCES, INSTANCES.c.series_id == SERIES.c.id))
        .where(
            and_(
                SERIES.c.last_received_at >= window.since,
                INSTANCES.c.received_at >= window.since,
                INSTANCES.c.received_at < window.until,
            )
        )
        .group_by(bucket)
    )
    return _spread(conn.execute(query), window)


def dispatched(conn: Connection, window: Window) -> list[int]:
    tasks = (
        select(EVENTS.c.task_id)
        # Neither DISTINCT nor "task_id IS NOT NULL" (IN needs neither): SQLite would scan the
        # index on task_id for them.
        .where(and_(EVENTS.c.at >= window.since, _KIND.in_(DISPATCH_OUTCOMES)))
    )
    bucket = _bucket_of(conn, DELIVERIES.c.delivered_at, window)
    query = (
        select(bucket, func.count())
        .where(
            and_(
                DELIVERIES.c.task_id.in_(tasks.scalar_subquery()),
                DELIVERIES.c.delivered_at >= window.since,
                DELIVERIES.c.delivered_at < window.until,
            )
        )
        .group_by(bucket)
    )
    return _spread(conn.execute(query), window)


def throughput(engine: Engine, window: Window) -> Throughput:
    with engine.connect() as conn:
        return Throughput(window, received(conn, window), dispatched(conn, window))
