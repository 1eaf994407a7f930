"""Read the history: series, studies and events; register outside events; force a study."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from pydantic import BaseModel, Field
from sqlalchemy import Table, select

from caduceus.bookkeeper.search import (
    EventFilter,
    StudyFilter,
    list_events,
    search_series,
    search_studies,
)
from caduceus.core.config import store
from caduceus.core.db.models import SERIES, STUDIES
from caduceus.core.events import record_event
from caduceus.core.ids import RowId
from caduceus.core.rules import Budget
from caduceus.core.states import SeriesState
from caduceus.core.storage import DataRoot
from caduceus.router.interface import NoSpace
from caduceus.router.interface import force_complete as force_complete_now
from caduceus.web.api.engines import reader, writer
from caduceus.web.auth import Operator, Viewer, visible_events

router = APIRouter(prefix="/api", tags=["history"])

Limit = Annotated[int, Query(ge=1, le=500)]
# Deep pages cost a scan of everything before them: narrow the filters instead.
Offset = Annotated[int, Query(ge=0, le=100_000)]


# The filters' fields are the routes' query parameters (FastAPI reads the dataclass).
Studies = Annotated[StudyFilter, Depends()]


@router.get("/series")
def series(
    request: Request,
    _: Viewer,
    where: Studies,
    series_uid: str = "",
    modality: str = "",
    limit: Limit = 50,
    offset: Offset = 0,
) -> list[dict[str, Any]]:
    """Received series, newest first; every filter is optional, names match by prefix."""
    return search_series(reader(request), where, series_uid, modality, limit, offset)


@router.get("/series/{series_id}")
def one_series(request: Request, series_id: RowId, _: Viewer) -> dict[str, Any]:
    with reader(request).connect() as conn:
        row = conn.execute(select(SERIES).where(SERIES.c.id == series_id)).first()
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such series")
    found = dict(row._mapping)
    found["events"] = list_events(reader(request), EventFilter(series_id=series_id), 200)
    return found


@router.get("/studies")
def studies(
    request: Request, _: Viewer, where: Studies, limit: Limit = 50, offset: Offset = 0
) -> list[dict[str, Any]]:
    return search_studies(reader(request), where, limit, offset)


@router.get("/studies/{study_id}")
def one_study(request: Request, study_id: RowId, _: Viewer) -> dict[str, Any]:
    engine = reader(request)
    with engine.connect() as conn:
        row = conn.execute(select(STUDIES).where(STUDIES.c.id == study_id)).first()
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such study")
    found = dict(row._mapping)
    found["series"] = search_series(engine, StudyFilter(study_uid=row.study_uid), limit=500)
    found["events"] = list_events(engine, EventFilter(study_id=study_id), 200)
    return found


@router.post("/studies/{study_id}/force-complete")
def force_complete(request: Request, study_id: RowId, who: Operator) -> dict[str, Any]:
    """Complete a study now instead of waiting for its timer; its rules run at once."""
    return _force_complete(request, who, "study", study_id, STUDIES)


@router.post("/series/{series_id}/force-complete")
def force_complete_series(request: Request, series_id: RowId, who: Operator) -> dict[str, Any]:
    """Complete a series now instead of waiting for its quiet time; its rules run at once."""
    return _force_complete(request, who, "series", series_id, SERIES)


def _force_complete(
    request: Request, who: Operator, level: Literal["series", "study"], key: int, table: Table
) -> dict[str, Any]:
    """An operator's completion of a study or series that is still receiving."""
    engine = reader(request)
    with engine.connect() as conn:
        state = conn.execute(select(table.c.state).where(table.c.id == key)).scalar()
    if state is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no such {level}")
    if state != SeriesState.RECEIVING:
        raise HTTPException(status.HTTP_409_CONFLICT, f"the {level} is {state}, not receiving")
    settings = request.app.state.settings
    config = store.current_or_default(engine)
    try:
        result = force_complete_now(
            writer(request), DataRoot(settings.home), Budget.of(settings), config, level, key
        )
    except NoSpace as exc:
        # Nothing of the group was committed: it stays receiving and can be completed later.
        raise HTTPException(
            status.HTTP_507_INSUFFICIENT_STORAGE, f"the data root is full; try again later ({exc})"
        ) from exc
    with writer(request).begin() as conn:
        refs: dict[str, Any] = {f"{level}_id": key}  # study_id or series_id
        record_event(conn, f"{level}.force_completed", f"by {who.username}", **refs)
    return {"completed": result.completed, "tasks": result.tasks}


@router.get("/events")
def events(
    request: Request, who: Viewer, where: Annotated[EventFilter, Depends()], limit: Limit = 100
) -> list[dict[str, Any]]:
    """The history, newest first; `kind` ending in "." matches a family ("dispatch.").
    The user name tried in a failed login is shown to admins only."""
    return visible_events(list_events(reader(request), where, limit), who)


class OutsideEvent(BaseModel):
    """An event from outside software (a PACS, a reporting tool), like mercure's bookkeeper."""

    kind: str = Field(pattern=r"^[a-z0-9][a-z0-9_.\-]{0,63}$")
    message: str = Field(default="", max_length=4000)
    severity: str = Field(default="info", pattern=r"^(info|warning|error)$")
    task_id: str | None = Field(default=None, max_length=36)
    details: dict[str, Any] | None = None


@router.post("/events", status_code=status.HTTP_201_CREATED)
def register_event(request: Request, event: OutsideEvent, who: Operator) -> dict[str, str]:
    """Recorded as `external.<kind>`, so outside events never pass for our own."""
    kind = f"external.{event.kind}"
    with writer(request).begin() as conn:
        record_event(
            conn,
            kind,
            event.message,
            severity=event.severity,
            task_id=event.task_id,
            details={**(event.details or {}), "registered_by": who.username},
        )
    return {"kind": kind}
