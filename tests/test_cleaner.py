"""The cleaner: finished work goes after its retention or when the disk fills; nothing else does.

Images arrive through a real receiver; router, dispatcher and cleaner passes run in the test
with an explicit clock, so a retention of days is tested without waiting.
"""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from caduceus.cleaner.cleaning import Cleaner
from caduceus.core.config.models import Config
from caduceus.core.db.models import INSTANCES, SERIES, TASKS
from caduceus.core.storage import DataRoot
from caduceus.dispatcher.dispatch import dispatch, restart
from caduceus.dispatcher.queue import claim
from tests.support.processes import Caduceus
from tests.support.routing import router_for
from tests.support.rows import events, tasks
from tests.support.sending import send

DAY = 86400


def config(archive: Path, rules: dict[str, Any] | None = None, **settings: Any) -> Config:
    return Config.model_validate(
        {
            "settings": {
                "retention": 1 * DAY,
                "discard_retention": 2 * DAY,
                "error_retention": 5 * DAY,
                "retry_max": 0,
                **settings,
            },
            "targets": {
                "archive": {"type": "folder", "path": str(archive)},
                "broken": {"type": "folder", "path": str(archive / "missing")},
            },
            "rules": rules
            if rules is not None
            else {"ct": {"rule": "@Modality@ == 'CT'", "targets": ["archive"]}},
        }
    )


def at(t0: datetime, days: float) -> datetime:
    return t0 + timedelta(days=days)


def route_and_send(receiver: Caduceus, cfg: Config, now: datetime) -> None:
    router_for(receiver).run_pass(cfg, now + timedelta(seconds=61))
    engine = receiver.engine()
    while (task_id := claim(engine, "test", now + timedelta(seconds=62))) is not None:
        dispatch(engine, DataRoot(receiver.home), cfg, task_id, set(), now + timedelta(seconds=62))


def received_files(receiver: Caduceus) -> list[Path]:
    with receiver.engine().connect() as conn:
        return [receiver.home / p for p in conn.execute(select(INSTANCES.c.path)).scalars()]


def cleaner_for(receiver: Caduceus, **kwargs: Any) -> Cleaner:
    return Cleaner(receiver.engine(), DataRoot(receiver.home), **kwargs)


def test_finished_task_and_its_files_go_after_their_retention(
    receiver: Caduceus, tmp_path: Path
) -> None:
    t0 = datetime.now(UTC)
    send(receiver, tmp_path / "ct", count=4, modality="CT")
    cfg = config(tmp_path / "archive")
    (tmp_path / "archive").mkdir()
    route_and_send(receiver, cfg, t0)
    [task] = tasks(receiver)
    assert task["state"] == "done"
    folder = receiver.home / task["folder"]
    files = received_files(receiver)
    size = sum(f.stat().st_size for f in files)
    task_json = (folder / "in" / "task.json").stat().st_size

    cleaner = cleaner_for(receiver)
    assert cleaner.run_pass(cfg, at(t0, 0.5)).freed.files == 0
    assert folder.exists() and all(f.exists() for f in files)

    # After a day the task's folder goes, but its links freed only task.json: the received
    # files still have their own links until the discard retention.
    result = cleaner.run_pass(cfg, at(t0, 1.1))
    assert result.tasks == [task["id"]] and not folder.exists()
    assert all(f.exists() for f in files)
    [cleaned] = events(receiver, "task.cleaned")
    assert cleaned["task_id"] == task["id"]
    assert cleaned["details"] == {
        "reason": "retention",
        "state": "done",
        "files": 5,
        "bytes": task_json,
    }

    result = cleaner.run_pass(cfg, at(t0, 2.1))
    assert not any(f.exists() for f in files)
    [removed] = events(receiver, "series.files_removed")
    assert removed["details"] == {"reason": "retention", "files": 4, "bytes": size}
    assert result.freed.bytes == size
    # The history stays; a second pass finds nothing more to do.
    assert tasks(receiver)[0]["cleaned_at"] is not None
    assert cleaner.run_pass(cfg, at(t0, 3)).freed.files == 0


