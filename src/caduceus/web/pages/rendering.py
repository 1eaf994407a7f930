"""Rendering the web interface's pages: templates, who is looking, and where they may go.

Pages are server-rendered Jinja2 templates with autoescaping on, so every value that came
from a DICOM file (a patient name, a description, a UID) is escaped wherever it is shown.
A page asks for a user exactly as an API route does (the same session cookie); a visitor
without one is sent to the login page instead of getting a JSON error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import jinja2
from fastapi import Depends, HTTPException, Request, status
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from caduceus import __version__
from caduceus.web.auth import Principal, authenticate
from caduceus.web.pages.times import configured_zone, shown_in, when, when_text, zone_name

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
STATIC = Path(__file__).resolve().parent.parent / "static"
templates = Jinja2Templates(
    env=jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,  # every template, whatever its name: DICOM values are untrusted
        undefined=jinja2.StrictUndefined,
    )
)


@dataclass(frozen=True)
class NavItem:
    path: str
    label: str
    role: str
    # Pages reached from this one that keep it marked in the menu (a task from the queue).
    also: tuple[str, ...] = ()

    def marks(self, path: str) -> bool:
        if self.path == "/":
            return path == "/"
        return any(
            path == prefix or path.startswith(prefix + "/") for prefix in (self.path, *self.also)
        )


# Every page in the menu, and the least role that sees it.
NAV = (
    NavItem("/", "Overview", "viewer"),
    NavItem("/queue", "Queue", "viewer", ("/tasks", "/series", "/studies")),
    NavItem("/rules", "Rules", "viewer"),
    NavItem("/targets", "Targets", "viewer"),
    NavItem("/modules", "Modules", "viewer"),
    NavItem("/users", "Users", "admin"),
    NavItem("/configuration", "Configuration", "viewer"),
    NavItem("/logs", "Logs", "viewer"),
    NavItem("/selftest", "Self-test", "operator"),
)


class PageRedirect(Exception):
    """Raised by a page's dependency; the application answers with a redirect."""

    def __init__(self, location: str):
        super().__init__(location)
        self.location = location


def _page_user(role: str):  # type: ignore[no-untyped-def]
    def check(request: Request) -> Principal:
        try:
            principal = authenticate(request)
        except HTTPException as exc:
            if exc.status_code == status.HTTP_401_UNAUTHORIZED:
                target = request.url.path
                if request.url.query:
                    target += "?" + request.url.query
                raise PageRedirect("/login?next=" + quote(target, safe="")) from exc
            if "password must be changed" in str(exc.detail):
                raise PageRedirect("/account/password") from exc
            raise
        if not principal.can(role):
            raise HTTPException(status.HTTP_403_FORBIDDEN, f"this page needs the {role} role")
        return principal

    return check


PageViewer = Annotated[Principal, Depends(_page_user("viewer"))]
PageOperator = Annotated[Principal, Depends(_page_user("operator"))]
PageAdmin = Annotated[Principal, Depends(_page_user("admin"))]


def static_url(name: str) -> str:
    # The version in the query makes browsers fetch new files after an upgrade.
    return f"/static/{quote(name)}?v={quote(__version__)}"


def size(value: int | float | None) -> str:
    """Bytes for a human: 1.4 GB, 830 kB."""
    if value is None:
        return ""
    amount = float(value)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(amount) < 1000 or unit == "TB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1000
    return f"{amount:.1f} TB"


templates.env.globals["static"] = static_url
templates.env.globals["zone_name"] = zone_name
templates.env.filters["when"] = when
templates.env.filters["when_text"] = when_text
templates.env.filters["size"] = size


def render(
    request: Request,
    template: str,
    who: Principal | None,
    title: str,
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    """A whole page: the layout (menu for the user's role, CSRF token) around the template."""
    nav = [item for item in NAV if who is not None and who.can(item.role)]
    with shown_in(configured_zone(request)):
        return templates.TemplateResponse(
            request,
            template,
            {
                "who": who,
                "title": title,
                "nav": nav,
                "path": request.url.path,
                "csrf_token": who.csrf_token if who else "",
                "version": __version__,
                **context,
            },
            status_code=status_code,
        )


def fragment(request: Request, template: str, **context: Any) -> HTMLResponse:
    """Part of a page, for the live views that refresh themselves (no layout around it)."""
    with shown_in(configured_zone(request)):
        return templates.TemplateResponse(request, template, context)
