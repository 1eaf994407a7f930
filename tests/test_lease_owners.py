"""A lease whose holder is known to be dead is taken over at once; a live one never.

On this machine the holder's process is looked up in /proc (pid and start time); a holder on
another host is judged by its heartbeat only, never by whether its pid happens to run here,
on the database's clock, and only by a claimer that has reached the database long enough.
"""

from __future__ import annotations

import os
import socket
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, insert, select, update
from sqlalchemy.exc import OperationalError

from caduceus.core import heartbeat, lease_owners
from caduceus.core.db.models import SERVICE_HEARTBEATS, TASKS
from caduceus.core.db_contact import Contact
from caduceus.core.heartbeat import Heartbeat
from caduceus.core.lease_owners import _kernel, _start_ticks, dead_owners, this_process
from caduceus.core.work_queue import claim
from tests.support.queue import add_task

SILENT = timedelta(seconds=60)
MINE = TASKS.c.state == "queued"


def dead(engine: Engine, *owners: str) -> list[str]:
    with engine.connect() as conn:
        return dead_owners(conn, owners, SILENT)


class Clock:
    """The monotonic clock of a Contact, moved by the test instead of by waiting."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float, contact: Contact | None = None) -> None:
        """Let time pass; with `contact`, one that reaches the database every 5 s meanwhile."""
        end = self.now + seconds
        while self.now < end:
            self.now = min(end, self.now + 5)
            if contact is not None:
                contact.reached()


def steady(clock: Clock | None = None) -> Contact:
    """A claimer that has reached the database without a break for longer than SILENT."""
    clock = clock or Clock()
    contact = Contact(clock=clock)
    contact.reached()
    clock.advance(2 * SILENT.total_seconds(), contact)
    return contact


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
        contact = steady()
        assert claim(web_engine, "successor", MINE, contact=contact) is None
        sleeper.kill()
        sleeper.wait()
        assert claim(web_engine, "successor", MINE, contact=contact) == live_here
        # The far one still beats. (Another worker asks: one claims only when it holds nothing.)
        assert claim(web_engine, "third", MINE, contact=contact) is None
        with web_engine.begin() as conn:
            conn.execute(update(SERVICE_HEARTBEATS).values(beat_at=datetime.now(UTC) - 2 * SILENT))
        assert claim(web_engine, "third", MINE, contact=contact) == live_far
        with web_engine.connect() as conn:
            owners = set(conn.execute(select(TASKS.c.lease_owner)).scalars())
        assert owners == {"successor", "third"}
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
            sleeper.wait()


def test_this_process_is_named_by_host_pid_and_start() -> None:
    host, pid, rest = this_process().split(":")
    assert host == socket.gethostname() and int(pid) == os.getpid()
    assert rest.endswith(f"-{_start_ticks(os.getpid())}")


def far_beat(engine: Engine, pid: int) -> None:
    """A heartbeat from the processor of another host (the test stands in for it)."""
    heart = Heartbeat(engine, "processor")
    heart.host, heart.pid = "far-host", pid
    heart.beat()


def age_far_beats(engine: Engine, by: timedelta) -> None:
    """Beats that really are this old: this machine's clock is the database's here."""
    with engine.begin() as conn:
        conn.execute(update(SERVICE_HEARTBEATS).values(beat_at=datetime.now(UTC) - by))


def test_heartbeats_are_judged_on_the_databases_clock_not_the_hosts(
    web_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Clocks skewed beyond the bound make no live holder on another host look dead."""
    pid = a_pid_that_is_gone()
    task = add_task(web_engine, f"far-host:{pid}:0123abcd.1-5")
    # The holder's host runs two minutes behind when it beats.
    behind = datetime.now(UTC) - 2 * SILENT
    with monkeypatch.context() as patch:
        patch.setattr(heartbeat, "_now", lambda: behind)
        far_beat(web_engine, pid)
    contact = steady()
    assert claim(web_engine, "successor", MINE, contact=contact) is None
    # The claimer's host runs two minutes ahead (its lease still ten minutes long).
    ahead = datetime.now(UTC) + 2 * SILENT
    assert claim(web_engine, "successor", MINE, now=ahead, contact=contact) is None
    # Silent by the database's clock: taken over, whatever the claimer's clock says.
    age_far_beats(web_engine, 2 * SILENT)
    assert claim(web_engine, "successor", MINE, now=ahead - 4 * SILENT, contact=contact) == task


