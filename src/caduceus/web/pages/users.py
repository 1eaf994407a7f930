"""The Users page."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from caduceus.web.pages.rendering import PageAdmin, render

router = APIRouter(include_in_schema=False)


@router.get("/users", response_class=HTMLResponse)
def page(request: Request, who: PageAdmin) -> HTMLResponse:
    return render(request, "placeholder.html", who, "Users")
