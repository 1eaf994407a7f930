"""mercure's targets imported field by field: every type, every field, mercure's meaning.

The target entries are written as mercure 0.4 writes them (app/common/types.py in
mercure-imaging/mercure, MIT-licensed: the Target subclasses and their fields).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from caduceus.core.config import files
from caduceus.core.config.mercure_targets import target_from_mercure
from caduceus.core.config.models import Config
from caduceus.core.dicom.synthetic import SeriesSpec, write_series
from caduceus.dispatcher.targets import Shipment, plugin_for
from tests.support.mercure_config import MERCURE
from tests.support.storescp import StoreSCP, start_storescp

COMMON = {"contact": "", "comment": "", "direction": "push"}
# One target of every mercure type, with every field of its model.
EVERY_TARGET: dict[str, dict[str, Any]] = {
    "pacs": {
        **COMMON,
        "target_type": "dicom",
        "ip": "10.0.0.5",
        "port": "11112",
        "aet_target": "PACS",
        "aet_source": "MERCURE",
        "pass_sender_aet": True,
        "pass_receiver_aet": False,
        "contact": "pacs-admin@example.org",
        "comment": "main PACS",
    },
    "back": {"ip": "sender", "port": "", "aet_target": "MODALITY", "aet_source": "MERCURE"},
    "tls": {
        **COMMON,
        "target_type": "dicomtls",
        "ip": "10.0.0.6",
        "port": "2762",
        "aet_target": "SECURE",
        "aet_source": "MERCURE",
        "tls_key": "/etc/k.pem",
        "tls_cert": "/etc/c.pem",
        "ca_cert": "/etc/ca.pem",
    },
    "web": {
        **COMMON,
        "target_type": "dicomweb",
        "url": "https://pacs.example/",
        "qido_url_prefix": "qido",
        "wado_url_prefix": "wado",
        "stow_url_prefix": "stow",
        "access_token": None,
        "http_user": "u",
        "http_password": "p",
    },
    "local-web": {
        **COMMON,
        "target_type": "dicomweb",
        "url": "file:///var/dicomweb",
        "access_token": "t",
    },
    "drop": {**COMMON, **MERCURE["targets"]["drop"]},
    "sync": {
        **COMMON,
        "target_type": "rsync",
        "folder": "/in",
        "user": "u",
        "host": "rsync.example",
        "password": "p",
        "run_on_complete": True,
    },
    "research": {
        **COMMON,
        "target_type": "xnat",
        "project_id": "P1",
        "host": "https://xnat.example",
        "user": "u",
        "password": "p",
    },
    "bucket": {
        **COMMON,
        "target_type": "s3",
        "region": "eu-central-1",
        "bucket": "results",
        "prefix": "in/",
        "access_key_id": "AKIA",
        "secret_access_key": "s",
    },
    "share": {
        **COMMON,
        "target_type": "folder",
        "folder": "/mnt/share",
        "file_filter": "*.txt, *.json",
    },
    "nothing": {**COMMON, "target_type": "dummy"},
}


def imported(targets: dict[str, Any]) -> tuple[Config, str]:
    loaded = files.parse({**MERCURE, "targets": targets, "rules": {}})
    return loaded.config, "\n".join(loaded.not_mapped)


def test_every_field_of_every_target_type_is_mapped_or_reported() -> None:
    config, report = imported(EVERY_TARGET)
    assert set(config.targets) == set(EVERY_TARGET)
    got = {
        name: t.model_dump(mode="json", context={"reveal_secrets": True})
        for name, t in config.targets.items()
    }
    pacs = got["pacs"]
    assert (pacs["type"], pacs["host"], pacs["port"], pacs["called_aet"]) == (
        "dicom",
        "10.0.0.5",
        11112,
        "PACS",
    )
    assert (pacs["calling_aet"], pacs["pass_sender_aet"], pacs["pass_receiver_aet"]) == (
        "MERCURE",
        True,
        False,
    )
    assert pacs["comment"] == "main PACS (contact: pacs-admin@example.org)"
    # No target_type: DICOM. ip "sender": back to the sender; no port: mercure's 104.
    back = got["back"]
    assert (back["type"], back["send_to_sender"], back["host"], back["port"]) == (
        "dicom",
        True,
        "",
        104,
    )
    tls = got["tls"]
    assert (tls["tls_key"], tls["tls_certificate"], tls["tls_ca_certificate"]) == (
        "/etc/k.pem",
        "/etc/c.pem",
        "/etc/ca.pem",
    )
    assert "changed meaning: targets -> tls: the target's certificate must also name" in report
    web = got["web"]
    assert (web["url"], web["username"], web["password"], web["token"]) == (
        "https://pacs.example/",
        "u",
        "p",
        "",
    )
    assert (web["qido_url_prefix"], web["wado_url_prefix"], web["stow_url_prefix"]) == (
        "qido",
        "wado",
        "stow",
    )
    assert got["local-web"]["url"] == "file:///var/dicomweb" and got["local-web"]["token"] == ""
    assert "not needed here: targets -> local-web -> access_token:" in report
    for name in ("drop", "sync"):
        ssh = got[name]
        assert (ssh["user"], ssh["password"], ssh["folder"], ssh["port"]) == ("u", "p", "/in", 22)
        assert ssh["accept_unknown_host_key"] is True
        assert f"changed meaning: targets -> {name}: security check off" in report
    assert got["sync"]["run_on_complete"] is True
    assert "StrictHostKeyChecking=accept-new" in report
    research = got["research"]
    assert (research["url"], research["project_id"], research["user"], research["password"]) == (
        "https://xnat.example",
        "P1",
        "u",
        "p",
    )
    bucket = got["bucket"]
    assert (bucket["region"], bucket["bucket"], bucket["prefix"]) == (
        "eu-central-1",
        "results",
        "in/",
    )
    assert (bucket["access_key_id"], bucket["secret_access_key"]) == ("AKIA", "s")
    assert got["share"]["path"] == "/mnt/share"
    assert got["share"]["exclude"] == ["*.txt", "*.json"] and got["share"]["file_filter"] == ""
    assert got["nothing"]["type"] == "dummy"
    # Nothing of what was mapped is reported as "not imported".
    targets_report = [line for line in report.splitlines() if line.startswith("targets")]
    assert not [line for line in targets_report if "not imported" in line]


def test_an_imported_folder_file_filter_excludes_as_in_mercure(tmp_path: Path) -> None:
    """mercure's file_filter names files NOT to copy: a series of .dcm files arrives whole
    (before, it became a pattern to include, every file was skipped and the send was done)."""
    out = tmp_path / "share"
    out.mkdir()
    config, _ = imported(
        {"share": {"target_type": "folder", "folder": str(out), "file_filter": "*.txt,*.json"}}
    )
    series = write_series(tmp_path / "ct", SeriesSpec(count=3, rows=8, columns=8))
    report = plugin_for(config.targets["share"]).send(series, Shipment("task-1"))
    assert report.accepted == series
    assert sorted(p.name for p in (out / "task-1").glob("*.dcm")) == [p.name for p in series]


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[StoreSCP]:
    scp = start_storescp(tmp_path / "received", "+xa")
    yield scp
    scp.stop()


def test_an_imported_sender_target_sends_back_to_the_sender(
    storescp: StoreSCP, tmp_path: Path
) -> None:
    config, _ = imported(
        {"back": {"ip": "sender", "port": str(storescp.port), "aet_target": "STORESCP"}}
    )
    series = write_series(tmp_path / "ct", SeriesSpec(count=2, rows=8, columns=8))
    # The receiver records the sender's address with the task; the dispatcher passes it on.
    shipment = Shipment("task-2", sender_address="127.0.0.1", sender_aet="MODALITY")
    report = plugin_for(config.targets["back"]).send(series, shipment)
    assert report.accepted == series
    assert len(storescp.files()) == 2


def test_a_target_that_cannot_be_imported_leaves_the_rest_of_the_file() -> None:
    config, report = imported(
        {
            "bad-web": {"target_type": "dicomweb", "url": "file://server/share"},
            "keyless": {"target_type": "sftp", "folder": "/in", "user": "u", "host": "h"},
            "future": {"target_type": "carrier-pigeon"},
            "pacs": EVERY_TARGET["pacs"],
        }
    )
    assert set(config.targets) == {"pacs"}
    assert "not supported: targets -> bad-web: url: " in report
    assert "file:///path/to/folder; target not imported" in report
    assert "not supported: targets -> keyless: no password" in report
    assert "not supported: targets -> future: target type 'carrier-pigeon' is unknown" in report


def test_reported_once_in_plain_groups() -> None:
    target, findings = target_from_mercure(
        "pull",
        {
            "target_type": "dicom",
            "ip": "h",
            "port": "104",
            "aet_target": "A",
            "direction": "pull",
            "extra": 1,
        },
    )
    assert target is not None
    assert [(f.where, f.group) for f in findings] == [
        ("targets -> pull -> aet_source", "changed meaning"),
        ("targets -> pull -> direction", "not supported"),
        ("targets -> pull -> extra", "not supported"),
    ]
