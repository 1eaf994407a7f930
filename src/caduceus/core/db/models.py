"""The database schema. Every change here comes with an Alembic migration."""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
    func,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from caduceus.core.states import SeriesState, TargetState

# Named constraints make migrations portable between SQLite and PostgreSQL.
NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Values that come from DICOM are Text: a non-conformant sender must not make an insert fail on
# PostgreSQL because a value is longer than its VR allows.
UID = Text
AET = Text
# SQLite's INTEGER PRIMARY KEY is 64-bit already; PostgreSQL needs BIGINT for big installations.
BigId = BigInteger().with_variant(Integer(), "sqlite")
# Plain text, not the enum member: server defaults are rendered into migrations as written.
RECEIVING = SeriesState.RECEIVING.value


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Association(Base):
    """One DICOM association, accepted or not: who sent, when, and how it ended."""

    __tablename__ = "associations"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    calling_aet: Mapped[str] = mapped_column(AET)
    called_aet: Mapped[str] = mapped_column(AET)
    peer_host: Mapped[str] = mapped_column(Text)
    peer_port: Mapped[int] = mapped_column(Integer)
    # Whether it came in on the receiver's TLS port.
    tls: Mapped[bool] = mapped_column(default=False, server_default=false())
    # open, released, aborted, rejected
    status: Mapped[str] = mapped_column(Text)
    reason: Mapped[str | None] = mapped_column(Text)
    instances_stored: Mapped[int] = mapped_column(Integer, default=0)
    instances_failed: Mapped[int] = mapped_column(Integer, default=0)
    bytes_stored: Mapped[int] = mapped_column(BigInteger, default=0)

    __table_args__ = (Index(None, "started_at"),)


class Study(Base):
    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    study_uid: Mapped[str] = mapped_column(UID, unique=True)
    patient_id: Mapped[str] = mapped_column(Text, default="")
    patient_name: Mapped[str] = mapped_column(Text, default="")
    patient_birth_date: Mapped[str] = mapped_column(Text, default="")
    patient_sex: Mapped[str] = mapped_column(Text, default="")
    accession_number: Mapped[str] = mapped_column(Text, default="")
    study_date: Mapped[str] = mapped_column(Text, default="")
    study_time: Mapped[str] = mapped_column(Text, default="")
    study_description: Mapped[str] = mapped_column(Text, default="")
    first_received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    state: Mapped[str] = mapped_column(String(16), default=RECEIVING, server_default=RECEIVING)
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    generation: Mapped[int] = mapped_column(Integer, default=0, server_default="0")

    __table_args__ = (
        Index(None, "state", "last_received_at"),
        Index(None, "patient_id"),
        Index(None, "accession_number"),
        Index(None, "last_received_at"),
        Index(None, "study_date"),
        # Name search is a case-insensitive prefix match (bookkeeper/search.py).
        Index("ix_studies_lower_patient_name", func.lower(text("patient_name"))),
    )


class Series(Base):
    __tablename__ = "series"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    series_uid: Mapped[str] = mapped_column(UID, unique=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"))
    modality: Mapped[str] = mapped_column(Text, default="")
    series_number: Mapped[str] = mapped_column(Text, default="")
    series_description: Mapped[str] = mapped_column(Text, default="")
    body_part: Mapped[str] = mapped_column(Text, default="")
    # The folder under incoming/ that holds this series' files (a safe name, never a raw UID).
    folder: Mapped[str] = mapped_column(String(80))
    first_received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # A SeriesState (core/states.py): "receiving" while instances arrive (the receiver sets it
    # with every instance), then "complete" once the router has handled it; `generation` counts
    # the times it was completed, so instances that arrive after completion form a new, visible
    # group.
    state: Mapped[str] = mapped_column(String(16), default=RECEIVING, server_default=RECEIVING)
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    generation: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # The cleaner removed the received files of the instances that arrived up to this moment.
    files_removed_through: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        Index(None, "study_id"),
        Index(None, "last_received_at"),
        Index(None, "state", "last_received_at"),
        Index(None, "modality", "last_received_at"),
    )