def test_unmatched_series_is_kept_for_the_discard_retention(
    receiver: Caduceus, tmp_path: Path
) -> None:
    t0 = datetime.now(UTC)
    send(receiver, tmp_path / "mr", count=3, modality="MR")
    cfg = config(tmp_path / "archive")
    route_and_send(receiver, cfg, t0)
    assert tasks(receiver) == [] and events(receiver, "series.discarded")
    files = received_files(receiver)
    cleaner = cleaner_for(receiver)
    cleaner.run_pass(cfg, at(t0, 1.9))
    assert all(f.exists() for f in files)
    cleaner.run_pass(cfg, at(t0, 2.1))
    assert not any(f.exists() for f in files)


def test_error_tasks_have_their_own_retention_and_cannot_be_restarted_after(
    receiver: Caduceus, tmp_path: Path
) -> None:
    t0 = datetime.now(UTC)
    send(receiver, tmp_path / "ct", count=2, modality="CT")
    cfg = config(tmp_path / "archive", {"ct": {"rule": "True", "targets": ["broken"]}})
    route_and_send(receiver, cfg, t0)
    [task] = tasks(receiver)
    assert task["state"] == "error"
    folder = receiver.home / task["folder"]
    cleaner = cleaner_for(receiver)
    cleaner.run_pass(cfg, at(t0, 4.9))
    assert folder.exists(), "an error task is kept for error_retention, not retention"
    cleaner.run_pass(cfg, at(t0, 5.1))
    assert not folder.exists()
    with pytest.raises(LookupError, match="cleaner removed its files"):
        restart(receiver.engine(), task["id"])


def test_waiting_work_is_never_removed(receiver: Caduceus, tmp_path: Path) -> None:
    """A queued task and files a study rule still waits for stay, whatever the retention."""
    t0 = datetime.now(UTC)
    send(receiver, tmp_path / "ct", count=2, modality="CT")
    send(receiver, tmp_path / "mr", count=2, modality="MR")
    rules = {
        "ct": {"rule": "@Modality@ == 'CT'", "targets": ["archive"]},
        "mr": {"rule": "@Modality@ == 'MR'", "targets": ["archive"], "trigger": "study"},
    }
    cfg = config(tmp_path / "archive", rules, study_complete_trigger=10 * DAY)
    router_for(receiver).run_pass(cfg, t0 + timedelta(seconds=61))  # no dispatcher
    [task] = tasks(receiver)
    assert task["state"] == "queued"
    files = received_files(receiver)
    # The disk is "full" all the time: even emergency cleaning must leave these alone.
    cleaner = cleaner_for(receiver, usage=lambda _path: 99.0)
    result = cleaner.run_pass(cfg, at(t0, 9))
    assert result.emergency and result.freed.files == 0
    assert (receiver.home / task["folder"] / "in").exists()
    assert all(f.exists() for f in files)
    [emergency] = events(receiver, "cleaner.emergency")
    assert "everything left is still in use or waiting" in emergency["message"]


