"""The rsync target against a real OpenSSH server and the real rsync (sshd started per test)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from caduceus.core.config.models import RsyncTarget
from caduceus.core.dicom.synthetic import SeriesSpec, write_series
from caduceus.dispatcher.targets import Shipment, TargetError, plugin_for
from caduceus.dispatcher.targets.rsync import RsyncUploader
from tests.support.processes import free_port
from tests.support.sshd import Sshd, login_settings, make_key

pytestmark = pytest.mark.skipif(shutil.which("rsync") is None, reason="needs rsync (Debian: rsync)")


def target(sshd: Sshd, folder: Path, **changes: object) -> RsyncTarget:
    return RsyncTarget.model_validate(login_settings(sshd, folder, **changes))


def test_rsync_delivers_every_file_byte_for_byte_into_a_published_folder(
    sshd: Sshd, remote: Path, tmp_path: Path
) -> None:
    files = write_series(tmp_path / "task", SeriesSpec(count=5, rows=256, columns=256))
    report = plugin_for(target(sshd, remote)).send(files, Shipment("task-1"))
    assert report.accepted == files
    assert report.failed == {} and not report.interrupted
    published = remote / "task-1"
    assert sorted(p.name for p in published.iterdir()) == sorted(
        [".complete", *(f.name for f in files)]
    )
    for path in files:
        assert (published / path.name).read_bytes() == path.read_bytes()
        assert (published / path.name).stat().st_mode & 0o777 == 0o660  # as mercure sets them
    assert sorted(p.name for p in remote.iterdir()) == ["task-1"]  # no partial folder left


def test_rsync_resumes_a_partial_folder_without_sending_again_what_arrived_whole(
    sshd: Sshd, remote: Path, tmp_path: Path
) -> None:
    files = write_series(tmp_path / "task", SeriesSpec(count=4))
    partial = remote / ".task-2.partial"
    partial.mkdir()
    # What an interrupted attempt left: two whole files (rsync keeps their times), and one
    # half file, which must be replaced.
    for path in files[:2]:
        shutil.copy2(path, partial / path.name)
    (partial / files[2].name).write_bytes(b"half a file")
    kept = {path.name: (partial / path.name).stat().st_ino for path in files[:2]}
    report = RsyncUploader(target(sshd, remote)).send(files, Shipment("task-2"))
    assert report.accepted == files
    published = remote / "task-2"
    for path in files:
        assert (published / path.name).read_bytes() == path.read_bytes()
    # rsync writes a file it sends under a temporary name and renames it: the same inode
    # means the file was not sent again.
    assert {name: (published / name).stat().st_ino for name in kept} == kept


def test_rsync_counts_an_already_published_task_as_delivered(
    sshd: Sshd, remote: Path, tmp_path: Path
) -> None:
    files = write_series(tmp_path / "task", SeriesSpec(count=2))
    (remote / "task-3").mkdir()
    (remote / "task-3" / ".complete").touch()
    report = RsyncUploader(target(sshd, remote)).send(files, Shipment("task-3"))
    assert report.accepted == files
    assert [p.name for p in (remote / "task-3").iterdir()] == [".complete"]  # nothing sent again


def test_rsync_interrupted_publishes_nothing(sshd: Sshd, remote: Path, tmp_path: Path) -> None:
    files = write_series(tmp_path / "task", SeriesSpec(count=3))
    report = RsyncUploader(target(sshd, remote)).send(
        files, Shipment("task-4", interrupted=lambda: True)
    )
    assert report.interrupted
    assert report.accepted == [] and report.failed == {}
    assert not (remote / "task-4").exists()


def test_rsync_runs_mercure_complete_sh_with_the_published_folder(
    sshd: Sshd, remote: Path, tmp_path: Path
) -> None:
    record = tmp_path / "ran"
    script = remote / "mercure_complete.sh"
    script.write_text(f'#!/bin/sh\nls "$1" > {record}\necho "$1 $2" >> {record}\n')
    script.chmod(0o755)
    files = write_series(tmp_path / "task", SeriesSpec(count=2))
    uploader = RsyncUploader(target(sshd, remote, run_on_complete=True))
    assert "mercure_complete.sh is executable" in uploader.test()
    report = uploader.send(files, Shipment("task-5"))
    assert report.accepted == files
    lines = record.read_text().splitlines()
    # The script saw the whole published folder, with its marker.
    assert sorted(lines[:-1]) == sorted(f.name for f in files)
    assert lines[-1] == f"{remote / 'task-5'} rsync"


def test_rsync_without_the_completion_script_sends_nothing(
    sshd: Sshd, remote: Path, tmp_path: Path
) -> None:
    files = write_series(tmp_path / "task", SeriesSpec(count=1))
    uploader = RsyncUploader(target(sshd, remote, run_on_complete=True))
    with pytest.raises(TargetError, match=r"mercure_complete\.sh is not executable"):
        uploader.send(files, Shipment("task-6"))
    assert list(remote.iterdir()) == []


def test_rsync_failing_completion_script_fails_the_attempt_and_runs_again_on_retry(
    sshd: Sshd, remote: Path, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    script = remote / "mercure_complete.sh"
    script.write_text(f"#!/bin/sh\necho run >> {runs}\necho 'no space' >&2\nexit 4\n")
    script.chmod(0o755)
    files = write_series(tmp_path / "task", SeriesSpec(count=1))
    uploader = RsyncUploader(target(sshd, remote, run_on_complete=True))
    with pytest.raises(TargetError, match=r"mercure_complete.sh failed \(exit 4\): no space"):
        uploader.send(files, Shipment("task-7"))
    script.write_text(f"#!/bin/sh\necho run >> {runs}\n")
    assert uploader.send(files, Shipment("task-7")).accepted == files
    assert runs.read_text().splitlines() == ["run", "run"]


def test_rsync_refuses_a_server_with_another_host_key_before_logging_in(
    sshd: Sshd, remote: Path, tmp_path: Path
) -> None:
    other_key = make_key(tmp_path / "other_host_key")
    uploader = RsyncUploader(target(sshd, remote, host_key=other_key))
    files = write_series(tmp_path / "task", SeriesSpec(count=1))
    for attempt in (uploader.test, lambda: uploader.send(files, Shipment("task-8"))):
        with pytest.raises(TargetError, match=r"host key of 127\.0\.0\.1 does not match"):
            attempt()
    assert list(remote.iterdir()) == []
    assert "Accepted" not in sshd.log() and "Failed" not in sshd.log()  # no credential was sent


def test_rsync_accepts_any_host_key_only_when_told_to(sshd: Sshd, remote: Path) -> None:
    trusting = RsyncUploader(target(sshd, remote, host_key="", accept_unknown_host_key=True))
    assert "writable" in trusting.test()
    with pytest.raises(ValueError, match="host_key"):
        target(sshd, remote, host_key="", accept_unknown_host_key=False)


def test_rsync_wrong_password_fails_without_revealing_it(sshd: Sshd, remote: Path) -> None:
    # As for SFTP: sshd checks the password against the (locked) root account and refuses it;
    # keys cover the successful logins.
    password = "not-the-Passw0rd-4711"
    uploader = RsyncUploader(target(sshd, remote, private_key_file="", password=password))
    with pytest.raises(TargetError, match="authentication failed for user") as failure:
        uploader.test()
    assert password not in str(failure.value)
    assert "Failed password" in sshd.log()  # the password really was tried, through askpass


def test_rsync_dead_port_and_missing_folder_are_named(tmp_path: Path, sshd: Sshd) -> None:
    dead = RsyncTarget(
        host="127.0.0.1",
        port=free_port(),
        user="nobody",
        password="secret-pw",  # type: ignore[arg-type]
        folder="/",
        accept_unknown_host_key=True,
    )
    with pytest.raises(TargetError, match=r"connection to 127\.0\.0\.1:\d+ refused"):
        RsyncUploader(dead).test()
    missing = tmp_path / "missing"
    with pytest.raises(TargetError, match="folder does not exist"):
        RsyncUploader(target(sshd, missing)).test()
    files = write_series(tmp_path / "task", SeriesSpec(count=1))
    with pytest.raises(TargetError, match="folder does not exist"):
        RsyncUploader(target(sshd, missing)).send(files, Shipment("task-9"))
    assert not missing.exists()


def test_rsync_refuses_a_host_that_would_be_read_as_an_option(tmp_path: Path) -> None:
    settings = RsyncTarget(
        host="-oProxyCommand=touch /tmp/x",
        user="u",
        password="pw",  # type: ignore[arg-type]
        folder="/",
        accept_unknown_host_key=True,
    )
    with pytest.raises(TargetError, match="not a host name"):
        RsyncUploader(settings)
