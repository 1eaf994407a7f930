"""Several machines against one PostgreSQL and one data folder.

Cluster mode needs PostgreSQL (SQLite is one file on one host), so these tests run on
PostgreSQL only. Where the test runs as root with `ip` and `socat` (this project's machines),
each machine of the cluster test is a network namespace of its own (`ip netns`) on a bridge:
its receiver listens on its own address, PostgreSQL and the DICOM target are reached over the
bridge. Elsewhere (CI without root) the machines are process groups on 127.0.0.1, each
receiver on its own port; the test says which in its output.
"""

from __future__ import annotations

import sys
import textwrap
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydicom import dcmread
from sqlalchemy import Engine, func, select

from caduceus.core.db.models import EVENTS, SERIES, TASK_INSTANCES, TASKS
from caduceus.core.dicom.synthetic import SeriesSpec, write_series
from caduceus.router.completion import PassResult, Router
from tests.support.clock import later
from tests.support.cluster import Machine, Network, Service
from tests.support.cluster import storescu as send_to
from tests.support.processes import Caduceus, free_port, storescu
from tests.support.routing import config, router_for
from tests.support.sending import send
from tests.support.storescp import StoreSCP, start_storescp

POSTGRES_ONLY = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


def send_many(receiver: Caduceus, folder: Path, series: int, count: int) -> list[Path]:
    """Several series of several patients, sent on one association."""
    files: list[Path] = []
    for number in range(series):
        spec = SeriesSpec(count=count, rows=16, columns=16, patient_id=f"P{number % 5:03d}")
        files += write_series(folder / f"s{number:03d}", spec)
    result = storescu(receiver, folder)
    assert result.returncode == 0, result.stderr
    return files


