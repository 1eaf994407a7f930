"""The processor service: claims tasks that have modules to run and runs their pipelines.

`processor_parallel` workers share one process; each claims a task, renews its lease while the
modules run, and hands the task on. Any number of processors, on any number of machines, share
the queue.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from sqlalchemy import Engine

from caduceus.core.config import store
from caduceus.core.database import open_database
from caduceus.core.lease_owners import this_process
from caduceus.core.lifecycle import stop_on_signals
from caduceus.core.settings import Settings
from caduceus.core.storage import DataRoot
from caduceus.core.work_queue import PROCESS, Job, Worker, release
from caduceus.processor.pipeline import Pipeline, give_up_or_retry
from caduceus.processor.runners import RunnerError, runner_factory

log = logging.getLogger("caduceus.processor")


def _record_failure(engine: Engine, task_id: str, owner: str, error: Exception) -> None:
    """Retry the task a little later, or put it in error after repeated failures; if even
    that cannot be written, release it for the next processor."""
    try:
        give_up_or_retry(engine, task_id, owner, error)
    except Exception:
        log.exception("task %s: cannot record the failure", task_id)
        release(engine, task_id, owner)


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

    def run(job: Job) -> str:
        config = store.current_or_default(engine)
        return pipeline.run(config, job.task_id, owner=job.owner, lost=job.lost, stop=stopping)

    def work(number: int) -> None:
        Worker(
            engine,
            PROCESS,
            f"{owner}:{number}",
            run,
            stopping,
            log,
            service="processor",
            lease=lease,
            silent_after=silent,
            idle_wait=settings.queue_idle_wait_seconds,
            on_failure=_record_failure,
        ).run()

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
