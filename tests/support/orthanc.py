"""A real Orthanc server for tests: started on free ports with its own storage, then removed."""

from __future__ import annotations

import base64
import json
import subprocess
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.processes import free_port, require
from tests.support.waiting import wait_for_port

# Where Debian's orthanc-dicomweb package puts the plug-in (the first) and its versioned library.
DICOMWEB_PLUGINS = (
    Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so"),
    *sorted(Path("/usr/lib/orthanc").glob("libOrthancDicomWeb.so*")),
)


@dataclass
class Orthanc:
    http_port: int
    dicom_port: int
    process: subprocess.Popen[bytes]
    aet: str = "ORTHANC"
    # The REST API's credentials when the server was started with users.
    auth: tuple[str, str] | None = None

    @property
    def dicomweb_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/dicom-web"

    def raw(self, method: str, path: str, body: bytes | None = None) -> bytes:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}{path}", data=body, method=method
        )
        if self.auth is not None:
            pair = base64.b64encode(":".join(self.auth).encode()).decode()
            request.add_header("Authorization", f"Basic {pair}")
        with urllib.request.urlopen(request, timeout=60) as response:
            return bytes(response.read())

    def request(self, method: str, path: str, body: bytes | None = None) -> Any:
        raw = self.raw(method, path, body)
        return json.loads(raw) if raw else None

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()


def require_dicomweb_plugin() -> Path:
    """The DICOMweb plug-in's library, or skip the test without it."""
    for path in DICOMWEB_PLUGINS:
        if path.is_file():
            return path
    pytest.skip("Orthanc's DICOMweb plug-in is not installed (Debian: orthanc-dicomweb)")


def start_orthanc(
    workdir: Path,
    modalities: dict[str, list[Any]] | None = None,
    *,
    dicomweb: bool = False,
    users: dict[str, str] | None = None,
    settings: dict[str, Any] | None = None,
) -> Orthanc:
    """Orthanc on free ports; with `dicomweb` it serves DICOMweb at /dicom-web, with `users`
    every HTTP request (REST API included) needs one of them by basic auth; `settings` are
    added to (or override) Orthanc's configuration."""
    binary = require("Orthanc")
    plugins = [str(require_dicomweb_plugin())] if dicomweb else []
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
        "AuthenticationEnabled": bool(users),
        "RegisteredUsers": users or {},
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowStore": True,
        "DicomModalities": modalities or {},
        "Plugins": plugins,
        **(settings or {}),
    }
    path = workdir / "orthanc.json"
    path.write_text(json.dumps(config))
    log = open(workdir / "orthanc.log", "ab")  # noqa: SIM115 - the child owns it
    process = subprocess.Popen([binary, str(path)], stdout=log, stderr=subprocess.STDOUT)
    wait_for_port(http_port, process=process)
    wait_for_port(dicom_port, process=process)
    auth = next(iter(users.items())) if users else None
    return Orthanc(http_port, dicom_port, process, auth=auth)
