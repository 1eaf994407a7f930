"""Fault campaign: does caduceus lose or strand an acknowledged instance while things break?

    .venv/bin/python -m bench.faults                          # one hour on SQLite
    .venv/bin/python -m bench.faults --duration 180 --database postgresql

A real `caduceus run` (every service, in its own process group) receives CT series from
several DCMTK storescu senders without pause and routes each to a DCMTK storescp target
(+uf: a resent instance is a second file). Meanwhile, at random (seeded) moments:

* one service at a time is SIGKILLed (--kill-every seconds on average);
* the target is stopped for --outage seconds, once per --outage-period;
* PostgreSQL only: every backend of the campaign's database is terminated
  (pg_terminate_backend) every --terminate-every seconds on average;
* the whole process group of `caduceus run` is SIGKILLed and started again, --group-kills
  times, spread over the run.

An instance counts as acknowledged when storescu reports a successful C-STORE response for
it. When the time is up the load stops, every fault is undone, and the campaign waits (up to
--drain seconds) until every acknowledged instance is at the target. It then checks that
nothing is stuck (every task done; no series still waiting) and prints a summary: acknowledged,
arrived, missing (must be 0), arrived more than once (allowed: at-least-once), faults applied,
service restarts seen by the supervisor, tasks by state. The summary is also written to
bench/results/faults-<time>.json. Exit status 1 when an acknowledged instance is missing or
something is stuck.

A full disk is not part of the campaign: it needs a small file system of its own (tests cover
the reserve). Everything runs in a temporary folder (kept with --keep) on free ports.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from pydicom import dcmread
from sqlalchemy import Engine, create_engine, func, make_url, select, text

from caduceus.core.db.engine import make_engine
from caduceus.core.db.models import SERIES, TASKS
from caduceus.core.dicom.synthetic import SeriesSpec, write_series
from caduceus.core.service_names import SERVICES

LOCALHOST = "127.0.0.1"
RESULTS = Path(__file__).parent / "results"
DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOCALHOST, 0))
        return int(sock.getsockname()[1])


def tool(name: str) -> str:
    """A DCMTK tool from the system, never the virtualenv's pynetdicom script of that name."""
    venv = Path(sys.prefix) / "bin"
    path = os.pathsep.join(
        d for d in os.environ.get("PATH", os.defpath).split(os.pathsep) if Path(d) != venv
    )
    found = shutil.which(name, path=path)
    if found is None:
        raise SystemExit(f"{name} is not installed (Debian package dcmtk)")
    return found


