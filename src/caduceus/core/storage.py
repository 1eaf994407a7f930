"""The data root: where files live, and how they get there without ever being half-visible.

    <home>/incoming/<series>/<instance>.dcm   received instances, by series
    <home>/tmp/                               files being written (same file system, so a
                                              rename publishes them atomically), and a few
                                              empty ones created ahead of need
    <home>/quarantine/<yyyymmdd>/             instances the receiver refused, for inspection

Folder and file names come from caduceus.core.dicom.names.safe_name, never from raw values.
"""

from __future__ import annotations

import os
import queue
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path


class DataRoot:
    def __init__(self, home: Path):
        self.home = home.resolve()
        self.incoming = self.home / "incoming"
        self.tmp = self.home / "tmp"
        self.quarantine = self.home / "quarantine"

    def create(self) -> None:
        for folder in (self.home, self.incoming, self.tmp, self.quarantine):
            folder.mkdir(parents=True, exist_ok=True)

    def temp_path(self, suffix: str = ".part") -> Path:
        return self.tmp / f"{uuid.uuid4().hex}{suffix}"

    def relative(self, path: Path) -> str:
        return path.relative_to(self.home).as_posix()

    def absolute(self, relative: str) -> Path:
        path = (self.home / relative).resolve()
        if not path.is_relative_to(self.home):
            raise ValueError(f"path {relative!r} leaves the data root")
        return path

    def quarantine_path(self) -> Path:
        folder = self.quarantine / datetime.now(UTC).strftime("%Y%m%d")
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"{uuid.uuid4().hex}.dcm"

    def free_bytes(self) -> int:
        st = os.statvfs(self.home)
        return st.f_bavail * st.f_frsize

    def purge_stale_temp(self, older_than: float = 3600.0) -> int:
        """Remove temporary files left by a crashed writer. Returns how many were removed."""
        cutoff = time.time() - older_than
        removed = 0
        for entry in os.scandir(self.tmp):
            try:
                if entry.is_file() and entry.stat().st_mtime < cutoff:
                    os.unlink(entry.path)
                    removed += 1
            except FileNotFoundError:
                continue
        return removed


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class TempFiles:
    """Pre-created temporary files, handed out ready to write.

    Creating a file has to wait for the file system's journal, and right after an fsync (which
    every received instance causes) that wait is long. A background thread creates the files
    ahead of need, so the receive path does not wait for the journal twice.
    """

    def __init__(self, root: DataRoot, depth: int = 8):
        self.root = root
        self.ready: queue.Queue[tuple[int, Path]] = queue.Queue(maxsize=depth)
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self._fill, name="temp-files", daemon=True)
        self.thread.start()

    def _create(self) -> tuple[int, Path]:
        path = self.root.temp_path()
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640), path

    def _fill(self) -> None:
        while not self.closed.is_set():
            try:
                item = self._create()
            except OSError:
                time.sleep(1.0)  # disk full or similar: the taker creates its own and reports
                continue
            while not self.closed.is_set():
                try:
                    self.ready.put(item, timeout=0.5)
                    break
                except queue.Full:
                    continue
            else:
                os.close(item[0])
                item[1].unlink(missing_ok=True)

    def take(self) -> tuple[int, Path]:
        while True:
            try:
                fd, path = self.ready.get_nowait()
            except queue.Empty:
                return self._create()
            # Another process sharing the data root may have purged it as stale.
            if os.fstat(fd).st_nlink > 0:
                return fd, path
            os.close(fd)

    def close(self) -> None:
        self.closed.set()
        while True:
            try:
                fd, path = self.ready.get_nowait()
            except queue.Empty:
                break
            os.close(fd)
            path.unlink(missing_ok=True)
