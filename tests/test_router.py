"""The router: completion of series, studies and patients, rules, and the tasks they make.

Images arrive through a real receiver process; the router's passes run in the test with an
explicit clock, so completion after N seconds is tested without waiting N seconds.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from caduceus.core.db.models import INSTANCES, SERIES, TASK_INSTANCES
from caduceus.router import completion
from tests.support.clock import later
from tests.support.processes import Caduceus
from tests.support.routing import TARGETS, config, router_for
from tests.support.rows import events, tasks
from tests.support.sending import send

CT_TO_PACS = {"ct": {"rule": "@Modality@ == 'CT'", "targets": ["pacs"]}}


def test_complete_series_becomes_a_task_with_linked_files(
    receiver: Caduceus, tmp_path: Path
) -> None:
    files = send(receiver, tmp_path / "ct", count=5, modality="CT", patient_name="Doe^Jane")
    router = router_for(receiver)
    cfg = config(CT_TO_PACS, series_complete_trigger=60)

    early = router.run_pass(cfg, later(30))
    assert early.tasks == [] and tasks(receiver) == []
    assert early.next_due is not None and early.next_due <= later(61)

    result = router.run_pass(cfg, later(61))
    [task] = tasks(receiver)
    assert result.tasks == [task["id"]]
    assert (task["rule"], task["action"], task["level"], task["state"]) == (
        "ct",
        "route",
        "series",
        "queued",
    )
    assert task["targets"] == ["pacs"] and task["priority"] == 1
    folder = receiver.home / task["folder"] / "in"
    linked = sorted(p for p in folder.iterdir() if p.suffix == ".dcm")
    assert len(linked) == len(files)
    for path in linked:
        assert os.stat(path).st_nlink == 2  # a hard link to the received file, not a copy
    document = json.loads((folder / "task.json").read_text())
    assert document["id"] == task["id"]
    assert document["info"]["uid_type"] == "series"
    assert document["info"]["applied_rule"] == "ct"
    assert document["info"]["patient_name"] == "Doe^Jane"
    assert document["info"]["sender_aet"] == "STORESCU"
    assert document["info"]["sender_address"] == "127.0.0.1"
    assert document["info"]["receiver_aet"] == receiver.ae_title
    assert document["dispatch"]["target_name"] == ["pacs"]
    with receiver.engine().connect() as conn:
        assert conn.execute(select(SERIES.c.state, SERIES.c.generation)).one() == ("complete", 1)
        assert len(conn.execute(select(TASK_INSTANCES)).all()) == len(files)
    [created] = events(receiver, "task.created")
    assert created["task_id"] == task["id"]
    # Another pass changes nothing.
    assert router.run_pass(cfg, later(120)).tasks == []


def test_no_match_is_discarded_with_the_reason(receiver: Caduceus, tmp_path: Path) -> None:
    send(receiver, tmp_path / "mr", count=2, modality="MR")
    router_for(receiver).run_pass(config(CT_TO_PACS), later(61))
    assert tasks(receiver) == []
    [discarded] = events(receiver, "series.discarded")
    assert discarded["message"] == "no rule matched"


def test_discard_rule_and_fallback(receiver: Caduceus, tmp_path: Path) -> None:
    send(receiver, tmp_path / "mr", count=2, modality="MR", patient_id="MR1")
    send(receiver, tmp_path / "ct", count=2, modality="CT", patient_id="CT1")
    rules = {
        "drop_mr": {"rule": "@Modality@ == 'MR'", "action": "discard"},
        "ct": {"rule": "@Modality@ == 'CT'", "targets": ["pacs"]},
        "catch_all": {"rule": "True", "targets": ["archive"], "fallback": True},
    }
    router_for(receiver).run_pass(config(rules), later(61))
    by_rule = {t["rule"]: t for t in tasks(receiver)}
    assert set(by_rule) == {"drop_mr", "ct"}  # the fallback fired for neither
    assert by_rule["drop_mr"]["state"] == "discarded"


def test_fallback_fires_when_nothing_else_matches(receiver: Caduceus, tmp_path: Path) -> None:
    send(receiver, tmp_path / "us", count=1, modality="US")
    rules = {**CT_TO_PACS, "catch_all": {"rule": "True", "targets": ["archive"], "fallback": True}}
    router_for(receiver).run_pass(config(rules), later(61))
    [task] = tasks(receiver)
    assert task["rule"] == "catch_all"


def test_same_target_from_two_rules_is_sent_once(receiver: Caduceus, tmp_path: Path) -> None:
    send(receiver, tmp_path / "ct", count=2, modality="CT")
    rules = {
        "ct": {"rule": "@Modality@ == 'CT'", "targets": ["pacs"]},
        "all_to_pacs_and_archive": {"rule": "True", "targets": ["pacs", "archive"]},
    }
    router_for(receiver).run_pass(config(rules), later(61))
    by_rule = {t["rule"]: t["targets"] for t in tasks(receiver)}
    assert by_rule == {"ct": ["pacs"], "all_to_pacs_and_archive": ["archive"]}


def test_instances_after_routing_open_a_new_group(receiver: Caduceus, tmp_path: Path) -> None:
    from caduceus.core.dicom.synthetic import generate

    uid = "1.2.826.0.1.3680043.8.498.1"
    send(receiver, tmp_path / "first", count=3, modality="CT", series_uid=uid, study_uid=uid + ".9")
    router = router_for(receiver)
    router.run_pass(config(CT_TO_PACS), later(61))
    send(receiver, tmp_path / "late", count=2, modality="CT", series_uid=uid, study_uid=uid + ".9")
    router.run_pass(config(CT_TO_PACS), later(200))
    first, second = tasks(receiver)
    with receiver.engine().connect() as conn:
        counts = {
            t: len(conn.execute(select(TASK_INSTANCES).where(TASK_INSTANCES.c.task_id == t)).all())
            for t in (first["id"], second["id"])
        }
    assert counts == {first["id"]: 3, second["id"]: 2}
    assert second["group_key"].endswith(":2:ct")
    assert events(receiver, "series.reopened")
    del generate


def test_study_rule_waits_for_the_whole_study(receiver: Caduceus, tmp_path: Path) -> None:
    study = "1.2.826.0.1.3680043.8.498.77"
    send(
        receiver,
        tmp_path / "a",
        count=2,
        modality="MR",
        study_uid=study,
        series_description="T1 MPRAGE",
    )
    send(
        receiver,
        tmp_path / "b",
        count=3,
        modality="MR",
        study_uid=study,
        series_description="T2 TSE",
    )
    rules = {"mr_study": {"rule": "@Modality@ == 'MR'", "trigger": "study", "targets": ["archive"]}}
    router = router_for(receiver)
    router.run_pass(config(rules, study_complete_trigger=900), later(61))
    assert tasks(receiver) == []  # series complete, study not yet
    router.run_pass(config(rules, study_complete_trigger=900), later(901))
    [task] = tasks(receiver)
    assert task["level"] == "study" and task["study_uid"] == study
    document = json.loads((receiver.home / task["folder"] / "in" / "task.json").read_text())
    assert sorted(document["study"]["received_series"]) == ["T1 MPRAGE", "T2 TSE"]
    with receiver.engine().connect() as conn:
        assert len(conn.execute(select(TASK_INSTANCES)).all()) == 5


def test_required_series_complete_the_study_early(receiver: Caduceus, tmp_path: Path) -> None:
    study = "1.2.826.0.1.3680043.8.498.78"
    send(
        receiver,
        tmp_path / "a",
        count=1,
        modality="MR",
        study_uid=study,
        series_description="t1_se",
    )
    send(
        receiver,
        tmp_path / "b",
        count=1,
        modality="MR",
        study_uid=study,
        series_description="flair_tra",
    )
    rules = {
        "brain": {
            "rule": "@Modality@ == 'MR'",
            "trigger": "study",
            "targets": ["archive"],
            "study_trigger_condition": "received_series",
            "required_series": "'T1' and ('T2' or 'FLAIR')",
        }
    }
    router = router_for(receiver)
    router.run_pass(config(rules, study_complete_trigger=900), later(61))  # series complete
    router.run_pass(config(rules, study_complete_trigger=900), later(62))  # study: condition met
    [task] = tasks(receiver)
    assert task["level"] == "study"


@pytest.mark.parametrize(
    "action,expect_task", [("proceed", True), ("discard", False), ("ignore", False)]
)
def test_force_complete_when_required_series_never_come(
    receiver: Caduceus, tmp_path: Path, action: str, expect_task: bool
) -> None:
    study = "1.2.826.0.1.3680043.8.498.79"
    send(receiver, tmp_path / "a", count=1, modality="MR", study_uid=study, series_description="T1")
    rules = {
        "brain": {
            "rule": "True",
            "trigger": "study",
            "targets": ["archive"],
            "study_trigger_condition": "received_series",
            "required_series": "'T1' and 'T2'",
        }
    }
    cfg = config(
        rules,
        study_complete_trigger=100000,
        study_forcecomplete_trigger=3600,
        study_forcecomplete_action=action,
    )
    router = router_for(receiver)
    router.run_pass(cfg, later(61))
    assert tasks(receiver) == []
    router.run_pass(cfg, later(3601))
    assert bool(tasks(receiver)) is expect_task
    if not expect_task:
        assert events(receiver, "study.incomplete")


def test_patient_rule_groups_the_patients_studies(receiver: Caduceus, tmp_path: Path) -> None:
    send(receiver, tmp_path / "s1", count=1, modality="CT", patient_id="PAT7")
    send(receiver, tmp_path / "s2", count=2, modality="MR", patient_id="PAT7")
    send(receiver, tmp_path / "other", count=1, modality="CT", patient_id="PAT8")
    rules = {
        "history": {"rule": "@PatientID@ == 'PAT7'", "trigger": "patient", "targets": ["archive"]}
    }
    cfg = config(rules, study_complete_trigger=900, patient_complete_trigger=3600)
    router = router_for(receiver)
    router.run_pass(cfg, later(61))
    router.run_pass(cfg, later(901))
    assert tasks(receiver) == []
    router.run_pass(cfg, later(901 + 3601))
    [task] = tasks(receiver)
    assert (task["level"], task["patient_id"]) == ("patient", "PAT7")
    with receiver.engine().connect() as conn:
        assert len(conn.execute(select(TASK_INSTANCES)).all()) == 3


def test_priorities(receiver: Caduceus, tmp_path: Path) -> None:
    send(receiver, tmp_path / "ct", count=1, modality="CT")
    rules = {
        "stroke": {"rule": "True", "targets": ["pacs"], "priority": "urgent"},
        "research": {"rule": "True", "action": "process", "modules": ["ai"], "priority": "offpeak"},
    }
    start = datetime.now().astimezone().time().replace(microsecond=0)
    window_start = (datetime.combine(datetime.now(), start) + timedelta(hours=2)).time()
    window_end = (datetime.combine(datetime.now(), start) + timedelta(hours=3)).time()
    cfg = config(rules, offpeak_start=window_start.isoformat(), offpeak_end=window_end.isoformat())
    router_for(receiver).run_pass(cfg, later(61))
    by_rule = {t["rule"]: t for t in tasks(receiver)}
    assert by_rule["stroke"]["priority"] == 0 and by_rule["stroke"]["not_before"] is None
    assert by_rule["research"]["priority"] == 2
    assert by_rule["research"]["not_before"] is not None


def test_router_killed_half_way_redoes_without_duplicates(
    receiver: Caduceus, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    send(receiver, tmp_path / "ct", count=3, modality="CT")
    router = router_for(receiver)
    real = completion.record_event

    def die_after_task(conn: Any, kind: str, *args: Any, **kwargs: Any) -> None:
        real(conn, kind, *args, **kwargs)
        if kind == "series.complete":
            raise KeyboardInterrupt("router killed")  # the files are linked, nothing committed

    monkeypatch.setattr(completion, "record_event", die_after_task)
    with pytest.raises(KeyboardInterrupt):
        router.run_pass(config(CT_TO_PACS), later(61))
    assert tasks(receiver) == []
    monkeypatch.setattr(completion, "record_event", real)
    router.run_pass(config(CT_TO_PACS), later(62))
    [task] = tasks(receiver)
    assert (
        len([p for p in (receiver.home / task["folder"] / "in").iterdir() if p.suffix == ".dcm"])
        == 3
    )


def test_unreadable_series_is_kept_and_marked(receiver: Caduceus, tmp_path: Path) -> None:
    send(receiver, tmp_path / "ct", count=2, modality="CT")
    for stored in (receiver.home / "incoming").rglob("*.dcm"):
        stored.chmod(0o640)  # received files are read-only
        stored.write_bytes(b"not DICOM any more")
    router_for(receiver).run_pass(config(CT_TO_PACS), later(61))
    assert tasks(receiver) == []
    [error] = events(receiver, "series.error")
    assert "tags cannot be read" in error["message"]
    with receiver.engine().connect() as conn:
        assert conn.execute(select(SERIES.c.state)).scalar() == "error"
    assert len(list((receiver.home / "incoming").rglob("*.dcm"))) == 2  # images kept


def test_rule_that_fails_on_the_data_is_false(receiver: Caduceus, tmp_path: Path) -> None:
    send(receiver, tmp_path / "ct", count=1, modality="CT")
    rules = {"bad": {"rule": "int(@PatientName@) > 3", "targets": ["pacs"]}, **CT_TO_PACS}
    router_for(receiver).run_pass(config(rules), later(61))
    assert [t["rule"] for t in tasks(receiver)] == ["ct"]


def test_tasks_and_rules_commands(receiver: Caduceus, tmp_path: Path) -> None:
    files = send(receiver, tmp_path / "ct", count=1, modality="CT")
    router_for(receiver).run_pass(config(CT_TO_PACS), later(61))
    listing = json.loads(receiver.cli("tasks", "--json").stdout)
    assert listing[0]["rule"] == "ct" and listing[0]["events"][0]["kind"] == "task.created"
    assert "queued" in receiver.cli("tasks").stdout
    tested = receiver.cli("rules", "test", "@Modality@ == 'CT' and @Rows@ > 10", str(files[0]))
    assert "Modality = 'CT'" in tested.stdout and "result: True" in tested.stdout
    bad = receiver.cli("rules", "test", "@Modality@ ==", str(files[0]), check=False)
    assert bad.returncode == 2 and "^" in bad.stdout


def test_run_with_a_config_file_routes_a_series(launch: Any, tmp_path: Path) -> None:
    """End to end: `caduceus run --config` imports the rules; the router makes the task."""
    import time

    import yaml

    cfg = {
        "settings": {"series_complete_trigger": 2},
        "targets": TARGETS,
        "rules": CT_TO_PACS,
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    instance = launch("run", "--config", str(tmp_path / "config.yaml"))
    send(instance, tmp_path / "ct", count=3, modality="CT")
    sent = time.monotonic()
    deadline = sent + 30
    while time.monotonic() < deadline and not tasks(instance):
        time.sleep(0.1)
    [task] = tasks(instance)
    # The dispatcher (also started by `caduceus run`) may already be trying the target.
    assert task["rule"] == "ct" and task["state"] in ("queued", "dispatching")
    # (How fast the task follows the trigger is measured in bench/router.py, not asserted here.)


def test_a_rule_can_shorten_the_series_trigger(receiver: Caduceus, tmp_path: Path) -> None:
    send(receiver, tmp_path / "ct", count=1, modality="CT", patient_id="FAST")
    send(receiver, tmp_path / "mr", count=1, modality="MR", patient_id="SLOW")
    rules = {
        "stroke_ct": {
            "rule": "@Modality@ == 'CT'",
            "targets": ["pacs"],
            "series_complete_trigger": 5,
        },
        "mr": {"rule": "@Modality@ == 'MR'", "targets": ["archive"]},
    }
    router = router_for(receiver)
    router.run_pass(config(rules, series_complete_trigger=60), later(6))
    assert [t["rule"] for t in tasks(receiver)] == ["stroke_ct"]  # the MR series waits for 60 s
    router.run_pass(config(rules, series_complete_trigger=60), later(61))
    assert sorted(t["rule"] for t in tasks(receiver)) == ["mr", "stroke_ct"]


def test_a_group_with_a_missing_file_is_set_aside_and_blocks_no_other(
    receiver: Caduceus, tmp_path: Path
) -> None:
    send(receiver, tmp_path / "a", count=3, modality="CT", series_uid="1.2.826.0.1.3680043.8.498.1")
    send(receiver, tmp_path / "b", count=2, modality="CT", series_uid="1.2.826.0.1.3680043.8.498.2")
    with receiver.engine().connect() as conn:
        first = (
            conn.execute(
                select(INSTANCES.c.path)
                .join(SERIES, SERIES.c.id == INSTANCES.c.series_id)
                .where(SERIES.c.series_uid == "1.2.826.0.1.3680043.8.498.1")
            )
            .scalars()
            .first()
        )
    (receiver.home / first).unlink()  # e.g. removed by hand
    router_for(receiver).run_pass(config(CT_TO_PACS), later(61))
    [task] = tasks(receiver)
    assert task["series_uid"] == "1.2.826.0.1.3680043.8.498.2"
    with receiver.engine().connect() as conn:
        states = dict(conn.execute(select(SERIES.c.series_uid, SERIES.c.state)).all())
    assert states["1.2.826.0.1.3680043.8.498.1"] == "error"
    [error] = events(receiver, "series.error")
    assert "is missing; the group is not routed" in error["message"]
