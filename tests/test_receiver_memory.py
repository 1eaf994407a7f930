"""Memory stays flat: large instances stream to disk instead of being held in memory."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from pydicom import dcmread

from caduceus.core.dicom.synthetic import SeriesSpec, generate
from tests.support.deflate import deflated_bomb, send_deflated
from tests.support.dicomfiles import dataset_bytes, stored_instances
from tests.support.processes import Caduceus, free_port, require, run

INSTANCE_MB = 128


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc")


def answering_receiver(
    tmp_path: Path,
    sqlite_url: str,
    caduceus_factory: list[Caduceus],
    extra: dict[str, str] | None = None,
) -> Caduceus:
    """A receiver that has answered an echo, so its memory is measured from a settled start."""
    receiver = Caduceus(tmp_path / "home", sqlite_url, free_port(), extra_env=extra or {})
    caduceus_factory.append(receiver)
    receiver.start()
    assert receiver.process is not None
    echo = run([require("echoscu"), "-aec", "CADUCEUS", "127.0.0.1", str(receiver.port)])
    assert echo.returncode == 0
    return receiver


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

    receiver = answering_receiver(tmp_path, sqlite_url, caduceus_factory)
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


@pytest.mark.parametrize(
    ("limit_mb", "expected"), [(None, 0x0000), (512, 0xA701)], ids=["stored", "refused"]
)
def test_deflate_bombs_do_not_grow_the_receiver(
    tmp_path: Path,
    sqlite_url: str,
    caduceus_factory: list[Caduceus],
    limit_mb: int | None,
    expected: int,
) -> None:
    """Two C-STOREs at once, each 1 MiB on the wire that inflates to 1 GiB (it took 2 GiB and
    more per bomb when the check inflated in memory). Under the default limit of 4 GiB they are
    valid instances and are stored; under a limit of 512 MiB they are refused."""
    extra = {} if limit_mb is None else {"CADUCEUS_RECEIVER_MAX_INFLATED_MB": str(limit_mb)}
    receiver = answering_receiver(tmp_path, sqlite_url, caduceus_factory, extra)
    bombs = [deflated_bomb(1024 * 1024 * 1024) for _ in range(2)]
    assert all(len(stream) < 1_100_000 for _, stream in bombs)
    before = peak_rss_mb(receiver.process.pid)

    with ThreadPoolExecutor(2) as pool:
        statuses = list(pool.map(lambda bomb: send_deflated(receiver.port, *bomb), bombs))
    after = peak_rss_mb(receiver.process.pid)

    assert statuses == [expected, expected]
    rows = stored_instances(receiver.engine())
    if expected == 0:
        assert sorted(r["sop_instance_uid"] for r in rows) == sorted(uid for uid, _ in bombs)
        by_uid = {r["sop_instance_uid"]: r for r in rows}
        for uid, stream in bombs:
            assert dataset_bytes(receiver.home / by_uid[uid]["path"]) == stream
    else:
        assert rows == []
    assert [p for p in (receiver.home / "tmp").iterdir() if p.stat().st_size] == []
    # Inflating either one in memory would add 1024 MB.
    assert after - before < 48, f"peak RSS grew from {before:.0f} MB to {after:.0f} MB"
