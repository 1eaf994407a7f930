"""The router service: completes groups and makes tasks, woken by arrivals and by timers.

It never scans folders. Each pass asks the database for groups still receiving; between passes
it sleeps until the earliest group falls due, but never longer than a second, so a new arrival
is noticed and a trigger that fires becomes a task in well under a second.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from caduceus.core.config import store
from caduceus.core.database import open_database
from caduceus.core.lifecycle import stop_on_signals
from caduceus.core.logs import log_context, phi
from caduceus.core.rules import Budget
from caduceus.core.settings import Settings
from caduceus.core.storage import DataRoot
from caduceus.router.completion import Router
from caduceus.router.tuning import MAX_SLEEP, MIN_SLEEP

log = logging.getLogger("caduceus.router")


def serve(settings: Settings) -> None:
    stopping = stop_on_signals()
    engine = open_database(settings)
    root = DataRoot(settings.home)
    root.create(settings.folder_mode)
    router = Router(engine, root, Budget.of(settings))
    log.info("router started")
    while not stopping.is_set():
        try:
            # The configuration is read each pass inside the guard: a dropped or locked
            # database is a failed pass, retried, never the end of the process.
            result = router.run_pass(store.current_or_default(engine))
        except Exception:
            log.exception("router pass failed; retrying")
            stopping.wait(MAX_SLEEP)
            continue
        for completed in result.completed:
            # A patient group is named by the patient ID: PHI, shown only where allowed.
            level, _, key = completed.partition(":")
            log.info("completed %s:%s", level, phi(key) if level == "patient" else key)
        for task_id in result.tasks:
            with log_context(task=task_id):  # the task's lines, filtered by task, start here
                log.info("task %s created", task_id)
        wait = MAX_SLEEP
        if result.next_due is not None:
            wait = (result.next_due - datetime.now(UTC)).total_seconds()
        stopping.wait(min(MAX_SLEEP, max(MIN_SLEEP, wait)))
    engine.dispose()
    log.info("router stopped")


__all__ = ["serve"]
