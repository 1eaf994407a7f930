"""Images in: real senders (DCMTK, pynetdicom) store into a running receiver, byte for byte."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
)
from pynetdicom import AE
from pynetdicom import _config as pynetdicom_config
from sqlalchemy import func, select

from caduceus.core.db.models import ASSOCIATIONS, INSTANCES, SERIES, STUDIES
from tests.conftest import Launch
from tests.support.dicomfiles import dataset_bytes, stored_instances, transfer_syntax
from tests.support.processes import Caduceus, require, run

SHARED_SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "dicom-samples"

# pydicom's own test files, one per transfer syntax the receiver must keep as received.
COMPRESSED = {
    "JPEG2000.dcm": "1.2.840.10008.1.2.4.91",
    "MR_small_jp2klossless.dcm": "1.2.840.10008.1.2.4.90",
    "MR_small_RLE.dcm": "1.2.840.10008.1.2.5",
    "MR_small_jpeg_ls_lossless.dcm": "1.2.840.10008.1.2.4.80",
    "JPEG-lossy.dcm": "1.2.840.10008.1.2.4.51",
    "SC_rgb_jpeg_dcmtk.dcm": "1.2.840.10008.1.2.4.50",
    "image_dfl.dcm": "1.2.840.10008.1.2.1.99",
    "MR_small_bigendian.dcm": "1.2.840.10008.1.2.2",
    "MR_small_implicit.dcm": "1.2.840.10008.1.2",
}


@pytest.fixture
def receiver(launch: Launch) -> Caduceus:
    """This module is about keeping what arrives as it arrived, compressed syntaxes too: its
    receiver accepts compressed images (off by default, as in mercure; see
    test_receiver_compressed.py)."""
    return launch(CADUCEUS_RECEIVER_ACCEPT_COMPRESSED_IMAGES="true")


def test_echoscu_gets_an_answer(receiver: Caduceus) -> None:
    result = run([require("echoscu"), "-aec", "CADUCEUS", "127.0.0.1", str(receiver.port)])
    assert result.returncode == 0, result.stderr


def test_storescu_series_is_stored_byte_for_byte(
    receiver: Caduceus, small_series: list[Path]
) -> None:
    folder = small_series[0].parent
    result = run(
        [
            require("storescu"),
            "-aec",
            "CADUCEUS",
            "+sd",
            "127.0.0.1",
            str(receiver.port),
            str(folder),
        ]
    )
    assert result.returncode == 0, result.stderr

    rows = stored_instances(receiver.engine())
    assert len(rows) == len(small_series)
    by_uid = {row["sop_instance_uid"]: row for row in rows}
    for original in small_series:
        uid = dcmread(original, stop_before_pixels=True).SOPInstanceUID
        stored = receiver.home / by_uid[uid]["path"]
        assert stored.resolve().is_relative_to(receiver.home.resolve())
        assert dataset_bytes(stored) == dataset_bytes(original)
        assert stored.stat().st_mode & 0o777 == 0o440  # never changed in place
        # The file is a valid DICOM file with the right meta information.
        meta = dcmread(stored, stop_before_pixels=True).file_meta
        assert meta.MediaStorageSOPInstanceUID == uid
        assert meta.TransferSyntaxUID == by_uid[uid]["transfer_syntax_uid"]
        assert meta.SourceApplicationEntityTitle == "STORESCU"

    with receiver.engine().connect() as conn:
        study = conn.execute(select(STUDIES)).one()
        assert study.patient_name == "Doe^Jane"
        assert conn.execute(select(func.count()).select_from(SERIES)).scalar() == 1
        association = conn.execute(select(ASSOCIATIONS)).one()
        assert association.status == "released"
        assert association.calling_aet == "STORESCU"
        assert association.instances_stored == len(small_series)


def test_series_command_lists_what_arrived(receiver: Caduceus, small_series: list[Path]) -> None:
    run(
        [
            require("storescu"),
            "-aet",
            "MODALITY1",
            "-aec",
            "CADUCEUS",
            "127.0.0.1",
            str(receiver.port),
            *map(str, small_series[:4]),
        ],
        check=True,
    )
    listing = json.loads(receiver.cli("series", "--json").stdout)
    assert len(listing) == 1
    series = listing[0]
    assert series["instances"] == 4
    assert series["patient_name"] == "Doe^Jane"
    assert series["modality"] == "CT"
    assert series["series_description"] == "SYNTHETIC SERIES"
    assert series["senders"] == [{"ae_title": "MODALITY1", "host": "127.0.0.1"}]
    assert series["first_received_at"] <= series["last_received_at"]

    table = receiver.cli("series").stdout
    assert "Doe^Jane" in table and "MODALITY1@127.0.0.1" in table


@pytest.mark.parametrize("name,syntax", sorted(COMPRESSED.items()))
def test_each_transfer_syntax_is_kept_byte_for_byte(
    receiver: Caduceus, name: str, syntax: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # pynetdicom in chunked mode sends the file's dataset bytes untouched, so what we stored can
    # be compared with the file itself. (dcmsend re-encodes some files while sending.)
    monkeypatch.setattr(pynetdicom_config, "STORE_SEND_CHUNKED_DATASET", True)
    original = Path(get_testdata_file(name))
    meta = dcmread(original, stop_before_pixels=True).file_meta
    assert meta.TransferSyntaxUID == syntax
    assoc = _associate(receiver.port, [(meta.MediaStorageSOPClassUID, [syntax])])
    assert assoc.is_established
    status = assoc.send_c_store(original)
    assoc.release()
    assert status.Status == 0
    [row] = stored_instances(receiver.engine())
    stored = receiver.home / row["path"]
    assert row["transfer_syntax_uid"] == syntax
    assert transfer_syntax(stored) == syntax
    assert dataset_bytes(stored) == dataset_bytes(original)


@pytest.mark.parametrize("name", ["JPEG2000.dcm", "MR_small_RLE.dcm", "image_dfl.dcm"])
def test_dcmsend_compressed_files_keep_their_syntax(receiver: Caduceus, name: str) -> None:
    original = Path(get_testdata_file(name))
    result = run(
        [require("dcmsend"), "-aec", "CADUCEUS", "127.0.0.1", str(receiver.port), str(original)]
    )
    assert result.returncode == 0, result.stderr + result.stdout
    [row] = stored_instances(receiver.engine())
    stored = receiver.home / row["path"]
    assert transfer_syntax(stored) == transfer_syntax(original)
    sent, kept = dcmread(original), dcmread(stored)
    assert kept.PixelData == sent.PixelData
    assert kept.SOPInstanceUID == sent.SOPInstanceUID and kept.PatientName == sent.PatientName


@pytest.mark.skipif(not SHARED_SAMPLES.is_dir(), reason="../shared/dicom-samples is not present")
def test_real_scanner_samples_in_nine_syntaxes(
    receiver: Caduceus, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pynetdicom_config, "STORE_SEND_CHUNKED_DATASET", True)
    # The samples share one SOP Instance UID: send each alone and compare each time.
    for sample in sorted(SHARED_SAMPLES.glob("*.dcm")):
        meta = dcmread(sample, stop_before_pixels=True).file_meta
        assoc = _associate(
            receiver.port, [(meta.MediaStorageSOPClassUID, [meta.TransferSyntaxUID])]
        )
        assert assoc.is_established
        assert assoc.send_c_store(sample).Status == 0
        assoc.release()
        rows = stored_instances(receiver.engine())
        [row] = [
            r
            for r in rows
            if r["sop_instance_uid"] == dcmread(sample, stop_before_pixels=True).SOPInstanceUID
        ]
        assert row["transfer_syntax_uid"] == transfer_syntax(sample)
        assert dataset_bytes(receiver.home / row["path"]) == dataset_bytes(sample)


def _associate(port: int, contexts: list[tuple[str, list[str]]]):  # type: ignore[no-untyped-def]
    ae = AE(ae_title="PYNETDICOM")
    for abstract, syntaxes in contexts:
        ae.add_requested_context(abstract, syntaxes)
    return ae.associate("127.0.0.1", port, ae_title="CADUCEUS")


def test_the_senders_preferred_syntax_is_accepted(receiver: Caduceus) -> None:
    ct = "1.2.840.10008.5.1.4.1.1.2"
    mr = "1.2.840.10008.5.1.4.1.1.4"
    assoc = _associate(
        receiver.port,
        [
            (ct, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]),
            (mr, [JPEG2000Lossless, ImplicitVRLittleEndian, ExplicitVRLittleEndian]),
        ],
    )
    assert assoc.is_established
    accepted = {cx.abstract_syntax: cx.transfer_syntax[0] for cx in assoc.accepted_contexts}
    assoc.release()
    assert accepted[ct] == ExplicitVRLittleEndian
    assert accepted[mr] == JPEG2000Lossless


def test_pynetdicom_store_and_unsupported_service(receiver: Caduceus) -> None:
    find = "1.2.840.10008.5.1.4.1.2.1.1"  # Patient Root Query/Retrieve - FIND: not offered
    ct_file = Path(get_testdata_file("CT_small.dcm"))
    assoc = _associate(
        receiver.port,
        [("1.2.840.10008.5.1.4.1.1.2", [ExplicitVRLittleEndian]), (find, [ImplicitVRLittleEndian])],
    )
    assert assoc.is_established
    assert [cx.abstract_syntax for cx in assoc.accepted_contexts] == ["1.2.840.10008.5.1.4.1.1.2"]
    assert [cx.abstract_syntax for cx in assoc.rejected_contexts] == [find]
    status = assoc.send_c_store(dcmread(ct_file))
    assoc.release()
    assert status.Status == 0x0000
    [row] = stored_instances(receiver.engine())
    assert row["sop_class_uid"] == "1.2.840.10008.5.1.4.1.1.2"


def test_private_sop_class_is_stored(
    receiver: Caduceus, small_series: list[Path], tmp_path: Path
) -> None:
    ds = dcmread(small_series[0])
    private = "1.3.12.2.1107.5.9.1"  # a vendor's private storage class
    ds.SOPClassUID = private
    ds.file_meta.MediaStorageSOPClassUID = private
    path = tmp_path / "private.dcm"
    ds.save_as(path)
    assoc = _associate(receiver.port, [(private, [ExplicitVRLittleEndian])])
    assert assoc.is_established
    status = assoc.send_c_store(path)
    assoc.release()
    assert status.Status == 0
    [row] = stored_instances(receiver.engine())
    assert row["sop_class_uid"] == private


def test_four_senders_at_once_with_two_workers(tmp_path: Path, launch: Launch) -> None:
    from caduceus.core.dicom.synthetic import SeriesSpec, write_series

    receiver = launch(CADUCEUS_RECEIVER_WORKERS="2")
    folders = []
    for index in range(4):
        folder = tmp_path / f"s{index}"
        write_series(folder, SeriesSpec(count=25, rows=16, columns=16, patient_id=f"P{index}"))
        folders.append(folder)
    import subprocess

    senders = [
        subprocess.Popen(
            [
                require("storescu"),
                "-aec",
                "CADUCEUS",
                "+sd",
                "127.0.0.1",
                str(receiver.port),
                str(f),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for f in folders
    ]
    for sender in senders:
        assert sender.wait(120) == 0
    with receiver.engine().connect() as conn:
        assert conn.execute(select(func.count()).select_from(INSTANCES)).scalar() == 100
        assert conn.execute(select(func.count()).select_from(SERIES)).scalar() == 4
        assert conn.execute(select(func.count()).select_from(STUDIES)).scalar() == 4


def test_orthanc_as_the_sender(receiver: Caduceus, tmp_path: Path) -> None:
    """A PACS (Orthanc) pushes a JPEG 2000 image to us over C-STORE."""
    from tests.support.orthanc import start_orthanc

    orthanc = start_orthanc(
        tmp_path / "orthanc", {"caduceus": ["CADUCEUS", "127.0.0.1", receiver.port]}
    )
    try:
        original = Path(get_testdata_file("JPEG2000.dcm"))
        uploaded = orthanc.request("POST", "/instances", original.read_bytes())
        job = orthanc.request("POST", "/modalities/caduceus/store", uploaded["ID"].encode())
        assert job["FailedInstancesCount"] == 0, job
    finally:
        orthanc.stop()
    [row] = stored_instances(receiver.engine())
    stored = receiver.home / row["path"]
    assert transfer_syntax(stored) == transfer_syntax(original)  # Orthanc sends it as stored
    assert dcmread(stored).PixelData == dcmread(original).PixelData
    with receiver.engine().connect() as conn:
        assert conn.execute(select(ASSOCIATIONS.c.calling_aet)).scalar() == "ORTHANC"


def test_international_names_arrive_as_unicode(receiver: Caduceus, tmp_path: Path) -> None:
    from caduceus.core.dicom.synthetic import SeriesSpec, write_series

    names = {
        "ISO 2022 IR 87": ("\\ISO 2022 IR 87", "Yamada^Tarou=山田^太郎=やまだ^たろう"),
        "GB18030": ("GB18030", "Wang^XiaoDong=王^小东"),
        "ISO_IR 100": ("ISO_IR 100", "Müller^Jürgen"),
    }
    for index, (charset, name) in enumerate(names.values()):
        write_series(
            tmp_path / "names" / f"s{index}",
            SeriesSpec(count=1, patient_id=f"P{index}", patient_name=name, character_set=charset),
        )
    result = run(
        [
            require("storescu"),
            "-aec",
            "CADUCEUS",
            "+sd",
            "+r",
            "127.0.0.1",
            str(receiver.port),
            str(tmp_path / "names"),
        ]
    )
    assert result.returncode == 0, result.stderr
    listing = json.loads(receiver.cli("series", "--json").stdout)
    assert sorted(s["patient_name"] for s in listing) == sorted(n for _, n in names.values())
