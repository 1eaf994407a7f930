"""Receiving DICOM over TLS on its own port: DCMTK's storescu +tls and our own TLS target send,
client certificates are checked, old TLS and non-TLS peers are refused in a line, and the
handshake holds neither a thread nor the acceptor."""

from __future__ import annotations

import socket
import ssl
import subprocess
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom import dcmread
from sqlalchemy import select

from caduceus.core.config.models import DicomTlsTarget
from caduceus.core.db.models import ASSOCIATIONS, EVENTS
from caduceus.core.dicom.synthetic import SeriesSpec, write_series
from caduceus.dispatcher.targets import Shipment, plugin_for
from tests.conftest import Launch
from tests.support.dicomfiles import dataset_bytes, stored_instances
from tests.support.processes import Caduceus, free_port, require, run
from tests.support.rawscu import associate_request, c_echo_command, p_data
from tests.support.tls import CertificateAuthority, KeyPair
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(180)

VERIFICATION = "1.2.840.10008.1.1"


@dataclass(frozen=True)
class Pki:
    ca: CertificateAuthority
    server: KeyPair
    client: KeyPair
    other_client: KeyPair  # signed by a CA the receiver does not trust


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority(folder, "ours")
    other = CertificateAuthority(folder, "theirs")
    return Pki(ca, ca.server(), ca.client(), other.client("stranger"))


@dataclass
class TlsReceiver:
    caduceus: Caduceus
    tls_port: int


def start(launch: Launch, pki: Pki, *, require_client: bool = False, **env: str) -> TlsReceiver:
    port = free_port()
    settings = {
        "CADUCEUS_RECEIVER_TLS_PORT": str(port),
        "CADUCEUS_RECEIVER_TLS_CERTIFICATE": str(pki.server.certificate),
        "CADUCEUS_RECEIVER_TLS_KEY": str(pki.server.key),
    }
    if require_client:
        settings["CADUCEUS_RECEIVER_TLS_CA_CERTIFICATE"] = str(pki.ca.certificate)
    return TlsReceiver(launch(**settings, **env), port)


def storescu_tls(
    port: int, pki: Pki, *paths: Path, client: KeyPair | None = None
) -> subprocess.CompletedProcess[str]:
    """storescu over TLS, verifying our server certificate; with a client certificate, or
    anonymous TLS (none) when client is None."""
    identity = ["+tls", str(client.key), str(client.certificate)] if client else ["+tla"]
    args = [require("storescu"), *identity, "+cf", str(pki.ca.certificate), "-aec", "CADUCEUS"]
    return run([*args, "127.0.0.1", str(port), *map(str, paths)], timeout=120)


def assert_byte_exact(receiver: Caduceus, originals: list[Path]) -> None:
    rows = {r["sop_instance_uid"]: r for r in stored_instances(receiver.engine())}
    for original in originals:
        uid = dcmread(original, stop_before_pixels=True).SOPInstanceUID
        assert dataset_bytes(receiver.home / rows[uid]["path"]) == dataset_bytes(original)


def associations(receiver: Caduceus) -> list[tuple[str, bool, int]]:
    with receiver.engine().connect() as conn:
        rows = conn.execute(
            select(ASSOCIATIONS.c.status, ASSOCIATIONS.c.tls, ASSOCIATIONS.c.instances_stored)
        ).all()
    return sorted((r.status, r.tls, r.instances_stored) for r in rows)


