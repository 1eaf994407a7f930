"""Findings of the second review of the web interface, each kept fixed by a test."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from sqlalchemy import Engine

from tests.support.browser import browser_login
from tests.support.web import PASSWORD, add_user


@pytest.mark.parametrize("bad", ["/%09/example.com/", "/%0A/example.com/", "/%5C/example.com/"])
def test_the_login_never_leads_to_another_site(
    served: str, page: Any, web_engine: Engine, bad: str
) -> None:
    """A link to /login?next=... from a phishing mail must land on caduceus itself: browsers
    drop tabs and newlines from addresses and read a backslash as a slash, so "/<tab>/evil"
    would become "//evil", another site."""
    add_user(web_engine, "viewer-user", "viewer")
    page.goto(f"{served}/login?next={bad}")
    page.fill("#username", "viewer-user")
    page.fill("#password", PASSWORD)
    elsewhere: list[str] = []
    page.on("request", lambda r: None if r.url.startswith(served) else elsewhere.append(r.url))
    page.click("#login-form button[type=submit]")
    # Gone elsewhere, the wait fails (nothing answers there): the assertion says where.
    with contextlib.suppress(Exception):
        page.wait_for_url(f"{served}/", timeout=10_000)
    assert elsewhere == [] and page.url == f"{served}/", (page.url, elsewhere)


def test_a_path_on_this_site_is_kept_after_the_login(
    served: str, page: Any, web_engine: Engine
) -> None:
    add_user(web_engine, "viewer-user", "viewer")
    browser_login(page, served, "viewer-user", "/queue?tab=failed")
    assert page.url == f"{served}/queue?tab=failed"
