"""Receive benchmark: caduceus against DCMTK's storescp and Orthanc, fed by DCMTK's storescu.

Run it from the repository root:

    .venv/bin/python bench/receive.py            # full run (500 CT + 5,000 small images)
    .venv/bin/python bench/receive.py --quick    # smoke run (50 CT + 500 small images)

What it measures
----------------
Two generated series (cached under bench/results/series-cache/, keyed by the counts):

* "CT 512x512": CT images, 512x512 16-bit, about 0.5 MB each; measures bulk throughput.
* "small 64x64": tiny images of about 9 kB each; measures per-image overhead (round trips,
  file creation, database rows).

Each series goes to three receivers, each started fresh (new temporary folders, free ports) for
every measurement:

* caduceus: ``caduceus receiver`` with its default settings (so fsync on: every file, folder and
  database commit is flushed before the C-STORE response), workers as per ``--workers``.
* storescp: DCMTK's ``storescp -od <dir>``, which writes each image to disk without any fsync
  and keeps no index.
* Orthanc: with a generated configuration and its default settings (SQLite index,
  ``SyncStorageArea`` on, no plugins).

The sender is always ``storescu +sd <folder>`` (one association per storescu process). The time
is from storescu's start to its exit, so it includes storescu's own start-up and its scan of the
folder; that part is the same for every receiver. After each send the script checks that
storescu exited with 0 and that the receiver really holds every image.

Every measurement is done in two modes:

* nodelay: ``TCP_NODELAY=1`` in the environment of storescu and of the DCMTK-based receivers
  (storescp and Orthanc, both of which read the variable through DCMTK's network library), so
  Nagle's algorithm is off on both ends.
* default: no ``TCP_NODELAY`` in any environment; DCMTK's default socket options. Here Nagle's
  algorithm plus delayed ACKs stall storescp and Orthanc at 10-20 images/s, so for them the
  small series is cut to its first 500 images, also in the multi-sender scenario (the table
  says so). caduceus sets TCP_NODELAY and TCP_QUICKACK on its own sockets and always gets the
  full series.

Finally a multi-sender scenario: four storescu processes at once, each with a quarter of the small
series, into caduceus with 1 and with 2 worker processes, and into ``storescp --fork`` for
reference. It shows whether caduceus scales across cores.

How to read the output
----------------------
images/s is the comparable figure (the image counts differ between some rows). MB/s is the size of
the files sent per second. "peak RSS" is the largest sum of VmRSS over the receiver's process tree
(the process and all its descendants), sampled every 50 ms during the send; for caduceus with
several workers it counts pages shared between the forked processes once per process, so it
overstates. "peak PSS" is the same sum of proportional set sizes (shared pages divided among
their sharers): the tree's real footprint. MB means 2**20 bytes. The ratio table divides
caduceus's images/s by the other receiver's for the same mode and series: above 1 means caduceus
is faster.

Results are also written as JSON to bench/results/receive-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from caduceus.core.dicom.synthetic import SeriesSpec, write_series

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
CACHE_DIR = RESULTS_DIR / "series-cache"
CADUCEUS_BIN = Path(sys.executable).parent / "caduceus"

LOCALHOST = "127.0.0.1"
SEND_TIMEOUT = 600.0
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
COUNT_TIMEOUT = 15.0
RSS_INTERVAL = 0.05
DEFAULT_MODE_LIMIT = 500
SENDERS = 4
MIB = 1024 * 1024

MODES = ("nodelay", "default")
CT_NAME = "CT 512x512"
SMALL_NAME = "small 64x64"
MULTI_NAME = f"small 64x64, {SENDERS} senders"

# Without a terminal rich would wrap the tables at 80 columns.
console = Console() if sys.stdout.isatty() else Console(width=170)


class BenchError(Exception):
    """A measurement failed; the message says why."""


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Payload:
    """What one measurement sends: one folder per storescu process."""

    series: str
    folders: tuple[Path, ...]
    images: int
    size: int
    note: str = ""


@dataclass(frozen=True)
class Corpus:
    ct: list[Path]
    small: list[Path]
    root: Path


def generate_corpus(ct_count: int, small_count: int) -> Corpus:
    """Generate both series, or reuse the cached copy made by an earlier run."""
    root = CACHE_DIR / f"ct{ct_count}-small{small_count}"
    marker = root / "complete.json"
    if not marker.exists():
        shutil.rmtree(root, ignore_errors=True)
        console.print(f"generating {ct_count} CT + {small_count} small images into {root} ...")
        started = time.perf_counter()
        ct_spec = SeriesSpec(count=ct_count, rows=512, columns=512, modality="CT")
        small_spec = SeriesSpec(count=small_count, rows=64, columns=64, modality="MR")
        write_series(root / "ct", ct_spec)
        write_series(root / "small", small_spec)
        marker.write_text(json.dumps({"ct": ct_count, "small": small_count}))
        console.print(f"generated in {time.perf_counter() - started:.1f} s")
    else:
        console.print(f"using cached series in {root}")
    return Corpus(
        ct=sorted((root / "ct").glob("*.dcm")),
        small=sorted((root / "small").glob("*.dcm")),
        root=root,
    )


def link_subset(files: Sequence[Path], folder: Path) -> Path:
    """Hard-link (or copy) files into folder, unless it already holds exactly those files."""
    if folder.is_dir() and sorted(p.name for p in folder.iterdir()) == [f.name for f in files]:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for path in files:
        try:
            os.link(path, folder / path.name)
        except OSError:
            shutil.copy2(path, folder / path.name)
    return folder


def make_payload(
    series: str, groups: Sequence[Sequence[Path]], folders: Sequence[Path], note: str
) -> Payload:
    files = [path for group in groups for path in group]
    return Payload(
        series=series,
        folders=tuple(folders),
        images=len(files),
        size=sum(path.stat().st_size for path in files),
        note=note,
    )


def whole(series: str, files: list[Path]) -> Payload:
    return make_payload(series, [files], [files[0].parent], "")


def first_part(series: str, files: list[Path], corpus: Corpus, limit: int) -> Payload:
    """The first `limit` files, or the whole series if it is not larger than that."""
    if len(files) <= limit:
        return whole(series, files)
    subset = files[:limit]
    folder = link_subset(subset, corpus.root / f"small-first{limit}")
    return make_payload(series, [subset], [folder], f"first {limit} of {len(files)}")


def split(series: str, files: list[Path], corpus: Corpus, parts: int, note: str) -> Payload:
    """The files in `parts` contiguous chunks, one folder (and so one sender) per chunk."""
    groups = [files[i * len(files) // parts : (i + 1) * len(files) // parts] for i in range(parts)]
    folders = [
        link_subset(group, corpus.root / f"split-{len(files)}-{i + 1}of{parts}")
        for i, group in enumerate(groups)
    ]
    return make_payload(series, groups, folders, note)


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOCALHOST, 0))
        return int(sock.getsockname()[1])


def clean_env(nodelay: bool) -> dict[str, str]:
    """Our environment without TCP_NODELAY or CADUCEUS_*, plus TCP_NODELAY=1 if asked."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key != "TCP_NODELAY" and not key.startswith("CADUCEUS_")
    }
    if nodelay:
        env["TCP_NODELAY"] = "1"
    return env


