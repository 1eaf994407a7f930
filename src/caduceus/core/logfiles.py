"""Each service's log file, $CADUCEUS_HOME/logs/<service>.log, and reading it back.

Files hold JSON lines whatever CADUCEUS_LOG_FORMAT says, so the web interface can filter them
by task and level. They rotate at a size cap. Several processes may write one file (the
receiver's workers; two dispatchers on one host; hosts sharing the data root): rotation
happens under a lock file, and a process that finds the file renamed under it reopens it.

The file's name is always built from a known service name, never from a request.
"""

from __future__ import annotations

import fcntl
import json
import logging
import logging.handlers
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from caduceus.core.service_names import SERVICES

MAX_BYTES = 10 * 1024 * 1024
BACKUPS = 3
# The supervisor of `caduceus run` logs too: which child died and when it was restarted.
LOG_NAMES: tuple[str, ...] = (*SERVICES, "supervisor")
LEVELS = ("debug", "info", "warning", "error", "critical")
# How far back a filtered read looks (the current file and the one before it, at most).
SCAN_BYTES = 2 * MAX_BYTES
_BLOCK = 64 * 1024


def log_folder(home: Path) -> Path:
    return home / "logs"


def log_path(home: Path, service: str) -> Path:
    if service not in LOG_NAMES:
        raise ValueError(f"no service named {service!r}")
    return log_folder(home) / f"{service}.log"


class SharedRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """A rotating file that several processes append to."""

    def __init__(
        self,
        path: Path,
        max_bytes: int = MAX_BYTES,
        backups: int = BACKUPS,
        file_mode: int = 0o600,
    ):
        # Log lines name patients' series and senders: private whatever the umask.
        self.file_mode = file_mode
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o750 if file_mode & 0o040 else 0o700)
        super().__init__(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
        self._lock_path = f"{self.baseFilename}.lock"

    def _open(self) -> Any:
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT, self.file_mode)
        if os.fstat(fd).st_mode & 0o777 & ~self.file_mode:
            os.fchmod(fd, self.file_mode)  # one from before, or rotated from a looser one
        return os.fdopen(fd, "a", encoding=self.encoding, errors=self.errors)

    def _renamed(self) -> bool:
        if self.stream is None:
            return False
        try:
            on_disk = os.stat(self.baseFilename)
        except FileNotFoundError:
            return True
        return on_disk.st_ino != os.fstat(self.stream.fileno()).st_ino

    def shouldRollover(self, record: logging.LogRecord) -> int:
        if self.stream is not None and self._renamed():  # another process rotated
            self.stream.close()
            self.stream = self._open()
        return super().shouldRollover(record)

    def doRollover(self) -> None:
        with open(self._lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                try:
                    size = os.stat(self.baseFilename).st_size
                except FileNotFoundError:
                    size = 0
                # Another process may have rotated while this one waited for the lock.
                if size >= self.maxBytes // 2:
                    super().doRollover()
                else:
                    if self.stream is not None:
                        self.stream.close()
                    self.stream = self._open()
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


# -- reading ------------------------------------------------------------------------------


@dataclass(frozen=True)
class LogFile:
    service: str
    size: int
    modified: float


def log_files(home: Path) -> list[LogFile]:
    """The services that have a log file, in the order of LOG_NAMES."""
    found = []
    for name in LOG_NAMES:
        try:
            info = log_path(home, name).stat()
        except FileNotFoundError:
            continue
        found.append(LogFile(name, info.st_size, info.st_mtime))
    return found


def _lines_backwards(path: Path, budget: int) -> Iterator[bytes]:
    """The file's lines, last first, reading at most `budget` bytes from its end."""
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed in finally
    except FileNotFoundError:
        return
    try:
        position = handle.seek(0, os.SEEK_END)
        floor = max(0, position - budget)
        rest = b""
        while position > floor:
            step = min(_BLOCK, position - floor)
            position -= step
            handle.seek(position)
            chunk = handle.read(step) + rest
            lines = chunk.split(b"\n")
            rest = lines.pop(0)  # may be cut; completed by the next block
            for line in reversed(lines):
                if line:
                    yield line
        if rest and floor == 0:
            yield rest
    finally:
        handle.close()


def _parse(line: bytes) -> dict[str, Any]:
    try:
        document = json.loads(line)
    except ValueError:
        document = None
    if not isinstance(document, dict):
        # Not written by our handler (a crash's raw output): shown as it is.
        return {"msg": line.decode("utf-8", "replace"), "level": "info"}
    return document


def read_log(
    home: Path,
    service: str,
    *,
    lines: int = 200,
    task: str | None = None,
    level: str | None = None,
) -> list[dict[str, Any]]:
    """The newest `lines` entries of a service's log, newest first, optionally only those
    about one task and of at least one level."""
    least = LEVELS.index(level) if level else 0
    needle = task.encode() if task else None
    # Lines below the level are skipped before parsing, as lines about other tasks are: our
    # handler writes "level": "<name>" as json.dumps does. Only above info, since a line that
    # is not JSON counts as info.
    levels = [f'"level": "{name}"'.encode() for name in LEVELS[least:]] if least > 1 else None
    path = log_path(home, service)
    found: list[dict[str, Any]] = []
    budget = SCAN_BYTES
    for candidate in (path, path.with_name(path.name + ".1")):
        try:
            size = candidate.stat().st_size
        except FileNotFoundError:
            continue
        for line in _lines_backwards(candidate, budget):
            if needle is not None and needle not in line:
                continue  # cheap test before parsing
            if levels is not None and not any(mark in line for mark in levels):
                continue
            entry = _parse(line)
            if task is not None and not _about(entry, task):
                continue
            if least and _level_rank(entry.get("level")) < least:
                continue
            found.append(entry)
            if len(found) >= lines:
                return found
        budget -= size
        if budget <= 0:
            break
    return found


def _about(entry: dict[str, Any], task: str) -> bool:
    """Logged while the task was worked on, or naming it ("task ... created")."""
    return entry.get("task") == task or task in str(entry.get("msg", ""))


def _level_rank(value: object) -> int:
    name = str(value or "info").lower()
    return LEVELS.index(name) if name in LEVELS else 1


def read_logs(
    home: Path,
    services: tuple[str, ...] = LOG_NAMES,
    *,
    lines: int = 200,
    task: str | None = None,
    level: str | None = None,
) -> list[dict[str, Any]]:
    """The newest entries of several services' logs together, newest first: a task's whole
    way through the router, the processor and the dispatcher."""
    merged: list[dict[str, Any]] = []
    for service in services:
        for entry in read_log(home, service, lines=lines, task=task, level=level):
            entry.setdefault("service", service)
            merged.append(entry)
    # ISO times in UTC, all with milliseconds: their text sorts as the times do.
    merged.sort(key=lambda entry: str(entry.get("ts", "")), reverse=True)
    return merged[:lines]
