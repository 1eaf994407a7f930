"""A self-test run as it goes: its stages, each waiting, running, passed or failed.

The run is written by the thread that executes it and read by whoever asks (the web API
polls it), so every change and every snapshot happens under the run's lock.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

STAGES = (
    ("echo", "The receiver answers C-ECHO"),
    ("configure", "A temporary folder target and rule are configured"),
    ("send", "A generated series is sent with C-STORE"),
    ("stored", "The instances are in the database"),
    ("routed", "The router completed the series and made a task"),
    ("dispatched", "The dispatcher delivered the task"),
    ("arrived", "Every instance arrived in the target folder"),
)
STATES = ("waiting", "running", "passed", "failed")


@dataclass
class Stage:
    name: str
    title: str
    state: str = "waiting"
    message: str = ""
    seconds: float | None = None
    began: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        seconds = self.seconds
        if self.state == "running":
            seconds = time.monotonic() - self.began
        return {
            "name": self.name,
            "title": self.title,
            "state": self.state,
            "message": self.message,
            "seconds": None if seconds is None else round(seconds, 2),
        }


@dataclass
class Run:
    id: str
    started_by: str
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    finished_at: datetime | None = None
    state: str = "running"  # running, passed, failed
    cleanup: str = ""
    stages: list[Stage] = field(
        default_factory=lambda: [Stage(name, title) for name, title in STAGES]
    )
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)

    def begin(self, name: str) -> None:
        with self.lock:
            stage = self.stage(name)
            stage.state, stage.began = "running", time.monotonic()

    def note(self, name: str, message: str) -> None:
        """What a running stage is doing now (shown while it waits)."""
        with self.lock:
            self.stage(name).message = message

    def end(self, name: str, passed: bool, message: str) -> None:
        with self.lock:
            stage = self.stage(name)
            stage.state = "passed" if passed else "failed"
            stage.message = message
            stage.seconds = time.monotonic() - stage.began

    def finish(self, cleanup: str) -> None:
        with self.lock:
            failed = any(s.state != "passed" for s in self.stages)
            self.state = "failed" if failed else "passed"
            self.cleanup = cleanup
            self.finished_at = datetime.now(UTC)

    @property
    def failure(self) -> Stage | None:
        with self.lock:
            return next((s for s in self.stages if s.state == "failed"), None)

    def as_dict(self) -> dict[str, Any]:
        with self.lock:
            return {
                "id": self.id,
                "state": self.state,
                "started_by": self.started_by,
                "started_at": self.started_at.isoformat(),
                "finished_at": self.finished_at.isoformat() if self.finished_at else None,
                "cleanup": self.cleanup,
                "stages": [s.as_dict() for s in self.stages],
            }
