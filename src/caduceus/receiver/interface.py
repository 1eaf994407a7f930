"""What others may ask of the receiver; the only receiver module the web and the CLI import.

Today that is one thing: store a series made inside caduceus (a module's test run) exactly as
a received one is stored, so everything downstream treats it like any other.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from sqlalchemy import Connection, Engine

from caduceus.core.dicom.header import FIELDS, Header
from caduceus.core.storage import DataRoot
from caduceus.receiver import records
from caduceus.receiver.store import final_path

T = TypeVar("T")


@dataclass(frozen=True)
class StoredSeries:
    """A stored and indexed series: its instances as (instance id, path under the data root),
    and the first instance's header (series, study and patient)."""

    instances: list[tuple[int, str]]
    header: Header


@dataclass(frozen=True)
class _Written:
    path: Path
    header: Header
    size: int


def _header(ds: Dataset) -> Header:
    return Header(**{field: str(ds.get(keyword, "")) for field, keyword in FIELDS.items()})


def _write(root: DataRoot, datasets: Iterable[Dataset]) -> list[_Written]:
    written = []
    for ds in datasets:
        final = final_path(root, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        final.parent.mkdir(parents=True, exist_ok=True)
        temporary = root.temp_path()
        ds.save_as(temporary, enforce_file_format=True)
        os.rename(temporary, final)  # never half-written under its final name
        written.append(_Written(final, _header(ds), final.stat().st_size))
    return written


def _index(
    conn: Connection, root: DataRoot, association: int, written: list[_Written]
) -> StoredSeries:
    instances = []
    for item in written:
        instance_id, _ = records.record_instance(
            conn,
            item.header,
            transfer_syntax=str(ExplicitVRLittleEndian),
            path=root.relative(item.path),
            size=item.size,
            association_id=association,
            series_folder=item.path.parent.name,
        )
        instances.append((instance_id, root.relative(item.path)))
    return StoredSeries(instances, written[0].header)


def store_series(
    engine: Engine,
    root: DataRoot,
    datasets: Iterable[Dataset],
    *,
    ae_title: str,
    peer: str,
    reason: str,
    failure: str,
    then: Callable[[Connection, StoredSeries], T],
) -> T:
    """Store one series of generated datasets (explicit VR little endian) as the receiver
    stores received instances, and return what `then` returns.

    Each file is written under its final name in incoming/, never half-written there. The
    instances are indexed under an association of their own (`ae_title` calling and called,
    `peer` as its host), in one transaction with `then(conn, series)`, in which the caller
    queues its work. The association ends "released" with `reason`. When indexing or `then`
    fails, nothing is indexed, the files are removed, the association ends "aborted" with
    `failure`, and the exception is raised again."""
    root.create()
    written = _write(root, datasets)
    size = sum(item.size for item in written)
    association = records.open_association(engine, ae_title, ae_title, peer, 0, "open")
    try:
        with engine.begin() as conn:
            result = then(conn, _index(conn, root, association, written))
    except Exception:
        records.close_association(engine, association, "aborted", failure, 0, len(written), 0)
        for item in written:
            item.path.unlink(missing_ok=True)
        raise
    records.close_association(engine, association, "released", reason, len(written), 0, size)
    return result
