"""What the cleaner removes, and when.

Two kinds of data take space: a task's folder (tasks/<id>, hard links to the received files plus
task.json and, later, module results) and the received files themselves (incoming/<series>/).
A received file is needed for as long as a grouping may still collect it: until its series
has been completed, and its study and patient too where rules group at those levels. After that
it is "settled": every task that needed it holds its own link.

- Retention: a finished task's folder goes after the retention for its end state (done, discarded,
  error); settled received files go `discard_retention` after they arrived (for a series no rule
  matched, they are the only copy, which is what that retention is for).
- Disk pressure: past the disk's high-water mark, or with less free space than twice the
  receiver's reserve, delivered work (the folders of done and discarded tasks, settled files
  that no undelivered task holds) is removed oldest first, retention or not, until use is below
  the low-water mark and three reserves are free. Work that is still waiting, processing or
  being sent, and failed work that can still be restarted, is never touched under pressure:
  the receiver refuses new instances instead (the sender keeps them and retries).
- Quarantine: refused instances kept for inspection (see quarantine.py).

Every removal is an event with what was removed, why and how many bytes it freed. The space a
file frees is counted only when its last link goes.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import ColumnElement, Engine, and_, or_, select, update

from caduceus.cleaner.history import prune_history
from caduceus.cleaner.quarantine import clean_quarantine
from caduceus.cleaner.tuning import BATCH, PRESSURE_RESERVES, RELIEF_RESERVES
from caduceus.core.clock import as_utc
from caduceus.core.config.models import Config
from caduceus.core.db.models import (
    INSTANCES,
    PATIENT_GROUPS,
    SERIES,
    STUDIES,
    TASK_INSTANCES,
    TASKS,
)
from caduceus.core.events import record_event
from caduceus.core.priorities import in_window
from caduceus.core.states import FINISHED_TASKS, TaskState
from caduceus.core.storage import DataRoot, used_percent

log = logging.getLogger("caduceus.cleaner")

FINISHED = FINISHED_TASKS
# Finished with nothing left to deliver: what disk pressure may remove.
DELIVERED = (TaskState.DONE, TaskState.DISCARDED)


@dataclass
class Freed:
    files: int = 0
    bytes: int = 0

    def add(self, other: Freed) -> None:
        self.files += other.files
        self.bytes += other.bytes


@dataclass
class CleanResult:
    tasks: list[str] = field(default_factory=list)
    series: list[int] = field(default_factory=list)
    freed: Freed = field(default_factory=Freed)
    emergency: bool = False
    disk_used_percent: float = 0.0
    history: dict[str, int] = field(default_factory=dict)  # rows pruned, by kind
    quarantine: Freed = field(default_factory=Freed)


def disk_used_percent(path: Path) -> float:
    usage = shutil.disk_usage(path)
    return used_percent(usage.used, usage.total)


def disk_free_bytes(path: Path) -> int:
    """Free space as the receiver's reserve check sees it (DataRoot.free_bytes)."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _remove_file(path: Path) -> Freed:
    try:
        st = path.stat()
        path.unlink()
    except FileNotFoundError:
        return Freed()
    return Freed(1, st.st_size if st.st_nlink == 1 else 0)


def _remove_tree(folder: Path) -> Freed:
    freed = Freed()
    if not folder.exists():
        return freed
    for dirpath, _dirs, names in os.walk(folder):
        for name in names:
            freed.add(_remove_file(Path(dirpath) / name))
    shutil.rmtree(folder, ignore_errors=True)
    return freed


@dataclass
class _Candidate:
    """Finished work that may be removed: a task's folder or a series' settled files."""

    since: datetime  # when it finished (task) or its newest settled file arrived (series)
    kind: str  # "task" or "series"
    key: str | int
    state: str = ""
    settled_through: datetime | None = None