def spawn(command: Sequence[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start a process in its own process group, output to log."""
    with log.open("ab") as out:
        return subprocess.Popen(
            list(command),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop(process: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM the process, SIGKILL it after timeout, then kill what is left of its group."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)
    # Forked children (storescp --fork, caduceus workers) live in the group we created.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def tail(log: Path, lines: int = 15) -> str:
    try:
        text = log.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(text[-lines:])


def tool_version(command: Sequence[str]) -> str:
    try:
        done = subprocess.run(list(command), capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    lines = (done.stdout + done.stderr).strip().splitlines()
    return lines[0].strip() if lines else "unknown"


# --------------------------------------------------------------------------- memory


def _parent_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        # The command name (field 2) may hold spaces and parentheses; ppid follows the last ')'.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def process_tree(pid: int) -> list[int]:
    children = _parent_map()
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def proc_kib(path: str, key: str) -> int:
    """A "Key:   123 kB" value from a /proc file, 0 if the process is gone."""
    try:
        with open(path) as lines:
            for line in lines:
                if line.startswith(key):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


class PeakMemory:
    """Samples a process tree's summed VmRSS (and PSS) in a background thread, keeps the peaks.

    RSS counts pages shared between forked processes once per process; PSS splits them among
    the sharers, so summed PSS is the tree's real footprint.
    """

    def __init__(self, pid: int, interval: float = RSS_INTERVAL):
        self.pid = pid
        self.interval = interval
        self.peak_rss_kib = 0
        self.peak_pss_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)

    @property
    def peak_rss_mib(self) -> float:
        return self.peak_rss_kib / 1024

    @property
    def peak_pss_mib(self) -> float:
        return self.peak_pss_kib / 1024

    def sample(self) -> None:
        tree = process_tree(self.pid)
        rss = sum(proc_kib(f"/proc/{pid}/status", "VmRSS:") for pid in tree)
        pss = sum(proc_kib(f"/proc/{pid}/smaps_rollup", "Pss:") for pid in tree)
        self.peak_rss_kib = max(self.peak_rss_kib, rss)
        self.peak_pss_kib = max(self.peak_pss_kib, pss)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sample()


# --------------------------------------------------------------------------- receivers


@dataclass
class Receiver:
    """A started receiver: how to reach it and how to ask how many images it holds."""

    label: str
    aet: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path
    count: Callable[[], int]
    ready: Callable[[], bool] = lambda: True
    notes: list[str] = field(default_factory=list)


def start_caduceus(workdir: Path, workers: int) -> Receiver:
    home = workdir / "home"
    port = free_port()
    env = clean_env(nodelay=False)
    env.update(
        CADUCEUS_HOME=str(home),
        CADUCEUS_DICOM_HOST=LOCALHOST,
        CADUCEUS_DICOM_PORT=str(port),
        CADUCEUS_AE_TITLE="CADUCEUS",
        CADUCEUS_RECEIVER_WORKERS=str(workers),
    )
    log = workdir / "caduceus.log"
    process = spawn([str(CADUCEUS_BIN), "receiver"], env, log)

    def count() -> int:
        database = home / "caduceus.db"
        if not database.exists():
            return 0
        with contextlib.closing(
            sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5)
        ) as db:
            return int(db.execute("SELECT count(*) FROM instances").fetchone()[0])

    label = f"caduceus ({workers} worker{'s' if workers > 1 else ''})"
    return Receiver(label, "CADUCEUS", port, process, log, count)


def start_storescp(workdir: Path, nodelay: bool, fork: bool) -> Receiver:
    output = workdir / "out"
    output.mkdir()
    port = free_port()
    log = workdir / "storescp.log"
    command = ["storescp", "-aet", "STORESCP", "-od", str(output)]
    if fork:
        command.append("--fork")
    process = spawn([*command, str(port)], clean_env(nodelay), log)

    def count() -> int:
        return sum(1 for path in output.rglob("*") if path.is_file())

    label = "storescp --fork" if fork else "storescp"
    notes = ["storescp env TCP_NODELAY=1"] if nodelay else []
    return Receiver(label, "STORESCP", port, process, log, count, notes=notes)


def orthanc_config(workdir: Path, dicom_port: int, http_port: int) -> Path:
    storage = workdir / "storage"
    config = {
        "Name": "caduceus-bench",
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "DicomPort": dicom_port,
        "HttpPort": http_port,
        "DicomAet": "ORTHANC",
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowStore": True,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "Plugins": [],
    }
    path = workdir / "orthanc.json"
    path.write_text(json.dumps(config, indent=2))
    return path


def http_json(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.load(response)


def start_orthanc(workdir: Path, nodelay: bool) -> Receiver:
    dicom_port, http_port = free_port(), free_port()
    while http_port == dicom_port:
        http_port = free_port()
    config = orthanc_config(workdir, dicom_port, http_port)
    log = workdir / "orthanc.log"
    process = spawn(["Orthanc", str(config)], clean_env(nodelay), log)
    base = f"http://{LOCALHOST}:{http_port}"

    def count() -> int:
        return int(http_json(f"{base}/statistics")["CountInstances"])

    def ready() -> bool:
        try:
            http_json(f"{base}/system")
        except OSError:
            return False
        return True

    notes = ["Orthanc env TCP_NODELAY=1"] if nodelay else []
    return Receiver("Orthanc", "ORTHANC", dicom_port, process, log, count, ready, notes)


def echo(receiver: Receiver) -> bool:
    command = ["echoscu", "-to", "5", "-aec", receiver.aet, LOCALHOST, str(receiver.port)]
    try:
        done = subprocess.run(command, capture_output=True, timeout=15, env=clean_env(False))
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


def wait_ready(receiver: Receiver, timeout: float = START_TIMEOUT) -> None:
    """Until the receiver answers a C-ECHO (and its own readiness check, if any)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if receiver.process.poll() is not None:
            raise BenchError(
                f"{receiver.label} exited with {receiver.process.returncode} while starting:\n"
                + tail(receiver.log)
            )
        if echo(receiver) and receiver.ready():
            return
        time.sleep(0.2)
    raise BenchError(f"{receiver.label} not ready after {timeout:.0f} s:\n{tail(receiver.log)}")


@contextlib.contextmanager
def running(kind: str, workdir: Path, nodelay: bool, workers: int) -> Iterator[Receiver]:
    """Start a receiver of the given kind, wait until it answers, stop it afterwards."""
    if kind == "caduceus":
        receiver = start_caduceus(workdir, workers)
    elif kind in ("storescp", "storescp-fork"):
        receiver = start_storescp(workdir, nodelay, fork=kind == "storescp-fork")
    elif kind == "orthanc":
        receiver = start_orthanc(workdir, nodelay)
    else:
        raise ValueError(f"unknown receiver {kind!r}")
    try:
        wait_ready(receiver)
        yield receiver
    finally:
        stop(receiver.process)


def wait_count(receiver: Receiver, expected: int, timeout: float = COUNT_TIMEOUT) -> int:
    """How many images the receiver holds, waiting a little for them to show up."""
    deadline = time.monotonic() + timeout
    got = -1
    while True:
        with contextlib.suppress(OSError, sqlite3.Error, ValueError, KeyError):
            got = receiver.count()
        if got >= expected or time.monotonic() > deadline:
            return got
        time.sleep(0.2)


# --------------------------------------------------------------------------- sending


def send(payload: Payload, receiver: Receiver, nodelay: bool, logs: Path) -> float:
    """Run one storescu per folder at once; seconds from the first start to the last exit."""
    env = clean_env(nodelay)
    senders: list[tuple[subprocess.Popen[bytes], Path]] = []
    try:
        started = time.perf_counter()
        for index, folder in enumerate(payload.folders):
            log = logs / f"storescu-{index}.log"
            command = ["storescu", "-aec", receiver.aet, LOCALHOST, str(receiver.port)]
            command += ["+sd", str(folder)]
            senders.append((spawn(command, env, log), log))
        deadline = started + SEND_TIMEOUT
        for process, _ in senders:
            process.wait(max(0.0, deadline - time.perf_counter()))
        elapsed = time.perf_counter() - started
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"storescu did not finish within {SEND_TIMEOUT:.0f} s") from exc
    finally:
        for process, _ in senders:
            stop(process, timeout=5)
    for process, log in senders:
        if process.returncode != 0:
            errors = [line for line in tail(log).splitlines() if line.startswith("E:")]
            summary = " ".join(line.removeprefix("E:").strip() for line in errors[-2:])
            raise BenchError(f"storescu exited with {process.returncode}: {summary}\n{tail(log)}")
    return elapsed


# --------------------------------------------------------------------------- measuring


@dataclass
class Result:
    receiver: str
    mode: str
    series: str
    senders: int
    images: int
    size_bytes: int
    seconds: float | None = None
    peak_rss_mb: float | None = None
    peak_pss_mb: float | None = None
    notes: list[str] = field(default_factory=list)
    error: str = ""

    @property
    def images_per_s(self) -> float | None:
        return self.images / self.seconds if self.seconds else None

    @property
    def mb_per_s(self) -> float | None:
        return self.size_bytes / MIB / self.seconds if self.seconds else None

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "images_per_s": self.images_per_s, "mb_per_s": self.mb_per_s}


