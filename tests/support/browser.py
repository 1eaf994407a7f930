"""Headless Chromium (Debian's package, not a downloaded browser) driven by Playwright.

Screenshots go to test-artifacts/screenshots/ (or $CADUCEUS_SCREENSHOTS), which CI prints
and keeps, so a person can look at every page the tests visited.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
# Without these, Chromium tries to reach Google's servers, which this closed network
# refuses, many connections at a time.
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def screenshots_folder() -> Path:
    folder = Path(
        os.environ.get("CADUCEUS_SCREENSHOTS")
        or Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
    )
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    if not Path(CHROMIUM).exists() and shutil.which("chromium") is None:
        pytest.skip("Debian's chromium is not installed")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium"),
            args=CHROMIUM_ARGS,
        )
        yield browser
        browser.close()


@pytest.fixture
def page(chromium: Any) -> Iterator[Any]:
    """A fresh browser context (no cookies) with a laptop-sized window."""
    context = chromium.new_context(viewport={"width": 1366, "height": 860})
    context.set_default_timeout(15_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on(
        "console",
        lambda msg: errors.append(msg.text) if msg.type == "error" else None,
    )
    page.script_errors = errors
    yield page
    context.close()


def browser_login(page: Any, url: str, name: str, goal: str, password: str = "") -> None:
    """Log in through the form and land on `goal`; failed responses are kept in page.failed."""
    from tests.support.web import PASSWORD

    page.failed = []
    page.on("response", lambda r: page.failed.append(r.url) if r.status >= 400 else None)
    page.goto(f"{url}/login?next={goal}")
    page.fill("#username", name)
    page.fill("#password", password or PASSWORD)
    page.click("#login-form button[type=submit]")
    page.wait_for_url(url + goal)


def assert_no_errors(page: Any) -> None:
    """No script error and no failed request on the way (a failed request is also logged as a
    console error; page.failed names it)."""
    errors = [e for e in page.script_errors if not e.startswith("Failed to load resource")]
    assert errors == [] and page.failed == [], (errors, page.failed)


def shot(page: Any, name: str) -> Path:
    """A full-page screenshot under a readable name."""
    path = screenshots_folder() / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Name the screenshots at the end of the run, so CI's output says where to look."""
    folder = screenshots_folder()
    taken = sorted(folder.glob("*.png"))
    if taken:
        terminalreporter.write_sep("-", f"{len(taken)} screenshots of the web interface")
        terminalreporter.write_line(str(folder))
        for path in taken:
            terminalreporter.write_line(f"  {path.name}")
