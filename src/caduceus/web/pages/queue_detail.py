"""One task, series or study whole: its facts, tags, targets, logs, results and history.

Other pages link here (/tasks/<id>, /series/<id>, /studies/<id>), so these routes do not
depend on the Queue page's tabs or filters.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import HTMLResponse
from sqlalchemy import Engine, func, select

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
from caduceus.core.db.models import SERIES, STUDIES
from caduceus.core.dicom.series_tags import UnreadableSeries, read_tags, series_tags
from caduceus.core.discard import DISCARDABLE
from caduceus.core.ids import RowId
from caduceus.core.storage import DataRoot
from caduceus.web.api.engines import reader
from caduceus.web.api.tasks import log_files, log_tail
from caduceus.web.pages.rendering import PageViewer, render

router = APIRouter(include_in_schema=False)

LOG_SHOWN = 16 * 1024  # the end of each module log on the page; the API serves more
EVENTS_SHOWN = 200


def _file_tags(path: Path | None) -> dict[str, str]:
    """A file's header as the rules see it, each value as text; empty if it cannot be read."""
    if path is None or not path.is_file():
        return {}
    try:
        return _as_text(read_tags(path))
    except (UnreadableSeries, OSError):
        return {}


def _series_tags(engine: Engine, home: Path, series_id: int) -> dict[str, str]:
    """The series' tags as the router sees them, each value as text; empty if there are none."""
    try:
        return _as_text(series_tags(engine, DataRoot(home), series_id=series_id) or {})
    except UnreadableSeries:
        return {}


def _as_text(tags: dict[str, Any]) -> dict[str, str]:
    return {
        keyword: "\\".join(map(str, value)) if isinstance(value, list) else str(value)
        for keyword, value in sorted(tags.items())
    }


def _first_file(folder: Path) -> Path | None:
    return next(iter(sorted(folder.glob("*.dcm"))), None) if folder.is_dir() else None


def _logs(request: Request, folder: str) -> list[dict[str, Any]]:
    shown = []
    for path in sorted(log_files(request, folder)):
        text = log_tail(path, LOG_SHOWN)
        shown.append({"name": path.name, "text": text, "cut": path.stat().st_size > LOG_SHOWN})
    return shown


def _context(engine: Engine, task: dict[str, Any]) -> dict[str, Any]:
    """The task's study and series page ids, where they are still in the history, and the
    patient's name (task.json of a patient-level task has none)."""
    with engine.connect() as conn:
        study = conn.execute(
            select(STUDIES.c.id, STUDIES.c.patient_name).where(
                STUDIES.c.study_uid == task["study_uid"]
            )
        ).first()
        series_id = conn.execute(
            select(SERIES.c.id).where(SERIES.c.series_uid == task["series_uid"])
        ).scalar()
        name = study.patient_name if study else ""
        if not name and task["patient_id"]:
            name = conn.execute(
                select(func.max(STUDIES.c.patient_name)).where(
                    STUDIES.c.patient_id == task["patient_id"]
                )
            ).scalar()
    return {
        "study_id": study.id if study else None,
        "series_id": series_id,
        "patient_name": name or "",
    }


@router.get("/tasks/{task_id}", response_class=HTMLResponse)
def task_page(request: Request, task_id: str, who: PageViewer) -> HTMLResponse:
    engine = reader(request)
    task = task_detail(engine, task_id)
    if task is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "There is no such task.")
    home: Path = request.app.state.settings.home
    document = task.get("info") or {}
    return render(
        request,
        "task.html",
        who,
        f"Task {task_id[:8]}",
        task=task,
        info=document.get("info") or {},
        task_json=json.dumps(document, indent=2, default=str),
        results=json.dumps(task.get("results"), indent=2, default=str)
        if task.get("results")
        else "",
        tags=_file_tags(_first_file(home / task["folder"] / "in"))
        if not task["cleaned_at"]
        else {},
        logs=_logs(request, task["folder"]),
        **_context(engine, task),
        discardable=task["state"] in DISCARDABLE,
    )


@router.get("/series/{series_id}", response_class=HTMLResponse)
def series_page(request: Request, series_id: RowId, who: PageViewer) -> HTMLResponse:
    engine = reader(request)
    with engine.connect() as conn:
        row = conn.execute(select(SERIES).where(SERIES.c.id == series_id)).first()
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "There is no such series.")
    [summary] = search_series(engine, StudyFilter(), series_uid=row.series_uid, limit=1)
    home: Path = request.app.state.settings.home
    return render(
        request,
        "series.html",
        who,
        f"Series {row.series_description or row.series_uid}",
        series={**dict(row._mapping), **summary},
        tasks=search_tasks(engine, TaskFilter(series_uid=row.series_uid), 200),
        events=list_events(engine, EventFilter(series_id=series_id), EVENTS_SHOWN),
        tags=_series_tags(engine, home, series_id),
    )


@router.get("/studies/{study_id}", response_class=HTMLResponse)
def study_page(request: Request, study_id: RowId, who: PageViewer) -> HTMLResponse:
    engine = reader(request)
    with engine.connect() as conn:
        row = conn.execute(select(STUDIES).where(STUDIES.c.id == study_id)).first()
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "There is no such study.")
    where = StudyFilter(study_uid=row.study_uid)
    [summary] = search_studies(engine, where, 1)
    return render(
        request,
        "study.html",
        who,
        f"Study {row.study_description or row.study_uid}",
        study=summary,
        series=search_series(engine, where, limit=500),
        tasks=search_tasks(engine, TaskFilter(study_uid=row.study_uid), 200),
        events=list_events(engine, EventFilter(study_id=study_id), EVENTS_SHOWN),
    )
