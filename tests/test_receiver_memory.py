"""Memory stays flat: large instances stream to disk instead of being held in memory."""

from __future__ import annotations

from pathlib import Path

from pydicom import dcmread

from caduceus.core.dicom.synthetic import SeriesSpec, generate
from tests.support.dicomfiles import dataset_bytes, stored_instances
from tests.support.processes import Caduceus, free_port, require, run

INSTANCE_MB = 128


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc")


def test_large_instances_do_not_grow_the_receiver(
    tmp_path: Path, sqlite_url: str, caduceus_factory: list[Caduceus]
) -> None:
    # Three instances of 128 MB each (8192 x 8192 16-bit): 384 MB in one association.
    files = []
    side = int((INSTANCE_MB * 1024 * 1024 // 2) ** 0.5)
    for index, ds in enumerate(generate(SeriesSpec(count=3, rows=16, columns=16))):
        ds.Rows = ds.Columns = side
        ds.PixelData = bytes([index + 1]) * (side * side * 2)
        path = tmp_path / f"big{index}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
        del ds

    receiver = Caduceus(tmp_path / "home", sqlite_url, free_port())
    caduceus_factory.append(receiver)
    receiver.start()
    assert receiver.process is not None
    assert (
        run([require("echoscu"), "-aec", "CADUCEUS", "127.0.0.1", str(receiver.port)]).returncode
        == 0
    )
    before = peak_rss_mb(receiver.process.pid)

    result = run(
        [
            require("storescu"),
            "-aec",
            "CADUCEUS",
            "127.0.0.1",
            str(receiver.port),
            *map(str, files),
        ],
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    after = peak_rss_mb(receiver.process.pid)

    rows = stored_instances(receiver.engine())
    assert len(rows) == 3
    by_uid = {r["sop_instance_uid"]: r for r in rows}
    for path in files:
        row = by_uid[dcmread(path, stop_before_pixels=True).SOPInstanceUID]
        assert dataset_bytes(receiver.home / row["path"]) == dataset_bytes(path)
    # Holding even one instance in memory would add 128 MB.
    assert after - before < 48, f"peak RSS grew from {before:.0f} MB to {after:.0f} MB"
