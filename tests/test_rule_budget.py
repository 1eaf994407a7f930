"""Rules cost bounded time wherever they run: in the router on a received series (a rule over
its budget is an error event, and the series is still handled), and in a real `caduceus web`
process, whose rule tests run off its event loop while other requests are answered."""

from __future__ import annotations

import random
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pydantic import ValidationError
from sqlalchemy import insert, select

from caduceus.core.config import store
from caduceus.core.config.models import Config
from caduceus.core.db.models import CONFIG_VERSIONS, EVENTS, SERIES
from caduceus.core.dicom.synthetic import SeriesSpec, write_series
from caduceus.core.rules import Budget
from caduceus.core.storage import DataRoot
from caduceus.router.completion import Router
from caduceus.web import auth
from tests.conftest import Launch
from tests.support.clock import later
from tests.support.processes import Caduceus, free_port, storescu
from tests.support.routing import TARGETS, config
from tests.support.rows import tasks
from tests.support.waiting import wait_for_port
from tests.support.web import PASSWORD

# The issue's pattern: Python's re took 14 s of CPU on these 512 characters, per search.
SLOW_FOR_RE = "a*.?a*.?.?.?.?.?z"
ISSUE_RULE = " or ".join(
    f"match(@{keyword}@, {SLOW_FOR_RE!r})"
    for keyword in ("AdditionalPatientHistory", "PatientComments", "StudyComments")
)
# Each search of this pattern makes RE2's automaton thrash: tens of milliseconds for 8,000
# characters; a thousand of them are far beyond any budget.
COSTLY_RULE = "match([@ImageComments@ * 2] * 1000, '(?i)(?:[ab]{1,100}a[ab]{10}){1,8}z')"


def send_hostile_series(receiver: Caduceus, folder: Path, series_uid: str) -> None:
    """A CT series whose free-text tags are what the rules above work hardest on."""
    comments = "".join(random.Random(1).choice("ab") for _ in range(4_000))
    for path in write_series(folder, SeriesSpec(count=2, series_uid=series_uid, modality="CT")):
        ds = pydicom.dcmread(path)
        ds.ImageComments = comments  # the router reads texts up to 4,096 characters
        ds.AdditionalPatientHistory = ds.PatientComments = ds.StudyComments = "a" * 512
        ds.save_as(path)
    result = storescu(receiver, folder)
    assert result.returncode == 0, result.stderr


def events_of(receiver: Caduceus, kind: str) -> list[dict[str, Any]]:
    with receiver.engine().connect() as conn:
        query = select(EVENTS).where(EVENTS.c.kind == kind).order_by(EVENTS.c.id)
        return [dict(row._mapping) for row in conn.execute(query)]


def series_id(receiver: Caduceus, series_uid: str) -> int:
    with receiver.engine().connect() as conn:
        query = select(SERIES.c.id).where(SERIES.c.series_uid == series_uid)
        return int(conn.execute(query).scalar_one())


def test_router_records_a_rule_over_budget_and_still_handles_the_series(
    receiver: Caduceus, tmp_path: Path
) -> None:
    router = Router(receiver.engine(), DataRoot(receiver.home), Budget(cpu_seconds=0.1))
    rules = {
        "issue": {"rule": ISSUE_RULE, "targets": ["pacs"]},
        "costly": {"rule": COSTLY_RULE, "targets": ["pacs"]},
    }

    # Another rule matches: the series gets its task, and the costly rule an error event.
    send_hostile_series(receiver, tmp_path / "one", "1.2.826.0.1.3680043.8.498.901")
    started = time.monotonic()
    result = router.run_pass(
        config({**rules, "ct": {"rule": "@Modality@ == 'CT'", "targets": ["pacs"]}}), later(61)
    )
    assert time.monotonic() - started < 10  # 45 s for the issue's rule alone before
    assert len(result.tasks) == 1 and [task["rule"] for task in tasks(receiver)] == ["ct"]
    one = series_id(receiver, "1.2.826.0.1.3680043.8.498.901")
    [error] = events_of(receiver, "rule.error")
    assert (error["series_id"], error["severity"]) == (one, "error")
    assert error["details"] == {"rule": "costly", "level": "series"}
    assert "'costly' could not be evaluated and counted as not matching" in error["message"]
    assert "0.1 s of CPU time" in error["message"]
    [complete] = events_of(receiver, "series.complete")
    assert complete["details"]["rules"] == ["ct"]

    # No other rule matches: the series is discarded, and the event says why.
    send_hostile_series(receiver, tmp_path / "two", "1.2.826.0.1.3680043.8.498.902")
    started = time.monotonic()
    router.run_pass(config(rules), later(61))
    assert time.monotonic() - started < 10
    two = series_id(receiver, "1.2.826.0.1.3680043.8.498.902")
    assert [e["series_id"] for e in events_of(receiver, "rule.error")] == [one, two]
    [discarded] = events_of(receiver, "series.discarded")
    assert discarded["series_id"] == two
    assert discarded["message"] == "no rule matched ('costly' could not be evaluated)"


def _viewer_client(web: Caduceus) -> httpx.Client:
    auth.create_user(web.engine(), "viewer", PASSWORD, "viewer")
    client = httpx.Client(base_url=f"http://127.0.0.1:{web.web_port}", timeout=60)
    answer = client.post("/api/login", json={"username": "viewer", "password": PASSWORD})
    assert answer.status_code == 200, answer.text
    client.headers[auth.CSRF_HEADER] = answer.json()["csrf_token"]
    return client


