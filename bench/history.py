"""History benchmark: the bookkeeper's searches on a big database.

    .venv/bin/python bench/history.py [--instances 1000000] [--tasks 100000]
                                      [--database sqlite|postgresql://...]

Fills a fresh database (SQLite in a temporary folder, or an empty PostgreSQL database whose URL
is given) through the real schema and migrations with a hospital-like history: studies of two
series, series of 50 instances, a task per series for most series, a few events per task. Then
times the searches the API and the web interface make (bookkeeper/search.py), each the median
of several runs, and the Prometheus scrape when the metrics module is present.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, insert, text

from caduceus.bookkeeper.search import (
    EventFilter,
    StudyFilter,
    TaskFilter,
    list_events,
    search_series,
    search_studies,
    search_tasks,
    task_detail,
)
from caduceus.core.database import open_database
from caduceus.core.db.models import (
    ASSOCIATIONS,
    EVENTS,
    INSTANCES,
    SERIES,
    STUDIES,
    TASK_TARGETS,
    TASKS,
)
from caduceus.core.settings import Settings
from caduceus.core.storage import DataRoot

MODALITIES = ("CT", "MR", "CR", "US", "PT", "NM", "DX", "MG")
RULES = ("ct_to_pacs", "mr_ai", "archive", "research", "teaching")
TARGETS = ("pacs", "archive", "ai", "research")
STATES = ("done",) * 90 + ("error",) * 5 + ("dispatching",) * 3 + ("queued",) * 2
BATCH = 20_000


def _flush(engine: Engine, table: Any, rows: list[dict[str, Any]]) -> None:
    if rows:
        with engine.begin() as conn:
            conn.execute(insert(table), rows)
        rows.clear()


def fill(engine: Engine, instances: int, tasks: int) -> dict[str, Any]:
    rng = random.Random(7)
    per_series, per_study = 50, 2
    series_count = max(1, instances // per_series)
    study_count = max(1, series_count // per_study)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    with engine.begin() as conn:
        association = conn.execute(
            insert(ASSOCIATIONS)
            .values(
                started_at=start,
                calling_aet="CT01",
                called_aet="CADUCEUS",
                peer_host="10.0.0.7",
                peer_port=104,
                status="released",
            )
            .returning(ASSOCIATIONS.c.id)
        ).scalar_one()
    probe: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    for n in range(study_count):
        at = start + timedelta(seconds=n * 60)
        rows.append(
            {
                "id": n + 1,
                "study_uid": f"1.2.826.0.1.3680043.10.1.{n}",
                "patient_id": f"P{n % (study_count // 2 + 1):07d}",
                "patient_name": f"{rng.choice(('DOE', 'ROE', 'SMITH', 'MILLER', 'NG'))}"
                f"^{rng.choice(('JANE', 'JOHN', 'ALEX'))}{n}",
                "accession_number": f"A{n:08d}",
                "study_date": at.strftime("%Y%m%d"),
                "study_description": "BENCH",
                "first_received_at": at,
                "last_received_at": at + timedelta(seconds=30),
                "state": "complete",
                "completed_at": at + timedelta(seconds=30),
                "generation": 1,
            }
        )
        if len(rows) >= BATCH:
            _flush(engine, STUDIES, rows)
    _flush(engine, STUDIES, rows)
    probe["study"] = f"1.2.826.0.1.3680043.10.1.{study_count // 2}"
    probe["accession"] = f"A{study_count // 2:08d}"
    probe["patient_id"] = f"P{(study_count // 2) % (study_count // 2 + 1):07d}"
    for n in range(series_count):
        study = n // per_study
        at = start + timedelta(seconds=study * 60 + (n % per_study) * 10)
        rows.append(
            {
                "id": n + 1,
                "series_uid": f"1.2.826.0.1.3680043.10.2.{n}",
                "study_id": study + 1,
                "modality": MODALITIES[n % len(MODALITIES)],
                "series_number": str(n % per_study + 1),
                "series_description": "BENCH SERIES",
                "folder": f"1.2.826.0.1.3680043.10.2.{n}",
                "first_received_at": at,
                "last_received_at": at + timedelta(seconds=5),
                "state": "complete",
                "completed_at": at + timedelta(seconds=5),
                "generation": 1,
            }
        )
        if len(rows) >= BATCH:
            _flush(engine, SERIES, rows)
    _flush(engine, SERIES, rows)
    for n in range(series_count * per_series):
        series = n // per_series
        rows.append(
            {
                "sop_instance_uid": f"1.2.826.0.1.3680043.10.3.{n}",
                "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
                "series_id": series + 1,
                "association_id": association,
                "transfer_syntax_uid": "1.2.840.10008.1.2.1",
                "instance_number": str(n % per_series + 1),
                "path": f"incoming/x/{n}.dcm",
                "size_bytes": 525_000,
                "received_at": start + timedelta(seconds=series * 30 + n % per_series),
            }
        )
        if len(rows) >= BATCH:
            _flush(engine, INSTANCES, rows)
    _flush(engine, INSTANCES, rows)
    targets: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    for n in range(tasks):
        series = n % series_count
        at = start + timedelta(seconds=series * 30 + 90)
        task_id = str(uuid.UUID(int=n + 1))
        state = STATES[n % len(STATES)]
        rule = RULES[n % len(RULES)]
        target = TARGETS[n % len(TARGETS)]
        rows.append(
            {
                "id": task_id,
                "group_key": f"series:{series}:{rule}:{n}",
                "created_at": at,
                "updated_at": at + timedelta(seconds=20),
                "rule": rule,
                "action": "route",
                "level": "series",
                "state": state,
                "priority": 1,
                "attempts": 0,
                "study_uid": f"1.2.826.0.1.3680043.10.1.{series // per_study}",
                "series_uid": f"1.2.826.0.1.3680043.10.2.{series}",
                "patient_id": f"P{(series // per_study) % (study_count // 2 + 1):07d}",
                "folder": f"tasks/{task_id}",
                "targets": [target],
                "modules": [],
                "info": {"id": task_id, "info": {"applied_rule": rule}},
                "step": 0,
            }
        )
        targets.append(
            {
                "task_id": task_id,
                "target": target,
                "state": {"done": "done", "error": "error"}.get(state, "pending"),
                "attempts": 1,
                "updated_at": at,
            }
        )
        for kind in ("task.created", "dispatch.retry", "dispatch.done"):
            events.append(
                {"at": at, "kind": kind, "severity": "info", "task_id": task_id, "message": ""}
            )
        if len(rows) >= BATCH:
            _flush(engine, TASKS, rows)
            _flush(engine, TASK_TARGETS, targets)
            _flush(engine, EVENTS, events)
    _flush(engine, TASKS, rows)
    _flush(engine, TASK_TARGETS, targets)
    _flush(engine, EVENTS, events)
    probe["task"] = str(uuid.UUID(int=tasks // 2))
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            conn.execute(text("ANALYZE"))
    else:
        with engine.begin() as conn:
            conn.execute(text("ANALYZE"))
    return probe


def timed(call: Callable[[], Any], runs: int = 7) -> tuple[float, int]:
    call()  # warm the caches once; a search is repeated in practice
    times = []
    found = 0
    for _ in range(runs):
        begin = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - begin)
        found = len(result) if hasattr(result, "__len__") else 1
    return statistics.median(times) * 1000, found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--instances", type=int, default=1_000_000)
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--database", default="sqlite")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="caduceus-history-bench-") as scratch:
        home = Path(scratch)
        url = "" if args.database == "sqlite" else args.database
        settings = Settings(home=home, database_url=url, fsync=False)
        engine = open_database(settings, migrate=True)
        began = time.perf_counter()
        probe = fill(engine, args.instances, args.tasks)
        print(
            f"{engine.dialect.name}: filled {args.instances} instances, {args.tasks} tasks, "
            f"{3 * args.tasks} events in {time.perf_counter() - began:.0f} s"
        )
        searches: list[tuple[str, Callable[[], Any]]] = [
            (
                "series by patient ID",
                lambda: search_series(engine, StudyFilter(patient_id=probe["patient_id"])),
            ),
            (
                "series by patient name prefix",
                lambda: search_series(engine, StudyFilter(patient_name="miller^jane1")),
            ),
            (
                "studies by accession number",
                lambda: search_studies(engine, StudyFilter(accession_number=probe["accession"])),
            ),
            (
                "series of a study (UID)",
                lambda: search_series(engine, StudyFilter(study_uid=probe["study"])),
            ),
            (
                "series by modality, first page",
                lambda: search_series(engine, StudyFilter(), modality="MR"),
            ),
            ("newest series, page 1", lambda: search_series(engine, StudyFilter())),
            ("newest series, page 100", lambda: search_series(engine, StudyFilter(), offset=4950)),
            (
                "studies by date range",
                lambda: search_studies(
                    engine, StudyFilter(study_date_from="20260105", study_date_to="20260106")
                ),
            ),
            ("tasks in error", lambda: search_tasks(engine, TaskFilter(state="error"))),
            ("tasks of a rule", lambda: search_tasks(engine, TaskFilter(rule="mr_ai"))),
            ("tasks to a target", lambda: search_tasks(engine, TaskFilter(target="ai"))),
            (
                "tasks by accession number",
                lambda: search_tasks(engine, TaskFilter(accession_number=probe["accession"])),
            ),
            (
                "tasks of a patient",
                lambda: search_tasks(engine, TaskFilter(patient_id=probe["patient_id"])),
            ),
            ("one task whole", lambda: [task_detail(engine, probe["task"])]),
            ("events of a task", lambda: list_events(engine, EventFilter(task_id=probe["task"]))),
            ("newest dispatch events", lambda: list_events(engine, EventFilter(kind="dispatch."))),
        ]
        try:
            from caduceus.bookkeeper.metrics import render_metrics

            searches.append(("Prometheus scrape", lambda: [render_metrics(engine, DataRoot(home))]))
        except ImportError:
            pass
        print(f"{'query':34} {'median ms':>10} {'rows':>6}")
        for name, call in searches:
            ms, rows = timed(call)
            print(f"{name:34} {ms:10.1f} {rows:6}")
        engine.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
