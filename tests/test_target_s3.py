"""The S3 target against moto's server mode, a real S3-compatible HTTP server on a free port.

No real cloud is reachable here: moto's server is the S3-compatible peer. It runs with IAM
authentication enforced (INITIAL_NO_AUTH_ACTION_COUNT), so wrong credentials and missing
permissions are refused by it as they would be by S3; the first requests, which create the
users, their keys and the bucket, are the only ones it lets through unchecked.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from caduceus.core.config.models import S3Target
from caduceus.core.dicom.synthetic import SeriesSpec, write_series
from caduceus.dispatcher.targets import Shipment, TargetError, plugin_for
from caduceus.dispatcher.targets.s3 import S3Uploader
from tests.support.interrupt import after
from tests.support.processes import free_port
from tests.support.waiting import wait_for_port

BUCKET = "caduceus-test"
UNCHECKED_SETUP_REQUESTS = 7  # the calls in the moto fixture before it checks authentication


@dataclass
class Moto:
    url: str
    admin: dict[str, str]  # access key with every permission
    lister: dict[str, str]  # access key that may only list the bucket

    def client(self) -> Any:
        return boto3.client("s3", endpoint_url=self.url, region_name="us-east-1", **self.admin)

    def objects(self, prefix: str) -> dict[str, bytes]:
        client = self.client()
        listing = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
        return {
            o["Key"]: client.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read() for o in listing
        }

    def target(self, prefix: str, **changes: object) -> S3Target:
        values: dict[str, object] = {
            "bucket": BUCKET,
            "prefix": prefix,
            "endpoint_url": self.url,
            "access_key_id": self.admin["aws_access_key_id"],
            "secret_access_key": self.admin["aws_secret_access_key"],
        }
        values.update(changes)
        return S3Target.model_validate(values)


def _access_key(iam: Any, user: str, actions: list[str]) -> dict[str, str]:
    iam.create_user(UserName=user)
    key = iam.create_access_key(UserName=user)["AccessKey"]
    policy = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}],
    }
    iam.put_user_policy(UserName=user, PolicyName="test", PolicyDocument=json.dumps(policy))
    return {
        "aws_access_key_id": key["AccessKeyId"],
        "aws_secret_access_key": key["SecretAccessKey"],
    }


@pytest.fixture(scope="module")
def moto() -> Iterator[Moto]:
    server = Path(sys.prefix) / "bin" / "moto_server"
    if not server.exists():
        pytest.skip("moto_server is not installed (pip install 'moto[server]')")
    port = free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(UNCHECKED_SETUP_REQUESTS)}
    process = subprocess.Popen(
        [str(server), "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, process=process)
        url = f"http://127.0.0.1:{port}"
        anyone = {"aws_access_key_id": "setup", "aws_secret_access_key": "setup"}
        iam = boto3.client("iam", endpoint_url=url, region_name="us-east-1", **anyone)
        admin = _access_key(iam, "admin", ["*"])
        # AWS checks HEAD on a bucket as s3:ListBucket; moto calls it s3:HeadBucket.
        lister = _access_key(iam, "lister", ["s3:ListBucket", "s3:HeadBucket"])
        boto3.client("s3", endpoint_url=url, region_name="us-east-1", **anyone).create_bucket(
            Bucket=BUCKET
        )
        peer = Moto(url, admin, lister)
        # From here on moto checks every request: made-up credentials must be refused.
        with pytest.raises(ClientError):
            boto3.client("s3", endpoint_url=url, region_name="us-east-1", **anyone).head_bucket(
                Bucket=BUCKET
            )
        yield peer
    finally:
        process.terminate()
        process.wait(10)


def test_s3_delivers_every_file_as_an_object_and_then_the_marker(
    moto: Moto, tmp_path: Path
) -> None:
    files = write_series(tmp_path / "task", SeriesSpec(count=5, rows=512, columns=512))
    report = plugin_for(moto.target("incoming/")).send(files, Shipment("task-1"))
    assert report.accepted == files
    assert report.failed == {}
    stored = moto.objects("incoming/task-1/")
    assert sorted(stored) == sorted(
        ["incoming/task-1/.complete", *(f"incoming/task-1/{f.name}" for f in files)]
    )
    for path in files:
        assert stored[f"incoming/task-1/{path.name}"] == path.read_bytes()
    assert stored["incoming/task-1/.complete"] == b""


def test_s3_writes_the_marker_only_when_every_file_is_stored(moto: Moto, tmp_path: Path) -> None:
    files = write_series(tmp_path / "task", SeriesSpec(count=4))
    content = files[2].read_bytes()
    files[2].unlink()
    uploader = S3Uploader(moto.target("partial/"))
    report = uploader.send(files, Shipment("task-2"))
    assert report.accepted == [files[0], files[1], files[3]]
    assert list(report.failed) == [files[2]]
    assert "cannot read" in report.failed[files[2]]
    stored = moto.objects("partial/task-2/")
    assert "partial/task-2/.complete" not in stored
    assert len(stored) == 3
    # The retry sends only what is missing; then the task is whole and marked.
    files[2].write_bytes(content)
    assert uploader.send([files[2]], Shipment("task-2")).accepted == [files[2]]
    stored = moto.objects("partial/task-2/")
    assert stored["partial/task-2/.complete"] == b""
    assert stored[f"partial/task-2/{files[2].name}"] == content
    assert len(stored) == 5


def test_s3_interrupted_stores_what_it_reports_and_no_marker(moto: Moto, tmp_path: Path) -> None:
    files = write_series(tmp_path / "task", SeriesSpec(count=8))
    uploader = S3Uploader(moto.target("stopped/"))
    report = uploader.send(files, Shipment("task-9", interrupted=after(3)))
    assert report.interrupted and report.failed == {}
    assert len(report.accepted) == 3
    stored = moto.objects("stopped/task-9/")
    assert sorted(stored) == sorted(f"stopped/task-9/{f.name}" for f in report.accepted)
    # The next dispatcher sends the rest, and only then is the task marked whole.
    rest = [f for f in files if f not in report.accepted]
    assert uploader.send(rest, Shipment("task-9")).accepted == rest
    assert len(moto.objects("stopped/task-9/")) == 9


def test_s3_missing_bucket_is_named(moto: Moto, tmp_path: Path) -> None:
    uploader = S3Uploader(moto.target("x/", bucket="caduceus-no-such-bucket"))
    with pytest.raises(TargetError, match="bucket caduceus-no-such-bucket does not exist"):
        uploader.test()
    with pytest.raises(TargetError, match="bucket caduceus-no-such-bucket does not exist"):
        uploader.send(write_series(tmp_path / "task", SeriesSpec(count=3)), Shipment("task-3"))


def test_s3_wrong_credentials_are_refused_without_showing_the_secret(
    moto: Moto, tmp_path: Path
) -> None:
    secret = "wrong-Secret-Key-0123456789"
    files = write_series(tmp_path / "task", SeriesSpec(count=3))
    for key_id in (moto.admin["aws_access_key_id"], "AKIAUNKNOWNKEY000000"):
        uploader = S3Uploader(
            moto.target("denied/", access_key_id=key_id, secret_access_key=secret)
        )
        with pytest.raises(TargetError, match=f"access to bucket {BUCKET} denied") as tested:
            uploader.test()
        with pytest.raises(TargetError, match=f"access to bucket {BUCKET} denied") as sent:
            uploader.send(files, Shipment("task-4"))
        assert "SignatureDoesNotMatch" in str(sent.value) or "InvalidAccessKeyId" in str(sent.value)
        assert secret not in str(tested.value) + str(sent.value)
    assert moto.objects("denied/") == {}


def test_s3_missing_write_permission_fails_the_upload(moto: Moto, tmp_path: Path) -> None:
    lister = moto.target(
        "readonly/",
        access_key_id=moto.lister["aws_access_key_id"],
        secret_access_key=moto.lister["aws_secret_access_key"],
    )
    uploader = S3Uploader(lister)
    assert uploader.test() == f"bucket {BUCKET} answers at {moto.url}"  # listing is allowed
    denied = re.escape(f"access to bucket {BUCKET} denied (AccessDenied)")
    with pytest.raises(TargetError, match=denied):
        uploader.send(write_series(tmp_path / "task", SeriesSpec(count=3)), Shipment("task-5"))
    assert moto.objects("readonly/") == {}


def test_s3_dead_endpoint_is_reported(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    uploader = S3Uploader(
        S3Target(bucket=BUCKET, endpoint_url=url, access_key_id="a", secret_access_key="b")  # type: ignore[arg-type]
    )
    with pytest.raises(TargetError, match=f"cannot reach the S3 endpoint {url}"):
        uploader.test()
    with pytest.raises(TargetError, match=f"cannot reach the S3 endpoint {url}"):
        uploader.send(write_series(tmp_path / "task", SeriesSpec(count=2)), Shipment("task-6"))
