"""The Queue pages: tabs by state, search, paging, one task / series / study whole, escaping of
DICOM values, and the actions each role may take (restart, discard, force-complete, suspend)."""

from __future__ import annotations

import html
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from fastapi.testclient import TestClient
from sqlalchemy import Engine, insert, select

from caduceus.cleaner.cleaning import Cleaner
from caduceus.core.config.models import Config
from caduceus.core.db.models import (
    EVENTS,
    PATIENT_GROUPS,
    QUEUE_CONTROLS,
    SERIES,
    STUDIES,
    TASK_TARGETS,
    TASKS,
)
from caduceus.core.storage import DataRoot
from caduceus.core.work_queue import PROCESSABLE, claim
from caduceus.dispatcher.queue import claim as dispatcher_claim
from tests.support.browser import shot
from tests.support.hostile import SCRIPT
from tests.support.processes import Caduceus
from tests.support.queue_rows import START, add_series, add_study, add_task
from tests.support.routing import router_for
from tests.support.sending import send
from tests.support.web import PASSWORD, add_user, as_role, web_client


def task_row(engine: Engine, task_id: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(select(TASKS).where(TASKS.c.id == task_id)).one()


def page(web: TestClient, path: str, **params: Any) -> str:
    answer = web.get(path, params=params)
    assert answer.status_code == 200, answer.text
    return answer.text


# -- tabs, search, paging ---------------------------------------------------------------------


def test_tabs_list_the_tasks_of_their_states(web: TestClient, web_engine: Engine) -> None:
    _, study = add_study(web_engine)
    for rule, state, action in (
        ("r_queued_route", "queued", "route"),
        ("r_dispatching", "dispatching", "route"),
        ("r_queued_process", "queued", "process"),
        ("r_processing", "processing", "both"),
        ("r_error", "error", "route"),
        ("r_done", "done", "route"),
        ("r_discarded", "discarded", "discard"),
    ):
        add_task(web_engine, rule, state, action, study_uid=study)
    as_role(web, web_engine, "viewer")
    expected = {
        "processing": {"r_queued_process", "r_processing"},
        "dispatching": {"r_queued_route", "r_dispatching"},
        "failed": {"r_error"},
        "finished": {"r_done", "r_discarded"},
    }
    every = set().union(*expected.values())
    for tab, rules in expected.items():
        text = page(web, "/queue", tab=tab)
        shown = {rule for rule in every if f"<td>{rule}</td>" in text}
        assert shown == rules, tab
        assert 'data-refresh="5"' in text and f'data-src="/queue/rows?tab={tab}"' in text
        rows = page(web, "/queue/rows", tab=tab)
        assert "<html" not in rows, "the live part comes without the layout"
        assert {rule for rule in every if f"<td>{rule}</td>" in rows} == rules
    all_tasks = page(web, "/queue", tab="all")
    assert {rule for rule in every if f"<td>{rule}</td>" in all_tasks} == every
    failed_tab = re.search(r'tab=failed"[^>]*>Failed <span class="count">(\d+)<', all_tasks)
    assert failed_tab is not None and failed_tab.group(1) == "1"
    assert web.get("/queue", params={"tab": "nonsense"}).status_code == 404


def test_waiting_for_completion_lists_open_series_studies_and_patients(
    web: TestClient, web_engine: Engine
) -> None:
    open_study, _ = add_study(web_engine, "Open^Study", "P-OPEN", state="receiving")
    closed_study, _ = add_study(web_engine, "Closed^Study", "P-DONE", state="complete")
    add_series(web_engine, open_study, state="receiving")
    add_series(web_engine, closed_study, state="complete")
    with web_engine.begin() as conn:
        conn.execute(
            insert(PATIENT_GROUPS),
            [
                {"patient_id": "P-OPEN", "state": "receiving", "last_activity": START},
                {"patient_id": "P-DONE", "state": "complete", "last_activity": START},
            ],
        )
    as_role(web, web_engine, "viewer")
    received = page(web, "/queue")  # the first tab: every series received
    assert "Open^Study" in received and "Closed^Study" in received
    for level in ("series", "studies", "patients"):
        text = page(web, "/queue", tab="waiting", level=level)
        assert "Open^Study" in text and "P-OPEN" in text, level
        assert "Closed^Study" not in text and "P-DONE" not in text, level
    counted = page(web, "/queue", tab="waiting")
    assert re.search(r'>Waiting for completion <span class="count">3<', counted)


def test_search_by_patient_name_finds_the_task(web: TestClient, web_engine: Engine) -> None:
    _, jane = add_study(web_engine, "Doe^Jane", "P1")
    _, richard = add_study(web_engine, "Roe^Richard", "P2")
    add_task(web_engine, "jane_rule", "error", study_uid=jane, patient_id="P1")
    add_task(web_engine, "richard_rule", "error", study_uid=richard, patient_id="P2")
    patient_level = add_task(web_engine, "patient_rule", "done", patient_id="P1")
    with web_engine.begin() as conn:
        conn.execute(TASKS.update().where(TASKS.c.id == patient_level).values(level="patient"))
    as_role(web, web_engine, "viewer")
    found = page(web, "/queue", tab="all", patient_name="doe")
    assert "jane_rule" in found and "patient_rule" in found and "richard_rule" not in found
    assert "Doe^Jane" in found
    assert 'value="doe"' in found, "the form shows what was searched"
    failed = page(web, "/queue", tab="failed", patient_name="ROE")
    assert "richard_rule" in failed and "jane_rule" not in failed
    series = page(web, "/queue", tab="received", patient_name="roe")
    assert "Roe^Richard" not in series, "no series of Richard was received"
    by_rule = web.get("/api/tasks", params={"patient_name": "doe", "view": "failed"})
    assert [t["rule"] for t in by_rule.json()] == ["jane_rule"]


def test_paging_goes_through_every_task_once(web: TestClient, web_engine: Engine) -> None:
    made = {
        add_task(web_engine, f"rule_{i:03d}", "done", at=START + timedelta(seconds=i // 3))
        for i in range(120)  # three tasks share each second: ties are ordered by id
    }
    as_role(web, web_engine, "viewer")
    seen: list[str] = []
    params: dict[str, str] = {"tab": "finished"}
    for _ in range(5):
        text = page(web, "/queue", **params)
        seen += re.findall(r'href="/tasks/([0-9a-f-]{36})"', text)
        older = re.search(r'href="(/queue\?[^"]+)" rel="next">Older', text)
        if older is None:
            break
        params = dict(parse_qsl(urlsplit(html.unescape(older.group(1))).query))
    assert len(seen) == 120 and set(seen) == made
    assert "Newest" in text
    assert web.get("/queue", params={"tab": "finished", "before": "yesterday"}).status_code == 400
    assert web.get("/api/tasks", params={"before": "nonsense"}).status_code == 422


# -- one task, series, study ------------------------------------------------------------------


def test_task_page_shows_events_targets_logs_and_results(
    web: TestClient, web_engine: Engine, tmp_path: Path
) -> None:
    _, study = add_study(web_engine)
    task_id = add_task(
        web_engine,
        "ai_rule",
        "error",
        "both",
        study_uid=study,
        targets={"pacs": "done", "archive": "error"},
        results=[{"findings": "nodule <b>3 mm</b>"}],
        error="archive: connection refused",
    )
    with web_engine.begin() as conn:
        conn.execute(
            TASK_TARGETS.update()
            .where(TASK_TARGETS.c.target == "archive")
            .values(last_error="connection refused", attempts=4)
        )
    logs = tmp_path / "home" / "tasks" / task_id / "logs"
    logs.mkdir(parents=True)
    (logs / "anonymizer.log").write_text("x" * 40_000 + "\nmodule said <done> at the end\n")
    as_role(web, web_engine, "viewer")
    text = page(web, f"/tasks/{task_id}")
    assert "task.created" in text and "ai_rule" in text
    assert re.search(r"<td>archive</td>\s*<td><span class=\"badge state-error\">error", text)
    assert "connection refused" in text
    assert "anonymizer.log" in text and "module said &lt;done&gt; at the end" in text
    assert "x" * 20_000 not in text, "only the end of a long log"
    assert "nodule &lt;b&gt;3 mm&lt;/b&gt;" in text
    assert f'href="/api/tasks/{task_id}/logs/anonymizer.log"' in text
    assert web.get("/tasks/no-such-task").status_code == 404


def test_dicom_values_are_escaped_on_every_queue_page(
    receiver: Caduceus, tmp_path: Path, database_url: str
) -> None:
    send(receiver, tmp_path / "s", count=2, patient_name=SCRIPT, patient_id="XSS1")
    config = Config.model_validate(
        {
            "targets": {"archive": {"type": "folder", "path": str(tmp_path / "out")}},
            "rules": {"all": {"rule": "True", "targets": ["archive"]}},
        }
    )
    engine = receiver.engine()
    router_for(receiver).run_pass(config, datetime.now(UTC) + timedelta(seconds=61))
    web = web_client(receiver.home, receiver.database_url, engine)
    as_role(web, engine, "viewer")
    with engine.connect() as conn:
        task_id = conn.execute(select(TASKS.c.id)).scalar_one()
        series_id = conn.execute(select(SERIES.c.id)).scalar_one()
        study_id = conn.execute(select(STUDIES.c.id)).scalar_one()
    for path, params in (
        ("/queue", {}),
        ("/queue", {"tab": "dispatching"}),
        ("/queue/rows", {"tab": "all"}),
        ("/queue", {"tab": "waiting", "level": "studies"}),
        (f"/tasks/{task_id}", {}),
        (f"/series/{series_id}", {}),
        (f"/studies/{study_id}", {}),
    ):
        text = page(web, path, **params)
        assert "<script>alert" not in text, path
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text, (path, params)
    series_page = page(web, f"/series/{series_id}")
    assert "PatientName" in series_page, "the tags the rules see"
    task_page = page(web, f"/tasks/{task_id}")
    assert "SOPInstanceUID" in task_page and "STORESCU" in task_page


# -- actions by role --------------------------------------------------------------------------


def test_viewers_see_no_actions_and_the_api_refuses_them(
    web: TestClient, web_engine: Engine
) -> None:
    study_id, study = add_study(web_engine, state="receiving")
    failed = add_task(web_engine, "r", "error", study_uid=study, targets={"pacs": "error"})
    csrf = as_role(web, web_engine, "viewer")
    for path in (f"/tasks/{failed}", f"/studies/{study_id}", "/queue"):
        assert "data-action" not in page(web, path), path
    for path in (
        f"/api/tasks/{failed}/restart",
        f"/api/tasks/{failed}/discard",
        f"/api/studies/{study_id}/force-complete",
        "/api/queues/dispatch/suspend",
    ):
        assert web.post(path, headers=csrf).status_code == 403, path
    assert task_row(web_engine, failed).state == "error"
    with web_engine.connect() as conn:
        assert conn.execute(select(STUDIES.c.state)).scalar_one() == "receiving"
        assert conn.execute(select(QUEUE_CONTROLS)).first() is None


def test_operators_restart_discard_and_force_complete(web: TestClient, web_engine: Engine) -> None:
    study_id, study = add_study(web_engine, state="receiving")
    failed = add_task(web_engine, "r", "error", study_uid=study, targets={"pacs": "error"})
    waiting = add_task(web_engine, "w", "queued", study_uid=study)
    running = add_task(
        web_engine,
        "p",
        "processing",
        "process",
        study_uid=study,
        lease_owner="processor-1",
        lease_expires=datetime.now(UTC) + timedelta(minutes=5),
    )
    finished = add_task(web_engine, "d", "done", study_uid=study, targets={"pacs": "done"})
    csrf = as_role(web, web_engine, "operator")

    text = page(web, f"/tasks/{failed}")
    assert f'data-action="POST /api/tasks/{failed}/restart"' in text
    assert f'data-action="POST /api/tasks/{failed}/discard"' in text
    assert "data-action" not in page(web, f"/tasks/{finished}")
    assert f'data-action="POST /api/studies/{study_id}/force-complete"' in page(
        web, f"/studies/{study_id}"
    )

    assert web.post(f"/api/tasks/{failed}/restart", headers=csrf).status_code == 200
    assert task_row(web_engine, failed).state == "queued"

    answer = web.post(f"/api/tasks/{waiting}/discard", headers=csrf)
    assert answer.status_code == 200 and answer.json()["was"] == "queued"
    assert task_row(web_engine, waiting).state == "discarded"
    with web_engine.connect() as conn:
        message = conn.execute(
            select(EVENTS.c.message).where(
                EVENTS.c.task_id == waiting, EVENTS.c.kind == "task.discarded"
            )
        ).scalar_one()
    assert "operator-user" in message
    assert "task.discarded" in page(web, f"/tasks/{waiting}")

    busy = web.post(f"/api/tasks/{running}/discard", headers=csrf)
    assert busy.status_code == 409 and "worked on" in busy.json()["detail"]
    assert task_row(web_engine, running).state == "processing"
    assert web.post(f"/api/tasks/{finished}/discard", headers=csrf).status_code == 409
    assert web.post("/api/tasks/nope/discard", headers=csrf).status_code == 404

    forced = web.post(f"/api/studies/{study_id}/force-complete", headers=csrf)
    assert forced.status_code == 200, forced.text
    with web_engine.connect() as conn:
        assert conn.execute(select(STUDIES.c.state)).scalar_one() == "complete"


def test_operators_suspend_and_resume_a_queue(web: TestClient, web_engine: Engine) -> None:
    csrf = as_role(web, web_engine, "operator")
    text = page(web, "/queue")
    assert 'data-action="POST /api/queues/process/suspend"' in text
    assert web.post("/api/queues/dispatch/suspend", headers=csrf).status_code == 200
    text = page(web, "/queue")
    assert 'data-action="POST /api/queues/dispatch/resume"' in text
    assert "by operator-user" in text
    with web_engine.connect() as conn:
        assert conn.execute(
            select(QUEUE_CONTROLS.c.suspended).where(QUEUE_CONTROLS.c.name == "dispatch")
        ).scalar_one()


def test_a_discarded_task_is_neither_sent_nor_processed_and_is_cleaned(
    web: TestClient, web_engine: Engine, tmp_path: Path
) -> None:
    route = add_task(web_engine, "r", "dispatching")
    process = add_task(web_engine, "p", "queued", "process")
    home = tmp_path / "home"
    for task_id in (route, process):
        (home / "tasks" / task_id / "in").mkdir(parents=True)
    csrf = as_role(web, web_engine, "operator")
    for task_id in (route, process):
        assert web.post(f"/api/tasks/{task_id}/discard", headers=csrf).status_code == 200
    assert dispatcher_claim(web_engine, "dispatcher-1") is None
    assert claim(web_engine, "processor-1", PROCESSABLE) is None
    config = Config.model_validate({"settings": {"discard_retention": 3600}})
    cleaner = Cleaner(web_engine, DataRoot(home), usage=lambda _: 10.0)
    cleaner.run_pass(config, datetime.now(UTC) + timedelta(minutes=30))
    assert (home / "tasks" / route).exists(), "kept for the discard retention"
    cleaner.run_pass(config, datetime.now(UTC) + timedelta(hours=2))
    assert not (home / "tasks" / route).exists() and not (home / "tasks" / process).exists()
    assert task_row(web_engine, route).cleaned_at is not None


# -- in a browser -----------------------------------------------------------------------------


def test_the_queue_in_a_browser(served: str, web_engine: Engine, page: Any) -> None:
    _, study = add_study(web_engine, "Doe^Jane", "P1")
    failed = add_task(web_engine, "ct_rule", "error", study_uid=study, targets={"pacs": "error"})
    add_user(web_engine, "otto", "operator")
    page.goto(f"{served}/login?next=/queue%3Ftab%3Dfailed")
    page.fill("#username", "otto")
    page.fill("#password", PASSWORD)
    page.click("#login-form button[type=submit]")
    page.wait_for_url(f"{served}/queue?tab=failed")
    assert page.locator("#queue-list td:text-is('ct_rule')").count() == 1

    # The list refreshes itself: a task that fails now appears without a reload.
    add_task(web_engine, "mr_rule", "error", study_uid=study, targets={"pacs": "error"})
    page.locator("#queue-list td:text-is('mr_rule')").wait_for()
    shot(page, "queue-failed")

    page.goto(f"{served}/tasks/{failed}")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("button:text-is('Discard')")
    page.locator("dd .badge.state-discarded").wait_for()
    assert task_row(web_engine, failed).state == "discarded"
    assert "discarded by otto" in page.content()
    shot(page, "task-detail")
    assert page.script_errors == []
