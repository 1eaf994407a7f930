"""DICOM target: C-STORE instance by instance, resuming after a lost association.

Each file goes in its stored transfer syntax when the target accepts it, straight from the file
to the socket. When the target only accepts uncompressed syntaxes for that SOP class, the file
is decoded (pydicom's pixel plugins) and sent uncompressed instead of failing. The sender is
the lean SCU in core/net (pynetdicom's association machinery costs more per image than the
sending does; see bench/dispatch.py).

A "dicomtls" target is the same sender over TLS: our certificate for mutual TLS, the target's
checked against the configured CA (and its host name, unless verify_hostname is off), TLS 1.2
at least.
"""

from __future__ import annotations

import logging
import ssl
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_file_meta_info
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from caduceus.core.config.models import DicomTarget, DicomTlsTarget
from caduceus.core.net.scu import AssociationFailed, AssociationLost, StoreSCU
from caduceus.dispatcher.targets.base import SendReport, Shipment, TargetError

log = logging.getLogger("caduceus.dispatcher")

UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
MAX_CONTEXTS = 128
MAX_RECONNECTS = 3
MIN_PER_ASSOCIATION = 10  # fewer files than this are not worth another association
VERIFICATION = "1.2.840.10008.1.1"


def _success(status: Any) -> bool:
    code = int(getattr(status, "Status", -1)) if status else -1
    return code == 0 or (code >> 12) == 0xB  # success or warning (B000-BFFF)


