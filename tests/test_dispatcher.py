"""The dispatcher: tasks reach their targets; failures are retried with backoff, then restartable.

Images arrive through a real receiver; the router and dispatcher run in the test with an
explicit clock; the target is DCMTK's storescp.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from sqlalchemy import select

from caduceus.core.clock import as_utc
from caduceus.core.config.models import Config
from caduceus.core.db.models import DELIVERIES, TASK_TARGETS, TASKS
from caduceus.core.storage import DataRoot
from caduceus.dispatcher.dispatch import backoff, dispatch, restart
from caduceus.dispatcher.queue import claim
from tests.support.clock import later
from tests.support.dicomfiles import dataset_bytes
from tests.support.dispatching import run_dispatcher
from tests.support.processes import Caduceus, free_port
from tests.support.routing import router_for
from tests.support.rows import events, tasks
from tests.support.sending import send
from tests.support.storescp import StoreSCP, start_storescp


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[StoreSCP]:
    scp = start_storescp(tmp_path / "target", "+xa")
    yield scp
    scp.stop()


def config(port: int, **settings: Any) -> Config:
    return Config.model_validate(
        {
            "settings": {"retry_delay": 10, "retry_max": 2, **settings},
            "targets": {
                "scp": {
                    "type": "dicom",
                    "host": "127.0.0.1",
                    "port": port,
                    "called_aet": "STORESCP",
                },
                "archive": {"type": "folder", "path": "/nonexistent/archive"},
            },
            "rules": {"ct": {"rule": "@Modality@ == 'CT'", "targets": ["scp"]}},
        }
    )


def target_rows(receiver: Caduceus) -> list[dict[str, Any]]:
    with receiver.engine().connect() as conn:
        return [dict(r._mapping) for r in conn.execute(select(TASK_TARGETS))]


def test_routed_series_arrives_byte_for_byte(
    receiver: Caduceus, storescp: StoreSCP, tmp_path: Path
) -> None:
    files = send(receiver, tmp_path / "ct", count=6, modality="CT")
    cfg = config(storescp.port)
    router_for(receiver).run_pass(cfg, later(61))
    assert run_dispatcher(receiver, cfg, later(62)) == ["done"]
    [task] = tasks(receiver)
    assert task["state"] == "done"
    received = {dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in storescp.files()}
    assert len(received) == len(files)
    for original in files:
        assert dataset_bytes(received[dcmread(original).SOPInstanceUID]) == dataset_bytes(original)
    [done] = events(receiver, "dispatch.done")
    assert "6 instance(s) sent" in done["message"]


def test_dead_target_is_retried_with_backoff_then_restarted(
    receiver: Caduceus, tmp_path: Path
) -> None:
    send(receiver, tmp_path / "ct", count=3, modality="CT")
    port = free_port()  # nothing listens here yet
    cfg = config(port)
    router_for(receiver).run_pass(cfg, later(61))
    now = later(62)
    assert run_dispatcher(receiver, cfg, now) == ["dispatching"]
    [row] = target_rows(receiver)
    assert row["attempts"] == 1 and "STORESCP@127.0.0.1" in row["last_error"]
    wait = row["next_attempt_at"].replace(tzinfo=UTC) - now
    assert timedelta(seconds=5) <= wait <= timedelta(seconds=10)  # retry_delay 10 s, jittered
    # Not due yet: nobody claims it.
    assert run_dispatcher(receiver, cfg, now + timedelta(seconds=1)) == []
    # Second and third attempts fail too; retry_max 2 means the task ends in error.
    assert run_dispatcher(receiver, cfg, now + timedelta(minutes=1)) == ["dispatching"]
    assert run_dispatcher(receiver, cfg, now + timedelta(minutes=10)) == ["error"]
    [task] = tasks(receiver)
    assert task["state"] == "error" and "scp:" in task["error"]
    assert len(events(receiver, "dispatch.retry")) == 2 and events(receiver, "dispatch.error")

    # The target comes back; a restart sends only what failed, and it arrives.
    scp = start_storescp(tmp_path / "late-target", "+xa")
    try:
        cfg = config(scp.port)
        assert restart(receiver.engine(), task["id"], "tester") == 1
        assert run_dispatcher(receiver, cfg, now + timedelta(minutes=11)) == ["done"]
        assert len(scp.files()) == 3
    finally:
        scp.stop()
    assert events(receiver, "task.restarted")


def test_only_failed_targets_are_sent_again(
    receiver: Caduceus, storescp: StoreSCP, tmp_path: Path
) -> None:
    send(receiver, tmp_path / "ct", count=2, modality="CT")
    cfg = Config.model_validate(
        {
            "settings": {"retry_delay": 10, "retry_max": 0},
            "targets": {
                "scp": storescp.target(),
                "archive": {"type": "folder", "path": str(tmp_path / "missing")},
            },
            "rules": {"ct": {"rule": "True", "targets": ["scp", "archive"]}},
        }
    )
    router_for(receiver).run_pass(cfg, later(61))
    assert run_dispatcher(receiver, cfg, later(62)) == ["error"]
    assert {r["target"]: r["state"] for r in target_rows(receiver)} == {
        "scp": "done",
        "archive": "error",
    }
    (tmp_path / "missing").mkdir()
    [task] = tasks(receiver)
    restart(receiver.engine(), task["id"])
    assert run_dispatcher(receiver, cfg, later(63)) == ["done"]
    assert len(storescp.files()) == 2  # storescp was not sent the series a second time
    with receiver.engine().connect() as conn:
        assert len(conn.execute(select(DELIVERIES)).all()) == 4


def test_urgent_goes_first_and_offpeak_waits(
    receiver: Caduceus, storescp: StoreSCP, tmp_path: Path
) -> None:
    send(receiver, tmp_path / "a", count=1, modality="CT", patient_id="NORMAL")
    send(receiver, tmp_path / "b", count=1, modality="MR", patient_id="URGENT")
    cfg = Config.model_validate(
        {
            "targets": {"scp": storescp.target()},
            "rules": {
                "normal": {"rule": "@Modality@ == 'CT'", "targets": ["scp"]},
                "urgent": {"rule": "@Modality@ == 'MR'", "targets": ["scp"], "priority": "urgent"},
            },
        }
    )
    router_for(receiver).run_pass(cfg, later(61))
    engine = receiver.engine()
    first = claim(engine, "test", later(62))
    with engine.connect() as conn:
        assert conn.execute(select(TASKS.c.rule).where(TASKS.c.id == first)).scalar() == "urgent"


def test_a_lease_keeps_a_task_from_being_taken_twice(
    receiver: Caduceus, storescp: StoreSCP, tmp_path: Path
) -> None:
    send(receiver, tmp_path / "ct", count=1, modality="CT")
    cfg = config(storescp.port)
    router_for(receiver).run_pass(cfg, later(61))
    engine = receiver.engine()
    now = later(62)
    taken = claim(engine, "first", now)
    assert taken is not None
    assert claim(engine, "second", now) is None  # leased
    # The first dispatcher died: once its lease expires, another one takes the task over.
    assert claim(engine, "second", now + timedelta(minutes=11)) == taken


def test_backoff_grows_and_is_jittered() -> None:
    waits = [backoff(n, 60).total_seconds() for n in range(1, 6)]
    for n, wait in enumerate(waits, start=1):
        assert 30 * 2 ** (n - 1) <= wait <= 60 * 2 ** (n - 1)
    assert backoff(40, 60) <= timedelta(hours=6)


def test_caduceus_run_receives_routes_and_delivers(
    launch: Any, storescp: StoreSCP, tmp_path: Path
) -> None:
    """End to end through `caduceus run`: storescu, receiver, router, dispatcher, storescp."""
    import time

    import yaml

    document = {
        "settings": {"series_complete_trigger": 1},
        "targets": {"scp": storescp.target()},
        "rules": {"ct": {"rule": "@Modality@ == 'CT'", "targets": ["scp"]}},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(document))
    instance = launch("run", "--config", str(tmp_path / "config.yaml"))
    files = send(instance, tmp_path / "ct", count=5, modality="CT")
    send(instance, tmp_path / "mr", count=2, modality="MR")  # matches no rule: not delivered
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(storescp.files()) < len(files):
        time.sleep(0.2)
    received = {dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in storescp.files()}
    assert sorted(received) == sorted(dcmread(p).SOPInstanceUID for p in files)
    for original in files:
        assert dataset_bytes(received[dcmread(original).SOPInstanceUID]) == dataset_bytes(original)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and tasks(instance)[0]["state"] != "done":
        time.sleep(0.2)
    assert [t["state"] for t in tasks(instance)] == ["done"]


def route_to_slow_target(receiver: Caduceus, tmp_path: Path, port: int, count: int) -> list[Path]:
    """A CT series of `count` instances, received and routed into one task for the target
    "slow" (a test SCP on `port`); the configuration is also the service's."""
    import yaml

    files = send(receiver, tmp_path / "ct", count=count, modality="CT")
    document = {
        "targets": {
            "slow": {"type": "dicom", "host": "127.0.0.1", "port": port, "called_aet": "FLAKY"}
        },
        "rules": {"ct": {"rule": "True", "targets": ["slow"]}},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(document))
    receiver.cli("config", "import", str(tmp_path / "config.yaml"))
    cfg = Config.model_validate(document)
    router_for(receiver).run_pass(cfg, datetime.now(UTC) + timedelta(seconds=61))
    return files


