"""End to end through `caduceus run`, with real peers on both sides.

DCMTK's storescu sends; caduceus receives, routes and dispatches; DCMTK's storescp and Orthanc
(over DICOMweb) receive. Nothing in between is simulated.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydicom import dcmread

from tests.support.dicomfiles import dataset_bytes
from tests.support.orthanc import start_orthanc
from tests.support.processes import Caduceus, free_port
from tests.support.rows import events, tasks
from tests.support.sending import send
from tests.support.storescp import start_storescp
from tests.support.waiting import wait_until


def start_run(launch: Any, tmp_path: Path, document: dict[str, Any]) -> Caduceus:
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(document))
    return launch("run", "--config", str(tmp_path / "config.yaml"))


def uid(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def test_ct_to_storescp_and_mr_to_orthanc_over_dicomweb(launch: Any, tmp_path: Path) -> None:
    storescp = start_storescp(tmp_path / "storescp", "+xa")
    orthanc = start_orthanc(tmp_path / "orthanc", dicomweb=True, users={"router": "s3cret-pw"})
    try:
        instance = start_run(
            launch,
            tmp_path,
            {
                "settings": {"series_complete_trigger": 1},
                "targets": {
                    "scp": storescp.target(),
                    "web": {
                        "type": "dicomweb",
                        "url": orthanc.dicomweb_url,
                        "username": "router",
                        "password": "s3cret-pw",
                        "batch_size": 4,
                    },
                },
                "rules": {
                    "ct": {"rule": "@Modality@ == 'CT'", "targets": ["scp"]},
                    "mr": {"rule": "@Modality@ == 'MR'", "targets": ["web"]},
                },
            },
        )
        ct = send(instance, tmp_path / "ct", count=12, modality="CT")
        mr = send(instance, tmp_path / "mr", count=9, modality="MR", rows=48, columns=48)

        assert wait_until(lambda: len(storescp.files()) >= len(ct))
        assert wait_until(lambda: len(orthanc.request("GET", "/instances")) >= len(mr))
        assert wait_until(lambda: [t["state"] for t in tasks(instance)] == ["done", "done"])

        at_scp = {uid(p): p for p in storescp.files()}
        assert sorted(at_scp) == sorted(uid(p) for p in ct)
        for original in ct:
            assert dataset_bytes(at_scp[uid(original)]) == dataset_bytes(original)

        held = {
            i["MainDicomTags"]["SOPInstanceUID"]: i["ID"]
            for i in orthanc.request("GET", "/instances?expand")
        }
        assert sorted(held) == sorted(uid(p) for p in mr), "only the MR series goes to Orthanc"
        incoming = tmp_path / "back.dcm"
        for original in mr:
            incoming.write_bytes(orthanc.raw("GET", f"/instances/{held[uid(original)]}/file"))
            assert dataset_bytes(incoming) == dataset_bytes(original)
        assert "s3cret-pw" not in instance.log()
    finally:
        storescp.stop()
        orthanc.stop()


def test_a_target_that_is_down_gets_the_series_once_it_is_back(launch: Any, tmp_path: Path) -> None:
    port = free_port()  # nothing listens here yet: the target is down
    instance = start_run(
        launch,
        tmp_path,
        {
            "settings": {"series_complete_trigger": 1, "retry_delay": 1, "retry_max": 20},
            "targets": {
                "scp": {"type": "dicom", "host": "127.0.0.1", "port": port, "called_aet": "X"}
            },
            "rules": {"ct": {"rule": "True", "targets": ["scp"]}},
        },
    )
    files = send(instance, tmp_path / "ct", count=6, modality="CT")
    assert wait_until(lambda: len(events(instance, "dispatch.retry")) >= 2)
    [task] = tasks(instance)
    assert task["state"] == "dispatching"
    retries = events(instance, "dispatch.retry")
    assert "connection refused" in retries[0]["message"].lower()

    storescp = start_storescp(tmp_path / "storescp", "+xa", port=port)
    try:
        assert wait_until(lambda: tasks(instance)[0]["state"] == "done")
        at_scp = {uid(p): p for p in storescp.files()}
        assert sorted(at_scp) == sorted(uid(p) for p in files)
        for original in files:
            assert dataset_bytes(at_scp[uid(original)]) == dataset_bytes(original)
        [done] = events(instance, "dispatch.done")
        assert done["details"]["attempt"] >= 3
    finally:
        storescp.stop()
