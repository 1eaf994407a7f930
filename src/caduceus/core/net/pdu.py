"""DICOM Upper Layer framing (PS3.8 section 9): reading and writing PDUs on a socket.

The receive side is buffered and re-arms TCP_QUICKACK before every receive. Many senders
(DCMTK's storescu among them) leave Nagle's algorithm on; with delayed ACKs on our side each
small response then waits ~40 ms for the sender's next segment. Acknowledging at once removes
the stall without any change on the sender.
"""

from __future__ import annotations

import socket
import ssl
import struct
from collections.abc import Callable

A_ASSOCIATE_RQ = 0x01
A_ASSOCIATE_AC = 0x02
A_ASSOCIATE_RJ = 0x03
P_DATA_TF = 0x04
A_RELEASE_RQ = 0x05
A_RELEASE_RP = 0x06
A_ABORT = 0x07

PDU_HEADER = struct.Struct(">BxI")
PDV_HEADER = struct.Struct(">IBB")
_QUICKACK = getattr(socket, "TCP_QUICKACK", None)


class PeerClosed(Exception):
    """The peer closed the connection (or it timed out) outside an orderly release."""


# A-P-ABORT reasons (PS3.8 9.3.8) for an abort by the service provider (source 2).
ABORT_NOT_SPECIFIED = 0
ABORT_UNRECOGNIZED_PDU = 1
ABORT_UNEXPECTED_PDU = 2
ABORT_INVALID_PARAMETER = 6


class ProtocolError(Exception):
    """The peer broke the protocol; the association must be aborted (with this reason)."""

    def __init__(self, message: str, reason: int = ABORT_INVALID_PARAMETER):
        super().__init__(message)
        self.reason = reason


def unexpected_pdu(pdu_type: int) -> ProtocolError:
    """The error for a PDU that has no place here: a known type, or none at all."""
    if A_ASSOCIATE_RQ <= pdu_type <= A_ABORT:
        return ProtocolError(f"unexpected PDU type 0x{pdu_type:02X}", ABORT_UNEXPECTED_PDU)
    return ProtocolError(f"unrecognised PDU type 0x{pdu_type:02X}", ABORT_UNRECOGNIZED_PDU)


class SocketReader:
    """Buffered reads of exact byte counts, with bytes forwarded without extra copies."""

    def __init__(self, sock: socket.socket, quickack: bool = True, size: int = 256 * 1024):
        self.sock = sock
        self.buf = bytearray(size)
        self.view = memoryview(self.buf)
        self.start = 0
        self.end = 0
        self.quickack = quickack and _QUICKACK is not None
        self.bytes_read = 0

    def _recv(self) -> None:
        if self.start == self.end:
            self.start = self.end = 0
        elif self.end == len(self.buf):
            remaining = self.end - self.start
            self.buf[:remaining] = self.buf[self.start : self.end]
            self.start, self.end = 0, remaining
        if self.quickack:
            self.sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)  # type: ignore[arg-type]
        try:
            n = self.sock.recv_into(self.view[self.end :])
        except (TimeoutError, BlockingIOError, ssl.SSLWantReadError) as exc:
            # Over TLS, SO_RCVTIMEO expiring surfaces as OpenSSL's "want read".
            raise PeerClosed("network timeout: the peer sent nothing") from exc
        except OSError as exc:
            raise PeerClosed(f"connection error: {exc}") from exc
        if n == 0:
            raise PeerClosed("the peer closed the connection")
        self.end += n
        self.bytes_read += n

    def read(self, n: int) -> bytes:
        if n > len(self.buf):
            self._grow(n)
        while self.end - self.start < n:
            self._recv()
        data = bytes(self.view[self.start : self.start + n])
        self.start += n
        return data

    def pump(self, n: int, sink: Callable[[memoryview], None]) -> None:
        """Hand the next n bytes to sink, in buffer-sized pieces."""
        while n > 0:
            if self.start == self.end:
                self._recv()
            take = min(n, self.end - self.start)
            sink(self.view[self.start : self.start + take])
            self.start += take
            n -= take

    def _compact(self) -> None:
        remaining = self.end - self.start
        self.buf[:remaining] = self.buf[self.start : self.end]
        self.start, self.end = 0, remaining

    def _grow(self, n: int) -> None:
        self._compact()
        self.view.release()
        self.buf.extend(bytes(n - len(self.buf)))
        self.view = memoryview(self.buf)


def encode_pdu(pdu_type: int, body: bytes) -> bytes:
    return PDU_HEADER.pack(pdu_type, len(body)) + body


def p_data_pdus(context_id: int, is_command: bool, payload: bytes, max_pdu: int) -> list[bytes]:
    """Split a message into P-DATA-TF PDUs that respect the peer's maximum PDU length."""
    # A PDV item costs 6 bytes of header inside the PDU body; 0 means "no limit".
    room = (max_pdu - 6) if max_pdu and max_pdu > 6 else len(payload) or 1
    pdus = []
    offset = 0
    while True:
        chunk = payload[offset : offset + room]
        offset += len(chunk)
        last = offset >= len(payload)
        control = (0x01 if is_command else 0x00) | (0x02 if last else 0x00)
        pdv = PDV_HEADER.pack(len(chunk) + 2, context_id, control) + chunk
        pdus.append(encode_pdu(P_DATA_TF, pdv))
        if last:
            return pdus


def a_release_rp() -> bytes:
    return encode_pdu(A_RELEASE_RP, b"\x00\x00\x00\x00")


def a_abort(source: int = 2, reason: int = 0) -> bytes:
    """An A-ABORT PDU; source 0 is the service user, 2 the service provider."""
    return encode_pdu(A_ABORT, bytes([0, 0, source, reason]))
