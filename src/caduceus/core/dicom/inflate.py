"""Inflating a deflated dataset (PS3.5 A.5) into a file, a bounded piece at a time.

A megabyte of deflated zeros inflates to a gigabyte, so the output is never held whole: each call
to zlib yields at most one chunk, which goes to the file before the next one is made, and the
inflation stops as soon as the output passes the caller's limit.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable
from typing import BinaryIO

CHUNK = 1024 * 1024


class InflatedTooLarge(Exception):
    """The dataset inflates to more bytes than allowed; what was written so far is partial."""

    def __init__(self, limit: int):
        super().__init__(f"inflated dataset exceeds {limit} bytes")
        self.limit = limit


class NoRoom(Exception):
    """The caller's room check said no: the disk is down to its reserve."""


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def inflate_to(
    source: BinaryIO, fd: int, limit: int, room: Callable[[int], bool] | None = None
) -> int:
    """Inflate the raw deflate stream read from source into fd; return the inflated size.

    Raises InflatedTooLarge once the output would pass limit bytes, zlib.error for a stream
    that is not deflate, NoRoom when room(bytes about to be written) says no. A stream cut
    short yields what it has: the dataset check that follows finds it truncated. Bytes after
    the end of the stream (the pad to an even length) are ignored.
    """
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0

    def emit(out: bytes) -> None:
        nonlocal total
        total += len(out)
        if total > limit:
            raise InflatedTooLarge(limit)
        if room is not None and not room(len(out)):
            raise NoRoom()
        _write_all(fd, out)

    while not inflater.eof:
        pending = source.read(CHUNK)
        if not pending:
            break
        # max_length bounds each piece; what zlib could not yet turn into output waits in
        # unconsumed_tail, and a full piece may leave more output to come from the same input.
        while True:
            out = inflater.decompress(pending, CHUNK)
            emit(out)
            pending = inflater.unconsumed_tail
            if inflater.eof or (not pending and len(out) < CHUNK):
                break
    emit(inflater.flush())
    return total
