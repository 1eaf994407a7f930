"""DICOMweb target: STOW-RS, batches of instances POSTed to <url>/studies as multipart/related.

Each part is the file as stored, File Meta Information included, so the server gets exactly what
was received, compressed or not; nothing is decoded here. The body is streamed from the files
with its length known in advance, so a batch costs a read buffer in memory, not its size. A file
counts as delivered only when the server names its SOP Instance UID in the response's
ReferencedSOPSequence: servers store what they can and answer 202 or even 400 for the rest.
"""

from __future__ import annotations

import logging
import secrets
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from pydicom.filereader import read_file_meta_info

from caduceus.core.config.models import DicomWebTarget
from caduceus.dispatcher.targets.base import (
    SendReport,
    Shipment,
    TargetError,
    https_verification,
)

log = logging.getLogger("caduceus.dispatcher")

# A batch also ends at this many bytes, so that the server (which often buffers a whole request)
# is not handed a gigabyte because batch_size was set for small images.
MAX_REQUEST_BYTES = 64 * 1024 * 1024
READ_CHUNK = 1024 * 1024
DICOM_JSON = "application/dicom+json"

REFERENCED_SOP_SEQUENCE = "00081199"
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_INSTANCE_UID = "00081155"
FAILURE_REASON = "00081197"

# PS3.18 / PS3.4 failure reasons a STOW-RS server may give, for a message a person understands.
FAILURE_REASONS = {
    0x0110: "processing failure",
    0x0111: "duplicate instance",
    0x0122: "SOP class not supported",
    0x0124: "not authorized",
    0xA700: "out of resources",
    0xA900: "data set does not match SOP class",
    0xC000: "cannot understand",
    0xC122: "transfer syntax not supported",
}


class _Abort(Exception):
    """The target cannot take anything now (unreachable, credentials refused): stop sending."""


class StowSender:
    def __init__(self, settings: DicomWebTarget):
        self.settings = settings
        self.base = settings.url.rstrip("/")
        try:
            url = httpx.URL(self.base)
        except httpx.InvalidURL as exc:
            raise TargetError(f"invalid URL: {exc}") from exc
        # Where we send, for messages: the netloc leaves out user information, a secret.
        self.origin = f"{url.scheme}://{url.netloc.decode('ascii')}"
        self.where = self.origin + url.path.rstrip("/")
        # A query in the base URL (an API key some gateways want) stays the query of every
        # request, after the resource's path, not glued onto it. A service's prefix goes
        # between the URL and the resource, as in dicomweb-client (mercure's *_url_prefix).
        self.studies = _resource(url, settings.stow_url_prefix)
        self.query_studies = _resource(url, settings.qido_url_prefix)

    def _client(self) -> httpx.Client:
        s = self.settings
        verify = https_verification(s.verify_tls, s.tls_ca_certificate, _reason)
        headers = {"Accept": DICOM_JSON}
        auth: httpx.Auth | None = None
        token = s.token.get_secret_value()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        elif s.username:
            auth = httpx.BasicAuth(s.username, s.password.get_secret_value())
        return httpx.Client(
            auth=auth, headers=headers, verify=verify, timeout=s.timeout_seconds, trust_env=False
        )

    def _unreachable(self, exc: Exception) -> str:
        if isinstance(exc, httpx.TimeoutException):
            return f"no answer from {self.origin} within {self.settings.timeout_seconds:g}s"
        if isinstance(exc, httpx.ConnectError):
            return f"cannot connect to {self.origin}: {_reason(exc)}"
        if isinstance(exc, httpx.LocalProtocolError):
            # Its text can quote a header, and a header can hold the credentials.
            return f"request to {self.where} could not be formed (check the credentials)"
        return f"request to {self.where} failed: {_reason(exc)}"

    def _refused(self, response: httpx.Response) -> str | None:
        """Why the server turned the credentials down, or None when it did not."""
        if response.status_code not in (401, 403):
            return None
        s = self.settings
        configured = s.token.get_secret_value() or s.username
        hint = "check the credentials" if configured else "the server wants credentials"
        return f"authentication failed (HTTP {response.status_code}): {hint}"

    def test(self) -> str:
        # QIDO for one study: cheap, needs the same credentials, and only DICOMweb answers it.
        with self._client() as client:
            try:
                response = client.get(self.query_studies, params={"limit": "1"})
            except httpx.HTTPError as exc:
                raise TargetError(self._unreachable(exc)) from exc
        refused = self._refused(response)
        if refused:
            raise TargetError(refused)
        code = response.status_code
        if code == 404:
            raise TargetError(f"no DICOMweb service at {self.where} (HTTP 404)")
        if code == 200 and not isinstance(_json(response), list):
            kind = response.headers.get("content-type", "no content type")
            raise TargetError(f"{self.where} answers, but not as DICOMweb (HTTP 200, {kind})")
        if code not in (200, 204):
            raise TargetError(f"{self.where} answered HTTP {code} {response.reason_phrase}")
        return f"DICOMweb at {self.where} answers (HTTP {code})"

    def send(self, files: list[Path], shipment: Shipment) -> SendReport:
        report = SendReport()
        uids: dict[Path, str] = {}
        sizes: dict[Path, int] = {}
        for path in files:
            try:
                # The File Meta group names the instance; the dataset itself is not parsed.
                uids[path] = str(read_file_meta_info(path).MediaStorageSOPInstanceUID)
                sizes[path] = path.stat().st_size
            except Exception as exc:
                report.failed[path] = f"unreadable file: {exc}"
        batches = _batches([p for p in files if p in uids], sizes, self.settings.batch_size)
        with self._client() as client:
            for index, batch in enumerate(batches):
                if shipment.interrupted():
                    report.interrupted = True
                    break
                try:
                    self._post(client, batch, uids, sizes, report)
                except _Abort as exc:
                    # Later batches would meet the same wall, each after a timeout maybe.
                    for rest in batches[index:]:
                        for path in rest:
                            report.failed[path] = str(exc)
                    log.warning("task %s: %s", shipment.task_id, exc)
                    break
        return report

    def _post(
        self,
        client: httpx.Client,
        batch: list[Path],
        uids: dict[Path, str],
        sizes: dict[Path, int],
        report: SendReport,
    ) -> None:
        boundary = f"caduceus-{secrets.token_hex(16)}"
        heads = [
            f"--{boundary}\r\nContent-Type: application/dicom\r\n"
            f"Content-Length: {sizes[p]}\r\n\r\n".encode()
            for p in batch
        ]
        tail = f"--{boundary}--\r\n".encode()
        length = sum(len(h) + sizes[p] + 2 for h, p in zip(heads, batch, strict=True)) + len(tail)
        content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
        try:
            response = client.post(
                self.studies,
                content=_body(batch, heads, sizes, tail),
                headers={"Content-Type": content_type, "Content-Length": str(length)},
            )
        except httpx.HTTPError as exc:
            raise _Abort(self._unreachable(exc)) from exc
        except OSError as exc:  # a file went missing or changed while being sent
            for path in batch:
                report.failed[path] = f"cannot read while sending: {_reason(exc)}"
            return
        refused = self._refused(response)
        if refused:
            raise _Abort(refused)
        code = response.status_code
        outcome = _outcome(response)
        if outcome is None:
            # A STOW-RS server names what it stored; a bare 200 may come from anything that
            # answers a POST (a proxy, a login page), so it proves no delivery.
            why = f"HTTP {code} {response.reason_phrase}".strip()
            if code == 200:
                why = "HTTP 200 without a STOW-RS answer naming the stored instances"
            for path in batch:
                report.failed[path] = why
            return
        referenced, failed = outcome
        for path in batch:
            uid = uids[path]
            if uid in referenced:
                report.accepted.append(path)
            elif uid in failed:
                report.failed[path] = f"refused (HTTP {code}): {failed[uid]}"
            else:
                report.failed[path] = f"not confirmed by the server (HTTP {code})"


