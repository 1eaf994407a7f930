"""Run a module in a container through the Docker Engine API (Docker, or Podman's service).

Safe by default: the module sees its input folder read-only at /tmp/data, its output folder
writable at /tmp/output (mercure's paths) and its persistence folder at /tmp/persistence; it runs
as the processor's own user (an unprivileged uid when the processor runs as root), without any
capability (unless the administrator grants the module some), without new privileges, under
the engine's default seccomp profile, in private namespaces (never the host's pid, ipc or
network namespace), without network unless it asks for it, within its memory,
CPU and process limits, and with its labels so that the containers of a processor that died
can be found and removed. Containers are always removed after the run; their output goes to the
run's log.

The root filesystem of the container is left writable: many modules write scratch files to /tmp
or their home folder, and that layer is discarded with the container.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path, PurePosixPath
from typing import Any

import docker
import requests
from docker.errors import DockerException, ImageNotFound, NotFound
from docker.models.containers import Container
from docker.types import DeviceRequest
from docker.utils import parse_repository_tag

from caduceus.core.config import docker_arguments
from caduceus.core.config.models import Module
from caduceus.processor.runners.base import (
    CANCEL_POLL_SECONDS,
    UNPRIVILEGED,
    ModuleRun,
    RunnerError,
    RunOutcome,
    folder_environment,
)

log = logging.getLogger("caduceus.processor")

# Paths inside the container (mercure's), not on the host.
IN_PATH = "/tmp/data"  # noqa: S108
OUT_PATH = "/tmp/output"  # noqa: S108
PERSISTENT_PATH = "/tmp/persistence"  # noqa: S108
RESERVED_PATHS = (IN_PATH, OUT_PATH, PERSISTENT_PATH)

TASK_LABEL = "caduceus.task"
MODULE_LABEL = "caduceus.module"
PIDS_LIMIT = 512
# What a module that needs root (and may have it) gets back of root's powers: owning and
# writing files whatever their owner, and switching users (images that drop to a user of
# their own). Everything else stays dropped.
ROOT_CAPABILITIES = ["CHOWN", "DAC_OVERRIDE", "FOWNER", "SETUID", "SETGID"]
KILL_WAIT_SECONDS = 30


def module_user(module_name: str, module: Module, allow_root: bool) -> tuple[int, int] | None:
    """The uid and gid the module runs as, or None for the image's own user (root modules)."""
    if module.requires_root:
        if not allow_root:
            raise RunnerError(
                f"module {module_name} needs root, which the administrator has not allowed "
                "(CADUCEUS_PROCESSOR_ALLOW_ROOT)"
            )
        return None
    uid, gid = os.getuid(), os.getgid()
    return UNPRIVILEGED if uid == 0 else (uid, gid)


def module_capabilities(module: Module, *, root: bool) -> list[str]:
    """The capabilities added to the module's container after dropping them all."""
    added = list(ROOT_CAPABILITIES) if root else []
    return added + [name for name in module.capabilities if name not in added]


def extra_volume(spec: str, volume_root: Path | None) -> tuple[str, dict[str, str]]:
    """One "HOST:CONTAINER[:ro|:rw]" volume as a bind, when HOST lies inside volume_root."""
    parts = spec.split(":")
    mode = "rw"
    if len(parts) == 3 and parts[2] in ("ro", "rw"):
        mode = parts.pop()
    if len(parts) != 2 or not parts[0] or not parts[1]:
        raise RunnerError(f"volume {spec!r} is not HOST:CONTAINER[:ro]")
    host, target = parts
    if volume_root is None:
        raise RunnerError(
            f"volume {spec!r} refused: no folder for module volumes is configured "
            "(CADUCEUS_PROCESSOR_VOLUME_ROOT)"
        )
    container_path = PurePosixPath(target)
    if not container_path.is_absolute() or ".." in container_path.parts:
        raise RunnerError(f"volume {spec!r}: the container path must be absolute")
    if len(container_path.parts) < 2:
        raise RunnerError(f"volume {spec!r}: not over the container's root")
    for reserved in RESERVED_PATHS:
        if container_path == PurePosixPath(reserved) or container_path.is_relative_to(reserved):
            raise RunnerError(f"volume {spec!r}: {reserved} is the runner's own")
    if not Path(host).is_absolute():
        raise RunnerError(f"volume {spec!r}: the host path must be absolute")
    try:
        # The resolved path is what gets mounted: a symlink changed after this check cannot
        # point the mount elsewhere.
        resolved = Path(host).resolve(strict=True)
        root = volume_root.resolve(strict=True)
    except OSError as exc:
        raise RunnerError(f"volume {spec!r}: {exc.strerror or exc}") from exc
    if not resolved.is_relative_to(root):
        raise RunnerError(f"volume {spec!r} refused: the host folder is not inside {root}")
    return str(resolved), {"bind": str(container_path), "mode": mode}


