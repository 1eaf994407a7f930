"""Finding series, studies, tasks and events: the history, searched.

Every query picks its page first, through an index (patient ID, accession number, UIDs,
modality, dates, rule, target, state, time), and only then counts or joins what it shows for
that page, so a search costs the same on a hundred series as on a million instances
(bench/history.py measures it).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    Engine,
    Integer,
    Select,
    and_,
    cast,
    exists,
    func,
    or_,
    select,
)

from caduceus.core.clock import as_utc
from caduceus.core.db.models import (
    ASSOCIATIONS,
    DELIVERIES,
    EVENTS,
    INSTANCES,
    PATIENT_GROUPS,
    SERIES,
    STUDIES,
    TASK_TARGETS,
    TASKS,
)
from caduceus.core.ids import RowId
from caduceus.core.states import SeriesState, TaskState

MAX_LIMIT = 500


def _utc(moment: datetime | None) -> datetime | None:
    """Times are stored in UTC; SQLite compares them as text, so a bound given with another
    offset (or none: taken as UTC) is converted before it is compared."""
    return None if moment is None else as_utc(moment)


def _name_prefix(column: Any, term: str) -> ColumnElement[bool]:
    """Case-insensitive prefix match on a name, as a range on lower(name) so that the index on
    lower(name) serves it (LIKE would not, with both databases' default collations)."""
    low = term.lower()
    return and_(func.lower(column) >= low, func.lower(column) < low + "\uffff")


def position(moment: datetime, key: int | str) -> str:
    """Where the next page of a newest-first list starts: the time and id of the last row shown.

    Keyset paging ("older than this") costs the same on page 1000 as on page 1, where an offset
    would read and skip every row before it.
    """
    return f"{as_utc(moment).isoformat()}~{key}"


def _older_than(moment: Any, key: Any, where: str) -> ColumnElement[bool]:
    """Rows after `where` in the order (moment desc, key desc); ValueError if it is no position."""
    text, separator, raw_key = where.rpartition("~")
    if not separator or not raw_key:
        raise ValueError(f"not a list position: {where[:80]!r}")
    bound = as_utc(datetime.fromisoformat(text))
    typed: int | str = int(raw_key) if isinstance(key.type, Integer) else raw_key
    return or_(moment < bound, and_(moment == bound, key < typed))


@dataclass
class StudyFilter:
    patient_id: str = ""
    patient_name: str = ""  # prefix, case-insensitive ("doe" finds "DOE^JANE")
    accession_number: str = ""
    study_uid: str = ""
    study_date_from: str = ""  # YYYYMMDD, as in DICOM
    study_date_to: str = ""
    received_from: datetime | None = None
    received_to: datetime | None = None

    def conditions(self) -> list[ColumnElement[bool]]:
        st = STUDIES.c
        found: list[ColumnElement[bool]] = []
        if self.patient_id:
            found.append(st.patient_id == self.patient_id)
        if self.patient_name:
            found.append(_name_prefix(st.patient_name, self.patient_name))
        if self.accession_number:
            found.append(st.accession_number == self.accession_number)
        if self.study_uid:
            found.append(st.study_uid == self.study_uid)
        if self.study_date_from:
            found.append(st.study_date >= self.study_date_from)
        if self.study_date_to:
            found.append(st.study_date <= self.study_date_to)
        if self.received_from:
            found.append(st.last_received_at >= _utc(self.received_from))
        if self.received_to:
            found.append(st.first_received_at <= _utc(self.received_to))
        return found


def _page(query: Select[Any], limit: int, offset: int) -> Select[Any]:
    return query.limit(max(1, min(limit, MAX_LIMIT))).offset(max(0, offset))


def _received(
    table: Any, state: str, before: str, conditions: list[ColumnElement[bool]]
) -> list[ColumnElement[bool]]:
    """A series' or study's own state ("receiving": waiting for completion) and page start."""
    if state:
        conditions.append(table.c.state == state)
    if before:
        conditions.append(_older_than(table.c.last_received_at, table.c.id, before))
    return conditions


def search_studies(
    engine: Engine,
    where: StudyFilter,
    limit: int = 50,
    offset: int = 0,
    *,
    state: str = "",
    before: str = "",
) -> list[dict[str, Any]]:
    st = STUDIES.c
    query = _page(
        select(STUDIES)
        .where(*_received(STUDIES, state, before, where.conditions()))
        .order_by(st.last_received_at.desc(), st.id.desc()),
        limit,
        offset,
    )
    with engine.connect() as conn:
        studies = [dict(r._mapping) for r in conn.execute(query)]
        ids = [s["id"] for s in studies]
        if ids:
            counts = conn.execute(
                select(
                    SERIES.c.study_id,
                    func.count(func.distinct(SERIES.c.id)).label("series"),
                    func.count(INSTANCES.c.id).label("instances"),
                )
                .join(INSTANCES, INSTANCES.c.series_id == SERIES.c.id, isouter=True)
                .where(SERIES.c.study_id.in_(ids))
                .group_by(SERIES.c.study_id)
            ).all()
            by_study = {c.study_id: c for c in counts}
            for study in studies:
                row = by_study.get(study["id"])
                study["series"] = row.series if row else 0
                study["instances"] = row.instances if row else 0
    return studies


def search_series(
    engine: Engine,
    where: StudyFilter,
    series_uid: str = "",
    modality: str = "",
    limit: int = 50,
    offset: int = 0,
    *,
    state: str = "",
    before: str = "",
) -> list[dict[str, Any]]:
    """A page of received series, newest arrival first, each with its study's facts, its
    instance count, size and senders.

    The page is chosen first, by the filter's indexed columns (a study's, a series UID, a
    modality, the series' state, `before` for the next page); the counts and senders are
    then asked for that page's series only, so the cost does not grow with the history.
    """
    se, st = SERIES.c, STUDIES.c
    conditions = _received(SERIES, state, before, where.conditions())
    if series_uid:
        conditions.append(se.series_uid == series_uid)
    if modality:
        conditions.append(se.modality == modality.upper())
    query = _page(
        select(
            se.id,
            se.series_uid,
            se.modality,
            se.series_number,
            se.series_description,
            se.state,
            se.first_received_at,
            se.last_received_at,
            se.completed_at,
            se.study_id,
            st.study_uid,
            st.patient_id,
            st.patient_name,
            st.accession_number,
            st.study_date,
            st.study_description,
        )
        .join(STUDIES, st.id == se.study_id)
        .where(*conditions)
        .order_by(se.last_received_at.desc(), se.id.desc()),
        limit,
        offset,
    )
    with engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(query)]
        ids = [r["id"] for r in rows]
        if ids:
            counts = {
                c.series_id: c
                for c in conn.execute(
                    select(
                        INSTANCES.c.series_id,
                        func.count().label("n"),
                        cast(func.sum(INSTANCES.c.size_bytes), BigInteger).label("b"),
                    )
                    .where(INSTANCES.c.series_id.in_(ids))
                    .group_by(INSTANCES.c.series_id)
                )
            }
            senders: dict[int, set[str]] = {}
            for pair in conn.execute(
                select(INSTANCES.c.series_id, ASSOCIATIONS.c.calling_aet, ASSOCIATIONS.c.peer_host)
                .join(ASSOCIATIONS, ASSOCIATIONS.c.id == INSTANCES.c.association_id)
                .where(INSTANCES.c.series_id.in_(ids))
                .distinct()
            ):
                senders.setdefault(pair.series_id, set()).add(
                    f"{pair.calling_aet}@{pair.peer_host}"
                )
            for row in rows:
                count = counts.get(row["id"])
                row["instances"] = count.n if count else 0
                row["bytes"] = int(count.b or 0) if count else 0
                row["senders"] = sorted(senders.get(row["id"], ()))
    return rows


