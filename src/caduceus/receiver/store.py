"""Writing one received instance: stream to a temporary file, check, publish, record.

A success status is returned only when the file is on disk under its final name and its record
is committed: that is the promise a C-STORE success makes to the sender.
"""

from __future__ import annotations

import errno
import io
import logging
import mmap
import os
import struct
import zlib
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pydicom.uid import UID
from sqlalchemy import Engine

from caduceus.core.db.group_commit import GroupCommitter
from caduceus.core.dicom.header import WANTED_TAGS, Header, decode_header
from caduceus.core.dicom.identity import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION
from caduceus.core.dicom.inflate import InflatedTooLarge, NoRoom, inflate_to
from caduceus.core.dicom.names import safe_name
from caduceus.core.dicom.structure import MalformedDataset, scan
from caduceus.core.storage import DataRoot, TempFiles, fsync_dir
from caduceus.receiver import records, status
from caduceus.receiver.admission import RoomGuard

log = logging.getLogger("caduceus.receiver")

# Settings.receiver_max_inflated_mb's default, for callers that pass no limit.
MAX_INFLATED = 4096 * 1024 * 1024
# A deflated dataset may hold as many elements as it has deflated bytes, and a million in any
# case. Real data does not compress its element headers that far, but a bomb packs millions of
# empty elements into a few kilobytes, and walking each one costs the check CPU time.
DEFLATED_MIN_ELEMENTS = 1_000_000

PREAMBLE = bytes(128) + b"DICM"
# Datasets up to this size are also kept in memory while they stream to disk, so checking them
# needs no second read; larger ones are checked through a memory map of the file.
IN_MEMORY = 1024 * 1024
_LONG_META_VRS = {b"OB"}
_FULL = (errno.ENOSPC, errno.EDQUOT)


