"""Running a task's modules one after another, each step's output the next step's input.

    tasks/<id>/in/                 the received images (hard links) and task.json
    tasks/<id>/steps/<n>-<run>/in/  step n's input: hard links to the previous output, and a
                                   task.json whose "process" is this step's module and settings
    tasks/<id>/steps/<n>-<run>/out/ what step n wrote; every run of a step has its own folder,
                                   so a leftover of a dead run can never mix into a new one
    tasks/<id>/logs/<n>-<name>.log what step n printed
    tasks/<id>/out/                the pipeline's result, published by a rename when all is done

A step that finished is recorded (tasks.step) before the next begins; a processor that dies
leaves the task to another one, which starts again at the step that had not finished, with
its output folder emptied first. A step that fails puts the task in error and keeps
everything, so `caduceus tasks restart` resumes at that step.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import stat
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, delete, insert, select, update

from caduceus.core.config.models import Config, Module
from caduceus.core.db.models import TASK_TARGETS, TASKS
from caduceus.core.db.rows import pending_targets
from caduceus.core.events import record_event
from caduceus.core.lifecycle import any_set
from caduceus.core.states import TaskState
from caduceus.core.storage import DataRoot
from caduceus.core.work_queue import held_by
from caduceus.processor.runners.base import ModuleRun, Runner, RunnerError
from caduceus.processor.tuning import LOG_TAIL_LINES, MAX_UNEXPECTED, UNEXPECTED_RETRY_STEP

log = logging.getLogger("caduceus.processor")

NOTIFICATION = "__mercure_notification"
ROUTING = "__mercure_routing"
MAX_RESULT_BYTES = 1024 * 1024


def _no_constant(name: str) -> Any:
    # NaN and Infinity are not JSON, and PostgreSQL refuses them.
    raise ValueError(f"{name} is not a JSON value")


class StepFailed(Exception):
    """A module step did not produce a usable result; the message says why."""


class StepInterrupted(Exception):
    """The module was stopped because the processor is stopping (or lost the task)."""


@dataclass
class _Task:
    id: str
    folder: Path
    action: str
    rule: str
    modules: list[str]
    step: int
    results: list[Any]
    document: dict[str, Any]


def _file_name(module: str) -> str:
    # Module names are validated (letters, digits, "_.- ", never a leading dot); a space is
    # all that needs replacing to make one a plain file name, and a digest keeps "a b" and
    # "a_b" apart.
    plain = re.sub(r"[^A-Za-z0-9_.-]", "_", module)
    if plain == module:
        return plain
    return f"{plain}-{hashlib.sha256(module.encode()).hexdigest()[:8]}"


def _tail(path: Path, lines: int = LOG_TAIL_LINES, limit: int = 64 * 1024) -> str:
    """The last lines of a log, read from its end: a log may be gigabytes."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - limit))
            data = fh.read()
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


def _link_dicom(source: Path, target: Path, overwrite: bool = True) -> int:
    """Hard-link the DICOM files (*.dcm) of one folder into another; returns how many."""
    count = 0
    for path in sorted(source.glob("*.dcm")):
        link = target / path.name
        if link.exists():
            if not overwrite:
                continue
            link.unlink()
        os.link(path, link)
        count += 1
    return count


def _check_output(out_dir: Path) -> None:
    """Only plain files and folders with names that are text: a link a module leaves could
    make the next step, the dispatcher or the cleaner reach a file outside the task (another
    task, /etc/shadow); a name that is not UTF-8 cannot be recorded as delivered."""
    try:
        for dirpath, dirnames, filenames in os.walk(out_dir):
            for name in dirnames + filenames:
                path = Path(dirpath) / name
                relative = path.relative_to(out_dir)
                try:
                    name.encode("utf-8")
                except UnicodeEncodeError:
                    raise StepFailed(
                        f"invalid output: a file name is not UTF-8 text: {str(relative)!a}"
                    ) from None
                mode = path.lstat().st_mode
                if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                    kind = "a symbolic link" if stat.S_ISLNK(mode) else "not a plain file"
                    raise StepFailed(f"invalid output: {relative} is {kind}")
    except RecursionError:
        raise StepFailed("invalid output: folders nested too deep") from None