@dataclass
class Tally:
    """What happened, shared by the threads."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    acknowledged: set[str] = field(default_factory=set)
    offered: int = 0
    failed_associations: int = 0
    kills: Counter[str] = field(default_factory=Counter)
    outages: int = 0
    terminations: int = 0
    terminated_backends: int = 0
    group_kills: int = 0
    events: list[str] = field(default_factory=list)

    def note(self, message: str) -> None:
        stamp = datetime.now(UTC).strftime("%H:%M:%S")
        with self.lock:
            self.events.append(f"{stamp} {message}")
        print(f"[{stamp}] {message}", flush=True)


class Campaign:
    def __init__(self, args: argparse.Namespace, workdir: Path):
        self.args = args
        self.workdir = workdir
        self.random = random.Random(args.seed)
        self.tally = Tally()
        self.stop_load = threading.Event()
        self.stop_faults = threading.Event()
        self.dicom_port = free_port()
        self.target_port = free_port()
        self.target_dir = workdir / "target"
        self.target_dir.mkdir()
        self.home = workdir / "home"
        self.admin: Engine | None = None
        self.database_url = self._database()
        self.run: subprocess.Popen[bytes] | None = None
        self.target: subprocess.Popen[bytes] | None = None
        self.run_lock = threading.Lock()
        self.uids_by_file: dict[str, str] = {}

    # -- the pieces ------------------------------------------------------------------------

    def _database(self) -> str:
        if self.args.database == "sqlite":
            return f"sqlite:///{self.home / 'caduceus.db'}"
        server = make_url(self.args.postgres.replace("postgresql://", "postgresql+psycopg://"))
        self.db_name = f"caduceus_faults_{uuid.uuid4().hex[:10]}"
        self.admin = create_engine(server, isolation_level="AUTOCOMMIT")
        with self.admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{self.db_name}"'))
        return server.set(database=self.db_name).render_as_string(hide_password=False)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CADUCEUS_")}
        env.update(
            CADUCEUS_HOME=str(self.home),
            CADUCEUS_DATABASE_URL=self.database_url,
            CADUCEUS_DICOM_HOST=LOCALHOST,
            CADUCEUS_DICOM_PORT=str(self.dicom_port),
            CADUCEUS_WEB_HOST=LOCALHOST,
            CADUCEUS_WEB_PORT=str(free_port()),
            CADUCEUS_RECEIVER_WORKERS=str(self.args.receiver_workers),
            CADUCEUS_RECEIVER_DISK_RESERVE_MB="0",
            # A process kill keeps the page cache: fsync guards against power loss only.
            CADUCEUS_FSYNC="false",
        )
        return env

    def start_run(self, config: Path | None = None) -> None:
        command = [sys.executable, "-m", "caduceus", "run"]
        if config is not None:
            command += ["--config", str(config)]
        with (self.workdir / "run.log").open("ab") as log:
            self.run = subprocess.Popen(
                command,
                env=self.env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def start_target(self) -> None:
        with (self.workdir / "storescp.log").open("ab") as log:
            self.target = subprocess.Popen(
                [
                    *(tool("storescp"), "-aet", "TARGET", "+uf", "+xa"),
                    *("-od", str(self.target_dir), str(self.target_port)),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def stop_target(self) -> None:
        if self.target is not None and self.target.poll() is None:
            self.target.kill()
            self.target.wait()

    def service_pids(self) -> dict[str, int]:
        """The services `caduceus run` runs now, by name."""
        if self.run is None:
            return {}
        found: dict[str, int] = {}
        path = Path(f"/proc/{self.run.pid}/task/{self.run.pid}/children")
        with contextlib.suppress(OSError):
            for pid in map(int, path.read_text().split()):
                with contextlib.suppress(OSError):
                    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                    if argv[1:3] == [b"-m", b"caduceus"] and len(argv) > 3:
                        found[argv[3].decode()] = pid
        return found

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if set(self.service_pids()) == set(SERVICES):
                with (
                    contextlib.suppress(OSError),
                    socket.create_connection((LOCALHOST, self.dicom_port), timeout=1),
                ):
                    return
            time.sleep(0.3)
        raise SystemExit(f"caduceus run did not come up; see {self.workdir / 'run.log'}")

    def configuration(self) -> Path:
        document = {
            "settings": {
                "series_complete_trigger": self.args.trigger,
                "retry_delay": 5,
                "retry_max": 50,
            },
            "targets": {
                "target": {
                    "type": "dicom",
                    "host": LOCALHOST,
                    "port": self.target_port,
                    "called_aet": "TARGET",
                }
            },
            "rules": {"all": {"rule": "True", "targets": ["target"]}},
        }
        path = self.workdir / "config.yaml"
        path.write_text(yaml.safe_dump(document))
        return path

    # -- load ------------------------------------------------------------------------------

    def sender(self, number: int) -> None:
        storescu = tool("storescu")
        sent = 0
        while not self.stop_load.is_set():
            folder = self.workdir / "series" / f"{number}-{sent}"
            files = write_series(
                folder,
                SeriesSpec(count=self.args.series_size, rows=64, columns=64, modality="CT"),
            )
            for path in files:
                uid = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
                self.uids_by_file[str(path)] = uid
            result = subprocess.run(
                [
                    *(storescu, "-v", "-to", "20", "-ta", "20", "-td", "30", "-aec", "CADUCEUS"),
                    *("+sd", LOCALHOST, str(self.dicom_port), str(folder)),
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            acknowledged = acknowledged_files(result.stdout + result.stderr)
            with self.tally.lock:
                self.tally.offered += len(files)
                self.tally.acknowledged.update(self.uids_by_file[p] for p in acknowledged)
                if result.returncode != 0:
                    self.tally.failed_associations += 1
            sent += 1
            if result.returncode != 0:
                self.stop_load.wait(0.5)  # the receiver is restarting

    # -- faults ----------------------------------------------------------------------------

    def kill_services(self) -> None:
        while not self.stop_faults.wait(self.random.expovariate(1 / self.args.kill_every)):
            with self.run_lock:
                pids = self.service_pids()
                if not pids:
                    continue
                name = self.random.choice(sorted(pids))
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pids[name], signal.SIGKILL)
            with self.tally.lock:
                self.tally.kills[name] += 1
            self.tally.note(f"SIGKILL {name} (pid {pids[name]})")

    def target_outages(self) -> None:
        period = self.args.outage_period
        while not self.stop_faults.wait(self.random.uniform(0.2, 0.6) * period):
            self.stop_target()
            self.tally.note(f"target down for {self.args.outage:.0f} s")
            with self.tally.lock:
                self.tally.outages += 1
            self.stop_faults.wait(self.args.outage)
            self.start_target()
            self.tally.note("target up again")
            self.stop_faults.wait(period * 0.4)

    def terminate_backends(self) -> None:
        assert self.admin is not None
        while not self.stop_faults.wait(self.random.expovariate(1 / self.args.terminate_every)):
            with self.admin.connect() as conn:
                count = len(
                    conn.execute(
                        text(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE datname = :db AND pid <> pg_backend_pid()"
                        ),
                        {"db": self.db_name},
                    ).all()
                )
            with self.tally.lock:
                self.tally.terminations += 1
                self.tally.terminated_backends += count
            self.tally.note(f"terminated {count} PostgreSQL backend(s)")

    def group_kills(self) -> None:
        count = self.args.group_kills
        if count <= 0:
            return
        spacing = self.args.duration / (count + 1)
        for _ in range(count):
            if self.stop_faults.wait(spacing * self.random.uniform(0.7, 1.3)):
                return
            with self.run_lock:
                assert self.run is not None
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.run.pid, signal.SIGKILL)
                self.run.wait()
                self.tally.note("SIGKILL the whole process group of caduceus run; restarting")
                with self.tally.lock:
                    self.tally.group_kills += 1
                time.sleep(1)
                self.start_run()

    # -- the run ---------------------------------------------------------------------------

    def execute(self) -> dict[str, Any]:
        self.start_target()
        self.start_run(self.configuration())
        self.wait_ready()
        self.tally.note(f"caduceus run is up ({self.args.database}); load and faults start")
        began = time.monotonic()
        load = [
            threading.Thread(target=self.sender, args=(n,), daemon=True)
            for n in range(self.args.senders)
        ]
        faults = [
            threading.Thread(target=self.kill_services, daemon=True),
            threading.Thread(target=self.target_outages, daemon=True),
            threading.Thread(target=self.group_kills, daemon=True),
        ]
        if self.args.database == "postgresql":
            faults.append(threading.Thread(target=self.terminate_backends, daemon=True))
        for thread in load + faults:
            thread.start()
        self.stop_load.wait(self.args.duration)
        self.stop_faults.set()
        self.stop_load.set()
        for thread in faults:
            thread.join(self.args.outage + 60)
        for thread in load:
            thread.join(120)
        loaded = time.monotonic() - began
        # Undo every fault: the target up, every service running.
        if self.target is None or self.target.poll() is not None:
            self.start_target()
        self.tally.note("load and faults stopped; waiting for the queue to drain")
        drain_began = time.monotonic()
        missing, arrivals = self.drain()
        summary = self.summary(loaded, missing, arrivals)
        summary["drain_seconds"] = round(time.monotonic() - drain_began)
        return summary

    def arrived(self, seen: dict[Path, str]) -> Counter[str]:
        for path in self.target_dir.iterdir():
            if path in seen or path.name.startswith("."):
                continue
            try:
                seen[path] = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
            except Exception:  # still being written: read on the next look
                continue
        return Counter(seen.values())

    def drain(self) -> tuple[set[str], Counter[str]]:
        seen: dict[Path, str] = {}
        deadline = time.monotonic() + self.args.drain
        while True:
            arrivals = self.arrived(seen)
            missing = self.tally.acknowledged - set(arrivals)
            if not missing and not self.unfinished():
                return missing, arrivals
            if time.monotonic() > deadline:
                return missing, arrivals
            time.sleep(2)

    def engine(self) -> Engine:
        return make_engine(self.database_url.replace("postgresql://", "postgresql+psycopg://"))

    def unfinished(self) -> dict[str, int]:
        """Tasks not done, and series not yet routed: what would be stuck if it stayed."""
        engine = self.engine()
        try:
            with engine.connect() as conn:
                tasks = dict(
                    conn.execute(
                        select(TASKS.c.state, func.count())
                        .where(TASKS.c.state != "done")
                        .group_by(TASKS.c.state)
                    ).all()
                )
                waiting = conn.execute(
                    select(func.count()).where(SERIES.c.state == "receiving")
                ).scalar_one()
        finally:
            engine.dispose()
        if waiting:
            tasks["series still receiving"] = waiting
        return {str(k): int(v) for k, v in tasks.items()}

    def summary(self, loaded: float, missing: set[str], arrivals: Counter[str]) -> dict[str, Any]:
        engine = self.engine()
        try:
            with engine.connect() as conn:
                states = dict(
                    conn.execute(select(TASKS.c.state, func.count()).group_by(TASKS.c.state)).all()
                )
        finally:
            engine.dispose()
        log = (self.workdir / "run.log").read_text(errors="replace")
        acknowledged = self.tally.acknowledged
        return {
            "database": self.args.database,
            "seconds_under_load": round(loaded),
            "senders": self.args.senders,
            "instances_offered": self.tally.offered,
            "instances_acknowledged": len(acknowledged),
            "acknowledged_arrived": len(acknowledged & set(arrivals)),
            "acknowledged_missing": len(missing),
            "arrived_more_than_once": sum(1 for n in arrivals.values() if n > 1),
            "files_at_target": sum(arrivals.values()),
            "failed_associations": self.tally.failed_associations,
            "service_kills": dict(self.tally.kills),
            "target_outages": self.tally.outages,
            "postgres_terminations": self.tally.terminations,
            "postgres_backends_terminated": self.tally.terminated_backends,
            "process_group_kills": self.tally.group_kills,
            "restarts_at_once": log.count("restarting at once"),
            "restarts_backed_off": len(re.findall(r"restarting in [\d.]+ ?s", log)),
            "tasks_by_state": {str(k): int(v) for k, v in states.items()},
            "stuck": self.unfinished(),
        }

    def close(self) -> None:
        if self.run is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.run.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.run.wait(30)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.run.pid, signal.SIGKILL)
        self.stop_target()
        if self.admin is not None:
            with self.admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)'))
            self.admin.dispose()


ACK = re.compile(r"Received Store Response \((Success|Warning[^)]*)\)")


def acknowledged_files(output: str) -> list[str]:
    """The files storescu -v reports a successful (or warning) C-STORE response for."""
    current: str | None = None
    found = []
    for line in output.splitlines():
        if "Sending file: " in line:
            current = line.split("Sending file: ", 1)[1].strip()
        elif current is not None and ACK.search(line):
            found.append(current)
            current = None
    return found


@contextlib.contextmanager
def workspace(keep: bool) -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="caduceus-faults-"))
    try:
        yield folder
    finally:
        if keep:
            print(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=3600, help="seconds of load and faults")
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--postgres", default=DEFAULT_POSTGRES, help="server for --database")
    parser.add_argument("--senders", type=int, default=2, help="storescu senders at once")
    parser.add_argument("--series-size", type=int, default=10, help="instances per series")
    parser.add_argument("--trigger", type=int, default=2, help="series complete after (s)")
    parser.add_argument("--receiver-workers", type=int, default=2)
    parser.add_argument("--kill-every", type=float, default=20, help="mean s between kills")
    parser.add_argument("--outage", type=float, default=120, help="target outage (s)")
    parser.add_argument(
        "--outage-period", type=float, default=1200, help="one target outage per this many s"
    )
    parser.add_argument(
        "--terminate-every", type=float, default=15, help="mean s between backend terminations"
    )
    parser.add_argument("--group-kills", type=int, default=3, help="process-group kills")
    parser.add_argument("--drain", type=float, default=900, help="max s to wait at the end")
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--keep", action="store_true", help="keep the working folder")
    args = parser.parse_args()
    args.outage = min(args.outage, args.duration / 4)
    args.outage_period = min(args.outage_period, args.duration)

    with workspace(args.keep) as folder:
        campaign = Campaign(args, folder)
        try:
            summary = campaign.execute()
        finally:
            campaign.close()
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    (RESULTS / f"faults-{stamp}.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    ok = summary["acknowledged_missing"] == 0 and not summary["stuck"]
    print("PASS: every acknowledged instance arrived, nothing stuck" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