def _meta_element(elem: int, vr: bytes, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\x00" if vr == b"UI" else b" "
    if vr in _LONG_META_VRS:
        return struct.pack("<HH2sHI", 2, elem, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", 2, elem, vr, len(value)) + value


def file_meta(sop_class: str, sop_instance: str, syntax: str, calling: str, called: str) -> bytes:
    """The File Meta Information group (PS3.10 7.1) for a received instance."""
    body = b"".join(
        (
            _meta_element(0x0001, b"OB", b"\x00\x01"),
            _meta_element(0x0002, b"UI", sop_class.encode("ascii", "replace")),
            _meta_element(0x0003, b"UI", sop_instance.encode("ascii", "replace")),
            _meta_element(0x0010, b"UI", syntax.encode("ascii")),
            _meta_element(0x0012, b"UI", IMPLEMENTATION_CLASS_UID.encode("ascii")),
            _meta_element(0x0013, b"SH", IMPLEMENTATION_VERSION.encode("ascii")),
            _meta_element(0x0016, b"AE", calling.encode("ascii", "replace")),
            _meta_element(0x0017, b"AE", calling.encode("ascii", "replace")),
            _meta_element(0x0018, b"AE", called.encode("ascii", "replace")),
        )
    )
    return PREAMBLE + _meta_element(0x0000, b"UL", struct.pack("<I", len(body))) + body


@dataclass(frozen=True, slots=True)
class Outcome:
    status: int
    comment: str = ""
    instance_id: int | None = None
    quarantined_as: str | None = None  # where a refused dataset was kept, relative to the root


class Refused(Exception):
    def __init__(self, code: int, comment: str, keep: bool = True):
        super().__init__(comment)
        self.code = code
        self.comment = comment
        self.keep = keep  # worth keeping in quarantine for a look (not a bomb, not nothing)


@dataclass(frozen=True, slots=True)
class StoreContext:
    root: DataRoot
    temp_files: TempFiles
    engine: Engine
    committer: GroupCommitter
    fsync: bool
    association_id: int
    calling_aet: str
    called_aet: str
    peer_host: str
    disk_reserve_bytes: int = 0  # the floor (admission.FLOOR_BYTES) holds below this anyway


BELOW_RESERVE = "out of resources: disk space below reserve"


class InstanceWriter:
    """Receives one dataset's bytes as they arrive from the network."""

    def __init__(
        self,
        ctx: StoreContext,
        sop_class: str,
        sop_instance: str,
        syntax: UID,
        max_inflated: int = MAX_INFLATED,
    ):
        self.ctx = ctx
        self.max_inflated = max_inflated
        self.sop_class = sop_class
        self.sop_instance = sop_instance
        self.syntax = syntax
        self.failure: Refused | None = None
        self.meta = file_meta(sop_class, sop_instance, syntax, ctx.calling_aet, ctx.called_aet)
        self.size = 0
        self.copy: bytearray | None = None
        self.room = RoomGuard(ctx.root, ctx.disk_reserve_bytes)
        fd, self.temp = ctx.temp_files.take()
        self.fd: int | None = fd
        self._write(memoryview(self.meta))
        self.copy = bytearray()

    def _write(self, data: memoryview) -> None:
        if self.fd is None:
            return  # already failed: the rest of the dataset is read and dropped
        if self.copy is not None:
            if len(self.copy) + len(data) <= IN_MEMORY:
                self.copy += data
            else:
                self.copy = None
        if not self.room.admits(len(data)):
            # Refused like one that arrived below the reserve; the partial file goes at once.
            self.failure = Refused(status.OUT_OF_RESOURCES, BELOW_RESERVE, keep=False)
            self._discard()
            return
        try:
            while data:
                written = os.write(self.fd, data)
                data = data[written:]
                self.size += written
        except OSError as exc:
            self.failure = _os_refusal(exc, "cannot write")
            self._discard()

    write = _write

    def _discard(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        self.temp.unlink(missing_ok=True)

    def abandon(self) -> None:
        """The association ended before the dataset did: nothing of it is kept."""
        self._discard()

    def finish(self) -> Outcome:
        """Check and publish; a refusal is answered, and recorded by the association."""
        if self.failure is not None:
            return Outcome(self.failure.code, self.failure.comment)
        assert self.fd is not None
        try:
            if self.ctx.fsync:
                os.fdatasync(self.fd)
            os.close(self.fd)
            self.fd = None
            header = self._check()
        except Refused as refused:
            kept = self._quarantine() if refused.keep else None
            if not refused.keep:
                self._discard()
            return Outcome(refused.code, refused.comment, quarantined_as=kept)
        except OSError as exc:
            self._discard()
            return Outcome(status.PROCESSING_FAILURE, f"cannot store: {exc.strerror}")
        return self._publish(header)

    def _check(self) -> Header:
        if self.size - len(self.meta) < 8:
            raise Refused(status.CANNOT_DECODE, "dataset is empty")
        if self.syntax.is_deflated:
            return self._check_deflated()
        if self.copy is not None:
            return self._check_bytes(self.copy, 0)
        with open(self.temp, "rb") as fh:
            return self._check_mapped(fh.fileno(), len(self.meta))

    def _check_mapped(self, fd: int, start: int, max_elements: int | None = None) -> Header:
        with mmap.mmap(fd, 0, access=mmap.ACCESS_READ) as mm:
            view = memoryview(mm)
            try:
                return self._check_bytes(view, start, max_elements)
            finally:
                view.release()

    def _check_deflated(self) -> Header:
        """Inflate into a second temporary file (never into memory: a bomb inflates a
        thousandfold), check that, and remove it; the file kept is the deflated one as received."""
        inflated = self.ctx.root.temp_path(".inflated")
        fd = os.open(inflated, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with ExitStack() as stack:
                if self.copy is not None:
                    source: BinaryIO = io.BytesIO(self.copy)
                else:
                    source = stack.enter_context(open(self.temp, "rb"))
                    source.seek(len(self.meta))
                try:
                    room = RoomGuard(self.ctx.root, self.ctx.disk_reserve_bytes)
                    size = inflate_to(source, fd, self.max_inflated, room.admits)
                except InflatedTooLarge as exc:
                    raise Refused(
                        status.TOO_LARGE,
                        f"deflated dataset inflates to more than {exc.limit} bytes",
                        keep=False,
                    ) from exc
                except NoRoom as exc:
                    raise Refused(status.OUT_OF_RESOURCES, BELOW_RESERVE, keep=False) from exc
                except zlib.error as exc:
                    raise Refused(status.CANNOT_DECODE, f"malformed dataset: {exc}") from exc
                except OSError as exc:
                    raise _os_refusal(exc, "cannot inflate", keep=False) from exc
            elements = max(DEFLATED_MIN_ELEMENTS, self.size - len(self.meta))
            if size <= IN_MEMORY:
                return self._check_bytes(os.pread(fd, size, 0), 0, elements)
            return self._check_mapped(fd, 0, elements)
        finally:
            os.close(fd)
            inflated.unlink(missing_ok=True)

    def _check_bytes(
        self, data: bytes | bytearray | memoryview, start: int, max_elements: int | None = None
    ) -> Header:
        try:
            layout = scan(
                data,
                self.syntax.is_implicit_VR,
                self.syntax.is_little_endian,
                start,
                WANTED_TAGS,
                max_elements,
            )
            header = decode_header(layout.values)
        except MalformedDataset as exc:
            raise Refused(status.CANNOT_DECODE, f"malformed dataset: {exc}") from exc
        except (ValueError, LookupError) as exc:
            raise Refused(status.CANNOT_DECODE, f"header cannot be decoded: {exc}") from exc
        missing = [
            name
            for name, value in (
                ("StudyInstanceUID", header.study_uid),
                ("SeriesInstanceUID", header.series_uid),
                ("SOPInstanceUID", header.sop_instance_uid),
            )
            if not value
        ]
        if missing:
            raise Refused(status.MISSING_ATTRIBUTE, "dataset lacks " + ", ".join(missing))
        if header.sop_instance_uid != self.sop_instance:
            raise Refused(
                status.INSTANCE_MISMATCH,
                "SOPInstanceUID in dataset differs from the C-STORE request",
            )
        if header.sop_class_uid and header.sop_class_uid != self.sop_class:
            raise Refused(
                status.SOP_CLASS_MISMATCH, "SOPClassUID in dataset differs from the C-STORE request"
            )
        return header

    def _publish(self, header: Header) -> Outcome:
        root = self.ctx.root
        final = final_path(root, header.series_uid, header.sop_instance_uid)
        folder = final.parent
        try:
            root.ensure_folder(folder)
            try:
                os.rename(self.temp, final)
            except FileNotFoundError:
                # The folder was removed since we saw it (the cleaner): make it again.
                folder.mkdir(exist_ok=True)
                os.rename(self.temp, final)
            if self.ctx.fsync:
                fsync_dir(folder)
        except OSError as exc:
            self._discard()
            return Outcome(status.PROCESSING_FAILURE, f"cannot store: {exc.strerror}")
        relative = root.relative(final)
        try:
            instance_id, previous = self.ctx.committer.run(
                lambda conn: records.record_instance(
                    conn,
                    header,
                    transfer_syntax=str(self.syntax),
                    path=relative,
                    size=self.size,
                    association_id=self.ctx.association_id,
                    series_folder=folder.name,
                )
            )
        except Exception as exc:
            # The file stays: it is complete but unrecorded, so nothing refers to it, and the
            # sender's retry replaces it. Removing it could remove the same instance that a
            # concurrent association has just stored and recorded.
            log.warning("database write failed for a received instance: %s", type(exc).__name__)
            return Outcome(status.PROCESSING_FAILURE, f"database unavailable: {type(exc).__name__}")
        if previous is not None and previous.path != relative:
            (root.home / previous.path).unlink(missing_ok=True)
        return Outcome(status.SUCCESS, instance_id=instance_id)

    def _quarantine(self) -> str | None:
        try:
            target = self.ctx.root.quarantine_path()
            os.rename(self.temp, target)
            return self.ctx.root.relative(target)
        except OSError:
            self._discard()
            return None


def _os_refusal(exc: OSError, doing: str, keep: bool = True) -> Refused:
    code = status.OUT_OF_RESOURCES if exc.errno in _FULL else status.PROCESSING_FAILURE
    return Refused(code, f"{doing}: {os.strerror(exc.errno or 0)}", keep)


class Discard:
    """Reads and drops a dataset that was refused before its first byte arrived."""

    def __init__(self, code: int, comment: str):
        self.outcome = Outcome(code, comment)

    def write(self, data: memoryview) -> None:
        return None

    def abandon(self) -> None:
        return None

    def finish(self) -> Outcome:
        return self.outcome


def final_path(root: DataRoot, series_uid: str, sop_instance_uid: str) -> Path:
    return root.incoming / safe_name(series_uid) / f"{safe_name(sop_instance_uid)}.dcm"