def _read_result(out_dir: Path) -> dict[str, Any] | None:
    path = out_dir / "result.json"
    if not path.exists():
        return None
    if path.stat().st_size > MAX_RESULT_BYTES:
        raise StepFailed(f"invalid output: result.json is larger than {MAX_RESULT_BYTES} bytes")
    try:
        result = json.loads(path.read_text(), parse_constant=_no_constant)
    except (OSError, ValueError, RecursionError) as exc:
        raise StepFailed(f"invalid output: result.json is not valid JSON ({exc})") from exc
    if not isinstance(result, dict):
        raise StepFailed("invalid output: result.json is not a JSON object")
    return result


class Pipeline:
    """Runs one claimed task's modules in order and hands the task on (see the module's
    docstring for its folders).

    It owns the task's steps: which step is next (tasks.step), each step's record (results)
    and the final state (dispatching, done, discarded or error). Every change to the task's
    row is guarded by the lease (`owner`): a processor that lost its task to another stops
    writing it, and the new holder's record stands. How a module is started is the runner's
    business (`runner_for`), so the same steps serve containers, Jobs and local commands.
    """

    def __init__(
        self,
        engine: Engine,
        root: DataRoot,
        runner_for: Callable[[Module], Runner],
    ):
        self.engine = engine
        self.root = root
        self.runner_for = runner_for

    def _load(self, task_id: str) -> _Task:
        with self.engine.connect() as conn:
            row = conn.execute(select(TASKS).where(TASKS.c.id == task_id)).one()
        folder = self.root.home / row.folder
        return _Task(
            id=row.id,
            folder=folder,
            action=row.action,
            rule=row.rule,
            modules=list(row.modules or []),
            step=int(row.step or 0),
            results=list(row.results or []),
            document=dict(row.info or {}),
        )

    def run(
        self,
        config: Config,
        task_id: str,
        owner: str | None = None,
        lost: threading.Event | None = None,
        stop: threading.Event | None = None,
    ) -> str:
        """Run the task's remaining steps and hand it on; return its new state.

        Once `stop` is set (the processor is stopping), the module in hand is stopped and the
        task released at once, at the same step and without a failure, so that another
        processor runs that step again now rather than after the lease expires."""
        cancelled = any_set(stop, lost)
        task = self._load(task_id)
        self._set(task.id, owner, state=TaskState.PROCESSING)
        if task.step == 0 and not task.results:
            self._event(task.id, "process.started", f"pipeline: {' -> '.join(task.modules)}")
        for index in range(task.step, len(task.modules)):
            if lost is not None and lost.is_set():
                return TaskState.PROCESSING  # another processor has the task now
            if stop is not None and stop.is_set():
                return self._hand_back(task, index, owner)
            try:
                result = self._run_step(config, task, index, cancelled)
            except StepInterrupted:
                return self._hand_back(task, index, owner)
            except StepFailed as exc:
                return self._fail(task, index, str(exc), owner)
            except (OSError, ValueError, RecursionError) as exc:
                # What a module leaves can break our handling of it (a name the database
                # refuses, a full disk): the task fails, visibly, rather than loop.
                log.exception("task %s: step %d", task_id, index + 1)
                return self._fail(task, index, f"{type(exc).__name__}: {exc!r}"[:500], owner)
            while len(task.results) <= index:
                task.results.append(None)
            task.results[index] = result
            with self.engine.begin() as conn:
                recorded = conn.execute(
                    update(TASKS)
                    .where(self._mine(task.id, owner))
                    .values(step=index + 1, results=task.results, updated_at=datetime.now(UTC))
                ).rowcount
            if not recorded:
                return TaskState.PROCESSING  # the lease went to another processor meanwhile
            task.step = index + 1
        if lost is not None and lost.is_set():
            return TaskState.PROCESSING
        try:
            return self._finish(config, task, owner)
        except StepFailed as exc:
            # The last module's output is what failed: a restart runs that module again.
            return self._fail(task, len(task.modules) - 1, str(exc), owner, step_back=True)

    # -- one step ------------------------------------------------------------------------

    def _step_input(self, task: _Task, index: int, module: Module, name: str) -> Path:
        """A fresh folder for this run of the step; its input links the previous output and
        holds this step's task.json."""
        steps = task.folder / "steps"
        steps.mkdir(exist_ok=True)
        for old in steps.glob(f"{index}-*"):  # earlier runs of this step (failed or dead)
            shutil.rmtree(old, ignore_errors=True)
        run = steps / f"{index}-{uuid.uuid4().hex[:8]}"
        step_in = run / "in"
        step_in.mkdir(parents=True)
        source = task.folder / "in" if index == 0 else self._output_of(task, index - 1)
        # Like mercure, the next module sees everything the previous one wrote (folders too),
        # but not its result.json: that was the previous step's answer, not this one's.
        for dirpath, _dirs, names in os.walk(source):
            here = Path(dirpath)
            relative = here.relative_to(source)
            (step_in / relative).mkdir(parents=True, exist_ok=True)
            for file_name in names:
                if relative == Path(".") and file_name in ("task.json", "result.json"):
                    continue
                os.link(here / file_name, step_in / relative / file_name, follow_symlinks=False)
        document = json.loads(json.dumps(task.document))  # a copy: each step sees its own
        settings = self._settings(module, task, index)
        document["process"] = {
            "module_name": name,
            "module_config": None,
            "settings": settings,
            "retain_input_images": bool(
                (task.document.get("process") or {}).get("retain_input_images", False)
            ),
        }
        (step_in / "task.json").write_text(json.dumps(document, indent=2))
        return step_in

    def _settings(self, module: Module, task: _Task, index: int) -> dict[str, Any]:
        """The module's settings merged with the rule's, as the router wrote them."""
        process = task.document.get("process") or {}
        settings = process.get("settings")
        if isinstance(settings, list):
            chosen = settings[index] if index < len(settings) else {}
        elif isinstance(settings, dict) and len(task.modules) == 1:
            chosen = settings
        else:
            chosen = {}
        return {**module.settings, **chosen}

    def _run_step(
        self,
        config: Config,
        task: _Task,
        index: int,
        cancelled: Callable[[], bool] = lambda: False,
    ) -> dict[str, Any]:
        """Run step `index` in a fresh folder and check what it left; return its record.

        A failure the module caused (exit code, time limit, bad output) is StepFailed, which
        puts the task in error; a stop asked for while it ran is StepInterrupted, which hands
        the task back at the same step. The record (module, seconds, result.json, folder) is
        what the next step's input and a restart are found by.
        """
        name = task.modules[index]
        module = config.modules.get(name)
        if module is None:
            raise StepFailed(f"module {name!r} is no longer configured")
        step_in = self._step_input(task, index, module, name)
        step_out = step_in.parent / "out"
        step_out.mkdir()
        logs = task.folder / "logs"
        logs.mkdir(exist_ok=True)
        log_path = logs / f"{index}-{_file_name(name)}.log"
        persistence = None
        if module.persistence:
            # Like mercure: modules that name the same persistence folder share it (and may
            # run at the same time); the name is validated as one plain folder name.
            folder = module.persistence_folder_name or _file_name(name)
            persistence = self.root.home / "persistence" / folder
            persistence.mkdir(parents=True, exist_ok=True)
        self._event(task.id, "process.step.started", f"step {index + 1}: {name}")
        started = time.monotonic()
        try:
            runner = self.runner_for(module)
            leftovers = getattr(runner, "remove_leftovers", None)
            if callable(leftovers):  # containers of a processor that died on this task
                leftovers(task.id)
            outcome = runner.run(
                ModuleRun(
                    task_id=task.id,
                    module_name=name,
                    module=module,
                    in_dir=step_in,
                    out_dir=step_out,
                    log_path=log_path,
                    persistence_dir=persistence,
                    environment=dict(module.environment),
                    cancelled=cancelled,
                )
            )
        except RunnerError as exc:
            raise StepFailed(f"{name}: {exc}") from exc
        seconds = round(time.monotonic() - started, 3)
        if outcome.cancelled:
            raise StepInterrupted(name)
        if outcome.timed_out:
            raise StepFailed(f"{name}: killed after its time limit of {module.timeout_seconds} s")
        if outcome.exit_code != 0:
            raise StepFailed(f"{name}: exited with code {outcome.exit_code}")
        _check_output(step_out)
        result = _read_result(step_out)
        # Later steps (and the dispatcher) find task.json beside the images, as in mercure.
        if not (step_out / "task.json").exists():
            shutil.copyfile(step_in / "task.json", step_out / "task.json")
        self._event(
            task.id,
            "process.step.done",
            f"step {index + 1}: {name} finished in {seconds} s",
            details={"module": name, "seconds": seconds, "result": result},
        )
        return {
            "module": name,
            "seconds": seconds,
            "result": result,
            "folder": step_in.parent.relative_to(task.folder).as_posix(),
        }

    def _output_of(self, task: _Task, index: int) -> Path:
        folder = (task.results[index] or {}).get("folder") if index < len(task.results) else None
        if not folder:
            raise StepFailed(f"the output of step {index + 1} is not recorded; restart the task")
        return Path(task.folder / str(folder) / "out")

    # -- the end -------------------------------------------------------------------------

    def _finish(self, config: Config, task: _Task, owner: str | None) -> str:
        """Publish the last step's output as the task's out/ and hand the task on.

        The next state follows the rule's action and what the modules asked for (routing,
        discard, notifications): dispatching, done or discarded. The folder is renamed first,
        the row changed after, under the lease: a processor that lost the task returns
        "processing" and leaves the rest to the one that has it.
        """
        published = task.folder / "out"
        last = self._output_of(task, len(task.modules) - 1)
        if last.exists():
            retain = bool((task.document.get("process") or {}).get("retain_input_images"))
            if retain:
                # As in mercure, a received image wins over a result file of the same name.
                _link_dicom(task.folder / "in", last, overwrite=True)
            shutil.rmtree(published, ignore_errors=True)
            os.rename(last, published)  # all of the result at once, or none of it
        elif not published.exists():
            raise StepFailed("the pipeline's output is missing")
        files = len(list(published.glob("*.dcm")))
        final = task.results[-1] if task.results else None
        output = (final or {}).get("result") or {}
        rule = config.rules.get(task.rule)
        targets, discard = self._routing(task, rule, output, config)
        now = datetime.now(UTC)
        if task.action == "both" and not discard:
            state = TaskState.DISPATCHING
            if files == 0:
                raise StepFailed("the pipeline produced no DICOM files to send")
        else:
            state = TaskState.DISCARDED if discard else TaskState.DONE
        with self.engine.begin() as conn:
            handed_on = conn.execute(
                update(TASKS)
                .where(self._mine(task.id, owner))
                .values(
                    state=state,
                    file_count=files,
                    updated_at=now,
                    error=None,
                    lease_owner=None,
                    lease_expires=None,
                    not_before=None,
                )
            ).rowcount
            if not handed_on:  # the lease went to another processor: it finishes the task
                conn.rollback()
                return TaskState.PROCESSING
            for step in task.results:  # any step may ask, as in mercure
                notification = ((step or {}).get("result") or {}).get(NOTIFICATION)
                if isinstance(notification, dict):
                    record_event(
                        conn,
                        "process.notification",
                        str(notification.get("text", ""))[:2000],
                        task_id=task.id,
                        details={
                            "requested": bool(notification.get("requested", False)),
                            "module": (step or {}).get("module", ""),
                        },
                    )
            if state == TaskState.DISPATCHING and targets is not None:
                conn.execute(delete(TASK_TARGETS).where(TASK_TARGETS.c.task_id == task.id))
                conn.execute(insert(TASK_TARGETS), pending_targets(task.id, targets, now))
                record_event(
                    conn,
                    "process.routing",
                    f"the module chose the targets: {', '.join(targets)}",
                    task_id=task.id,
                )
            if discard:
                record_event(
                    conn, "process.routing", "the module discarded the task", task_id=task.id
                )
            record_event(
                conn,
                "process.done",
                f"pipeline finished: {files} DICOM file(s) in the result",
                task_id=task.id,
                details={"files": files, "next": state},
            )
        return state

    def _routing(
        self, task: _Task, rule: Any, output: dict[str, Any], config: Config
    ) -> tuple[list[str] | None, bool]:
        """The targets a module chose (None: the rule's own) and whether it discarded."""
        directive = output.get(ROUTING)
        if not isinstance(directive, dict) or rule is None or not rule.dynamic_routing:
            if isinstance(directive, dict):
                self._event(
                    task.id,
                    "process.routing",
                    "the module asked for routing, which the rule does not allow; ignored",
                    severity="warning",
                )
            return None, False
        if directive.get("discard"):
            return None, True
        wanted = directive.get("target")
        if isinstance(wanted, str):
            wanted = [wanted]
        if not wanted:
            if directive.get("use_alternate_target") and rule.alternate_target:
                return [rule.alternate_target], False
            return None, False
        allowed = rule.dynamic_routing_allowed_targets or list(config.targets)
        if not isinstance(wanted, list) or any(
            not isinstance(t, str) or t not in allowed or t not in config.targets for t in wanted
        ):
            self._event(
                task.id,
                "process.routing",
                f"the module asked for targets the rule does not allow ({wanted!r}); "
                "the rule's targets are used",
                severity="warning",
            )
            return None, False
        return list(dict.fromkeys(wanted)), False

    # -- bookkeeping ---------------------------------------------------------------------

    def _mine(self, task_id: str, owner: str | None) -> Any:
        # A processor that lost its lease must not overwrite what the new holder writes.
        return held_by(task_id, owner)

    def _set(self, task_id: str, owner: str | None, **values: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(TASKS)
                .where(self._mine(task_id, owner))
                .values(updated_at=datetime.now(UTC), **values)
            )

    def _event(self, task_id: str, kind: str, message: str, **kwargs: Any) -> None:
        with self.engine.begin() as conn:
            record_event(conn, kind, message, task_id=task_id, **kwargs)

    def _hand_back(self, task: _Task, index: int, owner: str | None) -> str:
        """Release the task at this step, for any processor to take up again at once."""
        name = task.modules[index]
        with self.engine.begin() as conn:
            released = conn.execute(
                update(TASKS)
                .where(self._mine(task.id, owner))
                .values(updated_at=datetime.now(UTC), lease_owner=None, lease_expires=None)
            ).rowcount
            if released:
                record_event(
                    conn,
                    "process.interrupted",
                    f"step {index + 1} ({name}) stopped: the processor is stopping; "
                    "the step runs again when a processor takes the task up",
                    severity="warning",
                    task_id=task.id,
                    details={"step": index, "module": name},
                )
        return TaskState.PROCESSING

    def _fail(
        self, task: _Task, index: int, reason: str, owner: str | None, step_back: bool = False
    ) -> str:
        name = task.modules[index] if index < len(task.modules) else ""
        log_path = task.folder / "logs" / f"{index}-{_file_name(name)}.log"
        tail = _tail(log_path)
        log.warning("task %s: step %d (%s) failed: %s", task.id, index + 1, name, reason)
        with self.engine.begin() as conn:
            conn.execute(
                update(TASKS)
                .where(self._mine(task.id, owner))
                .values(
                    state=TaskState.ERROR,
                    step=min(task.step, index) if step_back else task.step,
                    error=f"step {index + 1} ({name}): {reason}",
                    updated_at=datetime.now(UTC),
                    lease_owner=None,
                    lease_expires=None,
                )
            )
            record_event(
                conn,
                "process.error",
                f"step {index + 1} ({name}) failed: {reason}",
                severity="error",
                task_id=task.id,
                details={"step": index, "module": name, "log_tail": tail},
            )
        return TaskState.ERROR