def test_storescu_over_tls_arrives_byte_for_byte_beside_the_plain_port(
    launch: Launch, pki: Pki, tmp_path: Path
) -> None:
    receiver = start(launch, pki, CADUCEUS_RECEIVER_WORKERS="2")
    small = write_series(tmp_path / "small", SeriesSpec(count=10, rows=32, columns=32))
    # Larger images: many TLS records per PDU and many PDUs per image.
    large = write_series(tmp_path / "large", SeriesSpec(count=2, rows=512, columns=512))
    plain = write_series(tmp_path / "plain", SeriesSpec(count=5, rows=32, columns=32))
    # Both ports at the same time.
    plain_sender = subprocess.Popen(
        [require("storescu"), "-aec", "CADUCEUS", "127.0.0.1", str(receiver.caduceus.port)]
        + [str(p) for p in plain],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    result = storescu_tls(receiver.tls_port, pki, *small, *large, client=pki.client)
    assert result.returncode == 0, result.stderr
    assert plain_sender.wait(120) == 0
    assert_byte_exact(receiver.caduceus, small + large + plain)
    assert associations(receiver.caduceus) == [("released", False, 5), ("released", True, 12)]
    # Routed like the others: the series is there for the router, with its sender.
    listing = receiver.caduceus.cli("series").stdout
    assert listing.count("STORESCU@127.0.0.1") == 3


def test_own_tls_target_sends_to_own_tls_receiver(launch: Launch, pki: Pki, tmp_path: Path) -> None:
    receiver = start(launch, pki, require_client=True)
    series = write_series(tmp_path / "ct", SeriesSpec(count=6, rows=64, columns=64))
    target = DicomTlsTarget.model_validate(
        {
            "type": "dicomtls",
            "host": "localhost",
            "port": receiver.tls_port,
            "called_aet": "CADUCEUS",
            "tls_key": str(pki.client.key),
            "tls_certificate": str(pki.client.certificate),
            "tls_ca_certificate": str(pki.ca.certificate),
        }
    )
    report = plugin_for(target).send(series, Shipment("tls-own"))
    assert report.complete, report.failed
    assert sorted(report.accepted) == sorted(series)
    assert_byte_exact(receiver.caduceus, series)
    assert associations(receiver.caduceus) == [("released", True, 6)]


def dropped_reasons(receiver: Caduceus, prefix: str = "") -> dict[str, int]:
    """The reasons in the connection.dropped summaries, with their counts (only those that
    start with prefix: the test's start probes the plain port once)."""
    reasons: dict[str, int] = {}
    with receiver.engine().connect() as conn:
        for (details,) in conn.execute(
            select(EVENTS.c.details).where(EVENTS.c.kind == "connection.dropped")
        ):
            for why, count in details["reasons"].items():
                if why.startswith(prefix):
                    reasons[why] = reasons.get(why, 0) + count
    return reasons


def assert_no_traceback(receiver: Caduceus) -> None:
    assert "Traceback" not in receiver.log(), receiver.log()


def test_a_client_certificate_is_required_when_a_ca_is_set(
    launch: Launch, pki: Pki, small_series: list[Path]
) -> None:
    receiver = start(launch, pki, require_client=True, CADUCEUS_RECEIVER_SUMMARY_INTERVAL="1")
    stranger = storescu_tls(receiver.tls_port, pki, *small_series[:2], client=pki.other_client)
    assert stranger.returncode != 0
    anonymous = storescu_tls(receiver.tls_port, pki, *small_series[:2])
    assert anonymous.returncode != 0
    assert stored_instances(receiver.caduceus.engine()) == []
    trusted = storescu_tls(receiver.tls_port, pki, *small_series[:3], client=pki.client)
    assert trusted.returncode == 0, trusted.stderr
    assert len(stored_instances(receiver.caduceus.engine())) == 3

    assert wait_until(lambda: len(dropped_reasons(receiver.caduceus, "TLS")) >= 2, timeout=20)
    reasons = dropped_reasons(receiver.caduceus, "TLS")
    assert reasons == {
        "TLS handshake failed: client certificate not trusted": 1,
        "TLS handshake failed: no client certificate": 1,
    }
    log = receiver.caduceus.log()
    assert "TLS connection from 127.0.0.1 refused: TLS handshake failed: client certificate" in log
    assert "refused: TLS handshake failed: no client certificate" in log
    assert_no_traceback(receiver.caduceus)


def tls11_handshake(port: int) -> ssl.SSLError | None:
    """A real OpenSSL client offering TLS 1.1 only; the error it got, None if it connected."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1_1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.set_ciphers("ALL:@SECLEVEL=0")  # so that our side, not this client, says no
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        try:
            with context.wrap_socket(raw):
                return None
        except ssl.SSLError as exc:
            return exc


def test_old_tls_plain_dicom_and_garbage_are_refused_in_a_line(
    launch: Launch, pki: Pki, small_series: list[Path]
) -> None:
    receiver = start(launch, pki, CADUCEUS_RECEIVER_SUMMARY_INTERVAL="1")
    error = tls11_handshake(receiver.tls_port)
    assert error is not None

    # Plain DICOM to the TLS port: refused; storescu says so and nothing is stored.
    address = ["127.0.0.1", str(receiver.tls_port)]
    plain = run([require("storescu"), "-aec", "CADUCEUS", *address, str(small_series[0])])
    assert plain.returncode != 0

    with socket.create_connection(("127.0.0.1", receiver.tls_port), timeout=10) as garbage:
        garbage.sendall(b"\x16\x03\x01\x00\x05hello" + bytes(range(256)) * 4)
        assert garbage.recv(4096) is not None  # an alert or the close; then EOF
    assert stored_instances(receiver.caduceus.engine()) == []

    # And the TLS port still serves a real sender.
    good = storescu_tls(receiver.tls_port, pki, small_series[0], client=pki.client)
    assert good.returncode == 0, good.stderr
    assert wait_until(lambda: len(dropped_reasons(receiver.caduceus, "TLS")) >= 3, timeout=20)
    reasons = dropped_reasons(receiver.caduceus, "TLS")
    assert reasons["TLS handshake failed: TLS version too old (1.2 at least)"] == 1
    assert reasons["TLS handshake failed: not TLS (plain DICOM sent to the TLS port?)"] == 1
    assert reasons["TLS handshake failed: malformed TLS handshake"] == 1  # the garbage
    assert sum(reasons.values()) == 3, reasons
    assert "refused: TLS handshake failed: TLS version too old" in receiver.caduceus.log()
    assert_no_traceback(receiver.caduceus)


def test_a_stalled_handshake_holds_neither_a_thread_nor_the_acceptor(
    launch: Launch, pki: Pki, small_series: list[Path]
) -> None:
    """One worker; peers that connect to the TLS port and stall (before or in the middle of
    their handshake) are closed at the ARTIM deadline, and a real sender is served meanwhile."""
    receiver = start(
        launch,
        pki,
        CADUCEUS_RECEIVER_ASSOCIATION_REQUEST_TIMEOUT="3",
        CADUCEUS_RECEIVER_SUMMARY_INTERVAL="1",
    )
    idle = [socket.create_connection(("127.0.0.1", receiver.tls_port)) for _ in range(3)]
    half = socket.create_connection(("127.0.0.1", receiver.tls_port))
    half.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # a ClientHello's beginning
    opened = time.monotonic()
    try:
        good = storescu_tls(receiver.tls_port, pki, *small_series[:3], client=pki.client)
        assert good.returncode == 0, good.stderr
        # Served while the stalled ones still wait: none of them is closed yet (ARTIM is 3 s).
        for sock in [*idle, half]:
            sock.setblocking(False)
            with pytest.raises(BlockingIOError):
                sock.recv(1)
            sock.setblocking(True)
        for sock in [*idle, half]:
            sock.settimeout(15)
            assert sock.recv(1) == b""  # closed by the receiver (ARTIM), nothing sent
        assert time.monotonic() - opened >= 2.5
    finally:
        for sock in [*idle, half]:
            sock.close()
    assert len(stored_instances(receiver.caduceus.engine())) == 3
    assert wait_until(
        lambda: (
            dropped_reasons(receiver.caduceus).get("association request not complete in time", 0)
            == 4
        ),
        timeout=20,
    )
    assert_no_traceback(receiver.caduceus)


def tls_connection(port: int, pki: Pki) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=str(pki.ca.certificate))
    context.load_cert_chain(pki.client.certificate, pki.client.key)
    raw = socket.create_connection(("127.0.0.1", port), timeout=15)
    return context.wrap_socket(raw, server_hostname="localhost")


def read_pdu(sock: ssl.SSLSocket) -> bytes:
    data = b""
    while len(data) < 6 or len(data) < 6 + int.from_bytes(data[2:6], "big"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_silence_and_protocol_errors_over_tls_end_the_association_in_a_line(
    launch: Launch, pki: Pki
) -> None:
    receiver = start(launch, pki, CADUCEUS_RECEIVER_NETWORK_TIMEOUT="2")
    echo = p_data(1, c_echo_command(), command=True, last=True)
    # One echo, then silence: closed after the network timeout, the row says why.
    with tls_connection(receiver.tls_port, pki) as sock:
        sock.sendall(associate_request(sop_class=VERIFICATION))
        assert read_pdu(sock)[0] == 0x02  # A-ASSOCIATE-AC
        sock.sendall(echo)
        assert read_pdu(sock)[0] == 0x04  # the C-ECHO-RSP
        started = time.monotonic()
        assert read_pdu(sock) == b""  # closed by the receiver
        assert 1.5 < time.monotonic() - started < 10
    # A PDU type that does not exist: A-ABORT, reason 1 (unrecognised PDU).
    with tls_connection(receiver.tls_port, pki) as sock:
        sock.sendall(associate_request(sop_class=VERIFICATION))
        assert read_pdu(sock)[0] == 0x02
        sock.sendall(echo + b"\x09\x00\x00\x00\x00\x04abcd")
        assert read_pdu(sock)[0] == 0x04
        assert read_pdu(sock)[:10] == bytes([7, 0, 0, 0, 0, 4, 0, 0, 2, 1])
    assert wait_until(lambda: len(associations(receiver.caduceus)) == 2, timeout=20)
    with receiver.caduceus.engine().connect() as conn:
        rows = conn.execute(select(ASSOCIATIONS.c.tls, ASSOCIATIONS.c.reason)).all()
    assert all(row.tls for row in rows)
    reasons = sorted(str(row.reason) for row in rows)
    assert reasons[0] == "network timeout: the peer sent nothing", reasons
    assert reasons[1].startswith("protocol error: unrecognised PDU type 0x09"), reasons
    assert_no_traceback(receiver.caduceus)


def test_unreadable_tls_key_stops_the_receiver_at_start_in_a_line(
    tmp_path: Path, sqlite_url: str, pki: Pki
) -> None:
    caduceus = Caduceus(
        tmp_path / "home",
        sqlite_url,
        free_port(),
        extra_env={
            "CADUCEUS_RECEIVER_TLS_PORT": str(free_port()),
            "CADUCEUS_RECEIVER_TLS_CERTIFICATE": str(pki.server.certificate),
            "CADUCEUS_RECEIVER_TLS_KEY": str(tmp_path / "missing-key.pem"),
        },
    )
    result = caduceus.cli("receiver", check=False, timeout=60)
    assert result.returncode == 2
    output = result.stdout + result.stderr
    assert "cannot load the TLS certificate" in output and "missing-key.pem" in output
    assert "Traceback" not in output