@dataclass(frozen=True)
class Job:
    kind: str
    mode: str
    payload: Payload
    workers: int = 1


def measure(job: Job, scratch: Path) -> Result:
    """Start a fresh receiver, send the payload, check that everything arrived."""
    nodelay = job.mode == "nodelay"
    payload = job.payload
    workdir = Path(tempfile.mkdtemp(prefix=f"{job.kind}-", dir=scratch))
    result = Result(
        receiver=job.kind,
        mode=job.mode,
        series=payload.series,
        senders=len(payload.folders),
        images=payload.images,
        size_bytes=payload.size,
    )
    if payload.note:
        result.notes.append(payload.note)
    if nodelay:
        result.notes.append("storescu env TCP_NODELAY=1")
    try:
        with running(job.kind, workdir, nodelay, job.workers) as receiver:
            result.receiver = receiver.label
            result.notes.extend(receiver.notes)
            with PeakMemory(receiver.process.pid) as memory:
                result.seconds = send(payload, receiver, nodelay, workdir)
            result.peak_rss_mb = memory.peak_rss_mib
            result.peak_pss_mb = memory.peak_pss_mib
            got = wait_count(receiver, payload.images)
            if got != payload.images:
                raise BenchError(f"{receiver.label} holds {got} of {payload.images} images")
    except BenchError as exc:
        result.error = f"{exc}\n(logs kept in {keep_logs(workdir)})"
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return result


