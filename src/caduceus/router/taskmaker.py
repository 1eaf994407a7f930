"""Turning a matched rule into a task: its folder of hard links, its task.json, its rows.

Creation is idempotent. The task id is derived from the group key (what was completed, which
generation, which rule), the folder is filled with links that may already exist, and the rows
are inserted with ON CONFLICT DO NOTHING: a router that died half-way and redoes the group ends
with the same single task, never a second one.
"""

from __future__ import annotations

import errno
import json
import os
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection

from caduceus import __version__
from caduceus.core.config.models import Config, Rule
from caduceus.core.db.models import TASK_INSTANCES, TASK_TARGETS, TASKS
from caduceus.core.db.rows import pending_targets
from caduceus.core.db.upsert import insert_or_ignore
from caduceus.core.events import record_event
from caduceus.core.priorities import OFFPEAK, PRIORITY, next_offpeak_start
from caduceus.core.states import TaskState
from caduceus.core.storage import DataRoot

TASK_NAMESPACE = uuid.UUID("6f1c1a52-8d0e-4f4b-9b7e-2f0d1c3a9e11")


@dataclass
class Group:
    """What completed: a series, a study or a patient, with the instances that belong to it."""

    level: str  # series, study, patient
    uid: str  # SeriesInstanceUID, StudyInstanceUID or PatientID
    generation: int
    instances: list[tuple[int, str]]  # (instance id, path relative to the data root)
    study_uid: str = ""
    series_uid: str = ""
    patient_id: str = ""
    series_id: int | None = None  # database ids, so that events link task, series and study
    study_id: int | None = None
    info: dict[str, Any] = field(default_factory=dict)  # patient name, accession, sender, ...
    study: dict[str, Any] | None = None  # task.json "study" part, for study-level groups

    def key(self, rule_name: str) -> str:
        return f"{self.level}:{self.uid}:{self.generation}:{rule_name}"


def task_id_for(key: str) -> str:
    return str(uuid.uuid5(TASK_NAMESPACE, key))


def _task_json(
    task_id: str,
    group: Group,
    rule_name: str,
    rule: Rule,
    targets: list[str],
    config: Config,
    triggered: list[str],
) -> dict[str, Any]:
    modules = list(rule.modules)
    settings = [
        {
            **config.modules[m].settings,
            **(rule.module_settings[i] if i < len(rule.module_settings) else {}),
        }
        for i, m in enumerate(modules)
        if m in config.modules
    ]
    return {
        "id": task_id,
        "info": {
            "action": rule.action,
            "uid": group.uid,
            "uid_type": group.level,
            "triggered_rules": {name: True for name in triggered},
            "applied_rule": rule_name,
            "patient_name": group.info.get("patient_name", ""),
            "mrn": group.patient_id,
            "acc": group.info.get("accession_number", ""),
            "sender_address": group.info.get("sender_address", ""),
            "sender_aet": group.info.get("sender_aet", ""),
            "receiver_aet": group.info.get("receiver_aet", ""),
            "mercure_version": f"caduceus {__version__}",
            "mercure_appliance": "caduceus",
            "mercure_server": os.uname().nodename,
            "device_serial_number": None,
        },
        "dispatch": {"target_name": targets, "retries": None, "next_retry_at": None, "status": {}}
        if targets
        else {},
        "process": {
            "module_name": modules if len(modules) != 1 else modules[0],
            "module_config": None,
            "settings": settings if len(settings) != 1 else settings[0],
            "retain_input_images": rule.retain_input_images,
        }
        if modules
        else {},
        "study": group.study or {},
        "nomad_info": None,
    }


class MissingFile(Exception):
    """A received file the group needs is gone: routing it would send the group half."""


class NoSpace(Exception):
    """The data root is full: the task's folder cannot be written now. Nothing of the group is
    committed, so it stays as it was and a later pass, once there is room, makes the task."""


def _write_json(folder: Path, document: dict[str, Any]) -> None:
    temporary = folder / "task.json.part"
    try:
        temporary.write_text(json.dumps(document, indent=2))
        os.replace(temporary, folder / "task.json")
    except OSError:
        temporary.unlink(missing_ok=True)  # a half-written file would hold space for nothing
        raise


def _fill_folder(root: DataRoot, incoming: Path, group: Group) -> None:
    incoming.mkdir(parents=True, exist_ok=True)
    for _, relative in group.instances:
        source = root.absolute(relative)
        link = incoming / source.name
        try:
            os.link(source, link)
        except FileNotFoundError as exc:
            raise MissingFile(
                f"received file {relative} is missing; the group is not routed"
            ) from exc
        except FileExistsError:
            if not os.path.samefile(source, link):  # a leftover from an older generation
                link.unlink()
                os.link(source, link)


def make_task(
    conn: Connection,
    root: DataRoot,
    config: Config,
    group: Group,
    rule_name: str,
    targets: list[str],
    triggered: list[str],
    now: datetime | None = None,
) -> str:
    """Create (or find) the task for one rule on one group, in the caller's transaction."""
    rule = config.rules[rule_name]
    now = now or datetime.now(UTC)
    key = group.key(rule_name)
    task_id = task_id_for(key)
    folder = root.home / "tasks" / task_id
    incoming = folder / "in"
    document = _task_json(task_id, group, rule_name, rule, targets, config, triggered)
    try:
        _fill_folder(root, incoming, group)
        _write_json(incoming, document)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise NoSpace(f"no room for task {task_id}'s files: {exc.strerror}") from exc

    priority = PRIORITY[rule.priority]
    not_before = None
    if priority == OFFPEAK:
        not_before = next_offpeak_start(
            now, config.settings.offpeak_start, config.settings.offpeak_end
        )
    state = TaskState.DISCARDED if rule.action == "discard" else TaskState.QUEUED
    created = conn.execute(
        insert_or_ignore(conn.dialect.name, TASKS, "id"),
        {
            "id": task_id,
            "group_key": key,
            "created_at": now,
            "updated_at": now,
            "rule": rule_name,
            "action": rule.action,
            "level": group.level,
            "state": state,
            "priority": priority,
            "not_before": not_before,
            "attempts": 0,
            "study_uid": group.study_uid,
            "series_uid": group.series_uid,
            "patient_id": group.patient_id,
            "folder": root.relative(folder),
            "targets": targets,
            "modules": list(rule.modules),
            "info": document,
        },
    ).scalar()
    if created is None:
        return task_id  # made by an earlier, interrupted pass
    conn.execute(
        TASK_INSTANCES.insert(),
        [{"task_id": task_id, "instance_id": instance_id} for instance_id, _ in group.instances],
    )
    if targets and state == TaskState.QUEUED:
        conn.execute(TASK_TARGETS.insert(), pending_targets(task_id, targets, now))
    record_event(
        conn,
        "task.created",
        f"rule {rule_name!r} ({rule.action}) on {group.level} {group.uid}",
        task_id=task_id,
        series_id=group.series_id,
        study_id=group.study_id,
        details={
            "rule": rule_name,
            "action": rule.action,
            "targets": targets,
            "modules": list(rule.modules),
            "instances": len(group.instances),
            "generation": group.generation,
            "priority": rule.priority,
            "not_before": not_before.isoformat() if not_before else None,
        },
    )
    return task_id
