"""The dispatcher service: claims due tasks from the shared queue and sends them."""

from __future__ import annotations

import logging
from datetime import timedelta

from caduceus.core.config import store
from caduceus.core.database import open_database
from caduceus.core.lease_owners import this_process
from caduceus.core.lifecycle import stop_on_signals
from caduceus.core.logs import log_context
from caduceus.core.settings import Settings
from caduceus.core.storage import DataRoot
from caduceus.dispatcher.dispatch import dispatch
from caduceus.dispatcher.queue import claim, keep_lease, release, suspended

log = logging.getLogger("caduceus.dispatcher")
IDLE_WAIT = 0.5


def serve(settings: Settings) -> None:
    stopping = stop_on_signals()
    engine = open_database(settings)
    root = DataRoot(settings.home)
    # Host, pid and start time: a successor on this host knows at once that this one is gone.
    owner = this_process()
    lease = timedelta(seconds=settings.dispatcher_lease_seconds)
    silent = timedelta(seconds=settings.lease_owner_silent_seconds)
    log.info("dispatcher %s started", owner)
    while not stopping.is_set():
        try:
            paused = suspended(engine)
            task_id = (
                None
                if "dispatch" in paused
                else claim(engine, owner, lease=lease, silent_after=silent)
            )
            if task_id is None:
                stopping.wait(IDLE_WAIT)
                continue
            with log_context(task=task_id):
                try:
                    with keep_lease(engine, task_id, owner, lease) as lost:
                        config = store.current_or_default(engine)
                        state = dispatch(
                            engine,
                            root,
                            config,
                            task_id,
                            paused,
                            owner=owner,
                            lost=lost,
                            stop=stopping,
                        )
                    log.info("task %s: %s", task_id, state)
                except Exception:
                    log.exception("task %s failed in the dispatcher", task_id)
                    release(engine, task_id, owner)
                    stopping.wait(IDLE_WAIT)
        except Exception:
            log.exception("dispatcher loop failed; retrying")
            stopping.wait(IDLE_WAIT * 4)
    engine.dispose()
