"""Accepting connections and reading their association requests without a thread each.

A connection costs a thread only once it has sent a whole A-ASSOCIATE-RQ. Until then it is one
entry in a selector, with no buffer until bytes arrive, and it must finish its request within
the ARTIM time (PS3.8 9.1.5) or be closed. Connections beyond the per-address or total cap are
closed at once. So idle or slow-dripping connections cannot use up the threads, the memory or
the association slots that real senders need.

A connection on the TLS port does its TLS handshake here too, non-blocking: the handshake and
then the request must both be done before the same ARTIM deadline, under the same caps. A
failed handshake is one warning line (the first of its kind per address and summary interval)
and a count in the summary, never a traceback.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from caduceus.core.net import pdu
from caduceus.receiver.connection_limits import ConnectionCounts
from caduceus.receiver.summary import ConnectionSummary
from caduceus.receiver.tls import handshake_failure

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
    tls: bool = False
    handshaking: bool = False


# Called with the socket (blocking again; an ssl.SSLSocket from the TLS port), the peer address
# and port as accept() gave them (getpeername() fails once the peer has reset), the whole
# A-ASSOCIATE-RQ PDU, and whether the connection is TLS.
HandOff = Callable[[socket.socket, str, int, bytes, bool], None]


@dataclass(frozen=True, slots=True)
class Listener:
    sock: socket.socket
    tls: ssl.SSLContext | None = None


class Acceptor:
    def __init__(
        self,
        listeners: list[Listener],
        counts: ConnectionCounts,
        summary: ConnectionSummary,
        artim: float,
        hand_off: HandOff,
    ):
        self.listeners = listeners
        self.counts = counts
        self.summary = summary
        self.artim = artim
        self.hand_off = hand_off
        self.selector = selectors.DefaultSelector()
        self.pending: dict[int, Pending] = {}
        self.pending_bytes = 0
        self.pending_by_host: dict[str, int] = {}
        self.next_sweep = 0.0
        for listener in listeners:
            listener.sock.setblocking(False)
            self.selector.register(listener.sock, selectors.EVENT_READ, listener)

    def poll(self, timeout: float) -> None:
        """Wait up to timeout for connections and request bytes, and act on them."""
        for key, _ in self.selector.select(timeout):
            if isinstance(key.data, Listener):
                self._accept(key.data)
            elif key.data.sock.fileno() in self.pending:  # not dropped earlier in this round
                self._ready(key.data)
        now = time.monotonic()
        if now >= self.next_sweep:
            self.next_sweep = now + 0.25
            for entry in [p for p in self.pending.values() if p.deadline <= now]:
                # ARTIM expired in Sta2: close the transport connection (AA-2), no abort.
                self._drop(entry, "association request not complete in time")

    def close(self) -> None:
        """Stop listening and drop every connection that has not associated."""
        for listener in self.listeners:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(listener.sock)
            listener.sock.close()
        for entry in list(self.pending.values()):
            self._drop(entry, "receiver shutting down")
        self.selector.close()

    def _accept(self, listener: Listener) -> None:
        while True:
            try:
                conn, address = listener.sock.accept()
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
            if listener.tls is not None:
                try:
                    conn = listener.tls.wrap_socket(
                        conn, server_side=True, do_handshake_on_connect=False
                    )
                except (OSError, ValueError):  # reset before we got to it
                    conn.close()
                    self.counts.release(host)
                    self.summary.dropped(host, "connection error")
                    continue
            entry = Pending(
                conn,
                host,
                int(address[1]),
                time.monotonic() + self.artim,
                tls=listener.tls is not None,
                handshaking=listener.tls is not None,
            )
            self.pending[conn.fileno()] = entry
            self.selector.register(conn, selectors.EVENT_READ, entry)

    def _ready(self, entry: Pending) -> None:
        if entry.handshaking and not self._handshake(entry):
            return
        self._read(entry)
        # TLS decrypts whole records: bytes of the request may wait in the SSL buffer, where
        # the selector does not see them.
        while entry.tls and entry.sock.fileno() in self.pending:
            sock = entry.sock
            assert isinstance(sock, ssl.SSLSocket)
            if not sock.pending():
                return
            self._read(entry)

    def _handshake(self, entry: Pending) -> bool:
        """One step of the TLS handshake; True once it is done."""
        sock = entry.sock
        assert isinstance(sock, ssl.SSLSocket)
        try:
            sock.do_handshake()
        except ssl.SSLWantReadError:
            self.selector.modify(sock, selectors.EVENT_READ, entry)
            return False
        except ssl.SSLWantWriteError:
            self.selector.modify(sock, selectors.EVENT_WRITE, entry)
            return False
        except (OSError, ValueError) as exc:
            why = handshake_failure(exc)
            if self.summary.dropped(entry.host, why):
                log.warning("TLS connection from %s refused: %s", entry.host, why)
            self._drop(entry, why, counted=True)
            return False
        entry.handshaking = False
        self.selector.modify(sock, selectors.EVENT_READ, entry)
        return True

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
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
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
            self.hand_off(entry.sock, entry.host, entry.port, request, entry.tls)

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

    def _drop(self, entry: Pending, why: str, abort: int = 0, counted: bool = False) -> None:
        self._forget(entry)
        if abort:
            with contextlib.suppress(OSError):
                entry.sock.send(pdu.a_abort(2, abort))
        entry.sock.close()
        self.counts.release(entry.host)
        if not counted:
            self.summary.dropped(entry.host, why)
