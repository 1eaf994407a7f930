"""The Configuration page: versions with who and when, a diff, restore, the global settings,
import of a file (ours or mercure.json) and export, for each role."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select

from caduceus.core.config import store
from caduceus.core.config.models import Config
from caduceus.core.db.models import CONFIG_VERSIONS
from tests.support.browser import assert_no_errors, browser_login, shot
from tests.support.mercure_config import MERCURE
from tests.support.web import add_user, as_role

SECRET = "pacs-password-1234"


def document(rule: str = "@Modality@ == 'CT'", comment: str = "") -> dict[str, Any]:
    return {
        "targets": {
            "pacs": {
                "type": "dicomweb",
                "url": "https://pacs.example/dicom-web",
                "username": "router",
                "password": SECRET,
            }
        },
        "rules": {"ct": {"rule": rule, "targets": ["pacs"], "comment": comment}},
    }


def save(web: TestClient, headers: dict[str, str], doc: dict[str, Any], comment: str) -> int:
    answer = web.put("/api/config", params={"comment": comment}, json=doc, headers=headers)
    assert answer.status_code == 200, answer.text
    return int(answer.json()["version"])


def version_count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(CONFIG_VERSIONS)).scalar_one())


def test_versions_page_lists_who_and_why(web: TestClient, web_engine: Engine) -> None:
    admin = as_role(web, web_engine, "admin")
    first = save(web, admin, document(), "first routing to the PACS")
    second = save(web, admin, document("@Modality@ == 'MR'"), "MR instead of CT")
    page = web.get("/configuration")
    assert page.status_code == 200
    assert "admin-user" in page.text
    assert "first routing to the PACS" in page.text and "MR instead of CT" in page.text
    assert f'href="/configuration/diff?from={first}&amp;to={second}"' in page.text
    assert f'data-action="POST /api/config/versions/{first}/restore"' in page.text
    shown = web.get(f"/configuration/versions/{first}")
    assert shown.status_code == 200 and "@Modality@ == &#39;CT&#39;" in shown.text
    assert SECRET not in shown.text and "**********" in shown.text
    assert web.get("/configuration/versions/999").status_code == 404


def test_diff_shows_the_changed_rule_and_no_secret(web: TestClient, web_engine: Engine) -> None:
    admin = as_role(web, web_engine, "admin")
    first = save(web, admin, document(), "CT")
    second = save(web, admin, document("@Modality@ == 'MR'"), "MR")
    answer = web.get("/api/config/diff", params={"from": first, "to": second})
    assert answer.status_code == 200
    diff = answer.json()["diff"]
    assert '-      "rule": "@Modality@ == \'CT\'",' in diff.splitlines()
    assert '+      "rule": "@Modality@ == \'MR\'",' in diff.splitlines()
    assert SECRET not in diff and "pacs.example" not in diff, "only what changed, masked"
    page = web.get("/configuration/diff", params={"from": first, "to": second})
    assert page.status_code == 200
    assert (
        '<span class="del">-      &#34;rule&#34;: &#34;@Modality@ == &#39;CT&#39;&#34;,'
        in page.text
    )
    assert (
        '<span class="add">+      &#34;rule&#34;: &#34;@Modality@ == &#39;MR&#39;&#34;,'
        in page.text
    )
    assert '<span class="hunk">@@' in page.text and SECRET not in page.text
    # Without versions given: the newest change.
    assert "MR" in web.get("/configuration/diff").text
    assert web.get("/api/config/diff", params={"from": first, "to": 999}).status_code == 404


def test_restore_makes_a_new_version_equal_to_the_old(web: TestClient, web_engine: Engine) -> None:
    admin = as_role(web, web_engine, "admin")
    first = save(web, admin, document(), "CT")
    save(web, admin, document("@Modality@ == 'MR'"), "MR")
    restored = web.post(f"/api/config/versions/{first}/restore", headers=admin)
    assert restored.status_code == 200
    newest = restored.json()["version"]
    assert newest == first + 2
    assert store.get(web_engine, newest) == store.get(web_engine, first)
    assert store.get(web_engine, newest).targets["pacs"].password.get_secret_value() == SECRET
    page = web.get("/configuration").text
    assert f"restored version {first}" in page
    empty = web.get("/api/config/diff", params={"from": first, "to": newest}).json()
    assert empty["diff"] == ""


def test_only_admins_change_the_configuration(web: TestClient, web_engine: Engine) -> None:
    admin_client = TestClient(web.app, base_url="http://testserver")
    admin = as_role(admin_client, web_engine, "admin")
    first = save(admin_client, admin, document(), "CT")
    save(admin_client, admin, document("@Modality@ == 'MR'"), "MR")
    for role in ("viewer", "operator"):
        client = TestClient(web.app, base_url="http://testserver")
        headers = as_role(client, web_engine, role)
        page = client.get("/configuration")
        assert page.status_code == 200 and "MR" in page.text
        assert "/restore" not in page.text, "no restore button without the admin role"
        assert client.get("/configuration/import").status_code == 403
        assert client.get("/configuration/diff").status_code == 200
        refused = [
            client.post(f"/api/config/versions/{first}/restore", headers=headers),
            client.put("/api/config", json=document(), headers=headers),
            client.put("/api/config/settings", json={"settings": {}}, headers=headers),
        ]
        assert [answer.status_code for answer in refused] == [403, 403, 403]
        settings = client.get("/configuration/settings").text
        assert "<fieldset disabled>" in settings and "Save settings" not in settings
    assert version_count(web_engine) == 2


def test_a_real_mercure_json_is_imported(web: TestClient, web_engine: Engine) -> None:
    admin = as_role(web, web_engine, "admin")
    page = web.get("/configuration/import")
    assert page.status_code == 200 and "configuration.js" in page.text
    checked = web.post("/api/config/validate", json=MERCURE, headers=admin)
    assert checked.status_code == 200
    result = checked.json()
    assert result["format"] == "mercure"
    assert any("targets -> remote" in line for line in result["not_mapped"])
    assert result["counts"] == {"rules": 3, "targets": 6, "modules": 1}
    saved = web.put(
        "/api/config", params={"comment": "imported mercure.json"}, json=MERCURE, headers=admin
    )
    assert saved.status_code == 200, saved.text
    config = store.get(web_engine, saved.json()["version"])
    assert set(config.rules) == {"ct", "brain", "offsite"}
    assert config.targets["pacs"].type == "dicom"
    assert config.settings.series_complete_trigger == 45
    assert "imported mercure.json" in web.get("/configuration").text


def test_an_invalid_file_is_refused_and_nothing_changes(
    web: TestClient, web_engine: Engine
) -> None:
    admin = as_role(web, web_engine, "admin")
    save(web, admin, document(), "CT")
    broken = document("@Modality@ == ")
    broken["rules"]["ct"]["targets"] = ["nowhere"]
    checked = web.post("/api/config/validate", json=broken, headers=admin)
    assert checked.status_code == 422
    detail = checked.json()["detail"]
    assert "rules -> ct -> rule" in detail
    refused = web.put("/api/config", json=broken, headers=admin)
    assert refused.status_code == 422
    bad_settings = web.post(
        "/api/config/validate", json={"settings": {"retry_max": -1}}, headers=admin
    )
    assert bad_settings.status_code == 422 and "settings -> retry_max" in bad_settings.text
    assert version_count(web_engine) == 1
    assert store.get(web_engine, 1).rules["ct"].rule == "@Modality@ == 'CT'"


def test_export_masks_secrets_and_is_a_download(web: TestClient, web_engine: Engine) -> None:
    admin = as_role(web, web_engine, "admin")
    doc = document()
    doc["rules"]["ct"]["notification"] = {"webhook_url": "https://hooks.example/token-abc"}
    version = save(web, admin, doc, "with a webhook")
    exported = web.get("/configuration/export")
    assert exported.status_code == 200
    assert exported.headers["content-disposition"] == (
        f'attachment; filename="caduceus-config-v{version}.json"'
    )
    assert SECRET not in exported.text
    content = json.loads(exported.text)
    assert content["targets"]["pacs"]["password"] == "**********"
    # Slack and Teams put the token in the path: only scheme and host are shown, to admins too.
    assert (
        content["rules"]["ct"]["notification"]["webhook_url"] == "https://hooks.example/**********"
    )
    # The export imports again as it is: the masked password and webhook keep the stored ones.
    again = web.put("/api/config", json=content, headers=admin)
    assert again.status_code == 200 and again.json()["changed"] is False

    viewer = TestClient(web.app, base_url="http://testserver")
    as_role(viewer, web_engine, "viewer")
    masked = viewer.get("/configuration/export", params={"version": version})
    assert masked.status_code == 200 and "attachment" in masked.headers["content-disposition"]
    assert SECRET not in masked.text and "token-abc" not in masked.text


def test_global_settings_are_edited_with_validation(web: TestClient, web_engine: Engine) -> None:
    admin = as_role(web, web_engine, "admin")
    doc = document()
    smtp = {"host": "mail.example", "username": "caduceus", "password": "smtp-secret-99"}
    doc["settings"] = {"smtp": smtp}
    save(web, admin, doc, "CT")
    page = web.get("/configuration/settings")
    assert page.status_code == 200
    names = set(re.findall(r'name="(settings\.[a-z_.]+)"', page.text))
    assert {"settings.retry_max", "settings.smtp.host", "settings.offpeak_start"} <= names
    assert 'data-api="PUT /api/config/settings"' in page.text
    assert "smtp-secret-99" not in page.text and "**********" not in page.text
    shown = web.get("/api/config").json()["settings"]
    # As the form sends it: a password left empty is left out.
    del shown["smtp"]["password"]
    changed = dict(shown, retry_max=7, offpeak_start="21:30")
    answer = web.put(
        "/api/config/settings",
        json={"settings": changed, "comment": "more retries"},
        headers=admin,
    )
    assert answer.status_code == 200, answer.text
    config = store.get(web_engine, answer.json()["version"])
    assert config.settings.retry_max == 7 and config.settings.offpeak_start.minute == 30
    assert config.settings.smtp.password.get_secret_value() == "smtp-secret-99"
    assert set(config.rules) == {"ct"}, "rules stay as they are"
    assert 'value="7"' in web.get("/configuration/settings").text
    bad = web.put(
        "/api/config/settings",
        json={"settings": dict(shown, disk_low_water=95, disk_high_water=90)},
        headers=admin,
    )
    assert bad.status_code == 422 and "disk_low_water must be below disk_high_water" in bad.text
    assert version_count(web_engine) == 2


def test_comments_and_rule_text_are_escaped(web: TestClient, web_engine: Engine) -> None:
    admin = as_role(web, web_engine, "admin")
    first = save(web, admin, document(), "<script>alert(1)</script>")
    second = save(web, admin, document(comment="<script>alert(2)</script>"), "<b>x</b>")
    for path in (
        "/configuration",
        f"/configuration/versions/{second}",
        f"/configuration/diff?from={first}&to={second}",
    ):
        page = web.get(path).text
        assert "<script>alert" not in page and "<b>x</b>" not in page, path
        assert "&lt;script&gt;alert" in page, path


def test_history_diff_settings_and_import_in_a_browser(
    served: str, web_engine: Engine, page: Any, tmp_path: Path
) -> None:
    add_user(web_engine, "ada", "admin")
    first, _ = store.save(web_engine, Config.model_validate(document()), "ada", "CT")
    second, _ = store.save(
        web_engine, Config.model_validate(document("@Modality@ == 'MR'")), "ada", "MR"
    )
    browser_login(page, served, "ada", "/configuration")
    shot(page, "configuration-versions")
    page.click("#main form.filters button[type=submit]")
    page.wait_for_url(f"{served}/configuration/diff?from={first}&to={second}")
    assert "@Modality@ == 'MR'" in page.locator(".diff .add").inner_text()
    assert "@Modality@ == 'CT'" in page.locator(".diff .del").inner_text()
    shot(page, "configuration-diff")

    page.goto(served + "/configuration/settings")
    page.fill("#f-settings-retry_max", "9")
    page.fill("#settings-comment", "more retries")
    page.click("#settings-form button[type=submit]")
    page.wait_for_load_state("load")
    page.locator("#f-settings-retry_max[value='9']").wait_for(state="attached")
    newest = store.current(web_engine)
    assert newest is not None and newest[1].settings.retry_max == 9
    assert newest[1].targets["pacs"].password.get_secret_value() == SECRET
    shot(page, "configuration-settings")

    page.goto(served + "/configuration/import")
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"rules": {"x": {"rule": "@Modality@ ==", "targets": []}}}))
    page.set_input_files("#import-file", str(broken))
    page.click("#import-check")
    error = page.locator("#import-form .form-error")
    error.wait_for()
    assert "rules -> x -> rule" in error.inner_text()
    assert page.failed == [served + "/api/config/validate"], "the 422 that said so"
    page.failed.clear()

    mercure = tmp_path / "mercure.json"
    mercure.write_text(json.dumps(MERCURE))
    page.set_input_files("#import-file", str(mercure))
    page.click("#import-check")
    page.locator("#import-result").wait_for()
    assert "mercure.json" in page.locator("#import-format").inner_text()
    assert "targets -> remote" in page.locator("#import-not-mapped-list").inner_text()
    shot(page, "configuration-import")
    page.click("#import-save button[type=submit]")
    page.wait_for_url(served + "/configuration")
    imported = store.current(web_engine)
    assert imported is not None and set(imported[1].rules) == {"ct", "brain", "offsite"}
    assert store.history(web_engine)[0]["comment"] == "imported mercure.json"

    page.on("dialog", lambda dialog: dialog.accept())
    page.click(f"button[data-action='POST /api/config/versions/{first}/restore']")
    page.get_by_role("cell", name=f"restored version {first}").wait_for()
    restored = store.current(web_engine)
    assert restored is not None and restored[1] == store.get(web_engine, first)
    assert_no_errors(page)


MERCURE_FILES = Path(__file__).parent / "data" / "mercure"


def test_mercures_own_files_and_yaml_are_imported(web: TestClient, web_engine: Engine) -> None:
    """mercure's stock default_mercure.json and its test configuration (a module environment
    as a JSON string once answered 500), and a YAML file, which the page hands to
    /api/config/read."""
    admin = as_role(web, web_engine, "admin")
    for name in ("default_mercure.json", "test_config.json"):
        mercure = json.loads((MERCURE_FILES / name).read_text())
        checked = web.post("/api/config/validate", json=mercure, headers=admin)
        assert checked.status_code == 200, checked.text
        assert checked.json()["format"] == "mercure"
        saved = web.put("/api/config", params={"comment": name}, json=mercure, headers=admin)
        assert saved.status_code == 200, saved.text
    assert store.get(web_engine, 2).modules["test_module"].image == "alpine:3.11"
    text = "rules:\n  ct:\n    rule: \"@Modality@ == 'CT'\"\n    action: notification\n"
    read = web.post("/api/config/read", json={"text": text}, headers=admin)
    assert read.status_code == 200 and read.json()["document"]["rules"]["ct"]["action"] == (
        "notification"
    )
    for bad in ("rules: [", "- a list", "!!python/object/apply:os.system ['true']"):
        refused = web.post("/api/config/read", json={"text": bad}, headers=admin)
        assert refused.status_code == 422, bad


def test_a_yaml_file_is_imported_in_a_browser(
    served: str, web_engine: Engine, page: Any, tmp_path: Path
) -> None:
    add_user(web_engine, "ada", "admin")
    browser_login(page, served, "ada", "/configuration/import")
    exported = tmp_path / "site.yaml"
    exported.write_text(
        "targets:\n  pacs: {type: dicom, host: 10.0.0.5, port: 104, called_aet: PACS}\n"
        "rules:\n  ct: {rule: \"@Modality@ == 'CT'\", targets: [pacs]}\n"
    )
    page.set_input_files("#import-file", str(exported))
    page.click("#import-check")
    page.locator("#import-result").wait_for()
    assert "1 rules, 1 targets" in page.locator("#import-counts").inner_text()
    page.click("#import-save button[type=submit]")
    page.wait_for_url(served + "/configuration")
    newest = store.current(web_engine)
    assert newest is not None and newest[1].rules["ct"].targets == ["pacs"]

    page.goto(served + "/configuration/import")
    page.set_input_files("#import-file", str(MERCURE_FILES / "test_config.json"))
    page.click("#import-check")
    page.locator("#import-result").wait_for()
    listed = page.locator("#import-not-mapped-list").inner_text()
    assert "not needed here: incoming_folder" in listed
    assert "targets -> dummy" in listed
    assert_no_errors(page)
