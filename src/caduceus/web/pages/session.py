"""Logging in, and one's own account: the password change that the first login demands."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from caduceus.web.api.accounts import tokens
from caduceus.web.auth import SESSION_COOKIE, Principal, session_principal
from caduceus.web.pages.rendering import PageViewer, render

router = APIRouter(include_in_schema=False)


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request) -> HTMLResponse:
    """Open to everyone: it shows nothing but the form."""
    who: Principal | None = None
    if cookie := request.cookies.get(SESSION_COOKIE):
        who = session_principal(request.app.state.engine, cookie)
    return render(request, "login.html", None, "Log in", signed_in=who is not None)


@router.get("/account", response_class=HTMLResponse)
def account(request: Request, who: PageViewer) -> HTMLResponse:
    """One's role, the password change, and one's own API tokens (newest first)."""
    own = sorted(tokens(request, who), key=lambda t: t["id"], reverse=True)
    return render(request, "account.html", who, "Your account", tokens=own)


@router.get("/account/password", response_class=HTMLResponse)
def password_page(request: Request, who: PageViewer) -> HTMLResponse:
    return render(request, "password.html", who, "Change your password")
