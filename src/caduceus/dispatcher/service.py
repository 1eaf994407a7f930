"""The dispatcher service: claims due tasks from the shared queue and sends them."""

from __future__ import annotations

import logging
from datetime import timedelta

from caduceus.core.config import store
from caduceus.core.database import open_database
from caduceus.core.lease_owners import this_process
from caduceus.core.lifecycle import stop_on_signals
from caduceus.core.settings import Settings
from caduceus.core.storage import DataRoot
from caduceus.core.work_queue import DISPATCH, Job, Worker
from caduceus.dispatcher.dispatch import dispatch

log = logging.getLogger("caduceus.dispatcher")


def serve(settings: Settings) -> None:
    stopping = stop_on_signals()
    engine = open_database(settings)
    root = DataRoot(settings.home)
    # Host, pid and start time: a successor on this host knows at once that this one is gone.
    owner = this_process()

    def send(job: Job) -> str:
        config = store.current_or_default(engine)
        return dispatch(
            engine,
            root,
            config,
            job.task_id,
            job.suspended,
            owner=job.owner,
            lost=job.lost,
            stop=stopping,
        )

    log.info("dispatcher %s started", owner)
    Worker(
        engine,
        DISPATCH,
        owner,
        send,
        stopping,
        log,
        service="dispatcher",
        lease=timedelta(seconds=settings.dispatcher_lease_seconds),
        silent_after=timedelta(seconds=settings.lease_owner_silent_seconds),
        idle_wait=settings.queue_idle_wait_seconds,
    ).run()
    engine.dispose()
