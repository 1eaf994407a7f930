"""Rows of the queue written straight into the database: studies, series and tasks in any
state at any time, without routing real images, for the pages that list and act on them."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, insert

from caduceus.core.db.models import EVENTS, SERIES, STUDIES, TASK_TARGETS, TASKS

# The time rows are made at unless a test says otherwise: fixed, so pages show the same.
START = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


def add_study(
    engine: Engine,
    patient_name: str = "Doe^Jane",
    patient_id: str = "P1",
    state: str = "complete",
    at: datetime = START,
) -> tuple[int, str]:
    uid = f"1.2.826.0.1.{uuid.uuid4().int % 10**12}"
    with engine.begin() as conn:
        study_id = conn.execute(
            insert(STUDIES)
            .values(
                study_uid=uid,
                patient_id=patient_id,
                patient_name=patient_name,
                accession_number=f"ACC-{patient_id}",
                study_description="HEAD CT",
                first_received_at=at,
                last_received_at=at,
                state=state,
            )
            .returning(STUDIES.c.id)
        ).scalar_one()
    return int(study_id), uid


def add_series(
    engine: Engine, study_id: int, state: str = "complete", at: datetime = START
) -> tuple[int, str]:
    uid = f"1.2.826.0.2.{uuid.uuid4().int % 10**12}"
    with engine.begin() as conn:
        series_id = conn.execute(
            insert(SERIES)
            .values(
                series_uid=uid,
                study_id=study_id,
                modality="CT",
                series_description="AXIAL 5mm",
                folder=uuid.uuid4().hex,
                first_received_at=at,
                last_received_at=at,
                state=state,
            )
            .returning(SERIES.c.id)
        ).scalar_one()
    return int(series_id), uid


def add_task(
    engine: Engine,
    rule: str,
    state: str,
    action: str = "route",
    study_uid: str = "",
    patient_id: str = "P1",
    at: datetime = START,
    targets: dict[str, str] | None = None,
    **values: Any,
) -> str:
    task_id = str(uuid.uuid4())
    targets = {"pacs": "pending"} if targets is None else targets
    with engine.begin() as conn:
        conn.execute(
            insert(TASKS).values(
                id=task_id,
                group_key=task_id,
                created_at=at,
                updated_at=at,
                rule=rule,
                action=action,
                level="series",
                state=state,
                priority=1,
                attempts=0,
                study_uid=study_uid,
                series_uid="",
                patient_id=patient_id,
                folder=f"tasks/{task_id}",
                targets=list(targets),
                modules=["anonymizer"] if action in ("process", "both") else [],
                info={"id": task_id, "info": {"patient_name": "", "acc": ""}},
                **values,
            )
        )
        for target, target_state in targets.items():
            conn.execute(
                insert(TASK_TARGETS).values(
                    task_id=task_id, target=target, state=target_state, attempts=0, updated_at=at
                )
            )
        conn.execute(
            insert(EVENTS).values(
                at=at, kind="task.created", task_id=task_id, message=f"rule {rule!r}"
            )
        )
    return task_id
