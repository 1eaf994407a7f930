"""The bookkeeper's HTTP API (and, later, the web interface): one FastAPI application.

Every route requires a user: an API token (Authorization: Bearer) or a login session (a
cookie, with a CSRF token on every change). Only POST /api/login is open.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request, Response
from sqlalchemy import Engine

from caduceus import __version__
from caduceus.core.db.engine import writer
from caduceus.core.settings import Settings
from caduceus.core.storage import DataRoot
from caduceus.web.api import accounts, control, records, tasks
from caduceus.web.auth import LoginThrottle, Viewer

OPEN_ROUTES = frozenset({("POST", "/api/login")})


def all_routes(app: FastAPI) -> list[tuple[str, str]]:
    """(method, path) of every HTTP route, included routers too: what a test must check."""
    found: list[tuple[str, str]] = []

    def walk(routes: list[Any]) -> None:
        for route in routes:
            included = getattr(route, "original_router", None)
            if included is not None:
                walk(list(included.routes))
            elif hasattr(route, "methods") and hasattr(route, "path"):
                found.extend((method, route.path) for method in sorted(route.methods))

    walk(list(app.router.routes))
    return found


def create_app(settings: Settings, engine: Engine) -> FastAPI:
    app = FastAPI(
        title="caduceus",
        version=__version__,
        description="The bookkeeper API of caduceus: history, tasks, configuration, control.",
        # Served below, behind a login like everything else.
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.settings = settings
    # Reads must not take SQLite's write lock (the receiver commits every instance under it);
    # changes take it up front. Both share one connection pool.
    app.state.engine = engine.execution_options(caduceus_write=False)
    app.state.writer = writer(engine)
    app.state.throttle = LoginThrottle()
    for module in (accounts, records, tasks, control):
        app.include_router(module.router)

    @app.get("/metrics", tags=["metrics"])
    def metrics(request: Request, _: Viewer) -> Response:
        """Prometheus metrics, from the shared database and the data root's disk."""
        from caduceus.bookkeeper.metrics import render_metrics

        body, content_type = render_metrics(engine, DataRoot(settings.home))
        return Response(body, media_type=content_type)

    _protect_docs(app)
    return app


def _protect_docs(app: FastAPI) -> None:
    """The OpenAPI description and its viewer need a user too."""
    from fastapi import Depends
    from fastapi.openapi.docs import get_swagger_ui_html

    from caduceus.web.auth import requires

    app.router.routes = [
        r
        for r in app.router.routes
        if getattr(r, "path", "") not in ("/api/docs", "/api/openapi.json")
    ]

    @app.get("/api/openapi.json", include_in_schema=False)
    def openapi(_: Any = Depends(requires("viewer"))) -> dict[str, Any]:
        return app.openapi()

    @app.get("/api/docs", include_in_schema=False)
    def docs(_: Any = Depends(requires("viewer"))) -> Response:
        return get_swagger_ui_html(openapi_url="/api/openapi.json", title="caduceus API")
