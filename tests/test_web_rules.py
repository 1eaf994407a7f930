"""The Rules pages and API: changes as configuration versions by admins only, expressions
refused with their position, tried on a series a real receiver stored, pages escaped."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select

from caduceus.core.config import store
from caduceus.core.config.models import Config
from caduceus.core.database import open_database
from caduceus.core.db.models import CONFIG_VERSIONS, INSTANCES
from caduceus.core.settings import Settings
from caduceus.web.app import create_app
from tests.support.browser import shot
from tests.support.processes import Caduceus
from tests.support.sending import send
from tests.support.web import PASSWORD, add_user, as_role, serve, web_client

SETUP = {
    "targets": {
        "archive": {"type": "folder", "path": "/srv/archive"},
        "pacs": {"type": "dicom", "host": "pacs.local", "port": 104, "called_aet": "PACS"},
    },
    "modules": {"anonymizer": {"command": ["/usr/bin/true"]}},
}
CT = {"rule": "@Modality@ == 'CT'", "action": "route", "targets": ["archive"]}


def configure(engine: Engine, **extra: Any) -> None:
    store.save(engine, Config.model_validate({**SETUP, **extra}), "setup", "test setup")


def versions(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(CONFIG_VERSIONS)).scalar_one())


def newest(engine: Engine) -> dict[str, Any]:
    return store.history(engine)[0]


def rules_of(engine: Engine) -> dict[str, Any]:
    return store.current_or_default(engine).model_dump(mode="json")["rules"]


def test_admin_changes_are_configuration_versions_with_author(
    web: TestClient, web_engine: Engine
) -> None:
    configure(web_engine)
    admin = as_role(web, web_engine, "admin")

    created = web.post("/api/rules", json={"name": "ct", **CT}, headers=admin)
    assert created.status_code == 201, created.text
    assert (newest(web_engine)["author"], newest(web_engine)["comment"]) == (
        "admin-user",
        "rule ct created",
    )
    assert rules_of(web_engine)["ct"]["targets"] == ["archive"]
    taken = web.post("/api/rules", json={"name": "ct", **CT}, headers=admin)
    assert taken.status_code == 409 and "exists already" in taken.text

    both = {**CT, "action": "both", "modules": ["anonymizer"], "targets": ["archive", "pacs"]}
    replaced = web.put("/api/rules/ct", json=both, headers=admin)
    assert replaced.status_code == 200, replaced.text
    assert rules_of(web_engine)["ct"]["modules"] == ["anonymizer"]
    assert newest(web_engine)["comment"] == "rule ct changed"

    web.post("/api/rules", json={"name": "mr", **CT, "rule": "@Modality@ == 'MR'"}, headers=admin)
    renamed = web.put("/api/rules/ct", json={"name": "ct head", **both}, headers=admin)
    assert renamed.status_code == 200 and renamed.json()["name"] == "ct head"
    assert list(rules_of(web_engine)) == ["ct head", "mr"], "a renamed rule keeps its place"
    assert newest(web_engine)["comment"] == "rule ct renamed to ct head and changed"
    clash = web.put("/api/rules/mr", json={"name": "ct head", **CT}, headers=admin)
    assert clash.status_code == 409

    copy = web.post("/api/rules/ct head/duplicate", headers=admin)
    assert copy.status_code == 201 and copy.json()["name"] == "ct head copy"
    again = web.post("/api/rules/ct head/duplicate", headers=admin)
    assert again.json()["name"] == "ct head copy 2"
    named = web.post("/api/rules/mr/duplicate", json={"name": "mr 2"}, headers=admin)
    assert (
        named.status_code == 201 and newest(web_engine)["comment"] == "rule mr duplicated as mr 2"
    )
    assert (
        web.post("/api/rules/mr/duplicate", json={"name": "ct head"}, headers=admin).status_code
        == 409
    )
    stored = rules_of(web_engine)
    assert stored["ct head copy"]["disabled"] is True, "a copy must not double the tasks"
    assert stored["ct head copy"]["modules"] == ["anonymizer"]

    assert web.post("/api/rules/mr/disable", headers=admin).status_code == 200
    assert rules_of(web_engine)["mr"]["disabled"] is True
    assert newest(web_engine)["comment"] == "rule mr disabled"
    assert web.post("/api/rules/mr/enable", headers=admin).status_code == 200
    assert rules_of(web_engine)["mr"]["disabled"] is False

    assert web.delete("/api/rules/mr 2", headers=admin).status_code == 200
    assert "mr 2" not in rules_of(web_engine)
    assert newest(web_engine)["comment"] == "rule mr 2 deleted"
    assert web.delete("/api/rules/nope", headers=admin).status_code == 404
    assert web.post("/api/rules/nope/enable", headers=admin).status_code == 404
    assert {v["author"] for v in store.history(web_engine)} == {"setup", "admin-user"}

    listed = web.get("/api/rules", headers=admin).json()
    assert [r["name"] for r in listed] == ["ct head", "mr", "ct head copy", "ct head copy 2"]


def test_bad_rules_leave_the_configuration_unchanged(web: TestClient, web_engine: Engine) -> None:
    configure(web_engine, rules={"ct": CT})
    admin = as_role(web, web_engine, "admin")
    before = versions(web_engine)

    broken = web.post(
        "/api/rules", json={"name": "bad", **CT, "rule": "@Modality@ == 'CT' and"}, headers=admin
    )
    assert broken.status_code == 422
    [problem] = broken.json()["detail"]
    assert problem["loc"] == ["body", "rule"] and problem["position"] == 22
    assert "unexpected end of rule" in problem["msg"]
    unsafe = web.put("/api/rules/ct", json={**CT, "rule": "__import__('os')"}, headers=admin)
    assert unsafe.status_code == 422 and unsafe.json()["detail"][0]["position"] == 0

    for body in (
        {"name": "<script>", **CT},  # not a name
        {"name": "x", **CT, "targets": ["nowhere"]},  # no such target
        {"name": "x", **CT, "targets": []},  # route needs a target
        {"name": "x", **CT, "colour": "red"},  # no such field
    ):
        assert web.post("/api/rules", json=body, headers=admin).status_code == 422, body
    assert versions(web_engine) == before
    assert rules_of(web_engine)["ct"]["rule"] == CT["rule"]


def test_operators_and_viewers_read_but_cannot_change(web: TestClient, web_engine: Engine) -> None:
    hook = {"webhook_url": "https://hooks.example/t/secret-token", "on_error": True}
    configure(web_engine, rules={"ct": {**CT, "notification": hook}})
    before = versions(web_engine)
    for role in ("operator", "viewer"):
        headers = as_role(web, web_engine, role)
        changes = [
            web.post("/api/rules", json={"name": "x", **CT}, headers=headers),
            web.put("/api/rules/ct", json=CT, headers=headers),
            web.delete("/api/rules/ct", headers=headers),
            web.post("/api/rules/ct/duplicate", headers=headers),
            web.post("/api/rules/ct/enable", headers=headers),
            web.post("/api/rules/ct/disable", headers=headers),
        ]
        assert [answer.status_code for answer in changes] == [403] * 6, role
        assert web.get("/api/rules/ct", headers=headers).json()["rule"] == CT["rule"]
        check = web.post("/api/rules/validate", json={"rule": "@Modality@"}, headers=headers)
        assert check.status_code == 200 and check.json()["valid"] is True
        assert web.get("/rules/new").status_code == 403
        page = web.get("/rules/ct")
        assert page.status_code == 200 and "read-only" in page.text
        assert "secret-token" not in page.text, "a webhook's token is for admins only"
        assert "secret-token" not in web.get("/api/rules", headers=headers).text
        assert "Delete" not in web.get("/rules").text
    assert versions(web_engine) == before
    web.cookies.clear()
    assert web.post("/api/rules/validate", json={"rule": "1"}).status_code == 401


def test_validation_reports_the_position(web: TestClient, web_engine: Engine) -> None:
    headers = as_role(web, web_engine, "viewer")

    def check(text: str) -> dict[str, Any]:
        answer = web.post("/api/rules/validate", json={"rule": text}, headers=headers)
        assert answer.status_code == 200, answer.text
        return answer.json()  # type: ignore[no-any-return]

    wrong = check("@Modality@ = 'CT'")
    assert (wrong["valid"], wrong["position"], wrong["line"], wrong["column"]) == (
        False,
        11,
        1,
        12,
    )
    assert "syntax error" in wrong["error"]
    second_line = check("@Modality@ == 'CT' and\n  @Foo")
    assert (second_line["line"], second_line["column"]) == (2, 3)
    assert check("")["valid"] is False and check("")["position"] is None
    right = check("@Modality@ == 'CT' and 'HEAD' in @StudyDescription@")
    assert right["valid"] is True and right["keywords"] == ["Modality", "StudyDescription"]


@pytest.fixture
def received(receiver: Caduceus) -> Iterator[tuple[TestClient, Engine]]:
    """The web application on a real receiver's database and data root."""
    engine = open_database(Settings(home=receiver.home, database_url=receiver.database_url))
    yield web_client(receiver.home, receiver.database_url, engine), engine
    engine.dispose()


