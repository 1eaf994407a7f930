"""S3 target: each file becomes the object `<prefix><task_id>/<file name>`, then a marker.

The empty marker object `<prefix><task_id>/.complete` is written once every file of the task is
stored (a retry sends only the missing files and writes it then), so a consumer can wait for it
instead of guessing when an upload is whole. Works with AWS and with S3-compatible stores
(`endpoint_url`); without static credentials boto3's default chain (environment, ~/.aws,
instance role) applies.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ProxyConnectionError,
    ReadTimeoutError,
)

from caduceus.core.config.models import S3Target
from caduceus.dispatcher.targets.base import SendReport, Shipment, TargetError

MARKER = ".complete"
WORKERS = 4  # small objects: a few requests in flight hide the round trips
SKIPPED = "not tried: the send was interrupted"
# Errors that every other upload of the same attempt would meet too.
_BUCKET_WIDE = {
    "403",
    "404",
    "AccessDenied",
    "AllAccessDisabled",
    "AuthorizationHeaderMalformed",
    "InvalidAccessKeyId",
    "InvalidBucketName",
    "NoSuchBucket",
    "PermanentRedirect",
    "SignatureDoesNotMatch",
}


def _code(exc: Exception) -> str:
    return (
        str(exc.response.get("Error", {}).get("Code", "")) if isinstance(exc, ClientError) else ""
    )


class S3Uploader:
    def __init__(self, settings: S3Target):
        self.settings = settings
        self.where = settings.endpoint_url or f"AWS S3 ({settings.region})"

    def _client(self) -> Any:
        s = self.settings
        options: dict[str, Any] = {
            "connect_timeout": 10,
            "read_timeout": 120,
            "retries": {"mode": "standard", "max_attempts": 3},
            "max_pool_connections": WORKERS,
        }
        if s.endpoint_url:
            # boto3 1.36 began sending checksum headers that many S3-compatible stores refuse;
            # there, send them only where an operation requires one.
            options["request_checksum_calculation"] = "when_required"
            options["response_checksum_validation"] = "when_required"
        credentials: dict[str, str] = {}
        if s.access_key_id:
            credentials = {
                "aws_access_key_id": s.access_key_id,
                "aws_secret_access_key": s.secret_access_key.get_secret_value(),
            }
        try:
            return boto3.client(
                "s3",
                region_name=s.region or None,
                endpoint_url=s.endpoint_url or None,
                config=Config(**options),
                **credentials,
            )
        except (BotoCoreError, ValueError) as exc:
            raise TargetError(f"cannot set up the S3 client: {self._explain(exc)}") from exc

    def _explain(self, exc: Exception) -> str:
        """What went wrong, in words an administrator can act on, without the secret key."""
        s = self.settings
        code = _code(exc)
        if isinstance(exc, ClientError):
            message = str(exc.response.get("Error", {}).get("Message", ""))
            if code in ("404", "NoSuchBucket"):
                text = f"bucket {s.bucket} does not exist"
            elif code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                # HEAD answers carry no body: a bare 403 is all S3 says there.
                detail = "wrong credentials or no permission" if code == "403" else code
                text = f"access to bucket {s.bucket} denied ({detail})"
            else:
                text = f"{code}: {message}" if message else code
        elif isinstance(exc, NoCredentialsError):
            text = (
                "no S3 credentials: set access_key_id and secret_access_key, "
                "or provide them the AWS way (environment, ~/.aws, instance role)"
            )
        elif isinstance(exc, EndpointConnectionError | ConnectTimeoutError | ProxyConnectionError):
            text = f"cannot reach the S3 endpoint {self.where}"
        elif isinstance(exc, ReadTimeoutError):
            text = f"the S3 endpoint {self.where} stopped answering"
        else:
            text = str(exc) or type(exc).__name__
        secret = s.secret_access_key.get_secret_value()
        return text.replace(secret, "***") if secret else text

    def test(self) -> str:
        client = self._client()
        try:
            client.head_bucket(Bucket=self.settings.bucket)
        except (ClientError, BotoCoreError) as exc:
            raise TargetError(self._explain(exc)) from exc
        return f"bucket {self.settings.bucket} answers at {self.where}"

    def send(self, files: list[Path], shipment: Shipment) -> SendReport:
        client = self._client()
        bucket = self.settings.bucket
        base = f"{self.settings.prefix}{shipment.task_id}/"
        # A missing bucket, wrong credentials or a dead endpoint: the first upload to meet one
        # stops the others, instead of each retrying its way to the same error.
        stop: list[str] = []

        def upload(path: Path) -> str | None:
            """None when the object is stored, else why not (SKIPPED: not tried)."""
            if stop:
                return stop[0]
            if shipment.interrupted():
                return SKIPPED
            try:
                with open(path, "rb") as body:
                    client.put_object(Bucket=bucket, Key=base + path.name, Body=body)
            except (ClientError, BotoCoreError) as exc:
                reason = self._explain(exc)
                if isinstance(exc, BotoCoreError) or _code(exc) in _BUCKET_WIDE:
                    stop.append(reason)
                return reason
            except OSError as exc:
                return f"cannot read: {exc.strerror or exc}"
            return None

        report = SendReport()
        with ThreadPoolExecutor(WORKERS) as pool:
            for path, reason in zip(files, pool.map(upload, files), strict=True):
                if reason is None:
                    report.accepted.append(path)
                elif reason == SKIPPED:
                    report.interrupted = True
                else:
                    report.failed[path] = reason
        if stop and not report.accepted:
            raise TargetError(stop[0])
        if not report.failed and not report.interrupted:
            try:
                client.put_object(Bucket=bucket, Key=base + MARKER, Body=b"")
            except (ClientError, BotoCoreError) as exc:
                raise TargetError(
                    f"files stored, but not the marker {base}{MARKER}: {self._explain(exc)}"
                ) from exc
        return report