def received_uids_once_done(receiver: Caduceus, seconds: float) -> set[str]:
    """Wait for the one task to be done; the SOP Instance UIDs the receiver took in."""
    import time

    from caduceus.core.db.models import INSTANCES

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and tasks(receiver)[0]["state"] != "done":
        time.sleep(0.2)
    assert tasks(receiver)[0]["state"] == "done"
    with receiver.engine().connect() as conn:
        return set(conn.execute(select(INSTANCES.c.sop_instance_uid)).scalars())


def test_dispatcher_killed_mid_send_is_taken_over_and_nothing_is_lost(
    receiver: Caduceus, launch: Any, tmp_path: Path
) -> None:
    """SIGKILL a real `caduceus dispatcher` while it sends to a slow target; a second one takes
    the task over when the lease expires, and every instance arrives (some perhaps twice)."""
    import os
    import signal
    import time

    from tests.support.flaky_scp import start_flaky_scp

    scp = start_flaky_scp(delay=0.1)
    try:
        files = route_to_slow_target(receiver, tmp_path, scp.port, count=40)
        lease = {"CADUCEUS_DISPATCHER_LEASE_SECONDS": "3"}
        first = launch("dispatcher", home=receiver.home, **lease)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(scp.stores) < 10:
            time.sleep(0.05)
        assert first.process is not None
        os.kill(first.process.pid, signal.SIGKILL)
        first.process.wait(10)
        arrived_before = len(scp.stores)
        assert 10 <= arrived_before < 40, "the kill must land in the middle of the send"
        [task] = tasks(receiver)
        assert task["state"] != "done" and task["lease_owner"]

        launch("dispatcher", home=receiver.home, **lease)
        sent = received_uids_once_done(receiver, seconds=90)
        assert len(sent) == len(files)
        assert scp.uids() == sent  # every instance arrived at least once
        assert scp.associations == 2
    finally:
        scp.stop()


