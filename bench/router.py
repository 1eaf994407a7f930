"""Router benchmark: pass time and trigger-to-task latency with many open and finished series.

    .venv/bin/python bench/router.py [--open 1000] [--finished 10000] [--due 100]

It fills a fresh SQLite database with `--finished` series that were routed long ago and `--open`
series still receiving (each with one instance row), then measures:

* the time of a router pass when nothing is due (the cost of watching the open series);
* the time of a pass that completes `--due` series at once (each with a real file whose tags
  the rules read, a task folder of hard links and a task.json);
* the trigger-to-task latency of the real `caduceus router` process: a series is made due at a
  known moment and the time until its task row exists is measured, several times.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine, func, insert, select, update

from caduceus.core.config import store
from caduceus.core.config.models import Config
from caduceus.core.db.engine import make_engine, writer
from caduceus.core.db.migrate import upgrade
from caduceus.core.db.models import INSTANCES, SERIES, STUDIES, TASKS
from caduceus.core.dicom.synthetic import SeriesSpec, write_series
from caduceus.core.storage import DataRoot
from caduceus.router.completion import Router

TRIGGER = 60
CONFIG = Config.model_validate(
    {
        "settings": {"series_complete_trigger": TRIGGER},
        "targets": {"pacs": {"type": "dicom", "host": "127.0.0.1", "port": 104, "called_aet": "P"}},
        "rules": {"ct": {"rule": "@Modality@ == 'CT'", "targets": ["pacs"]}},
    }
)


def fill(engine: Engine, root: DataRoot, finished: int, open_: int, sample: Path) -> None:
    now = datetime.now(UTC)
    relative = root.relative(sample)
    with engine.begin() as conn:
        study_id = conn.execute(
            insert(STUDIES)
            .values(
                study_uid="1.2.3", first_received_at=now, last_received_at=now, state="complete"
            )
            .returning(STUDIES.c.id)
        ).scalar_one()
        rows = []
        for index in range(finished + open_):
            done = index < finished
            at = now - timedelta(days=30) if done else now
            rows.append(
                {
                    "series_uid": f"1.2.3.{index}",
                    "study_id": study_id,
                    "modality": "CT",
                    "folder": f"f{index}",
                    "first_received_at": at,
                    "last_received_at": at,
                    "state": "complete" if done else "receiving",
                    "completed_at": at if done else None,
                    "generation": 1 if done else 0,
                }
            )
        conn.execute(insert(SERIES), rows)
        ids = conn.execute(select(SERIES.c.id, SERIES.c.last_received_at)).all()
        conn.execute(
            insert(INSTANCES),
            [
                {
                    "sop_instance_uid": f"1.2.4.{sid}",
                    "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
                    "series_id": sid,
                    "transfer_syntax_uid": "1.2.840.10008.1.2.1",
                    "path": relative,
                    "size_bytes": 1,
                    "received_at": at,
                }
                for sid, at in ids
            ],
        )


def make_due(engine: Engine, count: int, seconds_ago: float) -> None:
    """Move `count` open series' last arrival back so that they fall due."""
    at = datetime.now(UTC) - timedelta(seconds=seconds_ago)
    with engine.begin() as conn:
        ids = (
            conn.execute(select(SERIES.c.id).where(SERIES.c.state == "receiving").limit(count))
            .scalars()
            .all()
        )
        conn.execute(update(SERIES).where(SERIES.c.id.in_(ids)).values(last_received_at=at))
        conn.execute(update(INSTANCES).where(INSTANCES.c.series_id.in_(ids)).values(received_at=at))


def timed_passes(router: Router, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        router.run_pass(CONFIG)
        times.append(time.perf_counter() - start)
    return times


def latency(engine: Engine, home: Path, url: str, repeats: int) -> list[float]:
    """Arrival, quiet period, task: the delay between the trigger firing and the task row."""
    quiet = 2
    config = CONFIG.model_copy(deep=True)
    config.settings.series_complete_trigger = quiet
    store.save(engine, config, "bench", "short trigger for the latency test")
    with engine.begin() as conn:  # keep the other open series out of the way
        conn.execute(
            update(SERIES)
            .where(SERIES.c.state == "receiving")
            .values(last_received_at=datetime.now(UTC) + timedelta(days=1))
        )
    env = {**os.environ, "CADUCEUS_HOME": str(home), "CADUCEUS_DATABASE_URL": url}
    process = subprocess.Popen(
        [sys.executable, "-m", "caduceus", "router"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    results = []
    try:
        time.sleep(3)
        for _ in range(repeats):
            with engine.connect() as conn:
                before = conn.execute(select(func.count()).select_from(TASKS)).scalar_one()
            make_due(engine, 1, 0)  # an instance arrives now: the trigger fires in `quiet` s
            fires = time.monotonic() + quiet
            while True:
                with engine.connect() as conn:
                    if conn.execute(select(func.count()).select_from(TASKS)).scalar_one() > before:
                        break
                if time.monotonic() - fires > 30:
                    raise TimeoutError("no task within 30 s")
                time.sleep(0.005)
            results.append(time.monotonic() - fires)
    finally:
        process.terminate()
        process.wait(20)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--open", type=int, default=1000)
    parser.add_argument("--finished", type=int, default=10000)
    parser.add_argument("--due", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="caduceus-router-bench-") as scratch:
        home = Path(scratch) / "home"
        root = DataRoot(home)
        root.create()
        [sample] = write_series(root.incoming / "sample", SeriesSpec(count=1, rows=16, columns=16))
        url = f"sqlite:///{home / 'caduceus.db'}"
        engine = writer(make_engine(url))
        upgrade(engine)
        store.save(engine, CONFIG, "bench")
        start = time.perf_counter()
        fill(engine, root, args.finished, args.open, sample)
        print(
            f"filled {args.finished} finished + {args.open} open series in "
            f"{time.perf_counter() - start:.1f} s"
        )
        router = Router(engine, root)
        idle = timed_passes(router, 20)
        print(
            f"pass with {args.open} open series, none due: "
            f"median {statistics.median(idle) * 1000:.1f} ms, max {max(idle) * 1000:.1f} ms"
        )
        make_due(engine, args.due, TRIGGER + 1)
        start = time.perf_counter()
        result = router.run_pass(CONFIG)
        busy = time.perf_counter() - start
        print(
            f"pass completing {len(result.completed)} due series ({len(result.tasks)} tasks): "
            f"{busy:.2f} s = {busy / max(1, len(result.tasks)) * 1000:.1f} ms per task"
        )
        delays = latency(engine, home, url, 10)
        print(
            f"trigger-to-task latency of `caduceus router` (arrival, 2 s quiet, task), "
            f"{len(delays)} triggers: "
            f"median {statistics.median(delays) * 1000:.0f} ms, max {max(delays) * 1000:.0f} ms"
        )
        engine.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
