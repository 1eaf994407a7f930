"""The web application in the test process, and users of each role to drive it.

Starlette's TestClient speaks HTTP to the application without a socket; the database is the
test's (SQLite or PostgreSQL), shared with any real service processes the test starts.
`web_process` is a real `caduceus web` instead, for what needs a socket, a client address and
a process of its own (floods, memory).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from caduceus.core.database import open_database
from caduceus.core.settings import Settings
from caduceus.web import auth
from caduceus.web.app import create_app
from tests.support.processes import Caduceus, free_port
from tests.support.waiting import wait_for_port

PASSWORD = "correct horse battery"


def web_client(home: Path, database_url: str, engine: Engine) -> TestClient:
    settings = Settings(home=home, database_url=database_url)
    return TestClient(create_app(settings, engine), base_url="http://testserver")


def add_user(engine: Engine, name: str, role: str, password: str = PASSWORD) -> None:
    auth.create_user(engine, name, password, role)


def log_in(client: TestClient, name: str, password: str = PASSWORD) -> dict[str, str]:
    """Log the client in (it keeps the cookie); returns the CSRF header for changes."""
    answer = client.post("/api/login", json={"username": name, "password": password})
    assert answer.status_code == 200, answer.text
    return {auth.CSRF_HEADER: answer.json()["csrf_token"]}


def as_role(client: TestClient, engine: Engine, role: str) -> dict[str, str]:
    """A new user with this role (named after it), logged in; returns the CSRF header."""
    add_user(engine, f"{role}-user", role)
    return log_in(client, f"{role}-user")


@pytest.fixture
def web_engine(tmp_path: Path, database_url: str) -> Iterator[Engine]:
    """A migrated database (SQLite or PostgreSQL) and no service running on it."""
    engine = open_database(
        Settings(home=tmp_path / "home", database_url=database_url), migrate=True
    )
    yield engine
    engine.dispose()


@pytest.fixture
def web(tmp_path: Path, database_url: str, web_engine: Engine) -> TestClient:
    """The web application on that database, with nobody logged in yet."""
    (tmp_path / "home").mkdir(exist_ok=True)
    return web_client(tmp_path / "home", database_url, web_engine)


@contextmanager
def serve(app: FastAPI) -> Iterator[str]:
    """The application on a real port (uvicorn in a thread), for the browser; yields its URL."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def served(web: TestClient) -> Iterator[str]:
    """The `web` application on a real port, for the browser."""
    with serve(web.app) as url:  # type: ignore[arg-type]
        yield url


@dataclass
class WebProcess:
    """`caduceus web` as its own process: its URL, process id and database."""

    url: str
    pid: int
    engine: Engine
    instance: Caduceus

    def rss_kib(self, field: str = "VmRSS") -> int:
        """The process's resident memory now (VmRSS) or at its peak so far (VmHWM), in KiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise AssertionError(f"no {field} for process {self.pid}")


@pytest.fixture
def web_process(launch: Callable[..., Caduceus]) -> Iterator[WebProcess]:
    """A real `caduceus web` on 127.0.0.1 (any 127.x.y.z address reaches it as a client)."""
    instance = launch("web")
    assert instance.process is not None
    wait_for_port(instance.web_port, process=instance.process)
    engine = instance.engine()
    yield WebProcess(
        f"http://127.0.0.1:{instance.web_port}", instance.process.pid, engine, instance
    )
    engine.dispose()


def client_from(address: str, url: str, **kwargs: Any) -> httpx.Client:
    """An HTTP client whose connections come from this local address (127.0.0.2, ...)."""
    return httpx.Client(
        base_url=url, transport=httpx.HTTPTransport(local_address=address), **kwargs
    )
