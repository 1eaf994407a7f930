"""One association, from A-ASSOCIATE-RQ to release or abort, on a blocking socket."""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import struct
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from caduceus.core.db.group_commit import GroupCommitter
from caduceus.core.net import dimse, pdu
from caduceus.core.storage import DataRoot, TempFiles
from caduceus.receiver import admission, negotiation, records, status
from caduceus.receiver.refusals import Refusals
from caduceus.receiver.store import (
    BELOW_RESERVE,
    MAX_INFLATED,
    Discard,
    InstanceWriter,
    Outcome,
    StoreContext,
)
from caduceus.receiver.summary import ConnectionSummary

log = logging.getLogger("caduceus.receiver")

MAX_COMMAND = 64 * 1024
# Bytes a peer may send beyond our advertised maximum PDU length before we call it an attack.
PDU_SLACK = 1024


class Sink(Protocol):
    def write(self, data: memoryview) -> None: ...
    def abandon(self) -> None: ...
    def finish(self) -> Outcome: ...


@dataclass(frozen=True, slots=True)
class ReceiverConfig:
    root: DataRoot
    temp_files: TempFiles
    engine: Engine
    committer: GroupCommitter
    policy: negotiation.Policy
    fsync: bool
    disk_reserve_bytes: int
    network_timeout: float
    max_inflated_bytes: int = MAX_INFLATED


