"""`caduceus web`: the bookkeeper API (and the web interface) on CADUCEUS_WEB_PORT."""

from __future__ import annotations

import logging

import uvicorn

from caduceus.core.database import open_database
from caduceus.core.lifecycle import stop_on_signals
from caduceus.core.settings import Settings
from caduceus.web.app import create_app
from caduceus.web.auth import ensure_initial_admin

log = logging.getLogger("caduceus.web")


def serve(settings: Settings) -> None:
    engine = open_database(settings, pool_size=8)
    ensure_initial_admin(engine, settings.home)
    app = create_app(settings, engine)
    log.info("web interface and API on %s:%d", settings.web_host, settings.web_port)
    # uvicorn sends the SIGTERM that stopped it to the handler found before it started: the
    # default one would kill the process before it records that it stopped (its heartbeat).
    stop_on_signals()
    uvicorn.run(
        app,
        host=settings.web_host,
        port=settings.web_port,
        log_config=None,  # our own logging setup, not uvicorn's
        access_log=False,
        # X-Forwarded-For decides whose failed logins are counted: believed only from the
        # proxies the administrator names, never by default (uvicorn's own default would
        # trust 127.0.0.1).
        proxy_headers=bool(settings.web_trusted_proxies),
        forwarded_allow_ips=list(settings.web_trusted_proxies) or None,
    )
    engine.dispose()
