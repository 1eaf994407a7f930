"""Findings of the second review of the web interface, each kept fixed by a test."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from caduceus.web.body_limit import MAX_BODY_BYTES
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


def _chunks(total: int, size: int = 1024 * 1024) -> Iterator[bytes]:
    """A JSON document of about `total` bytes, sent without a declared length."""
    yield b'{"comment": "'
    for _ in range(total // size):
        yield b"x" * size
    yield b'"}'


def test_a_huge_body_is_refused_before_anyone_reads_it(web: TestClient) -> None:
    """Nobody logged in: the body must not be read and parsed before the login check."""
    too_much = MAX_BODY_BYTES + 1024 * 1024
    declared = web.post(
        "/api/login",
        content=b"x" * too_much,
        headers={"Content-Type": "application/json"},
    )
    assert declared.status_code == 413, declared.text
    chunked = web.put(
        "/api/config", content=_chunks(too_much), headers={"Content-Type": "application/json"}
    )
    assert chunked.status_code == 413, chunked.text
    small = web.put("/api/config", json={"comment": "x" * 1000})
    assert small.status_code == 401, "a body within the limit reaches the login check"
