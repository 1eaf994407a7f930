"""Fixtures: a database per test (SQLite, and PostgreSQL when configured), caduceus processes."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from caduceus.core.dicom.synthetic import SeriesSpec, write_series
from tests.support.processes import Caduceus, free_port, postgres_admin_engine
from tests.support.sshd import Sshd, start_sshd

POSTGRES_URL = os.environ.get("CADUCEUS_TEST_POSTGRES_URL", "")
BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database. PostgreSQL runs when CADUCEUS_TEST_POSTGRES_URL is set."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'caduceus.db'}"
        return
    if not POSTGRES_URL:
        pytest.skip("CADUCEUS_TEST_POSTGRES_URL is not set (CI sets it)")
    name = f"caduceus_test_{uuid.uuid4().hex[:12]}"
    admin = postgres_admin_engine(POSTGRES_URL)
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'caduceus.db'}"


@pytest.fixture
def caduceus_factory(tmp_path: Path) -> Iterator[list[Caduceus]]:
    started: list[Caduceus] = []
    yield started
    for instance in started:
        instance.stop()


Launch = Callable[..., Caduceus]


@pytest.fixture
def launch(tmp_path: Path, database_url: str, caduceus_factory: list[Caduceus]) -> Launch:
    """Start `caduceus receiver` (or another command) with extra CADUCEUS_* settings."""

    def start(
        command: str = "receiver", *args: str, home: Path | None = None, **env: str
    ) -> Caduceus:
        instance = Caduceus(home or tmp_path / "home", database_url, free_port(), extra_env=env)
        caduceus_factory.append(instance)
        return instance.start(command, *args)

    return start


@pytest.fixture
def receiver(launch: Launch) -> Caduceus:
    """`caduceus receiver` running on a free port against a fresh database."""
    return launch()


@pytest.fixture(scope="session")
def small_series(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("small-series")
    return write_series(folder, SeriesSpec(count=10, rows=32, columns=32, patient_name="Doe^Jane"))


def pytest_report_header() -> str:
    backend = "sqlite + postgresql" if POSTGRES_URL else "sqlite only"
    return f"caduceus database backends: {backend}"


# Fixtures shared by the web interface's tests: the application, and a browser.
pytest_plugins = ["tests.support.web", "tests.support.browser"]


@pytest.fixture
def reachable_tmp() -> Iterator[Path]:
    """A test folder that any user can enter. Under a root processor a plain module runs as
    nobody (issue 14), which cannot enter pytest's own folders (0700): files a test hands a
    module by path (its script, counters, flags) go here, as a module's files would be on a
    real host."""
    folder = Path(tempfile.mkdtemp(prefix="caduceus-test-"))
    folder.chmod(0o777)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[Sshd]:
    """A real OpenSSH server of the test's own (the SFTP and rsync targets' peer)."""
    server = start_sshd(tmp_path / "sshd")
    yield server
    server.stop()


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    """An empty folder for the SSH server's side of a send."""
    folder = tmp_path / "remote"
    folder.mkdir()
    return folder
