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
        # Folders this process has made or seen, so that most writes skip a mkdir.
        self._known: dict[Path, None] = {}

    def create(self, mode: int | None = None) -> None:
        """The folders, new ones private to caduceus's account whatever the umask. With a
        mode (700, or 750 with CADUCEUS_FILE_GROUP_ACCESS), a data root made before with
        more permissions is narrowed to it."""
        for folder in (self.home, self.incoming, self.tmp, self.quarantine):
            folder.mkdir(parents=True, exist_ok=True, mode=mode or 0o700)
        if mode is not None and self.home.stat().st_mode & 0o777 & ~mode:
            os.chmod(self.home, self.home.stat().st_mode & mode)

    def ensure_folder(self, folder: Path) -> None:
        if folder not in self._known:
            folder.mkdir(parents=True, exist_ok=True)
            self._known[folder] = None
            if len(self._known) > 10_000:
                del self._known[next(iter(self._known))]

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


def used_percent(used: int, total: int) -> float:
    """The cleaner's measure of a file system's use (shutil.disk_usage's used over total); the
    overview and the metrics show the same number, so it lives here, below all three."""
    return 100.0 * used / total if total else 0.0


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class TempFiles:
    """Temporary files created ahead of need, handed out ready to write.

    Creating a file has to wait for the file system's journal, and right after an fsync (which
    every received instance causes) that wait is long. An association creates the file for its
    next instance right after answering the previous one, while the sender is busy preparing
    and sending the next request, so the wait overlaps with the network instead of adding to it.
    """

    def __init__(self, root: DataRoot):
        self.root = root
        self.ready: queue.SimpleQueue[tuple[int, Path]] = queue.SimpleQueue()

    def _create(self) -> tuple[int, Path]:
        path = self.root.temp_path()
        # Read-only from the start (the creating descriptor may still write): a received image
        # is never changed in place, also not through the hard links tasks and modules get.
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o440), path

    def prepare(self) -> None:
        """Create one file for a coming instance; failure is left for take() to report."""
        try:
            self.ready.put(self._create())
        except OSError:
            return

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
        while True:
            try:
                fd, path = self.ready.get_nowait()
            except queue.Empty:
                return
            os.close(fd)
            path.unlink(missing_ok=True)
