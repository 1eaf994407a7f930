"""The processor service: claims tasks that have modules to run and runs their pipelines.

`processor_parallel` workers share one process; each claims a task, renews its lease while the
modules run, and hands the task on. Any number of processors, on any number of machines, share
the queue.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from sqlalchemy import and_

from caduceus.core.config import store
from caduceus.core.database import open_database
from caduceus.core.db.models import TASKS
from caduceus.core.lease_owners import this_process
from caduceus.core.lifecycle import stop_on_signals
from caduceus.core.logs import log_context
from caduceus.core.settings import Settings
from caduceus.core.storage import DataRoot
from caduceus.core.work_queue import claim, keep_lease, release, suspended
from caduceus.processor.pipeline import Pipeline, give_up_or_retry
from caduceus.processor.runners import RunnerError, runner_factory

log = logging.getLogger("caduceus.processor")
IDLE_WAIT = 0.5

PROCESSABLE = and_(
    TASKS.c.action.in_(("process", "both")), TASKS.c.state.in_(("queued", "processing"))
)


def serve(settings: Settings) -> None:
    stopping = stop_on_signals()
    engine = open_database(settings, pool_size=settings.processor_parallel + 2)
    root = DataRoot(settings.home)
    root.create(settings.folder_mode)
    try:
        runners = runner_factory(settings)
    except RunnerError as exc:
        log.error("the processor cannot start: %s", exc)
        raise SystemExit(2) from exc
    pipeline = Pipeline(engine, root, runners)
    lease = timedelta(seconds=settings.processor_lease_seconds)
    # Host, pid and start time: a successor on this host knows at once that this one is gone.
    owner = this_process()
    silent = timedelta(seconds=settings.lease_owner_silent_seconds)

    def work(number: int) -> None:
        me = f"{owner}:{number}"
        while not stopping.is_set():
            try:
                task_id = (
                    None
                    if "process" in suspended(engine)
                    else claim(engine, me, PROCESSABLE, lease=lease, silent_after=silent)
                )
                if task_id is None:
                    stopping.wait(IDLE_WAIT)
                    continue
                with log_context(task=task_id):
                    try:
                        with keep_lease(engine, task_id, me, lease) as lost:
                            config = store.current_or_default(engine)
                            state = pipeline.run(
                                config, task_id, owner=me, lost=lost, stop=stopping
                            )
                        log.info("task %s: %s", task_id, state)
                    except Exception as exc:
                        log.exception("task %s failed in the processor", task_id)
                        try:
                            give_up_or_retry(engine, task_id, me, exc)
                        except Exception:
                            log.exception("task %s: cannot record the failure", task_id)
                            release(engine, task_id, me)
                        stopping.wait(IDLE_WAIT)
            except Exception:
                log.exception("processor loop failed; retrying")
                stopping.wait(IDLE_WAIT * 4)

    log.info("processor %s started with %d worker(s)", owner, settings.processor_parallel)
    workers = [
        threading.Thread(target=work, args=(n,), name=f"processor-{n}")
        for n in range(settings.processor_parallel)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    engine.dispose()
    log.info("processor stopped")