class Task(Base):
    """A unit of work the router made: route, process, both, discard or notify.

    The queue columns (state, priority, not_before, lease) let any number of workers share the
    work: a worker claims a task in one statement and renews its lease while it works.
    """

    __tablename__ = "tasks"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    # Makes task creation idempotent: a router that died half-way and redoes a group finds the
    # tasks it already made instead of making them twice.
    group_key: Mapped[str] = mapped_column(Text, unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    rule: Mapped[str] = mapped_column(Text)
    action: Mapped[str] = mapped_column(String(16))
    level: Mapped[str] = mapped_column(String(8))  # series, study, patient
    # A TaskState (core/states.py, with the moves allowed between them)
    state: Mapped[str] = mapped_column(String(16))
    priority: Mapped[int] = mapped_column(Integer)  # 0 urgent, 1 normal, 2 offpeak
    not_before: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(Text)
    lease_expires: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    study_uid: Mapped[str] = mapped_column(Text, default="")
    series_uid: Mapped[str] = mapped_column(Text, default="")
    patient_id: Mapped[str] = mapped_column(Text, default="")
    folder: Mapped[str] = mapped_column(Text)  # relative to the data root
    targets: Mapped[list[str]] = mapped_column(JSON)
    modules: Mapped[list[str]] = mapped_column(JSON)
    info: Mapped[dict[str, Any]] = mapped_column(JSON)  # the task.json document
    error: Mapped[str | None] = mapped_column(Text)
    # When the cleaner removed the task's folder; the row and its history stay.
    cleaned_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Processing: the next module step to run (a restart resumes there), what each step's
    # result.json said, and how many files the dispatcher is to find (None: the task's instances).
    step: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    results: Mapped[list[Any] | None] = mapped_column(JSON)
    file_count: Mapped[int | None] = mapped_column(Integer)

    __table_args__ = (
        Index(None, "state", "priority", "not_before"),
        Index(None, "state", "updated_at"),
        Index(None, "study_uid"),
        Index(None, "series_uid"),
        Index(None, "created_at"),
        Index(None, "rule", "created_at"),
        Index(None, "state", "action"),
        Index(None, "patient_id"),
    )


class TaskTarget(Base):
    """One target of one task: its own state, attempts and next try, so that a retry sends
    only to the targets that failed."""

    __tablename__ = "task_targets"

    task_id: Mapped[str] = mapped_column(
        ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True
    )
    target: Mapped[str] = mapped_column(Text, primary_key=True)
    # A TargetState (core/states.py)
    state: Mapped[str] = mapped_column(String(16), default=TargetState.PENDING.value)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index(None, "target", "state"),)


class Delivery(Base):
    """An instance a target confirmed: a retry never sends it again."""

    __tablename__ = "deliveries"

    task_id: Mapped[str] = mapped_column(
        ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True
    )
    target: Mapped[str] = mapped_column(Text, primary_key=True)
    file_name: Mapped[str] = mapped_column(Text, primary_key=True)
    delivered_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class QueueControl(Base):
    """Suspended queues: "dispatch" for all dispatching, "dispatch:<target>" for one target."""

    __tablename__ = "queue_controls"

    name: Mapped[str] = mapped_column(Text, primary_key=True)
    suspended: Mapped[bool] = mapped_column(default=False)
    changed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    changed_by: Mapped[str] = mapped_column(Text, default="")


class PatientGroup(Base):
    """Completion state of patient-level grouping (over all of a patient's studies)."""

    __tablename__ = "patient_groups"

    patient_id: Mapped[str] = mapped_column(Text, primary_key=True)
    state: Mapped[str] = mapped_column(String(16), default=RECEIVING)
    last_activity: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    generation: Mapped[int] = mapped_column(Integer, default=0)
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index(None, "state", "last_activity"),)


class TaskInstance(Base):
    """Which instances a task holds (its files are hard links in the task's folder)."""

    __tablename__ = "task_instances"

    task_id: Mapped[str] = mapped_column(
        ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True
    )
    instance_id: Mapped[int] = mapped_column(
        ForeignKey("instances.id", ondelete="CASCADE"), primary_key=True
    )

    __table_args__ = (Index(None, "instance_id"),)


class Instance(Base):
    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id", ondelete="CASCADE"))
    association_id: Mapped[int | None] = mapped_column(
        ForeignKey("associations.id", ondelete="SET NULL")
    )
    transfer_syntax_uid: Mapped[str] = mapped_column(UID)
    instance_number: Mapped[str] = mapped_column(Text, default="")
    # Relative to the data root.
    path: Mapped[str] = mapped_column(String(255))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    # No index on size_bytes for the metrics' byte total: every index costs the receiver a
    # write per instance, and a scrape reads a million rows in about 0.1 s.
    __table_args__ = (Index(None, "series_id"), Index(None, "association_id"))


