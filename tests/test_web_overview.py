"""The Overview page: service heartbeats from real processes, throughput charts, queue depths,
disk use with the cleaner's marks, and recent errors."""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, insert, select, update

from caduceus.bookkeeper.throughput import Window
from caduceus.core.config import store
from caduceus.core.config.models import Config, Settings
from caduceus.core.db.models import (
    DELIVERIES,
    EVENTS,
    INSTANCES,
    SERIES,
    SERVICE_HEARTBEATS,
    STUDIES,
    TASKS,
)
from caduceus.core.heartbeat import Heartbeat, record_restarting
from caduceus.core.service_names import SERVICES
from caduceus.core.work_queue import set_suspended
from caduceus.web.pages.charts import bar_chart, nice_ceiling
from tests.support.processes import Caduceus, launch_patiently
from tests.support.waiting import wait_until
from tests.support.web import as_role


def processes(client: TestClient) -> list[dict[str, Any]]:
    answer = client.get("/api/services")
    assert answer.status_code == 200, answer.text
    return list(answer.json()["processes"])


def of(client: TestClient, service: str) -> list[dict[str, Any]]:
    return [p for p in processes(client) if p["service"] == service]


def service_row(page: str, service: str) -> str:
    """The table row(s) of one service on the Overview."""
    rows = re.findall(rf'<tr data-service="{service}">(.*?)</tr>', page, re.S)
    assert rows, f"no row for {service}"
    return "".join(rows)


def test_visitors_are_sent_to_the_login_and_the_api_refuses_them(web: TestClient) -> None:
    for path in ("/", "/?hours=24", "/overview/status", "/overview/charts?hours=24"):
        answer = web.get(path, follow_redirects=False)
        assert answer.status_code == 303, path
        assert answer.headers["location"].startswith("/login?next="), path
    for path in ("/api/services", "/api/throughput", "/api/disk"):
        assert web.get(path).status_code == 401, path


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_running_receiver_is_running_and_a_stopped_one_stopped(
    launch: Any,
    caduceus_factory: list[Caduceus],
    web: TestClient,
    web_engine: Engine,
    workers: str,
) -> None:
    """One worker: the heartbeat is a thread; several: the forking parent's loop beats."""
    as_role(web, web_engine, "viewer")
    receiver = launch_patiently(launch, caduceus_factory, CADUCEUS_RECEIVER_WORKERS=workers)
    assert receiver.process is not None
    assert wait_until(lambda: [p["state"] for p in of(web, "receiver")] == ["running"], 30)
    [first] = of(web, "receiver")
    assert first["pid"] == receiver.process.pid
    assert first["state"] == "running"  # within the 15 s that service_states allows a beat
    assert "CADUCEUS on 127.0.0.1" in first["detail"]
    assert ("2 workers" in first["detail"]) == (workers == "2")
    # The daemon thread keeps beating.
    assert wait_until(lambda: of(web, "receiver")[0]["beat_at"] > first["beat_at"], 30)
    row = service_row(web.get("/").text, "receiver")
    assert "state-running" in row and str(receiver.process.pid) in row

    assert receiver.stop() == 0
    [stopped] = of(web, "receiver")
    assert stopped["state"] == "stopped" and stopped["pid"] == first["pid"]
    row = service_row(web.get("/").text, "receiver")
    assert "state-stopped" in row and "state-running" not in row


def test_silent_restarting_and_never_started_services(web: TestClient, web_engine: Engine) -> None:
    heart = Heartbeat(web_engine, "router", detail="pass every second")
    heart.begin()
    with web_engine.begin() as conn:
        conn.execute(
            update(SERVICE_HEARTBEATS)
            .where(SERVICE_HEARTBEATS.c.id == heart.row_id)
            .values(beat_at=datetime.now(UTC) - timedelta(minutes=2))
        )
    record_restarting(
        web_engine,
        "dispatcher",
        4242,
        3,
        "exited with code -9; restarting in 2.0 s",
        datetime.now(UTC) - timedelta(seconds=5),
    )
    as_role(web, web_engine, "viewer")
    page = web.get("/").text
    assert "state-silent" in service_row(page, "router")
    dispatcher = service_row(page, "dispatcher")
    assert "state-restarting" in dispatcher and ">3<" in dispatcher
    assert "exited with code -9" in dispatcher
    assert "no heartbeat" in service_row(page, "notifier")
    states = {p["service"]: p["state"] for p in processes(web)}
    assert states == {"router": "silent", "dispatcher": "restarting"}

    # A beat brings the silent router back.
    heart.beat()
    assert "state-running" in service_row(web.get("/overview/status").text, "router")


