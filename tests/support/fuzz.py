"""A seeded generator of hostile conversations with a DICOM receiver.

Each case is what one TCP connection sends: mutated association requests, P-DATA with mutated
commands and datasets, lying length fields, UIDs with `../` and non-ASCII bytes, PDUs of
unknown or misplaced types. The same seed gives the same cases, so a failure can be replayed.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from dataclasses import dataclass

from tests.support.rawscu import (
    CT_IMAGE_STORAGE,
    associate_request,
    c_echo_command,
    c_store_command,
    connect,
    p_data,
)

HOSTILE_UIDS = [
    "../../../evil",
    "../../outside",
    "/etc/passwd",
    "1.2.3/../../x",
    ".",
    "..",
    "1.2.3\n\x01/..",
    "1.2.\u00e9\u00e9",
    "1" * 200,
    "",
]


@dataclass(frozen=True)
class Case:
    name: str
    chunks: list[bytes]


class Fuzzer:
    def __init__(self, seed: int, dataset: bytes, sop_instance: str):
        self.rng = random.Random(seed)
        self.dataset = dataset
        self.sop_instance = sop_instance
        self.makers: list[Callable[[], Case]] = [
            self.garbage,
            self.mutated_request,
            self.lying_pdu_length,
            self.mutated_command,
            self.mutated_dataset,
            self.hostile_uid_store,
            self.lying_pdv_length,
            self.misplaced_pdu,
            self.truncated_store,
        ]

    # Helpers -------------------------------------------------------------------------------

    def _flip(self, data: bytes, count: int = 0) -> bytes:
        out = bytearray(data)
        for _ in range(count or self.rng.randint(1, 8)):
            if not out:
                break
            position = self.rng.randrange(len(out))
            choice = self.rng.random()
            if choice < 0.4:
                out[position] ^= 1 << self.rng.randrange(8)
            elif choice < 0.7:
                out[position] = self.rng.choice([0x00, 0xFF, 0x7F, 0x80, 0x2E, 0x2F])
            elif choice < 0.85:
                del out[position : position + self.rng.randint(1, 16)]
            else:
                out[position:position] = self.rng.randbytes(self.rng.randint(1, 16))
        return bytes(out)

    def _request(self) -> bytes:
        sop = self.rng.choice([CT_IMAGE_STORAGE, "1.2.840.10008.1.1"])
        return associate_request(sop_class=sop)

    def _uid(self) -> str:
        return self.rng.choice(HOSTILE_UIDS + [self.sop_instance] * 3)

    def _length(self) -> int:
        return self.rng.choice([0, 1, 5, 6, 0x7FFF, 0xFFFF, 0x10000, 0x7FFFFFFF, 0xFFFFFFFF])

    # Cases ---------------------------------------------------------------------------------

    def garbage(self) -> Case:
        return Case("garbage", [self.rng.randbytes(self.rng.randint(1, 2048))])

    def mutated_request(self) -> Case:
        return Case("mutated request", [self._flip(self._request())])

    def lying_pdu_length(self) -> Case:
        pdu_type = self.rng.choice([0x01, 0x04, 0x05, 0x07, 0x02, 0x09, 0xFF])
        header = struct.pack(">BxI", pdu_type, self._length())
        first = [self._request()] if pdu_type != 0x01 else []
        return Case("lying PDU length", [*first, header + self.rng.randbytes(64)])

    def mutated_command(self) -> Case:
        if self.rng.random() < 0.5:
            command = c_echo_command(self._uid().encode("utf-8", "surrogateescape"))
        else:
            command = c_store_command(CT_IMAGE_STORAGE, self._uid())
        return Case(
            "mutated command",
            [self._request(), p_data(1, self._flip(command), True, True), self.dataset[:512]],
        )

    def mutated_dataset(self) -> Case:
        command = c_store_command(CT_IMAGE_STORAGE, self.sop_instance)
        return Case(
            "mutated dataset",
            [
                associate_request(),
                p_data(1, command, True, True),
                p_data(1, self._flip(self.dataset, self.rng.randint(1, 40)), False, True),
            ],
        )

    def hostile_uid_store(self) -> Case:
        uid = self._uid()
        dataset = self.dataset.replace(
            self.sop_instance.encode(), uid.encode("utf-8", "surrogateescape")
        )
        return Case(
            "hostile UID",
            [
                associate_request(),
                p_data(1, c_store_command(CT_IMAGE_STORAGE, uid), True, True),
                p_data(1, dataset, False, True),
            ],
        )

    def lying_pdv_length(self) -> Case:
        body = struct.pack(">IBB", self._length(), self.rng.choice([0, 1, 2, 3, 255]), 3)
        pdu = struct.pack(">BxI", 0x04, len(body) + 32) + body + self.rng.randbytes(32)
        return Case("lying PDV length", [associate_request(), pdu])

    def misplaced_pdu(self) -> Case:
        pdu_type = self.rng.choice([0x01, 0x02, 0x03, 0x06, 0x08, 0x0A, 0x80])
        return Case(
            "misplaced PDU",
            [self._request(), struct.pack(">BxI", pdu_type, 4) + b"\x00\x00\x00\x00"],
        )

    def truncated_store(self) -> Case:
        command = c_store_command(CT_IMAGE_STORAGE, self.sop_instance)
        cut = self.rng.randrange(1, len(self.dataset))
        return Case(
            "truncated store",
            [
                associate_request(),
                p_data(1, command, True, True),
                p_data(1, self.dataset[:cut], False, self.rng.random() < 0.5),
            ],
        )

    def case(self) -> Case:
        return self.rng.choice(self.makers)()


def play(port: int, case: Case, source: str, wait: float = 0.3) -> None:
    """Send a case on a fresh connection, read what comes back for a moment, and hang up."""
    try:
        sock = connect(port, source, timeout=wait)
    except OSError:
        return
    with sock:
        try:
            for chunk in case.chunks:
                sock.sendall(chunk)
            while sock.recv(65536):
                pass
        except OSError:
            pass
