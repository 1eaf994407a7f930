"""A hostile world for the web pages: a received series whose DICOM values hold markup, and
configuration whose comments hold it, with real tasks that went through the router and the
dispatcher. Every page is then shown with it (tests/test_web_security.py checks the escaping,
tests/test_web_accessibility.py the labels)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select

from caduceus.core.config import store
from caduceus.core.config.models import Config
from caduceus.core.db.models import SERIES, STUDIES, TASKS
from tests.support.clock import later
from tests.support.dispatching import run_dispatcher
from tests.support.processes import Caduceus
from tests.support.routing import router_for
from tests.support.sending import send

# Markup as a sender or an editor might write it, and as a page must show it (escaped).
SCRIPT = "<script>alert(1)</script>"
SCRIPT_SHOWN = "&lt;script&gt;alert(1)&lt;/script&gt;"
IMG = "<img src=x onerror=alert(2)>"
IMG_SHOWN = "&lt;img src=x onerror=alert(2)&gt;"


@dataclass
class Hostile:
    """A received series whose tags hold markup, routed to one target that takes it and one
    that fails, and configuration whose comments hold markup."""

    engine: Engine
    ids: dict[str, str]


def hostile_world(receiver: Caduceus, tmp_path: Path) -> Hostile:
    send(
        receiver,
        tmp_path / "series",
        count=2,
        rows=16,
        columns=16,
        patient_name=SCRIPT,
        patient_id="XSS1",
        study_description=f"HEAD {IMG}",
        series_description=f"AXIAL {IMG}",
    )
    (tmp_path / "out").mkdir()
    document: dict[str, Any] = {
        "settings": {"retry_max": 0},
        "targets": {
            "archive": {"type": "folder", "path": str(tmp_path / "out"), "comment": IMG},
            "broken": {"type": "folder", "path": str(tmp_path / "missing")},
        },
        "rules": {
            "to_archive": {"rule": "True", "targets": ["archive"], "comment": SCRIPT},
            "to_broken": {"rule": "True", "targets": ["broken"], "comment": "<script>"},
        },
    }
    engine = receiver.engine()
    store.save(engine, Config.model_validate(document), "tester", SCRIPT)
    document["modules"] = {"mod": {"command": [sys.executable, "-c", "pass"], "comment": SCRIPT}}
    config = Config.model_validate(document)
    version, _ = store.save(engine, config, "tester", IMG)
    now = later(61)
    router_for(receiver).run_pass(config, now)
    run_dispatcher(receiver, config, now)
    with engine.connect() as conn:
        by_rule = dict(conn.execute(select(TASKS.c.rule, TASKS.c.id)).all())
        states = dict(conn.execute(select(TASKS.c.rule, TASKS.c.state)).all())
        series_id = conn.execute(select(SERIES.c.id)).scalar_one()
        study_id = conn.execute(select(STUDIES.c.id)).scalar_one()
    assert states == {"to_archive": "done", "to_broken": "error"}
    return Hostile(
        engine,
        {
            "done": by_rule["to_archive"],
            "failed": by_rule["to_broken"],
            "series_id": str(series_id),
            "study_id": str(study_id),
            "version": str(version),
        },
    )


def page_visits(route: str, ids: dict[str, str]) -> list[tuple[str, dict[str, str]]]:
    """Each page with real ids, and the variants (tabs, filters) that show other data."""
    by_route: dict[str, list[tuple[str, dict[str, str]]]] = {
        "/tasks/{task_id}": [(f"/tasks/{ids['done']}", {}), (f"/tasks/{ids['failed']}", {})],
        "/series/{series_id}": [(f"/series/{ids['series_id']}", {})],
        "/studies/{study_id}": [(f"/studies/{ids['study_id']}", {})],
        "/rules/{name}": [("/rules/to_archive", {}), ("/rules/to_broken", {})],
        "/targets/{name}": [("/targets/archive", {}), ("/targets/broken", {})],
        "/modules/{name}": [("/modules/mod", {})],
        "/configuration/versions/{version}": [(f"/configuration/versions/{ids['version']}", {})],
        "/configuration/diff": [(route, {}), (route, {"from": "1", "to": ids["version"]})],
        "/logs": [(route, {}), (route, {"task": ids["failed"]})],
        "/logs/lines": [(route, {}), (route, {"task": ids["failed"]})],
    }
    queue = [
        {"tab": "received"},
        {"tab": "waiting", "level": "series"},
        {"tab": "waiting", "level": "studies"},
        {"tab": "waiting", "level": "patients"},
        {"tab": "processing"},
        {"tab": "dispatching"},
        {"tab": "failed"},
        {"tab": "finished"},
        {"tab": "all"},
    ]
    by_route["/queue"] = by_route["/queue/rows"] = [(route, params) for params in queue]
    return by_route.get(route, [(route, {})])