_PROCESSED = TASKS.c.action.in_(("process", "both"))
# The queue's views of tasks by where they stand; a queued task waits for the processor if it
# has modules to run, else for the dispatcher (or the notifier).
TASK_VIEWS: dict[str, ColumnElement[bool]] = {
    "processing": and_(TASKS.c.state.in_((TaskState.QUEUED, TaskState.PROCESSING)), _PROCESSED),
    "dispatching": or_(
        TASKS.c.state == TaskState.DISPATCHING, and_(TASKS.c.state == TaskState.QUEUED, ~_PROCESSED)
    ),
    "failed": TASKS.c.state == TaskState.ERROR,
    "finished": TASKS.c.state.in_((TaskState.DONE, TaskState.DISCARDED)),
}


def _patients_named(term: str) -> Select[Any]:
    return select(STUDIES.c.patient_id).where(_name_prefix(STUDIES.c.patient_name, term))


@dataclass
class TaskFilter:
    """What the task lists (web and API) may be narrowed by; `conditions` turns it into the
    WHERE clause, one condition per field that is set, all of them to hold."""

    state: str = ""
    view: str = ""  # processing, dispatching, failed or finished (TASK_VIEWS)
    rule: str = ""
    action: str = ""
    target: str = ""
    patient_id: str = ""
    accession_number: str = ""
    study_uid: str = ""
    series_uid: str = ""
    patient_name: str = ""  # prefix, case-insensitive, through the studies' names
    created_from: datetime | None = None
    created_to: datetime | None = None
    before: str = ""  # position() of the last task of the previous page

    def conditions(self) -> list[ColumnElement[bool]]:
        t = TASKS.c
        found: list[ColumnElement[bool]] = []
        if self.view:
            if self.view not in TASK_VIEWS:
                raise ValueError(f"view must be one of {', '.join(TASK_VIEWS)}")
            found.append(TASK_VIEWS[self.view])
        if self.patient_name:
            named = _patients_named(self.patient_name)
            found.append(
                or_(
                    t.study_uid.in_(named.with_only_columns(STUDIES.c.study_uid)),
                    and_(t.level == "patient", t.patient_id.in_(named)),
                )
            )
        if self.before:
            found.append(_older_than(t.created_at, t.id, self.before))
        for column, value in (
            (t.state, self.state),
            (t.rule, self.rule),
            (t.action, self.action),
            (t.patient_id, self.patient_id),
            (t.study_uid, self.study_uid),
            (t.series_uid, self.series_uid),
        ):
            if value:
                found.append(column == value)
        if self.target:
            found.append(
                exists().where(
                    and_(TASK_TARGETS.c.task_id == t.id, TASK_TARGETS.c.target == self.target)
                )
            )
        if self.accession_number:
            found.append(
                t.study_uid.in_(
                    select(STUDIES.c.study_uid).where(
                        STUDIES.c.accession_number == self.accession_number
                    )
                )
            )
        if self.created_from:
            found.append(t.created_at >= _utc(self.created_from))
        if self.created_to:
            found.append(t.created_at <= _utc(self.created_to))
        return found


