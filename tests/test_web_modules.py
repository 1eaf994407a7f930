"""The Modules pages and API: the form, settings that must be a JSON object, role checks,
removal guarded by the rules, and a test run that a real processor carries out."""

from __future__ import annotations

import sys
import textwrap
import time
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select

from caduceus.core.config import store
from caduceus.core.config.models import Config
from caduceus.core.db.models import SERIES, TASK_INSTANCES, TASKS
from tests.conftest import Launch
from tests.support.browser import browser_login, shot
from tests.support.web import add_user, as_role, log_in

ECHO = """
    import json, os, pathlib, shutil
    src = pathlib.Path(os.environ["MERCURE_IN_DIR"])
    dst = pathlib.Path(os.environ["MERCURE_OUT_DIR"])
    settings = json.loads((src / "task.json").read_text())["process"]["settings"]
    images = sorted(src.glob("*.dcm"))
    for path in images:
        shutil.copyfile(path, dst / path.name)
    print(f"looked at {len(images)} images with threshold {settings['threshold']}")
"""


def command_module(tmp_path: Path, **options: Any) -> dict[str, Any]:
    script = tmp_path / "echo.py"
    script.write_text(textwrap.dedent(ECHO))
    # The sandbox would hide this interpreter's packages; it has its own tests.
    return {
        "name": "echo",
        "command": f"{sys.executable}\n{script}\n",
        "settings": {"threshold": 0.5},
        "sandbox": False,
        **options,
    }


def test_an_admin_adds_a_command_module_and_the_page_shows_it(
    web: TestClient, web_engine: Engine, tmp_path: Path
) -> None:
    csrf = as_role(web, web_engine, "admin")
    body = command_module(tmp_path, memory_mb=512, comment="an echo")
    answer = web.post("/api/modules", json=body, headers=csrf)
    assert answer.status_code == 201, answer.text
    module = store.current_or_default(web_engine).modules["echo"]
    assert module.command == [sys.executable, str(tmp_path / "echo.py")]  # one a line
    assert module.settings == {"threshold": 0.5} and module.memory_mb == 512
    listing = web.get("/modules").text
    assert 'href="/modules/echo"' in listing and "512 MB" in listing and "an echo" in listing
    form = web.get("/modules/echo").text
    assert "&#34;threshold&#34;: 0.5" in form  # the settings as JSON, escaped
    assert 'name="memory_mb" value="512" step="1" min="16"' in form
    assert 'data-api="PUT /api/modules/echo"' in form
    changed = web.put("/api/modules/echo", json={**body, "cpus": 2.5}, headers=csrf)
    assert changed.status_code == 200, changed.text
    assert store.current_or_default(web_engine).modules["echo"].cpus == 2.5
    new = web.get("/modules/new").text
    assert 'data-api="POST /api/modules"' in new and 'name="timeout_seconds" value="3600"' in new


def test_settings_that_are_not_a_json_object_are_refused(
    web: TestClient, web_engine: Engine, tmp_path: Path
) -> None:
    csrf = as_role(web, web_engine, "admin")
    for settings in ([1, 2], "threshold=0.5", 3):
        body = command_module(tmp_path, settings=settings)
        answer = web.post("/api/modules", json=body, headers=csrf)
        assert answer.status_code == 422
        [problem] = answer.json()["detail"]
        assert problem["loc"] == ["settings"] and "JSON object" in problem["msg"]
    both = web.post("/api/modules", json=command_module(tmp_path, image="busybox"), headers=csrf)
    assert both.status_code == 422 and "either an image or a command" in both.text
    negative = web.post("/api/modules", json=command_module(tmp_path, cpus=0), headers=csrf)
    assert negative.status_code == 422 and negative.json()["detail"][0]["loc"] == ["cpus"]
    assert store.current(web_engine) is None, "nothing was stored"


def test_only_admins_change_modules(web: TestClient, web_engine: Engine) -> None:
    store.save(web_engine, Config.model_validate({"modules": {"m": {"image": "busybox"}}}), "t")
    for role in ("viewer", "operator"):
        csrf = as_role(web, web_engine, role)
        body = {"name": "m", "image": "alpine"}
        assert web.post("/api/modules", json={**body, "name": "n"}, headers=csrf).status_code == 403
        assert web.put("/api/modules/m", json=body, headers=csrf).status_code == 403
        assert web.delete("/api/modules/m", headers=csrf).status_code == 403
        assert web.get("/modules/new").status_code == 403
        assert "<fieldset disabled>" in web.get("/modules/m").text
        listing = web.get("/modules").text
        assert ("data-test-module" in listing) == (role == "operator")
    assert store.current_or_default(web_engine).modules["m"].image == "busybox"


def test_a_module_a_rule_runs_cannot_be_removed(web: TestClient, web_engine: Engine) -> None:
    document = {
        "modules": {"ai": {"image": "example/ai"}, "spare": {"image": "example/spare"}},
        "rules": {"ct ai": {"rule": "True", "action": "process", "modules": ["ai"]}},
    }
    store.save(web_engine, Config.model_validate(document), "test")
    csrf = as_role(web, web_engine, "admin")
    refused = web.delete("/api/modules/ai", headers=csrf)
    assert refused.status_code == 409 and "ct ai" in refused.json()["detail"]
    assert web.delete("/api/modules/spare", headers=csrf).status_code == 200
    assert set(store.current_or_default(web_engine).modules) == {"ai"}