def container_environment(job: ModuleRun) -> dict[str, str]:
    """The module's variables inside a container that sees its folders at mercure's paths."""
    environment = dict(job.environment)
    if job.persistence_dir is not None:
        environment["MODULE_PERSISTENCE_DIR"] = PERSISTENT_PATH
    # The folder variables always tell the truth, whatever the module's environment says.
    environment.update(folder_environment(IN_PATH, OUT_PATH))
    return environment


def container_options(
    job: ModuleRun, *, allow_root: bool, volume_root: Path | None
) -> dict[str, Any]:
    """The keyword arguments of containers.create for this run (raises RunnerError)."""
    module = job.module
    user = module_user(job.module_name, module, allow_root)
    volumes: dict[str, dict[str, str]] = {
        str(job.in_dir.resolve()): {"bind": IN_PATH, "mode": "ro"},
        str(job.out_dir.resolve()): {"bind": OUT_PATH, "mode": "rw"},
    }
    environment = container_environment(job)
    if job.persistence_dir is not None:
        volumes[str(job.persistence_dir.resolve())] = {"bind": PERSISTENT_PATH, "mode": "rw"}
    for spec in module.volumes:
        host, bind = extra_volume(spec, volume_root)
        if host in volumes:
            raise RunnerError(f"volume {spec!r}: this folder is mounted already")
        volumes[host] = bind
    options: dict[str, Any] = {
        "image": module.image,
        "detach": True,
        "environment": environment,
        "volumes": volumes,
        "labels": {TASK_LABEL: job.task_id, MODULE_LABEL: job.module_name},
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "mem_limit": module.memory_mb * 1024 * 1024,
        # No swap beyond the memory limit: the limit is the limit.
        "memswap_limit": module.memory_mb * 1024 * 1024,
        "nano_cpus": int(module.cpus * 1_000_000_000),
        "pids_limit": PIDS_LIMIT,
    }
    # No capability comes back unless the administrator granted it to this module (root's
    # few with requires_root and CADUCEUS_PROCESSOR_ALLOW_ROOT, others in `capabilities`).
    added = module_capabilities(module, root=user is None)
    if added:
        options["cap_add"] = added
    if user is not None:
        options["user"] = f"{user[0]}:{user[1]}"
        if user == UNPRIVILEGED and os.getuid() == 0:
            # Received files are readable by their owner and group only; a module running as
            # nobody for a processor running as root reads them through the group.
            options["group_add"] = [str(os.getgid())]
    if not module.network:
        options["network_mode"] = "none"
    if module.gpu:
        options["device_requests"] = [DeviceRequest(count=-1, capabilities=[["gpu"]])]
    _add_docker_arguments(options, job, allow_root=allow_root)
    return options


def checked_docker_arguments(job: ModuleRun, *, allow_root: bool) -> dict[str, Any]:
    """The module's docker_arguments, checked again before each run: a version stored while
    the administrator allowed root modules does not run root-only options once they do not."""
    module = job.module
    checked, problems = docker_arguments.check(
        module.docker_arguments, requires_root=module.requires_root, allow_root=allow_root
    )
    if problems:
        raise RunnerError(f"module {job.module_name}: " + "; ".join(problems))
    return checked


