"""A real Orthanc server for tests: started on free ports with its own storage, then removed."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.processes import free_port, require, wait_for_port


@dataclass
class Orthanc:
    http_port: int
    dicom_port: int
    process: subprocess.Popen[bytes]
    aet: str = "ORTHANC"

    def request(self, method: str, path: str, body: bytes | None = None) -> Any:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}{path}", data=body, method=method
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            raw = response.read()
        return json.loads(raw) if raw else None

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()


def start_orthanc(workdir: Path, modalities: dict[str, list[Any]] | None = None) -> Orthanc:
    binary = require("Orthanc")
    workdir.mkdir(parents=True, exist_ok=True)
    http_port, dicom_port = free_port(), free_port()
    config = {
        "Name": "caduceus-test",
        "StorageDirectory": str(workdir / "storage"),
        "IndexDirectory": str(workdir / "index"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": "ORTHANC",
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowStore": True,
        "DicomModalities": modalities or {},
        "Plugins": [],
    }
    path = workdir / "orthanc.json"
    path.write_text(json.dumps(config))
    log = open(workdir / "orthanc.log", "ab")  # noqa: SIM115 - the child owns it
    process = subprocess.Popen([binary, str(path)], stdout=log, stderr=subprocess.STDOUT)
    wait_for_port(http_port, process=process)
    wait_for_port(dicom_port, process=process)
    return Orthanc(http_port, dicom_port, process)
