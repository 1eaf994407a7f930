"""Every page can be used without a mouse and with a screen reader: the basics, checked on
every page the application has (with real data in it), and the keyboard path in Chromium.

What is checked on each page: the document's language, exactly one <h1>, a label for every
form control (a <label for>, a wrapping <label>, or aria-label/aria-labelledby), text or a
label on every button and link, alternative text on every image, and a title on every chart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from caduceus.web.app import all_routes
from tests.support.browser import browser_login
from tests.support.hostile import hostile_world, page_visits
from tests.support.processes import Caduceus
from tests.support.web import add_user, as_role, serve, web_client

CONTROLS = {"input", "select", "textarea"}
UNLABELLED_INPUTS = {"hidden", "submit", "button", "reset", "image"}


@dataclass
class Audit(HTMLParser):
    """What a screen reader would miss on one page."""

    lang: str = ""
    h1: int = 0
    labels_for: set[str] = field(default_factory=set)
    controls: list[tuple[str, dict[str, str], bool]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    _in_label: int = 0
    _open: list[tuple[str, dict[str, str], list[str]]] = field(default_factory=list)
    _svg: list[bool] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__(convert_charrefs=True)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = {k: v or "" for k, v in attrs}
        if tag == "html":
            self.lang = found.get("lang", "")
        elif tag == "h1":
            self.h1 += 1
        elif tag == "label":
            self._in_label += 1
            if "for" in found:
                self.labels_for.add(found["for"])
        elif tag in CONTROLS and found.get("type", "") not in UNLABELLED_INPUTS:
            self.controls.append((tag, found, self._in_label > 0))
        elif tag == "img" and "alt" not in found:
            self.problems.append(f"<img src={found.get('src')!r}> has no alt text")
        elif tag == "svg":
            self._svg.append("aria-label" in found or "aria-labelledby" in found)
        elif tag == "title" and self._svg:
            self._svg[-1] = True
        if tag in ("button", "a"):
            self._open.append((tag, found, []))

    def handle_endtag(self, tag: str) -> None:
        if tag == "label":
            self._in_label = max(0, self._in_label - 1)
        elif tag == "svg" and self._svg:
            if not self._svg.pop():
                self.problems.append("a chart (<svg>) has neither a <title> nor a label")
        elif tag in ("button", "a") and self._open and self._open[-1][0] == tag:
            _, found, text = self._open.pop()
            named = "".join(text).strip() or found.get("aria-label") or found.get("title")
            if not named:
                self.problems.append(f"<{tag} {found}> has no text or label")

    def handle_data(self, data: str) -> None:
        for _, _, text in self._open:
            text.append(data)

    def check(self) -> list[str]:
        problems = list(self.problems)
        if not self.lang:
            problems.append("<html> has no lang")
        if self.h1 != 1:
            problems.append(f"{self.h1} <h1> headings")
        for tag, found, wrapped in self.controls:
            labelled = (
                wrapped
                or found.get("id", "\0") in self.labels_for
                or found.get("aria-label")
                or found.get("aria-labelledby")
            )
            if not labelled:
                problems.append(f"<{tag} name={found.get('name')!r}> has no label")
        return problems


def audit(html: str) -> list[str]:
    parser = Audit()
    parser.feed(html)
    parser.close()
    return parser.check()


def test_the_auditor_finds_what_it_looks_for() -> None:
    """The checks can fail: a page with each mistake is reported."""
    bad = (
        '<html><body><h1>A</h1><h1>B</h1><input name="q"><img src="x.png">'
        '<button type="button"></button><svg><rect/></svg></body></html>'
    )
    problems = audit(bad)
    assert "<html> has no lang" in problems and "2 <h1> headings" in problems
    assert any("name='q'> has no label" in p for p in problems)
    assert any("no alt text" in p for p in problems)
    assert any("<button" in p for p in problems)
    assert any("<svg>" in p for p in problems)
    good = (
        '<html lang="en"><body><h1>A</h1><label for="q">Find</label><input id="q" name="q">'
        '<label>Name <input name="n"></label><button>Go</button>'
        "<svg><title>chart</title></svg></body></html>"
    )
    assert audit(good) == []


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_every_page_has_labels_headings_and_text_alternatives(
    receiver: Caduceus, tmp_path: Path
) -> None:
    world = hostile_world(receiver, tmp_path)
    web = web_client(receiver.home, receiver.database_url, world.engine)
    as_role(web, world.engine, "admin")
    pages = [
        route
        for method, route in all_routes(web.app)  # type: ignore[arg-type]
        if method == "GET" and not route.startswith(("/api", "/metrics", "/static"))
    ]
    found: dict[str, list[str]] = {}
    checked = 0
    for route in pages:
        for path, params in page_visits(route, world.ids):
            answer = web.get(path, params=params)
            if not answer.headers["content-type"].startswith("text/html"):
                continue
            if "<html" not in answer.text:
                continue  # a fragment that refreshes part of a page, checked with its page
            checked += 1
            if problems := audit(answer.text):
                found[f"{path} {params or ''}"] = problems
    assert checked > 20
    assert found == {}


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_keyboard_reaches_the_content_and_every_menu_entry(
    receiver: Caduceus, tmp_path: Path, page: Any
) -> None:
    world = hostile_world(receiver, tmp_path)
    web = web_client(receiver.home, receiver.database_url, world.engine)
    add_user(world.engine, "kim", "admin")
    with serve(web.app) as url:  # type: ignore[arg-type]
        browser_login(page, url, "kim", "/queue")
        # The first Tab lands on "Skip to content", which moves the focus into the page.
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.textContent") == "Skip to content"
        page.keyboard.press("Enter")
        assert page.evaluate("document.activeElement.id") == "main"
        # Every menu entry is reached with Tab alone, in the order it is shown.
        page.goto(url + "/queue")
        menu = page.eval_on_selector_all("header nav a", "links => links.map(a => a.textContent)")
        reached: list[str] = []
        for _ in range(len(menu) + 3):
            page.keyboard.press("Tab")
            reached.append(page.evaluate("document.activeElement.textContent"))
        assert [text for text in reached if text in menu] == menu
        # And Enter on one follows it.
        page.focus("header nav a[href='/rules']")
        page.keyboard.press("Enter")
        page.wait_for_url(url + "/rules")
