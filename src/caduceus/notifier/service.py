"""The notifier service: every second (notifier_interval_seconds), new events become
notifications and due ones are sent."""

from __future__ import annotations

import logging

from caduceus.core.config import store
from caduceus.core.database import open_database
from caduceus.core.lifecycle import stop_on_signals
from caduceus.core.settings import Settings
from caduceus.notifier.consume import consume
from caduceus.notifier.deliver import deliver_due

log = logging.getLogger("caduceus.notifier")


def serve(settings: Settings) -> None:
    stopping = stop_on_signals()
    engine = open_database(settings)
    # httpx logs each request at INFO; a webhook URL may carry a token (send.py also strips
    # URLs from those lines down to their origin).
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    log.info("notifier started")
    while not stopping.is_set():
        try:
            config = store.current_or_default(engine)
            while consume(engine, config).more and not stopping.is_set():
                pass
            deliver_due(engine, config, should_stop=stopping.is_set)
        except Exception as exc:
            # No traceback: a frame could hold a rendered payload or a webhook URL.
            log.error("notifier pass failed (%s: %s); retrying", type(exc).__name__, exc)
        stopping.wait(settings.notifier_interval_seconds)
    engine.dispose()
    log.info("notifier stopped")
