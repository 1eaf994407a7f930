"""deploy/nomad/caduceus.nomad.hcl: the Nomad job parses, uses only Nomad's keys, and is wired.

No Nomad binary can be installed here (it is in neither Debian's nor PyPI's registries, and
building it needs Go modules from the internet), so `nomad job validate` is not run. The file
is parsed with python-hcl2 (HCL's syntax), every block and attribute is checked against the
keys Nomad's job specification documents for that placement, and the rest checks the wiring
an operator relies on.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import hcl2
import pytest

from caduceus.core.service_names import SERVICES

ROOT = Path(__file__).resolve().parents[1]
JOB_FILE = ROOT / "deploy" / "nomad" / "caduceus.nomad.hcl"
DOCS = ROOT / "docs" / "nomad.md"

# The keys Nomad's job specification documents for each block used here (a subset of Nomad's
# own lists; a block not named here may not appear at all). The docker driver's `config` and
# its `mount` follow the docker driver's page.
KEYS: dict[str, set[str]] = {
    "": {"variable", "locals", "job"},
    "variable": {"type", "default", "description", "sensitive", "validation"},
    "job": {
        "type",
        "datacenters",
        "region",
        "namespace",
        "priority",
        "node_pool",
        "meta",
        "constraint",
        "update",
        "group",
    },
    "update": {
        "max_parallel",
        "min_healthy_time",
        "healthy_deadline",
        "progress_deadline",
        "auto_revert",
        "auto_promote",
        "canary",
        "stagger",
        "health_check",
    },
    "group": {
        "count",
        "network",
        "volume",
        "restart",
        "reschedule",
        "service",
        "task",
        "constraint",
        "affinity",
        "spread",
        "meta",
        "update",
        "ephemeral_disk",
        "shutdown_delay",
    },
    "network": {"mode", "port", "dns", "hostname"},
    "port": {"static", "to", "host_network"},
    "volume": {"type", "source", "read_only", "access_mode", "attachment_mode", "per_alloc"},
    "restart": {"attempts", "interval", "delay", "mode", "render_templates"},
    "service": {"provider", "name", "port", "tags", "check", "address_mode", "meta"},
    "check": {
        "type",
        "name",
        "port",
        "path",
        "method",
        "protocol",
        "interval",
        "timeout",
        "check_restart",
        "header",
        "address_mode",
    },
    "check_restart": {"limit", "grace", "ignore_warnings"},
    "task": {
        "driver",
        "user",
        "kill_timeout",
        "kill_signal",
        "config",
        "volume_mount",
        "env",
        "template",
        "resources",
        "lifecycle",
        "leader",
        "meta",
        "constraint",
        "logs",
        "artifact",
        "service",
    },
    "config": {
        "image",
        "args",
        "command",
        "ports",
        "init",
        "readonly_rootfs",
        "cap_drop",
        "cap_add",
        "security_opt",
        "group_add",
        "mount",
        "labels",
        "network_mode",
    },
    "mount": {
        "type",
        "target",
        "source",
        "readonly",
        "bind_options",
        "tmpfs_options",
        "volume_options",
    },
    "volume_mount": {"volume", "destination", "read_only", "propagation_mode"},
    "template": {
        "data",
        "source",
        "destination",
        "env",
        "change_mode",
        "change_signal",
        "perms",
        "uid",
        "gid",
        "splay",
        "error_on_missing_key",
    },
    "resources": {"cpu", "memory", "memory_max", "cores", "device"},
}
# Blocks whose keys are the user's own names.
FREE_FORM = {"env", "meta", "labels"}
# Labelled blocks: their one level of `{"name": {...}}` is the label, not a key.
LABELLED = {"variable", "job", "group", "task", "port", "volume"}


def load() -> dict[str, Any]:
    options = hcl2.SerializationOptions(
        strip_string_quotes=True,
        explicit_blocks=False,
        preserve_heredocs=False,
        with_comments=False,
    )
    with JOB_FILE.open() as file:
        return hcl2.load(file, serialization_options=options)


def blocks(node: dict[str, Any], name: str) -> dict[str, dict[str, Any]]:
    """The labelled blocks `name "label" {...}` of node, by label."""
    found: dict[str, dict[str, Any]] = {}
    for entry in node.get(name, []):
        for label, body in entry.items():
            assert label not in found, f"{name} {label} appears twice"
            found[label] = body
    return found


def block(node: dict[str, Any], name: str) -> dict[str, Any]:
    """The one unlabelled block `name {...}` of node."""
    entries = node.get(name, [])
    assert len(entries) == 1, f"expected one {name} block, found {len(entries)}"
    body = entries[0]
    assert isinstance(body, dict)
    return body


def unknown_keys(node: dict[str, Any], kind: str, path: str) -> list[str]:
    found = []
    for key, value in node.items():
        where = f"{path}.{key}" if path else key
        if key not in KEYS[kind]:
            found.append(where)
            continue
        if key in FREE_FORM or not isinstance(value, list):
            continue
        for entry in value:
            if not isinstance(entry, dict) or key not in KEYS:
                continue
            bodies = entry.values() if key in LABELLED else [entry]
            for body in bodies:
                if isinstance(body, dict):
                    found += unknown_keys(body, key, where)
    return found


@pytest.fixture(scope="module")
def job_file() -> dict[str, Any]:
    return load()


@pytest.fixture(scope="module")
def groups(job_file: dict[str, Any]) -> dict[str, dict[str, Any]]:
    job = blocks(job_file, "job")["caduceus"]
    return blocks(job, "group")


def task_of(groups: dict[str, dict[str, Any]], name: str) -> dict[str, Any]:
    return blocks(groups[name], "task")[name]


def test_the_job_file_parses_and_uses_only_keys_nomad_knows(job_file: dict[str, Any]) -> None:
    assert unknown_keys(job_file, "", "") == []
    # The checker itself: a misspelt block or attribute is caught.
    assert unknown_keys({"job": [{"x": {"group": [{"g": {"volume_mounts": []}}]}}]}, "", "") == [
        "job.group.volume_mounts"
    ]
    assert unknown_keys({"job": [{"x": {"datacentres": "dc1"}}]}, "", "") == ["job.datacentres"]


def test_every_variable_used_is_declared_and_every_declared_one_is_used(
    job_file: dict[str, Any],
) -> None:
    declared = set(blocks(job_file, "variable"))
    used = set(re.findall(r"\bvar\.([a-z_]+)", JOB_FILE.read_text()))
    assert used == declared
    # The image has no default: `nomad job run` without -var image=... is refused.
    assert "default" not in blocks(job_file, "variable")["image"]


def test_every_service_runs_as_a_group_of_its_own_from_one_image(
    groups: dict[str, dict[str, Any]],
) -> None:
    assert set(groups) == set(SERVICES)
    for name in SERVICES:
        task = task_of(groups, name)
        assert task["driver"] == "docker"
        config = block(task, "config")
        assert config["image"] == "${var.image}"
        assert config["args"] == [name]
        assert config["init"] is True
        # As in the image and the Kubernetes manifests: not root, nothing to escalate to.
        assert task["user"] == "10001:10001"
        assert config["readonly_rootfs"] is True
        assert config["cap_drop"] == ["all"]
        assert config["security_opt"] == ["no-new-privileges"]
        assert {"type": "tmpfs", "target": "/tmp"} in config["mount"]
        restart = block(groups[name], "restart")
        assert restart["mode"] == "delay"  # keeps trying while the database is away


def test_services_share_one_data_root_at_the_same_path_as_on_the_clients(
    groups: dict[str, dict[str, Any]],
) -> None:
    for name in SERVICES:
        volume = blocks(groups[name], "volume")["data"]
        assert volume == {"type": "host", "source": "${var.data_volume}"}
        task = task_of(groups, name)
        assert block(task, "volume_mount") == {"volume": "data", "destination": "${var.data_dir}"}
        assert block(task, "env")["CADUCEUS_HOME"] == "${var.data_dir}"


def test_the_database_url_comes_only_from_a_nomad_variable(
    groups: dict[str, dict[str, Any]],
) -> None:
    for name in SERVICES:
        task = task_of(groups, name)
        assert "CADUCEUS_DATABASE_URL" not in block(task, "env")
        template = block(task, "template")
        assert template["env"] is True
        assert template["destination"].startswith("secrets/")
        data = template["data"].replace('\\"', '"')  # the heredoc, as an escaped string
        assert 'nomadVar "nomad/jobs/caduceus"' in data
        assert "CADUCEUS_DATABASE_URL={{ .database_url }}" in data
        # Without the variable, a URL that cannot be parsed, never the SQLite default that an
        # empty one would mean (each allocation on a database file of its own).
        assert "{{ else }}CADUCEUS_DATABASE_URL=missing:" in data
        assert template["error_on_missing_key"] is True
    text = JOB_FILE.read_text()
    assert not re.search(r"postgresql://[^.\s']*:[^@\s']+@", text), "a password is written"


def test_updates_do_not_roll_back_past_a_migration(job_file: dict[str, Any]) -> None:
    job = blocks(job_file, "job")["caduceus"]
    update = block(job, "update")
    # The old version refuses a schema the new one migrated: an automatic revert would stop
    # every service, so rollback is left to the operator, who restores the backup first.
    assert update["auto_revert"] is False
    assert update["max_parallel"] == 1
    assert "## Upgrading" in DOCS.read_text()


def test_scaled_services_scale_and_single_ones_stay_single(
    groups: dict[str, dict[str, Any]],
) -> None:
    for name in ("receiver", "router", "processor", "dispatcher"):
        assert groups[name]["count"] == f"${{var.{name}s}}"
    for name in ("cleaner", "notifier", "web"):
        assert groups[name]["count"] == 1


def test_the_receiver_and_the_web_are_reachable_and_checked(
    groups: dict[str, dict[str, Any]],
) -> None:
    receiver = groups["receiver"]
    port = blocks(block(receiver, "network"), "port")["dicom"]
    assert port == {"static": 11112, "to": 11112}
    assert block(task_of(groups, "receiver"), "config")["ports"] == ["dicom"]
    service = block(receiver, "service")
    assert service["provider"] == "nomad" and service["port"] == "dicom"
    assert block(service, "check")["type"] == "tcp"

    web = groups["web"]
    assert blocks(block(web, "network"), "port")["http"] == {"to": 8000}
    service = block(web, "service")
    check = block(service, "check")
    # The one page served without a session: a check that needs no credentials.
    assert (check["type"], check["path"]) == ("http", "/login")
    assert "check_restart" in check
    for name in ("router", "processor", "dispatcher", "cleaner", "notifier"):
        assert "network" not in groups[name], f"{name} listens on nothing"


def test_only_the_processor_reaches_the_container_engine(
    groups: dict[str, dict[str, Any]],
) -> None:
    processor = task_of(groups, "processor")
    config = block(processor, "config")
    assert {
        "type": "bind",
        "source": "${var.engine_socket}",
        "target": "/run/caduceus/engine.sock",
    } in config["mount"]
    assert config["group_add"] == ["${var.engine_socket_gid}"]
    env = block(processor, "env")
    assert env["CADUCEUS_PROCESSOR_DOCKER_URL"] == "unix:///run/caduceus/engine.sock"
    for name in SERVICES:
        if name != "processor":
            mounts = block(task_of(groups, name), "config")["mount"]
            assert all(mount["type"] == "tmpfs" for mount in mounts), name
    assert "docker.sock" not in JOB_FILE.read_text()
    docs = DOCS.read_text()
    assert "docker.sock" in docs and "root" in docs and "rootless Podman" in docs


def test_the_docs_say_what_was_not_run() -> None:
    docs = DOCS.read_text()
    assert "caduceus.nomad.hcl" in docs
    assert "No Nomad cluster has run this file" in docs
    assert "nomad var put nomad/jobs/caduceus" in docs
    assert "host_volume" in docs
