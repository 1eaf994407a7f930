"""The DICOM target over TLS, against DCMTK's storescp in TLS mode (OpenSSL on the other side)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom import dcmread

from caduceus.core.config.models import DicomTlsTarget
from caduceus.core.dicom.synthetic import SeriesSpec, write_series
from caduceus.dispatcher.targets import Shipment, TargetError, plugin_for
from tests.support.dicomfiles import dataset_bytes
from tests.support.storescp import StoreSCP, start_storescp
from tests.support.tls import CertificateAuthority, KeyPair

pytestmark = pytest.mark.timeout(120)


@dataclass(frozen=True)
class Pki:
    ca: CertificateAuthority
    server: KeyPair  # localhost / 127.0.0.1, signed by ca
    client: KeyPair  # signed by ca
    other_ca: CertificateAuthority
    other_server: KeyPair  # localhost / 127.0.0.1, signed by other_ca
    other_client: KeyPair  # signed by other_ca
    elsewhere: KeyPair  # signed by ca, but for another host name


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority(folder, "ours")
    other = CertificateAuthority(folder, "theirs")
    return Pki(
        ca=ca,
        server=ca.server(),
        client=ca.client(),
        other_ca=other,
        other_server=other.server("other-server"),
        other_client=other.client("other-client"),
        elsewhere=ca.issue("elsewhere", "pacs.example.org", hosts=("pacs.example.org",)),
    )


def tls_storescp(folder: Path, server: KeyPair, ca: CertificateAuthority, peer: str) -> StoreSCP:
    """storescp speaking TLS only; peer is -ic (ignore), -vc (verify if sent), -rc (require)."""
    options = ["+tls", str(server.key), str(server.certificate), "-pw"]
    return start_storescp(folder, "+xa", *options, "+cf", str(ca.certificate), peer)


@pytest.fixture
def storescp(tmp_path: Path, pki: Pki) -> Iterator[StoreSCP]:
    scp = tls_storescp(tmp_path / "received", pki.server, pki.ca, "-ic")
    yield scp
    scp.stop()


def tls_target(scp: StoreSCP, pki: Pki, **changes: object) -> DicomTlsTarget:
    settings: dict[str, object] = {
        "host": "localhost",
        "port": scp.port,
        "called_aet": scp.aet,
        "tls_key": str(pki.client.key),
        "tls_certificate": str(pki.client.certificate),
        "tls_ca_certificate": str(pki.ca.certificate),
    }
    settings.update(changes)
    return DicomTlsTarget.model_validate({"type": "dicomtls", **settings})


def by_uid(files: list[Path]) -> dict[str, Path]:
    return {dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in files}


def test_series_arrives_over_tls_byte_for_byte(
    storescp: StoreSCP, pki: Pki, tmp_path: Path
) -> None:
    series = write_series(tmp_path / "ct", SeriesSpec(count=10, rows=64, columns=64))
    # Larger images too: many TLS records per PDU and many PDUs per image (storescp: 16 KiB).
    large = write_series(tmp_path / "large", SeriesSpec(count=2, rows=512, columns=512))
    started = time.monotonic()
    report = plugin_for(tls_target(storescp, pki)).send(series + large, Shipment("tls-1"))
    elapsed = time.monotonic() - started
    assert report.complete, report.failed
    assert sorted(report.accepted) == sorted(series + large)
    received = by_uid(storescp.files())
    assert len(received) == len(series + large)
    for original in series + large:
        uid = dcmread(original, stop_before_pixels=True).SOPInstanceUID
        assert dataset_bytes(received[uid]) == dataset_bytes(original)
    print(f"12 instances over TLS in {elapsed:.2f} s")


def test_mutual_tls_target_accepts_our_client_certificate(pki: Pki, tmp_path: Path) -> None:
    scp = tls_storescp(tmp_path / "received", pki.server, pki.ca, "-rc")  # certificate required
    try:
        series = write_series(tmp_path / "ct", SeriesSpec(count=3, rows=16, columns=16))
        report = plugin_for(tls_target(scp, pki)).send(series, Shipment("tls-2"))
        assert report.complete and sorted(report.accepted) == sorted(series)
        assert len(scp.files()) == 3
        # The same storescp refuses a client certificate from a CA it does not trust.
        stranger = tls_target(
            scp,
            pki,
            tls_key=str(pki.other_client.key),
            tls_certificate=str(pki.other_client.certificate),
        )
        refused = plugin_for(stranger).send(series, Shipment("tls-3"))
        assert refused.accepted == [] and set(refused.failed) == set(series)
        assert all("TLS" in reason for reason in refused.failed.values()), refused.failed
        assert len(scp.files()) == 3
    finally:
        scp.stop()


def test_target_certificate_from_another_ca_is_refused(pki: Pki, tmp_path: Path) -> None:
    scp = tls_storescp(tmp_path / "received", pki.other_server, pki.other_ca, "-ic")
    try:
        series = write_series(tmp_path / "ct", SeriesSpec(count=2, rows=16, columns=16))
        target = plugin_for(tls_target(scp, pki))
        report = target.send(series, Shipment("tls-4"))
        assert report.accepted == [] and set(report.failed) == set(series)
        for reason in report.failed.values():
            assert f"TLS handshake with localhost:{scp.port} failed" in reason
            assert "certificate verify failed" in reason
        with pytest.raises(TargetError, match="certificate verify failed"):
            target.test()
        assert scp.files() == []
    finally:
        scp.stop()


def test_host_name_is_checked_unless_turned_off(pki: Pki, tmp_path: Path) -> None:
    scp = tls_storescp(tmp_path / "received", pki.elsewhere, pki.ca, "-ic")
    try:
        with pytest.raises(TargetError, match="certificate verify failed: Hostname mismatch"):
            plugin_for(tls_target(scp, pki)).test()
        assert "ok" in plugin_for(tls_target(scp, pki, verify_hostname=False)).test()
    finally:
        scp.stop()


def test_tls_target_on_a_plain_dicom_port_fails_quickly(pki: Pki, tmp_path: Path) -> None:
    scp = start_storescp(tmp_path / "received")  # no TLS
    try:
        series = write_series(tmp_path / "ct", SeriesSpec(count=2, rows=16, columns=16))
        started = time.monotonic()
        report = plugin_for(tls_target(scp, pki)).send(series, Shipment("tls-5"))
        assert time.monotonic() - started < 20
        assert report.accepted == [] and set(report.failed) == set(series)
        for reason in report.failed.values():
            assert "TLS handshake" in reason and "does the target speak TLS" in reason
        assert scp.files() == []
    finally:
        scp.stop()


def test_echo_over_tls(storescp: StoreSCP, pki: Pki) -> None:
    result = plugin_for(tls_target(storescp, pki)).test()
    assert result == f"C-ECHO over TLS to STORESCP@localhost:{storescp.port} ok"


def test_unreadable_key_files_are_named_not_shown(pki: Pki, tmp_path: Path) -> None:
    missing = tmp_path / "missing-key.pem"
    target = DicomTlsTarget(
        host="127.0.0.1",
        port=11112,
        called_aet="ANY",
        tls_key=str(missing),
        tls_certificate=str(pki.client.certificate),
        tls_ca_certificate=str(pki.ca.certificate),
    )
    with pytest.raises(TargetError, match=f"TLS private key {missing}: No such file"):
        plugin_for(target).test()
    secret = tmp_path / "not-a-key.pem"
    secret.write_text("hunter2\n")
    garbled = target.model_copy(update={"tls_key": str(secret)})
    series = write_series(tmp_path / "ct", SeriesSpec(count=1, rows=8, columns=8))
    report = plugin_for(garbled).send(series, Shipment("tls-6"))
    (reason,) = report.failed.values()
    assert str(secret) in reason and "hunter2" not in reason
    mismatched = target.model_copy(update={"tls_key": str(pki.other_client.key)})
    with pytest.raises(TargetError, match="do not match"):
        plugin_for(mismatched).test()
