"""Starting caduceus and reference tools as real processes on free ports."""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine

from caduceus.core.database import open_keyring
from caduceus.core.db.engine import make_engine, writer
from caduceus.core.engine_keyring import attach_keyring
from caduceus.core.settings import DISK_RESERVE_FLOOR_MB
from tests.support.waiting import wait_for_port

# Tests run in parallel workers (pytest-xdist). A port the kernel hands out for port 0 is
# free now, but another worker may be handed the same one before our server binds it. So each
# worker takes ports from a range of its own, below the kernel's ephemeral range (which
# starts at 32768), where nobody else is given one.
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
_RANGE = 1500
# Two test runs at once on one machine (two checkouts) each need ranges of their own.
_BASE = int(os.environ.get("CADUCEUS_TEST_PORT_BASE", "20000"))
_next_port = itertools.count()


def free_port() -> int:
    if not _WORKER.startswith("gw"):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])
    first = _BASE + int(_WORKER[2:]) * _RANGE
    for _ in range(_RANGE):
        port = first + next(_next_port) % _RANGE
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue  # still in use (or in TIME_WAIT) from an earlier test
            return port
    raise RuntimeError(f"no free port in {first}-{first + _RANGE - 1}")


def require(tool: str) -> str:
    """The path of a system tool such as DCMTK's storescu, or skip the test without it.

    The virtualenv's own bin folder is left out: pynetdicom installs console scripts with the
    same names as DCMTK's (storescu, echoscu, ...), and the tests mean DCMTK's.
    """
    venv_bin = Path(sys.prefix) / "bin"
    search = os.pathsep.join(
        d
        for d in os.environ.get("PATH", os.defpath).split(os.pathsep)
        if d and Path(d).resolve() != venv_bin.resolve()
    )
    path = shutil.which(tool, path=search)
    if path is None:
        pytest.skip(f"{tool} is not installed (CI installs it)")
    return path


@dataclass
class Caduceus:
    """A caduceus command running as its own process, with its own home and database."""

    home: Path
    database_url: str
    port: int
    ae_title: str = "CADUCEUS"
    extra_env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    web_port: int = field(default_factory=free_port)

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CADUCEUS_")}
        env.update(
            CADUCEUS_HOME=str(self.home),
            CADUCEUS_DATABASE_URL=self.database_url,
            CADUCEUS_DICOM_PORT=str(self.port),
            CADUCEUS_DICOM_HOST="127.0.0.1",
            CADUCEUS_AE_TITLE=self.ae_title,
            # The smallest reserve allowed: tests on a full disk choose their own.
            CADUCEUS_RECEIVER_DISK_RESERVE_MB=str(DISK_RESERVE_FLOOR_MB),
            # Tests measure behaviour, not durability on power loss; fsync only slows them.
            CADUCEUS_FSYNC="false",
            CADUCEUS_RECEIVER_WORKERS="1",
            # `caduceus run` starts the web interface too: never on a port another test uses.
            CADUCEUS_WEB_PORT=str(self.web_port),
            CADUCEUS_WEB_HOST="127.0.0.1",
        )
        env.update(self.extra_env)
        return env

    def start(self, command: str = "receiver", *args: str) -> Caduceus:
        self.log_path = self.home / f"{command}.log"
        self.home.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        self.process = subprocess.Popen(
            [sys.executable, "-m", "caduceus", command, *args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if command in ("receiver", "run"):  # the others listen on no port
            wait_for_port(self.port, process=self.process)
        return self

    def cli(
        self, *args: str, check: bool = True, timeout: float = 120, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "caduceus", *args],
            env={**self.env, "COLUMNS": "200"},
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"caduceus {' '.join(args)} exited {result.returncode}\n"
                f"stdout: {result.stdout}\nstderr: {result.stderr}"
            )
        return result

    def stop(self, timeout: float = 20.0) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            raise

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def engine(self) -> Engine:
        # A writer engine, as the services use: the tests write beside the receiver, and a
        # deferred SQLite transaction that reads, then writes, fails when the receiver wrote in
        # between (the lock is not waited for in that case).
        # With the key of the configuration's secrets in this instance's home (created here
        # when the test writes before the service starts), as the services have it.
        url = self.database_url.replace("postgresql://", "postgresql+psycopg://")
        engine = make_engine(url)
        attach_keyring(engine, open_keyring(self.home / "secret.key", engine))
        return writer(engine)


def launch_patiently(
    launch: Any, started: list[Caduceus], command: str = "receiver", **env: str
) -> Caduceus:
    """launch(), with more patience for a busy machine: `caduceus run` imports seven
    services before its receiver listens."""
    try:
        return launch(command, **env)  # type: ignore[no-any-return]
    except TimeoutError:
        instance = started[-1]
        assert instance.process is not None
        wait_for_port(instance.port, timeout=120, process=instance.process)
        return instance


def run(cmd: list[str], timeout: float = 120, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)  # type: ignore[call-overload]


def postgres_admin_engine(url: str) -> Engine:
    return create_engine(
        url.replace("postgresql://", "postgresql+psycopg://"), isolation_level="AUTOCOMMIT"
    )


def storescu(
    receiver: Caduceus, *paths: Path | str, verbose: bool = False
) -> subprocess.CompletedProcess[str]:
    """DCMTK's storescu sending files or folders (+sd) to the receiver on one association."""
    args = [require("storescu"), "-aec", receiver.ae_title, "+sd", "+r"]
    if verbose:
        args.append("-v")
    return run([*args, "127.0.0.1", str(receiver.port), *map(str, paths)], timeout=300)
