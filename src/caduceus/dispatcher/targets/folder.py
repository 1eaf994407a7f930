"""Folder target: a new subfolder per task, published atomically with a completion marker."""

from __future__ import annotations

import fnmatch
import os
import shutil
from pathlib import Path

from caduceus.core.config.models import FolderTarget
from caduceus.dispatcher.targets.base import SendReport, Shipment, TargetError, excluded

MARKER = ".complete"


class FolderWriter:
    def __init__(self, settings: FolderTarget):
        self.settings = settings
        self.root = Path(settings.path)

    def test(self) -> str:
        if not self.root.is_dir():
            raise TargetError(f"folder {self.root} does not exist")
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise TargetError(f"folder {self.root} is not writable")
        return f"folder {self.root} is writable"

    def send(self, files: list[Path], shipment: Shipment) -> SendReport:
        self.test()
        report = SendReport()
        final = self.root / shipment.task_id
        partial = self.root / f".{shipment.task_id}.partial"
        if final.exists():  # delivered by an earlier attempt that died before recording it
            report.accepted = list(files)
            return report
        shutil.rmtree(partial, ignore_errors=True)
        # Images with patient data: readable by caduceus's account only (or its group, when
        # the target allows it), whatever the umask.
        group = self.settings.group_access
        file_mode, folder_mode = (0o640, 0o750) if group else (0o600, 0o700)
        partial.mkdir(mode=folder_mode)
        os.chmod(partial, folder_mode)
        pattern = self.settings.file_filter
        for path in files:
            if shipment.interrupted():
                # Published whole or not at all: the next dispatcher copies it again.
                shutil.rmtree(partial, ignore_errors=True)
                return SendReport(interrupted=True)
            if pattern and not fnmatch.fnmatch(path.name, pattern):
                continue
            if excluded(path, self.settings.exclude):  # not sent, by the target's choice
                continue
            try:
                _copy(path, partial / path.name, file_mode)
                report.accepted.append(path)
            except OSError as exc:
                report.failed[path] = f"cannot write: {exc.strerror}"
        if report.failed:
            shutil.rmtree(partial, ignore_errors=True)
            report.accepted.clear()
            return report
        (partial / MARKER).touch(mode=file_mode)
        os.rename(partial, final)
        return report


def _copy(source: Path, destination: Path, mode: int) -> None:
    fd = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "wb") as out, open(source, "rb") as given:
        shutil.copyfileobj(given, out, 1024 * 1024)
    os.chmod(destination, mode)  # the umask may have taken group bits away