@POSTGRES_ONLY
def test_two_routers_never_complete_the_same_series(receiver: Caduceus, tmp_path: Path) -> None:
    """Two routers run their passes at the same moment over the same 30 series: each series is
    completed by one of them, once, with one task per rule."""
    send_many(receiver, tmp_path / "sent", series=30, count=2)
    rules = {
        "ct": {"rule": "@Modality@ == 'CT'", "targets": ["pacs"]},
        "all": {"rule": "True", "targets": ["archive"]},
    }
    document = config(rules, series_complete_trigger=60)
    routers: list[Router] = [router_for(receiver), router_for(receiver)]
    results: list[PassResult] = []
    start = threading.Barrier(len(routers))
    failures: list[BaseException] = []

    def route(router: Router) -> None:
        start.wait()
        try:
            results.append(router.run_pass(document, later(61)))
        except BaseException as exc:  # reported below, not lost in the thread
            failures.append(exc)

    threads = [threading.Thread(target=route, args=(r,)) for r in routers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures
    # A series one router skipped because the other held it is seen complete on the next pass.
    results.append(routers[0].run_pass(document, later(62)))

    completed = Counter(c for r in results for c in r.completed)
    assert len(completed) == 30
    assert set(completed.values()) == {1}, "a series was completed by both routers"
    with receiver.engine().connect() as conn:
        per_series = Counter(
            (r.series_uid, r.rule) for r in conn.execute(select(TASKS.c.series_uid, TASKS.c.rule))
        )
        states = set(conn.execute(select(SERIES.c.state)).scalars())
        completions = Counter(
            conn.execute(
                select(EVENTS.c.series_id).where(EVENTS.c.kind == "series.complete")
            ).scalars()
        )
        task_count = conn.execute(select(func.count()).select_from(TASKS)).scalar_one()
    assert task_count == 60 and set(per_series.values()) == {1}
    assert states == {"complete"}
    assert len(completions) == 30 and set(completions.values()) == {1}


SLOW_COPY = """
    import os, pathlib, shutil, time
    src = pathlib.Path(os.environ["MERCURE_IN_DIR"])
    dst = pathlib.Path(os.environ["MERCURE_OUT_DIR"])
    time.sleep(1.5)  # long enough for the test to kill the processor that runs it
    for path in src.glob("*.dcm"):
        shutil.copyfile(path, dst / path.name)
"""

# Short, so that the test is quick; not shorter, so that a live worker slowed down by a busy
# machine still renews its lease (renewals come every quarter of it) and is not taken over.
LEASE_SECONDS = "5"


def write_sent(folder: Path, ct: int, mr: int) -> dict[str, list[Path]]:
    """Series to send, by SeriesInstanceUID: CT is routed as it is, MR goes through a module."""
    written: dict[str, list[Path]] = {}
    for number in range(ct + mr):
        # Large enough CT series that a dispatcher can be caught half-way through one.
        modality, count = ("CT", 100) if number < ct else ("MR", 10)
        spec = SeriesSpec(count=count, rows=16, columns=16, modality=modality)
        files = write_series(folder / f"{modality}{number}", spec)
        written[str(dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)] = files
    return written


def leases(engine: Engine) -> list[tuple[str, str]]:
    """(task, owner) of every live lease; an owner is host:pid (dispatcher) or host:pid:n."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(TASKS.c.id, TASKS.c.lease_owner).where(TASKS.c.lease_expires > datetime.now(UTC))
        )
        return [(str(r.id), str(r.lease_owner)) for r in rows]


def series_of_task(engine: Engine, task_id: str) -> str:
    with engine.connect() as conn:
        return str(conn.execute(select(TASKS.c.series_uid).where(TASKS.c.id == task_id)).scalar())


class Arrivals:
    """Which series have instances at the target so far (storescp's file names are its own)."""

    def __init__(self, scp: StoreSCP, series_of: dict[str, str]) -> None:
        self.scp = scp
        self.series_of = series_of
        self.seen: dict[Path, str] = {}

    def series(self) -> set[str]:
        for path in self.scp.files():
            if path not in self.seen:
                try:
                    self.seen[path] = self.series_of.get(uid(path), "")
                except Exception:
                    continue
        return set(self.seen.values())


def owner_pid(owner: str) -> int:
    return int(owner.split(":")[1])


@POSTGRES_ONLY
def test_two_machines_lose_no_work_when_a_processor_and_a_dispatcher_die(
    database_url: str, tmp_path: Path
) -> None:
    """Machines A and B each run a receiver (own address or port), a router, a processor and
    a dispatcher, sharing the data folder and PostgreSQL. Series go to both receivers at once;
    a processor is killed with SIGKILL while it runs a module, a dispatcher while it is half-way
    through sending a series. Every instance reaches DCMTK's storescp. Deliveries are recorded
    when a target's send ends, so what the dead dispatcher had sent is sent again by the one
    that takes over (at least once); every other task arrives exactly once. Nothing is left
    stuck once the 5 s leases expire; no series gets two tasks for one rule."""
    scp = start_storescp(tmp_path / "scp", "+xa", "+uf")  # +uf: a resend is a second file
    network, why_not = Network.create()
    print("machines in network namespaces" if network else f"plain process groups: {why_not}")
    home = tmp_path / "shared"
    env = {
        "CADUCEUS_DISPATCHER_LEASE_SECONDS": LEASE_SECONDS,
        "CADUCEUS_PROCESSOR_LEASE_SECONDS": LEASE_SECONDS,
    }
    script = tmp_path / "slow_copy.py"
    script.write_text(textwrap.dedent(SLOW_COPY))
    document = {
        "settings": {"series_complete_trigger": 1, "retry_delay": 1},
        "targets": {"scp": {**scp.target(), "host": network.host if network else "127.0.0.1"}},
        "modules": {"slow": {"command": [sys.executable, str(script)], "sandbox": False}},
        "rules": {
            "ct": {"rule": "@Modality@ == 'CT'", "targets": ["scp"]},
            "mr": {
                "rule": "@Modality@ == 'MR'",
                "action": "both",
                "modules": ["slow"],
                "targets": ["scp"],
            },
        },
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(document))
    machines = [Machine(name, home, database_url, env, network) for name in ("a", "b")]
    try:
        # The schema and the configuration first, as an installer would.
        Service(home, database_url, free_port(), extra_env=env).cli(
            "config", "import", str(tmp_path / "config.yaml")
        )
        with ThreadPoolExecutor(len(machines)) as pool:
            list(pool.map(Machine.start, machines))  # raises what a start raised
        sent = {m.name: write_sent(tmp_path / m.name, ct=3, mr=2) for m in machines}
        series_of = {
            uid(path): series
            for by_series in sent.values()
            for series, files in by_series.items()
            for path in files
        }
        codes: list[int] = []

        def send_from(machine: Machine) -> None:
            codes.append(send_to(machine.receiver, tmp_path / machine.name).returncode)

        senders = [threading.Thread(target=send_from, args=(m,)) for m in machines]
        for sender in senders:
            sender.start()

        engine = machines[0].receiver.engine()
        services = {
            s.process.pid: (m.name, command, s)
            for m in machines
            for command, s in m.services.items()
            if s.process is not None
        }
        killed: dict[str, tuple[str, set[str]]] = {}  # service -> (machine, tasks it held)
        deadline = time.monotonic() + 40
        arrivals = Arrivals(scp, series_of)
        while len(killed) < 2 and time.monotonic() < deadline:
            for task_id, owner in leases(engine):
                name, command, service = services[owner_pid(owner)]
                if command in killed:
                    continue
                # A dispatcher is killed half-way: some of its series is at the target already.
                if command == "dispatcher" and series_of_task(engine, task_id) not in (
                    arrivals.series()
                ):
                    continue
                service.kill()
                held = {t for t, o in leases(engine) if owner_pid(o) == service.process.pid}
                killed[command] = (name, held | {task_id})
            time.sleep(0.01)
        for sender in senders:
            sender.join()
        assert codes == [0, 0], "a receiver refused the series"
        assert set(killed) == {"processor", "dispatcher"}, "nothing was killed at work"

        expected_tasks = sum(len(s) for s in sent.values())

        def finished() -> bool:
            with engine.connect() as conn:
                states = conn.execute(select(TASKS.c.state)).scalars().all()
            return len(states) == expected_tasks and set(states) == {"done"}

        deadline = time.monotonic() + 45
        while not finished() and time.monotonic() < deadline:
            time.sleep(0.2)
        with engine.connect() as conn:
            rows = conn.execute(
                select(TASKS.c.id, TASKS.c.series_uid, TASKS.c.rule, TASKS.c.state)
            ).all()
        assert finished(), f"{rows}\n" + "\n".join(m.logs() for m in machines)

        per_rule = Counter((r.series_uid, r.rule) for r in rows)
        assert set(per_rule.values()) == {1}, "a series got two tasks for one rule"
        arrived = Counter(uid(path) for path in scp.files())
        assert set(arrived) == set(series_of), "an instance never reached the target"
        resent = {series_of[u] for u, n in arrived.items() if n > 1}
        held_series = {r.series_uid for r in rows if r.id in killed["dispatcher"][1]}
        assert resent <= held_series, "an instance was sent twice by dispatchers that lived"
        print(
            f"killed {killed}; {sum(arrived.values())} arrivals of {len(arrived)} instances, "
            f"{sum(n - 1 for n in arrived.values())} resent"
        )
    finally:
        for machine in machines:
            machine.stop()
        scp.stop()
        if network is not None:
            network.close()


def uid(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


@POSTGRES_ONLY
def test_a_patient_group_that_grows_while_one_router_completes_it_is_completed_whole(
    receiver: Caduceus, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Router A completes patient PAT7 while router B completes a new study of PAT7 that
    arrived meanwhile. A must not keep a patient task without that study: its images would
    never be in a patient task, since the group's next completion has the same key."""
    send(receiver, tmp_path / "s1", count=1, modality="CT", patient_id="PAT7")
    send(receiver, tmp_path / "s2", count=2, modality="MR", patient_id="PAT7")
    rules = {"history": {"rule": "True", "trigger": "patient", "targets": ["archive"]}}
    document = config(rules, study_complete_trigger=900, patient_complete_trigger=3600)
    first, second = router_for(receiver), router_for(receiver)
    first.run_pass(document, later(61))
    first.run_pass(document, later(901))
    collect = first._collect

    def meanwhile(conn: Any, config: Any, series_ids: list[int], since: Any) -> Any:
        found = collect(conn, config, series_ids, since)
        monkeypatch.setattr(first, "_collect", collect)  # once
        send(receiver, tmp_path / "s3", count=1, modality="CT", patient_id="PAT7")
        second.run_pass(document, later(961))
        second.run_pass(document, later(1900))  # the new study completes: PAT7 is active
        return found

    monkeypatch.setattr(first, "_collect", meanwhile)
    first.run_pass(document, later(901 + 3601))
    first.run_pass(document, later(1900 + 3601))
    with receiver.engine().connect() as conn:
        patient_tasks = conn.execute(select(TASKS.c.id).where(TASKS.c.level == "patient")).all()
        linked = conn.execute(select(func.count()).select_from(TASK_INSTANCES)).scalar_one()
    assert len(patient_tasks) == 1
    assert linked == 4, "the study that arrived meanwhile is missing from the patient's task"
