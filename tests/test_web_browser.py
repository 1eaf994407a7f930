"""The whole web interface in a real browser, as an administrator meets it on a new install.

`caduceus run` starts every service (receiver, router, processor, dispatcher, cleaner,
notifier, web) as on a hospital's machine; headless Chromium (Debian's) drives the pages.
The story: first login with the generated password, the forced password change, a target
and a rule made in the forms, a series sent with DCMTK's storescu that shows up in the queue
and arrives at the target, its history, then a task that failed because its PACS was down,
restarted from its page once the PACS is back. Every page is photographed on the way.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Launch
from tests.support.browser import assert_no_errors, shot
from tests.support.processes import Caduceus, free_port
from tests.support.sending import send
from tests.support.storescp import start_storescp
from tests.support.waiting import wait_for_port

NEW_PASSWORD = "a much better passphrase"


def wait_for_text(page: Any, url: str, text: str, seconds: float = 90) -> None:
    """Reload `url` until `text` shows (the queue also refreshes itself; a reload is surer)."""
    deadline = time.monotonic() + seconds
    while True:
        page.goto(url)
        if text in page.inner_text("main"):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} did not appear on {url}:\n{page.inner_text('main')}")
        page.wait_for_timeout(1000)


def submit(page: Any, form: str, then: str) -> None:
    page.click(f"{form} button[type=submit]")
    page.wait_for_url(then)


@pytest.fixture
def caduceus(launch: Launch) -> Caduceus:
    instance = launch("run")
    wait_for_port(instance.web_port, timeout=60)
    return instance


# The story runs once, on the embedded default (SQLite); every page's queries run on
# PostgreSQL too in the other web tests.
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_an_administrator_runs_caduceus_from_the_browser(
    caduceus: Caduceus, page: Any, tmp_path: Path
) -> None:
    base = f"http://127.0.0.1:{caduceus.web_port}"
    page.failed = []
    page.on("response", lambda r: page.failed.append(r.url) if r.status >= 400 else None)
    page.on("dialog", lambda dialog: dialog.accept())  # the confirmations before actions

    # A visitor is sent to the login; the first password is only in a file of the host.
    page.goto(base + "/queue")
    assert page.url.startswith(base + "/login?next=")
    shot(page, "01-login")
    first = (caduceus.home / "initial-admin-password").read_text().strip()
    page.fill("#username", "admin")
    page.fill("#password", first)
    submit(page, "#login-form", base + "/account/password")
    assert "Choose your own password" in page.inner_text("main")
    shot(page, "02-password-change")

    page.fill("#current_password", first)
    page.fill("#new_password", NEW_PASSWORD)
    page.fill("#repeat_password", NEW_PASSWORD)
    submit(page, "#password-form", base + "/login?changed=1")
    assert page.is_visible("text=Your password was changed")
    page.fill("#username", "admin")
    page.fill("#password", NEW_PASSWORD)
    submit(page, "#login-form", base + "/")
    assert "Overview" in page.title()
    shot(page, "03-overview")

    # Failures give up at once here, so the failed task below needs no waiting.
    page.goto(base + "/configuration/settings")
    page.fill("#f-settings-retry_max", "0")
    page.fill("#f-settings-retry_delay", "1")
    page.fill("#settings-comment", "no retries while testing")
    page.click("#settings-form button[type=submit]")
    page.wait_for_load_state("load")
    page.locator("#f-settings-retry_max[value='0']").wait_for()

    # A folder target, and a DICOM target whose PACS is not up yet.
    archive = tmp_path / "archive"
    archive.mkdir()  # a folder target writes into a folder that exists (a mounted share)
    page.goto(base + "/targets/new?type=folder")
    page.fill("#field-name", "archive")
    page.fill("#field-path", str(archive))
    submit(page, "#target-form", base + "/targets")
    pacs_port = free_port()
    page.goto(base + "/targets/new?type=dicom")
    page.fill("#field-name", "pacs")
    page.fill("#field-host", "127.0.0.1")
    page.fill("#field-port", str(pacs_port))
    page.fill("#field-called_aet", "STORESCP")
    shot(page, "04-target-form")
    submit(page, "#target-form", base + "/targets")
    assert "archive" in page.inner_text("main") and "pacs" in page.inner_text("main")
    shot(page, "05-targets")

    # Two rules, made in the editor; the expression is checked as it is typed.
    for name, expression, target in (
        ("ct archive", "@Modality@ == 'CT'", "archive"),
        ("mr pacs", "@Modality@ == 'MR'", "pacs"),
    ):
        page.goto(base + "/rules/new")
        page.fill("#rule-name", name)
        page.fill("#rule-expression", "@Modality@ = ")
        page.locator("#rule-expression[aria-invalid='true']").wait_for()
        page.fill("#rule-expression", expression)
        page.locator("#rule-expression[aria-invalid='false']").wait_for()
        page.select_option("#rule-targets", [target])
        page.fill("#rule-series-trigger", "2")
        submit(page, "#rule-form", base + "/rules")
    assert "ct archive" in page.inner_text("main")
    shot(page, "06-rules")

    # A CT series reaches the archive, and its task shows in the queue as done.
    sent = send(caduceus, tmp_path / "ct", count=4, modality="CT", patient_name="Doe^Jane")
    wait_for_text(page, base + "/queue?tab=finished", "Doe^Jane")
    shot(page, "07-queue-finished")
    delivered = [p for p in archive.rglob("*") if p.is_file() and not p.name.startswith(".")]
    assert len(delivered) == len(sent), delivered

    # Its history: the task page names the target, its state and the events.
    page.click("main table a[href^='/tasks/']")
    page.wait_for_url(base + "/tasks/*")
    text = page.inner_text("main")
    assert "archive" in text and "Doe^Jane" in text and "done" in text
    shot(page, "08-task-done")

    # An MR series fails: its PACS is down. Once it is up, Restart on the task sends it.
    send(caduceus, tmp_path / "mr", count=3, modality="MR", patient_name="Roe^Richard")
    wait_for_text(page, base + "/queue?tab=failed", "Roe^Richard")
    shot(page, "09-queue-failed")
    page.click("main table a[href^='/tasks/']")
    page.wait_for_url(base + "/tasks/*")
    assert "error" in page.inner_text("main")
    shot(page, "10-task-failed")
    pacs = start_storescp(tmp_path / "pacs", port=pacs_port)
    try:
        page.click("button:has-text('Restart')")
        page.locator("#flash.ok").wait_for()
        deadline = time.monotonic() + 60
        while len(pacs.files()) < 3 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert len(pacs.files()) == 3
        wait_for_text(page, page.url, "dispatch.done", seconds=30)
    finally:
        pacs.stop()
    shot(page, "11-task-restarted")

    # The other pages, photographed for the record; each renders without errors.
    for path, name in (
        ("/", "12-overview-after"),
        ("/queue", "13-queue"),
        ("/modules", "14-modules"),
        ("/users", "15-users"),
        ("/configuration", "16-configuration"),
        ("/logs", "17-logs"),
        ("/selftest", "18-selftest"),
        ("/account", "19-account"),
    ):
        page.goto(base + path)
        assert page.locator("main h1").count() == 1, path
        shot(page, name)
    # A large monitor: the same pages use the width.
    page.set_viewport_size({"width": 2560, "height": 1440})
    for path, name in (("/", "20-overview-large-monitor"), ("/queue", "21-queue-large-monitor")):
        page.goto(base + path)
        shot(page, name)
    assert_no_errors(page)
