"""One self-test run: a generated series goes through the own receiver, router and dispatcher
to a temporary folder target, stage by stage, like mercure's self-test.

Whatever happens, the temporary rule and target leave the configuration again and the
temporary folder is deleted. The received series and its task stay in the history and go
through the normal cleaner; a task that was not delivered is discarded, so that no dispatcher
later tries the target that no longer exists.
"""

from __future__ import annotations

import logging
import secrets
import shutil
from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import Engine, and_, or_, update

from caduceus.core.config import store
from caduceus.core.db.models import TASKS
from caduceus.core.dicom.series_tags import read_tags
from caduceus.core.dicom.synthetic import SeriesSpec, write_series
from caduceus.core.events import record_event
from caduceus.core.rules import Budget
from caduceus.core.settings import Settings
from caduceus.core.states import TaskState
from caduceus.router.interface import matching_rules
from caduceus.selftest import dicom, temporary, watch
from caduceus.selftest.dicom import StageFailed
from caduceus.selftest.progress import Run

log = logging.getLogger("caduceus.selftest")

IMAGES = 5
ECHO_TIMEOUT = 10.0


def new_run(started_by: str) -> Run:
    return Run(id=secrets.token_hex(6), started_by=started_by)


class SelfTest:
    """Runs the stages of `run` in order; the first that fails ends the run."""

    def __init__(
        self,
        settings: Settings,
        reader: Engine,
        writer: Engine,
        run: Run,
        timeout: float = 60.0,
    ):
        self.settings = settings
        self.reader = reader
        self.writer = writer
        self.run = run
        self.timeout = timeout
        self.receiver = dicom.Receiver.of(settings)
        self.folder = settings.home.resolve() / "selftest" / run.id
        self.temporary = temporary.Temporary(run.id, self.folder / "target")
        self.configured = False
        self.files: list[dicom.Outgoing] = []
        self.series_uid = ""
        self.task_id: str | None = None

    def execute(self) -> Run:
        who = self.run.started_by
        self._record("selftest.started", f"self-test {self.run.id} started by {who}")
        steps: list[tuple[str, Callable[[], str]]] = [
            ("echo", lambda: dicom.echo(self.receiver, ECHO_TIMEOUT)),
            ("configure", self._configure),
            ("send", lambda: dicom.store(self.receiver, self.files, self.timeout)),
            ("stored", lambda: watch.stored(self.reader, self.series_uid, IMAGES, self.timeout)),
            ("routed", self._routed),
            ("dispatched", self._dispatched),
            ("arrived", self._arrived),
        ]
        try:
            for name, step in steps:
                self.run.begin(name)
                try:
                    message = step()
                except StageFailed as exc:
                    self.run.end(name, False, str(exc))
                    break
                except Exception as exc:
                    log.exception("self-test %s: stage %s failed", self.run.id, name)
                    self.run.end(name, False, f"unexpected error: {type(exc).__name__}: {exc}")
                    break
                self.run.end(name, True, message)
        finally:
            self.run.finish(self._clean_up())
            self._finished()
        return self.run

    # -- stages ---------------------------------------------------------------------------

    def _configure(self) -> str:
        paths = write_series(
            self.folder / "series",
            SeriesSpec(
                count=IMAGES,
                rows=32,
                columns=32,
                patient_id=self.temporary.marker,
                patient_name="SELFTEST^CADUCEUS",
                study_description="CADUCEUS SELF-TEST",
                series_description="CADUCEUS SELF-TEST",
                accession_number="",
            ),
        )
        self.files = dicom.describe(paths)
        self.series_uid = str(read_tags(paths[0])["SeriesInstanceUID"])
        self.temporary.folder.mkdir(parents=True)
        try:
            version = temporary.add(self.writer, self.temporary)
        except ValueError as exc:
            raise StageFailed(f"the configuration refused the temporary rule: {exc}") from exc
        self.configured = True
        message = f"rule and folder target {self.temporary.name} added (version {version})"
        config = store.current_or_default(self.reader)
        matches = matching_rules(config, read_tags(paths[0]), Budget.of(self.settings))
        others = [
            name
            for names in matches.by_level.values()
            for name in names
            if name != self.temporary.name
        ]
        if others:
            message += f"; the rules {', '.join(others)} match the test series too"
        return message

    def _routed(self) -> str:
        self.task_id = watch.routed(self.reader, self.series_uid, self.temporary.name, self.timeout)
        return f"task {self.task_id} made"

    def _dispatched(self) -> str:
        assert self.task_id is not None
        return watch.dispatched(self.reader, self.task_id, self.temporary.name, self.timeout)

    def _arrived(self) -> str:
        assert self.task_id is not None
        expected = {f.sop_instance for f in self.files}
        return watch.arrived(self.temporary.folder / self.task_id, expected)

    # -- the end --------------------------------------------------------------------------

    def _clean_up(self) -> str:
        said: list[str] = []
        if self.configured:
            try:
                temporary.remove(self.writer, self.temporary)
                said.append(f"rule and target {self.temporary.name} removed")
            except Exception as exc:
                log.exception("self-test %s: cleaning up the configuration", self.run.id)
                said.append(
                    f"rule and target {self.temporary.name} could not be removed ({exc}): "
                    "remove them by hand"
                )
        if self.task_id is not None and self._discard_undelivered():
            said.append(f"undelivered task {self.task_id} discarded")
        shutil.rmtree(self.folder, ignore_errors=True)
        if self.folder.exists():
            said.append(f"the folder {self.folder} could not be deleted")
        else:
            said.append("temporary folder deleted")
        return "; ".join(said)

    def _discard_undelivered(self) -> bool:
        """A task no dispatcher holds right now and that is not finished is discarded."""
        now = datetime.now(UTC)
        with self.writer.begin() as conn:
            changed = conn.execute(
                update(TASKS)
                .where(
                    and_(
                        TASKS.c.id == self.task_id,
                        TASKS.c.state.in_((TaskState.QUEUED, TaskState.DISPATCHING)),
                        or_(TASKS.c.lease_expires.is_(None), TASKS.c.lease_expires < now),
                    )
                )
                .values(state=TaskState.DISCARDED, updated_at=now, not_before=None)
            ).rowcount
            if changed:
                record_event(
                    conn,
                    "task.discarded",
                    f"self-test {self.run.id} ended before the task was delivered",
                    task_id=self.task_id,
                )
        return bool(changed)

    def _record(self, kind: str, message: str, severity: str = "info") -> None:
        with self.writer.begin() as conn:
            record_event(
                conn,
                kind,
                message,
                severity=severity,
                task_id=self.task_id,
                details=self.run.as_dict(),
            )

    def _finished(self) -> None:
        failure = self.run.failure
        try:
            if failure is None:
                self._record("selftest.passed", f"self-test {self.run.id} passed")
            else:
                self._record(
                    "selftest.failed",
                    f"self-test {self.run.id} failed at '{failure.title}': {failure.message}",
                    severity="error",
                )
        except Exception:  # the run's outcome is still shown; only its history entry is lost
            log.exception("self-test %s: recording the outcome", self.run.id)


def run_selftest(
    settings: Settings, reader: Engine, writer: Engine, started_by: str, timeout: float = 60.0
) -> Run:
    """A whole run in the caller's thread (the command line's way)."""
    return SelfTest(settings, reader, writer, new_run(started_by), timeout).execute()


__all__ = ["SelfTest", "new_run", "run_selftest"]
