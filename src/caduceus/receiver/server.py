"""The receiver service: a listening socket shared by several worker processes.

The parent binds the port, then forks workers that all accept on the same socket, so a busy
association in one process does not hold up others and receiving scales across cores. In each
worker a selector holds the connections that have not yet sent their association request (see
acceptor.py); each association then runs in its own thread. The parent restarts a worker that
dies, and a worker dies with its parent.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from multiprocessing.process import BaseProcess
from types import FrameType

from caduceus.core.database import open_database
from caduceus.core.db.group_commit import GroupCommitter
from caduceus.core.heartbeat import Heartbeat, beating
from caduceus.core.settings import Settings
from caduceus.core.storage import DataRoot, TempFiles
from caduceus.receiver.acceptor import Acceptor, Listener
from caduceus.receiver.association import AssociationHandler, ReceiverConfig
from caduceus.receiver.connection_limits import ConnectionCounts, raise_fd_limit
from caduceus.receiver.negotiation import Policy, quiet_codec_logs
from caduceus.receiver.summary import ConnectionSummary
from caduceus.receiver.tls import TlsSetupError, server_context

log = logging.getLogger("caduceus.receiver")

SHUTDOWN_GRACE = 10.0
PR_SET_PDEATHSIG = 1


def make_config(settings: Settings) -> ReceiverConfig:
    root = DataRoot(settings.home)
    engine = open_database(settings, pool_size=8)
    return ReceiverConfig(
        root=root,
        temp_files=TempFiles(root),
        engine=engine,
        committer=GroupCommitter(engine),
        policy=Policy(
            ae_title=settings.ae_title,
            check_called_aet=settings.receiver_check_called_aet,
            allowed_calling=tuple(settings.receiver_allowed_calling_aets),
            accept_private_sop_classes=settings.receiver_accept_private_sop_classes,
            max_pdu=settings.receiver_max_pdu,
            accept_compressed=settings.receiver_accept_compressed_images,
        ),
        fsync=settings.fsync,
        disk_reserve_bytes=settings.receiver_disk_reserve_mb * 1024 * 1024,
        network_timeout=settings.receiver_network_timeout,
        max_inflated_bytes=settings.receiver_max_inflated_mb * 1024 * 1024,
    )


def bind(settings: Settings, port: int | None = None) -> socket.socket:
    sock = socket.create_server(
        (settings.dicom_host, port or settings.dicom_port), family=socket.AF_INET, backlog=256
    )
    return sock


def listeners(settings: Settings) -> list[Listener]:
    """The plain DICOM port, and the TLS port when one is configured (its certificate and key
    are loaded here, so that a mistake in them stops the receiver at start)."""
    context = server_context(settings)
    bound = [Listener(bind(settings))]
    if context is not None:
        bound.append(Listener(bind(settings, settings.receiver_tls_port), context))
    return bound


class Worker:
    """Accepts connections on the shared socket and serves associations until told to stop."""

    def __init__(
        self,
        listeners: list[Listener],
        settings: Settings,
        counts: ConnectionCounts,
        parent_pid: int | None = None,
    ):
        self.listeners = listeners
        self.settings = settings
        self.counts = counts
        self.parent_pid = parent_pid
        self.stopping = threading.Event()
        self.active: set[threading.Thread] = set()
        self.lock = threading.Lock()
        self.summary = ConnectionSummary()
        self.config: ReceiverConfig | None = None

    def stop(self, *_: object) -> None:
        self.stopping.set()

    def run(self) -> None:
        quiet_codec_logs()
        self.config = config = make_config(self.settings)
        acceptor = Acceptor(
            self.listeners,
            self.counts,
            self.summary,
            self.settings.receiver_association_request_timeout,
            self._hand_off,
        )
        flusher = threading.Thread(target=self._flush_periodically, daemon=True)
        flusher.start()
        while not self.stopping.is_set():
            acceptor.poll(0.5)
            if self.parent_pid is not None and os.getppid() != self.parent_pid:
                # A backstop for PR_SET_PDEATHSIG: an orphan must not keep the port.
                log.error("receiver parent %d is gone; this worker stops", self.parent_pid)
                self.stopping.set()
        # Closed first, so that a new receiver can take the port while associations finish.
        acceptor.close()
        deadline = time.monotonic() + SHUTDOWN_GRACE
        for thread in list(self.active):
            thread.join(max(0.0, deadline - time.monotonic()))
        flusher.join(5)
        self._flush()
        config.temp_files.close()
        config.engine.dispose()

    def _hand_off(
        self, conn: socket.socket, host: str, port: int, request: bytes, tls: bool
    ) -> None:
        with self.lock:
            busy = len(self.active) >= self.counts.per_worker()
            thread = threading.Thread(
                target=self._serve, args=(conn, host, port, request, busy, tls), daemon=True
            )
            self.active.add(thread)
        try:
            thread.start()
        except RuntimeError as exc:  # the process is out of threads: refuse this one only
            log.warning("no thread for a connection from %s: %s", host, exc)
            with self.lock:
                self.active.discard(thread)
            conn.close()
            self.counts.release(host)
            self.summary.dropped(host, "no thread available")

    def _serve(
        self, conn: socket.socket, host: str, port: int, request: bytes, busy: bool, tls: bool
    ) -> None:
        assert self.config is not None
        try:
            try:
                handler = AssociationHandler(
                    conn,
                    self.config,
                    busy=busy,
                    request=request,
                    summary=self.summary,
                    peer=(host, port),
                    tls=tls,
                )
            except Exception as exc:
                # Nothing of the association exists yet: close, count, no traceback.
                conn.close()
                self.summary.dropped(host, f"connection error: {type(exc).__name__}")
                return
            handler.run()
        finally:
            self.counts.release(host)
            with self.lock:
                self.active.discard(threading.current_thread())

    def _flush(self) -> None:
        assert self.config is not None
        try:
            self.summary.flush(self.config.engine)
        except Exception as exc:
            log.warning("could not record the connection summary: %s", exc)

    def _flush_periodically(self) -> None:
        while not self.stopping.wait(self.settings.receiver_summary_interval):
            self._flush()


def _die_with_parent(parent_pid: int) -> None:
    """Ask the kernel for SIGTERM when the parent dies, so that no orphan keeps the port."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent_pid:  # it died before prctl took effect
        os._exit(0)