def test_run_restarts_a_killed_service_and_counts_the_restart(
    launch: Any, caduceus_factory: list[Caduceus], web: TestClient, web_engine: Engine
) -> None:
    as_role(web, web_engine, "viewer")
    instance = launch_patiently(launch, caduceus_factory, "run")

    def all_running() -> bool:
        found = processes(web)
        return {p["service"] for p in found if p["state"] == "running"} == set(SERVICES)

    assert wait_until(all_running, 120)
    [router] = of(web, "router")
    assert router["restarts"] == 0
    os.kill(router["pid"], signal.SIGKILL)

    def restarted() -> bool:
        found = of(web, "router")
        return [(p["state"], p["restarts"]) for p in found] == [("running", 1)]

    assert wait_until(restarted, 120)
    [again] = of(web, "router")
    assert again["pid"] != router["pid"]
    assert "supervisor" in {f["service"] for f in web.get("/api/logs").json()}

    assert instance.stop() == 0
    assert {p["state"] for p in processes(web)} == {"stopped"}
    assert {p["service"] for p in processes(web)} == set(SERVICES)


def _history(engine: Engine) -> dict[str, int]:
    """Instances, deliveries, tasks, a suspended queue and an error, at known times."""
    now = datetime.now(UTC)
    ago = {"recent": now - timedelta(minutes=25), "older": now - timedelta(hours=3)}
    ago["yesterday"] = now - timedelta(hours=10)
    received = {"recent": 7, "older": 5, "yesterday": 2}
    with engine.begin() as conn:
        study = conn.execute(
            insert(STUDIES)
            .values(study_uid="1.2.3", first_received_at=ago["yesterday"], last_received_at=now)
            .returning(STUDIES.c.id)
        ).scalar_one()
        series = conn.execute(
            insert(SERIES)
            .values(
                series_uid="1.2.3.4",
                study_id=study,
                folder="1.2.3.4",
                first_received_at=ago["yesterday"],
                last_received_at=ago["recent"],
            )
            .returning(SERIES.c.id)
        ).scalar_one()
        conn.execute(
            insert(INSTANCES),
            [
                {
                    "sop_instance_uid": f"1.2.3.4.{when}.{n}",
                    "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
                    "series_id": series,
                    "transfer_syntax_uid": "1.2.840.10008.1.2.1",
                    "path": f"incoming/1.2.3.4/{when}{n}.dcm",
                    "size_bytes": 1000,
                    "received_at": ago[when],
                }
                for when, count in received.items()
                for n in range(count)
            ],
        )
        states = ["queued", "queued", "dispatching", "error", "done", "done", "done"]
        ids = [str(uuid.uuid4()) for _ in states]
        conn.execute(
            insert(TASKS),
            [
                {
                    "id": task_id,
                    "group_key": f"series:1.2.3.4:{n}",
                    "created_at": ago["yesterday"],
                    "updated_at": ago["recent"],
                    "rule": "ct",
                    "action": "route",
                    "level": "series",
                    "state": state,
                    "priority": 1,
                    "folder": f"tasks/{task_id}",
                    "targets": ["pacs"],
                    "modules": [],
                    "info": {},
                }
                for n, (task_id, state) in enumerate(zip(ids, states, strict=True))
            ],
        )
        # Done tasks: three instances sent recently, one yesterday.
        sent = [(ids[4], "recent", 2), (ids[5], "recent", 1), (ids[6], "yesterday", 1)]
        for task_id, when, count in sent:
            conn.execute(
                insert(DELIVERIES),
                [
                    {"task_id": task_id, "target": "pacs", "file_name": f"{n}.dcm"}
                    | {"delivered_at": ago[when]}
                    for n in range(count)
                ],
            )
            conn.execute(
                insert(EVENTS).values(
                    at=ago[when] + timedelta(seconds=1),
                    kind="dispatch.done",
                    task_id=task_id,
                    message=f"pacs: {count} instance(s) sent",
                )
            )
        conn.execute(
            insert(EVENTS).values(
                at=now - timedelta(minutes=5),
                kind="dispatch.error",
                severity="error",
                task_id=ids[3],
                message="pacs: giving up: <script>alert('boom')</script>",
            )
        )
    set_suspended(engine, "dispatch:pacs", True, "operator-user")
    store.save(engine, Config(settings=Settings(disk_high_water=85, disk_low_water=70)), "admin")
    return {"received_6h": 12, "received_24h": 14, "sent_6h": 3, "sent_24h": 4}