def keep_logs(workdir: Path) -> Path:
    """Copy a failed measurement's logs (receiver, senders) to bench/results/failed/."""
    target = RESULTS_DIR / "failed" / f"{datetime.now():%Y%m%d-%H%M%S}-{workdir.name}"
    target.mkdir(parents=True, exist_ok=True)
    for log in workdir.glob("*.log"):
        shutil.copy2(log, target / log.name)
    return target


def plan(corpus: Corpus, workers: int) -> list[Job]:
    """Every measurement, in order: per mode the two series, then the multi-sender scenario."""
    ct = whole(CT_NAME, corpus.ct)
    small = whole(SMALL_NAME, corpus.small)
    jobs: list[Job] = []
    for mode in MODES:
        limited = mode == "default"
        cut = first_part(SMALL_NAME, corpus.small, corpus, DEFAULT_MODE_LIMIT) if limited else small
        for payload, others in ((ct, ct), (small, cut)):
            jobs.append(Job("caduceus", mode, payload, workers))
            jobs.append(Job("storescp", mode, others))
            jobs.append(Job("orthanc", mode, others))
        multi = split(MULTI_NAME, corpus.small, corpus, SENDERS, "")
        subset = corpus.small[:DEFAULT_MODE_LIMIT] if limited else corpus.small
        note = (
            f"first {len(subset)} of {len(corpus.small)}" if len(subset) < len(corpus.small) else ""
        )
        multi_cut = split(MULTI_NAME, subset, corpus, SENDERS, note)
        jobs.append(Job("caduceus", mode, multi, 1))
        jobs.append(Job("caduceus", mode, multi, 2))
        jobs.append(Job("storescp-fork", mode, multi_cut))
    return jobs


