"""The Queue page's lists: which rows a tab shows, for which filters, from which position.

Every list is newest first and pages with "older than" positions (bookkeeper.search.position),
so a page deep in a hundred thousand finished tasks costs what the first page costs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any
from urllib.parse import urlencode

from sqlalchemy import Engine

from caduceus.bookkeeper.search import (
    StudyFilter,
    TaskFilter,
    position,
    search_patients,
    search_series,
    search_studies,
    search_tasks,
)
from caduceus.core.states import SeriesState

PAGE_SIZE = 50


@dataclass(frozen=True)
class Tab:
    name: str
    label: str
    counted: str = ""  # the queue_counts() entry shown beside the label


TABS = (
    Tab("received", "Received"),
    Tab("waiting", "Waiting for completion", "waiting"),
    Tab("processing", "Processing", "processing"),
    Tab("dispatching", "Dispatching", "dispatching"),
    Tab("failed", "Failed", "failed"),
    Tab("finished", "Finished"),
    Tab("all", "All tasks"),
)
TAB_NAMES = frozenset(tab.name for tab in TABS)
# What waits for completion: the three groupings the router completes.
LEVELS = (("series", "Series"), ("studies", "Studies"), ("patients", "Patients"))
LEVEL_NAMES = frozenset(name for name, _ in LEVELS)
TASK_TABS = frozenset({"processing", "dispatching", "failed", "finished", "all"})


@dataclass(frozen=True)
class QueueQuery:
    """The page's query parameters: a view can be bookmarked and shared."""

    tab: str = "received"
    level: str = "series"
    patient_name: str = ""
    patient_id: str = ""
    accession_number: str = ""
    modality: str = ""
    rule: str = ""
    target: str = ""
    before: str = ""

    def __post_init__(self) -> None:
        if self.tab not in TAB_NAMES:
            raise ValueError(f"no tab {self.tab!r}")
        if self.level not in LEVEL_NAMES:
            raise ValueError(f"no level {self.level!r}")

    @property
    def kind(self) -> str:
        """What the list holds: tasks, series, studies or patients."""
        if self.tab in TASK_TABS:
            return "tasks"
        return self.level if self.tab == "waiting" else "series"

    def url(self, path: str = "/queue", **changes: str) -> str:
        """This view's address with some parameters changed; empty ones are left out."""
        values = asdict(replace(self, **changes))
        if values["tab"] != "waiting":
            values["level"] = ""
        return path + "?" + urlencode({k: v for k, v in values.items() if v})


@dataclass(frozen=True)
class Listing:
    rows: list[dict[str, Any]]
    older: str  # the position of the next page, "" on the last one


def _studies_filter(query: QueueQuery) -> StudyFilter:
    return StudyFilter(
        patient_id=query.patient_id,
        patient_name=query.patient_name,
        accession_number=query.accession_number,
    )


def load(engine: Engine, query: QueueQuery, size: int = PAGE_SIZE) -> Listing:
    """The rows of one page; ValueError for a position that is no position."""
    # One row more than shown tells whether an older page exists, without counting.
    more = size + 1
    waiting = SeriesState.RECEIVING if query.tab == "waiting" else ""
    if query.kind == "tasks":
        where = TaskFilter(
            view="" if query.tab == "all" else query.tab,
            rule=query.rule,
            target=query.target,
            patient_id=query.patient_id,
            patient_name=query.patient_name,
            accession_number=query.accession_number,
            before=query.before,
        )
        rows = search_tasks(engine, where, more)
        moment, key = "created_at", "id"
    elif query.kind == "patients":
        rows = search_patients(
            engine, waiting, query.patient_id, query.before, more, query.patient_name
        )
        moment, key = "last_activity", "patient_id"
    elif query.kind == "studies":
        rows = search_studies(
            engine, _studies_filter(query), more, state=waiting, before=query.before
        )
        moment, key = "last_received_at", "id"
    else:
        rows = search_series(
            engine,
            _studies_filter(query),
            modality=query.modality,
            limit=more,
            state=waiting,
            before=query.before,
        )
        moment, key = "last_received_at", "id"
    if len(rows) <= size:
        return Listing(rows, "")
    rows = rows[:size]
    return Listing(rows, position(rows[-1][moment], rows[-1][key]))
