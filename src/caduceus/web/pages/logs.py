"""The Logs page: a service's newest log lines (or all services' together), by task and level.

The filters are the page's query parameters, so a view can be bookmarked; the lines are a
fragment that refreshes itself. Every value in a line is escaped by the template.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse

from caduceus.core import logfiles
from caduceus.web.api.services import TASK_FILTER
from caduceus.web.pages.rendering import PageViewer, fragment, render

router = APIRouter(include_in_schema=False)

LINE_CHOICES = (100, 200, 500, 1000)
ALL = "all"


@dataclass(frozen=True)
class LogLine:
    time: str
    level: str
    service: str
    pid: str
    task: str
    series: str
    message: str
    traceback: str


def _text(value: object) -> str:
    return "" if value is None else str(value)


def _line(entry: dict[str, Any]) -> LogLine:
    stamp = _text(entry.get("ts"))
    level = _text(entry.get("level")).lower()
    return LogLine(
        # 2026-01-02T03:04:05.678+00:00: the page shows it in the configured zone
        time=stamp,
        level=level if level in logfiles.LEVELS else "info",
        service=_text(entry.get("service")),
        pid=_text(entry.get("pid")),
        task=_text(entry.get("task")),
        series=_text(entry.get("series")),
        message=_text(entry.get("msg")),
        traceback=_text(entry.get("exc")),
    )


def _view(
    request: Request, service: str = ALL, task: str = "", level: str = "", lines: str = ""
) -> dict[str, Any]:
    """The filters from the query (anything odd falls back to a default), and the lines."""
    home = request.app.state.settings.home
    files = logfiles.log_files(home)
    problems = []
    # Only names from the list ever reach a path.
    if service != ALL and service not in logfiles.LOG_NAMES:
        if service:
            problems.append("There is no such service; showing all services.")
        service = ALL
    task = task.strip()
    if task and not re.match(TASK_FILTER, task):
        problems.append("That is not a task ID; the task filter is off.")
        task = ""
    level = level if level in logfiles.LEVELS else ""
    count = int(lines) if lines.isdigit() and int(lines) in LINE_CHOICES else LINE_CHOICES[1]
    chosen = logfiles.LOG_NAMES if service == ALL else (service,)
    entries = logfiles.read_logs(home, chosen, lines=count, task=task or None, level=level or None)
    query = {"service": service, "task": task, "level": level, "lines": str(count)}
    return {
        "files": files,
        "names": logfiles.LOG_NAMES,
        "levels": logfiles.LEVELS,
        "line_choices": LINE_CHOICES,
        "service": service,
        "task": task,
        "level": level,
        "lines": count,
        "entries": [_line(entry) for entry in entries],
        "problems": problems,
        "query": query,
    }


# After the user's dependency in each route: a visitor is sent to the login before any read.
View = Annotated[dict[str, Any], Depends(_view)]


@router.get("/logs", response_class=HTMLResponse)
def page(request: Request, who: PageViewer, view: View) -> HTMLResponse:
    return render(request, "logs.html", who, "Logs", **view)


@router.get("/logs/lines", response_class=HTMLResponse)
def lines_fragment(request: Request, who: PageViewer, view: View) -> HTMLResponse:
    return fragment(request, "_logs_lines.html", **view)
