"""Prometheus metrics from the shared database: what a scrape says after real work.

Images arrive through a real receiver; the router, the dispatcher (with a folder target) and
the processor (with a small local module) run in the test, on the real clock, so ages and
durations are real too; only where no age is checked is the router handed a time past the
completion trigger instead of waiting for it. Each scrape is parsed back with
prometheus_client's own parser.
"""

from __future__ import annotations

import logging
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, event, text, update

from caduceus.bookkeeper.metrics import render_metrics
from caduceus.core.config import store
from caduceus.core.config.models import Config
from caduceus.core.db.engine import make_engine
from caduceus.core.db.migrate import upgrade
from caduceus.core.db.models import EVENTS
from caduceus.core.storage import DataRoot
from tests.support.clock import later
from tests.support.dispatching import run_dispatcher
from tests.support.pipelines import COUNTED, module, pipeline_for
from tests.support.processes import Caduceus
from tests.support.routing import router_for
from tests.support.rows import tasks
from tests.support.sending import send

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(engine: Engine, home: Path, now: datetime | None = None) -> Samples:
    body, content_type = render_metrics(engine, DataRoot(home), now)
    assert content_type.startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def config(tmp_path: Path, archive: Path, **settings: Any) -> Config:
    return Config.model_validate(
        {
            "settings": {"series_complete_trigger": 1, **settings},
            "targets": {"archive": {"type": "folder", "path": str(archive)}},
            "rules": {"ct": {"rule": "@Modality@ == 'CT'", "targets": ["archive"]}},
        }
    )


def route(receiver: Caduceus, cfg: Config) -> None:
    """Route as a pass would once the series has been quiet for its trigger (1 s): the router
    takes the time, so it is handed one past the trigger instead of waiting for it."""
    router_for(receiver).run_pass(cfg, later(1.2))


def stored_bytes(home: Path) -> int:
    return sum(p.stat().st_size for p in (home / "incoming").rglob("*.dcm"))


def test_reception_tasks_and_queues_through_routing_and_dispatch(
    receiver: Caduceus, tmp_path: Path
) -> None:
    ct = send(receiver, tmp_path / "ct", count=4, modality="CT")
    mr = send(receiver, tmp_path / "mr", count=3, modality="MR")
    engine = receiver.engine()
    archive = tmp_path / "archive"
    archive.mkdir()
    cfg = config(tmp_path, archive)

    before = scrape(engine, receiver.home)
    assert value(before, "caduceus_instances_recorded") == len(ct) + len(mr)
    assert value(before, "caduceus_instances_recorded_bytes") == stored_bytes(receiver.home)
    assert value(before, "caduceus_associations_recorded") == 2
    recent = [v for (n, _), v in before.items() if n == "caduceus_recent_associations"]
    assert sum(recent) == 2  # open or already released
    assert value(before, "caduceus_series", state="receiving") == 2
    assert value(before, "caduceus_queue_tasks", queue="dispatch") == 0
    assert value(before, "caduceus_queue_oldest_task_age_seconds", queue="dispatch") == 0

    route(receiver, cfg)
    routed = scrape(engine, receiver.home, later(1.25))  # a measurable age
    assert value(routed, "caduceus_series", state="complete") == 2  # MR matched nothing
    assert value(routed, "caduceus_series", state="receiving") is None
    assert value(routed, "caduceus_tasks", state="queued", action="route") == 1
    assert value(routed, "caduceus_queue_tasks", queue="dispatch") == 1
    assert value(routed, "caduceus_queue_tasks", queue="process") == 0
    assert value(routed, "caduceus_queue_target_tasks", target="archive") == 1
    age = value(routed, "caduceus_queue_oldest_task_age_seconds", queue="dispatch")
    assert age is not None and 0 < age < 60
    target_age = value(routed, "caduceus_queue_target_oldest_task_age_seconds", target="archive")
    assert target_age is not None and 0 < target_age < 60

    assert run_dispatcher(receiver, cfg, later(1.3)) == ["done"]
    sent = scrape(engine, receiver.home)
    assert value(sent, "caduceus_tasks", state="done", action="route") == 1
    assert value(sent, "caduceus_tasks", state="queued", action="route") is None
    assert value(sent, "caduceus_queue_tasks", queue="dispatch") == 0
    assert value(sent, "caduceus_queue_target_tasks", target="archive") is None
    assert value(sent, "caduceus_recent_dispatch_attempts", target="archive", outcome="done") == 1
    latency = "caduceus_recent_delivery_latency_seconds"
    assert value(sent, f"{latency}_bucket", target="archive", le="+Inf") == 1
    assert value(sent, f"{latency}_bucket", target="archive", le="10.0") == 1
    assert value(sent, "caduceus_recent_error_events", kind="dispatch.error") == 0
    assert value(sent, "caduceus_error_events_recorded", kind="dispatch.error") == 0
    ups = {dict(labels)["group"]: v for (n, labels), v in sent.items() if n.endswith("query_up")}
    assert ups and set(ups.values()) == {1.0}, ups


