"""Scale-out benchmark: one against two receivers, one against two dispatchers, on PostgreSQL.

    .venv/bin/python -m bench.scale            # full run: 500 CT images; 20 series x 100 CT
    .venv/bin/python -m bench.scale --quick    # smoke run: 40 CT images; 4 series x 10 CT

Every caduceus process shares one data folder and one PostgreSQL database (a fresh database per
measurement, created on --postgres and dropped afterwards), as machines of a cluster would.

* Receive: the CT series (512x512, as in receive.py) is split into four parts and sent by four
  DCMTK storescu processes at once, either all to ONE caduceus receiver or two senders to each
  of TWO receivers. Each receiver runs one worker process, so "two" means two processes. Time
  is from the first storescu's start to the last one's exit; afterwards every image must be in
  the database.
* Dispatch: several CT series are received and routed (untimed) into one task each for a DCMTK
  storescp target (--fork, so associations are served in parallel; +uf, so a resend would be a
  second file). Then ONE or TWO ``caduceus dispatcher`` processes, already idling, find the
  tasks; time is from the end of the routing pass until every task is done, so it includes up
  to one idle poll (0.5 s). storescp must hold every instance exactly once.

The ratio two/one is the scale-out gain on this machine. Senders, receivers, dispatchers,
storescp and PostgreSQL all share the machine's cores, so with two cores two of each cannot give
more than what two cores give, and less whenever the DCMTK peers and PostgreSQL need a core too.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml
from pydicom import dcmread
from sqlalchemy import Engine, create_engine, func, make_url, select, text
from sqlalchemy.exc import OperationalError

from bench.receive import (
    CACHE_DIR,
    CADUCEUS_BIN,
    LOCALHOST,
    BenchError,
    Corpus,
    Payload,
    Receiver,
    clean_env,
    free_port,
    keep_logs,
    send,
    spawn,
    split,
    stop,
    tail,
    wait_count,
    wait_ready,
)
from caduceus.core.config.models import Config
from caduceus.core.db.engine import make_engine, writer
from caduceus.core.db.models import INSTANCES, TASKS
from caduceus.core.dicom.synthetic import SeriesSpec, write_series
from caduceus.core.heartbeat import service_states
from caduceus.core.storage import DataRoot
from caduceus.router.completion import Router

SENDERS = 4
DONE_TIMEOUT = 600.0
TRIGGER = 1


@dataclass
class Measurement:
    step: str
    processes: int
    images: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.images / self.seconds


# --------------------------------------------------------------------------- data


def cached_series(name: str, series: int, count: int) -> list[list[Path]]:
    """`series` CT series of `count` 512x512 images each, generated once into the cache."""
    root = CACHE_DIR / f"scale-{name}-{series}x{count}"
    marker = root / "complete"
    if not marker.exists():
        shutil.rmtree(root, ignore_errors=True)
        print(f"generating {series} x {count} CT images into {root} ...", flush=True)
        for number in range(series):
            spec = SeriesSpec(count=count, rows=512, columns=512, patient_id=f"P{number:03d}")
            write_series(root / f"s{number:03d}", spec)
        marker.write_text("")
    return [sorted(folder.glob("*.dcm")) for folder in sorted(root.glob("s[0-9]*"))]


def quarters(files: list[Path]) -> Payload:
    """The files in four folders, one per storescu (receive.py's split and its link cache)."""
    return split(
        "CT 512x512", files, Corpus(ct=files, small=[], root=files[0].parent.parent), 4, ""
    )


def halves(payload: Payload) -> list[Payload]:
    """Two senders' folders for each of two receivers."""
    half = len(payload.folders) // 2
    parts = (payload.folders[:half], payload.folders[half:])
    return [Payload(payload.series, part, 0, 0) for part in parts]


# --------------------------------------------------------------------------- database


_ENGINES: dict[str, Engine] = {}


def _psycopg(url: str) -> str:
    return make_url(url).set(drivername="postgresql+psycopg").render_as_string(hide_password=False)


def engine_for(url: str) -> Engine:
    """One engine per measurement's database, shared by every poll; disposed with it."""
    if url not in _ENGINES:
        _ENGINES[url] = writer(make_engine(_psycopg(url)))
    return _ENGINES[url]


@contextlib.contextmanager
def fresh_database(server: str) -> Iterator[str]:
    """A new, empty database on the server for one measurement, dropped afterwards."""
    name = f"caduceus_scale_{os.getpid()}_{time.monotonic_ns()}"
    admin = create_engine(_psycopg(server), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as exc:
        admin.dispose()
        raise BenchError(f"cannot create a database on {server}: {exc.orig}") from exc
    url = make_url(server).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        if url in _ENGINES:
            _ENGINES.pop(url).dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def count_rows(url: str, query: object) -> int:
    with engine_for(url).connect() as conn:
        return int(conn.execute(query).scalar_one())  # type: ignore[call-overload]


# --------------------------------------------------------------------------- caduceus


@dataclass(frozen=True)
class Cluster:
    """The shared data folder and database of every caduceus process of one measurement."""

    home: Path
    url: str
    logs: Path

    def env(self, port: int) -> dict[str, str]:
        env = clean_env(nodelay=False)
        env.update(
            CADUCEUS_HOME=str(self.home),
            CADUCEUS_DATABASE_URL=self.url,
            CADUCEUS_DICOM_HOST=LOCALHOST,
            CADUCEUS_DICOM_PORT=str(port),
            CADUCEUS_AE_TITLE="CADUCEUS",
            CADUCEUS_RECEIVER_WORKERS="1",
        )
        return env

    def configure(self, document: dict[str, object]) -> None:
        """Schema and configuration first, as an installer would, before any service starts."""
        path = self.logs / "config.yaml"
        path.write_text(yaml.safe_dump(document))
        done = subprocess.run(
            [str(CADUCEUS_BIN), "config", "import", str(path)],
            env=self.env(free_port()),
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode != 0:
            raise BenchError(f"config import failed: {done.stdout}{done.stderr}")

    def receiver(self, index: int) -> Receiver:
        port = free_port()
        log = self.logs / f"receiver-{index}.log"
        process = spawn([str(CADUCEUS_BIN), "receiver"], self.env(port), log)
        url = self.url

        def count() -> int:
            return count_rows(url, select(func.count()).select_from(INSTANCES))

        return Receiver(f"receiver {index}", "CADUCEUS", port, process, log, count)

    def dispatcher(self, index: int) -> subprocess.Popen[bytes]:
        log = self.logs / f"dispatcher-{index}.log"
        return spawn([str(CADUCEUS_BIN), "dispatcher"], self.env(free_port()), log)


@contextlib.contextmanager
def cluster(server: str, scratch: Path, name: str) -> Iterator[Cluster]:
    workdir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=scratch))
    try:
        with fresh_database(server) as url:
            yield Cluster(workdir / "home", url, workdir)
    except BenchError as exc:
        raise BenchError(f"{exc}\n(logs kept in {keep_logs(workdir)})") from exc
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def receivers(where: Cluster, how_many: int) -> Iterator[list[Receiver]]:
    started = [where.receiver(index) for index in range(how_many)]
    try:
        for receiver in started:
            wait_ready(receiver)
        yield started
    finally:
        for receiver in started:
            stop(receiver.process)


def send_all(parts: Sequence[tuple[Payload, Receiver]], logs: Path) -> float:
    """receive.send for each (payload, receiver) at once; seconds until the last one ends."""
    errors: list[BaseException] = []

    def one(index: int, payload: Payload, receiver: Receiver) -> None:
        folder = logs / f"senders-{index}"
        folder.mkdir(exist_ok=True)
        try:
            send(payload, receiver, nodelay=False, logs=folder)
        except BaseException as exc:  # re-raised in the main thread
            errors.append(exc)

    threads = [
        threading.Thread(target=one, args=(index, payload, receiver))
        for index, (payload, receiver) in enumerate(parts)
    ]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise BenchError(str(errors[0]))
    return elapsed


# --------------------------------------------------------------------------- receive


def measure_receive(server: str, scratch: Path, files: list[Path], how_many: int) -> Measurement:
    payload = quarters(files)
    with cluster(server, scratch, f"receive-{how_many}") as where:
        where.configure({"settings": {}})
        with receivers(where, how_many) as started:
            parts = (
                [(payload, started[0])]
                if how_many == 1
                else list(zip(halves(payload), started, strict=True))
            )
            seconds = send_all(parts, where.logs)
            got = wait_count(started[0], len(files))
            if got != len(files):
                raise BenchError(f"the database holds {got} of {len(files)} images")
    return Measurement("receive", how_many, len(files), seconds)


# --------------------------------------------------------------------------- dispatch


@dataclass
class Target:
    process: subprocess.Popen[bytes]
    port: int
    folder: Path

    def uids(self) -> Counter[str]:
        return Counter(
            str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
            for path in self.folder.iterdir()
            if path.is_file()
        )


@contextlib.contextmanager
def storescp(workdir: Path) -> Iterator[Target]:
    folder = workdir / "target"
    folder.mkdir()
    port = free_port()
    command = ["storescp", "-aet", "STORESCP", "--fork", "+xa", "+uf", "-od", str(folder)]
    process = spawn([*command, str(port)], clean_env(nodelay=True), workdir / "storescp.log")
    target = Target(process, port, folder)
    try:
        wait_ready(
            Receiver("storescp", "STORESCP", port, process, workdir / "storescp.log", lambda: 0)
        )
        yield target
    finally:
        stop(process)


def dispatch_config(port: int) -> dict[str, object]:
    return {
        "settings": {"series_complete_trigger": TRIGGER},
        "targets": {
            "scp": {"type": "dicom", "host": LOCALHOST, "port": port, "called_aet": "STORESCP"}
        },
        "rules": {"ct": {"rule": "@Modality@ == 'CT'", "targets": ["scp"]}},
    }


def wait_running(engine: Engine, dispatchers: list[subprocess.Popen[bytes]], logs: Path) -> None:
    """Until every dispatcher's heartbeat says running (it beats once it serves)."""
    pids = {process.pid for process in dispatchers}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for index, process in enumerate(dispatchers):
            if process.poll() is not None:
                raise BenchError(
                    f"dispatcher {index} exited:\n{tail(logs / f'dispatcher-{index}.log')}"
                )
        running = {
            s.pid
            for s in service_states(engine)
            if s.service == "dispatcher" and s.state == "running"
        }
        if pids <= running:
            return
        time.sleep(0.1)
    raise BenchError(f"the dispatchers did not start within 60 s; see {logs}")


def wait_tasks_done(url: str, tasks: int, logs: Path) -> None:
    deadline = time.monotonic() + DONE_TIMEOUT
    engine = engine_for(url)
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            states: dict[str, int] = dict(
                conn.execute(select(TASKS.c.state, func.count()).group_by(TASKS.c.state)).all()
            )
        if states.get("error"):
            raise BenchError(f"a task ended in error: {states}")
        if states.get("done", 0) >= tasks:
            return
        time.sleep(0.05)
    raise BenchError(f"tasks not done after {DONE_TIMEOUT:.0f} s; see {logs}")


def measure_dispatch(
    server: str, scratch: Path, series: list[list[Path]], how_many: int
) -> Measurement:
    files = [path for group in series for path in group]
    with cluster(server, scratch, f"dispatch-{how_many}") as where, storescp(where.logs) as target:
        document = dispatch_config(target.port)
        where.configure(document)
        with receivers(where, 1) as (receiver,):
            folders = Payload("CT", tuple(group[0].parent for group in series), 0, 0)
            send_all([(folders, receiver)], where.logs)
            if wait_count(receiver, len(files)) != len(files):
                raise BenchError("the receiver did not take every image")
        dispatchers = [where.dispatcher(index) for index in range(how_many)]
        engine = engine_for(where.url)
        try:
            # Started (their heartbeat says so), so their start-up is not timed.
            wait_running(engine, dispatchers, where.logs)
            router = Router(engine, DataRoot(where.home))
            router.run_pass(
                Config.model_validate(document), datetime.now(UTC) + timedelta(seconds=TRIGGER + 5)
            )
            started = time.perf_counter()
            wait_tasks_done(where.url, len(series), where.logs)
            seconds = time.perf_counter() - started
        finally:
            for process in dispatchers:
                stop(process)
        received = target.uids()
        expected = {str(dcmread(path, stop_before_pixels=True).SOPInstanceUID) for path in files}
        twice = [uid for uid, times in received.items() if times > 1]
        if set(received) != expected or twice:
            raise BenchError(
                f"storescp holds {len(set(received) & expected)} of {len(expected)} instances, "
                f"{len(twice)} more than once"
            )
    return Measurement("dispatch", how_many, len(files), seconds)


# --------------------------------------------------------------------------- report


def floor2(value: float) -> str:
    """Two decimals, rounded down: a scale-out ratio is never reported better than measured."""
    return f"{int(value * 100) / 100:.2f}"


def report(results: list[Measurement]) -> str:
    lines = [
        f"machine: {os.cpu_count()} cores, {platform.platform()}, Python "
        f"{platform.python_version()}; {datetime.now():%Y-%m-%d %H:%M}",
        "",
        "| step | processes | images | seconds | images/s | two/one |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for result in results:
        one = next((r for r in results if r.step == result.step and r.processes == 1), None)
        ratio = floor2(result.rate / one.rate) if one and result.processes == 2 else ""
        lines.append(
            f"| {result.step} | {result.processes} | {result.images} | {result.seconds:.2f} | "
            f"{result.rate:.1f} | {ratio} |"
        )
    cores = os.cpu_count() or 1
    lines += [
        "",
        f"This machine has {cores} core(s): two receivers or two dispatchers cannot scale beyond "
        f"what {min(cores, 2)} core(s) give, and the storescu senders, the storescp target and "
        "PostgreSQL run on the same cores.",
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--ct", type=int, default=500, help="images of the received series")
    parser.add_argument("--series", type=int, default=20, help="series to dispatch")
    parser.add_argument("--per-series", type=int, default=100, help="images per dispatched series")
    parser.add_argument("--quick", action="store_true", help="smoke run: 40 CT; 4 x 10 CT")
    args = parser.parse_args(argv)
    if args.quick:
        args.ct, args.series, args.per_series = 40, 4, 10
    if args.ct < SENDERS:
        parser.error(f"need at least {SENDERS} images")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    missing = [t for t in ("storescu", "storescp", "echoscu") if not shutil.which(t)]
    if missing or not CADUCEUS_BIN.exists():
        raise SystemExit(f"missing tools: {missing or CADUCEUS_BIN}")
    [ct] = cached_series("receive", 1, args.ct)
    series = cached_series("dispatch", args.series, args.per_series)
    results: list[Measurement] = []
    scratch = Path(tempfile.mkdtemp(prefix="caduceus-scale-"))
    try:
        for how_many in (1, 2):
            results.append(measure_receive(args.postgres, scratch, ct, how_many))
            print(f"receive, {how_many}: {results[-1].rate:.1f} images/s", flush=True)
        for how_many in (1, 2):
            results.append(measure_dispatch(args.postgres, scratch, series, how_many))
            print(f"dispatch, {how_many}: {results[-1].rate:.1f} images/s", flush=True)
    except BenchError as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        print(report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
