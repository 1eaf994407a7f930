"""Receiver workers die with their parent, and a new receiver takes the port over."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from tests.support.dicomfiles import stored_instances
from tests.support.processes import Caduceus, free_port, storescu
from tests.support.proctree import alive, children


def test_killed_parent_takes_its_workers_along(
    tmp_path: Path, sqlite_url: str, caduceus_factory: list[Caduceus], small_series: list[Path]
) -> None:
    port = free_port()
    first = Caduceus(
        tmp_path / "home", sqlite_url, port, extra_env={"CADUCEUS_RECEIVER_WORKERS": "2"}
    )
    caduceus_factory.append(first)
    first.start()
    assert first.process is not None
    deadline = time.monotonic() + 10
    while len(workers := children(first.process.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(workers) == 2

    os.kill(first.process.pid, signal.SIGKILL)
    first.process.wait()
    deadline = time.monotonic() + 15
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    orphans = [pid for pid in workers if alive(pid)]
    for pid in orphans:  # do not leave them behind for the next tests
        os.kill(pid, signal.SIGKILL)
    assert not orphans, "workers outlived their parent"

    second = Caduceus(tmp_path / "home", sqlite_url, port)
    caduceus_factory.append(second)
    second.start()  # waits for the port: it binds where the first one listened
    result = storescu(second, small_series[0])
    assert result.returncode == 0, result.stderr
    assert len(stored_instances(second.engine())) == 1
