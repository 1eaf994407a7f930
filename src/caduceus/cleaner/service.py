"""The cleaner service: a pass every few seconds (cleaner_interval_seconds), so the disk's
high-water mark is noticed early."""

from __future__ import annotations

import logging

from caduceus.cleaner.cleaning import Cleaner
from caduceus.core.config import store
from caduceus.core.database import open_database
from caduceus.core.lifecycle import stop_on_signals
from caduceus.core.settings import Settings
from caduceus.core.storage import DataRoot

log = logging.getLogger("caduceus.cleaner")


def serve(settings: Settings) -> None:
    stopping = stop_on_signals()
    engine = open_database(settings)
    root = DataRoot(settings.home)
    root.create(settings.folder_mode)
    cleaner = Cleaner(
        engine,
        root,
        should_stop=stopping.is_set,
        reserve_bytes=settings.receiver_disk_reserve_mb * 1024 * 1024,
    )
    log.info("cleaner started")
    while not stopping.is_set():
        try:
            result = cleaner.run_pass(store.current_or_default(engine))
            root.purge_stale_temp()
            if result.tasks or result.series:
                log.info(
                    "removed %d task folder(s) and the files of %d series: %d bytes freed",
                    len(result.tasks),
                    len(result.series),
                    result.freed.bytes,
                )
        except Exception:
            log.exception("cleaner pass failed; retrying")
        stopping.wait(settings.cleaner_interval_seconds)
    engine.dispose()
    log.info("cleaner stopped")