def test_an_expression_is_tried_on_a_received_series(
    received: tuple[TestClient, Engine], receiver: Caduceus, tmp_path: Path
) -> None:
    web, engine = received
    send(
        receiver,
        tmp_path / "ct",
        count=2,
        modality="CT",
        patient_name="<script>alert(1)</script>",
        study_description="HEAD ROUTINE",
    )
    headers = as_role(web, engine, "viewer")
    [series] = web.get("/api/series", headers=headers).json()

    def attempt(text: str, series_id: int = series["id"]) -> Any:
        return web.post(
            "/api/rules/test", json={"rule": text, "series_id": series_id}, headers=headers
        )

    match = attempt("@Modality@ == 'CT' and 'HEAD' in @StudyDescription@")
    assert match.status_code == 200, match.text
    assert match.json()["result"] is True
    assert match.json()["tags"] == {"Modality": "CT", "StudyDescription": "HEAD ROUTINE"}
    miss = attempt("@Modality@ == 'MR' or @BodyPartExamined@ == 'KNEE'").json()
    assert miss["result"] is False and miss["tags"]["Modality"] == "CT"
    # mercure's receiver always writes BodyPartExamined, empty when absent; other tags are
    # missing (None), and a rule that reads one is False.
    assert miss["tags"]["BodyPartExamined"] == ""
    absent = attempt("tags['PatientComments'] != 'x'").json()
    assert absent["result"] is False and absent["tags"] == {"PatientComments": None}
    mercure_forms = attempt("tags['Modality'][:1] == 'C' and any(c in 'CT' for c in 'XC')")
    assert mercure_forms.json()["result"] is True, mercure_forms.text
    # As a rule imported from mercure sees the tags: every value its DICOM text.
    as_text = web.post(
        "/api/rules/test",
        json={"rule": "@SeriesNumber@ == '1'", "series_id": series["id"], "tag_values": "text"},
        headers=headers,
    )
    assert as_text.json()["result"] is True, as_text.text
    assert attempt("@SeriesNumber@ == '1'").json()["result"] is False  # typed: a number
    too_big = attempt("len('a' * 10**9) > 0")
    assert too_big.status_code == 422
    assert "CADUCEUS_RULES_MAX_TEXT" in too_big.json()["detail"][0]["msg"]
    assert attempt("@Modality@ ==").status_code == 422
    assert attempt("1", series_id=series["id"] + 1000).status_code == 404

    editor = web.get("/rules/new")
    assert editor.status_code == 403
    headers.update(as_role(web, engine, "admin"))
    editor = web.get("/rules/new")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in editor.text
    assert "<script>alert" not in editor.text

    with engine.connect() as conn:
        paths = conn.execute(
            select(INSTANCES.c.path).where(INSTANCES.c.series_id == series["id"])
        ).scalars()
        for relative in paths:
            (receiver.home / relative).unlink()
    gone = attempt("@Modality@ == 'CT'")
    assert gone.status_code == 409 and "no longer stored" in gone.json()["detail"]