def _worker_main(
    bound: list[Listener], settings: Settings, counts: ConnectionCounts, row: int, parent: int
) -> None:
    from caduceus.core.logs import setup_logging

    _die_with_parent(parent)
    setup_logging("receiver", home=settings.home, file_mode=settings.file_mode)
    counts.use_row(row)
    worker = Worker(bound, settings, counts, parent_pid=parent)
    signal.signal(signal.SIGTERM, worker.stop)
    signal.signal(signal.SIGINT, worker.stop)
    worker.run()


def connection_counts(settings: Settings, workers: int) -> ConnectionCounts:
    total = settings.receiver_max_connections
    room = raise_fd_limit(total)
    if room < total:
        log.warning(
            "the open-file limit leaves room for %d connections, not %d: that is the cap",
            room,
            total,
        )
    return ConnectionCounts(workers, settings.receiver_max_connections_per_address, room)


def serve(settings: Settings) -> None:
    """Run the receiver until SIGTERM or SIGINT."""
    root = DataRoot(settings.home)
    root.create(settings.folder_mode)
    purged = root.purge_stale_temp()
    if purged:
        log.info("removed %d stale temporary files", purged)
    try:
        bound = listeners(settings)
    except TlsSetupError as exc:
        log.error("%s", exc)  # one line: the receiver cannot start like this
        raise SystemExit(2) from None
    count = settings.effective_receiver_workers
    tls = f", TLS on port {settings.receiver_tls_port}" if len(bound) > 1 else ""
    log.info(
        "receiver listening on %s:%d%s as %s with %d worker(s)",
        settings.dicom_host,
        settings.dicom_port,
        tls,
        settings.ae_title,
        count,
    )
    detail = f"{settings.ae_title} on {settings.dicom_host}:{settings.dicom_port}{tls}"
    counts = connection_counts(settings, count)
    if count == 1:
        worker = Worker(bound, settings, counts)
        signal.signal(signal.SIGTERM, worker.stop)
        signal.signal(signal.SIGINT, worker.stop)
        heart_engine = open_database(settings, pool_size=1)
        try:
            with beating(heart_engine, "receiver", detail):
                worker.run()
        finally:
            heart_engine.dispose()
        return

    # fork, not spawn: the workers inherit the bound socket; nothing runs threads before this.
    context = multiprocessing.get_context("fork")
    stopping = threading.Event()

    def stop(signum: int, _frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    parent = os.getpid()

    def start(row: int) -> BaseProcess:
        counts.clear_row(row)  # the connections of a dead worker died with it
        process = context.Process(
            target=_worker_main,
            args=(bound, settings, counts, row, parent),
            name="caduceus-receiver-worker",
        )
        process.start()
        return process

    workers = [start(row) for row in range(count)]
    # No heartbeat thread here: a fork (a worker's restart) beside a running thread could
    # copy a lock that thread holds. The loop beats instead, between forks.
    heart_engine = open_database(settings, pool_size=1)
    heart = Heartbeat(heart_engine, "receiver", detail=f"{detail}, {count} workers")
    heart.beat()
    while not stopping.is_set():
        time.sleep(0.5)
        heart.beat_if_due()
        for index, process in enumerate(workers):
            if not process.is_alive() and not stopping.is_set():
                log.error(
                    "receiver worker %s exited (%s); restarting", process.pid, process.exitcode
                )
                # The child must not share the parent's database connection.
                heart_engine.dispose()
                workers[index] = start(index)
    for process in workers:
        if process.pid is not None and process.is_alive():
            os.kill(process.pid, signal.SIGTERM)
    for process in workers:
        process.join(SHUTDOWN_GRACE + 5)
        if process.is_alive():
            process.kill()
    for listener in bound:
        listener.sock.close()
    heart.end("stopped")
    heart_engine.dispose()
