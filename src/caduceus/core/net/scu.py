"""A lean storage SCU on the same upper-layer code as the receiver.

One association, one request at a time: the dataset bytes of each file go from the file to the
socket in PDU-sized pieces, nothing is decoded, and Nagle's algorithm is off. pynetdicom's PDU
classes encode the association request and decode the answer; the rest is a few bytes per PDU.

With an SSL context the connected socket is wrapped before the association request (DICOM over
TLS, PS3.15 annex B). Everything then goes through the SSL socket's send and recv: never hand
its file descriptor to os.sendfile, which would write plaintext under the TLS stream.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
from dataclasses import dataclass
from pathlib import Path

from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import PresentationContext

from caduceus.core.dicom.identity import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION
from caduceus.core.net import dimse, pdu

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
OUR_MAX_PDU = 1024 * 1024
CHUNK = 1024 * 1024


class AssociationFailed(Exception):
    pass


class AssociationLost(Exception):
    pass


@dataclass(frozen=True)
class Response:
    status: int
    comment: str

    @property
    def ok(self) -> bool:
        return self.status == 0 or (self.status >> 12) == 0xB


def dataset_offset(path: Path) -> int:
    """Where the dataset starts in a DICOM file (after the preamble and File Meta group)."""
    with open(path, "rb") as fh:
        head = fh.read(144)
    if len(head) < 144 or head[128:132] != b"DICM" or head[132:136] != b"\x02\x00\x00\x00":
        raise ValueError(f"{path.name}: not a DICOM file with a File Meta group length")
    return 144 + int(struct.unpack_from("<I", head, 140)[0])


def _tls_failure(exc: OSError) -> str:
    """Why a TLS handshake failed, in words (no OpenSSL source positions)."""
    hint = " (does the target speak TLS on this port?)"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLEOFError):
        return "the target closed the connection during the handshake" + hint
    if isinstance(exc, ssl.SSLError):
        reason = str(exc.reason or exc.strerror or exc).replace("_", " ").lower()
        if exc.reason in ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG"):
            return f"{reason}{hint}"
        return reason
    if isinstance(exc, TimeoutError):
        return "no answer to the TLS handshake in time" + hint
    if isinstance(exc, ConnectionResetError):
        return "the target reset the connection during the handshake" + hint
    return str(exc.strerror or exc)


class StoreSCU:
    def __init__(
        self,
        host: str,
        port: int,
        calling: str,
        called: str,
        contexts: list[tuple[str, str]],
        timeout: float = 60,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ):
        """With ssl_context, speak TLS; server_hostname (default host) is checked and sent (SNI)."""
        self.called = called
        try:
            self.sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            raise AssociationFailed(
                f"cannot connect to {called}@{host}:{port}: {exc.strerror}"
            ) from exc
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if ssl_context is not None:
            plain = self.sock
            try:
                self.sock = ssl_context.wrap_socket(plain, server_hostname=server_hostname or host)
            except OSError as exc:  # ssl.SSLError is an OSError too
                plain.close()
                raise AssociationFailed(
                    f"TLS handshake with {host}:{port} failed: {_tls_failure(exc)}"
                ) from exc
        self.reader = pdu.SocketReader(self.sock)
        self.message_id = 0
        self.accepted: dict[tuple[str, str], int] = {}
        self.peer_max = 0
        try:
            self._associate(calling, called, contexts)
        except AssociationFailed:
            self.sock.close()
            raise
        except (ValueError, struct.error) as exc:  # an answer that does not decode
            self.sock.close()
            raise AssociationFailed(f"{called}@{host}:{port}: malformed answer: {exc}") from exc
        except (pdu.PeerClosed, OSError) as exc:
            self.sock.close()
            cause = exc.__cause__ if isinstance(exc, pdu.PeerClosed) else exc
            if isinstance(cause, ssl.SSLError):  # TLS 1.3 refuses a client certificate only now
                why = (
                    "the target ended the TLS connection (did it refuse our client certificate?)"
                    if isinstance(cause, ssl.SSLEOFError)
                    else _tls_failure(cause)
                )
                raise AssociationFailed(f"{called}@{host}:{port}: TLS: {why}") from exc
            raise AssociationFailed(f"{called}@{host}:{port}: {exc}") from exc

    def _associate(self, calling: str, called: str, contexts: list[tuple[str, str]]) -> None:
        primitive = A_ASSOCIATE()
        primitive.application_context_name = APPLICATION_CONTEXT
        primitive.calling_ae_title = calling
        primitive.called_ae_title = called
        proposed = []
        for index, (abstract, syntax) in enumerate(contexts):
            context = PresentationContext()
            context.context_id = 2 * index + 1
            context.abstract_syntax = abstract
            context.transfer_syntax = [syntax]
            proposed.append(context)
        primitive.presentation_context_definition_list = proposed
        max_length = MaximumLengthNotification()
        max_length.maximum_length_received = OUR_MAX_PDU
        uid = ImplementationClassUIDNotification()
        uid.implementation_class_uid = IMPLEMENTATION_CLASS_UID
        version = ImplementationVersionNameNotification()
        version.implementation_version_name = IMPLEMENTATION_VERSION
        primitive.user_information = [max_length, uid, version]
        rq = A_ASSOCIATE_RQ()
        rq.from_primitive(primitive)
        self.sock.sendall(rq.encode())
        kind, length = pdu.PDU_HEADER.unpack(self.reader.read(6))
        body = pdu.PDU_HEADER.pack(kind, length) + self.reader.read(length)
        if kind == pdu.A_ASSOCIATE_RJ:
            rj = A_ASSOCIATE_RJ()
            rj.decode(body)
            raise AssociationFailed(f"association rejected by {called}: {rj.reason_str}")
        if kind != pdu.A_ASSOCIATE_AC:
            raise AssociationFailed(f"unexpected answer from {called} (PDU type {kind})")
        ac = A_ASSOCIATE_AC()
        ac.decode(body)
        answer = ac.to_primitive()
        by_id = {c.context_id: c for c in proposed}
        for result in answer.presentation_context_definition_results_list:
            if result.result == 0 and result.context_id in by_id:
                asked = by_id[result.context_id]
                self.accepted[(str(asked.abstract_syntax), str(asked.transfer_syntax[0]))] = int(
                    result.context_id or 0
                )
        for item in answer.user_information:
            if isinstance(item, MaximumLengthNotification):
                self.peer_max = int(item.maximum_length_received or 0)

    def context_for(self, sop_class: str, syntax: str) -> int | None:
        return self.accepted.get((sop_class, syntax))

    def _send_pdv(
        self, context_id: int, payload: bytes | memoryview, command: bool, last: bool
    ) -> None:
        control = (1 if command else 0) | (2 if last else 0)
        header = pdu.PDU_HEADER.pack(pdu.P_DATA_TF, len(payload) + 6) + pdu.PDV_HEADER.pack(
            len(payload) + 2, context_id, control
        )
        self.sock.sendall(header)
        self.sock.sendall(payload)

    def _send_message(
        self, context_id: int, command: bytes, dataset: bytes | None, path: Path | None, offset: int
    ) -> None:
        room = (self.peer_max - 6) if self.peer_max and self.peer_max > 6 else CHUNK
        room = min(room, CHUNK)
        for start in range(0, len(command), room):
            piece = command[start : start + room]
            self._send_pdv(context_id, piece, True, start + room >= len(command))
        if dataset is not None:
            for start in range(0, len(dataset), room):
                self._send_pdv(
                    context_id, dataset[start : start + room], False, start + room >= len(dataset)
                )
        elif path is not None:
            with open(path, "rb") as fh:
                fh.seek(offset)
                size = path.stat().st_size - offset
                sent = 0
                buffer = bytearray(room)
                view = memoryview(buffer)
                while sent < size:
                    n = fh.readinto(view[: min(room, size - sent)])
                    if not n:
                        raise ValueError(f"{path.name} shrank while being sent")
                    sent += n
                    self._send_pdv(context_id, view[:n], False, sent >= size)

    def _response(self) -> Response:
        command = bytearray()
        while True:
            kind, length = pdu.PDU_HEADER.unpack(self.reader.read(6))
            if kind == pdu.A_ABORT or kind == pdu.A_RELEASE_RQ:
                raise AssociationLost(f"{self.called} ended the association")
            body = self.reader.read(length)
            if kind != pdu.P_DATA_TF:
                raise AssociationLost(f"unexpected PDU type {kind} from {self.called}")
            pos = 0
            while pos < len(body):
                pdv_length, _context, control = pdu.PDV_HEADER.unpack_from(body, pos)
                command += body[pos + 6 : pos + 4 + pdv_length]
                pos += 4 + pdv_length
                if control & 0x03 == 0x03:
                    parsed = dimse.parse_command(bytes(command))
                    return Response(parsed.status, parsed.error_comment)

    def store_file(self, path: Path, sop_class: str, sop_instance: str, syntax: str) -> Response:
        context_id = self.context_for(sop_class, syntax)
        if context_id is None:
            raise KeyError((sop_class, syntax))
        # Before anything goes out: a file that cannot be read (gone, unreadable, not DICOM)
        # fails alone, as OSError or ValueError, and is not taken for a lost association.
        offset = dataset_offset(path)
        self.message_id = (self.message_id % 65535) + 1
        command = dimse.encode_c_store_rq(self.message_id, sop_class, sop_instance)
        try:
            self._send_message(context_id, command, None, path, offset)
            return self._response()
        except (OSError, pdu.PeerClosed, pdu.ProtocolError) as exc:
            raise AssociationLost(str(exc)) from exc

    def store_bytes(
        self, dataset: bytes, sop_class: str, sop_instance: str, syntax: str
    ) -> Response:
        context_id = self.context_for(sop_class, syntax)
        if context_id is None:
            raise KeyError((sop_class, syntax))
        self.message_id = (self.message_id % 65535) + 1
        command = dimse.encode_c_store_rq(self.message_id, sop_class, sop_instance)
        try:
            self._send_message(context_id, command, dataset, None, 0)
            return self._response()
        except (OSError, pdu.PeerClosed, pdu.ProtocolError) as exc:
            raise AssociationLost(str(exc)) from exc

    def echo(self) -> Response:
        context_id = self.context_for("1.2.840.10008.1.1", "1.2.840.10008.1.2")
        if context_id is None:
            raise KeyError("verification")
        self.message_id = (self.message_id % 65535) + 1
        try:
            self._send_message(context_id, dimse.encode_c_echo_rq(self.message_id), None, None, 0)
            return self._response()
        except (OSError, pdu.PeerClosed, pdu.ProtocolError) as exc:
            raise AssociationLost(str(exc)) from exc

    def release(self) -> None:
        try:
            self.sock.sendall(pdu.encode_pdu(pdu.A_RELEASE_RQ, b"\x00\x00\x00\x00"))
            _, length = pdu.PDU_HEADER.unpack(self.reader.read(6))
            self.reader.read(length)
        except (OSError, pdu.PeerClosed):
            pass
        finally:
            self.sock.close()

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(pdu.a_abort(0, 0))
        self.sock.close()
