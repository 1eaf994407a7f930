"""Bad input gets a clear DICOM status or an abort, loses nothing, and harms no other sender."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian
from pynetdicom import AE

from tests.conftest import Launch
from tests.support.deflate import deflated_bomb, empty_elements_bomb, send_deflated
from tests.support.dicomfiles import dataset_bytes, stored_instances, transfer_syntax
from tests.support.processes import Caduceus, require, run
from tests.support.rawscu import CT_IMAGE_STORAGE, RawSCU, c_store_command, p_data
from tests.support.rows import events, wait_closed


def echo_works(receiver: Caduceus) -> bool:
    return (
        run([require("echoscu"), "-aec", "CADUCEUS", "127.0.0.1", str(receiver.port)]).returncode
        == 0
    )


def temp_files(receiver: Caduceus) -> list[Path]:
    """Partly written files. (The receiver keeps a few empty files ready to write into.)"""
    return [p for p in (receiver.home / "tmp").iterdir() if p.stat().st_size > 0]


def test_garbage_bytes_are_dropped_and_others_still_served(receiver: Caduceus) -> None:
    with socket.create_connection(("127.0.0.1", receiver.port)) as sock:
        sock.sendall(os.urandom(4096))
        sock.settimeout(10)
        try:
            reply = sock.recv(100)
        except ConnectionResetError:
            reply = b""
    # Either an A-ABORT PDU (type 7) or a closed connection; never anything else.
    assert reply == b"" or reply[0] == 0x07
    assert echo_works(receiver)
    assert stored_instances(receiver.engine()) == []


def test_abort_in_the_middle_of_an_instance_leaves_nothing(
    receiver: Caduceus, small_series: list[Path]
) -> None:
    original = small_series[0]
    data = dataset_bytes(original)
    uid = dcmread(original).SOPInstanceUID
    scu = RawSCU(receiver.port)
    assert scu.associate()[0] == 0x02  # A-ASSOCIATE-AC
    scu.send(p_data(1, c_store_command(CT_IMAGE_STORAGE, uid), command=True, last=True))
    scu.send(p_data(1, data[: len(data) // 2], command=False, last=False))
    scu.send(bytes([0x07, 0, 0, 0, 0, 4, 0, 0, 0, 0]))  # A-ABORT from the service user
    scu.close()
    [association] = wait_closed(receiver)
    assert association["status"] == "aborted"
    assert "discarded" in str(association["reason"])
    assert stored_instances(receiver.engine()) == []
    assert temp_files(receiver) == []
    assert list((receiver.home / "incoming").iterdir()) == []
    assert echo_works(receiver)


def test_connection_dropped_mid_instance_leaves_nothing(
    receiver: Caduceus, small_series: list[Path]
) -> None:
    data = dataset_bytes(small_series[1])
    uid = dcmread(small_series[1]).SOPInstanceUID
    scu = RawSCU(receiver.port)
    scu.associate()
    scu.send(p_data(1, c_store_command(CT_IMAGE_STORAGE, uid), command=True, last=True))
    scu.send(p_data(1, data[:1000], command=False, last=False))
    scu.close()  # no A-ABORT, no release: the cable was pulled
    [association] = wait_closed(receiver)
    assert association["status"] == "aborted"
    assert stored_instances(receiver.engine()) == []
    assert temp_files(receiver) == []


def test_truncated_dataset_is_refused_and_quarantined(
    receiver: Caduceus, small_series: list[Path]
) -> None:
    data = dataset_bytes(small_series[2])
    uid = dcmread(small_series[2]).SOPInstanceUID
    scu = RawSCU(receiver.port)
    scu.associate()
    scu.send(p_data(1, c_store_command(CT_IMAGE_STORAGE, uid), command=True, last=True))
    scu.send(p_data(1, data[:-100], command=False, last=True))  # says "last", but is not whole
    status, comment = scu.store_response_status()
    assert status == 0xC210
    assert "truncated" in comment
    # The association goes on: the next, complete instance is stored.
    good = small_series[3]
    scu.send(
        p_data(
            1,
            c_store_command(CT_IMAGE_STORAGE, dcmread(good).SOPInstanceUID, 2),
            command=True,
            last=True,
        )
    )
    scu.send(p_data(1, dataset_bytes(good), command=False, last=True))
    assert scu.store_response_status()[0] == 0x0000
    assert scu.release()[0] == 0x06
    scu.close()
    rows = stored_instances(receiver.engine())
    assert [r["sop_instance_uid"] for r in rows] == [dcmread(good).SOPInstanceUID]
    [refusal] = events(receiver, "instance.refused")
    assert "truncated" in str(refusal["message"])
    details = refusal["details"]
    assert isinstance(details, dict) and details["status"] == "0xC210"
    assert details["count"] == 1 and details["sop_instance_uids"] == [uid]
    kept = receiver.home / details["quarantined_as"][0]
    assert kept.read_bytes().endswith(data[:-100])
    [association] = wait_closed(receiver)
    assert association["instances_failed"] == 1 and association["instances_stored"] == 1


def test_unparseable_header_is_refused(receiver: Caduceus) -> None:
    scu = RawSCU(receiver.port)
    scu.associate()
    scu.send(p_data(1, c_store_command(CT_IMAGE_STORAGE, "1.2.3.4"), command=True, last=True))
    scu.send(p_data(1, b"\x08\x00\x16\x00ZZ\x04\x00" + os.urandom(64), command=False, last=True))
    status, comment = scu.store_response_status()
    scu.release()
    scu.close()
    assert status == 0xC210
    assert "malformed" in comment
    assert stored_instances(receiver.engine()) == []


def test_dataset_without_series_uid_is_refused(
    receiver: Caduceus, small_series: list[Path], tmp_path: Path
) -> None:
    ds = dcmread(small_series[4])
    del ds.SeriesInstanceUID
    path = tmp_path / "no-series.dcm"
    ds.save_as(path)
    ae = AE()
    ae.add_requested_context(CT_IMAGE_STORAGE, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", receiver.port, ae_title="CADUCEUS")
    status = assoc.send_c_store(ds)
    assoc.release()
    assert status.Status == 0xC211
    assert "SeriesInstanceUID" in status.ErrorComment
    assert stored_instances(receiver.engine()) == []


def test_duplicate_keeps_the_newest_and_records_both(
    receiver: Caduceus, small_series: list[Path], tmp_path: Path
) -> None:
    first = dcmread(small_series[5])
    second = dcmread(small_series[5])
    second.SeriesDescription = "RESENT"
    ae = AE()
    ae.add_requested_context(CT_IMAGE_STORAGE, ExplicitVRLittleEndian)
    for ds in (first, second):
        assoc = ae.associate("127.0.0.1", receiver.port, ae_title="CADUCEUS")
        assert assoc.send_c_store(ds).Status == 0
        assoc.release()
    [row] = stored_instances(receiver.engine())
    assert dcmread(receiver.home / row["path"]).SeriesDescription == "RESENT"
    [duplicate] = events(receiver, "instance.duplicate")
    details = duplicate["details"]
    assert isinstance(details, dict)
    assert details["sop_instance_uid"] == first.SOPInstanceUID
    assert details["previous"]["association_id"] != row["association_id"]
    assert details["kept"]["size_bytes"] == row["size_bytes"]
    # Only one file for that instance remains on disk.
    files = list((receiver.home / "incoming").rglob("*.dcm"))
    assert files == [receiver.home / row["path"]]


@pytest.mark.parametrize(
    "sop_uid,series_uid",
    [("../../../evil", "1.2.3"), ("1.2.3\n\x01/..", "../../outside"), (".", "/etc")],
)
def test_hostile_uids_cannot_place_files_outside_the_data_root(
    receiver: Caduceus,
    small_series: list[Path],
    sop_uid: str,
    series_uid: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pydicom import config

    monkeypatch.setattr(config.settings, "writing_validation_mode", config.IGNORE)
    ds = dcmread(small_series[6])
    ds.SOPInstanceUID = sop_uid
    ds.SeriesInstanceUID = series_uid
    ae = AE()
    ae.add_requested_context(CT_IMAGE_STORAGE, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", receiver.port, ae_title="CADUCEUS")
    status = assoc.send_c_store(ds)
    assoc.release()
    assert status.Status == 0
    [row] = stored_instances(receiver.engine())
    assert row["sop_instance_uid"] == sop_uid
    stored = (receiver.home / row["path"]).resolve()
    assert stored.is_relative_to((receiver.home / "incoming").resolve())
    assert stored.parent.parent == (receiver.home / "incoming").resolve()
    assert all(c.isalnum() or c in ".-" for c in stored.name.removesuffix(".dcm"))
    assert dcmread(stored).SOPInstanceUID == sop_uid


def test_sop_class_differing_from_context_is_refused(
    receiver: Caduceus, small_series: list[Path]
) -> None:
    uid = dcmread(small_series[7]).SOPInstanceUID
    scu = RawSCU(receiver.port)
    scu.associate()
    mr = "1.2.840.10008.5.1.4.1.1.4"
    scu.send(p_data(1, c_store_command(mr, uid), command=True, last=True))
    scu.send(p_data(1, dataset_bytes(small_series[7]), command=False, last=True))
    status, _ = scu.store_response_status()
    scu.release()
    scu.close()
    assert status == 0x0122
    assert stored_instances(receiver.engine()) == []


def test_the_same_instance_from_two_senders_at_once(
    launch: Launch, small_series: list[Path]
) -> None:
    """A sender retrying while its first attempt is still being stored must not lose the image."""
    from concurrent.futures import ThreadPoolExecutor

    receiver = launch(CADUCEUS_RECEIVER_WORKERS="2")
    ds = dcmread(small_series[8])

    def send_repeatedly(_: int) -> list[int]:
        # Our own SCU: pynetdicom 3.0.4 as a sender sometimes misses a response under this
        # load (DIMSE timeout on its side, nothing wrong at the receiver).
        from caduceus.core.net.scu import StoreSCU

        scu = StoreSCU(
            "127.0.0.1",
            receiver.port,
            "DUPSENDER",
            "CADUCEUS",
            [(CT_IMAGE_STORAGE, str(ExplicitVRLittleEndian))],
        )
        statuses = [
            scu.store_file(
                small_series[8], CT_IMAGE_STORAGE, ds.SOPInstanceUID, str(ExplicitVRLittleEndian)
            ).status
            for _ in range(15)
        ]
        scu.release()
        return statuses

    with ThreadPoolExecutor(4) as pool:
        statuses = [s for batch in pool.map(send_repeatedly, range(4)) for s in batch]
    assert statuses == [0] * 60
    [row] = stored_instances(receiver.engine())
    assert dataset_bytes(receiver.home / row["path"]) == dataset_bytes(small_series[8])
    assert len(events(receiver, "instance.duplicate")) == 59
    assert list((receiver.home / "incoming").rglob("*.dcm")) == [receiver.home / row["path"]]


def test_deflate_bomb_is_refused_and_leaves_nothing(launch: Launch) -> None:
    """A valid header, then 64 MiB of zeros deflated to 64 kB, against a limit of 8 MiB."""
    receiver = launch(CADUCEUS_RECEIVER_MAX_INFLATED_MB="8")
    uid, stream = deflated_bomb(64 * 1024 * 1024)
    assert len(stream) < 100_000
    assert send_deflated(receiver.port, uid, stream) == 0xA701
    wait_closed(receiver)
    [refusal] = events(receiver, "instance.refused")
    details = refusal["details"]
    assert isinstance(details, dict)
    assert details["status"] == "0xA701" and details["count"] == 1
    assert details["sop_instance_uids"] == [uid]
    assert "inflates to more than 8388608 bytes" in str(refusal["message"])
    assert stored_instances(receiver.engine()) == []
    assert list((receiver.home / "incoming").iterdir()) == []
    assert not (receiver.home / "quarantine").exists() or not any(
        (receiver.home / "quarantine").rglob("*.dcm")
    )
    assert temp_files(receiver) == []
    assert not list((receiver.home / "tmp").glob("*.inflated"))
    assert echo_works(receiver)


def test_deflated_millions_of_empty_elements_are_refused(launch: Launch) -> None:
    """A header, then 8 million empty elements in 64 kB: walking them all took seconds of CPU
    (minutes for a gigabyte), and they formed a valid dataset. The walk stops at a million."""
    receiver = launch()
    uid, stream = empty_elements_bomb(64 * 1024 * 1024)
    assert len(stream) < 100_000
    assert send_deflated(receiver.port, uid, stream) == 0xC210
    wait_closed(receiver)
    [refusal] = events(receiver, "instance.refused")
    assert "more than 1000000 elements" in str(refusal["message"])
    assert stored_instances(receiver.engine()) == []
    assert not list((receiver.home / "tmp").glob("*.inflated"))


def test_deflated_instance_within_the_limit_is_stored_as_sent(
    launch: Launch, small_series: list[Path], tmp_path: Path
) -> None:
    receiver = launch(CADUCEUS_RECEIVER_MAX_INFLATED_MB="8")
    deflated = tmp_path / "deflated.dcm"
    result = run([require("dcmconv"), "+td", str(small_series[9]), str(deflated)])
    assert result.returncode == 0, result.stderr
    assert transfer_syntax(deflated) == DeflatedExplicitVRLittleEndian
    storescu = [require("storescu"), "-xd", "-aec", "CADUCEUS", "127.0.0.1"]
    result = run([*storescu, str(receiver.port), str(deflated)])
    assert result.returncode == 0, result.stderr
    [row] = stored_instances(receiver.engine())
    stored = receiver.home / row["path"]
    assert row["transfer_syntax_uid"] == DeflatedExplicitVRLittleEndian
    # Stored as it came over the network: storescu pads the file's odd-length stream to even.
    sent = dataset_bytes(deflated)
    assert dataset_bytes(stored) in (sent, sent + b"\x00")
    original, received = dcmread(small_series[9]), dcmread(stored)
    assert received.SOPInstanceUID == original.SOPInstanceUID
    assert received.PixelData == original.PixelData
    # Also a deflated dataset larger than the copy kept in memory (checked through the file).
    uid, stream = deflated_bomb(4 * 1024 * 1024)
    assert send_deflated(receiver.port, uid, stream) == 0x0000
    assert temp_files(receiver) == []
    assert not list((receiver.home / "tmp").glob("*.inflated"))


def test_refused_uids_are_recorded_escaped_and_bounded(
    receiver: Caduceus, small_series: list[Path]
) -> None:
    """Five instances refused for one reason in one association: one event, hostile UIDs
    escaped and cut short, one log line for the first and one summary."""
    data = dataset_bytes(small_series[0])
    hostile = "1.2.3\n<script>\x1b[31m" + "9" * 500
    scu = RawSCU(receiver.port)
    scu.associate()
    mr = "1.2.840.10008.5.1.4.1.1.4"
    for message_id in range(1, 6):
        scu.send(p_data(1, c_store_command(mr, hostile, message_id), command=True, last=True))
        scu.send(p_data(1, data, command=False, last=True))
        assert scu.store_response_status()[0] == 0x0122
    scu.release()
    scu.close()
    wait_closed(receiver)
    [refusal] = events(receiver, "instance.refused")
    details = refusal["details"]
    assert isinstance(details, dict)
    assert details["count"] == 5 and details["status"] == "0x0122"
    uids = details["sop_instance_uids"]
    assert len(uids) == 5
    assert all(len(u) <= 80 and u.startswith("1.2.3\\n<script>\\x1b[31m999") for u in uids)
    log = receiver.log()
    assert "\x1b" not in log and "<script>\n" not in log
    # (The receiver's own lines: the test's folder name, in a path logged at start, has it too.)
    assert len([x for x in log.splitlines() if "refused" in x and "caduceus.receiver" in x]) == 2
