"""The services: their heartbeats, the throughput they achieve, the disk, and their logs."""

from __future__ import annotations

import re
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request, status

from caduceus.bookkeeper import overview
from caduceus.bookkeeper.throughput import Window, throughput
from caduceus.core import logfiles
from caduceus.core.config import store
from caduceus.core.heartbeat import SILENT_AFTER, service_states
from caduceus.core.service_names import SERVICES
from caduceus.web.api.engines import reader
from caduceus.web.auth import Viewer

router = APIRouter(prefix="/api", tags=["services"])

# Task ids are UUIDs; a little more leeway for ids given by outside tools, nothing else.
TASK_FILTER = r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,99}$"
Level = Literal["debug", "info", "warning", "error", "critical"]


@router.get("/services")
def services(request: Request, _: Viewer) -> dict[str, Any]:
    """Every service process that beat: running, silent (no beat for a while), stopped or
    restarting, with its host, pid, start, last beat and restarts."""
    found = service_states(reader(request))
    return {
        "services": list(SERVICES),
        "silent_after_seconds": SILENT_AFTER.total_seconds(),
        "processes": [asdict(state) for state in found],
    }


@router.get("/throughput")
def throughput_route(
    request: Request, _: Viewer, hours: Annotated[int, Query(ge=1, le=24)] = 6
) -> dict[str, Any]:
    """Instances received and instances dispatched per 10 minutes over the last hours."""
    window = Window.last(hours)
    found = throughput(reader(request), window)
    return {
        "since": window.since,
        "until": window.until,
        "bucket_seconds": int(window.bucket.total_seconds()),
        "buckets": [
            {"start": start, "received": got, "dispatched": sent}
            for start, got, sent in zip(
                window.starts(), found.received, found.dispatched, strict=True
            )
        ],
    }


@router.get("/disk")
def disk(request: Request, _: Viewer) -> dict[str, Any]:
    """The data root's disk, and the cleaner's water marks."""
    settings = store.current_or_default(reader(request)).settings
    found = overview.disk(request.app.state.settings.home, settings)
    return {**asdict(found), "state": found.state}


@router.get("/logs")
def log_list(request: Request, _: Viewer) -> list[dict[str, Any]]:
    """The services that have a log file in the data root."""
    return [
        {
            "service": found.service,
            "size": found.size,
            "modified": datetime.fromtimestamp(found.modified, UTC),
        }
        for found in logfiles.log_files(request.app.state.settings.home)
    ]


@router.get("/logs/{service}")
def log_lines(
    request: Request,
    service: str,
    _: Viewer,
    task: Annotated[str | None, Query(pattern=TASK_FILTER)] = None,
    lines: Annotated[int, Query(ge=1, le=2000)] = 200,
    level: Level | None = None,
) -> dict[str, Any]:
    """A service's newest log lines (JSON objects, newest first), of one task and at least
    one level if asked."""
    # Only a name from the list becomes part of a path.
    if service not in logfiles.LOG_NAMES:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no service {_safe(service)!r}")
    found = logfiles.read_log(
        request.app.state.settings.home, service, lines=lines, task=task, level=level
    )
    return {"service": service, "task": task, "level": level, "lines": found}


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-]", "?", text)[:40]
