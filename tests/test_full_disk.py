"""A full disk on a real small file system: the receiver stops admitting at its reserve, the
pipeline keeps moving in the room below it, the cleaner frees delivered work, receiving
resumes, and every acknowledged instance is delivered.

The file system is a tmpfs mounted by the test (root only), so writes really fail with ENOSPC.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError
from pydicom import dcmread
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian
from sqlalchemy import select

from caduceus.core.config.models import Config
from caduceus.core.db.models import SERIES
from caduceus.core.dicom.synthetic import SeriesSpec, write_series
from caduceus.core.settings import DISK_RESERVE_FLOOR_MB, Settings
from tests.conftest import Launch
from tests.support.deflate import deflated_bomb
from tests.support.processes import Caduceus, free_port, require, run
from tests.support.rawscu import CT_IMAGE_STORAGE, RawSCU, c_store_command, p_data
from tests.support.routing import router_for
from tests.support.rows import events, tasks
from tests.support.sending import send
from tests.support.storescp import start_storescp
from tests.support.web import as_role, web_client

MB = 1024 * 1024


def mount_tmpfs(mountpoint: Path, size_mb: int) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a small file system needs root")
    mountpoint.mkdir()
    result = run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(mountpoint)])
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """An 80 MB file system: room for about 45 MB of images above the smallest reserve."""
    mountpoint = tmp_path / "disk"
    mount_tmpfs(mountpoint, 80)
    try:
        yield mountpoint
    finally:
        run(["umount", "-l", str(mountpoint)])


def test_a_reserve_below_the_floor_is_refused(tmp_path: Path) -> None:
    expected = f"receiver_disk_reserve_mb must be at least {DISK_RESERVE_FLOOR_MB} (MB)"
    for value in (0, DISK_RESERVE_FLOOR_MB - 1):
        with pytest.raises(ValidationError, match=re.escape(expected)):
            Settings(receiver_disk_reserve_mb=value)
    instance = Caduceus(tmp_path / "home", f"sqlite:///{tmp_path / 'c.db'}", free_port())
    instance.home.mkdir()
    for value in ("0", str(DISK_RESERVE_FLOOR_MB - 1)):
        instance.extra_env = {"CADUCEUS_RECEIVER_DISK_RESERVE_MB": value}
        result = instance.cli("settings", check=False)
        assert result.returncode == 2
        assert expected in " ".join((result.stdout + result.stderr).split())
    # The same from the settings file, which a service reads at start.
    (instance.home / "caduceus.toml").write_text("receiver_disk_reserve_mb = 0\n")
    env = {k: v for k, v in instance.env.items() if k != "CADUCEUS_RECEIVER_DISK_RESERVE_MB"}
    result = run([sys.executable, "-m", "caduceus", "receiver"], env=env, timeout=60)
    assert result.returncode == 2
    assert expected in " ".join((result.stdout + result.stderr).split())


def fill(folder: Path) -> Path:
    """Write a file until the file system holding the folder is full."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    chunk = b"\0" * MB
    try:
        while True:
            os.write(fd, chunk)
    except OSError:
        pass
    finally:
        os.close(fd)
    return filler


def test_router_waits_for_room_instead_of_failing(
    launch: Launch, tmp_path: Path, small_disk: Path
) -> None:
    receiver = launch(home=small_disk / "home")
    send(receiver, tmp_path / "ct", count=3, modality="CT")
    cfg = Config.model_validate(
        {
            "targets": {"archive": {"type": "folder", "path": str(tmp_path / "archive")}},
            "rules": {"ct": {"rule": "True", "targets": ["archive"]}},
        }
    )
    router = router_for(receiver)
    filler = fill(small_disk)
    soon = datetime.now(UTC) + timedelta(seconds=61)
    for _ in range(2):  # the same pass again: still no room, still nothing lost
        result = router.run_pass(cfg, soon)
        assert result.tasks == [] and result.next_due is not None
    assert tasks(receiver) == []
    with receiver.engine().connect() as conn:
        assert conn.execute(select(SERIES.c.state)).scalar() == "receiving"
    assert not list((receiver.home / "tasks").rglob("*.part")), "no half-written task.json"
    [warning] = events(receiver, "router.no_space")
    assert "No space left" in warning["message"]

    filler.unlink()
    result = router.run_pass(cfg, soon)
    [task] = tasks(receiver)
    assert result.tasks == [task["id"]]
    assert (receiver.home / task["folder"] / "in" / "task.json").stat().st_size > 0
    assert len(list((receiver.home / task["folder"] / "in").glob("*.dcm"))) == 3


