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
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

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

    __table_args__ = (
        Index(None, "patient_id"),
        Index(None, "accession_number"),
        Index(None, "last_received_at"),
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

    __table_args__ = (Index(None, "study_id"), Index(None, "last_received_at"))


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
        Index(None, "kind"),
        Index(None, "series_id"),
        Index(None, "task_id"),
        Index(None, "association_id"),
    )


# Core tables, for the statements on hot paths that do not need the ORM.
ASSOCIATIONS = cast(Table, Association.__table__)
STUDIES = cast(Table, Study.__table__)
SERIES = cast(Table, Series.__table__)
INSTANCES = cast(Table, Instance.__table__)
EVENTS = cast(Table, Event.__table__)
