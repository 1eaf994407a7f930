"""Starts each service as its own process, restarts one that dies, and stops all on a signal."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import FrameType

from sqlalchemy import Engine

from caduceus.core.heartbeat import RESTARTS_ENV, record_restarting

log = logging.getLogger("caduceus.supervisor")

STOP_GRACE = 20.0
MAX_BACKOFF = 30.0
START_GRACE = 10.0


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = 0.0
    next_start: float = 0.0
    failures: int = field(default=0)


class Supervisor:
    def __init__(
        self,
        services: tuple[str, ...],
        env: dict[str, str] | None = None,
        engine: Engine | None = None,
        start_grace: float = START_GRACE,
    ):
        self.children = [Child(name) for name in services]
        # A child that lived this long started well: its death (a kill, the OOM killer, a
        # crash under load) is no start failure, and it is started again at once.
        self.start_grace = start_grace
        self.env = env or dict(os.environ)
        self.stopping = False
        # Where the web interface reads which service is restarting (heartbeats).
        self.engine = engine

    def _command(self, name: str) -> list[str]:
        return [sys.executable, "-m", "caduceus", name]

    def _start(self, child: Child) -> None:
        # The child records how often it was restarted in its heartbeat.
        env = {**self.env, RESTARTS_ENV: str(child.restarts)}
        child.process = subprocess.Popen(self._command(child.name), env=env)
        child.started_at = time.monotonic()
        log.info("started %s (pid %d)", child.name, child.process.pid)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.stopping = True

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        for child in self.children:
            self._start(child)
        while not self.stopping:
            time.sleep(0.2)
            now = time.monotonic()
            for child in self.children:
                process = child.process
                if process is not None and process.poll() is not None:
                    lived = now - child.started_at
                    delay = self._restart_delay(child, lived)
                    if delay:
                        log.error(
                            "%s exited with code %s %.1f s after its start (failing at start, "
                            "%d time(s) in a row); restarting in %.1f s",
                            child.name,
                            process.returncode,
                            lived,
                            child.failures,
                            delay,
                        )
                    else:
                        log.error(
                            "%s exited with code %s after running %.1f s; restarting at once",
                            child.name,
                            process.returncode,
                            lived,
                        )
                    child.process = None
                    child.next_start = now + delay
                    child.restarts += 1
                    self._record_restarting(child, process, lived, delay)
                if child.process is None and now >= child.next_start and not self.stopping:
                    self._start(child)
        return self._stop_all()

    def _restart_delay(self, child: Child, lived: float) -> float:
        """Nothing for a child that had started well; one that dies right at its start (a
        bad setting, a port in use, the database away) is restarted ever more slowly, up to
        a limit, so that it does not spin."""
        if lived >= self.start_grace:
            child.failures = 0
            return 0.0
        child.failures += 1
        return float(min(MAX_BACKOFF, 0.5 * 2 ** min(child.failures - 1, 6)))

    def _record_restarting(
        self, child: Child, process: subprocess.Popen[bytes], lived: float, delay: float
    ) -> None:
        if self.engine is None:
            return
        try:
            record_restarting(
                self.engine,
                child.name,
                process.pid,
                child.restarts,
                f"exited with code {process.returncode} after {lived:.1f} s; "
                + (f"restarting in {delay:.1f} s" if delay else "restarting at once"),
                datetime.now(UTC) - timedelta(seconds=lived),
            )
        except Exception as exc:  # the database being away must not stop the restarts
            log.warning("cannot record that %s is restarting: %s", child.name, exc)

    def _stop_all(self) -> int:
        log.info("stopping all services")
        running = [c.process for c in self.children if c.process and c.process.poll() is None]
        for process in running:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for process in running:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("pid %d did not stop in time; killing it", process.pid)
                process.kill()
                process.wait()
        return 0
