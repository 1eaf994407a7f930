"""Prometheus metrics, computed at scrape time from the shared database and the data root's disk.

Every service runs as its own process, possibly on several machines, so in-process counters
would each see a part of the picture. The database sees all of it: a scrape asks it, with
aggregate queries on indexed columns; what depends on events looks at a bounded recent window.
Each group of metrics has its own query and transaction: one that fails is logged and left out
of that scrape (caduceus_metrics_query_up says which), the others are still served.

docs/metrics.md lists every metric.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    FromClause,
    and_,
    case,
    extract,
    func,
    literal_column,
    select,
    text,
)

from caduceus.core.clock import as_utc
from caduceus.core.config import store
from caduceus.core.db.models import (
    ASSOCIATIONS,
    EVENTS,
    INSTANCES,
    QUEUE_CONTROLS,
    SERIES,
    STUDIES,
    TASK_TARGETS,
    TASKS,
)
from caduceus.core.states import TargetState
from caduceus.core.storage import DataRoot, used_percent
from caduceus.core.work_queue import DISPATCHABLE, PROCESSABLE

log = logging.getLogger("caduceus.metrics")

WINDOW = timedelta(hours=24)
# A PostgreSQL query that takes longer than this is cancelled; its group is left out.
STATEMENT_TIMEOUT_MS = 10_000
STEP_BUCKETS = (1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 14400.0)
DELIVERY_BUCKETS = (10.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0)
# The event kinds written with severity "error". Their all-time totals are counted through the
# index on kind (events has no index on severity); a kind not listed here is counted while it
# appears in the recent window.
ERROR_KINDS = (
    "dispatch.error",
    "instance.refused",
    "patient.error",
    "process.error",
    "series.error",
    "study.error",
)
QUEUES: dict[str, ColumnElement[bool]] = {"process": PROCESSABLE, "dispatch": DISPATCHABLE}

# Event kinds compared through an expression: SQLite (which keeps no statistics) would
# otherwise prefer the index on kind to the one on `at` and read every event of that kind ever
# written instead of the recent window.
_KIND = EVENTS.c.kind.concat(literal_column("''"))


def _age(now: datetime, oldest: datetime | None) -> float:
    return max(0.0, (now - as_utc(oldest)).total_seconds()) if oldest is not None else 0.0


def _seconds_between(conn: Connection, start: Any, end: Any) -> Any:
    if conn.dialect.name == "sqlite":
        return (func.julianday(end) - func.julianday(start)) * 86400.0
    return extract("epoch", end - start)


_Family = TypeVar("_Family", bound=GaugeMetricFamily)


def _filled(family: _Family, rows: Iterable[Sequence[Any]]) -> _Family:
    """The family with one sample per row: the row's label values, then its value."""
    for *labels, value in rows:
        family.add_metric([str(label) for label in labels], value)
    return family


def _histogram(
    conn: Connection,
    source: FromClause,
    label: Any,
    seconds: Any,
    where: ColumnElement[bool],
    buckets: Sequence[float],
) -> list[tuple[str, list[tuple[str, float]], float]]:
    """Per label: cumulative bucket counts (with +Inf) and the sum, aggregated in SQL."""
    counts = [func.sum(case((seconds <= bound, 1), else_=0)) for bound in buckets]
    query = (
        select(label, func.count(seconds), func.coalesce(func.sum(seconds), 0.0), *counts)
        .select_from(source)
        .where(where)
        .group_by(label)
    )
    found = []
    for row in conn.execute(query):
        name, total, total_seconds, *per_bound = row
        if not total:
            continue
        cumulative = [(repr(b), float(n or 0)) for b, n in zip(buckets, per_bound, strict=True)]
        found.append((str(name or ""), [*cumulative, ("+Inf", float(total))], float(total_seconds)))
    return found


