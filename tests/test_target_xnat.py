"""The XNAT target against a stand-in server (tests/support/xnat_standin.py).

No XNAT can run here (it is a Java web application with its own database), so these tests run
against a small HTTP server that implements the documented endpoints the target uses, as XNAT
answers them: the project resource, and the image session import service.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread

from caduceus.core.config.models import XnatTarget
from caduceus.core.dicom.synthetic import SeriesSpec, write_series
from caduceus.dispatcher.targets import Shipment, TargetError, plugin_for
from caduceus.dispatcher.targets.xnat import XnatUploader
from tests.support.processes import free_port
from tests.support.xnat_standin import XnatStandIn, start_xnat_standin

PASSWORD = "xnat-Secret-99"


@pytest.fixture
def xnat() -> Iterator[XnatStandIn]:
    server = start_xnat_standin("alice", PASSWORD, {"PROJ1"})
    yield server
    server.stop()


def target(xnat: XnatStandIn, **changes: object) -> XnatTarget:
    values: dict[str, object] = {
        "type": "xnat",
        "url": xnat.url,
        "project_id": "PROJ1",
        "user": "alice",
        "password": PASSWORD,
    }
    values.update(changes)
    return XnatTarget.model_validate(values)


def test_xnat_imports_the_series_as_one_session_byte_for_byte(
    xnat: XnatStandIn, tmp_path: Path
) -> None:
    files = write_series(tmp_path / "task", SeriesSpec(count=4))
    report = plugin_for(target(xnat)).send(files, Shipment("task-1"))
    assert report.accepted == files and report.failed == {}
    patient = str(dcmread(files[0]).PatientID)
    key = ("PROJ1", patient, f"{patient}_2026-01-01")  # mercure's labels
    assert list(xnat.sessions) == [key]
    assert xnat.sessions[key] == {f.name: f.read_bytes() for f in files}
    [query] = xnat.imports
    assert query["overwrite"] == "delete" and query["rename"] == "true"


def test_xnat_sending_again_replaces_the_session_instead_of_doubling_it(
    xnat: XnatStandIn, tmp_path: Path
) -> None:
    files = write_series(tmp_path / "task", SeriesSpec(count=3))
    uploader = XnatUploader(target(xnat))
    uploader.send(files[:2], Shipment("task-2"))
    assert uploader.send(files, Shipment("task-2")).accepted == files
    [session] = xnat.sessions.values()
    assert sorted(session) == sorted(f.name for f in files)


def test_xnat_server_error_fails_the_attempt_and_the_retry_delivers(
    xnat: XnatStandIn, tmp_path: Path
) -> None:
    files = write_series(tmp_path / "task", SeriesSpec(count=2))
    xnat.fail_imports = 1
    uploader = XnatUploader(target(xnat))
    with pytest.raises(TargetError, match=r"did not import the session \(HTTP 500\)"):
        uploader.send(files, Shipment("task-3"))
    assert xnat.sessions == {}
    assert uploader.send(files, Shipment("task-3")).accepted == files
    assert len(xnat.sessions) == 1


def test_xnat_wrong_password_is_refused_without_showing_it(
    xnat: XnatStandIn, tmp_path: Path
) -> None:
    wrong = XnatUploader(target(xnat, password="not-" + PASSWORD))
    files = write_series(tmp_path / "task", SeriesSpec(count=1))
    for attempt in (wrong.test, lambda: wrong.send(files, Shipment("task-4"))):
        with pytest.raises(TargetError, match=r"refused user alice \(HTTP 401\)") as failure:
            attempt()
        assert PASSWORD not in str(failure.value)
    assert xnat.sessions == {}


def test_xnat_test_checks_login_and_project(xnat: XnatStandIn) -> None:
    assert "project PROJ1 exists" in XnatUploader(target(xnat)).test()
    with pytest.raises(TargetError, match="has no project OTHER"):
        XnatUploader(target(xnat, project_id="OTHER")).test()


def test_xnat_interrupted_uploads_nothing(xnat: XnatStandIn, tmp_path: Path) -> None:
    files = write_series(tmp_path / "task", SeriesSpec(count=3))
    report = XnatUploader(target(xnat)).send(files, Shipment("task-5", interrupted=lambda: True))
    assert report.interrupted and report.accepted == []
    assert xnat.imports == []


def test_xnat_labels_from_a_hostile_patient_id_are_made_safe(
    xnat: XnatStandIn, tmp_path: Path
) -> None:
    files = write_series(tmp_path / "task", SeriesSpec(count=1, patient_id="../x y&z"))
    assert XnatUploader(target(xnat)).send(files, Shipment("task-6")).accepted == files
    assert list(xnat.sessions) == [("PROJ1", "___x_y_z", "___x_y_z_2026-01-01")]


def test_xnat_instances_without_a_patient_id_fail_clearly(
    xnat: XnatStandIn, tmp_path: Path
) -> None:
    files = write_series(tmp_path / "task", SeriesSpec(count=1, patient_id=""))
    with pytest.raises(TargetError, match="no PatientID"):
        XnatUploader(target(xnat)).send(files, Shipment("task-7"))
    assert xnat.imports == []


def test_xnat_unreachable_is_named(tmp_path: Path) -> None:
    settings = XnatTarget(
        url=f"http://127.0.0.1:{free_port()}",
        project_id="P",
        user="u",
        password=PASSWORD,  # type: ignore[arg-type]
    )
    with pytest.raises(TargetError, match=r"cannot reach http://127\.0\.0\.1:\d+"):
        XnatUploader(settings).test()