class AssociationHandler:
    def __init__(
        self,
        sock: socket.socket,
        config: ReceiverConfig,
        *,
        request: bytes,
        busy: bool = False,
        summary: ConnectionSummary | None = None,
        peer: tuple[str, int] | None = None,
        tls: bool = False,
    ):
        """request: the whole A-ASSOCIATE-RQ PDU, already read (see acceptor.py); peer: the
        address and port accept() gave (asked of the socket if not given); tls: whether it
        came in on the TLS port (sock is then an ssl.SSLSocket, its handshake done)."""
        self.sock = sock
        self.config = config
        self.request = request
        self.busy = busy
        self.summary = summary or ConnectionSummary()
        self.messages = 0
        host, port = peer or sock.getpeername()[:2]
        self.peer_host: str = host
        self.peer_port: int = port
        self.tls = tls
        self.reader = pdu.SocketReader(sock)
        self.association_id: int | None = None
        self.negotiated: negotiation.Negotiated | None = None
        self.stored = 0
        self.failed = 0
        self.bytes_stored = 0
        self.command = bytearray()
        self.current: Sink | None = None
        self.current_request: dimse.Command | None = None
        self.current_context = 0
        self.store_context: StoreContext | None = None
        self.refusals: Refusals | None = None

    def _set_options(self) -> None:
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Kernel timeouts rather than settimeout(), which polls before every recv. The send
        # timeout matters as much: a peer that sends requests and never reads the answers
        # would otherwise hold this thread and its connection slots in sendall() for ever.
        timeout = self.config.network_timeout
        if isinstance(self.sock, ssl.SSLSocket):
            # Python's TLS layer retries a read that SO_RCVTIMEO interrupted, for ever: over
            # TLS the timeout must be the socket's own (a poll before each read and write).
            self.sock.settimeout(timeout)
            return
        value = struct.pack("ll", int(timeout), int((timeout % 1) * 1_000_000))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)

    def run(self) -> None:
        try:
            self._set_options()
        except OSError:  # the peer is already gone
            self.sock.close()
            self.summary.dropped(self.peer_host, "closed right after its association request")
            return
        end_status, reason = "aborted", ""
        try:
            if not self._associate():
                return
            end_status, reason = self._serve()
        except pdu.PeerClosed as exc:
            end_status, reason = "aborted", str(exc)
        except pdu.ProtocolError as exc:
            # A peer's mistake, not ours: one line, no traceback, and the reason on the wire.
            log.warning("aborting the association from %s: protocol error: %s", self.peer_host, exc)
            end_status, reason = "aborted", f"protocol error: {exc}"
            self._send(pdu.a_abort(2, exc.reason))
        except (TimeoutError, BlockingIOError, ssl.SSLWantWriteError):
            # SO_SNDTIMEO expired in sendall() (over TLS: OpenSSL's "want write"): the peer
            # does not read. Close, send nothing more (an A-ABORT would wait as long again).
            log.warning("closing the association from %s: it does not read", self.peer_host)
            end_status, reason = "aborted", "network timeout: the peer does not read"
        except ConnectionError as exc:
            # Reset or gone while we answered: the network's doing, not a fault of ours.
            log.info("association from %s: connection lost: %s", self.peer_host, exc)
            end_status, reason = "aborted", f"connection lost: {exc.strerror or exc}"
        except ssl.SSLError as exc:
            # The TLS layer failed under us (a bad record, the peer gone without close_notify):
            # the network's or the peer's doing; one line, no traceback.
            log.warning("association from %s: TLS error: %s", self.peer_host, exc.reason or exc)
            end_status, reason = "aborted", f"TLS error: {exc.reason or type(exc).__name__}"
        except Exception as exc:
            log.exception("association from %s failed", self.peer_host)
            end_status, reason = "aborted", f"internal error: {type(exc).__name__}"
            self._send(pdu.a_abort(2, 0))
        finally:
            if self.refusals is not None:
                self.refusals.flush()
            if self.current is not None:
                self.current.abandon()
                self.failed += 1
                reason = reason + " (an instance in transfer was discarded)"
            self._close(end_status, reason)

    def _send(self, data: bytes) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(data)

    def _close(self, end_status: str, reason: str) -> None:
        try:
            self.sock.close()
        finally:
            self._record_end(end_status, reason)

    def _record_end(self, end_status: str, reason: str) -> None:
        if self.association_id is None:
            return  # rejected or invalid: logged and summarised already
        if end_status == "aborted" and not self.messages:
            self._forget_empty()
            return
        try:
            records.close_association(
                self.config.engine,
                self.association_id,
                end_status,
                reason,
                self.stored,
                self.failed,
                self.bytes_stored,
            )
        except SQLAlchemyError as exc:
            log.warning(
                "could not record the end of association %s: %s",
                self.association_id,
                type(exc).__name__,
            )
        except Exception:
            log.exception("could not record the end of association %s", self.association_id)
        log.info(
            "association %s from %s%s ended: %s %s (%d stored, %d failed)",
            self.association_id,
            self.peer_host,
            " over TLS" if self.tls else "",
            end_status,
            reason,
            self.stored,
            self.failed,
        )

    def _forget_empty(self) -> None:
        """An association that carried no message is counted in the summary, not kept."""
        assert self.association_id is not None
        try:
            records.forget_association(self.config.engine, self.association_id)
        except Exception as exc:
            log.warning("could not remove empty association %s: %s", self.association_id, exc)
        self.summary.dropped(self.peer_host, "aborted before any message")

    def _associate(self) -> bool:
        try:
            rq = negotiation.decode_request(self.request)
            calling = rq.calling_ae_title.strip()
            called = rq.called_ae_title.strip()
            if self.busy:
                raise negotiation.Rejection(
                    negotiation.reject_pdu(negotiation.REJECT_BUSY), "too many associations"
                )
            ac, self.negotiated = negotiation.negotiate(rq, self.config.policy, self.peer_host)
        except negotiation.Rejection as rejection:
            self._reject(rejection, calling, called)
            return False
        except Exception as exc:
            # pynetdicom's decoder and its presentation-context checks raise ValueError,
            # UnicodeError, struct.error...: all mean an invalid request, A-P-ABORT reason 6.
            log.warning(
                "invalid association request from %s: %s: %s",
                self.peer_host,
                type(exc).__name__,
                exc,
            )
            self._send(pdu.a_abort(2, pdu.ABORT_INVALID_PARAMETER))
            self.summary.dropped(self.peer_host, "invalid association request")
            return False
        try:
            self.association_id = records.open_association(
                self.config.engine,
                calling,
                called,
                self.peer_host,
                self.peer_port,
                "open",
                tls=self.tls,
            )
        except SQLAlchemyError as exc:
            # An outage, not a fault of the peer's or a bug: one line each, and a transient
            # rejection that tells the sender to try again later.
            log.warning(
                "rejected association from %s@%s for now: database unavailable (%s)",
                calling,
                self.peer_host,
                type(exc).__name__,
            )
            self.summary.dropped(self.peer_host, "database unavailable")
            self._send(negotiation.reject_pdu(negotiation.REJECT_UNAVAILABLE))
            return False
        self.store_context = StoreContext(
            root=self.config.root,
            temp_files=self.config.temp_files,
            engine=self.config.engine,
            committer=self.config.committer,
            fsync=self.config.fsync,
            association_id=self.association_id,
            calling_aet=calling,
            called_aet=called,
            peer_host=self.peer_host,
            disk_reserve_bytes=self.config.disk_reserve_bytes,
        )
        self.sock.sendall(ac)
        return True

    def _reject(self, rejection: negotiation.Rejection, calling: str, called: str) -> None:
        # The first of a kind from an address in an interval is recorded in full; the repeats
        # are counted into one summary event (summary.py), so a flood cannot grow the history.
        kind = f"{rejection.pdu.hex()} {calling!r} {called!r}"
        if self.summary.first_rejection(self.peer_host, kind):
            log.warning("rejected association from %s@%s: %s", calling, self.peer_host, rejection)
            # Recorded before the peer hears of it, so the history is never behind the network.
            try:
                association_id = records.open_association(
                    self.config.engine,
                    calling,
                    called,
                    self.peer_host,
                    self.peer_port,
                    "rejected",
                    rejection.reason,
                    tls=self.tls,
                )
            except SQLAlchemyError as exc:
                log.warning("could not record the rejection: %s", type(exc).__name__)
            else:
                self.summary.rejection_recorded(
                    self.peer_host, kind, association_id, calling, called, rejection.reason
                )
        self._send(rejection.pdu)

    def _serve(self) -> tuple[str, str]:
        read = self.reader.read
        max_pdu = self.config.policy.max_pdu or (1 << 32)
        while True:
            pdu_type, length = pdu.PDU_HEADER.unpack(read(6))
            if pdu_type == pdu.P_DATA_TF:
                if length > max_pdu + PDU_SLACK:
                    raise pdu.ProtocolError(f"PDU of {length} bytes exceeds our maximum")
                self._p_data(length)
            elif pdu_type == pdu.A_RELEASE_RQ:
                if length > PDU_SLACK:
                    raise pdu.ProtocolError(f"A-RELEASE-RQ of {length} bytes")
                read(length)
                if self.current is not None or self.command:
                    raise pdu.ProtocolError(
                        "release requested in the middle of a message", pdu.ABORT_UNEXPECTED_PDU
                    )
                self.sock.sendall(pdu.a_release_rp())
                return "released", ""
            elif pdu_type == pdu.A_ABORT:
                if length > PDU_SLACK:
                    raise pdu.ProtocolError(f"A-ABORT of {length} bytes")
                body = read(length)
                source = body[2] if len(body) >= 4 else -1
                return "aborted", f"the peer aborted the association (source {source})"
            else:
                raise pdu.unexpected_pdu(pdu_type)

    def _p_data(self, length: int) -> None:
        reader = self.reader
        while length > 0:
            if length < 6:
                raise pdu.ProtocolError("P-DATA-TF with a truncated PDV")
            pdv_length, context_id, control = pdu.PDV_HEADER.unpack(reader.read(6))
            if pdv_length < 2 or pdv_length + 4 > length:
                raise pdu.ProtocolError("PDV length does not fit its PDU")
            length -= 4 + pdv_length
            payload = pdv_length - 2
            is_command, last = bool(control & 0x01), bool(control & 0x02)
            if is_command:
                if self.current is not None:
                    raise pdu.ProtocolError("command fragment while a dataset is in transfer")
                if len(self.command) + payload > MAX_COMMAND:
                    raise pdu.ProtocolError("DIMSE command set too large")
                self.command += reader.read(payload)
                if last:
                    command = bytes(self.command)
                    self.command.clear()
                    self._on_command(context_id, dimse.parse_command(command))
            else:
                if self.current is None or context_id != self.current_context:
                    raise pdu.ProtocolError("dataset fragment without a command for it")
                reader.pump(payload, self.current.write)
                if last:
                    self._on_dataset_end()

    def _on_command(self, context_id: int, command: dimse.Command) -> None:
        assert self.negotiated is not None
        self.messages += 1
        context = self.negotiated.contexts.get(context_id)
        if context is None:
            raise pdu.ProtocolError(f"message on presentation context {context_id} not accepted")
        if command.command_field == dimse.C_ECHO_RQ:
            self._respond(context_id, command, status.SUCCESS, context.abstract_syntax)
        elif command.command_field == dimse.C_STORE_RQ:
            if not command.has_dataset:
                raise pdu.ProtocolError("C-STORE request without a dataset")
            self.current = self._sink_for(command, context)
            self.current_request = command
            self.current_context = context_id
        elif command.command_field == dimse.C_CANCEL_RQ:
            return
        else:
            if command.has_dataset:
                raise pdu.ProtocolError(f"unsupported command 0x{command.command_field:04X}")
            self._respond(context_id, command, status.UNRECOGNIZED_OPERATION)

    def _sink_for(self, command: dimse.Command, context: negotiation.AcceptedContext) -> Sink:
        if command.affected_sop_class != context.abstract_syntax:
            return Discard(
                status.SOP_CLASS_NOT_SUPPORTED,
                "SOP class differs from the presentation context's abstract syntax",
            )
        if not admission.disk_admits(self.config.root, self.config.disk_reserve_bytes):
            return Discard(status.OUT_OF_RESOURCES, BELOW_RESERVE)
        assert self.store_context is not None
        return InstanceWriter(
            self.store_context,
            command.affected_sop_class,
            command.affected_sop_instance,
            context.transfer_syntax,
            max_inflated=self.config.max_inflated_bytes,
        )

    def _on_dataset_end(self) -> None:
        assert self.current is not None and self.current_request is not None
        sink, request = self.current, self.current_request
        outcome = sink.finish()
        self.current = None
        if outcome.status == status.SUCCESS:
            self.stored += 1
            if isinstance(sink, InstanceWriter):
                self.bytes_stored += sink.size
        else:
            self.failed += 1
            self._record_refusal(request, outcome)
        self._respond(
            self.current_context,
            request,
            outcome.status,
            request.affected_sop_class,
            request.affected_sop_instance,
            outcome.comment,
        )
        if isinstance(sink, InstanceWriter):
            # While the sender prepares its next request, make the file it will go into.
            self.config.temp_files.prepare()

    def _record_refusal(self, request: dimse.Command, outcome: Outcome) -> None:
        """Every failure status a C-STORE gets is counted in its association's events."""
        if self.refusals is None:
            assert self.store_context is not None
            self.refusals = Refusals(
                self.config.engine,
                self.store_context.association_id,
                self.store_context.calling_aet,
                self.peer_host,
            )
        context = self.negotiated.contexts.get(self.current_context) if self.negotiated else None
        self.refusals.add(
            outcome.status,
            outcome.comment,
            request.affected_sop_class,
            request.affected_sop_instance,
            str(context.transfer_syntax) if context else "",
            outcome.quarantined_as,
        )

    def _respond(
        self,
        context_id: int,
        request: dimse.Command,
        code: int,
        sop_class: str = "",
        sop_instance: str = "",
        comment: str = "",
    ) -> None:
        assert self.negotiated is not None
        message = dimse.encode_response(request, code, sop_class, sop_instance, comment)
        for data in pdu.p_data_pdus(context_id, True, message, self.negotiated.peer_max_pdu):
            self.sock.sendall(data)
