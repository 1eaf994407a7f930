"""`caduceus run` as a supervisor, the settings, and the command line tools."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import inspect

from caduceus.core.db.engine import make_engine
from caduceus.core.db.migrate import alembic_config, upgrade
from tests.support.dicomfiles import stored_instances
from tests.support.processes import Caduceus, free_port, require, run
from tests.support.proctree import children
from tests.support.waiting import wait_for_port

CADUCEUS = [sys.executable, "-m", "caduceus"]


def receiver_pid(supervisor_pid: int) -> int:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for child in children(supervisor_pid):
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            if b"receiver" in cmdline:
                return child
        time.sleep(0.1)
    raise AssertionError("the supervisor started no receiver")


def test_run_starts_restarts_and_stops_the_services(
    tmp_path: Path, database_url: str, caduceus_factory: list[Caduceus], small_series: list[Path]
) -> None:
    instance = Caduceus(tmp_path / "home", database_url, free_port())
    caduceus_factory.append(instance)
    instance.start("run")
    assert instance.process is not None
    echo = [require("echoscu"), "-aec", "CADUCEUS", "127.0.0.1", str(instance.port)]
    assert run(echo).returncode == 0

    # A service that dies is started again.
    first = receiver_pid(instance.process.pid)
    os.kill(first, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        second = receiver_pid(instance.process.pid)
        if second != first:
            break
        time.sleep(0.2)
    assert second != first
    wait_for_port(instance.port)
    result = run(
        [
            require("storescu"),
            "-aec",
            "CADUCEUS",
            "127.0.0.1",
            str(instance.port),
            *map(str, small_series[:3]),
        ]
    )
    assert result.returncode == 0, result.stderr
    assert len(stored_instances(instance.engine())) == 3

    # SIGTERM stops everything cleanly.
    assert instance.stop() == 0
    assert (
        not Path(f"/proc/{second}").exists()
        or b"zombie" in Path(f"/proc/{second}/status").read_bytes()
    )
    assert "receiver exited with code -9" in instance.log()


def service_pid(supervisor_pid: int, name: str) -> int | None:
    for child in children(supervisor_pid):
        try:
            argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        except FileNotFoundError:
            continue
        if argv[1:4] == [b"-m", b"caduceus", name.encode()]:
            return child
    return None


def test_run_restarts_a_service_that_ran_well_at_once(
    tmp_path: Path, sqlite_url: str, caduceus_factory: list[Caduceus]
) -> None:
    """The router of a real `caduceus run` is killed four times, each time after it ran well:
    it is back at once each time (before the fix: after 1, 2, 4, then 8 s)."""
    grace = 2.0
    instance = Caduceus(
        tmp_path / "home",
        sqlite_url,
        free_port(),
        extra_env={"CADUCEUS_SUPERVISOR_START_GRACE_SECONDS": str(grace)},
    )
    caduceus_factory.append(instance)
    instance.start("run")
    assert instance.process is not None
    supervisor = instance.process.pid
    for kill in range(4):
        deadline = time.monotonic() + 60
        while (router := service_pid(supervisor, "router")) is None:
            assert time.monotonic() < deadline, "no router runs"
            time.sleep(0.05)
        time.sleep(grace + 0.5)  # it runs well past its start
        os.kill(router, signal.SIGKILL)
        killed = time.monotonic()
        while service_pid(supervisor, "router") in (None, router):
            assert time.monotonic() - killed < 3, f"kill {kill + 1}: not restarted at once"
            time.sleep(0.05)
    log = instance.log()
    assert log.count("router exited with code -9 after running") == 4
    assert log.count("; restarting at once") >= 4


def test_a_service_failing_at_start_is_restarted_ever_more_slowly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A real child that dies right at its start (here `caduceus` given a service it does not
    know) is backed off: 0.5, 1, 2, 4 s, and the supervisor says why."""
    import re
    import threading

    from caduceus.supervisor.supervisor import Supervisor

    supervisor = Supervisor(("no-such-service",), start_grace=10)
    stop = threading.Timer(12, lambda: setattr(supervisor, "stopping", True))
    stop.start()
    caplog.set_level("INFO", logger="caduceus.supervisor")
    try:
        assert supervisor.run() == 0
    finally:
        stop.cancel()
    lines = [r.getMessage() for r in caplog.records if "exited with code" in r.getMessage()]
    assert lines and all("after its start (failing at start" in line for line in lines)
    delays = [float(re.findall(r"restarting in ([\d.]+) s", line)[0]) for line in lines]
    assert delays[:4] == [0.5, 1.0, 2.0, 4.0][: len(delays[:4])]
    assert len(delays) >= 3, lines


