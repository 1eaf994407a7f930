"""Who may send, and what happens when the disk is too full to take more."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from sqlalchemy import select

from caduceus.core.db.models import ASSOCIATIONS, EVENTS
from caduceus.core.dicom.synthetic import SeriesSpec, write_series
from caduceus.core.settings import DISK_RESERVE_FLOOR_MB
from tests.conftest import Launch
from tests.support.dicomfiles import dataset_bytes, stored_instances
from tests.support.processes import Caduceus, free_port, require, run, storescu
from tests.support.rawscu import CT_IMAGE_STORAGE, RawSCU, c_store_command, p_data
from tests.support.rows import wait_closed


def echo(receiver: Caduceus, calling: str = "ECHOSCU", called: str = "CADUCEUS") -> str:
    result = run(
        [require("echoscu"), "-aet", calling, "-aec", called, "127.0.0.1", str(receiver.port)]
    )
    return "ok" if result.returncode == 0 else result.stderr + result.stdout


def test_wrong_called_ae_title_is_rejected(receiver: Caduceus) -> None:
    answer = echo(receiver, called="SOMEONEELSE")
    assert "Called AE Title Not Recognized" in answer
    with receiver.engine().connect() as conn:
        row = conn.execute(select(ASSOCIATIONS)).one()
    assert row.status == "rejected"
    assert "SOMEONEELSE" in row.reason


def test_allow_list_of_calling_ae_titles_and_hosts(launch: Launch) -> None:
    receiver = launch(
        CADUCEUS_RECEIVER_ALLOWED_CALLING_AETS='["SCANNER1", "PACS@127.0.0.1", "WS@10.9.9.9"]',
    )
    assert echo(receiver, calling="SCANNER1") == "ok"
    assert echo(receiver, calling="PACS") == "ok"
    assert "Calling AE Title Not Recognized" in echo(receiver, calling="INTRUDER")
    # WS is allowed only from another address.
    assert "Calling AE Title Not Recognized" in echo(receiver, calling="WS")
    with receiver.engine().connect() as conn:
        rejected = conn.execute(select(EVENTS).where(EVENTS.c.kind == "association.rejected")).all()
    assert sorted(e.details["calling_aet"] for e in rejected) == ["INTRUDER", "WS"]


def test_called_ae_check_can_be_turned_off(launch: Launch) -> None:
    receiver = launch(CADUCEUS_RECEIVER_CHECK_CALLED_AET="false")
    assert echo(receiver, called="ANYTHING") == "ok"


def test_full_disk_refuses_with_out_of_resources(launch: Launch, small_series: list[Path]) -> None:
    # A reserve larger than any disk: every instance finds the disk "full".
    receiver = launch(CADUCEUS_RECEIVER_DISK_RESERVE_MB="1000000000")
    result = storescu(receiver, small_series[0], verbose=True)
    assert "Refused: OutOfResources" in result.stderr
    assert stored_instances(receiver.engine()) == []
    assert [p for p in (receiver.home / "tmp").iterdir() if p.stat().st_size] == []
    # C-ECHO still works: a full disk does not take the receiver down.
    assert echo(receiver) == "ok"


# Just above the smallest disk reserve: an instance larger than what is free is admitted
# (the reserve is checked before its first byte) and fills the disk while it is written.
TINY_MB = DISK_RESERVE_FLOOR_MB + 4


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A real small file system (tmpfs), so writes fail with ENOSPC as on a full disk."""
    mountpoint = tmp_path / "tiny"
    mountpoint.mkdir()
    result = run(["mount", "-t", "tmpfs", "-o", f"size={TINY_MB}m", "tmpfs", str(mountpoint)])
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {result.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        run(["umount", "-l", str(mountpoint)])


def test_disk_filling_up_mid_series_fails_cleanly(
    launch: Launch, tmp_path: Path, tiny_disk: Path
) -> None:
    series = write_series(
        tmp_path / "small", SeriesSpec(count=4, rows=512, columns=512)
    )  # ~0.5 MB each
    side = int((TINY_MB * 2**20 / 2) ** 0.5) + 64  # 16-bit pixels: more than the whole disk
    series += write_series(tmp_path / "big", SeriesSpec(count=1, rows=side, columns=side))
    receiver = launch(home=tiny_disk / "home")
    result = storescu(receiver, *series, verbose=True)
    assert "Refused: OutOfResources" in result.stderr
    rows = stored_instances(receiver.engine())
    assert 0 < len(rows) < len(series)
    # What was acknowledged is complete and intact.
    originals = {dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in series}
    for row in rows:
        assert dataset_bytes(receiver.home / row["path"]) == dataset_bytes(
            originals[row["sop_instance_uid"]]
        )
    # No partly written file is left behind, and the receiver still answers.
    assert [p for p in (receiver.home / "tmp").iterdir() if p.stat().st_size] == []
    assert echo(receiver) == "ok"
    with receiver.engine().connect() as conn:
        refused = conn.execute(select(EVENTS).where(EVENTS.c.kind == "instance.refused")).all()
    # Out of room: the reserve, asked again while the large one was written, or the disk.
    assert refused and all(
        "below reserve" in e.message or "No space left" in e.message for e in refused
    )


def test_refusals_are_one_event_per_association_with_a_count(
    launch: Launch, tmp_path: Path
) -> None:
    """A sender meeting a full disk gets A700 for each instance; the history gets one event
    with the count and the first UIDs, and the log a line or two, not one per instance."""
    receiver = launch(CADUCEUS_RECEIVER_DISK_RESERVE_MB="1000000000")
    series = write_series(tmp_path / "series", SeriesSpec(count=40, rows=8, columns=8))
    # --no-halt: the sender goes on after a refusal, as a modality working through a queue does.
    result = run(
        [require("storescu"), "-v", "-nh", "-aec", "CADUCEUS", "127.0.0.1", str(receiver.port)]
        + [str(path) for path in series]
    )
    assert result.stderr.count("Refused: OutOfResources") == 40
    assert stored_instances(receiver.engine()) == []
    wait_closed(receiver)  # the end is recorded just after the release is answered
    with receiver.engine().connect() as conn:
        [association] = conn.execute(select(ASSOCIATIONS)).all()
        refused = conn.execute(select(EVENTS).where(EVENTS.c.kind == "instance.refused")).all()
    assert association.instances_failed == 40
    [event] = refused
    assert event.association_id == association.id
    assert event.details["count"] == 40
    assert event.details["status"] == "0xA700"
    assert "below reserve" in event.message
    sent = {dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in series}
    assert len(event.details["sop_instance_uids"]) == 10
    assert set(event.details["sop_instance_uids"]) <= sent
    refusal_lines = [line for line in receiver.log().splitlines() if "refused" in line]
    assert 1 <= len(refusal_lines) <= 2, refusal_lines


def test_refusals_during_a_database_outage_do_not_each_wait_for_the_database(
    tmp_path: Path, sqlite_url: str, caduceus_factory: list[Caduceus]
) -> None:
    """The database is locked by another writer (as in an outage, each write waits the busy
    timeout and fails): only the first refusal waits for it, not every one."""
    instance = Caduceus(
        tmp_path / "home",
        sqlite_url,
        free_port(),
        extra_env={
            "CADUCEUS_RECEIVER_DISK_RESERVE_MB": "1000000000",
            "CADUCEUS_DATABASE_BUSY_TIMEOUT_SECONDS": "1",
        },
    )
    caduceus_factory.append(instance)
    receiver = instance.start()
    scu = RawSCU(receiver.port)
    assert scu.associate()[0] == 0x02
    locker = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        for message_id in range(1, 11):
            command = c_store_command(CT_IMAGE_STORAGE, f"1.2.3.{message_id}", message_id)
            scu.send(p_data(1, command, command=True, last=True))
            scu.send(p_data(1, bytes(64), command=False, last=True))
            assert scu.store_response_status()[0] == 0xA700
        elapsed = time.monotonic() - started
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    scu.release()
    scu.close()
    # Ten refusals, each of which waited a second before the fix: now about one second.
    assert elapsed < 5, f"10 refusals took {elapsed:.1f} s with the database locked"
    # The count is not lost: written when the association ended and the lock was gone.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with receiver.engine().connect() as conn:
            events = conn.execute(select(EVENTS).where(EVENTS.c.kind == "instance.refused")).all()
        if events and events[0].details["count"] == 10:
            break
        time.sleep(0.2)
    assert [e.details["count"] for e in events] == [10]


def test_associations_during_a_database_outage_get_a_transient_rejection_and_one_line(
    tmp_path: Path, sqlite_url: str, caduceus_factory: list[Caduceus]
) -> None:
    instance = Caduceus(
        tmp_path / "home",
        sqlite_url,
        free_port(),
        extra_env={"CADUCEUS_DATABASE_BUSY_TIMEOUT_SECONDS": "1"},
    )
    caduceus_factory.append(instance)
    receiver = instance.start()
    assert echo(receiver) == "ok"
    locker = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        answers = []
        for _ in range(3):
            scu = RawSCU(receiver.port)
            answers.append(scu.associate())
            scu.close()
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    # A-ASSOCIATE-RJ, rejected-transient (2), service-provider presentation (3), temporary
    # congestion (1): the sender tries again later.
    assert [(a[0], a[7], a[8], a[9]) for a in answers] == [(0x03, 2, 3, 1)] * 3
    assert echo(receiver) == "ok"
    log = receiver.log()
    assert "Traceback" not in log, log
    assert log.count("database unavailable") == 3, log
