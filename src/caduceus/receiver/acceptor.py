"""Accepting connections and reading their association requests without a thread each.

A connection costs a thread only once it has sent a whole A-ASSOCIATE-RQ. Until then it is one
entry in a selector, with no buffer until bytes arrive, and it must finish its request within
the ARTIM time (PS3.8 9.1.5) or be closed. Connections beyond the per-address or total cap are
closed at once. So idle or slow-dripping connections cannot use up the threads, the memory or
the association slots that real senders need.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from caduceus.core.net import pdu
from caduceus.receiver.connection_limits import ConnectionCounts
from caduceus.receiver.summary import ConnectionSummary

log = logging.getLogger("caduceus.receiver")

# A request proposing all 128 presentation contexts with a dozen transfer syntaxes each stays
# under this; real ones are a few kilobytes to 20 KiB.
MAX_ASSOCIATE_RQ = 128 * 1024
# Bytes of unfinished association requests one worker holds at most, whatever the peers claim,
# and one peer address at most of those, so that one address cannot use up the worker's budget.
MAX_PENDING_BYTES = 64 * 1024 * 1024
MAX_PENDING_BYTES_PER_ADDRESS = MAX_PENDING_BYTES // 8
RECV_CHUNK = 64 * 1024


@dataclass(slots=True)
class Pending:
    sock: socket.socket
    host: str
    port: int
    deadline: float
    header: bytearray = field(default_factory=bytearray)
    body: bytearray | None = None
    length: int = 0


# Called with the socket (blocking again), the peer address and port as accept() gave them
# (getpeername() fails once the peer has reset), and the whole A-ASSOCIATE-RQ PDU.
HandOff = Callable[[socket.socket, str, int, bytes], None]


class Acceptor:
    def __init__(
        self,
        listener: socket.socket,
        counts: ConnectionCounts,
        summary: ConnectionSummary,
        artim: float,
        hand_off: HandOff,
    ):
        self.listener = listener
        self.counts = counts
        self.summary = summary
        self.artim = artim
        self.hand_off = hand_off
        self.selector = selectors.DefaultSelector()
        self.pending: dict[int, Pending] = {}
        self.pending_bytes = 0
        self.pending_by_host: dict[str, int] = {}
        self.next_sweep = 0.0
        listener.setblocking(False)
        self.selector.register(listener, selectors.EVENT_READ, None)

    def poll(self, timeout: float) -> None:
        """Wait up to timeout for connections and request bytes, and act on them."""
        for key, _ in self.selector.select(timeout):
            if key.data is None:
                self._accept()
            else:
                self._read(key.data)
        now = time.monotonic()
        if now >= self.next_sweep:
            self.next_sweep = now + 0.25
            for entry in [p for p in self.pending.values() if p.deadline <= now]:
                # ARTIM expired in Sta2: close the transport connection (AA-2), no abort.
                self._drop(entry, "association request not complete in time")

    def close(self) -> None:
        """Stop listening and drop every connection that has not associated."""
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(self.listener)
        self.listener.close()
        for entry in list(self.pending.values()):
            self._drop(entry, "receiver shutting down")
        self.selector.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, address = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # EMFILE and the like: leave the rest in the backlog, try again on the next poll.
                log.warning("accept failed: %s", exc)
                return
            host = str(address[0])
            refused = self.counts.admit(host)
            if refused:
                conn.close()
                self.summary.dropped(host, refused)
                continue
            conn.setblocking(False)
            entry = Pending(conn, host, int(address[1]), time.monotonic() + self.artim)
            self.pending[conn.fileno()] = entry
            self.selector.register(conn, selectors.EVENT_READ, entry)

    def _read(self, entry: Pending) -> None:
        try:
            if entry.body is None:
                chunk = entry.sock.recv(6 - len(entry.header))
            else:
                want = min(RECV_CHUNK, entry.length - len(entry.body))
                if self.pending_bytes + want > MAX_PENDING_BYTES:
                    self._drop(entry, "too many association request bytes pending")
                    return
                held = self.pending_by_host.get(entry.host, 0)
                if held + want > MAX_PENDING_BYTES_PER_ADDRESS:
                    self._drop(entry, "too many association request bytes pending from one address")
                    return
                chunk = entry.sock.recv(want)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(entry, "connection error")
            return
        if not chunk:
            self._drop(entry, "closed without an association request")
            return
        if entry.body is None:
            entry.header += chunk
            if len(entry.header) < 6:
                return
            pdu_type, length = pdu.PDU_HEADER.unpack(entry.header)
            if pdu_type != pdu.A_ASSOCIATE_RQ:
                # Sta2 and anything but an A-ASSOCIATE-RQ: A-P-ABORT, then close (AA-1).
                reason = pdu.unexpected_pdu(pdu_type).reason
                self._drop(entry, "not an association request", abort=reason)
                return
            if length > MAX_ASSOCIATE_RQ:
                self._drop(entry, "association request too long", abort=pdu.ABORT_INVALID_PARAMETER)
                return
            entry.length = length
            entry.body = bytearray()
        else:
            entry.body += chunk
            self.pending_bytes += len(chunk)
            self.pending_by_host[entry.host] = self.pending_by_host.get(entry.host, 0) + len(chunk)
        if len(entry.body) == entry.length:
            self._forget(entry)
            request = bytes(entry.header) + bytes(entry.body)
            entry.sock.setblocking(True)
            self.hand_off(entry.sock, entry.host, entry.port, request)

    def _forget(self, entry: Pending) -> None:
        self.selector.unregister(entry.sock)
        self.pending.pop(entry.sock.fileno(), None)
        if entry.body is not None and entry.body:
            self.pending_bytes -= len(entry.body)
            left = self.pending_by_host[entry.host] - len(entry.body)
            if left:
                self.pending_by_host[entry.host] = left
            else:
                del self.pending_by_host[entry.host]

    def _drop(self, entry: Pending, why: str, abort: int = 0) -> None:
        self._forget(entry)
        if abort:
            with contextlib.suppress(OSError):
                entry.sock.send(pdu.a_abort(2, abort))
        entry.sock.close()
        self.counts.release(entry.host)
        self.summary.dropped(entry.host, why)
