"""The Self-test page."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from caduceus.web.pages.rendering import PageOperator, render

router = APIRouter(include_in_schema=False)


@router.get("/selftest", response_class=HTMLResponse)
def page(request: Request, who: PageOperator) -> HTMLResponse:
    return render(request, "placeholder.html", who, "Self-test")
