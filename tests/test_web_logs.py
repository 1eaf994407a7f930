"""The Logs page and API: each service's log file, filtered by task and level, escaped."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from caduceus.core import logs
from caduceus.core.config import store
from caduceus.core.config.models import Config
from caduceus.core.logs import log_context, make_file_handler
from tests.support.processes import Caduceus, launch_patiently
from tests.support.rows import tasks
from tests.support.sending import send
from tests.support.waiting import wait_until
from tests.support.web import as_role

Writer = logging.Logger


@pytest.fixture
def router_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Writer]:
    """A logger writing to the router's log file in the web application's data root, as the
    router process does (same handler, same masking)."""
    monkeypatch.setattr(logs, "_show_phi", False)
    log = logging.getLogger("caduceus.test.router")
    handler = make_file_handler("router", tmp_path / "home")
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG)
    log.propagate = False
    yield log
    log.handlers[:] = []
    handler.close()


def test_visitors_are_sent_to_the_login_and_the_api_refuses_them(web: TestClient) -> None:
    for path in ("/logs", "/logs?service=router&task=x", "/logs/lines?service=router"):
        answer = web.get(path, follow_redirects=False)
        assert answer.status_code == 303 and answer.headers["location"].startswith("/login")
    assert web.get("/api/logs").status_code == 401
    assert web.get("/api/logs/router").status_code == 401


def test_a_script_in_a_log_line_is_shown_escaped_and_secrets_stay_masked(
    web: TestClient, web_engine: Engine, router_log: Writer, tmp_path: Path
) -> None:
    with log_context(task="0b7e5e0e-1111-4222-8333-944445555666"):
        router_log.warning("tag value <script>alert('x')</script> for Doe^Jane")
    router_log.error("cannot reach sftp://archive:hunter2@pacs.example/ now")
    as_role(web, web_engine, "viewer")
    page = web.get("/logs?service=router")
    assert page.status_code == 200
    assert "<script>alert" not in page.text
    assert "tag value &lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in page.text
    assert "Doe^Jane" not in page.text and "hunter2" not in page.text
    on_disk = (tmp_path / "home" / "logs" / "router.log").read_text()
    assert "Doe^Jane" not in on_disk and "hunter2" not in on_disk
    # The fragment the page refreshes itself with is escaped as well.
    lines = web.get("/logs/lines?service=router&level=warning").text
    assert "<script>alert" not in lines and "&lt;script&gt;" in lines
    assert "sftp://archive:***@pacs.example" in lines


def test_filters_by_task_and_level_and_names_only_known_services(
    web: TestClient, web_engine: Engine, router_log: Writer
) -> None:
    mine, other = "0b7e5e0e-aaaa-4222-8333-944445555666", "5f0c1d2e-bbbb-4222-8333-944445555666"
    for n in range(3):
        with log_context(task=mine):
            router_log.info("step %d of mine", n)
        with log_context(task=other):
            router_log.info("step %d of the other", n)
    with log_context(task=mine):
        router_log.error("mine failed")
    as_role(web, web_engine, "viewer")

    answer = web.get(f"/api/logs/router?task={mine}")
    assert answer.status_code == 200
    found = [line["msg"] for line in answer.json()["lines"]]
    assert found == ["mine failed", "step 2 of mine", "step 1 of mine", "step 0 of mine"]
    errors = web.get(f"/api/logs/router?task={mine}&level=error").json()["lines"]
    assert [line["msg"] for line in errors] == ["mine failed"]
    assert len(web.get("/api/logs/router?lines=2").json()["lines"]) == 2
    assert [f["service"] for f in web.get("/api/logs").json()] == ["router"]

    page = web.get(f"/logs?service=router&task={mine}").text
    assert "step 1 of mine" in page and "mine failed" in page
    assert "of the other" not in page
    everyone = web.get(f"/logs?service=all&task={other}").text
    assert "step 0 of the other" in everyone and "of mine" not in everyone

    # A service name is never a path.
    for name in ("..%2F..%2Fetc%2Fpasswd", "router.log", "nobody", "..", "%2Fetc%2Fpasswd"):
        assert web.get(f"/api/logs/{name}").status_code == 404, name
    assert web.get("/api/logs/router?task=a%20b").status_code == 422
    assert web.get("/api/logs/router?level=loud").status_code == 422
    refused = web.get("/logs?service=..%2F..%2Fetc%2Fpasswd&task=%3Cb%3E")
    assert refused.status_code == 200
    assert "There is no such service" in refused.text and "not a task ID" in refused.text


def test_every_role_reads_the_logs(web: TestClient, web_engine: Engine, router_log: Writer) -> None:
    router_log.info("visible to all")
    for role in ("viewer", "operator", "admin"):
        as_role(web, web_engine, role)
        assert "visible to all" in web.get("/logs").text, role
        assert web.get("/api/logs/router").status_code == 200, role


def test_a_real_tasks_lines_appear_filtered_by_its_id(
    launch: Any,
    caduceus_factory: list[Caduceus],
    web: TestClient,
    web_engine: Engine,
    tmp_path: Path,
) -> None:
    archive = tmp_path / "archive"
    archive.mkdir()
    config = Config.model_validate(
        {
            "settings": {"series_complete_trigger": 1},
            "targets": {"archive": {"type": "folder", "path": str(archive)}},
            "rules": {"ct": {"rule": "@Modality@ == 'CT'", "targets": ["archive"]}},
        }
    )
    store.save(web_engine, config, "test")
    receiver = launch_patiently(launch, caduceus_factory)
    launch("router")
    launch("dispatcher")
    send(receiver, tmp_path / "first", count=2, modality="CT")
    send(receiver, tmp_path / "second", count=2, modality="CT")

    def both_done() -> bool:
        return [t["state"] for t in tasks(receiver)] == ["done", "done"]

    assert wait_until(both_done, 120)
    first, second = (t["id"] for t in tasks(receiver))
    as_role(web, web_engine, "viewer")

    def logged() -> bool:
        page = web.get(f"/logs?service=all&task={first}").text
        return f"task {first} created" in page and f"task {first}: done" in page

    assert wait_until(logged, 30)
    page = web.get(f"/logs?service=all&task={first}").text
    assert second not in page
    dispatcher = web.get(f"/api/logs/dispatcher?task={second}").json()["lines"]
    assert dispatcher and all(line["task"] == second for line in dispatcher)
    assert {f["service"] for f in web.get("/api/logs").json()} >= {
        "receiver",
        "router",
        "dispatcher",
    }
