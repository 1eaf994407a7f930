"""What a notification's templates see: the event, its task and the rule, from the database.

Patient data (name, patient ID/MRN, accession number, and the study and series UIDs) is in the
context only when the settings allow it (`notifications_include_phi`); otherwise the variables
exist and read "[hidden]", so that a template works either way.
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, func, select

from caduceus.core.clock import as_utc
from caduceus.core.db.models import EVENTS, TASK_INSTANCES, TASK_TARGETS, TASKS
from caduceus.core.states import TargetState

HIDDEN = "[hidden]"
# The names mercure gives its events in templates ({{ event }}).
EVENT_NAMES = {"reception": "RECEIVED", "completion": "COMPLETED", "error": "ERROR"}
PHI_FIELDS = (
    "patient_name",
    "mrn",
    "patient_id",
    "acc",
    "accession_number",
    "uid",
    "study_uid",
    "series_uid",
)


class Gone(Exception):
    """The event or the task the notification is about is no longer in the database."""


def _utc(value: datetime | None) -> datetime | None:
    return None if value is None else as_utc(value)


def _iso(value: datetime | None) -> str:
    stamp = _utc(value)
    return stamp.isoformat() if stamp else ""


def template_context(
    conn: Connection, notification: Row[Any], include_phi: bool, now: datetime
) -> dict[str, Any]:
    """The variables for one notification (a row of the notifications table)."""
    event = conn.execute(select(EVENTS).where(EVENTS.c.id == notification.event_id)).first()
    if event is None:
        raise Gone(f"event {notification.event_id} is no longer in the history")
    task = None
    if notification.task_id:
        task = conn.execute(select(TASKS).where(TASKS.c.id == notification.task_id)).first()
        if task is None:
            raise Gone(f"task {notification.task_id} is no longer in the database")
    trigger = notification.trigger
    details = event.details or {}
    context: dict[str, Any] = {
        "event": EVENT_NAMES.get(trigger, trigger.upper()),
        "trigger": trigger,
        "event_kind": event.kind,
        "event_id": event.id,
        "event_time": _iso(event.at),
        "rule": notification.rule,
        "channel": notification.channel,
        "notification_id": notification.id,
        "time": _iso(now),
        "server": os.uname().nodename,
        "target": str(details.get("target") or ""),
        "module": str(details.get("module") or ""),
        "error": event.message if trigger == "error" else "",
        # mercure's only free-text variable; kept for templates written for mercure.
        "details": "",
        "body": "",
    }
    context.update(_task_part(conn, task))
    context["details"] = context["error"] or context["notification_text"]
    if include_phi:
        context["phi_included"] = True
    else:
        context.update(dict.fromkeys(PHI_FIELDS, HIDDEN))
        context["phi_included"] = False
    return context


def _task_part(conn: Connection, task: Row[Any] | None) -> dict[str, Any]:
    """The task's fields a notification may use, under mercure's names where it has them.

    Every field is there even without a task (empty), so that a template written for one
    trigger renders for all; the PHI fields are filled here and masked by the caller when
    the rule does not include PHI.
    """
    if task is None:
        return {
            "task_id": "",
            "task_state": "",
            "task_error": "",
            "action": "",
            "uid_type": "",
            "targets": [],
            "targets_done": [],
            "targets_failed": [],
            "modules": [],
            "instances": 0,
            "files": 0,
            "task_created": "",
            "task_updated": "",
            "notification_text": "",
            "notification_requested": False,
            "sender_aet": "",
            "receiver_aet": "",
            **dict.fromkeys(PHI_FIELDS, ""),
        }
    info = (task.info or {}).get("info") or {}
    targets = conn.execute(
        select(TASK_TARGETS.c.target, TASK_TARGETS.c.state)
        .where(TASK_TARGETS.c.task_id == task.id)
        .order_by(TASK_TARGETS.c.target)
    ).all()
    instances = conn.execute(
        select(func.count()).where(TASK_INSTANCES.c.task_id == task.id)
    ).scalar_one()
    requests = conn.execute(
        select(EVENTS.c.message, EVENTS.c.details)
        .where(EVENTS.c.task_id == task.id, EVENTS.c.kind == "process.notification")
        .order_by(EVENTS.c.id)
    ).all()
    return {
        "task_id": task.id,
        "task_state": task.state,
        "task_error": task.error or "",
        "action": task.action,
        "uid_type": task.level,
        "targets": [t.target for t in targets] or list(task.targets or []),
        "targets_done": [t.target for t in targets if t.state == TargetState.DONE],
        "targets_failed": [t.target for t in targets if t.state == TargetState.ERROR],
        "modules": list(task.modules or []),
        "instances": int(instances),
        "files": task.file_count if task.file_count is not None else int(instances),
        "task_created": _iso(task.created_at),
        "task_updated": _iso(task.updated_at),
        "notification_text": "\n".join(r.message for r in requests if r.message),
        "notification_requested": any((r.details or {}).get("requested") for r in requests),
        "sender_aet": str(info.get("sender_aet") or ""),
        "receiver_aet": str(info.get("receiver_aet") or ""),
        "patient_name": str(info.get("patient_name") or ""),
        "mrn": str(info.get("mrn") or task.patient_id or ""),
        "patient_id": str(info.get("mrn") or task.patient_id or ""),
        "acc": str(info.get("acc") or ""),
        "accession_number": str(info.get("acc") or ""),
        "uid": str(info.get("uid") or ""),
        "study_uid": task.study_uid or "",
        "series_uid": task.series_uid or "",
    }