def test_settings_from_file_and_environment(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "caduceus.toml").write_text('ae_title = "FROMFILE"\ndicom_port = 4242\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("CADUCEUS_")}
    env["CADUCEUS_HOME"] = str(home)
    shown = json.loads(run([*CADUCEUS, "settings"], env=env).stdout)
    assert shown["ae_title"] == "FROMFILE" and shown["dicom_port"] == 4242
    env["CADUCEUS_AE_TITLE"] = "FROMENV"  # the environment wins over the file
    env["CADUCEUS_DATABASE_URL"] = "postgresql://caduceus:s3cret@db.example/caduceus"
    shown = json.loads(run([*CADUCEUS, "settings"], env=env).stdout)
    assert shown["ae_title"] == "FROMENV"
    assert "s3cret" not in json.dumps(shown)
    env["CADUCEUS_AE_TITLE"] = "WAY_TOO_LONG_AE_TITLE"
    result = run([*CADUCEUS, "settings"], env=env)
    assert result.returncode == 2
    assert "ae_title" in result.stdout and "16" in result.stdout


def test_send_command_sends_a_folder(receiver: Caduceus, small_series: list[Path]) -> None:
    result = receiver.cli("send", str(small_series[0].parent), "--port", str(receiver.port))
    assert f"sent {len(small_series)}, failed 0" in result.stdout
    assert len(stored_instances(receiver.engine())) == len(small_series)


def test_send_command_reports_an_unreachable_receiver(
    tmp_path: Path, small_series: list[Path]
) -> None:
    port = free_port()
    result = run([*CADUCEUS, "send", str(small_series[0]), "--port", str(port)])
    assert result.returncode == 1
    assert "send failed" in result.stdout and str(port) in result.stdout


def test_send_command_reports_a_receiver_that_stops_answering(small_series: list[Path]) -> None:
    """A receiver that aborts mid-series, and one that stops answering: the send ends with an
    error naming what was not confirmed, instead of hanging."""
    from tests.support.flaky_scp import start_flaky_scp

    aborting = start_flaky_scp()
    aborting.abort_at = {1: 3}
    silent = start_flaky_scp(delay=30)
    try:
        folder = str(small_series[0].parent)
        result = run(
            [*CADUCEUS, "send", folder, "--port", str(aborting.port), "--called-aet", "FLAKY"]
        )
        assert result.returncode == 1
        assert f"sent 2, failed {len(small_series) - 2}" in result.stdout
        assert "association lost" in result.stdout
        result = run(
            [
                *CADUCEUS,
                "send",
                folder,
                "--port",
                str(silent.port),
                "--called-aet",
                "FLAKY",
                "--timeout",
                "2",
            ]
        )
        # Without a working limit, ten instances at 30 s each outlast run()'s 120 s.
        assert result.returncode == 1
        assert f"sent 0, failed {len(small_series)}" in result.stdout
        assert "timeout" in result.stdout
    finally:
        aborting.stop()
        silent.stop()


def test_send_command_skips_files_that_are_not_dicom(
    receiver: Caduceus, tmp_path: Path, small_series: list[Path]
) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "notes.txt").write_text("not an image")
    (folder / "a.dcm").write_bytes(small_series[0].read_bytes())
    result = receiver.cli("send", str(folder), "--port", str(receiver.port))
    assert "sent 1, failed 0, skipped 1" in result.stdout
    assert "notes.txt" in result.stdout


def test_migrations_match_the_models_and_run_twice(database_url: str) -> None:
    engine = make_engine(database_url.replace("postgresql://", "postgresql+psycopg://"))
    upgrade(engine)
    upgrade(engine)  # a second run (another service starting) changes nothing
    assert {"associations", "studies", "series", "instances", "events", "alembic_version"} <= set(
        inspect(engine).get_table_names()
    )
    command.check(alembic_config(engine))  # raises if the models and migrations disagree
    command.downgrade(alembic_config(engine), "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    engine.dispose()


@pytest.mark.parametrize("args", [["--help"], ["series", "--help"], ["send", "--help"]])
def test_help_works(args: list[str]) -> None:
    result = run([*CADUCEUS, *args])
    assert result.returncode == 0 and "Usage" in result.stdout
