"""A DICOMweb target with a file:// URL: a file-based DICOMweb store in a local folder.

mercure hands such a URL to dicomweb-client's DICOMfileClient, which writes each instance into
the folder and keeps an SQLite index beside it. Here each instance is written, whole and as
received, to <folder>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm; no index is
written (DICOMfileClient builds its index from the files when it opens the folder). Each file
appears under its final name only once complete (written aside, then renamed), so a reader
never sees half an instance, and sending it again (a resumed task) replaces it with the same.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from caduceus.core.config.models import DicomWebTarget, file_folder
from caduceus.core.storage import fsync_dir
from caduceus.dispatcher.targets.base import SendReport, Shipment, TargetError

# A UID becomes a path component: only what a UID may hold (PS3.5 9.1), so that a hostile
# header cannot name "../" or an absolute path.
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_UID_TAGS = ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"]


class FileStore:
    def __init__(self, settings: DicomWebTarget):
        self.settings = settings
        self.root = Path(file_folder(settings.url))

    def test(self) -> str:
        if not self.root.is_dir():
            raise TargetError(f"folder {self.root} does not exist")
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise TargetError(f"folder {self.root} is not writable")
        return f"folder {self.root} is writable (a file-based DICOMweb store)"

    def send(self, files: list[Path], shipment: Shipment) -> SendReport:
        self.test()
        report = SendReport()
        for path in files:
            if shipment.interrupted():
                report.interrupted = True
                break
            try:
                destination = self.root.joinpath(*_uids(path))
            except ValueError as exc:
                report.failed[path] = str(exc)
                continue
            try:
                _write(path, destination)
                report.accepted.append(path)
            except OSError as exc:
                report.failed[path] = f"cannot write: {exc.strerror or exc}"
        return report


def _uids(path: Path) -> list[str]:
    """study, series and "<instance>.dcm" of a file; ValueError when one is not a UID."""
    try:
        dataset = dcmread(path, stop_before_pixels=True, specific_tags=_UID_TAGS)
    except (OSError, InvalidDicomError) as exc:
        raise ValueError(f"unreadable file: {exc}") from exc
    uids = [str(dataset.get(tag, "")) for tag in _UID_TAGS]
    for tag, uid in zip(_UID_TAGS, uids, strict=True):
        if not (0 < len(uid) <= 64 and _UID.match(uid)):
            raise ValueError(f"{tag} is missing or not a valid UID")
    return [uids[0], uids[1], f"{uids[2]}.dcm"]


def _write(source: Path, destination: Path) -> None:
    destination.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    aside = destination.with_name(f".{destination.name}.partial")
    fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as out, open(source, "rb") as given:
            shutil.copyfileobj(given, out, 1024 * 1024)
            out.flush()
            os.fsync(out.fileno())
        os.replace(aside, destination)
    except BaseException:
        aside.unlink(missing_ok=True)
        raise
    # The rename is durable only with its folder: the send is recorded done after this.
    fsync_dir(destination.parent)