def progress_line(index: int, total: int, result: Result) -> str:
    head = f"[{index}/{total}] {result.receiver:<22} {result.mode:<8} {result.series:<26}"
    if result.error:
        return f"{head} [red]FAILED[/red]: {escape(result.error)}"
    return (
        f"{head} {result.images:>6} images in {result.seconds:7.2f} s = "
        f"{result.images_per_s:8.1f} images/s, peak RSS {result.peak_rss_mb:6.1f} MB, "
        f"PSS {result.peak_pss_mb:6.1f} MB"
    )


# --------------------------------------------------------------------------- reporting


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def results_table(results: list[Result]) -> Table:
    table = Table(title="Receive benchmark (storescu -> receiver over loopback)")
    for name in ("receiver", "mode", "series"):
        table.add_column(name)
    for name in ("images", "seconds", "images/s", "MB/s", "peak RSS MB", "peak PSS MB"):
        table.add_column(name, justify="right")
    table.add_column("notes")
    for r in results:
        if r.error:
            failed = ("[red]failed[/red]", "", "", "", "", escape(r.error.splitlines()[0]))
            table.add_row(r.receiver, r.mode, r.series, str(r.images), *failed)
            continue
        table.add_row(
            r.receiver,
            r.mode,
            r.series,
            str(r.images),
            fmt(r.seconds, 2),
            fmt(r.images_per_s),
            fmt(r.mb_per_s),
            fmt(r.peak_rss_mb),
            fmt(r.peak_pss_mb),
            "; ".join(n for n in r.notes if not n.startswith("storescu env")),
        )
    return table


