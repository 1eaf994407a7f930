"""The DICOM target when associations drop mid-send, and with several associations at once.

The issue's trap was pynetdicom's sender losing its association under load (a DIMSE race in
pynetdicom 3.0.4). Our DICOM target no longer sends with pynetdicom (it uses the lean SCU in
core/net), so that race cannot happen in it; what the dispatcher must survive is the drop itself,
whoever causes it. The peer here is a real pynetdicom storage SCP that aborts an association in
the middle of a series, before confirming the instance it just received.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread

from caduceus.core.config.models import DicomTarget
from caduceus.core.dicom.synthetic import SeriesSpec, write_series
from caduceus.dispatcher.targets import Shipment, plugin_for
from tests.support.flaky_scp import FlakySCP, start_flaky_scp


@pytest.fixture
def flaky() -> Iterator[FlakySCP]:
    scp = start_flaky_scp()
    yield scp
    scp.stop()


def uids_of(files: list[Path]) -> list[str]:
    return [str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files]


def target(port: int, associations: int = 1) -> DicomTarget:
    return DicomTarget(host="127.0.0.1", port=port, called_aet="FLAKY", associations=associations)


def test_a_dropped_association_resumes_with_only_the_unconfirmed_instances(
    flaky: FlakySCP, tmp_path: Path
) -> None:
    files = write_series(tmp_path / "ct", SeriesSpec(count=20, rows=32, columns=32))
    uids = uids_of(files)
    flaky.abort_at = {1: 7}
    report = plugin_for(target(flaky.port)).send(files, Shipment("t"))
    assert report.complete and sorted(report.accepted) == sorted(files)
    assert flaky.associations == 2
    first = [uid for n, uid in flaky.stores if n == 1]
    second = [uid for n, uid in flaky.stores if n == 2]
    # The first association confirmed six; the seventh arrived but was never confirmed, so it
    # is sent again: an instance may arrive twice, never zero times, and the confirmed ones
    # are not repeated.
    assert first == uids[:7]
    assert second == uids[6:]


def test_an_association_that_keeps_dropping_leaves_the_rest_for_a_retry(
    flaky: FlakySCP, tmp_path: Path
) -> None:
    files = write_series(tmp_path / "ct", SeriesSpec(count=10, rows=32, columns=32))
    flaky.abort_at = {n: 2 for n in range(1, 10)}  # every association dies at its 2nd instance
    report = plugin_for(target(flaky.port)).send(files, Shipment("t"))
    assert not report.complete
    # Four associations (the first and three resumptions), one confirmed instance each.
    assert flaky.associations == 4
    assert sorted(report.accepted) == sorted(files[:4])
    assert set(report.failed) == set(files[4:])
    assert set(report.failed.values()) == {"association lost repeatedly"}


def test_several_associations_share_a_series_and_deliver_all_of_it(
    flaky: FlakySCP, tmp_path: Path
) -> None:
    files = write_series(tmp_path / "ct", SeriesSpec(count=60, rows=32, columns=32))
    flaky.abort_at = {2: 5}  # one of them drops, too
    report = plugin_for(target(flaky.port, associations=3)).send(files, Shipment("t"))
    assert report.complete and sorted(report.accepted) == sorted(files)
    assert flaky.uids() == set(uids_of(files))
    per_association = {n for n, _ in flaky.stores}
    assert len(per_association) == 4  # three in parallel, one resumption


def test_ae_titles_and_address_can_come_from_the_sender(flaky: FlakySCP, tmp_path: Path) -> None:
    """mercure's options: send back to the sender, pass its AE title and the one it called."""
    files = write_series(tmp_path / "ct", SeriesSpec(count=3, rows=32, columns=32))
    plain = plugin_for(target(flaky.port))
    assert plain.send(files, Shipment("t", sender_aet="SCANNER")).complete
    assert flaky.titles == [("CADUCEUS", "FLAKY")]

    echo = DicomTarget(
        port=flaky.port,
        called_aet="FLAKY",
        send_to_sender=True,
        pass_sender_aet=True,
        pass_receiver_aet=True,
    )
    shipment = Shipment(
        "t", sender_aet="SCANNER", sender_address="127.0.0.1", receiver_aet="ROUTER_IN"
    )
    assert plugin_for(echo).send(files, shipment).complete
    assert flaky.titles[-1] == ("SCANNER", "ROUTER_IN")

    unknown = plugin_for(echo).send(files, Shipment("t"))
    assert not unknown.accepted
    assert set(unknown.failed.values()) == {
        "send back to the sender: the task has no sender address"
    }
