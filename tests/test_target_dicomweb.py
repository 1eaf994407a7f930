"""The DICOMweb (STOW-RS) target against a real Orthanc with its DICOMweb plug-in, and against a
small HTTP server of our own where Orthanc cannot be made to answer the way a test needs."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import SecretStr
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import UID

from caduceus.core.config.models import DicomWebTarget
from caduceus.core.dicom.synthetic import SeriesSpec, write_series
from caduceus.dispatcher.targets import Shipment, TargetError, dicomweb, plugin_for
from tests.support.interrupt import after
from tests.support.orthanc import Orthanc, start_orthanc
from tests.support.processes import free_port, run

PASSWORD = "Tr0ub4dor&3-not-in-any-message"
COMPRESSED = ("JPEG2000.dcm", "MR_small_RLE.dcm", "SC_rgb_rle.dcm")


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    server = start_orthanc(tmp_path / "orthanc", dicomweb=True, users={"alice": PASSWORD})
    yield server
    server.stop()


def stow(orthanc: Orthanc, **settings: Any) -> dicomweb.StowSender:
    settings.setdefault("username", "alice")
    settings.setdefault("password", PASSWORD)
    settings.setdefault("url", orthanc.dicomweb_url)
    target = plugin_for(DicomWebTarget(**settings))
    assert isinstance(target, dicomweb.StowSender)
    return target


def uid(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def stored(orthanc: Orthanc) -> dict[str, str]:
    """SOP Instance UID -> Orthanc's instance ID, for everything Orthanc holds."""
    return {
        i["MainDicomTags"]["SOPInstanceUID"]: i["ID"]
        for i in orthanc.request("GET", "/instances?expand")
    }


def test_instances_arrive_byte_for_byte_in_several_requests(
    orthanc: Orthanc, tmp_path: Path
) -> None:
    series = write_series(tmp_path / "ct", SeriesSpec(count=10, rows=64, columns=64))
    compressed = [Path(str(get_testdata_file(name))) for name in COMPRESSED]
    files = series + compressed
    target = stow(orthanc, batch_size=4)  # 13 files: four requests
    assert "answers (HTTP 200)" in target.test()
    report = target.send(files, Shipment("task-1"))
    assert report.complete and sorted(report.accepted) == sorted(files)
    held = stored(orthanc)
    assert sorted(held) == sorted(uid(p) for p in files)
    for original in files:
        # Orthanc keeps what STOW-RS gave it as is: the whole Part 10 file comes back.
        got = orthanc.raw("GET", f"/instances/{held[uid(original)]}/file")
        assert got == original.read_bytes()
    for original in compressed:
        back = dcmread(BytesIO(orthanc.raw("GET", f"/instances/{held[uid(original)]}/file")))
        assert back.file_meta.TransferSyntaxUID == dcmread(original).file_meta.TransferSyntaxUID


def test_url_prefixes_put_the_services_under_their_own_paths(
    orthanc: Orthanc, tmp_path: Path
) -> None:
    """mercure's stow_url_prefix/qido_url_prefix (dicomweb-client's): <url>/<prefix>/studies.
    Orthanc's DICOMweb lives under /dicom-web, here given as the prefixes of its root URL."""
    root = orthanc.dicomweb_url.removesuffix("/dicom-web")
    prefixed = stow(orthanc, url=root, stow_url_prefix="dicom-web", qido_url_prefix="/dicom-web/")
    assert "answers (HTTP 200)" in prefixed.test()
    series = write_series(tmp_path / "ct", SeriesSpec(count=2))
    assert prefixed.send(series, Shipment("task-8")).accepted == series
    assert sorted(stored(orthanc)) == sorted(uid(p) for p in series)
    with pytest.raises(TargetError, match=r"answered HTTP 400"):
        stow(orthanc, url=root).test()  # without the prefix: Orthanc's REST API, not DICOMweb


def test_an_interrupted_send_stops_between_requests(orthanc: Orthanc, tmp_path: Path) -> None:
    series = write_series(tmp_path / "ct", SeriesSpec(count=6, rows=16, columns=16))
    report = stow(orthanc, batch_size=2).send(series, Shipment("task-7", interrupted=after(1)))
    assert report.interrupted and report.failed == {}
    assert sorted(report.accepted) == sorted(series[:2])
    assert sorted(stored(orthanc)) == sorted(uid(p) for p in series[:2])


def test_basic_auth_delivers_and_a_wrong_password_fails_without_showing_it(
    orthanc: Orthanc, tmp_path: Path
) -> None:
    series = write_series(tmp_path / "ct", SeriesSpec(count=5, rows=16, columns=16))
    wrong = stow(orthanc, password=PASSWORD[::-1], batch_size=2)
    report = wrong.send(series, Shipment("task-2"))
    assert report.accepted == [] and sorted(report.failed) == sorted(series)
    for reason in report.failed.values():
        assert "authentication failed (HTTP 401)" in reason
        assert PASSWORD not in reason and PASSWORD[::-1] not in reason
    with pytest.raises(TargetError, match="authentication failed") as raised:
        wrong.test()
    assert PASSWORD[::-1] not in str(raised.value)
    anonymous = stow(orthanc, username="", password="")
    with pytest.raises(TargetError, match=r"authentication failed .* wants credentials"):
        anonymous.test()
    assert stored(orthanc) == {}

    report = stow(orthanc, batch_size=2).send(series, Shipment("task-2"))
    assert report.complete and sorted(report.accepted) == sorted(series)
    assert sorted(stored(orthanc)) == sorted(uid(p) for p in series)