class Cleaner:
    """Owns the removal of finished work (see the module's docstring for what and when).

    One pass: under disk pressure the emergency removal first, then quarantine, then (in the
    off-peak window if so set) what is past its retention, and the history's own pruning.
    A task's folder is claimed (marked cleaned) under the state it was chosen in before
    anything is removed, so a task restarted meanwhile keeps its files. The disk measures
    are passed in so that tests can press it without filling a disk.
    """

    def __init__(
        self,
        engine: Engine,
        root: DataRoot,
        usage: Callable[[Path], float] = disk_used_percent,
        should_stop: Callable[[], bool] = lambda: False,
        reserve_bytes: int = 0,
        free: Callable[[Path], int] = disk_free_bytes,
    ):
        self.engine = engine
        self.root = root
        self.usage = usage
        self.free = free
        # The receiver's disk reserve (receiver_disk_reserve_mb); 0: only the water marks count.
        self.reserve_bytes = reserve_bytes
        self._pressed = False  # the previous pass was under pressure too
        # Checked between removals, so that stopping the service never waits for a long pass.
        self.should_stop = should_stop

    def run_pass(self, config: Config, now: datetime | None = None) -> CleanResult:
        now = now or datetime.now(UTC)
        settings = config.settings
        result = CleanResult(disk_used_percent=self.usage(self.root.home))
        pressed = self._under_pressure(config, result.disk_used_percent)
        if pressed:
            self._emergency(config, now, result)
        self._pressed = pressed
        quarantined = clean_quarantine(self.engine, self.root, settings, now)
        result.quarantine = Freed(quarantined.files, quarantined.bytes)
        result.freed.add(result.quarantine)
        offpeak = in_window(
            now.astimezone().time().replace(tzinfo=None),
            settings.offpeak_start,
            settings.offpeak_end,
        )
        if not settings.clean_offpeak_only or offpeak:
            for candidate in self._due(config, now):
                if self.should_stop():
                    break
                self._clean(candidate, "retention", result)
            result.history = prune_history(self.engine, config, now).counts
        return result

    def _under_pressure(self, config: Config, used: float) -> bool:
        if used >= config.settings.disk_high_water:
            return True
        return self.free(self.root.home) < PRESSURE_RESERVES * self.reserve_bytes

    def _relieved(self, config: Config) -> bool:
        if self.usage(self.root.home) >= config.settings.disk_low_water:
            return False
        return self.free(self.root.home) >= RELIEF_RESERVES * self.reserve_bytes

    def _retention(self, config: Config, state: str) -> timedelta:
        s = config.settings
        kept: dict[str, int] = {
            TaskState.DONE: s.retention,
            TaskState.DISCARDED: s.discard_retention,
        }
        seconds = kept.get(state, s.error_retention)
        return timedelta(seconds=seconds)

    def _due(self, config: Config, now: datetime) -> list[_Candidate]:
        due = [
            c
            for c in self._finished_tasks(config)
            if c.since <= now - self._retention(config, c.state)
        ]
        cutoff = now - timedelta(seconds=config.settings.discard_retention)
        due += [c for c in self._settled_series(config) if c.since <= cutoff]
        return due

    def _finished_tasks(
        self, config: Config, limit: int = BATCH, states: tuple[str, ...] = FINISHED
    ) -> list[_Candidate]:
        # Oldest first per end state, so that each state's due tasks come within the batch.
        found: list[_Candidate] = []
        with self.engine.connect() as conn:
            for state in states:
                rows = conn.execute(
                    select(TASKS.c.id, TASKS.c.updated_at)
                    .where(and_(TASKS.c.state == state, TASKS.c.cleaned_at.is_(None)))
                    .order_by(TASKS.c.updated_at)
                    .limit(limit)
                ).all()
                found += [_Candidate(as_utc(r.updated_at), "task", r.id, state) for r in rows]
        return found

    def _undelivered_series(self) -> set[int]:
        """Series with files in a task still to deliver (waiting, running, failed): removing
        their received files frees nothing while that task's links hold them."""
        query = (
            select(INSTANCES.c.series_id)
            .distinct()
            .join(TASK_INSTANCES, TASK_INSTANCES.c.instance_id == INSTANCES.c.id)
            .join(TASKS, TASKS.c.id == TASK_INSTANCES.c.task_id)
            .where(and_(TASKS.c.state.not_in(DELIVERED), TASKS.c.cleaned_at.is_(None)))
        )
        with self.engine.connect() as conn:
            return set(conn.execute(query).scalars())

    def _settled_series(
        self, config: Config, limit: int = BATCH, skip: set[int] | None = None
    ) -> list[_Candidate]:
        """Series with received files that no grouping can collect any more, oldest first."""
        levels = {rule.trigger for rule in config.rules.values() if not rule.disabled}
        unsettled: list[ColumnElement[bool]] = [SERIES.c.completed_at.is_not(None)]
        if "study" in levels:
            unsettled.append(STUDIES.c.completed_at.is_not(None))
        if "patient" in levels:
            # Studies without a patient ID are never grouped by patient.
            unsettled.append(
                or_(STUDIES.c.patient_id == "", PATIENT_GROUPS.c.completed_at.is_not(None))
            )
        query = (
            select(
                SERIES.c.id,
                SERIES.c.completed_at,
                SERIES.c.files_removed_through,
                STUDIES.c.patient_id,
                STUDIES.c.completed_at.label("study_completed_at"),
                PATIENT_GROUPS.c.completed_at.label("patient_completed_at"),
            )
            .join(STUDIES, STUDIES.c.id == SERIES.c.study_id)
            .outerjoin(PATIENT_GROUPS, PATIENT_GROUPS.c.patient_id == STUDIES.c.patient_id)
            .where(
                and_(
                    *unsettled,
                    or_(
                        SERIES.c.files_removed_through.is_(None),
                        SERIES.c.files_removed_through < SERIES.c.completed_at,
                    ),
                )
            )
            .order_by(SERIES.c.completed_at)
        )
        found: list[_Candidate] = []
        with self.engine.connect() as conn:
            # Streamed, not limited in SQL: series whose settled point has not moved are
            # skipped here, and must not fill the batch and hide the others.
            for row in conn.execution_options(yield_per=500).execute(query):
                marks = [row.completed_at]
                if "study" in levels:
                    marks.append(row.study_completed_at)
                if "patient" in levels and row.patient_id:
                    marks.append(row.patient_completed_at)
                settled = min(as_utc(m) for m in marks)
                done = row.files_removed_through
                if done is not None and as_utc(done) >= settled:
                    continue
                if skip and row.id in skip:
                    continue
                found.append(_Candidate(settled, "series", row.id, settled_through=settled))
                if len(found) >= limit:
                    break
        return found

    def _emergency(self, config: Config, now: datetime, result: CleanResult) -> None:
        settings = config.settings
        result.emergency = True
        start = result.disk_used_percent
        free_before = self.free(self.root.home)
        # Delivered work only, oldest first: failed tasks wait for their own retention (they
        # may be restarted), and files an undelivered task still holds would free nothing.
        candidates = sorted(
            self._finished_tasks(config, limit=10 * BATCH, states=DELIVERED)
            + self._settled_series(config, limit=10 * BATCH, skip=self._undelivered_series()),
            key=lambda c: c.since,
        )
        before = Freed()
        before.add(result.freed)
        for candidate in candidates:
            if self.should_stop() or self._relieved(config):
                break
            self._clean(candidate, "disk", result)
        used = self.usage(self.root.home)
        free_after = self.free(self.root.home)
        freed = result.freed.bytes - before.bytes
        reserve_mb = self.reserve_bytes // 2**20
        cause = (
            f"above the high-water mark of {settings.disk_high_water}%"
            if start >= settings.disk_high_water
            else f"less than {PRESSURE_RESERVES} x the receiver's {reserve_mb} MB reserve free"
        )
        message = (
            f"disk {start:.1f}% used ({free_before // 2**20} MB free), {cause}: "
            f"freed {freed} bytes, now {used:.1f}% ({free_after // 2**20} MB free)"
        )
        if not self._relieved(config):
            message += "; still short of the low-water mark"
            if self.reserve_bytes:
                message += f" or {RELIEF_RESERVES} x the reserve free"
            message += ": everything left is still in use or waiting"
        if self._pressed and not freed:
            # Still under pressure with nothing to remove: said once, not every pass.
            log.debug("%s", message)
            result.disk_used_percent = used
            return
        log.warning("%s", message)
        with self.engine.begin() as conn:
            record_event(
                conn,
                "cleaner.emergency",
                message,
                severity="warning",
                details={
                    "used_before": round(start, 1),
                    "used_after": round(used, 1),
                    "free_before": free_before,
                    "free_after": free_after,
                    "freed_bytes": freed,
                    "high_water": settings.disk_high_water,
                    "low_water": settings.disk_low_water,
                    "reserve_bytes": self.reserve_bytes,
                },
            )
        result.disk_used_percent = used

    def _clean(self, candidate: _Candidate, reason: str, result: CleanResult) -> None:
        if candidate.kind == "task":
            self._clean_task(candidate, reason, result)
        else:
            assert candidate.settled_through is not None
            self._clean_series(int(candidate.key), candidate.settled_through, reason, result)

    def _clean_task(self, candidate: _Candidate, reason: str, result: CleanResult) -> None:
        task_id, state = str(candidate.key), candidate.state
        with self.engine.begin() as conn:
            # Claimed, and committed, before anything is removed: a task restarted a moment
            # ago (its state or finish time changed) keeps its files, and a cleaner killed
            # half-way leaves a task that is marked cleaned, never one that looks whole.
            claimed = conn.execute(
                update(TASKS)
                .where(
                    and_(
                        TASKS.c.id == task_id,
                        TASKS.c.state == state,
                        TASKS.c.updated_at <= candidate.since,
                        TASKS.c.cleaned_at.is_(None),
                    )
                )
                .values(cleaned_at=datetime.now(UTC))
            ).rowcount
        if not claimed:
            return
        freed = _remove_tree(self.root.home / "tasks" / task_id)
        with self.engine.begin() as conn:
            record_event(
                conn,
                "task.cleaned",
                f"{state} task's folder removed ({reason}): {freed.files} file(s), "
                f"{freed.bytes} bytes freed",
                task_id=task_id,
                details={
                    "reason": reason,
                    "state": state,
                    "files": freed.files,
                    "bytes": freed.bytes,
                },
            )
        result.tasks.append(task_id)
        result.freed.add(freed)

    def _clean_series(
        self, series_id: int, through: datetime, reason: str, result: CleanResult
    ) -> None:
        with self.engine.begin() as conn:
            series = conn.execute(
                select(SERIES.c.files_removed_through).where(SERIES.c.id == series_id)
            ).one()
            since = series.files_removed_through
            condition = and_(INSTANCES.c.series_id == series_id, INSTANCES.c.received_at <= through)
            if since is not None:
                condition = and_(condition, INSTANCES.c.received_at > since)
            paths = conn.execute(select(INSTANCES.c.path).where(condition)).scalars().all()
            # Recorded first: a cleaner killed half-way must not leave the rest looking needed
            # by nobody and present, nor present files looking removed (they are re-checked).
            conn.execute(
                update(SERIES).where(SERIES.c.id == series_id).values(files_removed_through=through)
            )
        freed = Freed()
        kept = 0
        for relative in paths:
            path = self.root.absolute(relative)
            try:
                newer = path.stat().st_mtime > through.timestamp()
            except FileNotFoundError:
                continue
            if newer:
                # The same instance was sent again after the grouping: this file is a new
                # arrival that the next grouping needs.
                kept += 1
                continue
            freed.add(_remove_file(path))
        with self.engine.begin() as conn:
            record_event(
                conn,
                "series.files_removed",
                f"received files removed ({reason}): {freed.files} file(s), "
                f"{freed.bytes} bytes freed" + (f"; {kept} newer file(s) kept" if kept else ""),
                series_id=series_id,
                details={"reason": reason, "files": freed.files, "bytes": freed.bytes},
            )
        result.series.append(series_id)
        result.freed.add(freed)