def give_up_or_retry(engine: Engine, task_id: str, owner: str, error: BaseException) -> str:
    """After an unexpected failure (a bug, the database gone): try again a little later, and
    after MAX_UNEXPECTED of them put the task in error instead of looping for ever."""
    now = datetime.now(UTC)
    with engine.begin() as conn:
        attempts = conn.execute(
            select(TASKS.c.attempts).where(TASKS.c.id == task_id)
        ).scalar_one_or_none()
        attempts = (attempts or 0) + 1
        mine = held_by(task_id, owner)
        reason = f"internal error in the processor: {type(error).__name__}"
        if attempts >= MAX_UNEXPECTED:
            conn.execute(
                update(TASKS)
                .where(mine)
                .values(
                    state=TaskState.ERROR,
                    attempts=attempts,
                    error=f"{reason} (see the processor's log)",
                    updated_at=now,
                    lease_owner=None,
                    lease_expires=None,
                )
            )
            record_event(conn, "process.error", reason, severity="error", task_id=task_id)
            return TaskState.ERROR
        conn.execute(
            update(TASKS)
            .where(mine)
            .values(
                attempts=attempts,
                not_before=now + UNEXPECTED_RETRY_STEP * attempts,
                lease_owner=None,
                lease_expires=None,
            )
        )
        record_event(
            conn,
            "process.retry",
            f"{reason}; trying again",
            severity="warning",
            task_id=task_id,
        )
    return TaskState.PROCESSING