def _resource(url: httpx.URL, prefix: str) -> str:
    """<url>/<prefix>/studies, keeping the URL's query."""
    path = "/".join(part for part in (url.path.strip("/"), prefix.strip("/"), "studies") if part)
    return str(url.copy_with(path="/" + path))


def _batches(files: list[Path], sizes: dict[Path, int], batch_size: int) -> list[list[Path]]:
    """Consecutive runs of at most batch_size files and (unless one file alone) the byte cap."""
    batches: list[list[Path]] = []
    current: list[Path] = []
    total = 0
    for path in files:
        if current and (len(current) >= batch_size or total + sizes[path] > MAX_REQUEST_BYTES):
            batches.append(current)
            current, total = [], 0
        current.append(path)
        total += sizes[path]
    if current:
        batches.append(current)
    return batches


def _body(
    batch: list[Path], heads: list[bytes], sizes: dict[Path, int], tail: bytes
) -> Iterator[bytes]:
    for path, head in zip(batch, heads, strict=True):
        yield head
        remaining = sizes[path]
        with path.open("rb") as handle:
            while remaining:
                chunk = handle.read(min(READ_CHUNK, remaining))
                if not chunk:
                    # The declared length can no longer be kept: end the request broken.
                    raise OSError(f"{path.name} shrank while being sent")
                remaining -= len(chunk)
                yield chunk
        yield b"\r\n"
    yield tail


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _outcome(response: httpx.Response) -> tuple[set[str], dict[str, str]] | None:
    """The SOP Instance UIDs the server stored and those it refused (with why), if it said."""
    body = _json(response)
    if isinstance(body, list) and len(body) == 1:  # some servers wrap the data set in an array
        body = body[0]
    if not isinstance(body, dict) or not (
        REFERENCED_SOP_SEQUENCE in body or FAILED_SOP_SEQUENCE in body
    ):
        return None
    referenced = {
        _first(item, REFERENCED_SOP_INSTANCE_UID) for item in _items(body, REFERENCED_SOP_SEQUENCE)
    }
    failed: dict[str, str] = {}
    for item in _items(body, FAILED_SOP_SEQUENCE):
        code = _first(item, FAILURE_REASON)
        try:
            number = int(code)
        except ValueError:
            failed[_first(item, REFERENCED_SOP_INSTANCE_UID)] = "failure reason unknown"
            continue
        meaning = FAILURE_REASONS.get(number, "")
        text = f"failure reason 0x{number:04X}" + (f" ({meaning})" if meaning else "")
        failed[_first(item, REFERENCED_SOP_INSTANCE_UID)] = text
    return referenced - {""}, failed


def _items(body: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    element = body.get(tag)
    values = element.get("Value", []) if isinstance(element, dict) else []
    return [item for item in values if isinstance(item, dict)]


def _first(item: dict[str, Any], tag: str) -> str:
    element = item.get(tag)
    values = element.get("Value", []) if isinstance(element, dict) else []
    return str(values[0]) if values else ""


def _reason(exc: BaseException) -> str:
    """The operating system's words for a failure (\"connection refused\"), else the exception's."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return f"TLS certificate not trusted ({seen.verify_message})"
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror[0].lower() + seen.strerror[1:]
        seen = seen.__cause__ or seen.__context__
    return str(exc) or type(exc).__name__