def test_a_dispatcher_stopped_mid_send_records_what_arrived_and_hands_over_the_rest(
    receiver: Caduceus, launch: Any, tmp_path: Path
) -> None:
    """SIGTERM a real `caduceus dispatcher` (a restart, an upgrade) while it sends a series to
    a slow target: it stops after the instance in hand and exits, recording what the target
    confirmed. With the default 10-minute lease, a second dispatcher takes the task at once
    and sends only the rest: every instance arrives exactly once."""
    import os
    import signal
    import time

    from tests.support.flaky_scp import start_flaky_scp

    scp = start_flaky_scp(delay=0.1)
    try:
        files = route_to_slow_target(receiver, tmp_path, scp.port, count=100)
        first = launch("dispatcher", home=receiver.home)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(scp.stores) < 10:
            time.sleep(0.05)
        assert first.process is not None
        os.kill(first.process.pid, signal.SIGTERM)
        # Without the hand-over it would first send all 100 (about 9 s more): the count of
        # arrivals below says it stopped after the instance in hand instead.
        assert first.process.wait(60) == 0
        arrived_before = len(scp.stores)
        assert 10 <= arrived_before < 100, "the stop must land in the middle of the send"
        [task] = tasks(receiver)
        assert task["state"] == "dispatching"
        assert task["lease_owner"] is None  # free now, not after the lease's 10 minutes
        with receiver.engine().connect() as conn:
            recorded = conn.execute(select(DELIVERIES.c.file_name)).scalars().all()
        assert len(recorded) == arrived_before  # every confirmed instance, none more
        [target] = target_rows(receiver)
        assert (target["state"], target["attempts"]) == ("pending", 0)  # not a failed attempt
        interrupted = events(receiver, "dispatch.interrupted")
        assert f"stopped after {arrived_before} of 100 instance(s)" in interrupted[0]["message"]

        second = launch("dispatcher", home=receiver.home)
        sent = received_uids_once_done(receiver, seconds=60)
        assert len(sent) == len(files)
        assert scp.uids() == sent
        assert len(scp.stores) == len(files)  # exactly once: nothing sent twice
        assert second.process is not None
    finally:
        scp.stop()


