"""Deflated datasets for tests: a real one, and a bomb (a valid header, then gigabytes of zeros).

Compressing a gigabyte of zeros at level 9 takes zlib about 20 s on a busy machine. A full
flush resets the compressor's history and aligns its output to a byte, so after one the same
input gives the same bytes: one compressed run of 16 MiB of zeros, repeated, is exactly the
stream zlib would have written for the whole run, in a fraction of a second.
"""

from __future__ import annotations

import struct
import zlib

from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from caduceus.core.dicom.synthetic import SeriesSpec, generate

RUN = 16 * 1024 * 1024
# (0009,0010) LO of length 0, a valid explicit VR element header, again and again.
EMPTY_ELEMENT = b"\x09\x00\x10\x00LO\x00\x00"


def explicit_le(ds: object) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = False
    write_dataset(fp, ds)  # type: ignore[arg-type]
    return fp.getvalue()


def bomb_header(pixel_bytes: int) -> tuple[str, bytes]:
    """A CT instance's attributes up to a Pixel Data element of pixel_bytes: (its UID, bytes)."""
    ds = next(generate(SeriesSpec(count=1, rows=16, columns=16)))
    del ds.PixelData
    ds.Rows = ds.Columns = 16384
    ds.NumberOfFrames = max(1, pixel_bytes // (16384 * 16384 * 2))
    head = explicit_le(ds) + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, pixel_bytes)
    return str(ds.SOPInstanceUID), head


def deflate_zeros_after(head: bytes, zeros: int, fill: bytes = b"\x00") -> bytes:
    """Raw deflate (PS3.5 A.5) of head followed by `zeros` bytes of fill (repeated), padded
    to an even length."""
    assert RUN % len(fill) == 0 and zeros % len(fill) == 0
    pattern = fill * (RUN // len(fill))
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [compressor.compress(head) + compressor.flush(zlib.Z_FULL_FLUSH)]
    runs, rest = divmod(zeros, RUN)
    if runs:
        run = compressor.compress(pattern) + compressor.flush(zlib.Z_FULL_FLUSH)
        again = compressor.compress(pattern) + compressor.flush(zlib.Z_FULL_FLUSH)
        assert run == again, "a full flush no longer makes runs repeatable"
        parts += [run] * runs
    parts.append(compressor.compress(pattern[:rest]) + compressor.flush())
    stream = b"".join(parts)
    return stream + b"\x00" if len(stream) % 2 else stream


def empty_elements_bomb(inflated_bytes: int) -> tuple[str, bytes]:
    """A CT instance's attributes, then millions of empty elements (8 bytes each)."""
    uid, head = bomb_header(0)
    return uid, deflate_zeros_after(head[:-12], inflated_bytes, EMPTY_ELEMENT)


def deflated_bomb(inflated_bytes: int) -> tuple[str, bytes]:
    """A deflated CT instance whose dataset inflates to about inflated_bytes: (its UID, stream)."""
    uid, head = bomb_header(inflated_bytes)
    return uid, deflate_zeros_after(head, inflated_bytes)


def send_deflated(port: int, sop_instance: str, stream: bytes, timeout: float = 120) -> int:
    """One C-STORE of a deflated CT dataset over its own association; the status it gets."""
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    from tests.support.rawscu import CT_IMAGE_STORAGE, RawSCU, c_store_command, p_data

    scu = RawSCU(port)
    try:
        scu.sock.settimeout(timeout)
        assert scu.associate(syntax=DeflatedExplicitVRLittleEndian)[0] == 0x02
        command = c_store_command(CT_IMAGE_STORAGE, sop_instance)
        scu.send(p_data(1, command, command=True, last=True))
        piece = 1024 * 1024
        for start in range(0, len(stream), piece):
            last = start + piece >= len(stream)
            scu.send(p_data(1, stream[start : start + piece], command=False, last=last))
        status, _ = scu.store_response_status()
        scu.release()
        return status
    finally:
        scu.close()