def test_a_dead_url_fails_clearly_and_nothing_is_accepted(tmp_path: Path) -> None:
    series = write_series(tmp_path / "ct", SeriesSpec(count=3, rows=8, columns=8))
    port = free_port()  # nothing listens there
    target = plugin_for(
        DicomWebTarget(
            url=f"http://127.0.0.1:{port}/dicom-web", batch_size=1, token=SecretStr(PASSWORD)
        )
    )
    report = target.send(series, Shipment("task-3"))
    assert report.accepted == [] and sorted(report.failed) == sorted(series)
    expected = f"cannot connect to http://127.0.0.1:{port}: connection refused"
    assert set(report.failed.values()) == {expected}
    with pytest.raises(TargetError) as raised:
        target.test()
    assert str(raised.value) == expected


def test_an_instance_orthanc_cannot_understand_fails_alone(
    orthanc: Orthanc, tmp_path: Path
) -> None:
    """Orthanc answers 400 for a batch holding an instance without Study Instance UID, yet stores
    the rest and says so in the ReferencedSOPSequence: those are delivered, only it failed."""
    good = write_series(tmp_path / "ct", SeriesSpec(count=3, rows=8, columns=8))
    ds = dcmread(good[0])
    del ds.StudyInstanceUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = UID(
        "1.2.826.0.1.3680043.9.9999.1"
    )
    bad = tmp_path / "no-study.dcm"
    ds.save_as(bad)
    report = stow(orthanc).send([good[1], bad, good[2]], Shipment("task-4"))
    assert sorted(report.accepted) == sorted([good[1], good[2]])
    assert report.failed == {bad: "refused (HTTP 400): failure reason 0xC000 (cannot understand)"}
    assert sorted(stored(orthanc)) == sorted(uid(p) for p in (good[1], good[2]))


def test_an_instance_left_out_of_the_answer_is_not_delivered(tmp_path: Path) -> None:
    """Orthanc 1.10 with DICOMweb 1.7, its storage full (one patient at most, and that one
    protected), drops the new patient's instance from both sequences and still answers 200:
    only what the ReferencedSOPSequence names counts as delivered."""
    orthanc = start_orthanc(
        tmp_path / "orthanc", dicomweb=True, settings={"MaximumPatientCount": 1}
    )
    try:
        first = write_series(tmp_path / "a", SeriesSpec(count=3, rows=8, columns=8, patient_id="A"))
        other = write_series(tmp_path / "b", SeriesSpec(count=1, rows=8, columns=8, patient_id="B"))
        target = plugin_for(DicomWebTarget(url=orthanc.dicomweb_url))
        assert target.send(first[:1], Shipment("task-5")).complete
        [patient] = orthanc.request("GET", "/patients")
        orthanc.raw("PUT", f"/patients/{patient}/protected", b"1")
        report = target.send(first[1:] + other, Shipment("task-5"))
        assert sorted(report.accepted) == sorted(first[1:])
        assert report.failed == {other[0]: "not confirmed by the server (HTTP 200)"}
        assert sorted(stored(orthanc)) == sorted(uid(p) for p in first)
    finally:
        orthanc.stop()


