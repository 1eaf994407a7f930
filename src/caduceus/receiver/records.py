"""The receiver's database writes: associations, and each instance with its series and study."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, delete, insert, literal, select, update

from caduceus.core.db.models import ASSOCIATIONS, EVENTS, INSTANCES, SERIES, STUDIES
from caduceus.core.db.upsert import insert_or_ignore, insert_or_update
from caduceus.core.dicom.header import Header
from caduceus.core.events import record_event
from caduceus.core.states import SeriesState


def now() -> datetime:
    return datetime.now(UTC)


def open_association(
    engine: Engine,
    calling: str,
    called: str,
    host: str,
    port: int,
    status: str,
    reason: str = "",
    *,
    tls: bool = False,
) -> int:
    with engine.begin() as conn:
        result = conn.execute(
            insert(ASSOCIATIONS)
            .values(
                started_at=now(),
                ended_at=now() if status == "rejected" else None,
                calling_aet=calling,
                called_aet=called,
                peer_host=host,
                peer_port=port,
                tls=tls,
                status=status,
                reason=reason or None,
                instances_stored=0,
                instances_failed=0,
                bytes_stored=0,
            )
            .returning(ASSOCIATIONS.c.id)
        )
        association_id = int(result.scalar_one())
        if status == "rejected":
            record_event(
                conn,
                "association.rejected",
                reason,
                severity="warning",
                association_id=association_id,
                details={"calling_aet": calling, "called_aet": called, "peer": host},
            )
        return association_id


def close_association(
    engine: Engine,
    association_id: int,
    status: str,
    reason: str,
    stored: int,
    failed: int,
    size: int,
) -> None:
    with engine.begin() as conn:
        conn.execute(
            update(ASSOCIATIONS)
            .where(ASSOCIATIONS.c.id == association_id)
            .values(
                ended_at=now(),
                status=status,
                reason=reason or None,
                instances_stored=stored,
                instances_failed=failed,
                bytes_stored=size,
            )
        )
        if status == "aborted":
            record_event(
                conn,
                "association.aborted",
                reason,
                severity="warning",
                association_id=association_id,
            )


def forget_association(engine: Engine, association_id: int) -> None:
    """Remove an association that carried no message (it is counted in a summary instead)."""
    with engine.begin() as conn:
        conn.execute(delete(ASSOCIATIONS).where(ASSOCIATIONS.c.id == association_id))


@dataclass(frozen=True, slots=True)
class Previous:
    """What a duplicate replaced."""

    path: str
    size_bytes: int
    received_at: datetime
    association_id: int | None


_STUDY_COLUMNS = (
    "study_uid",
    "patient_id",
    "patient_name",
    "patient_birth_date",
    "patient_sex",
    "accession_number",
    "study_date",
    "study_time",
    "study_description",
)
_SERIES_COLUMNS = ("series_uid", "modality", "series_number", "series_description", "body_part")


@cache
def _statements(dialect: str) -> dict[str, Any]:
    """The hot path's statements, built once: building them costs more than running them."""
    study_values: dict[str, Any] = {c: bindparam(c) for c in _STUDY_COLUMNS}
    series_values: dict[str, Any] = {c: bindparam(c) for c in _SERIES_COLUMNS}
    # Every arrival (re)opens its series and study: the router completes them after a quiet time.
    at: dict[str, Any] = {
        "first_received_at": bindparam("at"),
        "last_received_at": bindparam("at"),
        "state": literal(SeriesState.RECEIVING.value),
    }
    return {
        "study": insert_or_update(
            dialect, STUDIES, {**study_values, **at}, "study_uid", ["last_received_at", "state"]
        ),
        "series": insert_or_update(
            dialect,
            SERIES,
            {
                **series_values,
                **at,
                "study_id": bindparam("study_id"),
                "folder": bindparam("folder"),
            },
            "series_uid",
            ["last_received_at", "state"],
        ),
        "find": select(
            INSTANCES.c.id,
            INSTANCES.c.path,
            INSTANCES.c.size_bytes,
            INSTANCES.c.received_at,
            INSTANCES.c.association_id,
        )
        .where(INSTANCES.c.sop_instance_uid == bindparam("sop_instance_uid"))
        .with_for_update(),
        "insert": insert_or_ignore(dialect, INSTANCES, "sop_instance_uid"),
        "update": update(INSTANCES).where(INSTANCES.c.id == bindparam("old_id")),
    }


def record_instance(
    conn: Connection,
    header: Header,
    *,
    transfer_syntax: str,
    path: str,
    size: int,
    association_id: int,
    series_folder: str,
) -> tuple[int, Previous | None]:
    """Record an instance, its series and its study, in the caller's transaction."""
    at = now()
    sql = _statements(conn.dialect.name)
    study_id = conn.execute(
        sql["study"],
        {
            **{c: getattr(header, c) for c in _STUDY_COLUMNS[1:]},
            "study_uid": header.study_uid,
            "at": at,
        },
    ).scalar_one()
    series_id = conn.execute(
        sql["series"],
        {
            "series_uid": header.series_uid,
            "modality": header.modality,
            "series_number": header.series_number,
            "series_description": header.series_description,
            "body_part": header.body_part,
            "study_id": study_id,
            "folder": series_folder,
            "at": at,
        },
    ).scalar_one()
    values = {
        "sop_class_uid": header.sop_class_uid,
        "series_id": series_id,
        "association_id": association_id,
        "transfer_syntax_uid": transfer_syntax,
        "instance_number": header.instance_number,
        "path": path,
        "size_bytes": size,
        "received_at": at,
    }
    instance_id = conn.execute(
        sql["insert"], {"sop_instance_uid": header.sop_instance_uid, **values}
    ).scalar()
    if instance_id is not None:
        return int(instance_id), None
    old = conn.execute(sql["find"], {"sop_instance_uid": header.sop_instance_uid}).one()
    conn.execute(sql["update"], {"old_id": old.id, **values})
    previous = Previous(old.path, old.size_bytes, old.received_at, old.association_id)
    record_event(
        conn,
        "instance.duplicate",
        "a second copy of this SOP instance arrived; the newest one is kept",
        severity="warning",
        instance_id=old.id,
        series_id=series_id,
        study_id=study_id,
        association_id=association_id,
        details={
            "sop_instance_uid": header.sop_instance_uid,
            "previous": {
                "received_at": old.received_at.isoformat(),
                "size_bytes": old.size_bytes,
                "association_id": old.association_id,
            },
            "kept": {"received_at": at.isoformat(), "size_bytes": size},
        },
    )
    return int(old.id), previous


def record_refusals(
    engine: Engine, association_id: int, reason: str, details: dict[str, Any]
) -> int:
    """The event that stands for one association's refusals of one kind; returns its id."""
    with engine.begin() as conn:
        return int(
            conn.execute(
                insert(EVENTS)
                .values(
                    at=now(),
                    kind="instance.refused",
                    severity="error",
                    message=reason,
                    details=details,
                    association_id=association_id,
                )
                .returning(EVENTS.c.id)
            ).scalar_one()
        )


def update_refusals(engine: Engine, event_id: int, details: dict[str, Any]) -> None:
    """More refusals of the same kind in the same association: the count and the UIDs grow."""
    with engine.begin() as conn:
        conn.execute(update(EVENTS).where(EVENTS.c.id == event_id).values(details=details))