def test_a_live_dispatcher_renews_its_lease_and_a_lost_lease_is_not_written(
    receiver: Caduceus, storescp: StoreSCP, tmp_path: Path
) -> None:
    import time

    from caduceus.core.work_queue import keep_lease, renew

    send(receiver, tmp_path / "ct", count=1, modality="CT")
    cfg = config(storescp.port)
    router_for(receiver).run_pass(cfg, later(61))
    engine = receiver.engine()
    lease = timedelta(seconds=2)
    task_id = claim(engine, "first", lease=lease)
    assert task_id is not None

    def expires() -> datetime:
        with engine.connect() as conn:
            value = conn.execute(
                select(TASKS.c.lease_expires).where(TASKS.c.id == task_id)
            ).scalar_one()
        return value if value.tzinfo else value.replace(tzinfo=UTC)

    with keep_lease(engine, task_id, "first", lease):
        time.sleep(3)  # longer than the lease: only renewal keeps it
        assert claim(engine, "second", lease=lease) is None
        assert expires() > datetime.now(UTC)
    assert not renew(engine, task_id, "someone else")

    # The first dispatcher stalls past its lease; the second takes over. When the first
    # finally settles the task, it must not overwrite the second one's state or lease.
    # The claim takes the time: it is handed one past the lease instead of waiting for it.
    stalled = later(2.2)
    assert claim(engine, "second", stalled, lease=timedelta(minutes=5)) == task_id
    dispatch(engine, DataRoot(receiver.home), cfg, task_id, set(), owner="first")
    [task] = tasks(receiver)
    assert task["lease_owner"] == "second"


def test_missing_files_are_a_failed_attempt_never_a_delivery(
    receiver: Caduceus, storescp: StoreSCP, tmp_path: Path
) -> None:
    import shutil

    send(receiver, tmp_path / "ct", count=4, modality="CT")
    cfg = config(storescp.port)
    router_for(receiver).run_pass(cfg, later(61))
    [task] = tasks(receiver)
    folder = receiver.home / task["folder"] / "in"
    next(folder.glob("*.dcm")).unlink()  # e.g. removed by hand
    assert run_dispatcher(receiver, cfg, later(62)) == ["dispatching"]
    [row] = target_rows(receiver)
    assert row["state"] == "pending"
    assert "only 3 of the task's 4 files" in row["last_error"]
    assert storescp.files() == [], "half a series is never sent"
    shutil.rmtree(folder.parent)  # the whole folder gone: still no delivery
    assert run_dispatcher(receiver, cfg, later(10_000)) == ["dispatching"]
    assert run_dispatcher(receiver, cfg, later(20_000)) == ["error"]  # retry_max is 2
    assert storescp.files() == []
    assert "removed" not in tasks(receiver)[0]["error"]
    assert "only 0 of the task's 4 files" in tasks(receiver)[0]["error"]


