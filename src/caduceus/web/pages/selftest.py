"""The Self-test page: start a run, watch its stages pass, see the last run's result."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from caduceus.selftest import STAGES
from caduceus.web.api.selftest import latest
from caduceus.web.pages.rendering import PageOperator, render

router = APIRouter(include_in_schema=False)


@router.get("/selftest", response_class=HTMLResponse)
def page(request: Request, who: PageOperator) -> HTMLResponse:
    settings = request.app.state.settings
    return render(
        request,
        "selftest.html",
        who,
        "Self-test",
        run=latest(request),
        stages=STAGES,
        receiver=f"{settings.ae_title} on port {settings.dicom_port}",
    )
