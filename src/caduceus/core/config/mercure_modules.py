"""A mercure module (mercure's `Module` model, app/common/types.py) as one of ours.

Every field is either mapped, with mercure's default where the file leaves it out, or reported
once: not needed here, not supported (and why), or changed meaning (and what it became).
mercure keeps additional_volumes, environment and docker_arguments as JSON text inside the
JSON file; they are parsed here, and text that is not JSON is reported, as mercure itself
ignores it (with an error in its log).

mercure runs a module without a memory, CPU or time limit; here every module has them, so
the defaults are reported where the file sets none.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from caduceus.core.config import docker_arguments as arguments
from caduceus.core.config.mercure_report import Report
from caduceus.core.config.models import GRANTABLE_CAPABILITIES, PERSISTENCE_FOLDER, Module

# Fields of mercure's Module and the names older releases wrote.
_PERSISTENCE = ("requires_persistence", "requires_persistent_storage")
_PERSISTENCE_NAME = ("persistence_folder_name", "persistent_storage_name")
_HANDLED = {
    "docker_tag",
    "additional_volumes",
    "environment",
    "docker_arguments",
    "settings",
    "contact",
    "comment",
    "constraints",
    "resources",
    "requires_root",
    "network_enabled",
    "container_type",
    *_PERSISTENCE,
    *_PERSISTENCE_NAME,
}
_DEFAULTS = Module.model_fields
_MIB = 1024 * 1024
# Nomad's HCL, as mercure's module form takes it for the Nomad runner: only the simplest
# statements have a meaning here.
_HCL_NUMBER = re.compile(r"^\s*(\w+)\s*=\s*(\d+(?:\.\d+)?)\s*$", re.MULTILINE)
_HCL_DEVICE = re.compile(r'device\s+"([^"]+)"')
# A block's body may hold interpolations such as "${meta.gpu}", but no other braces.
_HCL_CONSTRAINT = re.compile(r"constraint\s*\{((?:[^{}$]|\$\{[^{}]*\}|\$)*)\}")
_HCL_PAIR = re.compile(r'(\w+)\s*=\s*"([^"]*)"')
_NODE_ATTRIBUTE = re.compile(r"^\$\{(?:meta\.|node\.)?([A-Za-z0-9_.\-/]+)\}$")


def _json_text(value: Any, what: str, where: str, report: Report) -> Any:
    """mercure's JSON-in-a-string fields; a mapping given as such is taken too."""
    if value in (None, ""):
        return {}
    if isinstance(value, dict):
        return value
    try:
        parsed = json.loads(value) if isinstance(value, str) else None
    except json.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        report.not_supported.append(
            f"{where} -> {what}: not a JSON object (mercure ignores it as well); not imported"
        )
        return {}
    return parsed


def _volumes(raw: dict[str, Any], where: str, report: Report) -> list[str]:
    """Docker's {"HOST": {"bind": "CONTAINER", "mode": "ro"}} as "HOST:CONTAINER[:ro]"."""
    volumes = []
    for host, bind in raw.items():
        target = bind.get("bind") if isinstance(bind, dict) else bind
        if not isinstance(target, str) or not target:
            report.not_supported.append(
                f"{where} -> additional_volumes -> {host}: no bind path; not imported"
            )
            continue
        mode = str(bind.get("mode", "rw")) if isinstance(bind, dict) else "rw"
        flags = [flag.strip() for flag in mode.split(",") if flag.strip()]
        others = [flag for flag in flags if flag not in ("ro", "rw")]
        if others:
            report.not_supported.append(
                f"{where} -> additional_volumes -> {host}: mode {', '.join(others)} is not "
                "supported (bind mounts here are ro or rw); left out"
            )
        volumes.append(f"{host}:{target}" + (":ro" if "ro" in flags else ""))
    if volumes:
        report.changed.append(
            f"{where} -> additional_volumes: each host folder must lie inside "
            "CADUCEUS_PROCESSOR_VOLUME_ROOT, or the module's runs fail with the reason"
        )
    return volumes


def _cpus(docker: dict[str, Any]) -> float | None:
    if "nano_cpus" in docker:
        return float(docker.pop("nano_cpus")) / 1e9
    if "cpu_quota" in docker:
        period = float(docker.pop("cpu_period", 100_000) or 100_000)
        return float(docker.pop("cpu_quota")) / period
    if "cpu_count" in docker:
        return float(docker.pop("cpu_count"))
    return None


def _is_gpu_request(request: Any) -> bool:
    if not isinstance(request, dict):
        return False
    capabilities = request.get("capabilities") or request.get("Capabilities") or []
    return any(isinstance(group, list) and "gpu" in group for group in capabilities)