def test_counts_match_the_database_and_the_disk_shows_the_cleaners_marks(
    web: TestClient, web_engine: Engine, tmp_path: Path
) -> None:
    expected = _history(web_engine)
    as_role(web, web_engine, "viewer")
    page = web.get("/")
    assert page.status_code == 200
    text = page.text
    assert 'data-total="received">12<' in text and 'data-total="dispatched">3<' in text
    assert '<title id="chart-received-title">Instances received</title>' in text
    assert "12 in all" in text  # the chart's description, for screen readers
    day = web.get("/?hours=24").text
    assert 'data-total="received">14<' in day and 'data-total="dispatched">4<' in day
    for hours, got, sent in ((6, "received_6h", "sent_6h"), (24, "received_24h", "sent_24h")):
        buckets = web.get(f"/api/throughput?hours={hours}").json()["buckets"]
        assert len(buckets) == hours * 6
        assert sum(b["received"] for b in buckets) == expected[got]
        assert sum(b["dispatched"] for b in buckets) == expected[sent]

    with web_engine.connect() as conn:
        counted = Counter(conn.execute(select(TASKS.c.state)).scalars())
    assert counted == {"queued": 2, "dispatching": 1, "error": 1, "done": 3}
    for state, count in counted.items():
        assert f'data-state="{state}">{count}<' in text, state
    assert 'data-state="processing">0<' in text
    assert 'data-queue="dispatch">3<' in text and 'data-queue="process">0<' in text
    assert "dispatch:pacs" in text and "operator-user" in text

    assert 'data-disk="high">85%' in text and 'data-disk="low">70%' in text
    usage = shutil.disk_usage(tmp_path / "home")
    shown = float(re.search(r'data-disk="used">([\d.]+)%', text)[1])  # type: ignore[index]
    assert abs(shown - 100 * usage.used / usage.total) < 1
    disk = web.get("/api/disk").json()
    assert (disk["high_water"], disk["low_water"]) == (85, 70)

    assert "&lt;script&gt;alert(&#39;boom&#39;)&lt;/script&gt;" in text
    assert "<script>alert" not in text
    assert "dispatch.error" in text


def test_a_chart_has_a_bar_per_bucket_and_a_readable_scale() -> None:
    window = Window.last(6, datetime(2026, 3, 1, 12, 34, tzinfo=UTC))
    assert window.until == datetime(2026, 3, 1, 12, 40, tzinfo=UTC)
    counts = [0] * 34 + [250, 1000]
    chart = bar_chart("x", "X", "instances", window.starts(), counts, window.bucket)
    assert len(chart.bars) == 36 and chart.total == 1250 and chart.peak == 1000
    assert chart.bars[-1].y == chart.top and chart.bars[0].height == 0
    assert [t.label for t in chart.count_ticks] == ["0", "500", "1,000"]
    assert [t.label for t in chart.time_ticks] == [f"{h:02d}:00" for h in range(7, 13)]
    assert [nice_ceiling(n) for n in (0, 1, 3, 20, 21, 4999)] == [1, 1, 5, 20, 50, 5000]


def test_the_overview_and_the_logs_in_a_browser(
    web: TestClient, web_engine: Engine, page: Any, tmp_path: Path
) -> None:
    """Screenshots of both pages with a history behind them; no script errors."""
    from caduceus.core.logs import log_context, make_file_handler
    from tests.support.browser import assert_no_errors, browser_login, shot
    from tests.support.web import serve

    _history(web_engine)
    Heartbeat(web_engine, "receiver", detail="CADUCEUS on 0.0.0.0:11112").begin()
    record_restarting(
        web_engine,
        "processor",
        999,
        2,
        "exited with code 1; restarting in 2.0 s",
        datetime.now(UTC),
    )
    log = logging.getLogger("caduceus.test.browser")
    handler = make_file_handler("dispatcher", tmp_path / "home")
    log.handlers[:], log.propagate = [handler], False
    log.setLevel(logging.INFO)
    with log_context(task="0b7e5e0e-1111-4222-8333-944445555666"):
        log.info("sending 2 instance(s) to pacs <b>not bold</b>")
        log.warning("pacs: attempt 1 failed (connection refused); next try in 30 s")
    log.handlers[:] = []
    handler.close()
    as_role(web, web_engine, "viewer")

    with serve(web.app) as url:  # type: ignore[arg-type]
        browser_login(page, url, "viewer-user", "/")
        assert page.locator("#chart-received-title").count() == 1
        assert page.locator('tr[data-service="processor"] .badge').inner_text() == "restarting"
        shot(page, "overview")
        page.goto(f"{url}/?hours=24")
        shot(page, "overview-24h")
        page.goto(f"{url}/logs")
        page.select_option("#log-service", "dispatcher")
        page.select_option("#log-level", "warning")
        page.click("form.filters button[type=submit]")
        page.wait_for_url("**/logs?service=dispatcher*")
        assert "attempt 1 failed" in page.locator("#log-lines").inner_text()
        assert "sending 2" not in page.locator("#log-lines").inner_text()
        page.goto(f"{url}/logs?service=all")
        assert "<b>not bold</b>" in page.locator("#log-lines").inner_text()
        shot(page, "logs")
        assert_no_errors(page)
