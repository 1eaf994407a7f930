"""A deliberately misbehaving storage SCU that writes PDUs by hand.

Real senders (storescu, pynetdicom) cannot be made to abort mid-instance or send a truncated
dataset, so these tests speak the upper layer protocol directly. Only the association request
is built with pynetdicom's PDU classes; everything after it is raw bytes.
"""

from __future__ import annotations

import socket
import struct

from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
from pynetdicom.presentation import PresentationContext

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def _element(elem: int, value: bytes) -> bytes:
    return struct.pack("<HHI", 0, elem, len(value)) + value


def _uid(value: str) -> bytes:
    raw = value.encode()
    return raw + b"\x00" if len(raw) % 2 else raw


def c_store_command(sop_class: str, sop_instance: str, message_id: int = 1) -> bytes:
    body = b"".join(
        [
            _element(0x0002, _uid(sop_class)),
            _element(0x0100, struct.pack("<H", 0x0001)),
            _element(0x0110, struct.pack("<H", message_id)),
            _element(0x0700, struct.pack("<H", 0)),
            _element(0x0800, struct.pack("<H", 0x0000)),
            _element(0x1000, _uid(sop_instance)),
        ]
    )
    return _element(0x0000, struct.pack("<I", len(body))) + body


def c_echo_command(sop_class: bytes = b"1.2.840.10008.1.1\x00", message_id: int = 1) -> bytes:
    """A C-ECHO-RQ; the SOP class is raw bytes, so a test can put anything there."""
    body = b"".join(
        [
            _element(0x0002, sop_class),
            _element(0x0100, struct.pack("<H", 0x0030)),
            _element(0x0110, struct.pack("<H", message_id)),
            _element(0x0800, struct.pack("<H", 0x0101)),
        ]
    )
    return _element(0x0000, struct.pack("<I", len(body))) + body


def p_data(context_id: int, payload: bytes, command: bool, last: bool) -> bytes:
    control = (1 if command else 0) | (2 if last else 0)
    pdv = struct.pack(">IBB", len(payload) + 2, context_id, control) + payload
    return struct.pack(">BxI", 0x04, len(pdv)) + pdv


def associate_request(
    called: str = "CADUCEUS",
    calling: str = "RAWSCU",
    sop_class: str = CT_IMAGE_STORAGE,
    syntax: str = ExplicitVRLittleEndian,
) -> bytes:
    """An A-ASSOCIATE-RQ PDU with one presentation context (id 1)."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = calling
    primitive.called_ae_title = called
    context = PresentationContext()
    context.context_id = 1
    context.abstract_syntax = sop_class
    context.transfer_syntax = [syntax]
    primitive.presentation_context_definition_list = [context]
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = 16384
    primitive.user_information = [max_length]
    rq = A_ASSOCIATE_RQ()
    rq.from_primitive(primitive)
    return bytes(rq.encode())


def connect(port: int, source: str = "", timeout: float = 10) -> socket.socket:
    """A TCP connection to the receiver, from a chosen loopback address (all of 127/8 is ours)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    if source:
        sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


class RawSCU:
    def __init__(
        self, port: int, called: str = "CADUCEUS", calling: str = "RAWSCU", source: str = ""
    ):
        self.sock = connect(port, source)
        self.called = called
        self.calling = calling

    def associate(
        self, sop_class: str = CT_IMAGE_STORAGE, syntax: str = ExplicitVRLittleEndian
    ) -> bytes:
        self.sock.sendall(associate_request(self.called, self.calling, sop_class, syntax))
        return self.read_pdu()

    def read_pdu(self) -> bytes:
        header = self._read(6)
        length = struct.unpack(">I", header[2:6])[0]
        return header + self._read(length)

    def _read(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("closed by the receiver")
            data += chunk
        return data

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def store_response_status(self) -> tuple[int, str]:
        """Read one C-STORE-RSP; return its status and error comment."""
        pdu = self.read_pdu()
        assert pdu[0] == 0x04, f"expected P-DATA-TF, got PDU type {pdu[0]}"
        command = pdu[12:]
        status, comment, pos = -1, "", 0
        while pos < len(command):
            _, elem, length = struct.unpack_from("<HHI", command, pos)
            value = command[pos + 8 : pos + 8 + length]
            if elem == 0x0900:
                status = struct.unpack("<H", value)[0]
            elif elem == 0x0902:
                comment = value.decode().strip()
            pos += 8 + length
        return status, comment

    def release(self) -> bytes:
        self.sock.sendall(struct.pack(">BxI", 0x05, 4) + b"\x00" * 4)
        return self.read_pdu()

    def close(self) -> None:
        self.sock.close()