def test_a_test_run_is_processed_and_its_log_is_readable(
    web: TestClient, web_engine: Engine, tmp_path: Path, launch: Launch
) -> None:
    admin = as_role(web, web_engine, "admin")
    assert web.post("/api/modules", json=command_module(tmp_path), headers=admin).is_success
    viewer = as_role(web, web_engine, "viewer")
    assert web.post("/api/modules/echo/test", headers=viewer).status_code == 403
    operator = as_role(web, web_engine, "operator")
    answer = web.post("/api/modules/echo/test", headers=operator)
    assert answer.status_code == 201, answer.text
    task_id = answer.json()["task_id"]
    with web_engine.connect() as conn:
        task = conn.execute(select(TASKS).where(TASKS.c.id == task_id)).one()
        linked = conn.execute(
            select(func.count()).where(TASK_INSTANCES.c.task_id == task_id)
        ).scalar()
        series_states = set(conn.execute(select(SERIES.c.state)).scalars())
    assert (task.rule, task.action, task.targets, task.modules) == (
        "module test: echo",
        "process",
        [],
        ["echo"],
    )
    assert linked == 3
    assert series_states == {"complete"}, "the router never sees the generated series"

    processor = launch("processor")
    deadline = time.monotonic() + 60
    state = ""
    while time.monotonic() < deadline:
        state = web.get(f"/api/tasks/{task_id}").json()["state"]
        if state in ("done", "error"):
            break
        time.sleep(0.3)
    detail = web.get(f"/api/tasks/{task_id}").json()
    assert state == "done", (detail.get("error"), processor.log())
    assert detail["logs"] == ["0-echo.log"]
    log = web.get(f"/api/tasks/{task_id}/logs/0-echo.log")
    assert log.status_code == 200
    assert "looked at 3 images with threshold 0.5" in log.text
    assert web.post("/api/modules/ghost/test", headers=operator).status_code == 404


def test_markup_in_module_values_is_shown_as_text(
    web: TestClient, web_engine: Engine, tmp_path: Path
) -> None:
    csrf = as_role(web, web_engine, "admin")
    script = "<script>alert(1)</script>"
    body = {"name": "odd", "image": script, "comment": script, "settings": {"x": script}}
    assert web.post("/api/modules", json=body, headers=csrf).status_code == 201
    for path in ("/modules", "/modules/odd"):
        page = web.get(path).text
        assert script not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    refused = web.post("/api/modules", json={**body, "name": script}, headers=csrf)
    assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["name"]


def test_modules_in_a_browser(
    served: str, web: TestClient, web_engine: Engine, page: Any, tmp_path: Path
) -> None:
    add_user(web_engine, "admin-user", "admin")
    browser_login(page, served, "admin-user", "/modules/new")
    page.fill("#field-name", "echo")
    page.fill("#field-command", f"{sys.executable}\n{tmp_path / 'echo.py'}")
    settings = page.locator("#field-settings")
    settings.fill('["threshold", 0.5]')
    page.wait_for_selector("#field-settings[aria-invalid=true]")
    assert "JSON object" in page.locator("#field-settings-error").inner_text()
    settings.fill('{"threshold": 0.5')
    page.wait_for_selector("#field-settings-error:text('not valid JSON')")
    shot(page, "module-form-invalid")
    page.click("#module-form button[type=submit]")
    assert "settings: not valid JSON" in page.locator("#module-form .form-error").inner_text()
    settings.fill('{"threshold": 0.5}')
    page.wait_for_selector("#field-settings[aria-invalid=false]")
    page.uncheck("#field-sandbox")
    page.click("#module-form button[type=submit]")
    page.wait_for_url(served + "/modules")
    module = store.current_or_default(web_engine).modules["echo"]
    assert module.settings == {"threshold": 0.5} and not module.sandbox
    assert module.command == [sys.executable, str(tmp_path / "echo.py")]

    page.click("button[data-test-module='echo']")
    link = page.locator("output[data-test-result-for='echo'] a")
    link.wait_for()
    with web_engine.connect() as conn:
        [task_id] = conn.execute(select(TASKS.c.id)).scalars()
    assert link.get_attribute("href") == f"/tasks/{task_id}"
    shot(page, "modules-list")
    errors = [e for e in page.script_errors if not e.startswith("Failed to load resource")]
    assert errors == []


def test_only_admins_see_the_values_of_a_modules_environment(
    web: TestClient, web_engine: Engine
) -> None:
    """An environment often holds a licence or service key: viewers and operators see which
    variables are set, never their values, on the page and in every API answer."""
    key = "sk-live-0123456789"
    store.save(
        web_engine,
        Config.model_validate(
            {"modules": {"ai": {"image": "example/ai:1", "environment": {"API_KEY": key}}}}
        ),
        "tester",
    )
    add_user(web_engine, "vera", "viewer")
    add_user(web_engine, "ada", "admin")
    log_in(web, "vera")
    for path in ("/modules/ai", "/api/modules", "/api/modules/ai", "/api/config"):
        answer = web.get(path)
        assert answer.status_code == 200, path
        assert key not in answer.text and "API_KEY" in answer.text, path
    # Its name says it is secret: masked to admins too, and kept encrypted.
    log_in(web, "ada")
    shown = web.get("/api/modules/ai")
    assert key not in shown.text and shown.json()["settings"]["environment"] == {
        "API_KEY": "**********"
    }