def test_a_failing_target_is_counted_as_retry_then_error(
    receiver: Caduceus, tmp_path: Path
) -> None:
    send(receiver, tmp_path / "ct", count=2, modality="CT")
    engine = receiver.engine()
    cfg = config(tmp_path, tmp_path / "missing", retry_max=1, retry_delay=1)
    route(receiver, cfg)
    assert run_dispatcher(receiver, cfg, datetime.now(UTC)) == ["dispatching"]

    retrying = scrape(engine, receiver.home)
    attempts = "caduceus_recent_dispatch_attempts"
    assert value(retrying, attempts, target="archive", outcome="retry") == 1
    assert value(retrying, "caduceus_queue_tasks", queue="dispatch") == 1
    assert value(retrying, "caduceus_queue_deferred_tasks", queue="dispatch") == 1
    assert value(retrying, "caduceus_recent_error_events", kind="dispatch.error") == 0

    assert run_dispatcher(receiver, cfg, datetime.now(UTC) + timedelta(hours=1)) == ["error"]
    failed = scrape(engine, receiver.home)
    assert value(failed, attempts, target="archive", outcome="error") == 1
    assert value(failed, "caduceus_tasks", state="error", action="route") == 1
    assert value(failed, "caduceus_queue_tasks", queue="dispatch") == 0
    assert value(failed, "caduceus_recent_error_events", kind="dispatch.error") == 1
    assert value(failed, "caduceus_error_events_recorded", kind="dispatch.error") == 1

    # Two days later the error has left the recent window but still counts in the total.
    with engine.begin() as conn:
        conn.execute(update(EVENTS).values(at=datetime.now(UTC) - timedelta(days=2)))
    old = scrape(engine, receiver.home)
    assert value(old, "caduceus_recent_error_events", kind="dispatch.error") == 0
    assert value(old, "caduceus_error_events_recorded", kind="dispatch.error") == 1
    assert value(old, attempts, target="archive", outcome="error") is None


def test_processing_steps_are_timed_by_module(
    receiver: Caduceus, tmp_path: Path, reachable_tmp: Path
) -> None:
    send(receiver, tmp_path / "ct", count=2, modality="CT")
    counter = reachable_tmp / "copy.count"
    cfg = Config.model_validate(
        {
            "settings": {"series_complete_trigger": 1},
            "modules": {
                "copy": module(
                    reachable_tmp,
                    "copy",
                    COUNTED,
                    environment={"COUNTER": str(counter), "SLEEP": "0.3"},
                )
            },
            "rules": {"ai": {"rule": "True", "action": "process", "modules": ["copy"]}},
        }
    )
    route(receiver, cfg)
    waiting = scrape(receiver.engine(), receiver.home)
    assert value(waiting, "caduceus_queue_tasks", queue="process") == 1
    assert value(waiting, "caduceus_tasks", state="queued", action="process") == 1

    [task] = tasks(receiver)
    assert pipeline_for(receiver).run(cfg, task["id"]) == "done"
    done = scrape(receiver.engine(), receiver.home)
    steps = "caduceus_recent_process_step_duration_seconds"
    assert value(done, f"{steps}_bucket", module="copy", le="+Inf") == 1
    assert value(done, f"{steps}_bucket", module="copy", le="15.0") == 1
    seconds = value(done, f"{steps}_gsum", module="copy")
    assert seconds is not None and 0.3 <= seconds < 15
    assert value(done, "caduceus_queue_tasks", queue="process") == 0


