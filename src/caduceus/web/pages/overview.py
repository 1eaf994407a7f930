"""The Overview page: services, throughput charts, queues, disk and recent errors.

The status part (services, queues, disk, errors) and the charts are fragments of their own,
refreshed by app.js at different paces; the page renders both once, in place.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from sqlalchemy import Engine

from caduceus.bookkeeper import overview
from caduceus.bookkeeper.throughput import Window, throughput
from caduceus.core.config import store
from caduceus.core.heartbeat import SILENT_AFTER, ServiceState, service_states
from caduceus.core.service_names import SERVICES
from caduceus.web.api.engines import reader
from caduceus.web.pages.charts import BarChart, bar_chart
from caduceus.web.pages.rendering import PageViewer, fragment, render
from caduceus.web.pages.times import configured_zone

router = APIRouter(include_in_schema=False)

HOURS = (6, 24)


@dataclass(frozen=True)
class ServiceRow:
    service: str
    processes: list[ServiceState]  # empty: this service never beat here


def _services(engine: Engine) -> list[ServiceRow]:
    found = service_states(engine)
    known = [ServiceRow(name, [p for p in found if p.service == name]) for name in SERVICES]
    # A service that runs from a newer version, say, is shown too.
    others = sorted({p.service for p in found} - set(SERVICES))
    return known + [ServiceRow(name, [p for p in found if p.service == name]) for name in others]


def _status(request: Request) -> dict[str, Any]:
    engine = reader(request)
    settings = store.current_or_default(engine).settings
    return {
        "services": _services(engine),
        "silent_after": int(SILENT_AFTER.total_seconds()),
        "queues": overview.queues(engine),
        "disk": overview.disk(request.app.state.settings.home, settings),
        "errors": overview.recent_errors(engine),
        "now": datetime.now(UTC),
    }


def _charts(request: Request, asked: str) -> dict[str, Any]:
    hours = int(asked) if asked.isdigit() and int(asked) in HOURS else HOURS[0]
    window = Window.last(hours)
    found = throughput(reader(request), window)
    starts = window.starts()
    shown = configured_zone(request)
    charts: list[BarChart] = [
        bar_chart(
            "received",
            "Instances received",
            "instances received",
            starts,
            found.received,
            window.bucket,
            shown.zone,
            shown.name,
        ),
        bar_chart(
            "dispatched",
            "Instances dispatched",
            "instances sent to targets",
            starts,
            found.dispatched,
            window.bucket,
            shown.zone,
            shown.name,
        ),
    ]
    return {"charts": charts, "hours": hours}


@router.get("/", response_class=HTMLResponse)
def page(request: Request, who: PageViewer, hours: str = "") -> HTMLResponse:
    return render(
        request,
        "overview.html",
        who,
        "Overview",
        hour_choices=HOURS,
        **_status(request),
        **_charts(request, hours),
    )


@router.get("/overview/status", response_class=HTMLResponse)
def status_fragment(request: Request, who: PageViewer) -> HTMLResponse:
    return fragment(request, "_overview_status.html", **_status(request))


@router.get("/overview/charts", response_class=HTMLResponse)
def charts_fragment(request: Request, who: PageViewer, hours: str = "") -> HTMLResponse:
    return fragment(request, "_overview_charts.html", **_charts(request, hours))