# -- the whole pipeline on a disk too small for what is sent ------------------------------


def send_files(instance: Caduceus, files: list[Path]) -> dict[Path, str]:
    """Send with DCMTK's storescu on one association; each file's answer as storescu saw it
    (a file without an answer is missing)."""
    result = run(
        [require("storescu"), "-v", "-aec", instance.ae_title, "127.0.0.1", str(instance.port)]
        + [str(f) for f in files],
        timeout=120,
    )
    answers: dict[Path, str] = {}
    current: Path | None = None
    for line in (result.stdout + result.stderr).splitlines():
        if found := re.search(r"Sending file: (.+)$", line):
            current = Path(found.group(1))
        elif (found := re.search(r"Received Store Response \((.+)\)", line)) and current:
            answers[current] = found.group(1)
            current = None
    return answers


def logs(home: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in home.rglob("*.log"))


def uids(files: list[Path]) -> set[str]:
    return {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}


def test_full_disk_refuses_keeps_delivering_cleans_and_resumes(
    tmp_path: Path, small_disk: Path, caduceus_factory: list[Caduceus]
) -> None:
    scp = start_storescp(tmp_path / "scp", "+xa")
    home = small_disk / "home"
    document = {
        "settings": {"series_complete_trigger": 1},
        "targets": {"scp": scp.target()},
        "rules": {"all": {"rule": "True", "targets": ["scp"]}},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(document))
    # The database is on the small disk too: its writes must never be the ones that fail.
    instance = Caduceus(home, f"sqlite:///{home / 'caduceus.db'}", free_port())
    caduceus_factory.append(instance)
    # About 120 MB, 0.5 MB an image, for a disk of 80 MB with a reserve of 32 MB.
    series = [
        write_series(tmp_path / f"s{i}", SeriesSpec(count=20, rows=512, columns=512))
        for i in range(12)
    ]
    try:
        instance.start("run", "--config", str(tmp_path / "config.yaml"))
        acked: set[Path] = set()
        refusals: set[str] = set()
        resumed = False
        deadline = time.monotonic() + 180
        # Like a modality, the sender sends what was refused again a little later.
        while time.monotonic() < deadline:
            pending = [[f for f in files if f not in acked] for files in series]
            if not any(pending):
                break
            for files in filter(None, pending):
                for path, answer in send_files(instance, files).items():
                    if answer == "Success":
                        acked.add(path)
                        resumed = resumed or bool(refusals)
                    else:
                        refusals.add(answer)
            time.sleep(1)
        sent = [f for files in series for f in files]
        assert len(acked) == len(sent), f"{len(sent) - len(acked)} never accepted"
        # The disk was full, and only the reserve said so: out of resources, before any file
        # or database write failed.
        assert refusals == {"Refused: OutOfResources"}
        assert resumed
        # Every acknowledged instance reaches the target.
        wanted = uids(sent)
        while time.monotonic() < deadline and not wanted <= uids(scp.files()):
            time.sleep(1)
        assert wanted <= uids(scp.files())
    finally:
        scp.stop()
        instance.stop()
    # The room went to delivered work, which the cleaner freed under pressure.
    cleaned = events(instance, "task.cleaned")
    assert cleaned and {e["details"]["reason"] for e in cleaned} == {"disk"}
    assert {e["details"]["reason"] for e in events(instance, "series.files_removed")} == {"disk"}
    assert events(instance, "router.no_space") == []
    refused = events(instance, "instance.refused")
    assert not [e for e in refused if "No space left" in e["message"]]
    text = logs(home)
    for failure in (
        "database or disk is full",
        "No space left",
        "database write failed",
        "pass failed",
    ):
        assert failure not in text


