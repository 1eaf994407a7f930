"""Read-only queries shared by the command line and, later, the API."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Engine, cast, func, select

from caduceus.core.db.models import ASSOCIATIONS, INSTANCES, SERIES, STUDIES


def list_series(engine: Engine, limit: int = 100) -> list[dict[str, Any]]:
    """The most recently received series, newest first, with their senders."""
    se, st, inst, assoc = SERIES, STUDIES, INSTANCES, ASSOCIATIONS
    counts = (
        select(
            inst.c.series_id,
            func.count().label("n"),
            cast(func.sum(inst.c.size_bytes), BigInteger).label("b"),
        )
        .group_by(inst.c.series_id)
        .subquery()
    )
    query = (
        select(
            se.c.id,
            se.c.series_uid,
            se.c.modality,
            se.c.series_number,
            se.c.series_description,
            se.c.first_received_at,
            se.c.last_received_at,
            st.c.study_uid,
            st.c.patient_id,
            st.c.patient_name,
            st.c.accession_number,
            st.c.study_date,
            st.c.study_description,
            func.coalesce(counts.c.n, 0).label("instances"),
            func.coalesce(counts.c.b, 0).label("bytes"),
        )
        .join(st, st.c.id == se.c.study_id)
        .outerjoin(counts, counts.c.series_id == se.c.id)
        .order_by(se.c.last_received_at.desc(), se.c.id.desc())
        .limit(limit)
    )
    with engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(query)]
        ids = [r["id"] for r in rows]
        senders: dict[int, list[dict[str, str]]] = defaultdict(list)
        if ids:
            pairs = conn.execute(
                select(inst.c.series_id, assoc.c.calling_aet, assoc.c.peer_host)
                .join(assoc, assoc.c.id == inst.c.association_id)
                .where(inst.c.series_id.in_(ids))
                .distinct()
            )
            for series_id, aet, host in pairs:
                senders[series_id].append({"ae_title": aet, "host": host})
    for row in rows:
        row["senders"] = sorted(senders[row["id"]], key=lambda s: (s["ae_title"], s["host"]))
        for key in ("first_received_at", "last_received_at"):
            value = row[key]
            row[key] = value.isoformat() if isinstance(value, datetime) else value
    return rows
