"""A lease whose holder is known to be dead is taken over at once; a live one never.

On this machine the holder's process is looked up in /proc (pid and start time); a holder on
another host is judged by its heartbeat only, never by whether its pid happens to run here.
"""

from __future__ import annotations

import os
import socket
import subprocess
import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, insert, select, update

from caduceus.core.db.models import SERVICE_HEARTBEATS, TASKS
from caduceus.core.lease_owners import _kernel, _start_ticks, dead_owners, this_process
from caduceus.core.work_queue import claim

SILENT = timedelta(seconds=60)
MINE = TASKS.c.state == "queued"


def dead(engine: Engine, *owners: str) -> list[str]:
    with engine.connect() as conn:
        return dead_owners(conn, owners, datetime.now(UTC), SILENT)


def local_owner(pid: int, started: str | None = None) -> str:
    return f"{socket.gethostname()}:{pid}:{_kernel()}-{started or _start_ticks(pid)}"


def a_pid_that_is_gone() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def beat(engine: Engine, host: str, pid: int, age: float) -> None:
    now = datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(
            insert(SERVICE_HEARTBEATS).values(
                service="dispatcher",
                host=host,
                pid=pid,
                started_at=now - timedelta(hours=1),
                beat_at=now - timedelta(seconds=age),
                state="running",
                restarts=0,
                detail="",
            )
        )


def test_a_process_on_this_host_is_dead_once_it_is_gone(web_engine: Engine) -> None:
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        owner = local_owner(sleeper.pid)
        assert dead(web_engine, this_process(), owner, f"{owner}:3") == []
        # The same pid started again later is another process: its holder is gone.
        assert dead(web_engine, local_owner(sleeper.pid, started="1")) == [
            local_owner(sleeper.pid, started="1")
        ]
    finally:
        sleeper.kill()
        sleeper.wait()
    assert dead(web_engine, owner, f"{owner}:3") == sorted([owner, f"{owner}:3"])


def test_a_holder_on_another_host_is_judged_by_its_heartbeat_only(web_engine: Engine) -> None:
    gone_here = a_pid_that_is_gone()  # not running here, which says nothing about "far"
    far = f"far-host:{gone_here}:0123abcd.4026531836-777"
    assert dead(web_engine, far) == [far]  # it never beat: nothing says it runs
    beat(web_engine, "far-host", gone_here, age=2)
    assert dead(web_engine, far, f"{far}:0") == []  # beats: alive, whatever /proc says here
    with web_engine.begin() as conn:
        conn.execute(update(SERVICE_HEARTBEATS).values(beat_at=datetime.now(UTC) - 2 * SILENT))
    assert dead(web_engine, far) == [far]  # silent beyond the bound
    with web_engine.begin() as conn:
        conn.execute(
            update(SERVICE_HEARTBEATS).values(beat_at=datetime.now(UTC), state="restarting")
        )
    assert dead(web_engine, far) == [far]  # its supervisor saw it die


def test_other_forms_of_owner_are_left_to_their_lease(web_engine: Engine) -> None:
    gone = a_pid_that_is_gone()
    assert dead(web_engine, "test", f"{socket.gethostname()}:{gone}", "a:b:c") == []


def add_task(engine: Engine, owner: str) -> str:
    task_id = str(uuid.uuid4())
    now = datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(
            insert(TASKS).values(
                id=task_id,
                group_key=task_id,
                created_at=now,
                updated_at=now,
                rule="r",
                action="route",
                level="series",
                state="queued",
                priority=1,
                lease_owner=owner,
                lease_expires=now + timedelta(minutes=10),
                folder=f"tasks/{task_id}",
                targets=[],
                modules=[],
                info={},
            )
        )
    return task_id


def test_claim_takes_over_a_dead_holders_task_at_once_and_a_live_ones_never(
    web_engine: Engine,
) -> None:
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        live_here = add_task(web_engine, local_owner(sleeper.pid))
        far = f"far-host:{a_pid_that_is_gone()}:0123abcd.1-5"
        beat(web_engine, "far-host", int(far.split(":")[1]), age=1)
        live_far = add_task(web_engine, far)
        # Both hold a ten-minute lease and run: nothing to take.
        assert claim(web_engine, "successor", MINE) is None
        sleeper.kill()
        sleeper.wait()
        assert claim(web_engine, "successor", MINE) == live_here
        assert claim(web_engine, "successor", MINE) is None  # the far one still beats
        with web_engine.begin() as conn:
            conn.execute(update(SERVICE_HEARTBEATS).values(beat_at=datetime.now(UTC) - 2 * SILENT))
        assert claim(web_engine, "successor", MINE) == live_far
        with web_engine.connect() as conn:
            owners = set(conn.execute(select(TASKS.c.lease_owner)).scalars())
        assert owners == {"successor"}
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
            sleeper.wait()


def test_this_process_is_named_by_host_pid_and_start() -> None:
    host, pid, rest = this_process().split(":")
    assert host == socket.gethostname() and int(pid) == os.getpid()
    assert rest.endswith(f"-{_start_ticks(os.getpid())}")