@pytest.fixture
def empty(sqlite_url: str, tmp_path: Path) -> tuple[Engine, Path]:
    engine = make_engine(sqlite_url)
    upgrade(engine)
    home = tmp_path / "home"
    DataRoot(home).create()
    return engine, home


def test_disk_and_water_marks(empty: tuple[Engine, Path]) -> None:
    engine, home = empty
    store.save(
        engine,
        Config.model_validate({"settings": {"disk_high_water": 70, "disk_low_water": 55}}),
        "tester",
    )
    samples = scrape(engine, home)
    usage = shutil.disk_usage(home)
    assert value(samples, "caduceus_disk_total_bytes") == usage.total
    # Other programs write meanwhile: the same within 256 MiB.
    for name, expected in (("used", usage.used), ("free", usage.free)):
        found = value(samples, f"caduceus_disk_{name}_bytes")
        assert found is not None and abs(found - expected) < 256 * 2**20, name
    percent = value(samples, "caduceus_disk_used_percent")
    assert percent is not None and abs(percent - 100 * usage.used / usage.total) < 0.5
    assert value(samples, "caduceus_disk_high_water_percent") == 70
    assert value(samples, "caduceus_disk_low_water_percent") == 55
    assert value(samples, "caduceus_instances_recorded") == 0


def test_a_failing_query_leaves_out_its_group_not_the_scrape(
    empty: tuple[Engine, Path], caplog: pytest.LogCaptureFixture
) -> None:
    engine, home = empty
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE events"))
    with caplog.at_level(logging.ERROR, logger="caduceus.metrics"):
        samples = scrape(engine, home)
    down = {
        dict(labels)["group"]
        for (name, labels), v in samples.items()
        if name == "caduceus_metrics_query_up" and v == 0
    }
    assert down == {"durations", "dispatch", "errors"}
    assert value(samples, "caduceus_instances_recorded") == 0
    assert value(samples, "caduceus_disk_total_bytes") is not None
    assert value(samples, "caduceus_recent_error_events", kind="dispatch.error") is None
    assert "metrics group errors could not be read" in caplog.text


# Tables a scrape may read in full, and why that is acceptable for now (see docs/metrics.md).
FULL_SCANS = {
    "instances": "the total of size_bytes: no index holds it",
    "tasks": "tasks by state and action: no index holds action",
    "queue_controls": "a handful of rows",
    "config_versions": "the newest version, read backwards by primary key",
}


def test_a_scrape_reads_events_and_queues_through_indexes(empty: tuple[Engine, Path]) -> None:
    engine, home = empty
    statements: list[tuple[str, Any]] = []

    def seen(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            statements.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", seen)
    scrape(engine, home)
    event.remove(engine, "before_cursor_execute", seen)
    assert len(statements) >= 10
    scans = []
    windowed = 0
    with engine.connect() as conn:
        raw = conn.connection.driver_connection
        assert raw is not None
        for statement, parameters in statements:
            plan = [r[3] for r in raw.execute(f"EXPLAIN QUERY PLAN {statement}", parameters)]
            scans += [
                d.split()[1] for d in plan if d.startswith("SCAN ") and "COVERING INDEX" not in d
            ]
            if "events.at >=" in statement:
                # The recent window, not every event of a kind ever written.
                windowed += 1
                assert any("ix_events_at" in d for d in plan), (statement, plan)
    assert windowed >= 4
    assert scans and set(scans) <= set(FULL_SCANS), scans
