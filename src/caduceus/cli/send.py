"""`caduceus send`: a C-STORE SCU for files and folders, with a progress bar."""

from __future__ import annotations

import socket
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pynetdicom import AE
from pynetdicom import _config as pynetdicom_config
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from caduceus.core.dicom.identity import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION

MAX_CONTEXTS = 128


@dataclass
class SendReport:
    sent: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # path -> reason
    skipped: list[str] = field(default_factory=list)  # not DICOM
    statuses: Counter[int] = field(default_factory=Counter)


def collect(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.is_file()))
        else:
            files.append(path)
    return files


def _contexts(
    files: list[Path], report: SendReport
) -> tuple[list[tuple[Path, str, str]], set[tuple[str, str]]]:
    items: list[tuple[Path, str, str]] = []
    pairs: set[tuple[str, str]] = set()
    for path in files:
        try:
            ds = dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
            sop_class = str(ds.file_meta.MediaStorageSOPClassUID)
            syntax = str(ds.file_meta.TransferSyntaxUID)
        except (InvalidDicomError, AttributeError, OSError, ValueError) as exc:
            report.skipped.append(f"{path}: {exc}")
            continue
        items.append((path, sop_class, syntax))
        pairs.add((sop_class, syntax))
    return items, pairs


def send(
    paths: list[Path],
    host: str,
    port: int,
    called_aet: str,
    calling_aet: str = "CADUCEUS_SCU",
    show_progress: bool = True,
) -> SendReport:
    report = SendReport()
    items, pairs = _contexts(collect(paths), report)
    if not items:
        return report
    if len(pairs) > MAX_CONTEXTS:
        raise ValueError(f"{len(pairs)} SOP class/transfer syntax pairs exceed {MAX_CONTEXTS}")
    # Send each file's dataset bytes as they are, in PDU-sized chunks: nothing is decoded or
    # re-encoded, and memory stays flat however large the file.
    pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True
    ae = AE(ae_title=calling_aet)
    # A receiver that syncs every file to a busy disk can take longer than pynetdicom's 30 s
    # to confirm one; DCMTK's storescu waits without limit. Two minutes tells a dead peer
    # from a slow one.
    ae.dimse_timeout = 120
    ae.network_timeout = 120
    ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
    ae.implementation_version_name = IMPLEMENTATION_VERSION
    for sop_class, syntax in sorted(pairs):
        ae.add_requested_context(sop_class, [syntax])
    assoc = ae.associate(host, port, ae_title=called_aet)
    if not assoc.is_established:
        raise ConnectionError(f"association with {called_aet}@{host}:{port} was not established")
    # pynetdicom leaves Nagle's algorithm on, which stalls every small request on delayed ACKs.
    if assoc.dul.socket is not None and assoc.dul.socket.socket is not None:
        assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    columns = (
        TextColumn("[bold]sending"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    try:
        with Progress(*columns, disable=not show_progress) as progress:
            task = progress.add_task("send", total=len(items))
            for path, _, _ in items:
                if not assoc.is_established:
                    report.failed[str(path)] = "association lost"
                    continue
                result = assoc.send_c_store(path)
                code = int(getattr(result, "Status", -1)) if result else -1
                report.statuses[code] += 1
                if code == 0 or (code >> 12) == 0xB:  # success or warning
                    report.sent += 1
                else:
                    comment = str(getattr(result, "ErrorComment", "")) if result else ""
                    report.failed[str(path)] = (
                        f"status 0x{code:04X} {comment}".strip() if code >= 0 else "no response"
                    )
                progress.advance(task)
    finally:
        if assoc.is_established:
            assoc.release()
    return report
