"""Run a module with an image as a Kubernetes Job, so that the cluster schedules it (GPU nodes).

The module's pod sees the same folders as in a container (runners/container.py): its input
read-only at /tmp/data, its output at /tmp/output, its persistence folder at /tmp/persistence.
They are subfolders of the shared data root, which the processor and the module's pod both
mount from one PersistentVolumeClaim (ReadWriteMany); the processor's data root
(CADUCEUS_HOME) is the claim's root, so a task's folder is the same subPath for both.

The pod runs as the processor's user (never root unless the module asks and the administrator
allows it), without capabilities or privilege escalation, without a service account token,
within the module's memory, CPU and GPU limits, and for at most its time limit
(activeDeadlineSeconds). A module without `network: true` carries a label that the
deny-egress NetworkPolicy of deploy/kubernetes selects: Kubernetes itself has no "no network"
switch for a pod.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shlex
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from caduceus.processor.runners.base import UNPRIVILEGED, ModuleRun, RunnerError, RunOutcome
from caduceus.processor.runners.container import (
    IN_PATH,
    MODULE_LABEL,
    OUT_PATH,
    PERSISTENT_PATH,
    TASK_LABEL,
    _hand_over_folders,
    checked_docker_arguments,
    container_environment,
    extra_volume,
    module_capabilities,
    module_user,
)

log = logging.getLogger("caduceus.processor")

# Every module pod carries this label; the network label tells the NetworkPolicy which pods
# get no network at all.
COMPONENT_LABEL = "app.kubernetes.io/component"
COMPONENT = "caduceus-module"
NETWORK_LABEL = "caduceus.network"
CONTAINER_NAME = "module"
DATA_VOLUME = "data"
GPU_RESOURCE = "nvidia.com/gpu"
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
# A pod that cannot even start: its image is missing or its spec cannot be used. Waiting for
# the time limit would only delay the error.
FATAL_WAITING = {
    "ErrImageNeverPull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
}
_API_ERRORS = (ApiException, urllib3.exceptions.HTTPError, OSError)
# Every call gives up after this long, so that a dead connection cannot hold a worker forever.
REQUEST_TIMEOUT = 30
# How long the API may be gone while a Job runs (a control plane restarting) before the step
# fails; the Job goes on in the cluster meanwhile.
API_PATIENCE_SECONDS = 120.0
_LABEL_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class JobOptions:
    """What the administrator decides for every module Job (from the bootstrap settings)."""

    data_root: Path  # where the processor mounts the claim: its CADUCEUS_HOME
    data_claim: str  # the PersistentVolumeClaim of the shared data root
    namespace: str = ""  # empty: the processor's own namespace
    allow_root: bool = False
    volume_root: Path | None = None  # modules' extra volumes must lie inside it (on the claim)
    pull_policy: str = "IfNotPresent"
    ttl_seconds: int = 3600  # removes the Jobs of a processor that died before deleting them
    # Time beyond the module's limit for the cluster to schedule the pod and pull the image,
    # before the runner gives up on a Job that the cluster did not stop itself.
    grace_seconds: float = 120.0
    poll_seconds: float = 2.0


def job_name(job: ModuleRun) -> str:
    """A unique, valid Job name (DNS label) that still says which module runs."""
    slug = re.sub(r"[^a-z0-9]+", "-", job.module_name.lower()).strip("-")[:30].strip("-")
    return f"caduceus-{slug or 'module'}-{uuid.uuid4().hex[:10]}"


def label_value(text: str) -> str:
    """text as a label value (at most 63 of [A-Za-z0-9_.-], alphanumeric at both ends)."""
    value = _LABEL_UNSAFE.sub("_", text).strip("_.-")
    if len(value) > 63 or value != text:
        # Distinct names must stay distinct labels: a hash keeps them apart.
        digest = hashlib.sha256(text.encode()).hexdigest()[:8]
        value = f"{value[:54].strip('_.-')}-{digest}".strip("-")
    return value


def _sub_path(folder: Path, options: JobOptions, what: str) -> str:
    root = options.data_root.resolve()
    resolved = folder.resolve()
    if not resolved.is_relative_to(root):
        raise RunnerError(f"{what} {folder} is not on the shared data volume ({root})")
    return resolved.relative_to(root).as_posix()


def _mount(sub_path: str, mount_path: str, read_only: bool) -> dict[str, Any]:
    mount: dict[str, Any] = {"name": DATA_VOLUME, "mountPath": mount_path, "readOnly": read_only}
    if sub_path not in ("", "."):
        mount["subPath"] = sub_path
    return mount


def _volume_mounts(job: ModuleRun, options: JobOptions) -> list[dict[str, Any]]:
    mounts = [
        _mount(_sub_path(job.in_dir, options, "input folder"), IN_PATH, True),
        _mount(_sub_path(job.out_dir, options, "output folder"), OUT_PATH, False),
    ]
    if job.persistence_dir is not None:
        path = _sub_path(job.persistence_dir, options, "persistence folder")
        mounts.append(_mount(path, PERSISTENT_PATH, False))
    seen: set[str] = set()
    for spec in job.module.volumes:
        host, bind = extra_volume(spec, options.volume_root)
        if host in seen:
            raise RunnerError(f"volume {spec!r}: this folder is mounted already")
        seen.add(host)
        sub_path = _sub_path(Path(host), options, f"volume {spec!r}:")
        mounts.append(_mount(sub_path, bind["bind"], bind["mode"] == "ro"))
    return mounts


# docker_arguments and their place in a Job; those without one are left out, and the run's
# log says so (kubernetes_notes).
_POD_HOST = {"pid_mode": "hostPID", "ipc_mode": "hostIPC", "network_mode": "hostNetwork"}
_NO_EQUIVALENT = (
    "init",
    "labels",
    "cpu_shares",
    "cpuset_cpus",
    "cpuset_mems",
    "pids_limit",
    "uts_mode",
    "userns_mode",
    "cgroupns",
    "devices",
    "security_opt",
)
SHM_VOLUME = "shm"


def kubernetes_notes(job: ModuleRun) -> list[str]:
    """What of the module's docker_arguments a Job cannot say: written to the run's log."""
    left_out = [key for key in job.module.docker_arguments if key in _NO_EQUIVALENT]
    if not left_out:
        return []
    return [
        "caduceus: docker_arguments without an equivalent in a Kubernetes Job, left out: "
        + ", ".join(left_out)
    ]


def _words(value: str | list[str]) -> list[str]:
    return shlex.split(value) if isinstance(value, str) else list(value)


def _security(job: ModuleRun, options: JobOptions) -> tuple[dict[str, Any], dict[str, Any]]:
    """The pod's and the container's securityContext."""
    user = module_user(job.module_name, job.module, options.allow_root)
    pod: dict[str, Any] = {"seccompProfile": {"type": "RuntimeDefault"}}
    container: dict[str, Any] = {
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
    }
    arguments = checked_docker_arguments(job, allow_root=options.allow_root)
    added = module_capabilities(job.module, root=user is None)
    added += [name for name in arguments.get("cap_add", []) if name not in added]
    if added:
        container["capabilities"]["add"] = added
    if arguments.get("privileged"):
        # Only with requires_root and CADUCEUS_PROCESSOR_ALLOW_ROOT (checked above).
        container.update(privileged=True, allowPrivilegeEscalation=True)
    if arguments.get("read_only"):
        container["readOnlyRootFilesystem"] = True
    if arguments.get("sysctls"):
        pod["sysctls"] = [{"name": k, "value": v} for k, v in arguments["sysctls"].items()]
    if user is None:
        pod["runAsNonRoot"] = False
    else:
        pod.update(runAsNonRoot=True, runAsUser=user[0], runAsGroup=user[1])
        if user == UNPRIVILEGED and os.getuid() == 0:
            # As in a container: nobody reads the input through the processor's group.
            pod["supplementalGroups"] = [os.getgid()]
    return pod, container


def _resources(job: ModuleRun) -> dict[str, Any]:
    module = job.module
    amounts: dict[str, str] = {
        "memory": f"{module.memory_mb}Mi",
        "cpu": f"{max(1, round(module.cpus * 1000))}m",
    }
    if module.gpu:
        amounts[GPU_RESOURCE] = "1"
    # Requests equal to limits: the scheduler reserves what the module may use, unless the
    # module asks for less to be reserved (docker_arguments mem_reservation).
    requests = dict(amounts)
    reservation = module.docker_arguments.get("mem_reservation")
    if isinstance(reservation, int) and reservation < module.memory_mb * 1024 * 1024:
        requests["memory"] = f"{max(1, reservation // (1024 * 1024))}Mi"
    return {"requests": requests, "limits": dict(amounts)}


def job_manifest(job: ModuleRun, options: JobOptions, name: str) -> dict[str, Any]:
    """The Job for this run, as the API takes it (raises RunnerError for a refused module)."""
    module = job.module
    if not module.image:
        raise RunnerError(f"module {job.module_name}: only a module with an image runs as a Job")
    pod_security, container_security = _security(job, options)
    labels = {
        COMPONENT_LABEL: COMPONENT,
        TASK_LABEL: label_value(job.task_id),
        MODULE_LABEL: label_value(job.module_name),
        NETWORK_LABEL: "allowed" if module.network else "none",
    }
    annotations = {TASK_LABEL: job.task_id, MODULE_LABEL: job.module_name}
    environment = container_environment(job)
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": module.image,
        "imagePullPolicy": "Always" if module.pull == "always" else options.pull_policy,
        "env": [{"name": key, "value": value} for key, value in environment.items()],
        "volumeMounts": _volume_mounts(job, options),
        "resources": _resources(job),
        "securityContext": container_security,
        "workingDir": OUT_PATH,
    }
    arguments = module.docker_arguments
    if "entrypoint" in arguments:
        container["command"] = _words(arguments["entrypoint"])
    if "command" in arguments:
        container["args"] = _words(arguments["command"])
    if "working_dir" in arguments:
        container["workingDir"] = arguments["working_dir"]
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        # A module has no business with the cluster's API nor with its services' addresses.
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": pod_security,
        "containers": [container],
        "volumes": [
            {"name": DATA_VOLUME, "persistentVolumeClaim": {"claimName": options.data_claim}}
        ],
    }
    for key, field in _POD_HOST.items():
        if key in arguments:  # "host", with root allowed (checked in _security)
            pod_spec[field] = True
    if "hostname" in arguments:
        pod_spec["hostname"] = arguments["hostname"]
    if module.node_selector:
        pod_spec["nodeSelector"] = dict(module.node_selector)
    if "shm_size" in arguments:
        # /dev/shm as memory of the pod's own, as large as the module asked for.
        pod_spec["volumes"].append(
            {
                "name": SHM_VOLUME,
                "emptyDir": {"medium": "Memory", "sizeLimit": str(arguments["shm_size"])},
            }
        )
        container["volumeMounts"].append({"name": SHM_VOLUME, "mountPath": "/dev/shm"})  # noqa: S108 - in the pod
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": labels, "annotations": annotations},
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": module.timeout_seconds,
            "ttlSecondsAfterFinished": options.ttl_seconds,
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }


@dataclass(frozen=True)
class _Ended:
    exit_code: int | None
    timed_out: bool
    notes: list[str]
    cancelled: bool = False


class KubernetesRunner:
    """Submits each run as a Job, waits for it, keeps its log and deletes it."""

    def __init__(self, options: JobOptions, api_client: Any | None = None) -> None:
        self.options = options
        self._api_client = api_client
        self._namespace = options.namespace

    # -- the API -------------------------------------------------------------------------

    def _api(self) -> tuple[Any, Any]:
        """The batch and core API of the cluster (RunnerError without a configuration)."""
        if self._api_client is None:
            try:
                if os.environ.get("KUBERNETES_SERVICE_HOST"):
                    k8s_config.load_incluster_config()  # type: ignore[no-untyped-call]
                else:
                    k8s_config.load_kube_config()  # type: ignore[no-untyped-call]
            except (k8s_config.ConfigException, OSError) as exc:
                raise RunnerError(f"no Kubernetes configuration: {exc}") from exc
            self._api_client = k8s.ApiClient()
        return k8s.BatchV1Api(self._api_client), k8s.CoreV1Api(self._api_client)

    @property
    def namespace(self) -> str:
        if not self._namespace:
            try:
                self._namespace = SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or "default"
            except OSError:
                self._namespace = "default"
        return self._namespace

    # -- a run ---------------------------------------------------------------------------

    def run(self, job: ModuleRun) -> RunOutcome:
        name = job_name(job)
        manifest = job_manifest(job, self.options, name)
        batch, core = self._api()
        security = manifest["spec"]["template"]["spec"]["securityContext"]
        if "runAsUser" in security:
            _hand_over_folders(job, f"{security['runAsUser']}:{security['runAsGroup']}")
        job.log_path.parent.mkdir(parents=True, exist_ok=True)
        notes = kubernetes_notes(job)
        if notes:
            with job.log_path.open("a") as out:
                out.writelines(f"{note}\n" for note in notes)
        started = time.monotonic()
        try:
            batch.create_namespaced_job(
                self.namespace, k8s.V1Job.from_dict(manifest), _request_timeout=REQUEST_TIMEOUT
            )
        except _API_ERRORS as exc:
            raise RunnerError(
                f"module {job.module_name}: the Job could not be created: {_why(exc)}"
            ) from exc
        log.info("module %s runs as Job %s/%s", job.module_name, self.namespace, name)
        try:
            ended = self._wait(batch, core, job, name)
            seconds = time.monotonic() - started
            self._write_log(core, name, job.log_path, ended.notes)
            return RunOutcome(
                exit_code=ended.exit_code,
                timed_out=ended.timed_out,
                seconds=seconds,
                cancelled=ended.cancelled,
            )
        finally:
            self._delete(batch, name)

    def _wait(self, batch: Any, core: Any, job: ModuleRun, name: str) -> _Ended:
        limit = job.module.timeout_seconds
        deadline = time.monotonic() + limit + self.options.grace_seconds
        answered = time.monotonic()
        while True:
            try:
                status = batch.read_namespaced_job_status(
                    name, self.namespace, _request_timeout=REQUEST_TIMEOUT
                ).status
                pod = self._pod(core, name)
                answered = time.monotonic()
            except _API_ERRORS as exc:
                if isinstance(exc, ApiException) and exc.status == 404:
                    # Not an outage: the API answered that the Job is gone. A processor that
                    # took the task over removes the Jobs left of it; or someone deleted it.
                    raise RunnerError(
                        f"the Job {name} was deleted while the module ran (by another "
                        "processor that took the task over, or by hand)"
                    ) from exc
                if time.monotonic() - answered > API_PATIENCE_SECONDS:
                    raise RunnerError(f"lost the Kubernetes API: {_why(exc)}") from exc
                status = pod = None
            ended = _job_end(status, pod, job)
            if ended is not None:
                return ended
            waiting = _waiting(pod)
            if waiting is not None and waiting[0] in FATAL_WAITING:
                raise RunnerError(
                    f"module {job.module_name}: image {job.module.image} cannot run: "
                    f"{waiting[0]}: {waiting[1]}"
                )
            if time.monotonic() >= deadline:
                note = f"caduceus: stopped after its time limit of {limit} s (the Job never ended)"
                return _Ended(None, True, [note])
            if job.cancelled():  # the Job is deleted on the way out, which stops its pod
                note = "caduceus: stopped because the processor is stopping; the step runs again"
                return _Ended(None, False, [note], cancelled=True)
            time.sleep(self.options.poll_seconds)

    def _pod(self, core: Any, name: str) -> Any | None:
        pods = core.list_namespaced_pod(
            self.namespace, label_selector=f"job-name={name}", _request_timeout=REQUEST_TIMEOUT
        ).items
        return pods[-1] if pods else None

    def _write_log(self, core: Any, name: str, log_path: Path, notes: list[str]) -> None:
        """The pod's output (stdout and stderr, interleaved), then the runner's notes."""
        with log_path.open("ab") as out:
            try:
                pod = self._pod(core, name)
                if pod is None:
                    out.write(b"caduceus: the Job started no pod, so there is no output\n")
                else:
                    # Streamed as bytes: a module's output may be large, or not UTF-8.
                    response = core.read_namespaced_pod_log(
                        pod.metadata.name,
                        self.namespace,
                        container=CONTAINER_NAME,
                        _preload_content=False,
                        _request_timeout=REQUEST_TIMEOUT,
                    )
                    try:
                        for chunk in response.stream(65536):
                            out.write(chunk)
                    finally:
                        response.release_conn()
            except _API_ERRORS as exc:
                out.write(f"\ncaduceus: the pod's output could not be read: {_why(exc)}\n".encode())
            for note in notes:
                out.write(f"\n{note}\n".encode())

    def _delete(self, batch: Any, name: str) -> None:
        try:
            # Background: the pod goes with its Job, without waiting here.
            batch.delete_namespaced_job(
                name,
                self.namespace,
                propagation_policy="Background",
                _request_timeout=REQUEST_TIMEOUT,
            )
        except ApiException as exc:
            if exc.status != 404:
                log.warning("could not delete Job %s: %s", name, _why(exc))
        except _API_ERRORS as exc:
            log.warning("could not delete Job %s: %s", name, _why(exc))

    # -- leftovers -----------------------------------------------------------------------

    def remove_leftovers(self, task_id: str) -> int:
        """Delete the Jobs of this task (of a processor that died); how many."""
        batch, _core = self._api()
        selector = f"{TASK_LABEL}={label_value(task_id)}"
        try:
            found = batch.list_namespaced_job(
                self.namespace, label_selector=selector, _request_timeout=REQUEST_TIMEOUT
            ).items
        except _API_ERRORS as exc:
            raise RunnerError(f"cannot list the Jobs of task {task_id}: {_why(exc)}") from exc
        for leftover in found:
            log.warning("deleting a leftover Job %s of task %s", leftover.metadata.name, task_id)
            self._delete(batch, leftover.metadata.name)
        return len(found)


def _job_end(status: Any, pod: Any, job: ModuleRun) -> _Ended | None:
    """How the Job ended, or None while it runs."""
    if status is None:
        return None
    for condition in status.conditions or []:
        if condition.status != "True" or condition.type not in ("Complete", "Failed"):
            continue
        terminated = _terminated(pod)
        exit_code = terminated.exit_code if terminated is not None else None
        if condition.type == "Complete":
            return _Ended(0 if exit_code is None else exit_code, False, [])
        if condition.reason == "DeadlineExceeded":
            note = f"caduceus: killed after its time limit of {job.module.timeout_seconds} s"
            return _Ended(None, True, [note])
        notes = []
        if terminated is not None and terminated.reason == "OOMKilled":
            notes.append(f"caduceus: killed for lack of memory (memory_mb={job.module.memory_mb})")
        elif exit_code is None:
            why = f"{condition.reason or 'Failed'}: {condition.message or ''}".rstrip(": ")
            notes.append(f"caduceus: the Job failed without an exit code ({why})")
        return _Ended(exit_code, False, notes)
    return None


def _container_state(pod: Any) -> Any | None:
    statuses = (pod.status.container_statuses if pod is not None and pod.status else None) or []
    for status in statuses:
        if status.name == CONTAINER_NAME:
            return status.state
    return None


def _terminated(pod: Any) -> Any | None:
    state = _container_state(pod)
    return state.terminated if state is not None else None


def _waiting(pod: Any) -> tuple[str, str] | None:
    state = _container_state(pod)
    if state is None or state.waiting is None:
        return None
    return str(state.waiting.reason or ""), str(state.waiting.message or "")


def _why(exc: BaseException) -> str:
    if isinstance(exc, ApiException):
        with contextlib.suppress(ValueError, AttributeError):
            message = json.loads(exc.body or "{}").get("message")
            if message:
                return f"{exc.status} {exc.reason}: {message}"
        return f"{exc.status} {exc.reason}"
    return str(exc) or type(exc).__name__
