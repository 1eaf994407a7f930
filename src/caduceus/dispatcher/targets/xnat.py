"""XNAT target: each task uploaded as one zip through XNAT's image session import service.

As mercure does: POST <url>/data/services/import?PROJECT_ID=..&SUBJECT_ID=..&EXPT_LABEL=..
&rename=true&overwrite=delete&inbody=true with the zip as the body (Content-Type
application/zip), logged in with HTTP basic authentication. The subject is the instances'
PatientID and the session (experiment) label <PatientID>_<StudyDate as YYYY-MM-DD>, from the
first instance. XNAT labels allow letters, digits, "_" and "-" only: any other character of a
PatientID becomes "_" (mercure passes it on and XNAT refuses the upload).

XNAT imports the zip whole or answers an error, so a task is delivered all at once or not at
all: a retried or resumed task is uploaded whole again, and `overwrite=delete` replaces what an
earlier upload of it left. The zip is written to a temporary file (as large as the task's
files) and streamed from there, so memory does not grow with the task.
"""

from __future__ import annotations

import re
import tempfile
import zipfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import httpx
from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from caduceus.core.config.models import XnatTarget
from caduceus.dispatcher.targets.base import (
    SendReport,
    Shipment,
    TargetError,
    https_verification,
)

IMPORT = "/data/services/import"
_NOT_IN_LABEL = re.compile(r"[^A-Za-z0-9_\-]")


class XnatUploader:
    def __init__(self, settings: XnatTarget):
        self.settings = settings
        url = httpx.URL(settings.url.rstrip("/"))
        # Where we send, for messages: the netloc leaves out user information, a secret.
        self.where = f"{url.scheme}://{url.netloc.decode('ascii')}{url.path}"
        self.base = url

    def _client(self) -> httpx.Client:
        s = self.settings
        verify = https_verification(s.verify_tls, s.tls_ca_certificate)
        return httpx.Client(
            auth=httpx.BasicAuth(s.user, s.password.get_secret_value()),
            verify=verify,
            timeout=s.timeout_seconds,
            trust_env=False,
        )

    def _url(self, path: str) -> str:
        return str(self.base.copy_with(path=self.base.path.rstrip("/") + path))

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        with self._client() as client:
            try:
                response = client.request(method, self._url(path), **kwargs)
            except httpx.TimeoutException as exc:
                raise TargetError(f"no answer from {self.where} in time") from exc
            except httpx.HTTPError as exc:
                raise TargetError(f"cannot reach {self.where}: {type(exc).__name__}") from exc
        if response.status_code in (401, 403):
            raise TargetError(
                f"XNAT at {self.where} refused user {self.settings.user} "
                f"(HTTP {response.status_code}): check the credentials and the project's access"
            )
        return response

    def test(self) -> str:
        project = self.settings.project_id
        response = self._request("GET", f"/data/projects/{project}", params={"format": "json"})
        if response.status_code == 404:
            raise TargetError(f"XNAT at {self.where} has no project {project}")
        if response.status_code != 200:
            raise TargetError(f"XNAT at {self.where} answered HTTP {response.status_code}")
        return f"logged in as {self.settings.user} on {self.where}; project {project} exists"

    def send(self, files: list[Path], shipment: Shipment) -> SendReport:
        if not files:
            return SendReport()
        subject, session = _labels(files[0])
        with tempfile.TemporaryFile(prefix="caduceus-xnat-") as body:
            with zipfile.ZipFile(body, "w", zipfile.ZIP_STORED) as archive:
                for path in files:
                    if shipment.interrupted():
                        return SendReport(interrupted=True)
                    try:
                        archive.write(path, path.name)
                    except OSError as exc:
                        # Imported whole or not at all: one unreadable file fails the task.
                        report = SendReport()
                        report.failed[path] = f"cannot read: {exc.strerror or exc}"
                        return report
            size = body.tell()
            body.seek(0)
            response = self._request(
                "POST",
                IMPORT,
                params={
                    "PROJECT_ID": self.settings.project_id,
                    "SUBJECT_ID": subject,
                    "EXPT_LABEL": session,
                    "rename": "true",
                    "overwrite": "delete",
                    "inbody": "true",
                },
                headers={"Content-Type": "application/zip", "Content-Length": str(size)},
                content=_chunks(body),
            )
        if response.status_code != 200:
            said = " ".join(response.text.split())[:200]
            raise TargetError(
                f"XNAT at {self.where} did not import the session (HTTP "
                f"{response.status_code})" + (f": {said}" if said else "")
            )
        return SendReport(accepted=list(files))


def _chunks(body: IO[bytes]) -> Iterator[bytes]:
    while chunk := body.read(1024 * 1024):
        yield chunk


def _labels(path: Path) -> tuple[str, str]:
    """XNAT's subject and session labels for the task, from its first instance."""
    try:
        dataset = dcmread(path, stop_before_pixels=True, specific_tags=["PatientID", "StudyDate"])
    except (OSError, InvalidDicomError) as exc:
        raise TargetError(f"cannot read {path.name}: {exc}") from exc
    subject = _NOT_IN_LABEL.sub("_", str(dataset.get("PatientID", "")).strip())
    if not subject:
        raise TargetError("the instances have no PatientID, which names the XNAT subject")
    try:
        day = datetime.strptime(str(dataset.get("StudyDate", "")), "%Y%m%d")
    except ValueError as exc:
        raise TargetError(
            "the instances have no valid StudyDate, which names the XNAT session "
            "(<PatientID>_<YYYY-MM-DD>)"
        ) from exc
    return subject, f"{subject}_{day:%Y-%m-%d}"