class Event(Base):
    """The history: anything that happened to an association, instance, series, study or task."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    kind: Mapped[str] = mapped_column(Text)
    severity: Mapped[str] = mapped_column(Text, default="info")
    association_id: Mapped[int | None] = mapped_column(BigId)
    study_id: Mapped[int | None] = mapped_column(BigId)
    series_id: Mapped[int | None] = mapped_column(BigId)
    instance_id: Mapped[int | None] = mapped_column(BigId)
    task_id: Mapped[str | None] = mapped_column(String(36))
    message: Mapped[str] = mapped_column(Text, default="")
    details: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    __table_args__ = (
        Index(None, "at"),
        Index(None, "kind", "id"),
        Index(None, "kind", "at"),
        Index(None, "series_id"),
        Index(None, "study_id"),
        Index(None, "task_id"),
        Index(None, "association_id"),
    )


class ConfigVersion(Base):
    """One version of the whole configuration (rules, targets, modules, settings)."""

    __tablename__ = "config_versions"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    author: Mapped[str] = mapped_column(Text)
    comment: Mapped[str] = mapped_column(Text, default="")
    content: Mapped[dict[str, Any]] = mapped_column(JSON)


class User(Base):
    """Someone who logs in to the web interface or owns API tokens."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(Text)  # argon2id
    role: Mapped[str] = mapped_column(String(16))  # admin, operator, viewer
    must_change_password: Mapped[bool] = mapped_column(default=False)
    disabled: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # Bumped on a password change, a demotion or a removal: every session of an older
    # generation is void at once.
    generation: Mapped[int] = mapped_column(Integer, default=0)


class ApiToken(Base):
    """A token for tools; only its SHA-256 is stored, the token itself is shown once."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(Text)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked: Mapped[bool] = mapped_column(default=False)


class WebSession(Base):
    """A login session of the web interface; revocable because it lives here."""

    __tablename__ = "web_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # SHA-256 of the cookie value
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    generation: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    csrf_token: Mapped[str] = mapped_column(String(64))

    __table_args__ = (Index(None, "user_id"),)


class Notification(Base):
    """One notification (a webhook call or a mail) for one event and one rule, and its fate."""

    __tablename__ = "notifications"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    event_id: Mapped[int] = mapped_column(BigId)
    rule: Mapped[str] = mapped_column(Text)
    channel: Mapped[str] = mapped_column(String(16))  # webhook, email
    trigger: Mapped[str] = mapped_column(String(32))  # reception, completion, error, request
    task_id: Mapped[str | None] = mapped_column(String(36))
    state: Mapped[str] = mapped_column(String(16))  # pending, sent, failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        UniqueConstraint("event_id", "rule", "channel"),
        Index(None, "state", "next_attempt_at"),
        Index(None, "task_id"),
        Index(None, "created_at"),
    )


class Cursor(Base):
    """How far an event consumer (the notifier) has read the events."""

    __tablename__ = "cursors"

    name: Mapped[str] = mapped_column(Text, primary_key=True)
    last_event_id: Mapped[int] = mapped_column(BigId, default=0)


class ServiceHeartbeat(Base):
    """One service process's sign of life: it updates beat_at every few seconds while it runs
    and sets the state to stopped when it ends cleanly; `caduceus run` sets restarting while it
    waits to start a dead one again."""

    __tablename__ = "service_heartbeats"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    service: Mapped[str] = mapped_column(String(32))
    host: Mapped[str] = mapped_column(Text)
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    beat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # running, stopped, restarting ("silent" is shown, never stored: a beat that is too old)
    state: Mapped[str] = mapped_column(String(16))
    restarts: Mapped[int] = mapped_column(Integer, default=0)
    detail: Mapped[str] = mapped_column(Text, default="")

    __table_args__ = (UniqueConstraint("service", "host", "pid"),)


# Core tables, for the statements on hot paths that do not need the ORM.
ASSOCIATIONS = cast(Table, Association.__table__)
STUDIES = cast(Table, Study.__table__)
SERIES = cast(Table, Series.__table__)
INSTANCES = cast(Table, Instance.__table__)
EVENTS = cast(Table, Event.__table__)
CONFIG_VERSIONS = cast(Table, ConfigVersion.__table__)
TASKS = cast(Table, Task.__table__)
TASK_INSTANCES = cast(Table, TaskInstance.__table__)
PATIENT_GROUPS = cast(Table, PatientGroup.__table__)
TASK_TARGETS = cast(Table, TaskTarget.__table__)
DELIVERIES = cast(Table, Delivery.__table__)
QUEUE_CONTROLS = cast(Table, QueueControl.__table__)
USERS = cast(Table, User.__table__)
API_TOKENS = cast(Table, ApiToken.__table__)
WEB_SESSIONS = cast(Table, WebSession.__table__)
NOTIFICATIONS = cast(Table, Notification.__table__)
CURSORS = cast(Table, Cursor.__table__)
SERVICE_HEARTBEATS = cast(Table, ServiceHeartbeat.__table__)
