"""The Queue page."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from caduceus.web.pages.rendering import PageViewer, render

router = APIRouter(include_in_schema=False)


@router.get("/queue", response_class=HTMLResponse)
def page(request: Request, who: PageViewer) -> HTMLResponse:
    return render(request, "placeholder.html", who, "Queue")
