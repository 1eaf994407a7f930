"""Hardening of the web interface: the login never leads to another site, a huge request body
is refused before anyone reads it, and a study queued for a removed target ends in a visible
error."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from caduceus.core.config import store
from caduceus.core.config.models import Config
from caduceus.web.body_limit import MAX_BODY_BYTES
from tests.support.browser import browser_login
from tests.support.processes import Caduceus
from tests.support.web import PASSWORD, add_user, as_role, web_client
from tests.test_dispatcher import run_dispatcher
from tests.test_router import later, router_for, send, tasks


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


def test_a_removed_target_leaves_its_queued_task_in_error_not_done(
    receiver: Caduceus, database_url: str, tmp_path: Path
) -> None:
    """An admin moves a rule to another target and removes the old one while a study waits
    for it: the study must end as a visible error (restartable once the target is back),
    never as done."""
    old = tmp_path / "old"
    old.mkdir()
    engine = receiver.engine()
    before = Config.model_validate(
        {
            "settings": {"retry_delay": 10, "retry_max": 1},
            "targets": {"old": {"type": "folder", "path": str(old)}},
            "rules": {"ct": {"rule": "@Modality@ == 'CT'", "targets": ["old"]}},
        }
    )
    store.save(engine, before, "tester")
    send(receiver, tmp_path / "ct", count=2, modality="CT")
    router_for(receiver).run_pass(before, later(61))
    [task] = tasks(receiver)

    web = web_client(receiver.home, database_url, engine)
    csrf = as_role(web, engine, "admin")
    assert web.delete("/api/rules/ct", headers=csrf).status_code == 200
    assert web.delete("/api/targets/old", headers=csrf).status_code == 200
    after = store.current_or_default(engine)

    assert run_dispatcher(receiver, after, later(62)) == ["dispatching"]
    assert run_dispatcher(receiver, after, later(10_000)) == ["error"]  # retry_max 1
    [task] = tasks(receiver)
    assert task["state"] == "error"
    assert "target 'old' is no longer configured" in task["error"]
    assert list(old.iterdir()) == [], "nothing was sent"
    page = web.get(f"/tasks/{task['id']}")
    assert "is no longer configured" in page.text

    # The target is back: a restart sends the study.
    store.save(engine, before, "tester")
    assert web.post(f"/api/tasks/{task['id']}/restart", headers=csrf).status_code == 200
    assert run_dispatcher(receiver, before, later(10_001)) == ["done"]
    assert len(list((old / task["id"]).glob("*.dcm"))) == 2
