"""A module's `docker_arguments` (mercure's field): extra options for its container, checked
against an allow-list when the configuration is saved.

Three kinds of option:
- safe: they change nothing about what the container may reach (shm_size, read_only,
  working_dir, entrypoint, command, init, hostname, labels, cpu_shares, cpuset_cpus,
  mem_reservation, a lower pids_limit). Accepted on any module with an image.
- root only: they reach the host or loosen the confinement (privileged, a host namespace,
  devices, added capabilities, security_opt, sysctls). Accepted only on a module with
  `requires_root: true`, and only where the administrator allows root modules
  (CADUCEUS_PROCESSOR_ALLOW_ROOT); the runner checks both again before each run.
- the runner's own, or a field of the module: refused with the field to use instead
  (mem_limit is memory_mb, runtime "nvidia" is gpu, volumes are `volumes`...).
Anything else is refused by name: an option nobody looked at is not passed to the engine.

Values are checked and normalised (sizes to bytes), so that the runners never pass text a
user wrote to the engine unchecked.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import PurePosixPath
from typing import Any

# The validation context key that carries the host's CADUCEUS_PROCESSOR_ALLOW_ROOT.
ALLOW_ROOT_KEY = "allow_root_modules"

_SIZE = re.compile(r"^(\d+)\s*([bkmg]?)b?$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
_CPUSET = re.compile(r"^\d{1,4}(-\d{1,4})?(,\d{1,4}(-\d{1,4})?){0,63}$")
_HOSTNAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", re.IGNORECASE)
_LABEL_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_./-]{0,127}$")
_DEVICE = re.compile(r"^/dev/[A-Za-z0-9_./-]+(:/dev/[A-Za-z0-9_./-]+)?(:[rwm]{1,3})?$")
_CAPABILITY = re.compile(r"^(CAP_)?[A-Z_]{2,32}$")
_SYSCTL = re.compile(r"^[a-z0-9_.]{1,128}$")
_MAX_PIDS = 512  # the runner's own limit (runners/container.py PIDS_LIMIT): only lower


class ArgumentError(ValueError):
    pass


def size_in_bytes(value: Any) -> int:
    """A size as the Docker API takes it: bytes, or "512m", "2g", "64k"."""
    if isinstance(value, bool):
        raise ArgumentError("a size in bytes, or a number with k, m or g")
    if isinstance(value, int) and value > 0:
        return value
    match = _SIZE.match(value.strip()) if isinstance(value, str) else None
    if match is None or int(match.group(1)) <= 0:
        raise ArgumentError("a size in bytes, or a number with k, m or g")
    return int(match.group(1)) * _UNITS[match.group(2).lower()]


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ArgumentError("true or false")
    return value


def _words(value: Any) -> str | list[str]:
    """A command or entrypoint: one string, or a list of strings (no shell is involved)."""
    if isinstance(value, str) and value.strip() and len(value) <= 4096:
        return value
    if (
        isinstance(value, list)
        and value
        and len(value) <= 256
        and all(isinstance(word, str) and len(word) <= 4096 for word in value)
    ):
        return list(value)
    raise ArgumentError("a string or a list of strings")


def _absolute_path(value: Any) -> str:
    path = PurePosixPath(value) if isinstance(value, str) else None
    if path is None or not path.is_absolute() or ".." in path.parts or len(value) > 1024:
        raise ArgumentError("an absolute path inside the container")
    return str(path)


def _hostname(value: Any) -> str:
    if not isinstance(value, str) or not _HOSTNAME.match(value):
        raise ArgumentError("a host name: letters, digits and -, at most 63")
    return value


def _labels(value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or len(value) > 64:
        raise ArgumentError("a mapping of at most 64 labels")
    for key, text in value.items():
        if not isinstance(key, str) or not _LABEL_KEY.match(key) or key.startswith("caduceus"):
            raise ArgumentError(f"label {key!r}: a plain name, not caduceus.* (the runner's own)")
        if not isinstance(text, str) or len(text) > 1024:
            raise ArgumentError(f"label {key!r}: a string value")
    return dict(value)


def _cpu_shares(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 2 <= value <= 262144:
        raise ArgumentError("a whole number from 2 to 262144 (a relative weight)")
    return value


def _cpuset(value: Any) -> str:
    if not isinstance(value, str) or not _CPUSET.match(value):
        raise ArgumentError('CPU numbers and ranges, e.g. "0-3" or "0,2"')
    return value


def _pids(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _MAX_PIDS:
        raise ArgumentError(f"a whole number from 1 to {_MAX_PIDS} (only lower than the default)")
    return value


def _host(value: Any) -> str:
    if value != "host":
        raise ArgumentError('only "host" (a private namespace is the default)')
    return "host"


def _devices(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(
        isinstance(d, str) and _DEVICE.match(d) and ".." not in d for d in value
    ):
        raise ArgumentError('a list of "/dev/HOST[:/dev/CONTAINER][:rwm]"')
    return list(value)


def _capabilities(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(
        isinstance(c, str) and _CAPABILITY.match(c.upper()) for c in value
    ):
        raise ArgumentError("a list of capability names")
    return [c.upper().removeprefix("CAP_") for c in value]


def _strings(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(
        isinstance(s, str) and 0 < len(s) <= 256 for s in value
    ):
        raise ArgumentError("a list of strings")
    return list(value)


def _sysctls(value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and _SYSCTL.match(k) and isinstance(v, str | int)
        for k, v in value.items()
    ):
        raise ArgumentError("a mapping of sysctl names to values")
    return {k: str(v) for k, v in value.items()}


SAFE: dict[str, Callable[[Any], Any]] = {
    "shm_size": size_in_bytes,
    "read_only": _boolean,
    "working_dir": _absolute_path,
    "entrypoint": _words,
    "command": _words,
    "init": _boolean,
    "hostname": _hostname,
    "labels": _labels,
    "cpu_shares": _cpu_shares,
    "cpuset_cpus": _cpuset,
    "cpuset_mems": _cpuset,
    "mem_reservation": size_in_bytes,
    "pids_limit": _pids,
}

ROOT_ONLY: dict[str, Callable[[Any], Any]] = {
    "privileged": _boolean,
    "pid_mode": _host,
    "ipc_mode": _host,
    "uts_mode": _host,
    "userns_mode": _host,
    "cgroupns": _host,
    "network_mode": _host,
    "devices": _devices,
    "cap_add": _capabilities,
    "security_opt": _strings,
    "sysctls": _sysctls,
}

# Options the module has a field for, or that the runner sets itself: where to say it instead.
INSTEAD: dict[str, str] = {
    "mem_limit": "memory_mb",
    "memswap_limit": "memory_mb (no swap beyond it)",
    "nano_cpus": "cpus",
    "cpu_quota": "cpus",
    "cpu_period": "cpus",
    "cpu_count": "cpus",
    "runtime": 'gpu: true (runtime "nvidia")',
    "device_requests": "gpu: true",
    "environment": "environment",
    "volumes": "volumes (inside CADUCEUS_PROCESSOR_VOLUME_ROOT)",
    "mounts": "volumes (inside CADUCEUS_PROCESSOR_VOLUME_ROOT)",
    "volumes_from": "volumes (inside CADUCEUS_PROCESSOR_VOLUME_ROOT)",
    "user": "requires_root (a module runs as the processor's user otherwise)",
    "group_add": "the runner's own (the processor's group)",
    "cap_drop": "the runner's own (every capability is dropped)",
    "image": "image",
    "network": "network: true",
    "network_disabled": "network",
    "detach": "the runner's own",
    "remove": "the runner's own (containers are always removed)",
    "auto_remove": "the runner's own (containers are always removed)",
    "name": "the runner's own",
}


def check(
    arguments: dict[str, Any], *, requires_root: bool, allow_root: bool
) -> tuple[dict[str, Any], list[str]]:
    """The arguments with checked values, and one problem per refused option (empty: fine).

    A root-only option needs `requires_root` on the module and allow_root on the host."""
    checked: dict[str, Any] = {}
    problems: list[str] = []
    for key, value in arguments.items():
        try:
            if key in SAFE:
                checked[key] = SAFE[key](value)
            elif key in ROOT_ONLY:
                if key == "network_mode" and value in ("none", "bridge", "default"):
                    raise ArgumentError('use network (true or false) instead of "none"/"bridge"')
                checked[key] = ROOT_ONLY[key](value)
                if not requires_root:
                    raise ArgumentError(
                        "root only: it loosens the container's confinement; the module needs "
                        "requires_root: true"
                    )
                if not allow_root:
                    raise ArgumentError(
                        "root only: it loosens the container's confinement, and the "
                        "administrator has not allowed root modules (CADUCEUS_PROCESSOR_ALLOW_ROOT)"
                    )
            elif key in INSTEAD:
                raise ArgumentError(f"use {INSTEAD[key]} instead")
            else:
                raise ArgumentError(
                    "not on the allow-list; allowed: "
                    + ", ".join(sorted(SAFE))
                    + "; with root allowed: "
                    + ", ".join(sorted(ROOT_ONLY))
                )
        except ArgumentError as exc:
            problems.append(f"docker_arguments -> {key}: {exc}")
    return checked, problems


def root_only(arguments: dict[str, Any]) -> list[str]:
    """The root-only options among the arguments (the runner refuses them without root)."""
    return [key for key in arguments if key in ROOT_ONLY]
