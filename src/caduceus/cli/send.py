"""`caduceus send`: a C-STORE SCU for files and folders, with a progress bar.

It sends with the same lean SCU as the dispatcher (core/net/scu.py): each file's dataset bytes
go out as they are, in PDU-sized pieces, and every socket operation has a time limit, so a peer
that stops answering ends the send with an error instead of hanging it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from caduceus.core.net.scu import AssociationFailed, AssociationLost, StoreSCU

MAX_CONTEXTS = 128
# A receiver that syncs every file to a busy disk can take a while to confirm one; DCMTK's
# storescu waits without limit. Two minutes tells a dead peer from a slow one.
TIMEOUT_SECONDS = 120


@dataclass
class SendReport:
    sent: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # path -> reason
    skipped: list[str] = field(default_factory=list)  # not DICOM
    statuses: Counter[int] = field(default_factory=Counter)


@dataclass(frozen=True)
class _Item:
    path: Path
    sop_class: str
    sop_instance: str
    syntax: str


def collect(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.is_file()))
        else:
            files.append(path)
    return files


def _items(files: list[Path], report: SendReport) -> list[_Item]:
    items: list[_Item] = []
    for path in files:
        try:
            meta = read_file_meta_info(path)
            items.append(
                _Item(
                    path,
                    str(meta.MediaStorageSOPClassUID),
                    str(meta.MediaStorageSOPInstanceUID),
                    str(meta.TransferSyntaxUID),
                )
            )
        except (InvalidDicomError, AttributeError, OSError, ValueError) as exc:
            report.skipped.append(f"{path}: {exc}")
    return items


def send(
    paths: list[Path],
    host: str,
    port: int,
    called_aet: str,
    calling_aet: str = "CADUCEUS_SCU",
    show_progress: bool = True,
    timeout: float = TIMEOUT_SECONDS,
) -> SendReport:
    report = SendReport()
    items = _items(collect(paths), report)
    if not items:
        return report
    pairs = sorted({(item.sop_class, item.syntax) for item in items})
    if len(pairs) > MAX_CONTEXTS:
        raise ValueError(f"{len(pairs)} SOP class/transfer syntax pairs exceed {MAX_CONTEXTS}")
    try:
        scu = StoreSCU(host, port, calling_aet, called_aet, pairs, timeout=timeout)
    except AssociationFailed as exc:
        raise ConnectionError(
            f"association with {called_aet}@{host}:{port} was not established: {exc}"
        ) from exc
    columns = (
        TextColumn("[bold]sending"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    lost = ""
    try:
        with Progress(*columns, disable=not show_progress) as progress:
            task = progress.add_task("send", total=len(items))
            for item in items:
                if not lost:
                    lost = _store(scu, item, report)
                if lost:
                    report.failed.setdefault(str(item.path), lost)
                progress.advance(task)
    finally:
        if lost:
            scu.abort()
        else:
            scu.release()
    return report


def _store(scu: StoreSCU, item: _Item, report: SendReport) -> str:
    """Send one file and record the outcome; the reason the association is lost, or ""."""
    if scu.context_for(item.sop_class, item.syntax) is None:
        report.failed[str(item.path)] = "the receiver accepted no context for it"
        return ""
    try:
        response = scu.store_file(item.path, item.sop_class, item.sop_instance, item.syntax)
    except AssociationLost as exc:
        return f"association lost: {exc}"
    except (OSError, ValueError) as exc:  # this file only; nothing of it was sent
        report.failed[str(item.path)] = f"cannot read: {exc}"
        return ""
    report.statuses[response.status] += 1
    if response.ok:  # success, or a warning
        report.sent += 1
    else:
        report.failed[str(item.path)] = f"status 0x{response.status:04X} {response.comment}".strip()
    return ""
