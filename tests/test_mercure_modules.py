"""mercure's modules imported (issue 16): every field of mercure's Module model mapped, with
mercure's defaults, or reported once; JSON inside strings parsed; root-only docker_arguments
kept only where the host allows root modules."""

from __future__ import annotations

import json
from typing import Any

import pytest

from caduceus.core.config import files
from caduceus.core.config.mercure_modules import module_from_mercure
from caduceus.core.config.mercure_report import Report
from caduceus.core.config.models import Module

# Every field of mercure's Module (app/common/types.py, mercure 0.4 and its processor's
# requires_persistence, persistence_folder_name and network_enabled), as its module form writes
# them: additional_volumes, environment and docker_arguments are JSON inside strings;
# constraints and resources are Nomad text.
EVERY_FIELD: dict[str, Any] = {
    "docker_tag": "vendor/seg:2",
    "additional_volumes": json.dumps(
        {"/opt/models": {"bind": "/models", "mode": "ro"}, "/opt/cache": {"bind": "/cache"}}
    ),
    "environment": json.dumps({"MODEL": "lung", "THREADS": 4}),
    "docker_arguments": json.dumps(
        {
            "mem_limit": "8g",
            "cpu_quota": 200000,
            "cpu_period": 100000,
            "runtime": "nvidia",
            "shm_size": "2g",
            "cap_add": ["NET_RAW", "SYS_ADMIN"],
            "cap_drop": ["ALL"],
            "privileged": True,
            "user": "1000",
        }
    ),
    "settings": {"threshold": 0.5},
    "contact": "ai-team@example.org",
    "comment": "lung nodules",
    "constraints": 'constraint {\n  attribute = "${meta.gpu}"\n  value = "a100"\n}',
    "resources": 'cpu = 2000\nmemory = 4096\ndevice "nvidia/gpu" {\n  count = 1\n}',
    "requires_root": True,
    "requires_persistence": True,
    "persistence_folder_name": "seg-cache",
    "network_enabled": True,
}


def imported(raw: dict[str, Any], allow_root: bool = False) -> tuple[dict[str, Any], str]:
    report = Report()
    module = module_from_mercure("seg", raw, report, allow_root=allow_root)
    assert module is not None, report
    return module, "\n".join(report.lines())


def test_every_field_is_mapped_or_reported() -> None:
    module, report = imported(EVERY_FIELD, allow_root=True)
    parsed = Module.model_validate(module, context={"allow_root_modules": True})
    assert parsed.image == "vendor/seg:2"
    assert parsed.volumes == ["/opt/models:/models:ro", "/opt/cache:/cache"]
    assert parsed.environment == {"MODEL": "lung", "THREADS": "4"}
    assert parsed.settings == {"threshold": 0.5}
    assert (parsed.contact, parsed.comment) == ("ai-team@example.org", "lung nodules")
    assert parsed.memory_mb == 8192  # docker_arguments' mem_limit before Nomad's memory
    assert parsed.cpus == 2.0
    assert parsed.gpu is True
    assert parsed.capabilities == ["NET_RAW"]
    assert parsed.docker_arguments == {
        "shm_size": 2 * 1024**3,
        "cap_add": ["SYS_ADMIN"],
        "privileged": True,
    }
    assert parsed.node_selector == {"gpu": "a100"}
    assert parsed.requires_root and parsed.network and parsed.persistence
    assert parsed.persistence_folder_name == "seg-cache"
    for line in (
        "changed meaning: modules -> seg -> additional_volumes: each host folder must lie inside "
        "CADUCEUS_PROCESSOR_VOLUME_ROOT",
        "not needed here: modules -> seg -> docker_arguments -> cap_drop:",
        "changed meaning: modules -> seg -> docker_arguments -> user:",
        "not supported: modules -> seg -> resources -> cpu: Nomad's MHz",
        "not needed here: modules -> seg -> resources -> memory: docker_arguments' mem_limit",
        "changed meaning: modules -> seg -> resources:",
        "changed meaning: modules -> seg -> constraints: Nomad's node constraints became "
        "node_selector {'gpu': 'a100'}",
    ):
        assert line in report, line
    assert "-> requires_root:" not in report  # the host allows root modules
    assert "no equivalent" not in report


