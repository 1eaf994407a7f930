"""Tasks: search them, see one whole with its module logs, restart a failed one."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from fastapi.responses import PlainTextResponse
from sqlalchemy import select

from caduceus.bookkeeper.search import TaskFilter, search_tasks, task_detail
from caduceus.core.db.models import TASKS
from caduceus.dispatcher.dispatch import restart
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
    """Tasks, newest first; every filter is optional."""
    return search_tasks(reader(request), where, limit, offset)


@router.get("/{task_id}")
def one_task(request: Request, task_id: str, _: Viewer) -> dict[str, Any]:
    """The task, its task.json, each target's state, module results, events and log names."""
    found = task_detail(reader(request), task_id)
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such task")
    found["logs"] = sorted(p.name for p in _logs(request, found["folder"]))
    return found


def _logs(request: Request, folder: str) -> list[Any]:
    logs = request.app.state.settings.home / folder / "logs"
    return [p for p in logs.glob("*.log") if p.is_file()] if logs.is_dir() else []


@router.get("/{task_id}/logs/{name}", response_class=PlainTextResponse)
def module_log(request: Request, task_id: str, name: str, _: Viewer) -> str:
    """A module's output; the name must be one the task lists (no paths)."""
    with reader(request).connect() as conn:
        folder = conn.execute(select(TASKS.c.folder).where(TASKS.c.id == task_id)).scalar()
    if folder is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such task")
    by_name = {p.name: p for p in _logs(request, folder)}
    if name not in by_name:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such log")
    with by_name[name].open("rb") as fh:
        fh.seek(0, 2)
        fh.seek(max(0, fh.tell() - LOG_LIMIT))
        return str(fh.read().decode("utf-8", "replace"))


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