def _add_docker_arguments(options: dict[str, Any], job: ModuleRun, *, allow_root: bool) -> None:
    """The allow-listed options, over the runner's where they add to them (labels,
    capabilities, security options) or replace them (network_mode "host")."""
    for key, value in checked_docker_arguments(job, allow_root=allow_root).items():
        if key == "labels":
            options["labels"] = {**value, **options["labels"]}  # ours cannot be overwritten
        elif key == "cap_add":
            options["cap_add"] = [*options.get("cap_add", []), *value]
        elif key == "security_opt":
            options["security_opt"] = [*options["security_opt"], *value]
        else:
            options[key] = value


class ContainerRunner:
    """Runs modules with an image on one container engine; one client for all runs."""

    def __init__(
        self, base_url: str = "", allow_root: bool = False, volume_root: Path | None = None
    ) -> None:
        self.base_url = base_url
        self.allow_root = allow_root
        self.volume_root = volume_root
        self._client: docker.DockerClient | None = None

    # -- the engine ----------------------------------------------------------------------

    def _where(self) -> str:
        return self.base_url or os.environ.get("DOCKER_HOST", "") or "the default socket"

    def _engine(self) -> docker.DockerClient:
        """The client, connected and answering (RunnerError when the engine is not)."""
        try:
            if self._client is None:
                if self.base_url:
                    self._client = docker.DockerClient(base_url=self.base_url, version="auto")
                else:
                    self._client = docker.from_env(version="auto")
            self._client.ping()
        except (DockerException, requests.RequestException) as exc:
            self._client = None
            raise RunnerError(
                f"container engine at {self._where()} is not reachable: {exc}"
            ) from exc
        return self._client

    def _image(self, client: docker.DockerClient, job: ModuleRun) -> None:
        """Make sure the image is there: pulled when missing, or each time (pull="always")."""
        image = job.module.image
        present = True
        try:
            client.images.get(image)
        except ImageNotFound:
            present = False
        except (DockerException, requests.RequestException) as exc:
            raise RunnerError(f"image {image} is not available: {exc}") from exc
        if present and job.module.pull != "always":
            return
        try:
            _pull(client, image)
        except (DockerException, requests.RequestException) as exc:
            if not present:
                raise RunnerError(f"image {image} is not available: {exc}") from exc
            # The registry is down or gone: the local copy still runs, and the log says so.
            log.warning("pulling %s failed, running the local copy: %s", image, exc)
            with job.log_path.open("a") as out:
                out.write(f"caduceus: pulling {image} failed, running the local copy: {exc}\n")

    # -- a run ---------------------------------------------------------------------------

    def run(self, job: ModuleRun) -> RunOutcome:
        options = container_options(job, allow_root=self.allow_root, volume_root=self.volume_root)
        client = self._engine()
        self._image(client, job)
        _hand_over_folders(job, options.get("user"))
        started = time.monotonic()
        try:
            container = client.containers.create(**options)
        except (DockerException, requests.RequestException) as exc:
            raise RunnerError(f"module {job.module_name} could not be started: {exc}") from exc
        try:
            try:
                container.start()
            except (DockerException, requests.RequestException) as exc:
                raise RunnerError(f"module {job.module_name} could not be started: {exc}") from exc
            try:
                exit_code, timed_out, cancelled = self._wait(container, job)
                seconds = time.monotonic() - started
                notes = self._notes(container, job, timed_out, cancelled)
                _write_log(container, job.log_path, notes)
            except DockerException as exc:  # e.g. the container removed behind our back
                raise RunnerError(f"module {job.module_name}: the engine failed: {exc}") from exc
            return RunOutcome(
                exit_code=exit_code, timed_out=timed_out, seconds=seconds, cancelled=cancelled
            )
        finally:
            _remove(container)

    def _wait(self, container: Container, job: ModuleRun) -> tuple[int | None, bool, bool]:
        """(exit code, timed out, cancelled): the exit code, or None once the module is killed
        at its time limit or because the run was cancelled."""
        deadline = time.monotonic() + job.module.timeout_seconds
        timed_out = True
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if job.cancelled():
                timed_out = False
                break
            try:
                # In slices, so that a cancelled run is noticed within a few seconds.
                status = container.wait(timeout=min(remaining, CANCEL_POLL_SECONDS))
                return int(status.get("StatusCode", -1)), False, False
            except requests.RequestException as exc:
                # A read timeout shows up as ConnectionError on a Unix socket: ask the engine
                # whether the container still runs to tell a time limit from a lost engine.
                try:
                    container.reload()
                except (DockerException, requests.RequestException):
                    raise RunnerError(f"lost the container engine: {exc}") from exc
                if container.status != "running":  # it ended just now
                    return int(container.attrs.get("State", {}).get("ExitCode", -1)), False, False
        with contextlib.suppress(DockerException, requests.RequestException):
            container.kill()
        with contextlib.suppress(DockerException, requests.RequestException):
            container.wait(timeout=KILL_WAIT_SECONDS)
        return None, timed_out, not timed_out

    def _notes(
        self, container: Container, job: ModuleRun, timed_out: bool, cancelled: bool
    ) -> list[str]:
        """What the runner adds to the module's log: why it ended, when it did not end well."""
        if timed_out:
            return [f"caduceus: killed after its time limit of {job.module.timeout_seconds} s"]
        if cancelled:
            return ["caduceus: stopped because the processor is stopping; the step runs again"]
        try:
            container.reload()
            oom = bool(container.attrs.get("State", {}).get("OOMKilled"))
        except (DockerException, requests.RequestException):
            return []
        if oom:
            return [f"caduceus: killed for lack of memory (memory_mb={job.module.memory_mb})"]
        if job.module.node_selector:
            return ["caduceus: node_selector places Kubernetes pods; this engine ran it here"]
        return []

    # -- leftovers -----------------------------------------------------------------------

    def remove_leftovers(self, task_id: str) -> int:
        """Remove the containers of this task (of a processor that died); how many."""
        client = self._engine()
        try:
            found = client.containers.list(all=True, filters={"label": f"{TASK_LABEL}={task_id}"})
        except (DockerException, requests.RequestException) as exc:
            raise RunnerError(f"cannot list the containers of task {task_id}: {exc}") from exc
        for container in found:
            log.warning("removing a leftover container %s of task %s", container.short_id, task_id)
            _remove(container)
        return len(found)


