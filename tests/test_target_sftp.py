"""The SFTP target against a real OpenSSH server (sshd with its own config, started per test)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from caduceus.core.config.models import SftpTarget
from caduceus.core.dicom.synthetic import SeriesSpec, write_series
from caduceus.dispatcher.targets import Shipment, TargetError, plugin_for
from caduceus.dispatcher.targets.sftp import SftpUploader
from tests.support.interrupt import after
from tests.support.processes import free_port
from tests.support.sshd import Sshd, login_settings, make_key

MISMATCH = re.escape("host key of 127.0.0.1 does not match the configured one")


def target(sshd: Sshd, folder: Path, **changes: object) -> SftpTarget:
    return SftpTarget.model_validate(login_settings(sshd, folder, **changes))


def test_sftp_delivers_every_file_byte_for_byte_into_a_published_folder(
    sshd: Sshd, remote: Path, tmp_path: Path
) -> None:
    files = write_series(tmp_path / "task", SeriesSpec(count=5, rows=512, columns=512))
    report = plugin_for(target(sshd, remote)).send(files, Shipment("task-1"))
    assert report.accepted == files
    assert report.failed == {}
    published = remote / "task-1"
    assert sorted(p.name for p in published.iterdir()) == sorted(
        [".complete", *(f.name for f in files)]
    )
    for path in files:
        assert (published / path.name).read_bytes() == path.read_bytes()
    assert (published / ".complete").stat().st_size == 0
    assert sorted(p.name for p in remote.iterdir()) == ["task-1"]  # no partial folder left


def test_sftp_counts_an_already_published_task_as_delivered(
    sshd: Sshd, remote: Path, tmp_path: Path
) -> None:
    files = write_series(tmp_path / "task", SeriesSpec(count=3))
    (remote / "task-2").mkdir()
    (remote / "task-2" / ".complete").touch()
    report = SftpUploader(target(sshd, remote)).send(files, Shipment("task-2"))
    assert report.accepted == files
    assert report.failed == {}
    assert [p.name for p in (remote / "task-2").iterdir()] == [".complete"]  # nothing sent again


def test_sftp_replaces_a_partial_folder_left_by_a_failed_attempt(
    sshd: Sshd, remote: Path, tmp_path: Path
) -> None:
    files = write_series(tmp_path / "task", SeriesSpec(count=2))
    leftover = remote / ".task-3.partial"
    leftover.mkdir()
    (leftover / "stale.dcm").write_bytes(b"half a file")
    report = SftpUploader(target(sshd, remote)).send(files, Shipment("task-3"))
    assert report.accepted == files
    assert sorted(p.name for p in (remote / "task-3").iterdir()) == sorted(
        [".complete", *(f.name for f in files)]
    )
    assert not leftover.exists()


def test_sftp_publishes_nothing_when_a_file_fails(sshd: Sshd, remote: Path, tmp_path: Path) -> None:
    files = write_series(tmp_path / "task", SeriesSpec(count=3))
    files[1].unlink()  # cannot be read, so cannot be uploaded
    report = SftpUploader(target(sshd, remote)).send(files, Shipment("task-4"))
    assert report.accepted == []
    assert list(report.failed) == [files[1]]
    assert "No such file" in report.failed[files[1]]
    assert list(remote.iterdir()) == []  # neither a published nor a partial folder


def test_sftp_interrupted_publishes_nothing(sshd: Sshd, remote: Path, tmp_path: Path) -> None:
    files = write_series(tmp_path / "task", SeriesSpec(count=4))
    report = SftpUploader(target(sshd, remote)).send(
        files, Shipment("task-8", interrupted=after(2))
    )
    assert report.interrupted
    assert report.accepted == [] and report.failed == {}
    assert list(remote.iterdir()) == []  # neither a published nor a partial folder


def test_sftp_refuses_a_server_with_another_host_key_before_logging_in(
    sshd: Sshd, remote: Path, tmp_path: Path
) -> None:
    other_key = make_key(tmp_path / "other_host_key")
    uploader = SftpUploader(target(sshd, remote, host_key=other_key))
    files = write_series(tmp_path / "task", SeriesSpec(count=1))
    for attempt in (uploader.test, lambda: uploader.send(files, Shipment("task-5"))):
        with pytest.raises(TargetError, match=MISMATCH):
            attempt()
    assert list(remote.iterdir()) == []
    assert "Accepted" not in sshd.log() and "Failed" not in sshd.log()  # no credential was sent


def test_sftp_accepts_any_host_key_only_when_told_to(sshd: Sshd, remote: Path) -> None:
    trusting = SftpUploader(target(sshd, remote, host_key="", accept_unknown_host_key=True))
    assert "writable" in trusting.test()
    with pytest.raises(ValueError, match="host_key"):  # the settings refuse a target with neither
        target(sshd, remote, host_key="", accept_unknown_host_key=False)


def test_sftp_wrong_password_fails_without_revealing_it(sshd: Sshd, remote: Path) -> None:
    # A successful password login would need root's password, and the system's accounts are
    # not changed for a test; keys cover the successful logins. Here sshd checks the password
    # against the (locked) root account and refuses it.
    password = "not-the-Passw0rd-4711"
    uploader = SftpUploader(
        target(sshd, remote, private_key_file="", password=password, host_key=sshd.host_key)
    )
    with pytest.raises(TargetError, match="authentication failed for user") as failure:
        uploader.test()
    assert password not in str(failure.value)
    assert "Failed password" in sshd.log()  # the password method was really tried


def test_sftp_refused_key_fails_authentication(sshd: Sshd, remote: Path, tmp_path: Path) -> None:
    make_key(tmp_path / "stranger_key")
    uploader = SftpUploader(target(sshd, remote, private_key_file=str(tmp_path / "stranger_key")))
    with pytest.raises(TargetError, match="authentication failed for user"):
        uploader.test()
    assert list(remote.iterdir()) == []


def test_sftp_missing_private_key_file_is_named(sshd: Sshd, remote: Path, tmp_path: Path) -> None:
    missing = tmp_path / "no_such_key"
    uploader = SftpUploader(target(sshd, remote, private_key_file=str(missing)))
    with pytest.raises(TargetError, match=re.escape(f"cannot read private key file {missing}")):
        uploader.test()


def test_sftp_dead_port_is_reported_as_refused(tmp_path: Path) -> None:
    settings = SftpTarget(
        host="127.0.0.1",
        port=free_port(),
        user="nobody",
        password="secret-pw",  # type: ignore[arg-type]
        folder="/",
        accept_unknown_host_key=True,
    )
    uploader = SftpUploader(settings)
    with pytest.raises(TargetError, match=r"connection to 127\.0\.0\.1:\d+ refused"):
        uploader.test()
    with pytest.raises(TargetError, match="refused"):
        uploader.send([tmp_path], Shipment("task-6"))


def test_sftp_test_checks_the_folder(sshd: Sshd, remote: Path) -> None:
    message = SftpUploader(target(sshd, remote)).test()
    assert (
        message == f"logged in as {sshd.user} on 127.0.0.1:{sshd.port}; folder {remote} is writable"
    )
    assert list(remote.iterdir()) == []  # the probe file is removed again
    missing = remote / "missing"
    not_there = re.escape(f"folder {missing} does not exist on 127.0.0.1")
    with pytest.raises(TargetError, match=not_there):
        SftpUploader(target(sshd, missing)).test()
    (remote / "plain").write_text("not a folder")
    with pytest.raises(TargetError, match="is not a folder"):
        SftpUploader(target(sshd, remote / "plain")).test()


def test_sftp_exclude_keeps_back_only_the_matching_files(
    sshd: Sshd, remote: Path, tmp_path: Path
) -> None:
    files = write_series(tmp_path / "task", SeriesSpec(count=3))
    uploader = SftpUploader(target(sshd, remote, exclude=["00002.dcm", "*.txt"]))
    report = uploader.send(files, Shipment("task-9"))
    assert report.complete and report.accepted == [files[0], files[2]]
    assert sorted(p.name for p in (remote / "task-9").iterdir()) == [
        ".complete",
        "00001.dcm",
        "00003.dcm",
    ]