def test_rules_page_lists_flows_and_escapes(web: TestClient, web_engine: Engine) -> None:
    hostile = "'<script>alert(1)</script>' in @PatientName@"
    configure(
        web_engine,
        rules={
            "ct": {
                **CT,
                "action": "both",
                "modules": ["anonymizer"],
                "targets": ["archive", "pacs"],
                "comment": "<img src=x onerror=alert(2)>",
            },
            "odd": {"rule": hostile, "action": "discard", "disabled": True},
        },
    )
    as_role(web, web_engine, "admin")
    page = web.get("/rules")
    assert page.status_code == 200
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    assert "<script>alert" not in page.text and "<img src=x" not in page.text
    flow = page.text.split('class="rule-flow"')[1].split("</ol>")[0]
    assert [line.strip() for line in flow.split("\n") if "flow-step" in line] == [
        '<li class="flow-step flow-match">match</li>',
        '<li class="flow-step flow-module">anonymizer</li>',
        '<li class="flow-step flow-targets">archive, pacs</li>',
    ]
    assert 'data-action="POST /api/rules/odd/enable"' in page.text
    assert 'data-action="POST /api/rules/ct/disable"' in page.text
    assert 'data-action="DELETE /api/rules/ct"' in page.text
    assert "discarded" in page.text and 'href="/rules/new"' in page.text