def test_emergency_cleaning_removes_oldest_first_down_to_the_low_water_mark(
    receiver: Caduceus, tmp_path: Path
) -> None:
    t0 = datetime.now(UTC)
    (tmp_path / "archive").mkdir()
    cfg = config(tmp_path / "archive", disk_high_water=90, disk_low_water=50)
    for index in range(3):
        send(receiver, tmp_path / f"ct{index}", count=3, modality="CT", rows=128, columns=128)
        route_and_send(receiver, cfg, t0 + timedelta(minutes=5 * index))
    done = tasks(receiver)
    assert [t["state"] for t in done] == ["done"] * 3
    # The "disk" is the bytes in the data root over a capacity just above them: the files
    # the cleaner removes really are what brings the measured use down.
    incoming = receiver.home / "incoming"

    def used_bytes() -> int:
        return sum(p.stat().st_size for p in incoming.rglob("*.dcm"))

    capacity = used_bytes() / 0.95

    def usage(_path: Path) -> float:
        return 100.0 * used_bytes() / capacity

    result = cleaner_for(receiver, usage=usage).run_pass(cfg, at(t0, 0.1))
    assert result.emergency
    assert usage(receiver.home) < 50
    # Oldest first: the newest series keeps its files, the oldest lost its own.
    with receiver.engine().connect() as conn:
        rows = conn.execute(select(INSTANCES.c.path, INSTANCES.c.received_at)).all()
    by_age = sorted(rows, key=lambda r: r.received_at)
    assert not (receiver.home / by_age[0].path).exists()
    assert (receiver.home / by_age[-1].path).exists()
    reasons = {e["details"]["reason"] for e in events(receiver, "series.files_removed")}
    assert reasons == {"disk"}
    [emergency] = events(receiver, "cleaner.emergency")
    assert emergency["details"]["used_after"] < 50 <= emergency["details"]["used_before"]


def test_offpeak_only_cleaning_waits_for_the_window(receiver: Caduceus, tmp_path: Path) -> None:
    t0 = datetime.now(UTC)
    (tmp_path / "archive").mkdir()
    now_local = t0.astimezone()
    # A one-hour window that starts three hours from now (in local time, like the setting).
    start = (now_local + timedelta(hours=3)).time().replace(second=0, microsecond=0)
    end = (now_local + timedelta(hours=4)).time().replace(second=0, microsecond=0)
    cfg = config(
        tmp_path / "archive",
        retention=60,
        clean_offpeak_only=True,
        offpeak_start=time.isoformat(start),
        offpeak_end=time.isoformat(end),
    )
    send(receiver, tmp_path / "ct", count=2, modality="CT")
    route_and_send(receiver, cfg, t0)
    [task] = tasks(receiver)
    folder = receiver.home / task["folder"]
    cleaner = cleaner_for(receiver)
    cleaner.run_pass(cfg, t0 + timedelta(hours=1))
    assert folder.exists(), "retention has passed, but it is not offpeak yet"
    cleaner.run_pass(cfg, t0 + timedelta(hours=3, minutes=20))
    assert not folder.exists()


def test_a_restarted_task_is_not_cleaned_under_the_dispatcher(
    receiver: Caduceus, tmp_path: Path
) -> None:
    t0 = datetime.now(UTC)
    send(receiver, tmp_path / "ct", count=2, modality="CT")
    cfg = config(tmp_path / "archive", {"ct": {"rule": "True", "targets": ["broken"]}})
    route_and_send(receiver, cfg, t0)
    [task] = tasks(receiver)
    restart(receiver.engine(), task["id"])
    # Even long after, a queued task's data stays.
    with receiver.engine().begin() as conn:
        conn.execute(update(TASKS).where(TASKS.c.id == task["id"]).values(updated_at=at(t0, -30)))
    cleaner_for(receiver).run_pass(cfg, at(t0, 30))
    assert (receiver.home / task["folder"] / "in").exists()


def test_series_without_a_patient_id_settle_under_a_patient_rule(
    receiver: Caduceus, tmp_path: Path
) -> None:
    """Such studies are never grouped by patient, so their files must not wait for it."""
    t0 = datetime.now(UTC)
    send(receiver, tmp_path / "anon", count=2, modality="OT", patient_id="")
    rules = {"pt": {"rule": "@Modality@ == 'MR'", "targets": ["archive"], "trigger": "patient"}}
    cfg = config(tmp_path / "archive", rules)
    route_and_send(receiver, cfg, t0)
    files = received_files(receiver)
    cleaner_for(receiver).run_pass(cfg, at(t0, 2.1))
    assert not any(f.exists() for f in files)


