"""Tasks: search them, see one whole with its module logs, restart or discard one."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from fastapi.responses import PlainTextResponse
from sqlalchemy import select

from caduceus.bookkeeper.search import TaskFilter, search_tasks, task_detail
from caduceus.core.db.models import TASKS
from caduceus.core.discard import TaskBusy, discard
from caduceus.dispatcher.interface import restart
from caduceus.web.api.engines import reader, writer
from caduceus.web.auth import Operator, Viewer

router = APIRouter(prefix="/api/tasks", tags=["tasks"])
LOG_LIMIT = 1024 * 1024  # the end of a log, at most


@router.get("")
def tasks(
    request: Request,
    _: Viewer,
    where: Annotated[TaskFilter, Depends()],
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=100_000)] = 0,
) -> list[dict[str, Any]]:
    """Tasks, newest first; every filter is optional. For deep pages, pass `before` (the
    position of the last task shown: its created_at and id, as `<time>~<id>`) instead of an
    offset."""
    try:
        return search_tasks(reader(request), where, limit, offset)
    except ValueError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from exc


@router.get("/{task_id}")
def one_task(request: Request, task_id: str, _: Viewer) -> dict[str, Any]:
    """The task, its task.json, each target's state, module results, events and log names."""
    found = task_detail(reader(request), task_id)
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such task")
    found["logs"] = sorted(p.name for p in log_files(request, found["folder"]))
    return found


def log_files(request: Request, folder: str) -> list[Path]:
    """The module logs of the task whose folder this is."""
    logs = request.app.state.settings.home / folder / "logs"
    return [p for p in logs.glob("*.log") if p.is_file()] if logs.is_dir() else []


def log_tail(path: Path, limit: int = LOG_LIMIT) -> str:
    """The end of a log: what a failed module said last."""
    with path.open("rb") as fh:
        fh.seek(0, 2)
        fh.seek(max(0, fh.tell() - limit))
        return fh.read().decode("utf-8", "replace")


@router.get("/{task_id}/logs/{name}", response_class=PlainTextResponse)
def module_log(request: Request, task_id: str, name: str, _: Viewer) -> str:
    """A module's output; the name must be one the task lists (no paths)."""
    with reader(request).connect() as conn:
        folder = conn.execute(select(TASKS.c.folder).where(TASKS.c.id == task_id)).scalar()
    if folder is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such task")
    by_name = {p.name: p for p in log_files(request, folder)}
    if name not in by_name:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such log")
    return log_tail(by_name[name])


@router.post("/{task_id}/restart")
def restart_task(request: Request, task_id: str, who: Operator) -> dict[str, Any]:
    """Processing resumes at the failed step; sending goes to the targets that failed."""
    try:
        targets = restart(writer(request), task_id, who.username)
    except LookupError as exc:
        missing = str(exc).startswith("no task")
        code = status.HTTP_404_NOT_FOUND if missing else status.HTTP_409_CONFLICT
        raise HTTPException(code, str(exc)) from exc
    return {"restarted": task_id, "targets": targets}


@router.post("/{task_id}/discard")
def discard_task(request: Request, task_id: str, who: Operator) -> dict[str, Any]:
    """A waiting or failed task is neither processed nor sent; one being worked on is refused."""
    try:
        was = discard(writer(request), task_id, who.username)
    except LookupError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such task") from exc
    except TaskBusy as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    return {"discarded": task_id, "was": was}