def test_the_editor_has_every_field(web: TestClient, web_engine: Engine) -> None:
    configure(web_engine, rules={"ct head": {**CT, "priority": "urgent"}})
    as_role(web, web_engine, "admin")
    new = web.get("/rules/new")
    assert new.status_code == 200 and 'data-api="POST /api/rules"' in new.text
    for field in (
        "name",
        "rule",
        "comment",
        "action",
        "trigger",
        "targets",
        "modules",
        "priority",
        "series_complete_trigger",
        "study_trigger_condition",
        "required_series",
        "study_force_completion_action",
        "contact",
        "tags",
        "disabled",
        "fallback",
        "retain_input_images",
        "notification.webhook_url",
        "notification.webhook_payload",
        "notification.webhook_payload_body",
        "notification.webhook_ca_bundle",
        "notification.email",
        "notification.email_subject",
        "notification.email_body",
        "notification.email_type",
        "notification.on_reception",
        "notification.on_completion",
        "notification.on_completion_on_request",
        "notification.on_error",
        "module_settings",
        "dynamic_routing",
        "dynamic_routing_allowed_targets",
        "alternate_target",
    ):
        assert f'name="{field}"' in new.text, field
    assert '<option value="pacs">pacs</option>' in new.text
    assert '<option value="anonymizer">anonymizer</option>' in new.text
    assert "static/rules.js" in new.text

    existing = web.get("/rules/ct head")
    assert 'data-api="PUT /api/rules/ct%20head"' in existing.text
    assert '<option value="archive" selected>archive</option>' in existing.text
    assert '<option value="urgent" selected>urgent</option>' in existing.text
    assert "@Modality@ == &#39;CT&#39;</textarea>" in existing.text
    assert web.get("/rules/nope").status_code == 404
    assert web.get("/static/rules.js").status_code == 200
    assert web.get("/static/rules.css").status_code == 200


