"""Several processes starting at once against one fresh database: one migrates, the others
wait for it, and all of them go on."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect, text

from caduceus.core.db.engine import make_engine
from caduceus.core.db.migrate import SchemaTooNew, alembic_config, upgrade
from caduceus.core.db.migration_lock import migration_lock
from tests.conftest import Launch
from tests.support.processes import Caduceus

PROCESSES = 4

# Each process imports caduceus, says it is ready, then waits at a gate: opening the gate
# starts every `caduceus migrate` at the same moment, which the start-up time of a Python
# process would otherwise spread over a second or more.
GATED_MIGRATE = """
import sys, time
from pathlib import Path

import pytest
from caduceus.cli.main import app
ready, gate = Path(sys.argv[1]), Path(sys.argv[2])
ready.touch()
while not gate.exists():
    time.sleep(0.001)
app(["migrate"])
"""


def test_processes_starting_together_migrate_once(tmp_path: Path, database_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CADUCEUS_")}
    env.update(CADUCEUS_HOME=str(tmp_path / "home"), CADUCEUS_DATABASE_URL=database_url)
    gate = tmp_path / "gate"
    ready = [tmp_path / f"ready-{i}" for i in range(PROCESSES)]
    logs = [tmp_path / f"migrate-{i}.log" for i in range(PROCESSES)]
    processes = []
    for flag, log in zip(ready, logs, strict=True):
        with log.open("wb") as out:
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-c", GATED_MIGRATE, str(flag), str(gate)],
                    env={**env, "COLUMNS": "200"},
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )
    try:
        deadline = time.monotonic() + 120
        while not all(flag.exists() for flag in ready):
            assert all(p.poll() is None for p in processes), "a process died before the gate"
            assert time.monotonic() < deadline, "the processes did not get ready"
            time.sleep(0.01)
        gate.touch()
        codes = [p.wait(timeout=180) for p in processes]
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
                p.wait()

    outputs = [log.read_text(errors="replace") for log in logs]
    for code, output in zip(codes, outputs, strict=True):
        assert code == 0, output
        assert "database is up to date" in output
        assert "Error" not in output and "Traceback" not in output, output

    engine = make_engine(database_url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.connect() as conn:
            versions = conn.execute(text("SELECT version_num FROM alembic_version")).all()
        head = head_revision(engine)
    finally:
        engine.dispose()
    assert [row[0] for row in versions] == [head]


def test_an_older_version_refuses_a_schema_migrated_by_a_newer_one(database_url: str) -> None:
    engine = make_engine(database_url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        upgrade(engine)
        with engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
        with pytest.raises(SchemaTooNew, match=r"revision 9999.*a newer version migrated it"):
            upgrade(engine)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT version_num FROM alembic_version")).all() == [
                ("9999",)
            ]
    finally:
        engine.dispose()


def test_a_service_waits_for_the_migrator_then_starts(
    database_url: str, launch: Launch, tmp_path: Path
) -> None:
    """While another process holds the migration lock, a starting service says that it waits,
    and neither migrates nor serves; once the lock is free it migrates and runs."""
    engine = make_engine(database_url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with migration_lock(engine):
            router = launch("router")
            wait_for_line(router, "waiting for another process to finish migrating")
            assert not inspect(engine).has_table("alembic_version")
            assert router.process is not None and router.process.poll() is None
        wait_for_line(router, "router started")
        with engine.connect() as conn:
            versions = conn.execute(text("SELECT version_num FROM alembic_version")).all()
        assert [row[0] for row in versions] == [head_revision(engine)]
    finally:
        engine.dispose()
    assert router.stop() == 0


def wait_for_line(instance: Caduceus, line: str) -> None:
    deadline = time.monotonic() + 120
    while line not in instance.log():
        process = instance.process
        assert process is not None and process.poll() is None, instance.log()
        assert time.monotonic() < deadline, f"no {line!r} in:\n{instance.log()}"
        time.sleep(0.05)


def head_revision(engine: Engine) -> str:
    head = ScriptDirectory.from_config(alembic_config(engine)).get_current_head()
    assert head is not None
    return head