def test_a_dispatcher_that_lost_its_lease_mid_send_leaves_the_new_owners_targets_alone(
    receiver: Caduceus, storescp: StoreSCP, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stalls in its send; B takes the task over and delivers; A's send then fails. A's
    record of that failure must not turn B's delivered target into an error."""
    from caduceus.dispatcher import dispatch as dispatch_module
    from caduceus.dispatcher.targets import TargetError, plugin_for
    from caduceus.dispatcher.targets.base import SendReport, Shipment

    files = send(receiver, tmp_path / "ct", count=3, modality="CT")
    cfg = config(storescp.port, retry_max=0)
    router_for(receiver).run_pass(cfg, later(61))
    engine = receiver.engine()
    root = DataRoot(receiver.home)
    task_id = claim(engine, "A", later(62))
    assert task_id is not None
    takeover = later(62) + timedelta(minutes=11)  # A's 10-minute lease has expired by then

    class StalledThenTakenOver:
        """A's plug-in. The stall needs a hook inside A's send, which no real target offers:
        B runs there, for real, against the same storescp; then A's association gives up."""

        def send(self, todo: list[Path], shipment: Shipment) -> SendReport:
            monkeypatch.setattr(dispatch_module, "plugin_for", plugin_for)
            assert claim(engine, "B", takeover) == task_id
            assert dispatch(engine, root, cfg, task_id, set(), takeover, owner="B") == "done"
            raise TargetError("association aborted after a stall")

    monkeypatch.setattr(dispatch_module, "plugin_for", lambda _: StalledThenTakenOver())
    dispatch(engine, root, cfg, task_id, set(), later(62), owner="A")

    [row] = target_rows(receiver)
    assert row["state"] == "done"
    assert row["last_error"] is None
    assert row["attempts"] == 1
    [task] = tasks(receiver)
    assert task["state"] == "done"
    with engine.connect() as conn:
        assert len(conn.execute(select(DELIVERIES)).all()) == len(files)
    assert len(storescp.files()) == len(files)


def test_a_killed_dispatchers_task_is_taken_over_at_once_by_its_successor_on_this_host(
    receiver: Caduceus, launch: Any, tmp_path: Path
) -> None:
    """SIGKILL a real `caduceus dispatcher` with the default 10-minute lease while it sends to
    the second of two targets; a new dispatcher started on the same host sees that the lease's
    holder is gone and takes the task over at once (before the fix: 600 s later). Every
    instance arrives at the slow target at least once, and the fast target, whose delivery was
    confirmed before the kill, gets each exactly once."""
    import os
    import signal
    import time

    import yaml

    from tests.support.flaky_scp import start_flaky_scp

    fast, slow = start_flaky_scp(), start_flaky_scp(delay=0.1)
    try:
        files = send(receiver, tmp_path / "ct", count=40, modality="CT")
        document = {
            "targets": {
                name: {"type": "dicom", "host": "127.0.0.1", "port": p, "called_aet": "FLAKY"}
                for name, p in (("fast", fast.port), ("slow", slow.port))
            },
            "rules": {"ct": {"rule": "True", "targets": ["fast", "slow"]}},
        }
        (tmp_path / "config.yaml").write_text(yaml.safe_dump(document))
        receiver.cli("config", "import", str(tmp_path / "config.yaml"))
        router_for(receiver).run_pass(
            Config.model_validate(document), datetime.now(UTC) + timedelta(seconds=61)
        )
        first = launch("dispatcher", home=receiver.home)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(slow.stores) < 10:
            time.sleep(0.05)
        assert first.process is not None
        os.kill(first.process.pid, signal.SIGKILL)
        first.process.wait(10)
        assert 10 <= len(slow.stores) < 40, "the kill must land in the middle of the send"
        with receiver.engine().connect() as conn:
            confirmed = conn.execute(
                select(DELIVERIES.c.file_name).where(DELIVERIES.c.target == "fast")
            ).all()
        assert len(confirmed) == 40  # the fast target was done and recorded before the kill
        [task] = tasks(receiver)
        assert task["state"] != "done" and task["lease_owner"]
        lease_left = as_utc(task["lease_expires"]) - datetime.now(UTC)
        assert lease_left > timedelta(minutes=9)

        second = launch("dispatcher", home=receiver.home)
        # Within a minute, not after the ten minutes the dead dispatcher's lease still runs.
        sent = received_uids_once_done(receiver, seconds=60)
        assert len(sent) == len(files)
        assert slow.uids() == sent  # every instance at least once
        assert sorted(uid for _, uid in fast.stores) == sorted(sent)  # exactly once each
        assert "which no longer runs" in second.log()
    finally:
        fast.stop()
        slow.stop()
