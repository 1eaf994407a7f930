"""The bookkeeper's HTTP API and the web interface: one FastAPI application.

Every route requires a user: an API token (Authorization: Bearer) or a login session (a
cookie, with a CSRF token on every change). Open are only the login (its form and its POST)
and the static files (style sheet, scripts), which hold no data.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request, Response, status
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException

from caduceus import __version__
from caduceus.core.db.engine import writer
from caduceus.core.secret_keys import SecretKeyError
from caduceus.core.settings import Settings
from caduceus.core.storage import DataRoot
from caduceus.web.api import (
    accounts,
    control,
    modules,
    records,
    rules,
    selftest,
    services,
    targets,
    tasks,
)
from caduceus.web.auth import Viewer
from caduceus.web.body_limit import BodyLimit
from caduceus.web.pages import (
    configuration,
    logs,
    overview,
    queue,
    session,
    users,
)
from caduceus.web.pages import modules as modules_page
from caduceus.web.pages import rules as rules_page
from caduceus.web.pages import (
    selftest as selftest_page,
)
from caduceus.web.pages import targets as targets_page
from caduceus.web.pages.rendering import STATIC, PageRedirect, render
from caduceus.web.password_work import PasswordWork
from caduceus.web.throttle import LoginThrottle, PasswordCheckThrottle

log = logging.getLogger("caduceus.web")

OPEN_ROUTES = frozenset({("POST", "/api/login"), ("GET", "/login")})
API_ROUTERS = (accounts, records, tasks, control, rules, targets, modules, services, selftest)
PAGE_ROUTERS = (
    session,
    overview,
    queue,
    rules_page,
    targets_page,
    modules_page,
    users,
    configuration,
    logs,
    selftest_page,
)
# Pages load nothing from elsewhere and run no inline script: an injected <script> would not
# run even if an escaping were missed somewhere.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)


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
    app.state.throttle = LoginThrottle(
        settings.web_login_failures_per_address,
        settings.web_login_failures_per_name,
        settings.web_login_window_seconds,
        settings.web_throttle_max_entries,
        settings.web_login_concurrent_per_address,
    )
    app.state.password_throttle = PasswordCheckThrottle(
        settings.web_password_change_failures,
        settings.web_login_window_seconds,
        settings.web_throttle_max_entries,
    )
    app.state.passwords = PasswordWork(settings.web_password_workers, settings.web_password_queue)
    for module in API_ROUTERS:
        app.include_router(module.router)
    for page in PAGE_ROUTERS:
        app.include_router(page.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    _add_page_handling(app)

    @app.get("/metrics", tags=["metrics"])
    def metrics(request: Request, _: Viewer) -> Response:
        """Prometheus metrics, from the shared database and the data root's disk."""
        from caduceus.bookkeeper.metrics import render_metrics

        body, content_type = render_metrics(engine, DataRoot(settings.home))
        return Response(body, media_type=content_type)

    _protect_docs(app)
    # Added last, so outermost: a body is capped before any other part of the stack reads it.
    app.add_middleware(
        BodyLimit,
        anonymous_limit=settings.web_anonymous_body_bytes,
        anonymous_paths=frozenset(path for _, path in OPEN_ROUTES),
    )
    return app


def _protect_docs(app: FastAPI) -> None:
    """The OpenAPI description and its reference page need a user too. The reference is
    drawn on the server from the description: no viewer loaded from elsewhere, no inline
    script, so it works on a network without internet and under the same policy."""
    from fastapi import Depends

    from caduceus.web.auth import Principal, requires
    from caduceus.web.pages.api_reference import operations

    app.router.routes = [
        r
        for r in app.router.routes
        if getattr(r, "path", "") not in ("/api/docs", "/api/openapi.json")
    ]

    @app.get("/api/openapi.json", include_in_schema=False)
    def openapi(_: Any = Depends(requires("viewer"))) -> dict[str, Any]:
        return app.openapi()

    @app.get("/api/docs", include_in_schema=False)
    def docs(request: Request, who: Principal = Depends(requires("viewer"))) -> Response:
        return render(
            request, "api_docs.html", who, "API reference", groups=operations(app.openapi())
        )


def _add_page_handling(app: FastAPI) -> None:
    """Pages answer in HTML (a redirect to the login, an error page); the API in JSON."""

    @app.exception_handler(PageRedirect)
    async def redirect(request: Request, exc: PageRedirect) -> Response:
        return RedirectResponse(exc.location, status_code=303)

    @app.exception_handler(StarletteHTTPException)
    async def error_page(request: Request, exc: StarletteHTTPException) -> Response:
        if not _is_page(request):
            return await http_exception_handler(request, exc)
        return render(
            request,
            "error.html",
            None,
            "Not found" if exc.status_code == 404 else "Not allowed",
            status_code=exc.status_code,
            detail=str(exc.detail),
        )

    @app.exception_handler(DBAPIError)
    async def database_unavailable(request: Request, exc: DBAPIError) -> Response:
        # A dropped, locked or restarting database is a passing state: answer 503 so a client
        # (or a load balancer) tries again, never 500, and never the statement or its values.
        log.warning(
            "%s %s: the database did not answer (%s)",
            request.method,
            request.url.path,
            type(exc.orig).__name__ if exc.orig is not None else type(exc).__name__,
        )
        message = "The database is not available at the moment; try again shortly."
        headers = {"Retry-After": "5"}
        if _is_page(request):
            return PlainTextResponse(message, status_code=503, headers=headers)
        return JSONResponse({"detail": message}, status_code=503, headers=headers)

    @app.exception_handler(SecretKeyError)
    async def wrong_key(request: Request, exc: SecretKeyError) -> Response:
        # This machine's key file is not the one the stored secrets were sealed with: nothing
        # was saved, and saving would leave versions the other machines cannot read.
        log.error("%s %s: %s", request.method, request.url.path, exc)
        message = f"Nothing was saved: {exc}"
        if _is_page(request):
            return PlainTextResponse(message, status_code=503)
        return JSONResponse({"detail": message}, status_code=503)

    @app.exception_handler(RequestValidationError)
    async def bad_page_address(request: Request, exc: RequestValidationError) -> Response:
        # /tasks/abc or /series/x: for a person this is a page that does not exist.
        if _is_page(request):
            return render(
                request, "error.html", None, "Not found", status_code=404, detail="No such page."
            )
        return JSONResponse(
            {"detail": quiet_errors(exc.errors())},
            status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
        )

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"
        response.headers["X-Frame-Options"] = "DENY"
        if not request.url.path.startswith("/static"):
            response.headers["Cache-Control"] = "no-store"
        return response


def quiet_errors(errors: Any) -> list[dict[str, Any]]:
    """Validation errors without the input that failed: an answer must not echo a request
    back (a 10 MB body, or a password sent to the wrong field). Where and why only."""
    return [
        {
            "type": str(error.get("type", "")),
            "loc": [part if isinstance(part, int) else str(part)[:64] for part in error["loc"]],
            "msg": str(error.get("msg", ""))[:200],
        }
        for error in list(errors)[:20]
    ]


def _is_page(request: Request) -> bool:
    """A page a person asked for, answered in HTML (the API answers in JSON)."""
    return request.method == "GET" and not request.url.path.startswith(
        ("/api", "/metrics", "/static")
    )
