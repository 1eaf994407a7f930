"""How many connections the receiver holds, per peer address and in total, across its workers.

The counts live in shared memory made before the workers are forked. Each worker writes only
its own row (so no lock is needed, and a worker that dies takes nothing with it: the parent
zeroes its row before starting the replacement); a worker reads all rows to decide. Two
workers admitting at the same instant may both pass a cap by one; that is the price of no lock.

Addresses are hashed into a fixed number of slots. Two addresses that share a slot share a
cap, which can only make the cap stricter for them, never looser.
"""

from __future__ import annotations

import hashlib
import ipaddress
import multiprocessing
import resource
import threading
from ctypes import c_int32
from typing import Any

SLOTS = 4096
TOTAL = SLOTS  # the last column of a row counts every connection of that worker
# File descriptors a worker needs besides its connections: database, log, temporary files.
FD_RESERVE = 256


def _slot(host: str) -> int:
    try:
        packed = ipaddress.ip_address(host).packed
    except ValueError:
        packed = host.encode()
    return int.from_bytes(hashlib.blake2s(packed, digest_size=4).digest(), "big") % SLOTS


class ConnectionCounts:
    def __init__(self, workers: int, per_address: int, total: int):
        self.per_address = per_address
        self.total = total
        self.workers = workers
        self.width = SLOTS + 1
        self.table: Any = multiprocessing.RawArray(c_int32, workers * self.width)
        self.row = 0
        # The acceptor admits while association threads release: both write this row.
        self.lock = threading.Lock()

    def per_worker(self) -> int:
        """Associations one worker serves at once before it answers busy: its share of the
        total, and at least two addresses' worth, so that one address (or as many addresses
        as there are workers) cannot make every worker busy."""
        share = -(-self.total // self.workers) if self.total else 0
        return max(share, 2 * self.per_address, 1)

    def use_row(self, row: int) -> None:
        """Called in a worker: the row it writes."""
        self.row = row

    def clear_row(self, row: int) -> None:
        """Called by the parent for a worker that died: its connections died with it."""
        base = row * self.width
        for index in range(base, base + self.width):
            self.table[index] = 0

    def _sum(self, column: int) -> int:
        table, width = self.table, self.width
        return sum(table[row * width + column] for row in range(self.workers))

    def admit(self, host: str) -> str:
        """Count a new connection from host; returns "" if admitted, else why not."""
        slot = _slot(host)
        if self.per_address and self._sum(slot) >= self.per_address:
            return "per-address limit"
        if self.total and self._sum(TOTAL) >= self.total:
            return "connection limit"
        base = self.row * self.width
        with self.lock:
            self.table[base + slot] += 1
            self.table[base + TOTAL] += 1
        return ""

    def release(self, host: str) -> None:
        base = self.row * self.width
        with self.lock:
            self.table[base + _slot(host)] -= 1
            self.table[base + TOTAL] -= 1

    def held(self, host: str | None = None) -> int:
        return self._sum(TOTAL if host is None else _slot(host))


def raise_fd_limit(wanted: int) -> int:
    """Raise the soft limit on open files towards wanted (never above the hard limit).

    Returns the number of connections the limit leaves room for in one process.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = wanted + FD_RESERVE
    if soft != resource.RLIM_INFINITY and soft < need:
        new = need if hard == resource.RLIM_INFINITY else min(need, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        soft = new
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(1, min(wanted, soft - FD_RESERVE))