def ratios(results: list[Result]) -> list[dict[str, Any]]:
    """caduceus images/s divided by storescp's and Orthanc's, per (mode, series)."""
    rows = []
    good = [r for r in results if not r.error and r.images_per_s]
    for cad in (r for r in good if r.receiver.startswith("caduceus")):
        same = [r for r in good if r.mode == cad.mode and r.series == cad.series]
        row: dict[str, Any] = {"mode": cad.mode, "series": cad.series, "caduceus": cad.receiver}
        for other in same:
            if other.receiver.startswith("storescp"):
                row["vs_storescp"] = cad.images_per_s / other.images_per_s  # type: ignore[operator]
            elif other.receiver == "Orthanc":
                row["vs_orthanc"] = cad.images_per_s / other.images_per_s  # type: ignore[operator]
        rows.append(row)
    return rows


def ratio_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="caduceus images/s relative to the others (>1: caduceus is faster)")
    for name in ("mode", "series", "caduceus", "caduceus/storescp", "caduceus/Orthanc"):
        table.add_column(name, justify="right" if "/" in name else "left")
    for row in rows:
        table.add_row(
            row["mode"],
            row["series"],
            row["caduceus"],
            fmt(row.get("vs_storescp"), 2),
            fmt(row.get("vs_orthanc"), 2),
        )
    return table


def print_legend(limit: int) -> None:
    console.print(
        "modes: [bold]nodelay[/bold] = TCP_NODELAY=1 in the environment of storescu and of the "
        "DCMTK-based receivers (storescp and Orthanc read it too); [bold]default[/bold] = no "
        "TCP_NODELAY anywhere. caduceus sets TCP_NODELAY and TCP_QUICKACK itself in both.\n"
        f"In default mode storescp and Orthanc get only the first {limit} small images "
        "(Nagle + delayed-ACK stalls make them crawl); compare images/s, not seconds.\n"
        "caduceus runs with fsync on (its default); storescp never fsyncs; Orthanc uses its "
        "defaults (SyncStorageArea on). peak RSS/PSS: summed over the receiver's process tree "
        "(RSS counts pages shared by forked workers once per process, PSS splits them); "
        "MB = 2**20 bytes."
    )


def write_json(results: list[Result], args: argparse.Namespace, started: datetime) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"receive-{started:%Y%m%d-%H%M%S}.json"
    document = {
        "started": started.isoformat(timespec="seconds"),
        "arguments": vars(args),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "tools": {
            "storescu": tool_version(["storescu", "--version"]),
            "storescp": tool_version(["storescp", "--version"]),
            "orthanc": tool_version(["Orthanc", "--version"]),
        },
        "default_mode_limit": DEFAULT_MODE_LIMIT,
        "results": [r.to_json() for r in results],
        "ratios": ratios(results),
    }
    path.write_text(json.dumps(document, indent=2, default=str))
    return path


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--ct", type=int, default=500, help="CT images, 512x512 (default 500)")
    parser.add_argument("--small", type=int, default=5000, help="small images (default 5000)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 50 CT + 500 small")
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="caduceus receiver workers for the single-sender runs (default: CPU count)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.ct, args.small = 50, 500
    if args.ct < 1 or args.small < SENDERS:
        parser.error(f"need at least 1 CT and {SENDERS} small images")
    return args


def check_tools() -> None:
    missing = [
        tool for tool in ("storescu", "storescp", "echoscu", "Orthanc") if not shutil.which(tool)
    ]
    if not CADUCEUS_BIN.exists():
        missing.append(str(CADUCEUS_BIN))
    if missing:
        raise SystemExit(f"missing tools: {', '.join(missing)}")


def _terminate(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run(jobs: list[Job], results: list[Result]) -> None:
    """Measure every job in turn, appending to results (so an interruption keeps them)."""
    scratch = Path(tempfile.mkdtemp(prefix="caduceus-bench-"))
    try:
        for index, job in enumerate(jobs, 1):
            result = measure(job, scratch)
            results.append(result)
            console.print(progress_line(index, len(jobs), result), highlight=False)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    check_tools()
    signal.signal(signal.SIGTERM, _terminate)
    started = datetime.now()
    results: list[Result] = []
    interrupted = False
    try:
        run(plan(generate_corpus(args.ct, args.small), args.workers), results)
    except KeyboardInterrupt:
        interrupted = True
        console.print("[yellow]interrupted; reporting what was measured so far[/yellow]")
    console.print()
    print_legend(DEFAULT_MODE_LIMIT)
    console.print(results_table(results))
    console.print(ratio_table(ratios(results)))
    path = write_json(results, args, started)
    console.print(f"results written to {path}")
    if interrupted:
        return 130
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
