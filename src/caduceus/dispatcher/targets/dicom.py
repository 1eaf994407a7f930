"""DICOM target: C-STORE with pynetdicom, instance by instance, resuming after a lost association.

Each file goes in its stored transfer syntax when the target accepts it. When the target only
accepts uncompressed syntaxes for that SOP class, the file is decoded (pydicom's pixel plugins)
and sent uncompressed instead of failing. Nagle's algorithm is turned off on the socket:
pynetdicom leaves it on, and every small request would otherwise stall on delayed ACKs.
"""

from __future__ import annotations

import logging
import socket
from collections import defaultdict
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom import _config as pynetdicom_config
from pynetdicom.association import Association

from caduceus.core.config.models import DicomTarget
from caduceus.core.dicom.identity import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION
from caduceus.dispatcher.targets.base import SendReport, TargetError

log = logging.getLogger("caduceus.dispatcher")

UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
MAX_CONTEXTS = 128
MAX_RECONNECTS = 3
VERIFICATION = "1.2.840.10008.1.1"


def _success(status: Any) -> bool:
    code = int(getattr(status, "Status", -1)) if status else -1
    return code == 0 or (code >> 12) == 0xB  # success or warning (B000-BFFF)


class DicomSender:
    def __init__(self, settings: DicomTarget):
        self.settings = settings

    def _ae(self) -> AE:
        ae = AE(ae_title=self.settings.calling_aet)
        ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
        ae.implementation_version_name = IMPLEMENTATION_VERSION
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
        return ae

    def _associate(self, ae: AE) -> Association:
        s = self.settings
        assoc = ae.associate(s.host, s.port, ae_title=s.called_aet)
        if not assoc.is_established:
            raise TargetError(
                f"association with {s.called_aet}@{s.host}:{s.port} was rejected or failed"
            )
        if assoc.dul.socket is not None and assoc.dul.socket.socket is not None:
            assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return assoc

    def test(self) -> str:
        ae = self._ae()
        ae.add_requested_context(VERIFICATION)
        assoc = self._associate(ae)
        try:
            status = assoc.send_c_echo()
        finally:
            assoc.release()
        if not _success(status):
            raise TargetError("the target did not answer C-ECHO with success")
        return f"C-ECHO to {self.settings.called_aet}@{self.settings.host}:{self.settings.port} ok"

    def send(self, files: list[Path], task_id: str) -> SendReport:
        report = SendReport()
        syntaxes: dict[str, set[str]] = defaultdict(set)
        meta: dict[Path, tuple[str, str]] = {}
        for path in files:
            try:
                fm = dcmread(path, stop_before_pixels=True).file_meta
                meta[path] = (str(fm.MediaStorageSOPClassUID), str(fm.TransferSyntaxUID))
                syntaxes[meta[path][0]].add(meta[path][1])
            except Exception as exc:
                report.failed[path] = f"unreadable file: {exc}"
        ae = self._ae()
        for sop_class, stored in sorted(syntaxes.items()):
            for syntax in sorted(stored | {str(s) for s in UNCOMPRESSED}):
                if len(ae.requested_contexts) < MAX_CONTEXTS:
                    ae.add_requested_context(sop_class, [syntax])
        # Files go as they are on disk, in PDU-sized pieces: no decoding, flat memory.
        pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True
        pending = [p for p in files if p in meta]
        for _attempt in range(MAX_RECONNECTS + 1):
            if not pending:
                break
            try:
                assoc = self._associate(ae)
            except TargetError as exc:
                for path in pending:
                    report.failed[path] = str(exc)
                return report
            try:
                pending = self._send_on(assoc, pending, meta, report)
            finally:
                if assoc.is_established:
                    assoc.release()
            if pending:
                log.warning(
                    "association lost with %d instance(s) unconfirmed; resuming", len(pending)
                )
        for path in pending:
            report.failed[path] = "association lost repeatedly"
        return report

    def _send_on(
        self,
        assoc: Association,
        files: list[Path],
        meta: dict[Path, tuple[str, str]],
        report: SendReport,
    ) -> list[Path]:
        """Send until done or the association is lost; return the files not yet confirmed."""
        accepted: dict[str, set[str]] = defaultdict(set)
        for context in assoc.accepted_contexts:
            accepted[str(context.abstract_syntax)].add(str(context.transfer_syntax[0]))
        for index, path in enumerate(files):
            if not assoc.is_established:
                return files[index:]
            sop_class, syntax = meta[path]
            try:
                if syntax in accepted[sop_class]:
                    status = assoc.send_c_store(path)
                elif accepted[sop_class] & {str(s) for s in UNCOMPRESSED}:
                    ds = dcmread(path)
                    # Same image, same identity: pydicom would otherwise mint a new SOP
                    # Instance UID, and the target would hold an instance nobody sent.
                    ds.decompress(generate_instance_uid=False)
                    status = assoc.send_c_store(ds)
                    if _success(status):
                        report.transcoded.append(path)
                else:
                    report.failed[path] = f"the target accepts no transfer syntax for {sop_class}"
                    continue
            except Exception as exc:  # decoding failure or a broken association
                if not assoc.is_established:
                    return files[index:]
                report.failed[path] = f"cannot send: {exc}"
                continue
            if _success(status):
                report.accepted.append(path)
            elif not status:  # no response at all: the association broke mid-request
                return files[index:]
            else:
                comment = str(getattr(status, "ErrorComment", "") or "")
                report.failed[path] = f"status 0x{int(status.Status):04X} {comment}".strip()
        return []


__all__ = ["DicomSender"]