def test_the_history_has_its_own_retention(receiver: Caduceus, tmp_path: Path) -> None:
    from caduceus.core.db.models import ASSOCIATIONS, EVENTS, STUDIES

    t0 = datetime.now(UTC)
    (tmp_path / "archive").mkdir()
    cfg = config(tmp_path / "archive", history_retention_days=30)
    send(receiver, tmp_path / "ct", count=2, modality="CT", patient_id="OLD")
    route_and_send(receiver, cfg, t0)
    waiting = Config.model_validate(
        {**cfg.model_dump(mode="json"), "rules": {"x": {"rule": "False", "targets": ["archive"]}}}
    )
    cleaner = cleaner_for(receiver)
    cleaner.run_pass(cfg, at(t0, 3))  # files gone, task cleaned; the history is still there
    assert len(tasks(receiver)) == 1 and events(receiver, "task.cleaned")
    result = cleaner.run_pass(waiting, at(t0, 31))
    assert result.history["tasks"] == 1 and result.history["series"] == 1
    with receiver.engine().connect() as conn:
        for table in (SERIES, STUDIES, INSTANCES, ASSOCIATIONS):
            assert conn.execute(select(table)).first() is None, table.name
        kinds = [e.kind for e in conn.execute(select(EVENTS))]
    assert tasks(receiver) == []
    assert kinds == ["history.pruned"]


def test_history_of_unfinished_work_is_kept(receiver: Caduceus, tmp_path: Path) -> None:
    t0 = datetime.now(UTC)
    cfg = config(tmp_path / "archive", history_retention_days=30)
    send(receiver, tmp_path / "ct", count=2, modality="CT")
    router_for(receiver).run_pass(cfg, t0 + timedelta(seconds=61))  # queued, never sent
    cleaner_for(receiver).run_pass(cfg, at(t0, 100))
    [task] = tasks(receiver)
    assert task["state"] == "queued" and (receiver.home / task["folder"] / "in").exists()
    assert len(received_files(receiver)) == 2
    assert events(receiver, "task.created"), "a waiting task keeps its history"


def test_disk_pressure_frees_delivered_work_only(receiver: Caduceus, tmp_path: Path) -> None:
    """Below twice the receiver's reserve, however little of the disk is used, the cleaner
    frees delivered work, and leaves failed and waiting work alone."""
    t0 = datetime.now(UTC)
    (tmp_path / "archive").mkdir()
    rules = {
        "ct": {"rule": "@Modality@ == 'CT'", "targets": ["archive"]},
        "mr": {"rule": "@Modality@ == 'MR'", "targets": ["broken"]},
        "ot": {"rule": "@Modality@ == 'OT'", "targets": ["archive"]},
    }
    cfg = config(tmp_path / "archive", rules)
    send(receiver, tmp_path / "ct", count=3, modality="CT")
    send(receiver, tmp_path / "mr", count=3, modality="MR")
    route_and_send(receiver, cfg, t0)
    send(receiver, tmp_path / "ot", count=3, modality="OT")
    router_for(receiver).run_pass(cfg, t0 + timedelta(seconds=120))  # queued, not sent
    by_rule = {t["rule"]: t for t in tasks(receiver)}
    assert {r: t["state"] for r, t in by_rule.items()} == {
        "ct": "done",
        "mr": "error",
        "ot": "queued",
    }
    files: dict[str, list[Path]] = {}
    with receiver.engine().connect() as conn:
        for modality in ("CT", "MR", "OT"):
            paths = conn.execute(
                select(INSTANCES.c.path)
                .join(SERIES, SERIES.c.id == INSTANCES.c.series_id)
                .where(SERIES.c.modality == modality)
            ).scalars()
            files[modality] = [receiver.home / p for p in paths]
    reserve = 100 * 2**20
    # 10% of the disk used, but only one reserve free: the receiver is about to refuse.
    cleaner = cleaner_for(
        receiver, usage=lambda _path: 10.0, reserve_bytes=reserve, free=lambda _path: reserve
    )
    result = cleaner.run_pass(cfg, at(t0, 0.1))
    assert result.emergency and result.tasks == [by_rule["ct"]["id"]]
    assert not (receiver.home / by_rule["ct"]["folder"]).exists()
    assert not any(f.exists() for f in files["CT"])
    # A failed task may be restarted, a queued one is still to be sent: both keep all.
    for rule in ("mr", "ot"):
        assert len(list((receiver.home / by_rule[rule]["folder"] / "in").glob("*.dcm"))) == 3
    assert all(f.exists() for f in files["MR"] + files["OT"])
    [emergency] = events(receiver, "cleaner.emergency")
    assert "less than 2 x the receiver's 100 MB reserve free" in emergency["message"]
    assert "everything left is still in use or waiting" in emergency["message"]
    assert emergency["details"]["reserve_bytes"] == reserve
    # Still under pressure with nothing more to free: not one event per pass.
    assert cleaner.run_pass(cfg, at(t0, 0.2)).freed.files == 0
    assert len(events(receiver, "cleaner.emergency")) == 1
    # With room again, nothing is removed before its retention.
    roomy = cleaner_for(
        receiver, usage=lambda _path: 10.0, reserve_bytes=reserve, free=lambda _path: 4 * reserve
    )
    assert not roomy.run_pass(cfg, at(t0, 0.3)).emergency


