"""The Targets pages and API: forms from the models, write-only secrets, validation that names
the field, role checks, removal guarded by the rules, and the connection test against a real
DCMTK storescp."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import Engine

from caduceus.core.config import store
from caduceus.core.config.models import Config
from tests.support.browser import browser_login, shot
from tests.support.processes import free_port
from tests.support.storescp import start_storescp
from tests.support.web import add_user, as_role

SECRET = "Tr0ub4dor&3-not-shown"
PACS = {"name": "pacs", "type": "dicom", "host": "pacs.example", "port": 104, "called_aet": "PACS"}
STOW = {
    "name": "stow",
    "type": "dicomweb",
    "url": "https://pacs.example/dicom-web",
    "username": "router",
    "password": SECRET,
    "comment": "the hospital archive",
}


def settings_of(item: dict[str, Any]) -> dict[str, Any]:
    """A target as the configuration holds it: the name is its key."""
    return {key: value for key, value in item.items() if key != "name"}


def stored_target(engine: Engine, name: str) -> Any:
    return store.current_or_default(engine).targets[name]


def test_an_admin_adds_a_dicom_target_and_the_page_lists_it(
    web: TestClient, web_engine: Engine
) -> None:
    csrf = as_role(web, web_engine, "admin")
    answer = web.post("/api/targets", json={**PACS, "comment": "main archive"}, headers=csrf)
    assert answer.status_code == 201, answer.text
    assert stored_target(web_engine, "pacs").called_aet == "PACS"
    page = web.get("/targets")
    assert page.status_code == 200
    assert 'href="/targets/pacs"' in page.text
    assert "PACS@pacs.example:104" in page.text and "main archive" in page.text
    listed = web.get("/api/targets").json()
    assert [(t["name"], t["where"]) for t in listed] == [("pacs", "PACS@pacs.example:104")]
    again = web.post("/api/targets", json=PACS, headers=csrf)
    assert again.status_code == 409 and "already a target named 'pacs'" in again.text


def test_each_type_gets_a_form_made_from_its_model(web: TestClient, web_engine: Engine) -> None:
    as_role(web, web_engine, "admin")
    form = web.get("/targets/new?type=dicomweb").text
    assert 'data-api="POST /api/targets"' in form
    assert 'type="password" id="field-password" name="password"' in form
    assert 'name="verify_tls" checked' in form
    assert 'name="batch_size" value="50" step="1" min="1" max="1000"' in form
    assert "instances per request" in form  # the model's description is the help text
    sftp = web.get("/targets/new?type=sftp").text
    assert 'name="accept_unknown_host_key"' in sftp and 'name="port" value="22"' in sftp
    chooser = web.get("/targets/new").text
    assert "Choose the kind of target" in chooser and 'href="/targets/new?type=s3"' in chooser


def test_a_password_is_never_shown_survives_an_edit_and_can_be_removed(
    web: TestClient, web_engine: Engine
) -> None:
    csrf = as_role(web, web_engine, "admin")
    created = web.post("/api/targets", json=STOW, headers=csrf)
    assert created.status_code == 201, created.text
    answers = [
        created,
        web.get("/api/targets"),
        web.get("/api/targets/stow"),
        web.get("/targets"),
        web.get("/targets/stow"),
        web.get("/api/config"),
    ]
    for answer in answers:
        assert answer.status_code == 200 or answer.status_code == 201
        assert SECRET not in answer.text, answer.request.url
    form = web.get("/targets/stow").text
    assert "Stored — leave empty to keep." in form
    assert 'name="password" autocomplete="new-password" data-omit-empty' in form
    assert 'name="forget.password"' in form
    assert web.get("/api/targets/stow").json()["secrets"] == {"password": True, "token": False}
    assert "password: set" in web.get("/targets").text

    edited = {**STOW, "password": "", "comment": "renamed archive"}
    assert web.put("/api/targets/stow", json=edited, headers=csrf).status_code == 200
    target = stored_target(web_engine, "stow")
    assert target.comment == "renamed archive"
    assert target.password.get_secret_value() == SECRET

    moved = {**edited, "url": "https://elsewhere.example/dicom-web"}
    refused = web.put("/api/targets/stow", json=moved, headers=csrf)
    assert refused.status_code == 422 and "points elsewhere" in refused.text
    assert SECRET not in refused.text

    forget = {**edited, "forget": {"password": True}}
    assert web.put("/api/targets/stow", json=forget, headers=csrf).status_code == 200
    assert stored_target(web_engine, "stow").password.get_secret_value() == ""
    assert "Not set." in web.get("/targets/stow").text


def test_a_bad_port_is_refused_naming_the_field(web: TestClient, web_engine: Engine) -> None:
    csrf = as_role(web, web_engine, "admin")
    for port in (70000, "one hundred and four"):
        answer = web.post("/api/targets", json={**PACS, "port": port}, headers=csrf)
        assert answer.status_code == 422
        [problem] = answer.json()["detail"]
        assert problem["loc"] == ["port"] and problem["msg"]
    wrong_type = web.post("/api/targets", json={**PACS, "type": "carrier-pigeon"}, headers=csrf)
    assert wrong_type.status_code == 422 and wrong_type.json()["detail"][0]["loc"] == ["type"]
    bad_secret = {**STOW, "token": f"two words {SECRET}", "password": "", "username": ""}
    refused = web.post("/api/targets", json=bad_secret, headers=csrf)
    assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["token"]
    assert SECRET not in refused.text
    assert store.current(web_engine) is None, "nothing was stored"


def test_viewers_and_operators_cannot_change_targets(web: TestClient, web_engine: Engine) -> None:
    store.save(web_engine, Config.model_validate({"targets": {"pacs": settings_of(PACS)}}), "t")
    for role in ("viewer", "operator"):
        csrf = as_role(web, web_engine, role)
        assert web.post("/api/targets", json=PACS, headers=csrf).status_code == 403
        assert web.put("/api/targets/pacs", json=PACS, headers=csrf).status_code == 403
        assert web.delete("/api/targets/pacs", headers=csrf).status_code == 403
        assert web.get("/targets/new?type=dicom").status_code == 403
        page = web.get("/targets/pacs")
        assert page.status_code == 200 and "<fieldset disabled>" in page.text
        assert "data-api=" not in page.text
        listing = web.get("/targets").text
        assert "Delete" not in listing
        assert ("data-test-target" in listing) == (role == "operator")
    assert stored_target(web_engine, "pacs").host == "pacs.example"


def test_a_target_a_rule_uses_cannot_be_removed(web: TestClient, web_engine: Engine) -> None:
    document = {
        "targets": {"pacs": settings_of(PACS)},
        "rules": {"ct to pacs": {"rule": "@Modality@ == 'CT'", "targets": ["pacs"]}},
    }
    store.save(web_engine, Config.model_validate(document), "test")
    csrf = as_role(web, web_engine, "admin")
    refused = web.delete("/api/targets/pacs", headers=csrf)
    assert refused.status_code == 409 and "ct to pacs" in refused.json()["detail"]
    assert web.delete("/api/targets/nowhere", headers=csrf).status_code == 404
    web.post("/api/targets", json={**PACS, "name": "spare"}, headers=csrf)
    assert web.delete("/api/targets/spare", headers=csrf).status_code == 200
    assert set(store.current_or_default(web_engine).targets) == {"pacs"}


def test_the_connection_test_reaches_storescp_and_explains_a_closed_port(
    web: TestClient, web_engine: Engine, tmp_path: Path
) -> None:
    scp = start_storescp(tmp_path / "scp")
    try:
        closed = {**settings_of(PACS), "host": "127.0.0.1", "port": free_port()}
        document = {"targets": {"scp": scp.target(), "closed": closed}}
        store.save(web_engine, Config.model_validate(document), "test")
        viewer = as_role(web, web_engine, "viewer")
        assert web.post("/api/targets/scp/test", headers=viewer).status_code == 403
        csrf = as_role(web, web_engine, "operator")
        ok = web.post("/api/targets/scp/test", headers=csrf)
        assert ok.status_code == 200
        assert ok.json()["ok"] is True and "C-ECHO" in ok.json()["message"]
        failed = web.post("/api/targets/closed/test", headers=csrf).json()
        assert failed["ok"] is False and failed["message"]
        missing = web.post("/api/targets/ghost/test", headers=csrf)
        assert missing.status_code == 404
    finally:
        scp.stop()


def test_markup_in_values_is_shown_as_text(web: TestClient, web_engine: Engine) -> None:
    csrf = as_role(web, web_engine, "admin")
    script = "<script>alert(1)</script>"
    hostile = {**PACS, "host": script, "comment": script}
    assert web.post("/api/targets", json=hostile, headers=csrf).status_code == 201
    for path in ("/targets", "/targets/pacs"):
        page = web.get(path).text
        assert script not in page
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    refused = web.post("/api/targets", json={**PACS, "name": script}, headers=csrf)
    assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["name"]
    missing = web.get("/targets/%3Cscript%3Ealert(1)%3C%2Fscript%3E")
    assert missing.status_code == 404 and script not in missing.text


def sign_in(page: Any, url: str, goal: str) -> None:
    browser_login(page, url, "admin-user", goal)


def test_targets_in_a_browser(
    served: str, web: TestClient, web_engine: Engine, page: Any, tmp_path: Path
) -> None:
    add_user(web_engine, "admin-user", "admin")
    sign_in(page, served, "/targets/new?type=dicomweb")
    page.fill("#field-name", "stow")
    page.fill("#field-url", STOW["url"])
    page.fill("#field-username", "router")
    page.fill("#field-password", SECRET)
    page.click("#target-form button[type=submit]")
    page.wait_for_url(served + "/targets")
    assert stored_target(web_engine, "stow").password.get_secret_value() == SECRET

    page.click("a.button:text-is('Edit')")
    page.wait_for_url(served + "/targets/stow")
    assert page.input_value("#field-password") == ""
    assert SECRET not in page.content()
    page.fill("#field-comment", "kept its password")
    shot(page, "target-form")
    page.click("#target-form button[type=submit]")
    page.wait_for_url(served + "/targets")
    assert stored_target(web_engine, "stow").comment == "kept its password"
    assert stored_target(web_engine, "stow").password.get_secret_value() == SECRET

    scp = start_storescp(tmp_path / "scp")
    try:
        page.goto(served + "/targets/new?type=dicom")
        page.fill("#field-name", "scp")
        page.fill("#field-host", "127.0.0.1")
        page.fill("#field-port", "70000")
        page.fill("#field-called_aet", "STORESCP")
        page.evaluate("document.getElementById('field-port').removeAttribute('max')")
        page.click("#target-form button[type=submit]")
        error = page.locator("#target-form .form-error")
        error.wait_for()
        assert error.inner_text().startswith("port:")
        page.fill("#field-port", str(scp.port))
        page.click("#target-form button[type=submit]")
        page.wait_for_url(served + "/targets")
        page.click("button[data-test-target='scp']")
        result = page.locator("output[data-test-result-for='scp']")
        result.locator("text=C-ECHO").wait_for()
        assert result.get_attribute("class") == "target-test-result ok-text"
        shot(page, "targets-list")
    finally:
        scp.stop()
    errors = [e for e in page.script_errors if not e.startswith("Failed to load resource")]
    assert errors == []
    assert [u for u in page.failed if "/api/targets" not in u] == []  # the refused save: 422


def test_a_login_in_a_url_is_never_shown(web: TestClient, web_engine: Engine) -> None:
    url = f"https://router:{SECRET}@pacs.example:8443/dicom-web"
    stow = {**settings_of(STOW), "url": url, "username": "", "password": ""}
    store.save(web_engine, Config.model_validate({"targets": {"stow": stow}}), "test")
    as_role(web, web_engine, "operator")
    for path in ("/api/targets", "/api/targets/stow", "/targets", "/targets/stow"):
        answer = web.get(path)
        assert answer.status_code == 200 and SECRET not in answer.text, path
        assert "@pacs.example" in answer.text, path
    # Admins see the user name, the password is write-only like the others (issue 14); the
    # stored URL is what the dispatcher uses.
    as_role(web, web_engine, "admin")
    shown = web.get("/api/targets/stow").json()["settings"]["url"]
    assert shown == "https://router:**********@pacs.example:8443/dicom-web"
    stored = store.current_or_default(web_engine).targets["stow"]
    assert getattr(stored, "url", None) == url