def test_force_complete_on_a_full_disk_says_so_and_keeps_the_series(
    launch: Launch, tmp_path: Path, small_disk: Path
) -> None:
    receiver = launch(home=small_disk / "home")
    send(receiver, tmp_path / "ct", count=2, modality="CT")
    client = web_client(receiver.home, receiver.database_url, receiver.engine())
    admin = as_role(client, receiver.engine(), "admin")
    document = {
        "targets": {"archive": {"type": "folder", "path": str(tmp_path / "archive")}},
        "rules": {"ct": {"rule": "True", "targets": ["archive"]}},
    }
    assert client.put("/api/config", json=document, headers=admin).status_code == 200
    [series] = client.get("/api/series", headers=admin).json()

    filler = fill(small_disk)
    full = client.post(f"/api/series/{series['id']}/force-complete", headers=admin)
    assert full.status_code == 507 and "full" in full.json()["detail"], full.text
    assert client.get(f"/api/series/{series['id']}", headers=admin).json()["state"] == "receiving"

    filler.unlink()
    done = client.post(f"/api/series/{series['id']}/force-complete", headers=admin)
    assert done.status_code == 200 and len(done.json()["tasks"]) == 1, done.text


# -- one instance that would pass the reserve while it is written ---------------------------


class FreeSpaceWatch:
    """The least free space seen on a file system while the watch runs (sampled in a thread)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.least = self._free()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _free(self) -> int:
        st = os.statvfs(self.folder)
        return st.f_bavail * st.f_frsize

    def _run(self) -> None:
        while not self._stop.wait(0.002):
            self.least = min(self.least, self._free())

    def __enter__(self) -> FreeSpaceWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def store_raw(port: int, syntax: str, sop_instance: str, data: Iterator[bytes]) -> tuple[int, str]:
    """One C-STORE whose dataset is the given pieces; its status and comment."""
    scu = RawSCU(port)
    try:
        scu.sock.settimeout(120)
        assert scu.associate(syntax=syntax)[0] == 0x02
        command = c_store_command(CT_IMAGE_STORAGE, sop_instance)
        scu.send(p_data(1, command, command=True, last=True))
        previous: bytes | None = None
        for piece in data:
            if previous is not None:
                scu.send(p_data(1, previous, command=False, last=False))
            previous = piece
        scu.send(p_data(1, previous or b"", command=False, last=True))
        answer = scu.store_response_status()
        scu.release()
        return answer
    finally:
        scu.close()


def pieces(data: bytes, size: int = 1024 * 1024) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


@pytest.mark.parametrize("kind", ["deflate bomb", "large instance"])
def test_an_instance_is_refused_when_writing_it_would_pass_the_reserve(
    launch: Launch, small_disk: Path, kind: str
) -> None:
    reserve_mb = DISK_RESERVE_FLOOR_MB + 8
    receiver = launch(home=small_disk / "home", CADUCEUS_RECEIVER_DISK_RESERVE_MB=str(reserve_mb))
    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    assert free > (reserve_mb + 20) * MB  # admitted: well above the reserve when it starts
    if kind == "deflate bomb":
        # A few hundred kilobytes that inflate to 200 MB, more than the whole disk.
        uid, stream = deflated_bomb(200 * MB)
        syntax, data = str(DeflatedExplicitVRLittleEndian), pieces(stream)
    else:
        # 70 MB sent as it comes: more than the room above the reserve, less than the disk.
        uid, syntax = "1.2.3.4.5", str(ExplicitVRLittleEndian)
        data = (bytes(MB) for _ in range(70))
    with FreeSpaceWatch(small_disk) as watch:
        status, comment = store_raw(receiver.port, syntax, uid, data)
    assert status == 0xA700, (hex(status), comment)
    assert "reserve" in comment, comment
    # It stopped within a few MiB of the reserve: the floor below it was never touched.
    assert watch.least >= DISK_RESERVE_FLOOR_MB * MB, watch.least // MB
    # Nothing of it is left in tmp/ (an empty file made ahead for the next instance may be).
    assert [p for p in (receiver.home / "tmp").iterdir() if p.stat().st_size] == []
    # Receiving goes on once the room is there.
    assert store_raw(receiver.port, syntax, uid, iter([b""]))[0] != 0xA700