def _docker_arguments(
    module: dict[str, Any],
    docker: dict[str, Any],
    where: str,
    report: Report,
    allow_root: bool,
) -> None:
    """mercure's docker_arguments: options with a field of ours go there, the allow-listed
    rest stays in docker_arguments, and each refused one is reported and left out."""
    docker = dict(docker)
    here = f"{where} -> docker_arguments"
    try:
        if "mem_limit" in docker:
            size = arguments.size_in_bytes(docker.pop("mem_limit"))
            module["memory_mb"] = max(16, math.ceil(size / _MIB))
        cpus = _cpus(docker)
        if cpus is not None and cpus > 0:
            module["cpus"] = round(cpus, 3)
    except (arguments.ArgumentError, TypeError, ValueError) as exc:
        report.not_supported.append(
            f"{here}: a memory or CPU limit that cannot be read ({exc}); not imported"
        )
    if "memswap_limit" in docker:
        docker.pop("memswap_limit")
        report.not_needed.append(f"{here} -> memswap_limit: no swap beyond memory_mb here")
    runtime = docker.pop("runtime", None)
    if runtime == "nvidia":
        module["gpu"] = True
    elif runtime is not None:
        report.not_supported.append(f"{here} -> runtime: {runtime!r} (only nvidia, as gpu)")
    requests = docker.pop("device_requests", None)
    if requests is not None:
        if isinstance(requests, list) and requests and all(map(_is_gpu_request, requests)):
            module["gpu"] = True
        else:
            report.not_supported.append(
                f"{here} -> device_requests: only GPU requests (gpu: true) supported"
            )
    mode = docker.get("network_mode")
    if mode in ("none", "bridge", "default"):
        docker.pop("network_mode")
        module["network"] = mode != "none"
    if "cap_add" in docker and isinstance(docker["cap_add"], list):
        names = [str(name).upper().removeprefix("CAP_") for name in docker["cap_add"]]
        granted = [name for name in names if name in GRANTABLE_CAPABILITIES]
        module["capabilities"] = granted
        rest = [name for name in names if name not in GRANTABLE_CAPABILITIES]
        if rest:
            docker["cap_add"] = rest
        else:
            docker.pop("cap_add")
    if "cap_drop" in docker:
        docker.pop("cap_drop")
        report.not_needed.append(f"{here} -> cap_drop: every capability is dropped here")
    if "volumes" in docker:
        extra = docker.pop("volumes")
        if isinstance(extra, dict):
            module.setdefault("volumes", []).extend(_volumes(extra, where, report))
    if "user" in docker:
        docker.pop("user")
        report.changed.append(
            f"{here} -> user: a module runs as the processor's user here "
            "(the image's own user with requires_root)"
        )
    if "environment" in docker:
        docker.pop("environment")
        report.not_supported.append(f"{here} -> environment: mercure refuses it too")
    checked: dict[str, Any] = {}
    for key, value in docker.items():
        kept, problems = arguments.check(
            {key: value}, requires_root=bool(module.get("requires_root")), allow_root=allow_root
        )
        if problems:
            report.not_supported += [f"{where} -> {problem}; left out" for problem in problems]
        else:
            checked.update(kept)
    if checked:
        module["docker_arguments"] = checked


def _resources(module: dict[str, Any], text: str, where: str, report: Report) -> None:
    """Nomad's resources block (mercure's Nomad runner): memory, cores and a GPU device."""
    understood = []
    for name, number in _HCL_NUMBER.findall(text):
        if name in ("memory", "memory_max") and "memory_mb" not in module:
            module["memory_mb"] = max(16, math.ceil(float(number)))
            understood.append(name)
        elif name in ("memory", "memory_max"):
            report.not_needed.append(
                f"{where} -> resources -> {name}: docker_arguments' mem_limit "
                "already sets memory_mb"
            )
        elif name == "cores":
            module["cpus"] = float(number)
            understood.append(name)
        elif name == "cpu":
            report.not_supported.append(
                f"{where} -> resources -> cpu: Nomad's MHz; set cpus instead"
            )
    for device in _HCL_DEVICE.findall(text):
        if "gpu" in device:
            module["gpu"] = True
            understood.append(f"device {device}")
        else:
            report.not_supported.append(
                f"{where} -> resources -> device {device!r}: only a GPU device has a meaning here"
            )
    if understood:
        report.changed.append(
            f"{where} -> resources: Nomad's {', '.join(understood)} became "
            "the module's limits (memory_mb, cpus, gpu) for every runner"
        )
    elif not any(line.startswith(f"{where} -> resources") for line in report.all()):
        report.not_supported.append(f"{where} -> resources: Nomad text that says no limit")