class DicomSender:
    def __init__(self, settings: DicomTarget):
        self.settings = settings
        self._ssl_context: ssl.SSLContext | None = None

    def _endpoint(self, shipment: Shipment | None) -> tuple[str, str, str]:
        """Host, calling and called AE title for this shipment (mercure's pass-through options)."""
        s = self.settings
        host, calling, called = s.host, s.calling_aet, s.called_aet
        if shipment is not None:
            if s.send_to_sender:
                if not shipment.sender_address:
                    raise TargetError("send back to the sender: the task has no sender address")
                host = shipment.sender_address
            if s.pass_sender_aet and shipment.sender_aet:
                calling = shipment.sender_aet
            if s.pass_receiver_aet and shipment.receiver_aet:
                called = shipment.receiver_aet
        return host, calling, called

    def _open(self, contexts: list[tuple[str, str]], shipment: Shipment | None = None) -> StoreSCU:
        host, calling, called = self._endpoint(shipment)
        port = self.settings.port
        try:
            return StoreSCU(host, port, calling, called, contexts, ssl_context=self._tls())
        except AssociationFailed as exc:
            raise TargetError(f"association with {called}@{host}:{port} failed: {exc}") from exc

    def _tls(self) -> ssl.SSLContext | None:
        """The TLS client context of a dicomtls target (built once), None for plain DICOM."""
        s = self.settings
        if not isinstance(s, DicomTlsTarget) or self._ssl_context is not None:
            return self._ssl_context
        files = [("CA certificate", s.tls_ca_certificate, b"-----BEGIN CERTIFICATE-----")]
        if s.tls_certificate:
            files += [
                ("certificate", s.tls_certificate, b"-----BEGIN CERTIFICATE-----"),
                ("private key", s.tls_key, b"PRIVATE KEY-----"),
            ]
        for role, name, marker in files:
            try:
                pem = Path(name).read_bytes()
            except OSError as exc:
                raise TargetError(f"TLS {role} {name}: {exc.strerror}") from exc
            if marker not in pem:  # the message names the file, never its content
                raise TargetError(f"TLS {role} {name}: not a PEM file with a {role}")
            if role == "private key" and b"ENCRYPTED" in pem:
                raise TargetError(f"TLS private key {name}: encrypted keys are not supported")
        try:
            context = ssl.create_default_context(cafile=s.tls_ca_certificate)
        except ssl.SSLError as exc:
            raise TargetError(
                f"TLS CA certificate {s.tls_ca_certificate}: unusable ({exc.reason or 'bad PEM'})"
            ) from exc
        try:
            if s.tls_certificate:
                context.load_cert_chain(s.tls_certificate, s.tls_key, password=b"")
        except ssl.SSLError as exc:
            why = "they do not match" if exc.reason == "KEY_VALUES_MISMATCH" else exc.reason
            raise TargetError(
                f"TLS certificate {s.tls_certificate} and key {s.tls_key}: unusable "
                f"({why or 'bad PEM'})"
            ) from exc
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.check_hostname = s.verify_hostname
        self._ssl_context = context
        return context

    def test(self) -> str:
        if not self.settings.host:
            raise TargetError("this target sends back to each task's sender: no fixed host to test")
        scu = self._open([(VERIFICATION, str(ImplicitVRLittleEndian))])
        try:
            if scu.context_for(VERIFICATION, str(ImplicitVRLittleEndian)) is None:
                raise TargetError("the target does not accept C-ECHO")
            ok = scu.echo().ok
        except AssociationLost as exc:
            raise TargetError(f"C-ECHO failed: {exc}") from exc
        finally:
            scu.release()
        if not ok:
            raise TargetError("the target did not answer C-ECHO with success")
        over = " over TLS" if isinstance(self.settings, DicomTlsTarget) else ""
        s = self.settings
        return f"C-ECHO{over} to {s.called_aet}@{s.host}:{s.port} ok"

    def send(self, files: list[Path], shipment: Shipment) -> SendReport:
        report = SendReport()
        syntaxes: dict[str, set[str]] = defaultdict(set)
        meta: dict[Path, tuple[str, str, str]] = {}
        for path in files:
            try:
                # The File Meta group says all we need; the dataset itself is not parsed.
                fm = read_file_meta_info(path)
                meta[path] = (
                    str(fm.MediaStorageSOPClassUID),
                    str(fm.TransferSyntaxUID),
                    str(fm.MediaStorageSOPInstanceUID),
                )
                syntaxes[meta[path][0]].add(meta[path][1])
            except Exception as exc:
                report.failed[path] = f"unreadable file: {exc}"
        contexts: list[tuple[str, str]] = []
        for sop_class, stored in sorted(syntaxes.items()):
            for syntax in sorted(stored | {str(s) for s in UNCOMPRESSED}):
                if len(contexts) < MAX_CONTEXTS:
                    contexts.append((sop_class, syntax))
        pending = [p for p in files if p in meta]
        chunks = _split(pending, self.settings.associations)
        if len(chunks) <= 1:
            self._send_all(pending, meta, contexts, shipment, report)
            return report
        self._tls()  # built once, before the threads share it
        parts = [SendReport() for _ in chunks]
        with ThreadPoolExecutor(len(chunks), thread_name_prefix="dicom-send") as pool:
            futures = [
                pool.submit(self._send_all, chunk, meta, contexts, shipment, part)
                for chunk, part in zip(chunks, parts, strict=True)
            ]
            for future in futures:
                future.result()
        for part in parts:
            report.accepted += part.accepted
            report.failed.update(part.failed)
            report.transcoded += part.transcoded
            report.interrupted |= part.interrupted
        return report

    def _send_all(
        self,
        pending: list[Path],
        meta: dict[Path, tuple[str, str, str]],
        contexts: list[tuple[str, str]],
        shipment: Shipment,
        report: SendReport,
    ) -> None:
        """Send on one association, resuming on a new one with what was not yet confirmed."""
        for _attempt in range(MAX_RECONNECTS + 1):
            if not pending:
                return
            if shipment.interrupted():
                report.interrupted = True
                return
            try:
                scu = self._open(contexts, shipment)
            except TargetError as exc:
                for path in pending:
                    report.failed[path] = str(exc)
                return
            try:
                pending = self._send_on(scu, pending, meta, report, shipment.interrupted)
            finally:
                if pending:
                    scu.abort()
                else:
                    scu.release()
            if pending:
                log.warning(
                    "association lost with %d instance(s) unconfirmed; resuming", len(pending)
                )
        for path in pending:
            report.failed[path] = "association lost repeatedly"

    def _send_on(
        self,
        scu: StoreSCU,
        files: list[Path],
        meta: dict[Path, tuple[str, str, str]],
        report: SendReport,
        interrupted: Callable[[], bool],
    ) -> list[Path]:
        """Send until done or the association is lost; return the files not yet confirmed.

        Interrupted, it stops after the instance in hand and returns nothing more to send."""
        for index, path in enumerate(files):
            if interrupted():
                report.interrupted = True
                return []
            sop_class, syntax, sop_instance = meta[path]
            try:
                if scu.context_for(sop_class, syntax) is not None:
                    response = scu.store_file(path, sop_class, sop_instance, syntax)
                else:
                    plain = next(
                        (str(s) for s in UNCOMPRESSED if scu.context_for(sop_class, str(s))), None
                    )
                    if plain is None:
                        report.failed[path] = (
                            f"the target accepts no transfer syntax for {sop_class}"
                        )
                        continue
                    try:
                        encoded = _decoded(path, plain)
                    except Exception as exc:
                        report.failed[path] = f"cannot decode for an uncompressed target: {exc}"
                        continue
                    response = scu.store_bytes(encoded, sop_class, sop_instance, plain)
                    if response.ok:
                        report.transcoded.append(path)
            except AssociationLost:
                return files[index:]
            except (OSError, ValueError) as exc:
                # The file could not be read whole (changed or damaged on disk); part of it may
                # be on the wire, so the rest goes on a new association.
                report.failed[path] = f"cannot send: {exc}"
                return files[index + 1 :]
            if response.ok:
                report.accepted.append(path)
            else:
                report.failed[path] = f"status 0x{response.status:04X} {response.comment}".strip()
        return []


def _split(files: list[Path], associations: int) -> list[list[Path]]:
    """Contiguous shares for parallel associations; small sends stay on one association."""
    count = max(1, min(associations, len(files) // MIN_PER_ASSOCIATION))
    size = -(-len(files) // count) if files else 0
    return [files[i : i + size] for i in range(0, len(files), size)] if files else []


def _decoded(path: Path, syntax: str) -> bytes:
    """The dataset decompressed and encoded in an uncompressed syntax, same SOP Instance UID."""
    ds = dcmread(path)
    # Same image, same identity: pydicom would otherwise mint a new SOP Instance UID, and the
    # target would hold an instance nobody sent.
    ds.decompress(generate_instance_uid=False)
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = syntax == str(ImplicitVRLittleEndian)
    write_dataset(buffer, ds)
    return bytes(buffer.getvalue())
