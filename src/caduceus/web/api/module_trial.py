"""A module's test run: a small generated series, made into a task for this module alone.

The task is made exactly as the router makes one (router.taskmaker.make_task): a folder
under tasks/, task.json, the task's rows and its history, so the processor runs it like any
other and its logs and results appear where every task's do. Its rule name,
"module test: NAME", names no configured rule: nothing is sent anywhere afterwards.

The series is stored and indexed as the receiver would store it, under a recorded
association of its own (peer "module test"), so the history says where the images came
from. It is marked complete in the same transaction that indexes it: the router never sees
it arrive and never applies the real rules to it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from sqlalchemy import Column, Connection, Engine, update

from caduceus.core.config import store
from caduceus.core.config.models import Config, Rule
from caduceus.core.db.models import SERIES, STUDIES
from caduceus.core.dicom.header import FIELDS, Header
from caduceus.core.dicom.synthetic import SeriesSpec, generate
from caduceus.core.storage import DataRoot
from caduceus.receiver import records
from caduceus.receiver.store import final_path
from caduceus.router.taskmaker import Group, make_task

PEER = "module test"
INSTANCES = 3


def rule_name_for(module: str) -> str:
    return f"module test: {module}"


@dataclass(frozen=True)
class _Stored:
    path: Path
    header: Header
    size: int


def _header(ds: Dataset) -> Header:
    return Header(**{field: str(ds.get(keyword, "")) for field, keyword in FIELDS.items()})


def _write_series(root: DataRoot, module: str) -> list[_Stored]:
    spec = SeriesSpec(
        count=INSTANCES,
        rows=32,
        columns=32,
        patient_id="MODULE-TEST",
        patient_name="Module^Test",
        study_description="caduceus module test",
        series_description=rule_name_for(module),
        study_uid=generate_uid(),
        series_uid=generate_uid(),
        accession_number="",
    )
    stored = []
    for ds in generate(spec):
        final = final_path(root, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        final.parent.mkdir(parents=True, exist_ok=True)
        temporary = root.temp_path()
        ds.save_as(temporary, enforce_file_format=True)
        os.rename(temporary, final)  # never half-written under its final name
        stored.append(_Stored(final, _header(ds), final.stat().st_size))
    return stored


def _complete(conn: Connection, uid_column: Column[str], uid: str) -> int:
    """Mark a series or study complete (as the router would have); returns its id."""
    table = uid_column.table
    done = conn.execute(
        update(table)
        .where(uid_column == uid)
        .values(state="complete", generation=1, completed_at=datetime.now(UTC))
        .returning(table.c.id)
    ).scalar_one()
    return int(done)


def _index_and_queue(
    conn: Connection,
    root: DataRoot,
    config: Config,
    module: str,
    association: int,
    files: list[_Stored],
) -> str:
    rule_name = rule_name_for(module)
    # make_task reads the rule from the configuration: a private copy gets one that runs
    # just this module; the stored configuration is not changed.
    trial = config.model_copy(deep=True)
    trial.rules[rule_name] = Rule(
        rule="False", action="process", modules=[module], priority="urgent"
    )
    instances = []
    for item in files:
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
    first = files[0].header
    series_id = _complete(conn, SERIES.c.series_uid, first.series_uid)
    study_id = _complete(conn, STUDIES.c.study_uid, first.study_uid)
    group = Group(
        level="series",
        uid=first.series_uid,
        generation=1,
        instances=instances,
        study_uid=first.study_uid,
        series_uid=first.series_uid,
        patient_id=first.patient_id,
        series_id=series_id,
        study_id=study_id,
        info={"patient_name": first.patient_name, "sender_address": PEER},
    )
    return make_task(conn, root, trial, group, rule_name, [], [rule_name])


def start_trial(engine: Engine, root: DataRoot, module: str, ae_title: str) -> str:
    """Queue a test run of `module`; returns the task's id."""
    config = store.current_or_default(engine)
    root.create()
    files = _write_series(root, module)
    size = sum(item.size for item in files)
    association = records.open_association(engine, ae_title, ae_title, PEER, 0, "open")
    try:
        with engine.begin() as conn:
            task_id = _index_and_queue(conn, root, config, module, association, files)
    except Exception:
        records.close_association(
            engine, association, "aborted", "the test run could not be queued", 0, len(files), 0
        )
        for item in files:
            item.path.unlink(missing_ok=True)
        raise
    records.close_association(
        engine,
        association,
        "released",
        f"a generated series for a test run of module {module!r}",
        len(files),
        0,
        size,
    )
    return task_id