def _constraints(module: dict[str, Any], text: str, where: str, report: Report) -> None:
    """Nomad constraints on a node's attribute being equal to a value: a node selector."""
    selector: dict[str, str] = {}
    blocks = _HCL_CONSTRAINT.findall(text)
    for block in blocks:
        pairs = dict(_HCL_PAIR.findall(block))
        attribute = _NODE_ATTRIBUTE.match(pairs.get("attribute", ""))
        if attribute and pairs.get("operator", "=") in ("=", "==") and "value" in pairs:
            selector[attribute.group(1)] = pairs["value"]
    if selector and len(selector) == len(blocks):
        module["node_selector"] = selector
        report.changed.append(
            f"{where} -> constraints: Nomad's node constraints became "
            f"node_selector {selector} for the Kubernetes runner; check your nodes' labels"
        )
    else:
        report.not_supported.append(
            f"{where} -> constraints: only node attributes equal to a value "
            "map to a Kubernetes node_selector; not imported"
        )


def module_from_mercure(
    name: str, raw: dict[str, Any], report: Report, *, allow_root: bool = False
) -> dict[str, Any] | None:
    """Our module for mercure's, or None (reported) when it cannot run here at all."""
    where = f"modules -> {name}"
    image = str(raw.get("docker_tag") or "").strip()
    if not image:
        report.not_supported.append(
            f"{where}: no docker_tag, so nothing to run; module not imported"
        )
        return None
    environment = _json_text(raw.get("environment"), "environment", where, report)
    module: dict[str, Any] = {
        "image": image,
        "settings": raw.get("settings") or {},
        "environment": {str(key): str(value) for key, value in environment.items()},
        "requires_root": bool(raw.get("requires_root", False)),
        "network": bool(raw.get("network_enabled", False)),
        "persistence": any(bool(raw.get(key)) for key in _PERSISTENCE),
        "contact": str(raw.get("contact") or ""),
        "comment": str(raw.get("comment") or ""),
    }
    volumes = _json_text(raw.get("additional_volumes"), "additional_volumes", where, report)
    if volumes:
        module["volumes"] = _volumes(volumes, where, report)
    docker = _json_text(raw.get("docker_arguments"), "docker_arguments", where, report)
    if docker:
        _docker_arguments(module, docker, where, report, allow_root)
    if str(raw.get("resources") or "").strip():
        _resources(module, str(raw["resources"]), where, report)
    if str(raw.get("constraints") or "").strip():
        _constraints(module, str(raw["constraints"]), where, report)
    _persistence_name(module, raw, where, report)
    if module["requires_root"] and not allow_root:
        report.changed.append(
            f"{where} -> requires_root: its runs are refused until the processor allows root "
            "modules (CADUCEUS_PROCESSOR_ALLOW_ROOT, mercure's support_root_modules)"
        )
    if raw.get("container_type") == "monai":
        report.not_supported.append(
            f"{where} -> container_type: a MONAI app's manifest is not read "
            "here; give its command in docker_arguments -> command"
        )
    if "memory_mb" not in module and "cpus" not in module:
        report.changed.append(
            f"{where}: mercure sets no memory, CPU or time limit; here "
            f"memory_mb {_DEFAULTS['memory_mb'].default}, cpus {_DEFAULTS['cpus'].default} "
            f"and timeout_seconds {_DEFAULTS['timeout_seconds'].default} apply"
        )
    for key in sorted(raw.keys() - _HANDLED):
        if raw[key] not in (None, "", [], {}, False):
            report.not_supported.append(f"{where} -> {key}: no equivalent, not imported")
    return module


def _persistence_name(
    module: dict[str, Any], raw: dict[str, Any], where: str, report: Report
) -> None:
    folder = next((str(raw[k]) for k in _PERSISTENCE_NAME if raw.get(k)), "")
    if not folder:
        return
    if not module["persistence"]:
        report.not_needed.append(
            f"{where} -> persistence_folder_name: the module keeps no persistent "
            "folder (requires_persistence is off)"
        )
    elif re.match(PERSISTENCE_FOLDER, folder):
        module["persistence_folder_name"] = folder
    else:
        report.not_supported.append(
            f"{where} -> persistence_folder_name: {folder!r} is not a plain folder name "
            "(letters, digits, _ . -); the module keeps a folder of its own instead"
        )