def test_contact_and_tags_are_kept_and_shown_escaped(web: TestClient, web_engine: Engine) -> None:
    """mercure's rule contact and tags: kept through an edit, shown on the list and the
    editor, escaped."""
    rule = {**CT, "contact": "<b>Dr. Who</b>", "tags": "research, mr"}
    configure(web_engine, rules={"ct": rule})
    admin = as_role(web, web_engine, "admin")
    listed = web.get("/rules").text
    assert "contact: &lt;b&gt;Dr. Who&lt;/b&gt;" in listed and "tags: research, mr" in listed
    editor = web.get("/rules/ct").text
    assert 'value="&lt;b&gt;Dr. Who&lt;/b&gt;"' in editor
    changed = web.put(
        "/api/rules/ct",
        json={**rule, "name": "ct", "study_force_completion_action": "proceed"},
        headers=admin,
    )
    assert changed.status_code == 200, changed.text
    kept = rules_of(web_engine)["ct"]
    assert (kept["contact"], kept["tags"], kept["study_force_completion_action"]) == (
        "<b>Dr. Who</b>",
        "research, mr",
        "proceed",
    )


@pytest.fixture
def served_on_receiver(receiver: Caduceus) -> Iterator[tuple[str, Engine]]:
    """The web application on a real port (for the browser), on the receiver's database."""
    settings = Settings(home=receiver.home, database_url=receiver.database_url)
    engine = open_database(settings)
    with serve(create_app(settings, engine)) as url:
        yield url, engine
    engine.dispose()


def test_the_editor_checks_as_typed_tests_and_saves_in_a_browser(
    served_on_receiver: tuple[str, Engine], receiver: Caduceus, page: Any, tmp_path: Path
) -> None:
    url, engine = served_on_receiver
    send(receiver, tmp_path / "mr", count=1, modality="MR", series_description="T1 AXIAL")
    configure(engine, rules={"ct": CT})
    add_user(engine, "ada", "admin")
    missing: list[str] = []
    page.on("response", lambda r: missing.append(r.url) if r.status == 404 else None)
    page.goto(url + "/login?next=/rules/new")
    page.fill("#username", "ada")
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(url + "/rules/new")

    expression = page.locator("#rule-expression")
    expression.fill("@Modality@ = 'MR'")
    page.wait_for_selector("#rule-expression[aria-invalid=true]")
    message = page.locator("[data-check-message]")
    assert "syntax error" in message.inner_text() and "column 12" in message.inner_text()
    assert page.locator("[data-check-caret]").inner_text().endswith(" " * 11 + "^")
    shot(page, "rules-editor-invalid")

    expression.fill("@Modality@ == 'MR' and 'T1' in @SeriesDescription@")
    page.wait_for_selector("#rule-expression[aria-invalid=false]")
    assert "Modality, SeriesDescription" in page.locator("[data-check-keywords]").inner_text()
    page.click("#rule-test-run")
    page.wait_for_selector("#rule-test-result .rule-test-outcome")
    assert page.locator("#rule-test-result").inner_text().startswith("Matches this series.")
    assert "T1 AXIAL" in page.locator("#rule-test-result table").inner_text()
    shot(page, "rules-editor-tested")

    page.fill("#rule-name", "mr t1")
    page.select_option("#rule-targets", ["pacs"])
    page.click("button[type=submit]")
    page.wait_for_url(url + "/rules")
    assert "mr t1" in page.locator("table.rules-table").inner_text()
    assert rules_of(engine)["mr t1"]["targets"] == ["pacs"]
    assert newest(engine)["author"] == "ada"
    shot(page, "rules-list")
    page.click("a:text-is('mr t1')")
    page.wait_for_url(url + "/rules/mr%20t1")
    assert page.input_value("#rule-name") == "mr t1"
    page.click("summary:text('Notification')")
    page.click("summary:text('Advanced')")
    assert page.locator("#rule-webhook-url").is_visible()
    shot(page, "rules-editor-existing")
    assert page.script_errors == [] and missing == []
