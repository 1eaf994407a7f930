"""Idle, slow and flooding connections cannot take the receiver from other senders.

The floods come from 127.0.0.2 and further loopback addresses (all of 127/8 is local), the
echoes that must still be answered from 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
from pynetdicom.presentation import PresentationContext
from sqlalchemy import select as sql_select

from caduceus.core.db.models import ASSOCIATIONS, EVENTS
from tests.conftest import Launch
from tests.support.processes import Caduceus, free_port, require, run
from tests.support.proctree import children, rss_mb, threads
from tests.support.rawscu import RawSCU, associate_request, c_echo_command, connect, p_data

FLOODER = "127.0.0.2"
VERIFICATION = "1.2.840.10008.1.1"


def echo_seconds(receiver: Caduceus) -> float:
    """Seconds echoscu from 127.0.0.1 took to get its answer; fails if it got none."""
    started = time.monotonic()
    result = run(
        [require("echoscu"), "-to", "10", "-aec", "CADUCEUS", "127.0.0.1", str(receiver.port)],
        timeout=30,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    return time.monotonic() - started


def open_connections(port: int, count: int, sources: list[str]) -> list[socket.socket]:
    return [connect(port, sources[i % len(sources)]) for i in range(count)]


def closed_by_receiver(socks: list[socket.socket], wait: float) -> int:
    """How many of socks the receiver has closed (EOF or reset) within wait seconds."""
    open_ = {s.fileno(): s for s in socks}
    poller = select.poll()
    for fd in open_:
        poller.register(fd, select.POLLIN)
    closed = 0
    deadline = time.monotonic() + wait
    while open_ and time.monotonic() < deadline:
        for fd, _ in poller.poll(200):
            sock = open_.pop(fd)
            poller.unregister(fd)
            try:
                data = sock.recv(64, socket.MSG_PEEK)
            except OSError:
                data = b""
            if not data:
                closed += 1
    return closed


def worker_pids(receiver: Caduceus) -> list[int]:
    assert receiver.process is not None
    return children(receiver.process.pid)


def worker_threads(receiver: Caduceus) -> int:
    return sum(threads(pid) for pid in worker_pids(receiver))


def worker_rss(receiver: Caduceus) -> float:
    return sum(rss_mb(pid) for pid in worker_pids(receiver))


@pytest.fixture
def launch_sqlite(tmp_path: Path, sqlite_url: str, caduceus_factory: list[Caduceus]) -> Launch:
    """As `launch`, on SQLite only: the floods test the network side, not the database."""

    def start(**env: str) -> Caduceus:
        instance = Caduceus(tmp_path / "home", sqlite_url, free_port(), extra_env=env)
        caduceus_factory.append(instance)
        return instance.start()

    return start


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    held: list[socket.socket] = []
    yield held
    for sock in held:
        sock.close()


def test_idle_flood_from_one_address_does_not_block_another(
    launch_sqlite: Launch, sockets: list[socket.socket]
) -> None:
    receiver = launch_sqlite(CADUCEUS_RECEIVER_WORKERS="2")
    echo_seconds(receiver)
    baseline_threads = worker_threads(receiver)
    sockets += open_connections(receiver.port, 400, [FLOODER])
    # The per-address cap (64 by default, over both workers) closes the rest at once.
    closed = closed_by_receiver(sockets, wait=5)
    assert closed >= 400 - 64 - 2, f"only {closed} of 400 idle connections were closed"
    latency = echo_seconds(receiver)
    print(f"echo from 127.0.0.1 with 400 idle connections from {FLOODER}: {latency:.3f} s")
    # No thread for a connection that has not associated.
    assert worker_threads(receiver) <= baseline_threads + 2


def test_slow_drip_connections_are_closed_after_artim(
    launch_sqlite: Launch, sockets: list[socket.socket]
) -> None:
    receiver = launch_sqlite(CADUCEUS_RECEIVER_ASSOCIATION_REQUEST_TIMEOUT="3")
    sockets += open_connections(receiver.port, 300, [FLOODER])
    admitted = []
    for sock in sockets:
        try:
            sock.send(b"\x01")  # the first byte of an A-ASSOCIATE-RQ, and then one by one
            admitted.append(sock)
        except OSError:
            pass
    latency = echo_seconds(receiver)
    print(f"echo from 127.0.0.1 with 300 slow-drip connections from {FLOODER}: {latency:.3f} s")
    for sock in admitted:
        with contextlib.suppress(OSError):
            sock.send(b"\x00")
    # Each connection had 3 s for its whole request: every one is closed soon after.
    assert closed_by_receiver(sockets, wait=10) == 300


def test_three_thousand_connections_cost_no_threads_and_leave_no_memory(
    launch_sqlite: Launch, sockets: list[socket.socket]
) -> None:
    receiver = launch_sqlite(CADUCEUS_RECEIVER_WORKERS="2")
    echo_seconds(receiver)
    base_threads, base_rss = worker_threads(receiver), worker_rss(receiver)
    sources = [f"127.0.1.{n}" for n in range(1, 61)]  # 50 from each: under the per-address cap
    sockets += open_connections(receiver.port, 3000, sources)
    time.sleep(1)
    during_threads, during_rss = worker_threads(receiver), worker_rss(receiver)
    # The total cap (512) is full now: beyond it every connection is closed at once.
    assert closed_by_receiver(sockets, wait=5) >= 3000 - 512 - 2
    for sock in sockets:
        sock.close()
    sockets.clear()
    time.sleep(2)
    latency = echo_seconds(receiver)
    after_threads, after_rss = worker_threads(receiver), worker_rss(receiver)
    print(
        f"3000 connections: worker threads {base_threads} -> {during_threads} -> {after_threads},"
        f" RSS {base_rss:.0f} -> {during_rss:.0f} -> {after_rss:.0f} MiB, echo {latency:.3f} s"
    )
    assert during_threads <= base_threads + 2
    assert after_threads <= base_threads + 2
    assert after_rss < base_rss + 20, f"RSS {base_rss:.0f} MiB before, {after_rss:.0f} after"


def test_dropped_connections_and_repeated_rejections_are_summarised(
    launch: Launch, tmp_path: Path
) -> None:
    # The per-address cap above the closed connections the receiver may not have seen close
    # yet: only the summary is tested here.
    receiver = launch(
        CADUCEUS_RECEIVER_ASSOCIATION_REQUEST_TIMEOUT="2",
        CADUCEUS_RECEIVER_MAX_CONNECTIONS_PER_ADDRESS="64",
    )
    for _ in range(30):  # connect and close at once
        connect(receiver.port, FLOODER).close()
    for _ in range(20):  # garbage instead of an association request
        with connect(receiver.port, FLOODER) as sock:
            sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
            sock.recv(16)
    for _ in range(20):  # association requests to a wrong AE title
        scu = RawSCU(receiver.port, called="WRONG", source=FLOODER)
        assert scu.associate()[0] == 0x03  # A-ASSOCIATE-RJ
        scu.close()
    for _ in range(10):  # accepted, then closed without a message
        scu = RawSCU(receiver.port, source=FLOODER)
        assert scu.associate()[0] == 0x02
        scu.close()
    echo_seconds(receiver)
    time.sleep(1)
    receiver.stop()  # the summary is written at the latest on shutdown
    with receiver.engine().connect() as conn:
        rows = conn.execute(sql_select(ASSOCIATIONS)).all()
        events = conn.execute(sql_select(EVENTS).order_by(EVENTS.c.id)).all()
    print(f"associations rows after 80 hostile connections and one echo: {len(rows)}")
    # The echo and the first rejection keep their rows; nothing else does.
    assert sorted((r.status, r.peer_host) for r in rows) == [
        ("rejected", FLOODER),
        ("released", "127.0.0.1"),
    ]
    # (The test harness's own probe of the port, from 127.0.0.1, is summarised too.)
    [dropped] = [
        e for e in events if e.kind == "connection.dropped" and e.details["peer"] == FLOODER
    ]
    assert dropped.details["count"] == 60
    assert dropped.details["reasons"]["aborted before any message"] == 10
    rejected = [e for e in events if e.kind == "association.rejected"]
    assert [e.details.get("count") for e in rejected] == [None, 19]
    assert "19 more" in rejected[1].message


def abort_reason(sock: socket.socket) -> tuple[int, int]:
    """The (source, reason) of the A-ABORT the receiver answers with."""
    header = sock.recv(6)
    assert header[:1] == b"\x07", f"expected A-ABORT, got {header!r}"
    body = sock.recv(4)
    return body[2], body[3]


def test_protocol_errors_get_their_abort_and_one_warning_line(receiver: Caduceus) -> None:
    from tests.support.rawscu import associate_request, c_echo_command, p_data

    # An even presentation-context id (PS3.8 9.3.2.2: ids are odd): invalid parameter value.
    request = bytearray(associate_request(sop_class="1.2.840.10008.1.1"))
    # Items start after the 6-byte header and 68 fixed bytes; the first is the application
    # context, the next the presentation context, whose id is its fifth byte.
    context_item = 74 + 4 + int.from_bytes(request[76:78], "big")
    assert request[context_item] == 0x20
    request[context_item + 4] = 2
    with connect(receiver.port) as sock:
        sock.sendall(request)
        assert abort_reason(sock) == (2, 6)
    # A non-ASCII UID in a command, on an accepted association.
    scu = RawSCU(receiver.port)
    assert scu.associate(sop_class="1.2.840.10008.1.1")[0] == 0x02
    scu.send(p_data(1, c_echo_command("1.2.840.10008.1.1\u00e9".encode()), True, True))
    assert abort_reason(scu.sock) == (2, 6)
    scu.close()
    # A PDU type that does not exist: unrecognised PDU.
    scu = RawSCU(receiver.port)
    scu.associate(sop_class="1.2.840.10008.1.1")
    scu.send(b"\x09\x00\x00\x00\x00\x02\x00\x00")
    assert abort_reason(scu.sock) == (2, 1)
    scu.close()
    # An association request where none is due: unexpected PDU.
    scu = RawSCU(receiver.port)
    scu.associate(sop_class="1.2.840.10008.1.1")
    scu.send(associate_request())
    assert abort_reason(scu.sock) == (2, 2)
    scu.close()
    echo_seconds(receiver)
    receiver.stop()
    log = receiver.log()
    assert "Traceback" not in log
    warnings = [line for line in log.splitlines() if "level=warning" in line]
    assert sum("invalid association request from" in line for line in warnings) == 1
    assert sum("aborting the association from" in line for line in warnings) == 3


def test_open_file_limit_is_raised_or_caps_the_connections() -> None:
    """In a child with a soft limit of 300 and a hard one of 400 open files."""
    import resource
    import subprocess
    import sys

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (300, 400))

    code = (
        "import resource; from caduceus.receiver.connection_limits import raise_fd_limit; "
        "print(raise_fd_limit(100), raise_fd_limit(512), "
        "resource.getrlimit(resource.RLIMIT_NOFILE))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], preexec_fn=limit, capture_output=True, text=True, check=True
    )
    # 100 connections fit once the soft limit is raised to 356; 512 do not fit under 400.
    assert result.stdout.split(maxsplit=2) == ["100", "144", "(400, 400)\n"]


def test_a_peer_that_does_not_read_is_closed_and_frees_its_slot(
    launch_sqlite: Launch, sockets: list[socket.socket]
) -> None:
    receiver = launch_sqlite(
        CADUCEUS_RECEIVER_NETWORK_TIMEOUT="2", CADUCEUS_RECEIVER_MAX_CONNECTIONS_PER_ADDRESS="1"
    )
    # The cap is one connection: the start-up probe may hold it for a moment yet.
    deadline = time.monotonic() + 10
    while True:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sockets.append(sock)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(10)
        sock.connect(("127.0.0.1", receiver.port))
        sock.sendall(associate_request(sop_class=VERIFICATION))
        scu = RawSCU.__new__(RawSCU)
        scu.sock = sock
        try:
            assert scu.read_pdu()[0] == 0x02
            break
        except ConnectionError:
            assert time.monotonic() < deadline
            time.sleep(0.2)
    # Echo requests, and never a read: the answers fill both socket buffers, and the
    # receiver's send blocks. Send until our own send blocks too.
    echo = p_data(1, c_echo_command(), command=True, last=True)
    sock.settimeout(1)
    with contextlib.suppress(TimeoutError):
        for _ in range(200_000):
            sock.sendall(echo)
    # Its one connection is held: the address's cap is full. After the network timeout the
    # receiver gives up on it, and the address may connect again, while this socket is open.
    deadline = time.monotonic() + 15
    while True:
        result = run(
            [require("echoscu"), "-to", "5", "-aec", "CADUCEUS", "127.0.0.1", str(receiver.port)],
            timeout=30,
        )
        if result.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert result.returncode == 0, result.stderr + result.stdout
    assert "Traceback" not in receiver.log(), receiver.log()


def test_a_peer_resetting_right_after_its_request_leaves_no_traceback(
    launch_sqlite: Launch,
) -> None:
    receiver = launch_sqlite(CADUCEUS_RECEIVER_WORKERS="1")
    for _ in range(20):
        sock = connect(receiver.port, FLOODER)
        # Closing with a zero linger time sends an RST instead of a FIN.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.sendall(associate_request(sop_class=VERIFICATION))
        sock.close()
    time.sleep(1)
    echo_seconds(receiver)
    assert "Traceback" not in receiver.log(), receiver.log()


def test_one_address_cannot_fill_the_budget_for_unfinished_requests(
    launch_sqlite: Launch, sockets: list[socket.socket]
) -> None:
    # Caps high enough that only the bytes of unfinished requests can stop the flooder.
    receiver = launch_sqlite(
        CADUCEUS_RECEIVER_WORKERS="1",
        CADUCEUS_RECEIVER_MAX_CONNECTIONS="1000",
        CADUCEUS_RECEIVER_MAX_CONNECTIONS_PER_ADDRESS="1000",
    )
    echo_seconds(receiver)
    # Requests just under the largest allowed, each sent but for its last byte: 89 MB in all.
    # Then smaller and smaller ones, to fill what is left of any budget to the last bytes.
    sizes = [127 * 1024] * 700 + [2**n for n in range(15, 5, -1) for _ in range(2)]
    for length in sizes:
        sock = connect(receiver.port, FLOODER)
        sockets.append(sock)
        sock.settimeout(2)
        with contextlib.suppress(OSError):  # dropped by the receiver: so much the better
            sock.sendall(struct.pack(">BxI", 0x01, length) + bytes(length - 1))
        if length < 127 * 1024:
            time.sleep(0.05)  # read before the next, so each takes what room is left
    echo_seconds(receiver)


def test_a_request_with_128_contexts_of_twelve_syntaxes_is_accepted(receiver: Caduceus) -> None:
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = "RAWSCU"
    primitive.called_ae_title = "CADUCEUS"
    syntaxes = [ExplicitVRLittleEndian, ImplicitVRLittleEndian] + [
        f"1.2.840.10008.1.2.4.{n}" for n in (50, 51, 57, 70, 80, 81, 90, 91, 201, 202)
    ]
    contexts = []
    for index in range(128):
        context = PresentationContext()
        context.context_id = 2 * index + 1
        # Private SOP classes of the longest length a UID may have (64).
        context.abstract_syntax = f"1.2.3.{index}." + "1" * (57 - len(str(index)))
        context.transfer_syntax = syntaxes
        contexts.append(context)
    primitive.presentation_context_definition_list = contexts
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = 16384
    primitive.user_information = [max_length]
    rq = A_ASSOCIATE_RQ()
    rq.from_primitive(primitive)
    request = bytes(rq.encode())
    print(f"association request of 128 contexts x 12 transfer syntaxes: {len(request)} bytes")
    scu = RawSCU(receiver.port)
    try:
        scu.send(request)
        assert scu.read_pdu()[0] == 0x02  # A-ASSOCIATE-AC
        assert scu.release()[0] == 0x06
    finally:
        scu.close()


def test_one_address_at_its_cap_does_not_make_a_worker_busy(
    launch_sqlite: Launch, sockets: list[socket.socket]
) -> None:
    # Even with the per-address cap raised to 64, which every worker once served at most.
    receiver = launch_sqlite(
        CADUCEUS_RECEIVER_WORKERS="1", CADUCEUS_RECEIVER_MAX_CONNECTIONS_PER_ADDRESS="64"
    )
    for _ in range(64):
        scu = RawSCU(receiver.port, source=FLOODER)
        sockets.append(scu.sock)
        assert scu.associate(sop_class=VERIFICATION)[0] == 0x02
    echo_seconds(receiver)
