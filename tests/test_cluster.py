"""Several machines against one PostgreSQL and one data folder.

Cluster mode needs PostgreSQL (SQLite is one file on one host), so these tests run on
PostgreSQL only. The machines are process groups on this host, each receiver on its own port
of 127.0.0.1: network namespaces (`ip netns`) need root, which CI does not promise, and the
database and the data folder are what the machines share, not the network.
"""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import func, select

from caduceus.core.db.models import EVENTS, SERIES, TASKS
from caduceus.core.dicom.synthetic import SeriesSpec, write_series
from caduceus.router.completion import PassResult, Router
from tests.support.processes import Caduceus, storescu
from tests.test_router import config, later, router_for

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
        per_series = Counter(conn.execute(select(TASKS.c.series_uid, TASKS.c.rule)).tuples().all())
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