def _pull(client: docker.DockerClient, image: str) -> None:
    """Pull one image; a failure reported inside the progress stream raises as well."""
    repository, tag = parse_repository_tag(image)
    events = client.api.pull(repository, tag=tag or "latest", stream=True, decode=True)
    for event in events:
        if isinstance(event, dict) and event.get("error"):
            raise DockerException(str(event["error"]).strip())


def _hand_over_folders(job: ModuleRun, user: str | None) -> None:
    """A processor running as root gives the writable folders to the module's user."""
    if user is None or os.geteuid() != 0:
        return
    uid, gid = (int(part) for part in user.split(":"))
    for folder in (job.out_dir, job.persistence_dir):
        if folder is not None:
            os.chown(folder, uid, gid)


def _write_log(container: Container, log_path: Path, notes: list[str]) -> None:
    """The container's output (stdout and stderr, interleaved), then the runner's notes."""
    with log_path.open("ab") as out:
        try:
            for chunk in container.logs(stdout=True, stderr=True, stream=True):
                out.write(chunk)
        except (DockerException, requests.RequestException) as exc:
            out.write(f"\ncaduceus: the container's output could not be read: {exc}\n".encode())
        for note in notes:
            out.write(f"\n{note}\n".encode())


def _remove(container: Container) -> None:
    try:
        container.remove(force=True)
    except NotFound:
        pass
    except (DockerException, requests.RequestException) as exc:
        log.warning("could not remove container %s: %s", container.short_id, exc)
