"""A worker's loop over one queue: claim a task, keep its lease while working, release it.

The dispatcher and every processor thread run this loop; what they do with a task is the
`work` they hand it. A failure of the work is logged and handed to `on_failure` (by default
the task is released for the next worker); a failure of the loop itself (the database gone)
is logged and retried after a pause, never the end of the service.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import ColumnElement, Engine

from caduceus.core.logs import log_context
from caduceus.core.work_queue.controls import suspended
from caduceus.core.work_queue.lease import LEASE, OWNER_SILENT_AFTER, claim, keep_lease, release
from caduceus.core.work_queue.predicates import DISPATCHABLE, PROCESSABLE

# Seconds an idle worker waits before it asks the queue again; the services pass the setting
# queue_idle_wait_seconds, whose default this is: short, so that a new task is taken up at
# once, yet the database sees only a couple of cheap queries a second per worker.
IDLE_WAIT = 0.5
# After a failed pass of the loop (the database unreachable, locked), it waits this many idle
# waits: the failure is logged once every two seconds, not on every try.
FAILED_LOOP_WAITS = 4


@dataclass(frozen=True)
class Queue:
    """One queue: the tasks that are its own, and the queue control that suspends it."""

    name: str
    mine: ColumnElement[bool]


PROCESS = Queue("process", PROCESSABLE)
DISPATCH = Queue("dispatch", DISPATCHABLE)


@dataclass(frozen=True)
class Job:
    """A claimed task, as the work sees it."""

    task_id: str
    owner: str
    # Set when the lease went to another worker: long work stops early, and writes nothing.
    lost: threading.Event
    # The queues suspended when the task was claimed ("dispatch:<target>" for the dispatcher).
    suspended: set[str]


Work = Callable[[Job], str]
OnFailure = Callable[[Engine, str, str, Exception], object]


def release_after_failure(engine: Engine, task_id: str, owner: str, error: Exception) -> None:
    """Give the task back to the queue, for the next worker to try."""
    release(engine, task_id, owner)


@dataclass
class Worker:
    """One worker on one queue, as `owner`; `work` returns the task's new state, for the log."""

    engine: Engine
    queue: Queue
    owner: str
    work: Work
    stopping: threading.Event
    log: logging.Logger
    service: str  # as the log names it: "task ... failed in the <service>"
    lease: timedelta = LEASE
    silent_after: timedelta = OWNER_SILENT_AFTER
    idle_wait: float = IDLE_WAIT
    on_failure: OnFailure = field(default=release_after_failure)

    def run(self) -> None:
        """Work tasks until `stopping` is set."""
        while not self.stopping.is_set():
            try:
                if not self.step():
                    self.stopping.wait(self.idle_wait)
            except Exception:
                self.log.exception("%s loop failed; retrying", self.service)
                self.stopping.wait(self.idle_wait * FAILED_LOOP_WAITS)

    def step(self) -> bool:
        """Claim one task and work it; False when there was none (or the queue is suspended)."""
        paused = suspended(self.engine)
        task_id = (
            None
            if self.queue.name in paused
            else claim(
                self.engine,
                self.owner,
                self.queue.mine,
                lease=self.lease,
                silent_after=self.silent_after,
            )
        )
        if task_id is None:
            return False
        with log_context(task=task_id):
            try:
                with keep_lease(self.engine, task_id, self.owner, self.lease) as lost:
                    state = self.work(Job(task_id, self.owner, lost, paused))
                self.log.info("task %s: %s", task_id, state)
            except Exception as exc:
                self.log.exception("task %s failed in the %s", task_id, self.service)
                self.on_failure(self.engine, task_id, self.owner, exc)
                self.stopping.wait(self.idle_wait)
        return True