TASK_COLUMNS = (
    "id",
    "created_at",
    "updated_at",
    "rule",
    "action",
    "level",
    "state",
    "priority",
    "not_before",
    "study_uid",
    "series_uid",
    "patient_id",
    "targets",
    "modules",
    "step",
    "error",
    "cleaned_at",
)


def search_tasks(
    engine: Engine, where: TaskFilter, limit: int = 50, offset: int = 0
) -> list[dict[str, Any]]:
    t = TASKS.c
    query = _page(
        select(*(t[name] for name in TASK_COLUMNS))
        .where(*where.conditions())
        .order_by(t.created_at.desc(), t.id.desc()),
        limit,
        offset,
    )
    with engine.connect() as conn:
        tasks = [dict(r._mapping) for r in conn.execute(query)]
        ids = [task["id"] for task in tasks]
        states: dict[str, dict[str, str]] = {}
        if ids:
            for row in conn.execute(
                select(TASK_TARGETS.c.task_id, TASK_TARGETS.c.target, TASK_TARGETS.c.state).where(
                    TASK_TARGETS.c.task_id.in_(ids)
                )
            ):
                states.setdefault(row.task_id, {})[row.target] = row.state
        names = _names(conn, tasks)
        for task in tasks:
            task["target_states"] = states.get(task["id"], {})
            task["patient_name"] = names.get(task["study_uid"] or task["patient_id"], "")
    return tasks


def _names(conn: Connection, rows: list[dict[str, Any]]) -> dict[str, str]:
    """Patient names by study UID and by patient ID (for patient-level rows), for one page."""
    study_uids = {r["study_uid"] for r in rows if r.get("study_uid")}
    patient_ids = {r["patient_id"] for r in rows if not r.get("study_uid") and r["patient_id"]}
    names: dict[str, str] = {}
    if study_uids:
        names.update(
            conn.execute(
                select(STUDIES.c.study_uid, STUDIES.c.patient_name).where(
                    STUDIES.c.study_uid.in_(study_uids)
                )
            ).all()
        )
    if patient_ids:
        names.update(
            conn.execute(
                select(STUDIES.c.patient_id, func.max(STUDIES.c.patient_name))
                .where(STUDIES.c.patient_id.in_(patient_ids))
                .group_by(STUDIES.c.patient_id)
            ).all()
        )
    return names


