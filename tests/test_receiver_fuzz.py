"""Fuzzing the receiver: no crash, no hang, no file outside the data root, flat memory.

Bounded to about 45 s by default. For a longer run set CADUCEUS_FUZZ_SECONDS (and
CADUCEUS_FUZZ_SEED to replay or vary the cases), e.g.
`CADUCEUS_FUZZ_SECONDS=3600 pytest -p no:xdist tests/test_receiver_fuzz.py`.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pydicom import dcmread
from sqlalchemy import func, select

from caduceus.core.db.models import ASSOCIATIONS
from tests.support.dicomfiles import dataset_bytes
from tests.support.fuzz import Fuzzer, play
from tests.support.processes import Caduceus, free_port, require, run
from tests.support.proctree import alive, children, rss_mb

SECONDS = float(os.environ.get("CADUCEUS_FUZZ_SECONDS", "45"))
SEED = int(os.environ.get("CADUCEUS_FUZZ_SEED", "14"))
BATCH = 200


def echo_ok(port: int) -> bool:
    command = [require("echoscu"), "-to", "10", "-aec", "CADUCEUS", "127.0.0.1", str(port)]
    return run(command, timeout=30).returncode == 0


def files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*")}


def test_fuzzed_conversations_do_no_harm(
    tmp_path: Path, sqlite_url: str, caduceus_factory: list[Caduceus], small_series: list[Path]
) -> None:
    receiver = Caduceus(
        tmp_path / "home",
        sqlite_url,
        free_port(),
        extra_env={
            "CADUCEUS_RECEIVER_WORKERS": "2",
            "CADUCEUS_RECEIVER_NETWORK_TIMEOUT": "5",
            "CADUCEUS_RECEIVER_ASSOCIATION_REQUEST_TIMEOUT": "5",
        },
    )
    caduceus_factory.append(receiver)
    receiver.start()
    assert receiver.process is not None
    assert echo_ok(receiver.port)
    parent = receiver.process.pid
    workers = children(parent)
    outside_before = files_under(tmp_path.parent) - files_under(tmp_path)

    source = small_series[0]
    fuzzer = Fuzzer(SEED, dataset_bytes(source), dcmread(source).SOPInstanceUID)
    sources = [f"127.0.2.{n}" for n in range(1, 33)]
    rss: list[float] = []
    cases = 0
    deadline = time.monotonic() + SECONDS
    with ThreadPoolExecutor(8) as pool:
        while time.monotonic() < deadline:
            batch = [fuzzer.case() for _ in range(BATCH)]
            list(
                pool.map(
                    lambda item: play(receiver.port, item[1], sources[item[0] % len(sources)]),
                    enumerate(batch),
                )
            )
            cases += len(batch)
            assert echo_ok(receiver.port), f"no echo after {cases} cases (seed {SEED})"
            assert alive(parent) and all(alive(pid) for pid in workers), "a receiver died"
            rss.append(sum(rss_mb(pid) for pid in workers))

    with receiver.engine().connect() as conn:
        rows = conn.execute(select(func.count()).select_from(ASSOCIATIONS)).scalar()
    print(f"{cases} fuzz cases (seed {SEED}); associations rows {rows}; worker RSS (MiB) {rss}")
    assert children(parent) == workers, "a worker was restarted"
    # No file anywhere but in the data root, and in it only where the receiver puts files.
    home = (tmp_path / "home").resolve()
    # (Earlier tests' leftovers may vanish meanwhile: only new files count.)
    assert files_under(tmp_path.parent) - files_under(tmp_path) - outside_before == set()
    assert {p.name for p in tmp_path.iterdir()} <= {
        "home",
        "caduceus.db",
        "caduceus.db-wal",
        "caduceus.db-shm",
        "caduceus.db.migrate-lock",
    }
    for path in (home / "incoming").rglob("*"):
        assert path.resolve().is_relative_to(home / "incoming")
    # Memory is flat: what the first batches warmed up, later ones did not grow.
    assert len(rss) >= 2
    assert rss[-1] - rss[0] < 40, f"worker RSS grew from {rss[0]:.0f} to {rss[-1]:.0f} MiB"
    receiver.stop()
    assert "Traceback" not in receiver.log()
