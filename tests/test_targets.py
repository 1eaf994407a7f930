"""Target plug-ins against real peers: DCMTK storescp as a DICOM target, a real folder."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from pydicom import dcmread
from pydicom.data import get_testdata_file

from caduceus.core.config.models import DicomTarget, DicomWebTarget, DummyTarget, FolderTarget
from caduceus.core.dicom.synthetic import SeriesSpec, write_series
from caduceus.dispatcher.targets import Shipment, TargetError, plugin_for
from tests.support.dicomfiles import dataset_bytes
from tests.support.interrupt import after
from tests.support.processes import free_port, run
from tests.support.storescp import StoreSCP, start_storescp


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[StoreSCP]:
    scp = start_storescp(tmp_path / "received", "+xa")
    yield scp
    scp.stop()


def dicom(scp: StoreSCP) -> DicomTarget:
    return DicomTarget(host="127.0.0.1", port=scp.port, called_aet="STORESCP")


def by_uid(files: list[Path]) -> dict[str, Path]:
    return {dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in files}


def test_dicom_target_delivers_every_instance_byte_for_byte(
    storescp: StoreSCP, tmp_path: Path
) -> None:
    series = write_series(tmp_path / "ct", SeriesSpec(count=20, rows=64, columns=64))
    compressed = [Path(get_testdata_file(n)) for n in ("JPEG2000.dcm", "MR_small_RLE.dcm")]
    report = plugin_for(dicom(storescp)).send(series + compressed, Shipment("task-1"))
    assert report.complete and sorted(report.accepted) == sorted(series + compressed)
    received = by_uid(storescp.files())
    for original in series:
        uid = dcmread(original, stop_before_pixels=True).SOPInstanceUID
        assert dataset_bytes(received[uid]) == dataset_bytes(original)
    for original in compressed:  # storescp re-encodes these test files' odd headers on writing
        sent = dcmread(original)
        got = dcmread(received[sent.SOPInstanceUID])
        assert got.file_meta.TransferSyntaxUID == sent.file_meta.TransferSyntaxUID
        assert got.PixelData == sent.PixelData


def test_compressed_images_are_transcoded_when_the_target_refuses_them(tmp_path: Path) -> None:
    scp = start_storescp(tmp_path / "plain")  # accepts uncompressed syntaxes only
    try:
        originals = [
            Path(get_testdata_file(n))
            for n in ("JPEG2000.dcm", "MR_small_jpeg_ls_lossless.dcm", "SC_rgb_rle.dcm")
        ]
        report = plugin_for(dicom(scp)).send(originals, Shipment("task-2"))
        assert report.complete and sorted(report.transcoded) == sorted(originals)
        received = by_uid(scp.files())
        for original in originals:
            sent = dcmread(original)
            got = dcmread(received[sent.SOPInstanceUID])
            assert not got.file_meta.TransferSyntaxUID.is_compressed
            assert (got.pixel_array == sent.pixel_array).all()  # lossless: pixel-identical
    finally:
        scp.stop()


def test_dead_target_fails_with_a_clear_reason(tmp_path: Path) -> None:
    series = write_series(tmp_path / "ct", SeriesSpec(count=2, rows=8, columns=8))
    target = plugin_for(DicomTarget(host="127.0.0.1", port=free_port(), called_aet="NOBODY"))
    report = target.send(series, Shipment("task-3"))
    assert not report.complete and report.accepted == []
    assert all("NOBODY@127.0.0.1" in reason for reason in report.failed.values())
    with pytest.raises(TargetError, match="NOBODY"):
        target.test()


def test_folder_target_publishes_atomically(tmp_path: Path) -> None:
    series = write_series(tmp_path / "ct", SeriesSpec(count=3, rows=8, columns=8))
    out = tmp_path / "out"
    out.mkdir()
    target = plugin_for(FolderTarget(path=str(out)))
    assert "writable" in target.test()
    report = target.send(series, Shipment("task-4"))
    assert report.complete
    delivered = out / "task-4"
    assert (delivered / ".complete").exists()
    assert sorted(p.name for p in delivered.glob("*.dcm")) == sorted(p.name for p in series)
    assert [p.name for p in out.iterdir()] == ["task-4"]  # no partial folder left
    # A repeated send (after a crash before it was recorded) does not duplicate anything.
    assert plugin_for(FolderTarget(path=str(out))).send(series, Shipment("task-4")).complete
    with pytest.raises(TargetError, match="does not exist"):
        plugin_for(FolderTarget(path=str(tmp_path / "missing"))).test()


def test_targets_test_command(storescp: StoreSCP, tmp_path: Path) -> None:
    config = {
        "targets": {
            "scp": storescp.target(),
            "dead": {
                "type": "dicom",
                "host": "127.0.0.1",
                "port": free_port(),
                "called_aet": "DEAD",
            },
        }
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    env = {"CADUCEUS_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"}
    caduceus = [sys.executable, "-m", "caduceus"]
    assert run([*caduceus, "config", "import", str(tmp_path / "c.yaml")], env=env).returncode == 0
    ok = run([*caduceus, "targets", "test", "scp"], env=env)
    assert ok.returncode == 0 and "C-ECHO" in ok.stdout and "ok" in ok.stdout
    dead = run([*caduceus, "targets", "test", "dead"], env=env)
    assert dead.returncode == 1 and "failed" in dead.stdout and "DEAD@127.0.0.1" in dead.stdout


def test_an_interrupted_folder_send_publishes_nothing(tmp_path: Path) -> None:
    """A dispatcher stopping mid-copy leaves neither the task's folder nor a partial one: the
    next dispatcher copies it whole."""
    series = write_series(tmp_path / "ct", SeriesSpec(count=4, rows=8, columns=8))
    out = tmp_path / "out"
    out.mkdir()
    target = plugin_for(FolderTarget(path=str(out)))
    report = target.send(series, Shipment("task-5", interrupted=after(2)))
    assert report.interrupted
    assert report.accepted == [] and report.failed == {}
    assert list(out.iterdir()) == []
    assert target.send(series, Shipment("task-5")).complete
    assert len(list((out / "task-5").glob("*.dcm"))) == 4


def test_a_file_that_cannot_be_read_fails_alone_and_the_association_goes_on(
    storescp: StoreSCP, tmp_path: Path
) -> None:
    """The SCU reads where the dataset starts before anything goes out: a file gone since it
    was listed is its own error (not a lost association), and the next file still arrives."""
    from caduceus.core.net.scu import StoreSCU

    [kept, gone] = write_series(tmp_path / "ct", SeriesSpec(count=2, rows=8, columns=8))
    meta = [dcmread(p, stop_before_pixels=True) for p in (kept, gone)]
    ct, syntax = str(meta[0].SOPClassUID), str(meta[0].file_meta.TransferSyntaxUID)
    gone.unlink()
    scu = StoreSCU("127.0.0.1", storescp.port, "CADUCEUS", "STORESCP", [(ct, syntax)])
    try:
        with pytest.raises(FileNotFoundError):
            scu.store_file(gone, ct, str(meta[1].SOPInstanceUID), syntax)
        assert scu.store_file(kept, ct, str(meta[0].SOPInstanceUID), syntax).ok
    finally:
        scu.release()
    assert list(by_uid(storescp.files())) == [meta[0].SOPInstanceUID]


def test_folder_exclude_keeps_back_only_the_matching_files(tmp_path: Path) -> None:
    """mercure's folder target's file_filter ("*.txt,*.json") names files NOT to copy; its
    import becomes `exclude`, so a series of .dcm files arrives whole."""
    series = write_series(tmp_path / "ct", SeriesSpec(count=4, rows=8, columns=8))
    out = tmp_path / "out"
    out.mkdir()
    imported = FolderTarget(path=str(out), exclude=["*.txt", "*.json"])
    report = plugin_for(imported).send(series, Shipment("task-6"))
    assert report.complete and report.accepted == series
    assert sorted(p.name for p in (out / "task-6").glob("*.dcm")) == [p.name for p in series]
    skipping = FolderTarget(path=str(out), exclude=["00002.dcm", "*3.dcm"])
    report = plugin_for(skipping).send(series, Shipment("task-7"))
    assert report.complete and report.accepted == [series[0], series[3]]
    assert sorted(p.name for p in (out / "task-7").glob("*.dcm")) == ["00001.dcm", "00004.dcm"]


def test_dummy_target_accepts_everything_and_keeps_nothing(tmp_path: Path) -> None:
    series = write_series(tmp_path / "ct", SeriesSpec(count=3, rows=8, columns=8))
    target = plugin_for(DummyTarget())
    assert "dummy" in target.test()
    report = target.send(series, Shipment("task-8"))
    assert report.complete and report.accepted == series
    stopped = target.send(series, Shipment("task-9", interrupted=after(1)))
    assert stopped.interrupted and stopped.accepted == [series[0]]


def test_dicomweb_file_url_stores_instances_by_uid(tmp_path: Path) -> None:
    """mercure sends a DICOMweb target with a file:// URL into that folder (dicomweb-client's
    file store); here each instance lands whole under <study>/<series>/<instance>.dcm."""
    series = write_series(tmp_path / "ct", SeriesSpec(count=3, rows=8, columns=8))
    store = tmp_path / "store"
    store.mkdir()
    target = plugin_for(DicomWebTarget(url=f"file://{store}"))
    assert "writable" in target.test()
    report = target.send(series, Shipment("task-10"))
    assert report.complete and report.accepted == series
    for path in series:
        ds = dcmread(path)
        stored = store / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"
        assert stored.read_bytes() == path.read_bytes()
        assert stored.stat().st_mode & 0o777 == 0o600
    assert not list(store.rglob(".*.partial"))
    # Sent again (a resumed task): the same files, no copies.
    assert target.send(series, Shipment("task-10")).complete
    assert len(list(store.rglob("*.dcm"))) == 3
    with pytest.raises(TargetError, match="does not exist"):
        plugin_for(DicomWebTarget(url=f"file://{tmp_path / 'missing'}")).test()


def test_dicomweb_file_url_refuses_a_uid_that_is_a_path(tmp_path: Path) -> None:
    [path] = write_series(tmp_path / "ct", SeriesSpec(count=1, rows=8, columns=8))
    ds = dcmread(path)
    ds.SeriesInstanceUID = "../../escaped"
    ds.save_as(path)
    store = tmp_path / "store"
    store.mkdir()
    report = plugin_for(DicomWebTarget(url=f"file://{store}")).send([path], Shipment("t"))
    assert report.accepted == [] and "SeriesInstanceUID" in report.failed[path]
    assert list(store.iterdir()) == [] and not (tmp_path / "escaped").exists()
    with pytest.raises(ValueError, match="file:///path/to/folder"):
        DicomWebTarget(url="file://server/share")
