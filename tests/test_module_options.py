"""A module's mercure options (issue 16, point 6): docker_arguments from an allow-list,
limits and placement, and a persistence folder shared between modules by name.

Validation runs without an engine; the container options run in real Podman containers (the
test image of tests/support/podman.py), where their effect shows inside the container (its
/proc/self/status, /proc/mounts, cgroup files); the Kubernetes Jobs are checked as manifests
(no cluster runs here). The shared persistence folder is taken through the processor's
pipeline with two modules in Podman.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy import Engine

from caduceus.core.config import files, store
from caduceus.core.config.docker_arguments import ALLOW_ROOT_KEY
from caduceus.core.config.models import STORED, Module
from caduceus.core.storage import DataRoot
from caduceus.processor.pipeline import Pipeline
from caduceus.processor.runners.base import ModuleRun, RunnerError
from caduceus.processor.runners.container import ContainerRunner, container_options
from tests.support.pipelines import task_for_modules
from tests.support.podman import IMAGE, Podman, start_podman
from tests.support.processes import Caduceus
from tests.support.rows import tasks
from tests.support.web import as_role

ROOT_ALLOWED = {ALLOW_ROOT_KEY: True}


def module(context: dict[str, Any] | None = None, **fields: Any) -> Module:
    return Module.model_validate({"image": IMAGE, **fields}, context=context)


def run_of(tmp_path: Path, mod: Module, name: str = "tester") -> ModuleRun:
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir(parents=True, exist_ok=True)
    out_dir.mkdir(exist_ok=True)
    return ModuleRun(
        task_id=f"test-{uuid.uuid4().hex}",
        module_name=name,
        module=mod,
        in_dir=in_dir,
        out_dir=out_dir,
        log_path=tmp_path / "module.log",
        environment=dict(mod.environment),
    )


# -- docker_arguments: the allow-list --------------------------------------------------------


def test_safe_arguments_are_accepted_and_their_values_normalised() -> None:
    checked = module(
        docker_arguments={
            "shm_size": "1g",
            "mem_reservation": 1048576,
            "read_only": True,
            "working_dir": "/work",
            "entrypoint": ["/bin/sh", "-c"],
            "command": "run --fast",
            "init": True,
            "hostname": "seg-model",
            "labels": {"team": "neuro"},
            "cpu_shares": 512,
            "cpuset_cpus": "0-1,3",
            "pids_limit": 64,
        }
    ).docker_arguments
    assert checked["shm_size"] == 1024**3 and checked["mem_reservation"] == 1048576
    assert checked["entrypoint"] == ["/bin/sh", "-c"] and checked["cpuset_cpus"] == "0-1,3"


# One example of each option that loosens the container's confinement.
ROOT_ONLY = {
    "privileged": True,
    "pid_mode": "host",
    "ipc_mode": "host",
    "uts_mode": "host",
    "userns_mode": "host",
    "cgroupns": "host",
    "network_mode": "host",
    "devices": ["/dev/nvidia0:/dev/nvidia0:rwm"],
    "cap_add": ["SYS_ADMIN"],
    "security_opt": ["seccomp=unconfined"],
    "sysctls": {"net.core.somaxconn": "1024"},
}


@pytest.mark.parametrize("key", sorted(ROOT_ONLY))
def test_each_root_only_argument_needs_requires_root_and_the_hosts_permission(key: str) -> None:
    arguments = {key: ROOT_ONLY[key]}
    with pytest.raises(
        ValidationError, match=f"docker_arguments -> {key}: root only.*requires_root"
    ):
        module(ROOT_ALLOWED, docker_arguments=arguments)
    with pytest.raises(
        ValidationError, match=f"docker_arguments -> {key}: root only.*PROCESSOR_ALLOW_ROOT"
    ):
        module(requires_root=True, docker_arguments=arguments)
    allowed = module(ROOT_ALLOWED, requires_root=True, docker_arguments=arguments)
    assert list(allowed.docker_arguments) == [key]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"mem_limit": "2g"}, "mem_limit: use memory_mb instead"),
        ({"nano_cpus": 2_000_000_000}, "nano_cpus: use cpus instead"),
        ({"runtime": "nvidia"}, "runtime: use gpu: true"),
        ({"device_requests": []}, "device_requests: use gpu: true"),
        ({"volumes": {"/etc": {"bind": "/etc"}}}, "volumes: use volumes .inside CADUCEUS_PRO"),
        ({"cap_drop": []}, "cap_drop: use the runner's own"),
        ({"user": "0"}, "user: use requires_root"),
        ({"environment": {"A": "1"}}, "environment: use environment instead"),
        ({"network_mode": "bridge"}, "network_mode: use network"),
        ({"oom_kill_disable": True}, "oom_kill_disable: not on the allow-list; allowed: comm"),
        ({"shm_size": "lots"}, "shm_size: a size in bytes"),
        ({"pids_limit": 4096}, "pids_limit: a whole number from 1 to 512"),
        ({"working_dir": "work"}, "working_dir: an absolute path"),
        ({"labels": {"caduceus.task": "x"}}, "labels: label 'caduceus.task': a plain name"),
        ({"cpuset_cpus": "all"}, "cpuset_cpus: CPU numbers and ranges"),
        ({"devices": ["/etc/shadow"]}, "devices: a list of"),
    ],
)
def test_refused_arguments_say_why_and_what_to_use(arguments: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        module(ROOT_ALLOWED, requires_root=True, docker_arguments=arguments)


def test_options_for_containers_only_and_persistence_folder_names() -> None:
    with pytest.raises(ValidationError, match="docker_arguments apply to a module's container"):
        Module(command=["/bin/true"], docker_arguments={"init": True})
    with pytest.raises(ValidationError, match="node_selector places a container's pod"):
        Module(command=["/bin/true"], node_selector={"gpu": "yes"})
    with pytest.raises(ValidationError, match="a Kubernetes label"):
        module(node_selector={"bad key!": "x"})
    assert module(node_selector={"nvidia.com/gpu.product": "A100"}).node_selector
    for bad in ("../etc", "a/b", ".hidden", "/abs", "two words", "x" * 65):
        with pytest.raises(ValidationError, match="persistence_folder_name"):
            module(persistence=True, persistence_folder_name=bad)
    with pytest.raises(ValidationError, match="persistence_folder_name needs persistence: true"):
        module(persistence_folder_name="shared")
    assert module(persistence=True, persistence_folder_name="shared-1.0").persistence


def test_saving_refuses_root_only_arguments_unless_the_host_allows_root() -> None:
    document = {
        "modules": {"gpu": {"image": "seg:1", "requires_root": True, "docker_arguments": ROOT_ONLY}}
    }
    with pytest.raises(files.ConfigFileError) as refused:
        files.parse(document, "request")
    text = str(refused.value)
    assert text.startswith("request is not valid:\nmodules -> gpu")
    for key in ROOT_ONLY:
        assert f"docker_arguments -> {key}: root only" in text, key
    loaded = files.parse(document, "request", allow_root_modules=True)
    assert loaded.config.modules["gpu"].docker_arguments["privileged"] is True


def test_a_stored_version_loads_but_its_root_only_arguments_do_not_run(tmp_path: Path) -> None:
    """Stored while root was allowed; the administrator has withdrawn it since."""
    stored = Module.model_validate(
        {"image": IMAGE, "requires_root": True, "docker_arguments": {"privileged": True}},
        context=STORED,
    )
    job = run_of(tmp_path, stored)
    with pytest.raises(RunnerError, match="needs root, which the administrator has not allowed"):
        container_options(job, allow_root=False, volume_root=None)
    options = container_options(job, allow_root=True, volume_root=None)
    assert options["privileged"] is True
    plain = Module.model_validate(
        {"image": IMAGE, "docker_arguments": {"privileged": True}}, context=STORED
    )
    with pytest.raises(RunnerError, match=r"privileged: root only.*requires_root"):
        container_options(run_of(tmp_path, plain), allow_root=True, volume_root=None)


# -- in real containers ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Podman]:
    service = start_podman(tmp_path_factory.mktemp("podman"))
    yield service
    service.stop()


def status_lines(text: str) -> dict[str, str]:
    found = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        found[key.strip()] = value.strip()
    return found


def test_limits_and_options_show_inside_the_container(podman: Podman, tmp_path: Path) -> None:
    script = (
        "exec 2>&1; grep -E '^Cpus_allowed_list:' /proc/self/status;"
        " grep ' /dev/shm ' /proc/mounts;"
        " echo pids: $(cat /sys/fs/cgroup/pids/pids.max /sys/fs/cgroup/pids.max 2>/dev/null);"
        " echo host: $(cat /proc/sys/kernel/hostname);"
        " echo cwd: $(pwd);"
        " touch /made-here; echo rootfs-write: $?"
    )
    mod = module(
        environment={"TEST_SCRIPT": script},
        docker_arguments={
            "cpuset_cpus": "0",
            "shm_size": "8m",
            "pids_limit": 64,
            "hostname": "seg-model",
            "working_dir": "/tmp",
            "read_only": True,
        },
    )
    job = run_of(tmp_path, mod)
    assert ContainerRunner(podman.url).run(job).ok, job.log_path.read_text()
    log = job.log_path.read_text()
    seen = status_lines(log)
    assert seen["Cpus_allowed_list"] == "0"  # what nproc counts: one CPU
    assert "size=8192k" in log
    assert seen["pids"] == "64"
    assert seen["host"] == "seg-model"
    assert seen["cwd"] == "/tmp"
    assert seen["rootfs-write"] == "1"


def test_root_only_arguments_reach_the_engine_only_when_allowed(
    podman: Podman, tmp_path: Path
) -> None:
    mod = module(
        ROOT_ALLOWED,
        requires_root=True,
        docker_arguments={"pid_mode": "host", "cap_add": ["SYS_PTRACE"]},
    )
    job = run_of(tmp_path, mod)
    with pytest.raises(RunnerError, match="needs root"):
        ContainerRunner(podman.url).run(job)
    assert podman.labelled(job.task_id) == []  # refused before anything was created
    options = container_options(job, allow_root=True, volume_root=None)
    created = podman.client.containers.create(**options)
    try:
        created.reload()
        host = created.attrs["HostConfig"]
        assert host["PidMode"] == "host"
        assert "SYS_PTRACE" in host["CapAdd"] or "CAP_SYS_PTRACE" in host["CapAdd"]
        assert "no-new-privileges" in host["SecurityOpt"]
    finally:
        created.remove(force=True)


COPY_AND = "cp /tmp/data/* /tmp/output/ && "


def test_modules_naming_the_same_persistence_folder_share_it(
    receiver: Caduceus, podman: Podman, tmp_path: Path
) -> None:
    """One module writes a file into its persistence folder, the next one in the rule reads
    it, because both name the folder "shared"; a third, without the name, has its own."""
    common = {"image": IMAGE, "persistence": True}
    modules = {
        "writer": {
            **common,
            "persistence_folder_name": "shared",
            "environment": {"TEST_SCRIPT": COPY_AND + "echo from-writer > /tmp/persistence/note"},
        },
        "reader": {
            **common,
            "persistence_folder_name": "shared",
            "environment": {
                "TEST_SCRIPT": COPY_AND + "cat /tmp/persistence/note > /tmp/output/seen.txt"
            },
        },
        "loner": {
            **common,
            "environment": {"TEST_SCRIPT": COPY_AND + "ls /tmp/persistence > /tmp/output/own.txt"},
        },
    }
    cfg, task_id = task_for_modules(receiver, tmp_path, modules)
    runner = ContainerRunner(podman.url)
    pipeline = Pipeline(receiver.engine(), DataRoot(receiver.home), lambda _module: runner)
    assert pipeline.run(cfg, task_id) == "done", tasks(receiver)[0]["error"]
    folder = receiver.home / tasks(receiver)[0]["folder"]
    assert (folder / "out" / "seen.txt").read_text() == "from-writer\n"
    assert (folder / "out" / "own.txt").read_text() == ""
    shared = receiver.home / "persistence" / "shared"
    assert (shared / "note").read_text() == "from-writer\n"
    assert (receiver.home / "persistence" / "loner").is_dir()
    assert not (receiver.home / "persistence" / "writer").exists()
    assert len(list((folder / "out").glob("*.dcm"))) == 3
    assert set(os.listdir(receiver.home / "persistence")) == {"loner", "shared"}


# -- Kubernetes: the Job's manifest ------------------------------------------------------------


def job_for(tmp_path: Path, mod: Module, allow_root: bool = False) -> dict[str, Any]:
    kubernetes = pytest.importorskip("caduceus.processor.runners.kubernetes")
    options = kubernetes.JobOptions(
        data_root=tmp_path, data_claim="caduceus-data", namespace="ns", allow_root=allow_root
    )
    folder = tmp_path / "processing" / "task" / "steps" / "0"
    manifest: dict[str, Any] = kubernetes.job_manifest(
        run_of(folder, mod, name="seg"), options, "caduceus-seg-1"
    )
    return manifest


def test_kubernetes_placement_limits_and_options(tmp_path: Path) -> None:
    mod = module(
        memory_mb=2048,
        gpu=True,
        node_selector={"nvidia.com/gpu.product": "A100", "pool": "ai"},
        docker_arguments={
            "mem_reservation": "512m",
            "shm_size": "1g",
            "entrypoint": ["python", "-m", "seg"],
            "command": "--fast --threads 2",
            "working_dir": "/app",
            "read_only": True,
            "hostname": "seg-model",
        },
    )
    manifest = job_for(tmp_path, mod)
    pod = manifest["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "A100", "pool": "ai"}
    assert container["resources"]["limits"] == {
        "memory": "2048Mi",
        "cpu": "1000m",
        "nvidia.com/gpu": "1",
    }
    assert container["resources"]["requests"]["memory"] == "512Mi"
    assert container["command"] == ["python", "-m", "seg"]
    assert container["args"] == ["--fast", "--threads", "2"]
    assert container["workingDir"] == "/app"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["privileged"] is False
    assert pod["hostname"] == "seg-model"
    assert {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": str(1024**3)}} in pod[
        "volumes"
    ]
    assert {"name": "shm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    validate = pytest.importorskip("kubernetes_validate")
    validate.validate(manifest, "1.32.0", strict=True)


def test_kubernetes_root_only_arguments_and_what_a_job_cannot_say(tmp_path: Path) -> None:
    kubernetes = pytest.importorskip("caduceus.processor.runners.kubernetes")
    mod = module(
        ROOT_ALLOWED,
        requires_root=True,
        docker_arguments={
            "privileged": True,
            "pid_mode": "host",
            "network_mode": "host",
            "cap_add": ["SYS_ADMIN"],
            "devices": ["/dev/fuse"],
            "cpuset_cpus": "0",
        },
    )
    with pytest.raises(RunnerError, match="needs root"):
        job_for(tmp_path / "refused", mod)
    manifest = job_for(tmp_path / "allowed", mod, allow_root=True)
    pod = manifest["spec"]["template"]["spec"]
    security = pod["containers"][0]["securityContext"]
    assert security["privileged"] is True and security["allowPrivilegeEscalation"] is True
    assert "SYS_ADMIN" in security["capabilities"]["add"]
    assert pod["hostPID"] is True and pod["hostNetwork"] is True
    notes = kubernetes.kubernetes_notes(run_of(tmp_path, mod))
    assert notes == [
        "caduceus: docker_arguments without an equivalent in a Kubernetes Job, left out: "
        "devices, cpuset_cpus"
    ]
    assert "hostPID" not in job_for(tmp_path / "plain", module())["spec"]["template"]["spec"]


# -- saving through the web ----------------------------------------------------------------------


def test_the_web_refuses_root_only_arguments_unless_the_host_allows_root(
    web: TestClient, web_engine: Engine
) -> None:
    csrf = as_role(web, web_engine, "admin")
    body = {
        "name": "seg",
        "image": "vendor/seg:2",
        "requires_root": True,
        "docker_arguments": {"privileged": True, "shm_size": "1g"},
    }
    refused = web.post("/api/modules", json=body, headers=csrf)
    assert refused.status_code == 422
    assert "docker_arguments -> privileged: root only" in refused.text
    assert "CADUCEUS_PROCESSOR_ALLOW_ROOT" in refused.text
    assert store.current(web_engine) is None, "nothing was stored"
    not_json = web.post("/api/modules", json={**body, "docker_arguments": "[]"}, headers=csrf)
    assert not_json.status_code == 422 and "JSON object" in not_json.text

    web.app.state.settings = web.app.state.settings.model_copy(  # type: ignore[attr-defined]
        update={"processor_allow_root": True}
    )
    added = web.post("/api/modules", json=body, headers=csrf)
    assert added.status_code == 201, added.text
    stored = store.current_or_default(web_engine).modules["seg"]
    assert stored.docker_arguments == {"privileged": True, "shm_size": 1024**3}