def search_patients(
    engine: Engine,
    state: str = "",
    patient_id: str = "",
    before: str = "",
    limit: int = 50,
    patient_name: str = "",
) -> list[dict[str, Any]]:
    """Patient groups (patient-level completion), the most recently active first."""
    pg = PATIENT_GROUPS.c
    conditions: list[ColumnElement[bool]] = []
    if state:
        conditions.append(pg.state == state)
    if patient_id:
        conditions.append(pg.patient_id == patient_id)
    if patient_name:
        conditions.append(pg.patient_id.in_(_patients_named(patient_name)))
    if before:
        conditions.append(_older_than(pg.last_activity, pg.patient_id, before))
    query = _page(
        select(PATIENT_GROUPS)
        .where(*conditions)
        .order_by(pg.last_activity.desc(), pg.patient_id.desc()),
        limit,
        0,
    )
    with engine.connect() as conn:
        groups = [dict(r._mapping) for r in conn.execute(query)]
        names = _names(conn, [{"patient_id": g["patient_id"]} for g in groups])
        counts: dict[str, int] = dict(
            conn.execute(
                select(STUDIES.c.patient_id, func.count())
                .where(STUDIES.c.patient_id.in_([g["patient_id"] for g in groups]))
                .group_by(STUDIES.c.patient_id)
            ).all()
        )
    for group in groups:
        group["patient_name"] = names.get(group["patient_id"], "")
        group["studies"] = counts.get(group["patient_id"], 0)
    return groups


def task_detail(engine: Engine, task_id: str) -> dict[str, Any] | None:
    """One task whole: its row, task.json, each target's state, module results and history."""
    with engine.connect() as conn:
        row = conn.execute(select(TASKS).where(TASKS.c.id == task_id)).first()
        if row is None:
            return None
        task = dict(row._mapping)
        task.pop("lease_owner", None)
        task["targets_detail"] = [
            dict(r._mapping)
            for r in conn.execute(select(TASK_TARGETS).where(TASK_TARGETS.c.task_id == task_id))
        ]
        delivered: dict[str, int] = dict(
            conn.execute(
                select(DELIVERIES.c.target, func.count())
                .where(DELIVERIES.c.task_id == task_id)
                .group_by(DELIVERIES.c.target)
            ).all()
        )
        for target in task["targets_detail"]:
            target["delivered"] = delivered.get(target["target"], 0)
        task["events"] = [
            dict(r._mapping)
            for r in conn.execute(
                select(EVENTS).where(EVENTS.c.task_id == task_id).order_by(EVENTS.c.id)
            )
        ]
    return task


def queue_counts(engine: Engine) -> dict[str, int]:
    """How many tasks wait in each live view of the queue, and how many groups wait for
    completion. Finished tasks are not counted: they are the history, and counting a hundred
    thousand of them on every page view would cost more than the page.
    """
    with engine.connect() as conn:
        counts: dict[str, int] = {
            name: conn.execute(select(func.count()).where(TASK_VIEWS[name])).scalar_one()
            for name in ("processing", "dispatching", "failed")
        }
        waiting = {
            name: conn.execute(
                select(func.count())
                .select_from(table)
                .where(table.c.state == SeriesState.RECEIVING)
            ).scalar_one()
            for name, table in (
                ("series", SERIES),
                ("studies", STUDIES),
                ("patients", PATIENT_GROUPS),
            )
        }
    counts["waiting"] = sum(waiting.values())
    return counts | {f"waiting_{name}": number for name, number in waiting.items()}


@dataclass
class EventFilter:
    kind: str = ""  # exact, or a prefix ending in "." ("dispatch.")
    severity: str = ""
    task_id: str = ""
    series_id: RowId | None = None
    study_id: RowId | None = None
    since: datetime | None = None
    before_id: RowId | None = None  # paging backwards through time

    def conditions(self) -> list[ColumnElement[bool]]:
        e = EVENTS.c
        found: list[ColumnElement[bool]] = []
        if self.kind.endswith("."):
            found.append(and_(e.kind >= self.kind, e.kind < self.kind + "\uffff"))
        elif self.kind:
            found.append(e.kind == self.kind)
        if self.severity:
            found.append(e.severity == self.severity)
        if self.task_id:
            found.append(e.task_id == self.task_id)
        if self.series_id is not None:
            found.append(e.series_id == self.series_id)
        if self.study_id is not None:
            found.append(e.study_id == self.study_id)
        if self.since:
            found.append(e.at >= _utc(self.since))
        if self.before_id is not None:
            found.append(e.id < self.before_id)
        return found


def list_events(engine: Engine, where: EventFilter, limit: int = 100) -> list[dict[str, Any]]:
    query = (
        select(EVENTS)
        .where(*where.conditions())
        .order_by(EVENTS.c.id.desc())
        .limit(max(1, min(limit, MAX_LIMIT)))
    )
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(query)]