def test_real_web_answers_other_requests_while_a_rule_test_runs(
    receiver: Caduceus, launch: Launch, tmp_path: Path
) -> None:
    send_hostile_series(receiver, tmp_path / "series", "1.2.826.0.1.3680043.8.498.903")
    # A budget of 1 s makes the costly test last long enough to watch the others meanwhile.
    web = launch("web", CADUCEUS_RULES_CPU_SECONDS="1", CADUCEUS_WEB_RULE_TESTS_PARALLEL="1")
    wait_for_port(web.web_port, process=web.process)
    client = _viewer_client(web)
    [series] = client.get("/api/series").json()

    def test(rule: str) -> httpx.Response:
        return client.post("/api/rules/test", json={"rule": rule, "series_id": series["id"]})

    # The issue's rule: 45 s of CPU with Python's re; an answer at once now.
    started = time.monotonic()
    quick = test(ISSUE_RULE)
    assert quick.status_code == 200, quick.text
    assert quick.json()["result"] is False
    assert time.monotonic() - started < 5

    answers: dict[str, httpx.Response] = {}
    costly_took: list[float] = []

    def costly(key: str) -> None:
        begun = time.monotonic()
        answers[key] = test(COSTLY_RULE)
        costly_took.append(time.monotonic() - begun)

    first = threading.Thread(target=costly, args=("first",))
    first.start()
    time.sleep(0.5)
    second = threading.Thread(target=costly, args=("second",))  # waits for the only worker
    second.start()
    time.sleep(0.3)
    refused = test(COSTLY_RULE)  # one running, one waiting: no more
    assert refused.status_code == 429, refused.text
    delays = []
    while first.is_alive() or second.is_alive():
        for path in ("/login", "/api/health"):
            begun = time.monotonic()
            assert client.get(path).status_code == 200
            delays.append(time.monotonic() - begun)
        time.sleep(0.2)
    first.join()
    second.join()
    assert len(delays) >= 4, "the rule tests ended before other requests could be watched"
    assert max(delays) < 2, delays  # answered promptly while the rule tests ran
    for key in ("first", "second"):
        assert answers[key].status_code == 422, answers[key].text
        problem = answers[key].json()["detail"][0]
        assert problem["type"] == "rule_evaluation" and "1 s of CPU time" in problem["msg"]
    # Each test within its budget of 1 s of CPU (the second after the first), on a busy machine.
    assert max(costly_took) < 30, costly_took


def test_a_stored_rule_an_earlier_release_accepted_is_a_rule_error_not_a_crash(
    receiver: Caduceus, tmp_path: Path
) -> None:
    """Lookahead was accepted before match() ran in linear time: a version holding it still
    loads, and the router reports the rule instead of failing on every pass."""
    rules = {
        "lookahead": {"rule": "match(@Modality@, 'C(?=T)')", "targets": ["pacs"]},
        "ct": {"rule": "@Modality@ == 'CT'", "targets": ["pacs"]},
    }
    content = {"targets": {"pacs": TARGETS["pacs"]}, "rules": rules}
    with pytest.raises(ValidationError, match="lookahead"):
        Config.model_validate(content)  # refused when saved now
    with receiver.engine().begin() as conn:
        conn.execute(
            insert(CONFIG_VERSIONS).values(
                created_at=datetime.now(UTC), author="earlier", comment="", content=content
            )
        )
    stored = store.current_or_default(receiver.engine())
    assert list(stored.rules) == ["lookahead", "ct"]

    send_hostile_series(receiver, tmp_path / "series", "1.2.826.0.1.3680043.8.498.904")
    router = Router(receiver.engine(), DataRoot(receiver.home))
    assert len(router.run_pass(stored, later(61)).tasks) == 1
    [error] = events_of(receiver, "rule.error")
    assert error["series_id"] == series_id(receiver, "1.2.826.0.1.3680043.8.498.904")
    assert "'lookahead' could not be evaluated" in error["message"]
    assert "no longer valid" in error["message"] and "lookahead (?=...)" in error["message"]


def test_command_line_rule_test_is_bounded(tmp_path: Path, sqlite_url: str) -> None:
    [path, _] = write_series(tmp_path / "series", SeriesSpec(count=2))
    ds = pydicom.dcmread(path)
    ds.ImageComments = "".join(random.Random(1).choice("ab") for _ in range(4_000))
    ds.AdditionalPatientHistory = ds.PatientComments = ds.StudyComments = "a" * 512
    ds.save_as(path)
    cli = Caduceus(tmp_path / "home", sqlite_url, free_port())

    started = time.monotonic()
    quick = cli.cli("rules", "test", ISSUE_RULE, str(path), check=False, timeout=60)
    assert quick.returncode == 3, quick.stdout + quick.stderr  # false, at once
    costly = cli.cli("rules", "test", COSTLY_RULE, str(path), check=False, timeout=60)
    assert costly.returncode == 4, costly.stdout + costly.stderr
    assert "could not be evaluated" in costly.stdout and "0.5 s of CPU time" in costly.stdout
    assert time.monotonic() - started < 60
