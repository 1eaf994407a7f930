"""The work queue (core/work_queue): claim, the lease kept and lost, release, the worker loop."""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, select, update

from caduceus.core.clock import as_utc
from caduceus.core.db.models import TASKS
from caduceus.core.settings import Settings
from caduceus.core.states import TaskState
from caduceus.core.work_queue import (
    DISPATCH,
    DISPATCHABLE,
    LEASE,
    OWNER_SILENT_AFTER,
    PROCESS,
    PROCESSABLE,
    Job,
    Worker,
    claim,
    held_by,
    keep_lease,
    release,
    renew,
    set_suspended,
    still_mine,
)
from caduceus.core.work_queue.worker import IDLE_WAIT
from tests.support.queue import add_task


def lease_of(engine: Engine, task_id: str) -> tuple[str | None, datetime | None]:
    with engine.connect() as conn:
        row = conn.execute(
            select(TASKS.c.lease_owner, TASKS.c.lease_expires).where(TASKS.c.id == task_id)
        ).one()
    return row.lease_owner, as_utc(row.lease_expires) if row.lease_expires else None


def test_a_task_is_claimed_by_one_worker_most_urgent_first(web_engine: Engine) -> None:
    later = add_task(web_engine, priority=2)
    urgent = add_task(web_engine, priority=0)
    assert claim(web_engine, "a", DISPATCHABLE) == urgent
    assert claim(web_engine, "b", DISPATCHABLE) == later
    assert claim(web_engine, "c", DISPATCHABLE) is None  # both are held
    owner, expires = lease_of(web_engine, urgent)
    assert owner == "a" and expires is not None and expires > datetime.now(UTC)


def test_a_task_not_yet_due_or_not_of_the_queue_is_not_claimed(web_engine: Engine) -> None:
    now = datetime.now(UTC)
    add_task(web_engine, not_before=now + timedelta(hours=1))
    add_task(web_engine, action="process")
    assert claim(web_engine, "a", DISPATCHABLE, now=now) is None
    assert claim(web_engine, "a", DISPATCHABLE, now=now + timedelta(hours=2)) is not None


def test_the_predicates_say_whose_a_task_is(web_engine: Engine) -> None:
    tasks = {
        (action, state): add_task(web_engine, action=action, state=state)
        for action in ("route", "process", "both", "notification")
        for state in TaskState
    }

    def matching(predicate: object) -> set[tuple[str, str]]:
        with web_engine.connect() as conn:
            found = set(conn.execute(select(TASKS.c.id).where(predicate)).scalars())  # type: ignore[arg-type]
        return {key for key, task_id in tasks.items() if task_id in found}

    assert matching(PROCESSABLE) == {
        ("process", "queued"),
        ("process", "processing"),
        ("both", "queued"),
        ("both", "processing"),
    }
    assert matching(DISPATCHABLE) == {
        ("route", "queued"),
        ("route", "dispatching"),
        ("both", "dispatching"),
    }
    assert PROCESS.mine is PROCESSABLE and DISPATCH.mine is DISPATCHABLE


def test_renewing_keeps_the_lease_and_a_lost_one_stays_lost(web_engine: Engine) -> None:
    task_id = add_task(web_engine)
    now = datetime.now(UTC)
    assert claim(web_engine, "a", DISPATCHABLE, now=now, lease=LEASE) == task_id
    assert renew(web_engine, task_id, "a", now=now + timedelta(minutes=9), lease=LEASE)
    # Renewed: at the first lease's end the task is still a's.
    assert claim(web_engine, "b", DISPATCHABLE, now=now + timedelta(minutes=11)) is None
    # Not renewed past its end: taken over, and a's renewal and writes find it gone.
    assert claim(web_engine, "b", DISPATCHABLE, now=now + timedelta(minutes=20)) == task_id
    assert not renew(web_engine, task_id, "a")
    with web_engine.begin() as conn:
        assert not still_mine(conn, task_id, "a")
        assert still_mine(conn, task_id, "b")
        assert still_mine(conn, task_id, None)  # no owner: nothing to check
        written = conn.execute(
            update(TASKS).where(held_by(task_id, "a")).values(error="late")
        ).rowcount
    assert written == 0
    assert lease_of(web_engine, task_id)[0] == "b"


def test_keep_lease_renews_in_the_background_and_says_when_it_is_lost(
    web_engine: Engine,
) -> None:
    task_id = add_task(web_engine)
    short = timedelta(seconds=0.4)  # renewed every 0.1 s
    assert claim(web_engine, "a", DISPATCHABLE, lease=short) == task_id
    _, first = lease_of(web_engine, task_id)
    with keep_lease(web_engine, task_id, "a", short) as lost:
        time.sleep(0.6)  # longer than the lease: only renewal keeps it
        _, renewed = lease_of(web_engine, task_id)
        assert first is not None and renewed is not None and renewed > first
        assert claim(web_engine, "b", DISPATCHABLE, lease=LEASE) is None
        assert not lost.is_set()
        with web_engine.begin() as conn:  # another worker takes it over
            conn.execute(update(TASKS).where(TASKS.c.id == task_id).values(lease_owner="b"))
        assert lost.wait(2)


