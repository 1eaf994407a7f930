"""The Queue page: what is received, waits, is processed or sent, failed or finished."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from fastapi.responses import HTMLResponse
from sqlalchemy import Engine, select

from caduceus.bookkeeper.search import queue_counts
from caduceus.core.config import store
from caduceus.core.db.models import QUEUE_CONTROLS
from caduceus.web.api.engines import reader
from caduceus.web.pages import queue_detail
from caduceus.web.pages.queue_lists import LEVELS, TABS, QueueQuery, load
from caduceus.web.pages.rendering import PageViewer, fragment, render

router = APIRouter(include_in_schema=False)
router.include_router(queue_detail.router)

Text = Annotated[str, Query(max_length=200)]


def _query(
    tab: Text = "received",
    level: Text = "series",
    patient_name: Text = "",
    patient_id: Text = "",
    accession_number: Text = "",
    modality: Text = "",
    rule: Text = "",
    target: Text = "",
    before: Text = "",
) -> QueueQuery:
    try:
        return QueueQuery(
            tab=tab,
            level=level,
            patient_name=patient_name.strip(),
            patient_id=patient_id.strip(),
            accession_number=accession_number.strip(),
            modality=modality.strip().upper(),
            rule=rule.strip(),
            target=target.strip(),
            before=before,
        )
    except ValueError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc


def _listing(request: Request, query: QueueQuery) -> dict[str, Any]:
    try:
        listing = load(reader(request), query)
    except ValueError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "not a position in this list") from exc
    return {"query": query, "rows": listing.rows, "older": listing.older}


def queue_controls(engine: Engine) -> list[dict[str, Any]]:
    """Every queue an operator can suspend: processing, all sending, and each target's."""
    config = store.current_or_default(engine)
    with engine.connect() as conn:
        stored = {row.name: row for row in conn.execute(select(QUEUE_CONTROLS))}
    names = ["process", "dispatch", *(f"dispatch:{name}" for name in sorted(config.targets))]
    names += sorted(set(stored) - set(names))
    return [
        {
            "name": name,
            "suspended": bool(stored[name].suspended) if name in stored else False,
            "changed_at": stored[name].changed_at if name in stored else None,
            "changed_by": stored[name].changed_by if name in stored else "",
        }
        for name in names
    ]


@router.get("/queue", response_class=HTMLResponse)
def page(
    request: Request, who: PageViewer, query: Annotated[QueueQuery, Depends(_query)]
) -> HTMLResponse:
    return render(
        request,
        "queue.html",
        who,
        "Queue",
        tabs=TABS,
        levels=LEVELS,
        counts=queue_counts(reader(request)),
        controls=queue_controls(reader(request)),
        **_listing(request, query),
    )


@router.get("/queue/rows", response_class=HTMLResponse)
def rows(
    request: Request, who: PageViewer, query: Annotated[QueueQuery, Depends(_query)]
) -> HTMLResponse:
    """The list alone, fetched again every few seconds by the page."""
    return fragment(request, "_queue_rows.html", who=who, **_listing(request, query))
