"""DIMSE command sets (PS3.7): the few fields a storage SCP and SCU read and write.

Command sets are always implicit VR little endian and small, so they are parsed and encoded
directly rather than through a general dataset model.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from caduceus.core.net.pdu import ProtocolError

C_STORE_RQ = 0x0001
C_ECHO_RQ = 0x0030
C_CANCEL_RQ = 0x0FFF
NO_DATASET = 0x0101

_ELEMENT = struct.Struct("<HHI")
_US = struct.Struct("<H")
_UL = struct.Struct("<I")

# Tags in group 0000, as element numbers.
AFFECTED_SOP_CLASS = 0x0002
COMMAND_FIELD = 0x0100
MESSAGE_ID = 0x0110
RESPONDED_TO = 0x0120
PRIORITY = 0x0700
DATASET_TYPE = 0x0800
STATUS = 0x0900
ERROR_COMMENT = 0x0902
AFFECTED_SOP_INSTANCE = 0x1000
MOVE_ORIGINATOR_AET = 0x1030
MOVE_ORIGINATOR_ID = 0x1031


@dataclass(frozen=True, slots=True)
class Command:
    command_field: int
    message_id: int
    has_dataset: bool
    affected_sop_class: str
    affected_sop_instance: str
    priority: int
    move_originator_aet: str
    status: int = -1  # in responses
    error_comment: str = ""


def parse_command(data: bytes) -> Command:
    fields: dict[int, bytes] = {}
    pos, end = 0, len(data)
    while pos < end:
        if pos + 8 > end:
            raise ProtocolError("truncated DIMSE command set")
        group, elem, length = _ELEMENT.unpack_from(data, pos)
        pos += 8
        if group != 0 or pos + length > end:
            raise ProtocolError(f"invalid element ({group:04X},{elem:04X}) in DIMSE command set")
        fields[elem] = data[pos : pos + length]
        pos += length

    def us(elem: int, default: int | None = None) -> int:
        raw = fields.get(elem)
        if raw is None or len(raw) != 2:
            if default is None:
                raise ProtocolError(f"DIMSE command lacks (0000,{elem:04X})")
            return default
        return int(_US.unpack(raw)[0])

    def text(elem: int) -> str:
        return fields.get(elem, b"").decode("ascii", "replace").strip(" \x00")

    def uid(elem: int) -> str:
        raw = fields.get(elem, b"")
        if not raw.isascii():
            # A UID is digits and dots; non-ASCII bytes can be nothing but an attack or a bug.
            raise ProtocolError(f"non-ASCII UID in (0000,{elem:04X}) of the DIMSE command set")
        return raw.decode("ascii").strip(" \x00")

    return Command(
        command_field=us(COMMAND_FIELD),
        message_id=us(MESSAGE_ID, 0),
        has_dataset=us(DATASET_TYPE) != NO_DATASET,
        affected_sop_class=uid(AFFECTED_SOP_CLASS),
        affected_sop_instance=uid(AFFECTED_SOP_INSTANCE),
        priority=us(PRIORITY, 0),
        move_originator_aet=text(MOVE_ORIGINATOR_AET),
        status=us(STATUS, -1) if STATUS in fields else -1,
        error_comment=text(ERROR_COMMENT),
    )


def _element(elem: int, value: bytes) -> bytes:
    return _ELEMENT.pack(0, elem, len(value)) + value


def _uid(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw


def _lo(value: str) -> bytes:
    raw = value.encode("ascii", "replace")[:64]
    return raw + b" " if len(raw) % 2 else raw


def encode_response(
    request: Command, status: int, sop_class: str = "", sop_instance: str = "", comment: str = ""
) -> bytes:
    """A response (C-STORE-RSP, C-ECHO-RSP, ...) to request, with no dataset."""
    body = b"".join(
        part
        for part in (
            _element(AFFECTED_SOP_CLASS, _uid(sop_class)) if sop_class else b"",
            _element(COMMAND_FIELD, _US.pack(request.command_field | 0x8000)),
            _element(RESPONDED_TO, _US.pack(request.message_id)),
            _element(DATASET_TYPE, _US.pack(NO_DATASET)),
            _element(STATUS, _US.pack(status)),
            _element(ERROR_COMMENT, _lo(comment)) if comment and status else b"",
            _element(AFFECTED_SOP_INSTANCE, _uid(sop_instance)) if sop_instance else b"",
        )
    )
    return _element(0x0000, _UL.pack(len(body))) + body


def encode_c_store_rq(message_id: int, sop_class: str, sop_instance: str) -> bytes:
    """A C-STORE request (medium priority) announcing a dataset."""
    body = b"".join(
        (
            _element(AFFECTED_SOP_CLASS, _uid(sop_class)),
            _element(COMMAND_FIELD, _US.pack(C_STORE_RQ)),
            _element(MESSAGE_ID, _US.pack(message_id)),
            _element(PRIORITY, _US.pack(0)),
            _element(DATASET_TYPE, _US.pack(0x0000)),
            _element(AFFECTED_SOP_INSTANCE, _uid(sop_instance)),
        )
    )
    return _element(0x0000, _UL.pack(len(body))) + body


def encode_c_echo_rq(message_id: int) -> bytes:
    body = b"".join(
        (
            _element(AFFECTED_SOP_CLASS, _uid("1.2.840.10008.1.1")),
            _element(COMMAND_FIELD, _US.pack(C_ECHO_RQ)),
            _element(MESSAGE_ID, _US.pack(message_id)),
            _element(DATASET_TYPE, _US.pack(NO_DATASET)),
        )
    )
    return _element(0x0000, _UL.pack(len(body))) + body
