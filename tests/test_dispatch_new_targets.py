"""rsync, XNAT, dummy and file:// DICOMweb targets through the dispatcher: per-target state,
retry of a failure, and what a resumed task sends. XNAT is the tests' declared stand-in
(tests/support/xnat_standin.py: no XNAT can run here); the rest are real (sshd, rsync, a folder).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select

from caduceus.core.config.models import Config
from caduceus.core.db.models import DELIVERIES, TASK_TARGETS
from tests.support.clock import later
from tests.support.dispatching import run_dispatcher
from tests.support.processes import Caduceus
from tests.support.routing import router_for
from tests.support.rows import events
from tests.support.sending import send
from tests.support.sshd import Sshd, login_settings
from tests.support.xnat_standin import start_xnat_standin


def rows(receiver: Caduceus, table: Any) -> list[dict[str, Any]]:
    with receiver.engine().connect() as conn:
        return [dict(r._mapping) for r in conn.execute(select(table))]


def test_new_target_kinds_are_retried_and_done_per_target(
    receiver: Caduceus, sshd: Sshd, remote: Path, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    store.mkdir()
    xnat = start_xnat_standin("alice", "pw", {"P1"})
    try:
        xnat.fail_imports = 1  # XNAT answers 500 once
        cfg = Config.model_validate(
            {
                "settings": {"retry_delay": 10, "retry_max": 2},
                "targets": {
                    "xnat": {
                        "type": "xnat",
                        "url": xnat.url,
                        "project_id": "P1",
                        "user": "alice",
                        "password": "pw",
                    },
                    "sync": {"type": "rsync", **login_settings(sshd, remote)},
                    "files": {"type": "dicomweb", "url": f"file://{store}"},
                    "nowhere": {"type": "dummy"},
                },
                "rules": {"all": {"rule": "True", "targets": ["xnat", "sync", "files", "nowhere"]}},
            }
        )
        files = send(receiver, tmp_path / "ct", count=3, modality="CT")
        router_for(receiver).run_pass(cfg, later(61))
        assert run_dispatcher(receiver, cfg, later(62)) == ["dispatching"]
        states = {r["target"]: r for r in rows(receiver, TASK_TARGETS)}
        assert {t: r["state"] for t, r in states.items()} == {
            "xnat": "pending",
            "sync": "done",
            "files": "done",
            "nowhere": "done",
        }
        assert states["xnat"]["attempts"] == 1 and "HTTP 500" in states["xnat"]["last_error"]
        assert len(events(receiver, "dispatch.retry")) == 1
        delivered = rows(receiver, DELIVERIES)
        # The retry goes to XNAT alone: the others' instances are recorded as delivered.
        assert sorted(d["target"] for d in delivered) == sorted(
            ["sync", "files", "nowhere"] * len(files)
        )
        assert run_dispatcher(receiver, cfg, later(62) + timedelta(minutes=1)) == ["done"]
        assert len(xnat.imports) == 2 and len(xnat.sessions) == 1
        [session] = xnat.sessions.values()
        assert len(session) == len(files)
        [published] = [p for p in remote.iterdir() if not p.name.startswith(".")]
        assert len(list(published.glob("*.dcm"))) == len(files)
        assert len(list(store.rglob("*.dcm"))) == len(files)
    finally:
        xnat.stop()
