"""The self-test through the web API, against a real receiver, router and dispatcher started
as processes: every stage passes and the files arrive; without a dispatcher it fails at the
delivery with a message that says so; either way the temporary rule, target and folder go."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select

from caduceus.core.config import store
from caduceus.core.config.models import Config
from caduceus.core.db.models import DELIVERIES, EVENTS, TASKS
from caduceus.core.settings import Settings
from caduceus.web.app import create_app
from tests.conftest import Launch
from tests.support.processes import Caduceus
from tests.support.web import as_role

STAGES = ["echo", "configure", "send", "stored", "routed", "dispatched", "arrived"]
# The administrator's own configuration, which the self-test must leave as it was.
ADMIN_CONFIG = {
    "targets": {"archive": {"type": "folder", "path": "/nonexistent/archive"}},
    "rules": {"mr": {"rule": "@Modality@ == 'MR'", "targets": ["archive"]}},
}


def web_for(receiver: Caduceus, database_url: str, engine: Engine) -> TestClient:
    """The web application in this process, set up like the services it tests."""
    settings = Settings(
        home=receiver.home,
        database_url=database_url,
        dicom_host="127.0.0.1",
        dicom_port=receiver.port,
        ae_title=receiver.ae_title,
    )
    return TestClient(create_app(settings, engine), base_url="http://testserver")


def finished(web: TestClient, run_id: str, limit: float = 240) -> dict[str, Any]:
    deadline = time.monotonic() + limit
    while True:
        answer = web.get(f"/api/selftest/{run_id}")
        assert answer.status_code == 200, answer.text
        run: dict[str, Any] = answer.json()
        if run["state"] != "running" or time.monotonic() > deadline:
            return run
        time.sleep(0.3)


def states(run: dict[str, Any]) -> dict[str, str]:
    return {stage["name"]: stage["state"] for stage in run["stages"]}


def assert_left_no_trace(engine: Engine, receiver: Caduceus) -> None:
    found = store.current(engine)
    assert found is not None
    _version, config = found
    assert not [n for n in [*config.rules, *config.targets] if n.startswith("selftest-")]
    assert set(config.rules) == {"mr"} and set(config.targets) == {"archive"}
    assert store.history(engine)[0]["author"] == "self-test"
    assert list((receiver.home / "selftest").iterdir()) == []


def start_services(launch: Launch, *commands: str) -> Caduceus:
    receiver = launch("receiver")
    for command in commands:
        launch(command, home=receiver.home)
    return receiver


def test_the_selftest_passes_every_stage_and_leaves_no_trace(
    launch: Launch, database_url: str, web_engine: Engine
) -> None:
    store.save(web_engine, Config.model_validate(ADMIN_CONFIG), "admin")
    receiver = start_services(launch, "router", "dispatcher")
    web = web_for(receiver, database_url, web_engine)
    operator = as_role(web, web_engine, "operator")

    answer = web.post("/api/selftest", json={}, headers=operator)
    assert answer.status_code == 202, answer.text
    run = finished(web, answer.json()["id"])

    assert states(run) == dict.fromkeys(STAGES, "passed"), run
    assert run["state"] == "passed" and run["started_by"] == "operator-user"
    assert all(stage["seconds"] is not None for stage in run["stages"])
    arrived = next(s for s in run["stages"] if s["name"] == "arrived")
    assert arrived["message"] == "5 of 5 instance(s) read back"
    with web_engine.connect() as conn:
        [task] = conn.execute(select(TASKS.c.id, TASKS.c.state, TASKS.c.rule)).all()
        delivered = conn.execute(
            select(func.count()).where(DELIVERIES.c.task_id == task.id)
        ).scalar_one()
        kinds = (
            conn.execute(
                select(EVENTS.c.kind).where(EVENTS.c.kind.like("selftest.%")).order_by(EVENTS.c.id)
            )
            .scalars()
            .all()
        )
    assert task.state == "done" and task.rule.startswith("selftest-")
    assert delivered == 5
    assert list(kinds) == ["selftest.started", "selftest.passed"]
    assert_left_no_trace(web_engine, receiver)

    page = web.get("/selftest")
    assert page.status_code == 200
    assert "Every instance arrived in the target folder" in page.text
    assert page.text.count("badge state-passed") == len(STAGES) + 1
    assert web.get("/api/selftest").json()["run"]["id"] == run["id"]


def test_without_a_dispatcher_the_selftest_fails_at_the_delivery_and_cleans_up(
    launch: Launch, database_url: str, web_engine: Engine
) -> None:
    store.save(web_engine, Config.model_validate(ADMIN_CONFIG), "admin")
    receiver = start_services(launch, "router")
    web = web_for(receiver, database_url, web_engine)
    operator = as_role(web, web_engine, "operator")

    answer = web.post("/api/selftest", json={"timeout": 5}, headers=operator)
    assert answer.status_code == 202, answer.text
    again = web.post("/api/selftest", json={}, headers=operator)
    assert again.status_code == 409 and "running already" in again.text
    run = finished(web, answer.json()["id"])

    assert run["state"] == "failed"
    assert states(run) == {
        **dict.fromkeys(STAGES[:5], "passed"),
        "dispatched": "failed",
        "arrived": "waiting",
    }
    delivery = next(s for s in run["stages"] if s["name"] == "dispatched")
    assert delivery["message"] == "not delivered after 5 s: is the dispatcher running?"
    assert "removed" in run["cleanup"] and "discarded" in run["cleanup"]
    with web_engine.connect() as conn:
        [task_state] = conn.execute(select(TASKS.c.state)).scalars()
        failed = conn.execute(
            select(EVENTS.c.message).where(EVENTS.c.kind == "selftest.failed")
        ).scalar_one()
    assert task_state == "discarded", "no dispatcher may send it later to a removed target"
    assert "is the dispatcher running?" in failed
    assert_left_no_trace(web_engine, receiver)

    # The result outlives the web process: a new one reads it from the history.
    fresh = web_for(receiver, database_url, web_engine)
    as_role(fresh, web_engine, "viewer")
    assert fresh.get(f"/api/selftest/{run['id']}").json()["state"] == "failed"
    assert fresh.get("/api/selftest").json()["run"]["id"] == run["id"]


def test_operators_start_the_selftest_and_viewers_only_watch(
    web: TestClient, web_engine: Engine, tmp_path: Path
) -> None:
    assert web.post("/api/selftest", json={}).status_code == 401
    assert web.get("/api/selftest").status_code == 401
    viewer = as_role(web, web_engine, "viewer")
    answer = web.post("/api/selftest", json={}, headers=viewer)
    assert answer.status_code == 403
    assert web.get("/api/selftest").json() == {"run": None}
    assert web.get("/api/selftest/0123456789ab").status_code == 404
    assert web.get("/selftest").status_code == 403
    with web_engine.connect() as conn:
        assert (
            conn.execute(
                select(func.count()).select_from(EVENTS).where(EVENTS.c.kind.like("selftest.%"))
            ).scalar_one()
            == 0
        )

    operator = as_role(web, web_engine, "operator")
    page = web.get("/selftest")
    assert page.status_code == 200
    assert 'id="selftest-start"' in page.text and "No run yet" in page.text
    assert "selftest.js" in page.text
    too_short = web.post("/api/selftest", json={"timeout": 1}, headers=operator)
    assert too_short.status_code == 422


def test_the_page_starts_a_run_and_shows_each_stage_pass(
    launch: Launch, database_url: str, web_engine: Engine, page: Any
) -> None:
    from tests.support.browser import assert_no_errors, browser_login, shot
    from tests.support.web import add_user, serve

    store.save(web_engine, Config.model_validate(ADMIN_CONFIG), "admin")
    receiver = start_services(launch, "router", "dispatcher")
    app = web_for(receiver, database_url, web_engine).app
    add_user(web_engine, "olga", "operator")
    with serve(app) as url:
        browser_login(page, url, "olga", "/selftest")
        page.click("#selftest-start")
        status = page.locator("#selftest-status")
        status.filter(has_text="Every stage passed.").wait_for(timeout=120_000)
        stages = page.locator("#selftest-stages li")
        assert stages.count() == len(STAGES)
        assert page.locator("#selftest-stages .badge.state-passed").count() == len(STAGES)
        assert "5 of 5 instance(s) read back" in page.inner_text("#selftest-stages")
        shot(page, "selftest")
        assert_no_errors(page)


def test_the_command_line_runs_the_same_selftest(launch: Launch, web_engine: Engine) -> None:
    """`caduceus selftest` on the machine: every stage in a table, exit 0; with the dispatcher
    stopped, exit 1 naming the stage that failed, and no trace left either way."""
    store.save(web_engine, Config.model_validate(ADMIN_CONFIG), "admin")
    receiver = start_services(launch, "router")
    dispatcher = launch("dispatcher", home=receiver.home)
    passed = receiver.cli("selftest", "--timeout", "30", check=False)
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert "5 of 5 instance(s) read back" in passed.stdout
    assert_left_no_trace(web_engine, receiver)

    dispatcher.stop()
    failed = receiver.cli("selftest", "--timeout", "5", check=False)
    assert failed.returncode == 1, failed.stdout
    assert "is the dispatcher running?" in failed.stdout
    assert_left_no_trace(web_engine, receiver)