def test_without_root_allowed_the_root_only_arguments_are_left_out_and_said() -> None:
    module, report = imported(EVERY_FIELD, allow_root=False)
    assert module["docker_arguments"] == {"shm_size": 2 * 1024**3}
    assert module["capabilities"] == ["NET_RAW"]
    assert "docker_arguments -> privileged: root only" in report
    assert "docker_arguments -> cap_add: root only" in report
    assert "modules -> seg -> requires_root: its runs are refused until" in report
    Module.model_validate(module)  # valid without root allowed


def test_mercures_own_test_module_and_defaults() -> None:
    """The module of mercure's app/tests/data/test_config.json, as it is there."""
    raw = {
        "url": "https://github.com/RoyWiggins",
        "docker_tag": "alpine:3.11",
        "additional_volumes": "{}",
        "environment": "{}",
        "docker_arguments": "",
    }
    module, report = imported(raw)
    parsed = Module.model_validate(module)
    assert parsed.image == "alpine:3.11"
    assert parsed.volumes == [] and parsed.environment == {} and parsed.docker_arguments == {}
    # mercure's defaults: not root, no network, no persistence.
    assert not parsed.requires_root and not parsed.network and not parsed.persistence
    assert report.splitlines() == [
        "not supported: modules -> seg -> url: no equivalent, not imported",
        "changed meaning: modules -> seg: mercure sets no memory, CPU or time limit; here "
        "memory_mb 4096, cpus 1.0 and timeout_seconds 3600 apply",
    ]


@pytest.mark.parametrize("field", ["environment", "additional_volumes", "docker_arguments"])
def test_text_that_is_not_json_is_reported_not_a_crash(field: str) -> None:
    module, report = imported({"docker_tag": "a:1", field: "MODEL=lung, /a:/b"})
    assert f"modules -> seg -> {field}: not a JSON object (mercure ignores it as well)" in report
    Module.model_validate(module)


def test_a_module_without_an_image_is_reported_and_left_out() -> None:
    report = Report()
    assert module_from_mercure("empty", {"docker_tag": ""}, report) is None
    assert report.lines() == [
        "not supported: modules -> empty: no docker_tag, so nothing to run; module not imported"
    ]


def test_persistence_names_and_older_field_names() -> None:
    module, _ = imported(
        {"docker_tag": "a:1", "requires_persistent_storage": True, "persistent_storage_name": "x"}
    )
    assert module["persistence"] is True and module["persistence_folder_name"] == "x"
    module, report = imported(
        {"docker_tag": "a:1", "requires_persistence": True, "persistence_folder_name": "../etc"}
    )
    assert "persistence_folder_name" not in module
    assert "'../etc' is not a plain folder name" in report
    module, report = imported({"docker_tag": "a:1", "persistence_folder_name": "x"})
    assert (
        "not needed here: modules -> seg -> persistence_folder_name:" in report
        and not module["persistence"]
    )


def test_a_mercure_file_with_such_a_module_validates_whole() -> None:
    document = {
        "appliance_name": "master",
        "modules": {"seg": EVERY_FIELD, "plain": {"docker_tag": "a:1", "environment": "{}"}},
        "rules": {},
        "targets": {},
    }
    loaded = files.parse(document, "mercure.json")
    assert set(loaded.config.modules) == {"seg", "plain"}
    assert "privileged" not in loaded.config.modules["seg"].docker_arguments
    loaded = files.parse(document, "mercure.json", allow_root_modules=True)
    assert loaded.config.modules["seg"].docker_arguments["privileged"] is True


def test_nomad_resources_alone_become_the_limits_and_other_constraints_are_reported() -> None:
    module, report = imported(
        {
            "docker_tag": "a:1",
            "resources": "memory = 2048\ncores = 2",
            "constraints": 'constraint {\n  attribute = "${attr.kernel.name}"\n'
            '  operator = "regexp"\n  value = "linux"\n}',
        }
    )
    assert (module["memory_mb"], module["cpus"]) == (2048, 2.0)
    assert "changed meaning: modules -> seg -> resources: Nomad's memory, cores became" in report
    assert (
        "not supported: modules -> seg -> constraints:" in report and "node_selector" not in module
    )
    assert "mercure sets no memory" not in report
