"""One pass over an encoded dataset that checks it is complete and picks out chosen values.

The walk reads element headers only (and the items of sequences and of encapsulated pixel
data), never decodes pixel data, and is linear in the number of elements, not in the size of
the values. It proves that the bytes form one complete dataset, finds where the top-level Pixel
Data starts, and returns the raw bytes of the requested top-level elements.
"""

from __future__ import annotations

import struct
from collections.abc import Collection
from dataclasses import dataclass, field

PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})
ITEM = 0xFFFEE000
ITEM_DELIMITER = 0xFFFEE00D
SEQUENCE_DELIMITER = 0xFFFEE0DD
UNDEFINED = 0xFFFFFFFF
# Explicit VRs whose length field is 4 bytes (after 2 reserved bytes).
LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
MAX_DEPTH = 32


class MalformedDataset(ValueError):
    """The bytes are not one complete dataset; the message says what is wrong and where."""


@dataclass(slots=True)
class Layout:
    header_end: int  # offset of the top-level Pixel Data element, or the end of the dataset
    end: int
    implicit: bool  # the encoding actually found (a few senders mislabel it)
    values: dict[int, bytes] = field(default_factory=dict)


class _Walker:
    __slots__ = (
        "buf",
        "explicit_head",
        "implicit_head",
        "item_head",
        "left",
        "limit",
        "u32",
        "wanted",
    )

    def __init__(
        self,
        buf: bytes | bytearray | memoryview,
        little_endian: bool,
        wanted: Collection[int],
        max_elements: int | None = None,
    ):
        order = "<" if little_endian else ">"
        self.buf = buf
        # Element headers, items and fragments the walk may still read: each costs a little
        # CPU, and a few bytes of deflated zeros inflate into millions of empty elements.
        self.left = self.limit = max_elements if max_elements is not None else -1
        self.explicit_head = struct.Struct(order + "HH2sH").unpack_from
        self.implicit_head = struct.Struct(order + "HHI").unpack_from
        self.item_head = self.implicit_head
        self.u32 = struct.Struct(order + "I").unpack_from
        self.wanted = wanted

    def spend(self, pos: int) -> None:
        if self.left == 0:
            raise MalformedDataset(f"more than {self.limit} elements at byte {pos}")
        self.left -= 1

    def elements(
        self, pos: int, end: int, implicit: bool, depth: int, in_item: bool, out: Layout | None
    ) -> int:
        if depth > MAX_DEPTH:
            raise MalformedDataset(f"sequences nested deeper than {MAX_DEPTH} at byte {pos}")
        buf = self.buf
        wanted = self.wanted if out is not None else ()
        explicit_head, implicit_head = self.explicit_head, self.implicit_head
        spend = self.spend if self.left >= 0 else None
        while pos < end:
            if spend is not None:
                spend(pos)
            if pos + 8 > end:
                raise MalformedDataset(f"dataset truncated in an element header at byte {pos}")
            element_start = pos
            if implicit:
                group, elem, length = implicit_head(buf, pos)
                vr = b""
            else:
                group, elem, vr, length = explicit_head(buf, pos)
            tag = (group << 16) | elem
            if group == 0xFFFE:
                if tag == ITEM_DELIMITER and in_item:
                    return pos + 8
                raise MalformedDataset(f"unexpected item tag {tag:08X} at byte {pos}")
            if implicit:
                pos += 8
            elif vr in LONG_VRS:
                if pos + 12 > end:
                    raise MalformedDataset(f"dataset truncated in an element header at byte {pos}")
                length = self.u32(buf, pos + 8)[0]
                pos += 12
            elif vr.isalpha() and vr.isupper():
                pos += 8
            else:
                raise MalformedDataset(f"invalid VR {vr!r} in element {tag:08X} at byte {pos}")
            if out is not None and tag in PIXEL_TAGS and out.header_end < 0:
                out.header_end = element_start
            if length == UNDEFINED:
                if tag in PIXEL_TAGS:
                    pos = self.fragments(pos, end)
                else:
                    # An undefined-length UN holds implicit VR little endian content.
                    pos = self.sequence(pos, end, implicit or vr == b"UN", depth + 1)
                continue
            if pos + length > end:
                raise MalformedDataset(
                    f"dataset truncated: element {tag:08X} needs {length} bytes at byte {pos}, "
                    f"only {end - pos} remain"
                )
            if tag in wanted:
                out.values[tag] = bytes(buf[pos : pos + length])  # type: ignore[union-attr]
            pos += length
        if in_item:
            raise MalformedDataset("dataset truncated inside a sequence item")
        return pos

    def sequence(self, pos: int, end: int, implicit: bool, depth: int) -> int:
        while True:
            if self.left >= 0:
                self.spend(pos)
            if pos + 8 > end:
                raise MalformedDataset(f"dataset truncated in a sequence at byte {pos}")
            group, elem, length = self.item_head(self.buf, pos)
            tag = (group << 16) | elem
            pos += 8
            if tag == SEQUENCE_DELIMITER:
                return pos
            if tag != ITEM:
                raise MalformedDataset(f"expected an item in a sequence at byte {pos - 8}")
            if length == UNDEFINED:
                pos = self.elements(pos, end, implicit, depth, True, None)
            elif pos + length > end:
                raise MalformedDataset(f"dataset truncated in a sequence item at byte {pos}")
            else:
                pos += length

    def fragments(self, pos: int, end: int) -> int:
        while True:
            if self.left >= 0:
                self.spend(pos)
            if pos + 8 > end:
                raise MalformedDataset(f"dataset truncated in pixel data at byte {pos}")
            group, elem, length = self.item_head(self.buf, pos)
            tag = (group << 16) | elem
            pos += 8
            if tag == SEQUENCE_DELIMITER:
                return pos
            if tag != ITEM or length == UNDEFINED:
                raise MalformedDataset(f"invalid pixel data fragment at byte {pos - 8}")
            if pos + length > end:
                raise MalformedDataset(f"dataset truncated in pixel data at byte {pos}")
            pos += length


def scan(
    buf: bytes | bytearray | memoryview,
    implicit: bool,
    little_endian: bool,
    start: int = 0,
    wanted: Collection[int] = frozenset(),
    max_elements: int | None = None,
) -> Layout:
    """Check that buf[start:] is one complete dataset; return its layout and wanted values.

    With max_elements, a dataset of more elements, items and fragments (nested ones included)
    than that is malformed: the bound on the walk's CPU time where bytes cost the sender little.

    A dataset labelled explicit VR whose first element has no valid VR is read as implicit VR,
    as DICOM toolkits do, because some senders mislabel their encoding.
    """
    end = len(buf)
    if end - start < 8:
        raise MalformedDataset("dataset is empty or shorter than one element")
    try:
        return _scan(_Walker(buf, little_endian, wanted, max_elements), start, end, implicit)
    except MalformedDataset as first:
        if implicit or "invalid VR" not in str(first) or f"at byte {start}" not in str(first):
            raise
        return _scan(_Walker(buf, little_endian, wanted, max_elements), start, end, True)


def _scan(walker: _Walker, start: int, end: int, implicit: bool) -> Layout:
    out = Layout(header_end=-1, end=end, implicit=implicit)
    out.end = walker.elements(start, end, implicit, 0, False, out)
    if out.header_end < 0:
        out.header_end = out.end
    return out