class DatabaseCollector(Collector):
    """The caduceus_* metrics of one installation: its database and its data root."""

    def __init__(
        self,
        engine: Engine,
        root: DataRoot,
        window: timedelta = WINDOW,
        now: datetime | None = None,
    ):
        # Plain reads: a writer engine's transactions would take SQLite's write lock.
        self.engine = engine.execution_options(caduceus_write=False)
        self.root = root
        self.window = window
        # A fixed time for every scrape (tests: ages without waiting); None reads the clock.
        self.now = now

    def describe(self) -> Iterable[Metric]:
        return []  # nothing fixed ahead: registering must not query the database

    def collect(self) -> Iterator[Metric]:
        now = self.now or datetime.now(UTC)
        groups: dict[str, Callable[[datetime], Iterable[Metric]]] = {
            "instances": self._instances,
            "reception": self._reception,
            "tasks": self._tasks,
            "queues": self._queues,
            "durations": self._durations,
            "dispatch": self._dispatch,
            "errors": self._errors,
            "disk": self._disk,
            "settings": self._settings,
        }
        up, took = [], []
        for name, group in groups.items():
            started = time.monotonic()
            try:
                families = list(group(now))
            except Exception:
                log.exception("metrics group %s could not be read; left out of this scrape", name)
                up.append((name, 0))
            else:
                up.append((name, 1))
                yield from families
            took.append((name, time.monotonic() - started))
        yield _filled(
            GaugeMetricFamily(
                "caduceus_metrics_query_up",
                "1 if the group's metrics could be read in this scrape, 0 if they are missing",
                labels=["group"],
            ),
            up,
        )
        yield _filled(
            GaugeMetricFamily(
                "caduceus_metrics_query_duration_seconds",
                "Time this scrape spent reading the group's metrics",
                labels=["group"],
            ),
            took,
        )

    @contextmanager
    def _reading(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text(f"SET LOCAL statement_timeout = {STATEMENT_TIMEOUT_MS}"))
            yield conn

    # -- groups ---------------------------------------------------------------------------

    def _instances(self, now: datetime) -> Iterable[Metric]:
        # One pass over instances (no index holds size_bytes). Gauges, not counters: the
        # history's retention deletes old rows, and a counter must never go down.
        with self._reading() as conn:
            count, size = conn.execute(
                select(func.count(), func.coalesce(func.sum(INSTANCES.c.size_bytes), 0))
            ).one()
        yield GaugeMetricFamily(
            "caduceus_instances_recorded",
            "DICOM instances in the history (a second copy of an instance replaces the first; "
            "the history's retention removes old ones)",
            value=count,
        )
        yield GaugeMetricFamily(
            "caduceus_instances_recorded_bytes", "Bytes of the instances in the history", value=size
        )

    def _reception(self, now: datetime) -> Iterable[Metric]:
        since = now - self.window
        with self._reading() as conn:
            associations = conn.execute(select(func.count()).select_from(ASSOCIATIONS)).scalar()
            recent = conn.execute(
                select(ASSOCIATIONS.c.status, func.count())
                .where(ASSOCIATIONS.c.started_at >= since)
                .group_by(ASSOCIATIONS.c.status)
            ).all()
            series = conn.execute(
                select(SERIES.c.state, func.count()).group_by(SERIES.c.state)
            ).all()
            studies = conn.execute(
                select(STUDIES.c.state, func.count()).group_by(STUDIES.c.state)
            ).all()
        yield GaugeMetricFamily(
            "caduceus_associations_recorded",
            "DICOM associations in the history, accepted or not",
            value=associations or 0,
        )
        yield _filled(
            GaugeMetricFamily(
                "caduceus_recent_associations",
                "Associations started in the recent window (24 h), by how they ended "
                "(open, released, aborted, rejected)",
                labels=["status"],
            ),
            recent,
        )
        states = "by state (receiving, complete, error)"
        yield _filled(
            GaugeMetricFamily("caduceus_series", f"Series {states}", labels=["state"]), series
        )
        yield _filled(
            GaugeMetricFamily("caduceus_studies", f"Studies {states}", labels=["state"]), studies
        )

    def _tasks(self, now: datetime) -> Iterable[Metric]:
        with self._reading() as conn:
            rows = conn.execute(
                select(TASKS.c.state, TASKS.c.action, func.count()).group_by(
                    TASKS.c.state, TASKS.c.action
                )
            ).all()
        yield _filled(
            GaugeMetricFamily(
                "caduceus_tasks",
                "Tasks by state (queued, processing, dispatching, done, error, discarded) "
                "and action",
                labels=["state", "action"],
            ),
            rows,
        )

    def _queues(self, now: datetime) -> Iterable[Metric]:
        """The queues an operator alerts on: per queue (process, dispatch) how many tasks,
        how many deferred, the oldest's age; per target the tasks waiting to be sent to it;
        and which queues are suspended."""
        deferred = func.sum(case((TASKS.c.not_before > now, 1), else_=0))
        with self._reading() as conn:
            queues = [
                (
                    name,
                    *conn.execute(
                        select(func.count(), func.min(TASKS.c.created_at), deferred).where(
                            condition
                        )
                    ).one(),
                )
                for name, condition in QUEUES.items()
            ]
            targets = conn.execute(
                select(TASK_TARGETS.c.target, func.count(), func.min(TASKS.c.created_at))
                .join(TASKS, TASKS.c.id == TASK_TARGETS.c.task_id)
                .where(and_(DISPATCHABLE, TASK_TARGETS.c.state == TargetState.PENDING))
                .group_by(TASK_TARGETS.c.target)
            ).all()
            controls = conn.execute(select(QUEUE_CONTROLS.c.name, QUEUE_CONTROLS.c.suspended)).all()
        queue, target = ["queue"], ["target"]
        yield _filled(
            GaugeMetricFamily(
                "caduceus_queue_tasks",
                "Tasks the queue's service has still to handle (process: tasks with modules to "
                "run; dispatch: tasks to send), waiting or in progress",
                labels=queue,
            ),
            [(name, n) for name, n, _, _ in queues],
        )
        yield _filled(
            GaugeMetricFamily(
                "caduceus_queue_deferred_tasks",
                "Of those, tasks not due before a later time (retry backoff, off-peak)",
                labels=queue,
            ),
            [(name, later or 0) for name, _, _, later in queues],
        )
        yield _filled(
            GaugeMetricFamily(
                "caduceus_queue_oldest_task_age_seconds",
                "Age of the queue's oldest task (since the router made it); 0 when empty",
                labels=queue,
            ),
            [(name, _age(now, first)) for name, _, first, _ in queues],
        )
        yield _filled(
            GaugeMetricFamily(
                "caduceus_queue_target_tasks",
                "Tasks waiting to be sent to the target (dispatchable, target not yet done)",
                labels=target,
            ),
            [(name, n) for name, n, _ in targets],
        )
        yield _filled(
            GaugeMetricFamily(
                "caduceus_queue_target_oldest_task_age_seconds",
                "Age of the oldest task waiting to be sent to the target",
                labels=target,
            ),
            [(name, _age(now, first)) for name, _, first in targets],
        )
        yield _filled(
            GaugeMetricFamily(
                "caduceus_queue_suspended",
                "1 while the queue is suspended (dispatch, dispatch:<target>, process)",
                labels=queue,
            ),
            [(name, 1 if is_suspended else 0) for name, is_suspended in controls],
        )

    def _durations(self, now: datetime) -> Iterable[Metric]:
        since = now - self.window
        details = EVENTS.c.details
        with self._reading() as conn:
            steps = _histogram(
                conn,
                EVENTS,
                details["module"].as_string(),
                details["seconds"].as_float(),
                and_(EVENTS.c.at >= since, _KIND == "process.step.done"),
                STEP_BUCKETS,
            )
            deliveries = _histogram(
                conn,
                EVENTS.join(TASKS, TASKS.c.id == EVENTS.c.task_id),
                details["target"].as_string(),
                _seconds_between(conn, TASKS.c.created_at, EVENTS.c.at),
                and_(EVENTS.c.at >= since, _KIND == "dispatch.done"),
                DELIVERY_BUCKETS,
            )
        for family, found in (
            (
                GaugeHistogramMetricFamily(
                    "caduceus_recent_process_step_duration_seconds",
                    "Run time of module steps that finished in the recent window (24 h), by module",
                    labels=["module"],
                ),
                steps,
            ),
            (
                GaugeHistogramMetricFamily(
                    "caduceus_recent_delivery_latency_seconds",
                    "Time from a task's creation to its delivery to a target, for deliveries "
                    "in the recent window (24 h); includes processing and retries",
                    labels=["target"],
                ),
                deliveries,
            ),
        ):
            for name, buckets, total in found:
                family.add_metric([name], buckets, total)
            yield family

    def _dispatch(self, now: datetime) -> Iterable[Metric]:
        since = now - self.window
        target = EVENTS.c.details["target"].as_string()
        kinds = {"dispatch.done": "done", "dispatch.retry": "retry", "dispatch.error": "error"}
        with self._reading() as conn:
            rows = conn.execute(
                select(_KIND, target, func.count())
                .where(and_(EVENTS.c.at >= since, _KIND.in_(list(kinds))))
                .group_by(_KIND, target)
            ).all()
        yield _filled(
            GaugeMetricFamily(
                "caduceus_recent_dispatch_attempts",
                "Sending attempts that ended in the recent window (24 h), by target and outcome "
                "(done; retry: failed, tried again later; error: failed, given up)",
                labels=["target", "outcome"],
            ),
            [(name or "", kinds[kind], n) for kind, name, n in rows],
        )

    def _errors(self, now: datetime) -> Iterable[Metric]:
        since = now - self.window
        with self._reading() as conn:
            recent: dict[str, int] = dict(
                conn.execute(
                    select(_KIND, func.count())
                    .where(and_(EVENTS.c.at >= since, EVENTS.c.severity == "error"))
                    .group_by(_KIND)
                ).all()
            )
            kinds = sorted(set(ERROR_KINDS) | set(recent))
            totals: dict[str, int] = dict(
                conn.execute(
                    select(EVENTS.c.kind, func.count())
                    .where(and_(EVENTS.c.kind.in_(kinds), EVENTS.c.severity == "error"))
                    .group_by(EVENTS.c.kind)
                ).all()
            )
        yield _filled(
            GaugeMetricFamily(
                "caduceus_recent_error_events",
                "Events of severity error in the recent window (24 h), by kind",
                labels=["kind"],
            ),
            [(kind, recent.get(kind, 0)) for kind in kinds],
        )
        yield _filled(
            GaugeMetricFamily(
                "caduceus_error_events_recorded",
                "Events of severity error in the history, by kind",
                labels=["kind"],
            ),
            [(kind, totals.get(kind, 0)) for kind in kinds],
        )

    def _disk(self, now: datetime) -> Iterable[Metric]:
        usage = shutil.disk_usage(self.root.home)
        yield GaugeMetricFamily(
            "caduceus_disk_total_bytes", "Size of the data root's file system", value=usage.total
        )
        yield GaugeMetricFamily(
            "caduceus_disk_used_bytes",
            "Bytes used on the data root's file system",
            value=usage.used,
        )
        yield GaugeMetricFamily(
            "caduceus_disk_free_bytes",
            "Bytes of the data root's file system free for caduceus (not reserved for root)",
            value=usage.free,
        )
        yield GaugeMetricFamily(
            "caduceus_disk_used_percent",
            "Percent of the data root's file system in use, as the cleaner measures it",
            value=used_percent(usage.used, usage.total),
        )

    def _settings(self, now: datetime) -> Iterable[Metric]:
        settings = store.current_or_default(self.engine).settings
        yield GaugeMetricFamily(
            "caduceus_disk_high_water_percent",
            "Disk use (percent) past which the cleaner removes finished work early",
            value=settings.disk_high_water,
        )
        yield GaugeMetricFamily(
            "caduceus_disk_low_water_percent",
            "Disk use (percent) the cleaner's early removal brings the disk down to",
            value=settings.disk_low_water,
        )


def render_metrics(
    engine: Engine, root: DataRoot, now: datetime | None = None
) -> tuple[bytes, str]:
    """The metrics in Prometheus' text format, and its content type, for a web route; ages and
    windows are measured from `now` (default: the clock)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector(engine, root, now=now))
    return generate_latest(registry), CONTENT_TYPE_LATEST


__all__ = ["DatabaseCollector", "render_metrics"]