def test_after_an_outage_holders_elsewhere_wait_until_they_could_beat_again(
    web_engine: Engine, tmp_path: Path
) -> None:
    """When the database returns, every holder on another host looks silent (nobody could
    beat). A claimer takes their tasks over only once it has itself reached the database
    without a break for the bound, as they would have beaten by then if they lived."""
    pid = a_pid_that_is_gone()
    task = add_task(web_engine, f"far-host:{pid}:0123abcd.1-5")
    far_beat(web_engine, pid)
    clock = Clock()
    contact = steady(clock)
    assert claim(web_engine, "successor", MINE, contact=contact) is None
    # The database goes away for 90 s: this claimer finds it gone.
    unreachable = create_engine(f"sqlite:///{tmp_path / 'gone' / 'caduceus.db'}")
    with pytest.raises(OperationalError):
        claim(unreachable, "successor", MINE, contact=contact)
    clock.advance(90)
    age_far_beats(web_engine, timedelta(seconds=90))  # nobody could beat meanwhile
    # Back: the holder's beat is older than the bound, but the claimer waits for the bound.
    assert claim(web_engine, "successor", MINE, contact=contact) is None
    clock.advance(SILENT.total_seconds() - 5, contact)
    assert claim(web_engine, "successor", MINE, contact=contact) is None
    clock.advance(5)
    assert claim(web_engine, "successor", MINE, contact=contact) == task


def test_an_outage_seen_only_by_the_heartbeat_or_by_a_long_pause_counts_too(
    web_engine: Engine, tmp_path: Path
) -> None:
    pid = a_pid_that_is_gone()
    task = add_task(web_engine, f"far-host:{pid}:0123abcd.1-5")
    far_beat(web_engine, pid)
    age_far_beats(web_engine, 2 * SILENT)  # silent, as after an outage
    clock = Clock()
    contact = steady(clock)
    # The claiming thread was busy with a module; the heartbeat thread found the database gone.
    unreachable = create_engine(f"sqlite:///{tmp_path / 'gone' / 'caduceus.db'}")
    Heartbeat(unreachable, "processor", contact=contact).beat()
    assert claim(web_engine, "successor", MINE, contact=contact) is None
    # Reached without a break since, but nothing was heard of the database for 30 s: an
    # outage may hide there.
    clock.advance(SILENT.total_seconds(), contact)
    clock.advance(30)
    assert claim(web_engine, "successor", MINE, contact=contact) is None
    clock.advance(SILENT.total_seconds(), contact)
    assert claim(web_engine, "successor", MINE, contact=contact) == task


def test_a_process_that_proc_does_not_show_is_not_taken_for_dead(
    web_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Services running as different users under hidepid: /proc refuses (hidepid=1) or hides
    (hidepid=2) another user's process. Neither says that it ended: its task waits for the
    lease. Stood in for by a reader that fails as /proc does, since hidepid needs a /proc
    mounted with it and another user."""
    sleeper = subprocess.Popen(["sleep", "30"])
    gone = a_pid_that_is_gone()
    try:
        running, ended = local_owner(sleeper.pid), local_owner(gone, started="5")

        def refused(pid: int) -> str:
            raise PermissionError(13, "Permission denied", f"/proc/{pid}/stat")

        monkeypatch.setattr(lease_owners, "_read_stat", refused)
        assert dead(web_engine, running, ended) == []

        def hidden(pid: int) -> str:
            raise FileNotFoundError(2, "No such file or directory", f"/proc/{pid}/stat")

        monkeypatch.setattr(lease_owners, "_read_stat", hidden)
        # Hidden, but a signal 0 finds it: it runs. The ended one is not found either way.
        assert dead(web_engine, running, ended) == [ended]
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_task_left_leased_to_its_own_worker_is_claimed_again_at_once(
    web_engine: Engine,
) -> None:
    """A database error that also kept the worker from releasing its task (the dispatcher's
    send was recorded, then the connection dropped twice) leaves the task leased to that
    worker's own name for the whole lease: the worker, which claims only when it holds
    nothing, takes it again at its next claim. Nobody else does."""
    me = this_process()
    task_id = add_task(web_engine, me)
    assert claim(web_engine, f"{me}-other", MINE, contact=steady()) is None
    assert claim(web_engine, me, MINE, contact=steady()) == task_id
