"""The Users page (admins): who may use caduceus and with which role."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from caduceus.web.api.accounts import users as list_users
from caduceus.web.auth import ROLES
from caduceus.web.pages.rendering import PageAdmin, render

router = APIRouter(include_in_schema=False)


@router.get("/users", response_class=HTMLResponse)
def page(request: Request, who: PageAdmin) -> HTMLResponse:
    return render(request, "users.html", who, "Users", users=list_users(request, who), roles=ROLES)
