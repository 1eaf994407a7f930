"""Every service survives a dropped or failing database, and carries on when it is back.

A real `caduceus run` (receiver, router, processor, dispatcher, cleaner, notifier, web) works
on a series; then its database goes away. PostgreSQL: every backend of the services is
terminated (pg_terminate_backend) and the relay in front of the server refuses connections
for a while, as a database host that restarts does. SQLite: the test holds the write lock,
which every service's transaction waits for, longer than their busy timeout. Afterwards no
service process was restarted (each kept its pid), and a series sent after the outage is
received, routed, processed and delivered. The web interface answers 503 meanwhile.
"""

from __future__ import annotations

import sqlite3
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml
from pydicom import dcmread
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from caduceus.core.db.engine import make_engine, writer
from caduceus.core.service_names import SERVICES
from caduceus.web import auth
from tests.support.processes import Caduceus, free_port, postgres_admin_engine
from tests.support.proctree import children
from tests.support.rows import tasks
from tests.support.sending import send
from tests.support.storescp import start_storescp
from tests.support.tcp_proxy import TcpProxy
from tests.support.waiting import wait_for_port

OUTAGE = 6.0  # seconds; longer than the busy timeout and every service loop's pause but one
COPY = """
    import os, pathlib, shutil
    src = pathlib.Path(os.environ["MERCURE_IN_DIR"])
    for path in src.glob("*.dcm"):
        shutil.copyfile(path, pathlib.Path(os.environ["MERCURE_OUT_DIR"]) / path.name)
"""


def service_pids(supervisor: int) -> dict[str, int]:
    """The pid of each service `caduceus run` started, by name; waits until all run."""
    deadline = time.monotonic() + 60
    found: dict[str, int] = {}
    while time.monotonic() < deadline:
        found = {}
        for pid in children(supervisor):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except FileNotFoundError:
                continue
            if len(argv) > 3 and argv[1:3] == [b"-m", b"caduceus"]:
                found[argv[3].decode()] = pid
        if set(found) == set(SERVICES):
            return found
        time.sleep(0.2)
    raise AssertionError(f"not every service runs: {sorted(found)}")


def terminate_backends(database_url: str) -> int:
    """pg_terminate_backend for every connection to this test's own database."""
    admin = postgres_admin_engine(database_url)
    try:
        with admin.connect() as conn:
            return len(
                conn.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = :db AND pid <> pg_backend_pid()"
                    ),
                    {"db": make_url(database_url).database},
                ).all()
            )
    finally:
        admin.dispose()


@contextmanager
def database_outage(database_url: str, proxy: TcpProxy | None) -> Iterator[None]:
    if proxy is None:  # SQLite: hold the write lock every service's transaction waits for
        path = make_url(database_url).database
        assert path is not None
        holder = sqlite3.connect(path, isolation_level=None, timeout=30)
        holder.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        return
    proxy.cut()
    assert terminate_backends(database_url) > 0, "the services had no connection to drop"
    try:
        yield
    finally:
        proxy.restore()


def delivered(scp_files: list[Path]) -> set[str]:
    found = set()
    for path in scp_files:
        try:
            found.add(str(dcmread(path, stop_before_pixels=True).SOPInstanceUID))
        except Exception:  # a file storescp is still writing
            continue
    return found


def wait_for_delivery(instance: Caduceus, scp_files: Any, files: list[Path]) -> None:
    wanted = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files}
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and not wanted <= delivered(scp_files()):
        time.sleep(0.3)
    assert wanted <= delivered(scp_files()), "the series did not arrive at the target"


def log_in(port: int) -> int:
    answer = httpx.post(
        f"http://127.0.0.1:{port}/api/login",
        json={"username": "ops", "password": "correct horse battery"},
        timeout=30,
    )
    return answer.status_code


def test_every_service_survives_a_database_outage(
    tmp_path: Path, database_url: str, caduceus_factory: list[Caduceus]
) -> None:
    postgres = database_url.startswith("postgresql")
    proxy: TcpProxy | None = None
    service_url = database_url
    if postgres:
        proxy = TcpProxy(("127.0.0.1", make_url(database_url).port or 5432)).start()
        service_url = make_url(database_url).set(port=proxy.port).render_as_string(False)
    scp = start_storescp(tmp_path / "scp", "+xa")
    script = tmp_path / "copy.py"
    script.write_text(textwrap.dedent(COPY))
    document = {
        "settings": {"series_complete_trigger": 1},
        "targets": {"scp": scp.target()},
        "modules": {"copy": {"command": [sys.executable, str(script)], "sandbox": False}},
        "rules": {
            "ct": {"rule": "True", "action": "both", "modules": ["copy"], "targets": ["scp"]}
        },
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(document))
    instance = Caduceus(
        tmp_path / "home",
        service_url,
        free_port(),
        extra_env={"CADUCEUS_DATABASE_BUSY_TIMEOUT_SECONDS": "1"},
    )
    caduceus_factory.append(instance)
    engine: Engine | None = None
    try:
        instance.start("run", "--config", str(tmp_path / "config.yaml"))
        assert instance.process is not None
        before = service_pids(instance.process.pid)
        engine = writer(make_engine(database_url.replace("postgresql://", "postgresql+psycopg://")))
        auth.create_user(engine, "ops", "correct horse battery", "operator")
        wait_for_port(instance.web_port)
        assert log_in(instance.web_port) == 200
        first = send(instance, tmp_path / "first", count=3, modality="CT")
        wait_for_delivery(instance, scp.files, first)

        with database_outage(database_url, proxy):
            outage_ends = time.monotonic() + OUTAGE
            assert log_in(instance.web_port) == 503  # not 500, and the web lives on
            time.sleep(max(0.0, outage_ends - time.monotonic()))

        if postgres:  # and once more while the services work: dropped under their feet
            second = send(instance, tmp_path / "second", count=3, modality="CT")
            time.sleep(0.5)
            terminate_backends(database_url)
        else:
            second = send(instance, tmp_path / "second", count=3, modality="CT")
        wait_for_delivery(instance, scp.files, first + second)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(t["state"] != "done" for t in tasks(instance)):
            time.sleep(0.3)
        assert [t["state"] for t in tasks(instance)] == ["done", "done"]
        assert log_in(instance.web_port) == 200

        after = service_pids(instance.process.pid)
        assert after == before, "a service died with its database connection"
        assert "exited with code" not in instance.log()
        router_log = (instance.home / "logs" / "router.log").read_text()
        assert "router pass failed; retrying" in router_log, "the outage never reached it"
    finally:
        if engine is not None:
            engine.dispose()
        scp.stop()
        instance.stop()
        if proxy is not None:
            proxy.stop()
