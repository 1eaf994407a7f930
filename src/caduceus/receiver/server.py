"""The receiver service: a listening socket shared by several worker processes.

The parent binds the port, then forks workers that all accept on the same socket, so a busy
association in one process does not hold up others and receiving scales across cores. Each
worker serves every association in its own thread. The parent restarts a worker that dies.
"""

from __future__ import annotations

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
from caduceus.receiver.association import AssociationHandler, ReceiverConfig
from caduceus.receiver.negotiation import Policy

log = logging.getLogger("caduceus.receiver")

MAX_ASSOCIATIONS_PER_WORKER = 64
SHUTDOWN_GRACE = 10.0


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
        ),
        fsync=settings.fsync,
        disk_reserve_bytes=settings.receiver_disk_reserve_mb * 1024 * 1024,
        network_timeout=settings.receiver_network_timeout,
    )


def bind(settings: Settings) -> socket.socket:
    sock = socket.create_server(
        (settings.dicom_host, settings.dicom_port), family=socket.AF_INET, backlog=256
    )
    return sock


class Worker:
    """Accepts associations on the shared socket until told to stop."""

    def __init__(self, listener: socket.socket, settings: Settings):
        self.listener = listener
        self.settings = settings
        self.stopping = threading.Event()
        self.active: set[threading.Thread] = set()
        self.lock = threading.Lock()

    def stop(self, *_: object) -> None:
        self.stopping.set()

    def run(self) -> None:
        config = make_config(self.settings)
        self.listener.settimeout(0.5)
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                if self.stopping.is_set():
                    break
                log.warning("accept failed: %s", exc)
                time.sleep(0.1)
                continue
            conn.setblocking(True)
            with self.lock:
                busy = len(self.active) >= MAX_ASSOCIATIONS_PER_WORKER
            thread = threading.Thread(target=self._serve, args=(conn, config, busy), daemon=True)
            with self.lock:
                self.active.add(thread)
            thread.start()
        deadline = time.monotonic() + SHUTDOWN_GRACE
        for thread in list(self.active):
            thread.join(max(0.0, deadline - time.monotonic()))
        config.temp_files.close()
        config.engine.dispose()

    def _serve(self, conn: socket.socket, config: ReceiverConfig, busy: bool) -> None:
        try:
            AssociationHandler(conn, config, busy=busy).run()
        finally:
            with self.lock:
                self.active.discard(threading.current_thread())


def _worker_main(listener: socket.socket, settings: Settings) -> None:
    from caduceus.core.logs import setup_logging

    setup_logging("receiver", home=settings.home, file_mode=settings.file_mode)
    worker = Worker(listener, settings)
    signal.signal(signal.SIGTERM, worker.stop)
    signal.signal(signal.SIGINT, worker.stop)
    worker.run()


def serve(settings: Settings) -> None:
    """Run the receiver until SIGTERM or SIGINT."""
    root = DataRoot(settings.home)
    root.create(settings.folder_mode)
    purged = root.purge_stale_temp()
    if purged:
        log.info("removed %d stale temporary files", purged)
    listener = bind(settings)
    count = settings.effective_receiver_workers
    log.info(
        "receiver listening on %s:%d as %s with %d worker(s)",
        settings.dicom_host,
        settings.dicom_port,
        settings.ae_title,
        count,
    )
    detail = f"{settings.ae_title} on {settings.dicom_host}:{settings.dicom_port}"
    if count == 1:
        worker = Worker(listener, settings)
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

    def start() -> BaseProcess:
        process = context.Process(
            target=_worker_main, args=(listener, settings), name="caduceus-receiver-worker"
        )
        process.start()
        return process

    workers = [start() for _ in range(count)]
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
                workers[index] = start()
    for process in workers:
        if process.pid is not None and process.is_alive():
            os.kill(process.pid, signal.SIGTERM)
    for process in workers:
        process.join(SHUTDOWN_GRACE + 5)
        if process.is_alive():
            process.kill()
    listener.close()
    heart.end("stopped")
    heart_engine.dispose()