def test_release_frees_the_task_only_for_its_holder(web_engine: Engine) -> None:
    task_id = add_task(web_engine)
    assert claim(web_engine, "a", DISPATCHABLE) == task_id
    release(web_engine, task_id, "b")
    assert lease_of(web_engine, task_id)[0] == "a"
    release(web_engine, task_id, "a")
    assert lease_of(web_engine, task_id) == (None, None)
    assert claim(web_engine, "b", DISPATCHABLE) == task_id


def worker(engine: Engine, work: object, **kwargs: object) -> Worker:
    return Worker(
        engine,
        DISPATCH,
        "w",
        work,  # type: ignore[arg-type]
        threading.Event(),
        logging.getLogger("caduceus.test"),
        service="tester",
        idle_wait=0.01,
        **kwargs,  # type: ignore[arg-type]
    )


def test_the_worker_hands_a_claimed_task_to_its_work(
    web_engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[Job] = []

    def work(job: Job) -> str:
        seen.append(job)
        assert lease_of(web_engine, job.task_id)[0] == "w"  # held while the work runs
        with web_engine.begin() as conn:  # the work settles the task, as dispatch() does
            conn.execute(
                update(TASKS)
                .where(held_by(job.task_id, job.owner))
                .values(state=TaskState.DONE, lease_owner=None, lease_expires=None)
            )
        return TaskState.DONE

    w = worker(web_engine, work)
    assert not w.step()  # nothing to do
    task_id = add_task(web_engine)
    set_suspended(web_engine, "dispatch:somewhere", True, "test")
    with caplog.at_level(logging.INFO, "caduceus.test"):
        assert w.step()
    assert [job.task_id for job in seen] == [task_id]
    assert seen[0].owner == "w" and not seen[0].lost.is_set()
    assert seen[0].suspended == {"dispatch:somewhere"}
    assert f"task {task_id}: done" in caplog.text
    assert not w.step()


def test_a_suspended_queue_is_not_claimed_from(web_engine: Engine) -> None:
    add_task(web_engine)
    w = worker(web_engine, lambda job: "done")
    set_suspended(web_engine, "dispatch", True, "test")
    assert not w.step()
    set_suspended(web_engine, "dispatch", False, "test")
    assert w.step()


def test_a_failed_work_releases_the_task_for_the_next_worker(
    web_engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    task_id = add_task(web_engine)

    def broken(job: Job) -> str:
        raise RuntimeError("a bug")

    with caplog.at_level(logging.ERROR, "caduceus.test"):
        assert worker(web_engine, broken).step()
    assert f"task {task_id} failed in the tester" in caplog.text
    assert lease_of(web_engine, task_id) == (None, None)
    assert claim(web_engine, "next", DISPATCHABLE) == task_id


def test_a_failure_goes_to_on_failure_when_given(web_engine: Engine) -> None:
    task_id = add_task(web_engine)
    failures: list[tuple[str, str, str]] = []

    def broken(job: Job) -> str:
        raise RuntimeError("a bug")

    def on_failure(engine: Engine, failed: str, owner: str, error: Exception) -> None:
        failures.append((failed, owner, str(error)))

    assert worker(web_engine, broken, on_failure=on_failure).step()
    assert failures == [(task_id, "w", "a bug")]
    assert lease_of(web_engine, task_id)[0] == "w"  # on_failure chose not to release


def test_the_loop_survives_its_own_failures_and_stops_when_asked(
    web_engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    calls = 0
    w = worker(web_engine, lambda job: "done")

    def failing_step() -> bool:
        nonlocal calls
        calls += 1
        if calls == 3:
            w.stopping.set()
        raise RuntimeError("database gone")

    w.step = failing_step  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR, "caduceus.test"):
        w.run()
    assert calls == 3
    assert caplog.text.count("tester loop failed; retrying") == 3


def test_the_queue_defaults_are_the_settings_defaults() -> None:
    fields = Settings.model_fields
    assert fields["queue_idle_wait_seconds"].default == IDLE_WAIT
    assert LEASE.total_seconds() == fields["dispatcher_lease_seconds"].default
    assert LEASE.total_seconds() == fields["processor_lease_seconds"].default
    assert OWNER_SILENT_AFTER.total_seconds() == fields["lease_owner_silent_seconds"].default