class FussyStow(BaseHTTPRequestHandler):
    """A STOW-RS server that wants a bearer token, refuses the instances it is told to, and keeps
    every request it got for the test to look at."""

    token = ""
    refuse: set[str] = set()
    requests: list[tuple[dict[str, str], list[bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Authorization") != f"Bearer {self.token}":
            self.send_response(401)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        head = f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode()
        message = BytesParser(policy=HTTP).parsebytes(head + body)
        types = {p.get_content_type() for p in message.iter_parts()}
        parts = [bytes(p.get_payload(decode=True)) for p in message.iter_parts()]
        self.requests.append(({**self.headers, "part types": ",".join(types)}, parts))
        done: dict[str, list[dict[str, Any]]] = {"00081199": [], "00081198": []}
        for part in parts:
            sop = str(dcmread(BytesIO(part), stop_before_pixels=True).SOPInstanceUID)
            item: dict[str, Any] = {"00081155": {"vr": "UI", "Value": [sop]}}
            if sop in self.refuse:
                item["00081197"] = {"vr": "US", "Value": [0xA700]}
            done["00081198" if sop in self.refuse else "00081199"].append(item)
        answer = json.dumps({tag: {"vr": "SQ", "Value": v} for tag, v in done.items()}).encode()
        self.send_response(202 if done["00081198"] else 200)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_a_202_names_the_failed_instances_and_requests_stay_under_the_byte_cap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Orthanc 1.10's DICOMweb plug-in never answers 202 here (see the test above), so a server
    of our own does, the way PS3.18 describes it; it also checks the bearer token and the
    multipart body part by part."""
    series = write_series(tmp_path / "ct", SeriesSpec(count=6, rows=64, columns=64))
    size = series[0].stat().st_size
    monkeypatch.setattr(dicomweb, "MAX_REQUEST_BYTES", 2 * size + 1)  # two files a request
    FussyStow.token, FussyStow.refuse, FussyStow.requests = PASSWORD, {uid(series[4])}, []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FussyStow)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/wado"
        target = plugin_for(DicomWebTarget(url=url, token=SecretStr(PASSWORD), batch_size=100))
        report = target.send(series, Shipment("task-6"))
        wrong = plugin_for(DicomWebTarget(url=url, token=SecretStr("nope"), batch_size=100))
        refused = wrong.send(series[:1], Shipment("task-6"))
    finally:
        server.shutdown()
        thread.join()
    assert sorted(report.accepted) == sorted(series[:4] + series[5:])
    assert report.failed == {
        series[4]: "refused (HTTP 202): failure reason 0xA700 (out of resources)"
    }
    assert refused.failed == {series[0]: "authentication failed (HTTP 401): check the credentials"}
    assert len(FussyStow.requests) == 3
    sent = [part for _headers, parts in FussyStow.requests for part in parts]
    assert sent == [p.read_bytes() for p in series]
    headers = FussyStow.requests[0][0]
    assert headers["Content-Type"].startswith('multipart/related; type="application/dicom"')
    assert headers["Accept"] == "application/dicom+json"
    assert {h["part types"] for h, _parts in FussyStow.requests} == {"application/dicom"}


def test_targets_test_command_names_the_failure_without_the_password(
    orthanc: Orthanc, tmp_path: Path
) -> None:
    def target(password: str) -> dict[str, Any]:
        return {
            "type": "dicomweb",
            "url": orthanc.dicomweb_url,
            "username": "alice",
            "password": password,
        }

    config = {"targets": {"pacs": target(PASSWORD), "wrong": target(PASSWORD[::-1])}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    env = {"CADUCEUS_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"}
    caduceus = [sys.executable, "-m", "caduceus"]
    assert run([*caduceus, "config", "import", str(tmp_path / "c.yaml")], env=env).returncode == 0
    ok = run([*caduceus, "targets", "test", "pacs"], env=env)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert f"DICOMweb at {orthanc.dicomweb_url} answers (HTTP 200)" in ok.stdout
    failed = run([*caduceus, "targets", "test", "wrong"], env=env)
    assert failed.returncode == 1
    assert "wrong: failed: authentication failed (HTTP 401)" in failed.stdout
    listed = run([*caduceus, "targets", "list"], env=env)
    for result in (ok, failed, listed):
        output = result.stdout + result.stderr
        assert PASSWORD not in output and PASSWORD[::-1] not in output


class AnswersAnyPost(BaseHTTPRequestHandler):
    """Not a DICOMweb server: a proxy or a login page that answers every POST with 200."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        page = b"<html>Welcome</html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(page)))
        self.end_headers()
        self.wfile.write(page)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_a_bare_200_is_not_taken_as_delivery(tmp_path: Path) -> None:
    series = write_series(tmp_path / "ct", SeriesSpec(count=3, rows=32, columns=32))
    server = ThreadingHTTPServer(("127.0.0.1", 0), AnswersAnyPost)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/dicom-web"
        report = plugin_for(DicomWebTarget(url=url)).send(series, Shipment("t"))
    finally:
        server.shutdown()
    assert report.accepted == []
    assert set(report.failed.values()) == {
        "HTTP 200 without a STOW-RS answer naming the stored instances"
    }


def test_a_token_that_could_break_a_header_is_refused_by_the_configuration() -> None:
    with pytest.raises(ValueError, match="printable ASCII") as caught:
        DicomWebTarget(url="http://x/dicom-web", token=SecretStr("abc\nInjected: yes"))
    assert "Injected" not in str(caught.value)


def test_a_query_in_the_url_stays_the_query_of_every_request(
    orthanc: Orthanc, tmp_path: Path
) -> None:
    """Some gateways want an API key in the query (`.../dicom-web?apikey=...`): the resource's
    path goes before it, not after (before the fix the request went to `...?apikey=k/studies`)."""
    files = write_series(tmp_path / "ct", SeriesSpec(count=3, rows=8, columns=8))
    target = stow(orthanc, url=orthanc.dicomweb_url + "?apikey=k")
    assert target.studies.endswith("/studies?apikey=k")
    assert "answers (HTTP 200)" in target.test()
    report = target.send(files, Shipment("task-q"))
    assert report.complete and sorted(report.accepted) == sorted(files)
    assert sorted(stored(orthanc)) == sorted(uid(p) for p in files)
