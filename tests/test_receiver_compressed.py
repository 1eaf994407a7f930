"""accept_compressed_images (mercure's setting). On by default here, so an existing site
keeps receiving what its modalities send; off (as a mercure site has it), compressed transfer
syntaxes are refused in negotiation, so what is stored has native pixels and a sender converts
or fails."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    RLELossless,
)
from pynetdicom import AE

from caduceus.core.config.models import DicomTarget
from caduceus.core.dicom.synthetic import SeriesSpec, write_series
from caduceus.dispatcher.targets import Shipment, plugin_for
from tests.conftest import Launch
from tests.support.dicomfiles import dataset_bytes, stored_instances, transfer_syntax
from tests.support.processes import Caduceus, require, run

CT = "1.2.840.10008.5.1.4.1.1.2"


@pytest.fixture
def receiver(launch: Launch) -> Caduceus:
    """A receiver that refuses compressed images, as mercure's accept_compressed_images off."""
    return launch(CADUCEUS_RECEIVER_ACCEPT_COMPRESSED_IMAGES="false")


@pytest.fixture
def jpeg_and_plain(tmp_path: Path) -> tuple[Path, Path]:
    """A CT image compressed with DCMTK's dcmcjpeg (JPEG lossless), and another one as is."""
    first, second = write_series(tmp_path / "ct", SeriesSpec(count=2, rows=64, columns=64))
    jpeg = tmp_path / "jpeg.dcm"
    result = run([require("dcmcjpeg"), str(first), str(jpeg)])
    assert result.returncode == 0, result.stderr
    assert transfer_syntax(jpeg) == JPEGLosslessSV1
    return jpeg, second


def storescu_both(receiver: Caduceus, *files: Path) -> str:
    # -xs: propose JPEG lossless (and the uncompressed syntaxes, in a context of their own)
    # for the files' SOP class; storescu does not decompress. -nh: go on after a file that
    # cannot be sent.
    options = ["-xs", "-R", "-nh", "-aec", "CADUCEUS"]
    result = run([require("storescu"), *options, "127.0.0.1", str(receiver.port), *map(str, files)])
    return result.stdout + result.stderr


def test_compressed_context_is_refused_and_uncompressed_stored_when_off(
    receiver: Caduceus, jpeg_and_plain: tuple[Path, Path]
) -> None:
    jpeg, plain = jpeg_and_plain
    output = storescu_both(receiver, jpeg, plain)
    # storescu proposed JPEG lossless and explicit little endian for CT; only the latter was
    # accepted, and storescu cannot decompress: that file fails, the next one goes.
    assert f"Store Failed, file: {jpeg}" in output, output
    assert "unable to convert dataset from 'JPEG Lossless" in output, output
    [row] = stored_instances(receiver.engine())
    assert row["sop_instance_uid"] == dcmread(plain).SOPInstanceUID
    assert dataset_bytes(receiver.home / row["path"]) == dataset_bytes(plain)
    assert "Traceback" not in receiver.log()


def test_compressed_images_are_stored_as_sent_by_default(
    launch: Launch, jpeg_and_plain: tuple[Path, Path]
) -> None:
    receiver = launch()
    jpeg, plain = jpeg_and_plain
    storescu_both(receiver, jpeg, plain)
    rows = {r["sop_instance_uid"]: r for r in stored_instances(receiver.engine())}
    assert len(rows) == 2
    kept = receiver.home / rows[dcmread(jpeg).SOPInstanceUID]["path"]
    assert transfer_syntax(kept) == JPEGLosslessSV1
    assert dataset_bytes(kept) == dataset_bytes(jpeg)


def test_negotiation_keeps_every_uncompressed_syntax_and_no_compressed_one(
    receiver: Caduceus,
) -> None:
    ae = AE(ae_title="PYNETDICOM")
    proposals = [
        [JPEG2000Lossless],
        [RLELossless],
        [JPEG2000Lossless, ExplicitVRLittleEndian],  # the sender offers to convert
        [ImplicitVRLittleEndian],
        [ExplicitVRBigEndian],
        [DeflatedExplicitVRLittleEndian],  # native pixels once inflated
    ]
    for syntaxes in proposals:
        ae.add_requested_context(CT, syntaxes)
    assoc = ae.associate("127.0.0.1", receiver.port, ae_title="CADUCEUS")
    assert assoc.is_established
    accepted = {cx.context_id: cx.transfer_syntax[0] for cx in assoc.accepted_contexts}
    refused = sorted(cx.context_id for cx in assoc.rejected_contexts)
    assoc.release()
    assert refused == [1, 3]
    assert accepted == {
        5: ExplicitVRLittleEndian,
        7: ImplicitVRLittleEndian,
        9: ExplicitVRBigEndian,
        11: DeflatedExplicitVRLittleEndian,
    }


def test_our_own_sender_decompresses_for_a_receiver_that_refuses_compressed(
    receiver: Caduceus,
) -> None:
    """caduceus to caduceus: the DICOM target transcodes what the receiver refuses."""
    original = Path(get_testdata_file("JPEG2000.dcm"))
    target = DicomTarget.model_validate(
        {"type": "dicom", "host": "127.0.0.1", "port": receiver.port, "called_aet": "CADUCEUS"}
    )
    report = plugin_for(target).send([original], Shipment("compressed"))
    assert report.complete, report.failed
    [row] = stored_instances(receiver.engine())
    stored = receiver.home / row["path"]
    assert not dcmread(stored, stop_before_pixels=True).file_meta.TransferSyntaxUID.is_compressed
    assert (dcmread(stored).pixel_array == dcmread(original).pixel_array).all()


def test_mercure_import_names_the_setting_to_use() -> None:
    from caduceus.core.config.mercure_import import from_mercure

    _, report = from_mercure({"appliance_name": "master", "accept_compressed_images": False})
    [line] = [line for line in report.lines() if "accept_compressed_images" in line]
    assert line.startswith("changed meaning: accept_compressed_images:")
    assert "CADUCEUS_RECEIVER_ACCEPT_COMPRESSED_IMAGES=false" in line
    _, report = from_mercure({"appliance_name": "master", "accept_compressed_images": True})
    assert not [line for line in report.lines() if "accept_compressed_images" in line]