def quarantined(home: Path, age: timedelta, size: int, now: datetime) -> Path:
    """A file in quarantine/<day>/ as the receiver leaves it, `age` old."""
    when = now - age
    folder = home / "quarantine" / when.strftime("%Y%m%d")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{uuid.uuid4().hex}.dcm"
    path.write_bytes(b"\0" * size)
    path.chmod(0o440)  # read-only, as the receiver makes them
    os.utime(path, (when.timestamp(), when.timestamp()))
    return path


def test_quarantine_is_removed_after_its_retention(receiver: Caduceus, tmp_path: Path) -> None:
    now = datetime.now(UTC)
    cfg = config(tmp_path / "archive", quarantine_retention=DAY)
    old = [quarantined(receiver.home, timedelta(days=d), 1000, now) for d in (3, 2)]
    new = [quarantined(receiver.home, timedelta(hours=h), 1000, now) for h in (20, 1)]
    result = cleaner_for(receiver).run_pass(cfg, now)
    assert not any(p.exists() for p in old) and all(p.exists() for p in new)
    assert (result.quarantine.files, result.quarantine.bytes) == (2, 2000)
    [cleaned] = events(receiver, "quarantine.cleaned")
    assert cleaned["details"] == {"reason": "retention", "files": 2, "bytes": 2000}
    # The emptied folders of past days go too.
    assert not old[0].parent.exists()
    assert cleaner_for(receiver).run_pass(cfg, now).quarantine.files == 0


def test_quarantine_beyond_its_caps_loses_the_oldest_first(
    receiver: Caduceus, tmp_path: Path
) -> None:
    now = datetime.now(UTC)
    cfg = config(tmp_path / "archive", quarantine_max_mb=1, quarantine_max_files=100)
    size = 300 * 1024
    files = [quarantined(receiver.home, timedelta(minutes=60 - m), size, now) for m in range(6)]
    cleaner_for(receiver).run_pass(cfg, now)
    # 1.8 MB over a cap of 1 MiB: the three oldest go, the three newest (900 KB) stay.
    assert [p.exists() for p in files] == [False] * 3 + [True] * 3
    [cleaned] = events(receiver, "quarantine.cleaned")
    assert cleaned["details"] == {"reason": "cap", "files": 3, "bytes": 3 * size}

    few = config(tmp_path / "archive", quarantine_max_files=1)
    cleaner_for(receiver).run_pass(few, now)
    assert [p.exists() for p in files] == [False] * 5 + [True]
