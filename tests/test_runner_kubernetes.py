"""The Kubernetes runner: the Job it submits for a module, and how it follows that Job.

No cluster runs here. The Job specifications are checked field by field, and the runner's
control flow (create, wait, read the log, delete; failures, time limits, a missing image, a
processor without the right to create Jobs) runs against tests/support/fake_kubernetes.py, a
small HTTP server that speaks the few API endpoints the official client calls. That fake is
the only mock: it stands for the cluster that cannot run on this machine. The last test takes
a received task through the processor's pipeline with its module run as Jobs of that fake
cluster (SQLite and PostgreSQL).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("kubernetes")

from kubernetes import client as k8s

from caduceus.core.config.models import Module
from caduceus.core.settings import Settings
from caduceus.core.storage import DataRoot
from caduceus.dispatcher.dispatch import restart
from caduceus.processor.pipeline import Pipeline
from caduceus.processor.runners import RunnerError, runner_factory
from caduceus.processor.runners.base import ModuleRun
from caduceus.processor.runners.kubernetes import (
    JobOptions,
    KubernetesRunner,
    job_manifest,
    label_value,
)
from tests.support.fake_kubernetes import Script, fake_cluster
from tests.support.pipelines import task_for_modules
from tests.support.processes import Caduceus
from tests.support.rows import events, tasks

TASK = "3f2b8c1e-7d4a-5b6c-8e9f-0a1b2c3d4e5f"


def _run(
    root: Path, module: Module, name: str = "seg model", persistence: bool = False
) -> ModuleRun:
    task = root / "processing" / TASK / "steps" / "0"
    (task / "in").mkdir(parents=True)
    (task / "in" / "task.json").write_text("{}")
    (task / "out").mkdir()
    persistent = root / "persistence" / name if persistence else None
    if persistent is not None:
        persistent.mkdir(parents=True)
    return ModuleRun(
        task_id=TASK,
        module_name=name,
        module=module,
        in_dir=task / "in",
        out_dir=task / "out",
        log_path=root / "processing" / TASK / "logs" / "0-seg.log",
        persistence_dir=persistent,
        environment=dict(module.environment),
    )


def _options(root: Path, **overrides: Any) -> JobOptions:
    values: dict[str, Any] = {"data_root": root, "data_claim": "caduceus-data", "namespace": "ns"}
    values.update(overrides)
    return JobOptions(**values)


def _pod(manifest: dict[str, Any]) -> dict[str, Any]:
    pod: dict[str, Any] = manifest["spec"]["template"]["spec"]
    return pod


def _mounts(manifest: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    container = _pod(manifest)["containers"][0]
    return {
        m["mountPath"]: (m.get("subPath", ""), m["readOnly"]) for m in container["volumeMounts"]
    }


# -- the Job's specification ---------------------------------------------------------------


def test_a_plain_module_runs_confined_within_its_limits(tmp_path: Path) -> None:
    module = Module(
        image="registry.example/seg:1.2",
        memory_mb=2048,
        cpus=1.5,
        timeout_seconds=900,
        environment={"MODEL": "lung", "MERCURE_IN_DIR": "/elsewhere"},
    )
    manifest = job_manifest(_run(tmp_path, module), _options(tmp_path), "caduceus-seg-1")
    spec = manifest["spec"]
    assert spec["backoffLimit"] == 0
    assert spec["activeDeadlineSeconds"] == 900
    assert spec["ttlSecondsAfterFinished"] == 3600
    pod = _pod(manifest)
    assert pod["restartPolicy"] == "Never"
    assert pod["automountServiceAccountToken"] is False
    assert pod["volumes"] == [
        {"name": "data", "persistentVolumeClaim": {"claimName": "caduceus-data"}}
    ]
    # Same user as the processor (never root): the module reads and writes caduceus's files.
    expected_user = (65534, 65534) if os.getuid() == 0 else (os.getuid(), os.getgid())
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == (
        expected_user
    )
    container = pod["containers"][0]
    assert container["image"] == "registry.example/seg:1.2"
    assert container["imagePullPolicy"] == "IfNotPresent"
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    limits = {"memory": "2048Mi", "cpu": "1500m"}
    assert container["resources"] == {"requests": limits, "limits": limits}
    env = {item["name"]: item["value"] for item in container["env"]}
    # The folder variables tell the truth whatever the module's environment says.
    assert env["MERCURE_IN_DIR"] == env["MONAI_INPUTPATH"] == "/tmp/data"
    assert env["MERCURE_OUT_DIR"] == env["HOLOSCAN_OUTPUT_PATH"] == "/tmp/output"
    assert env["MODEL"] == "lung"
    # The task's folders, as subPaths of the shared claim, the input read-only.
    step = f"processing/{TASK}/steps/0"
    assert _mounts(manifest) == {
        "/tmp/data": (f"{step}/in", True),
        "/tmp/output": (f"{step}/out", False),
    }
    labels = manifest["metadata"]["labels"]
    assert labels["caduceus.network"] == "none"  # the NetworkPolicy's selector
    assert labels["caduceus.task"] == TASK
    assert manifest["metadata"]["annotations"]["caduceus.module"] == "seg model"
    assert _pod_labels(manifest) == labels


def _pod_labels(manifest: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = manifest["spec"]["template"]["metadata"]["labels"]
    return labels


def test_gpu_network_and_pull_always(tmp_path: Path) -> None:
    module = Module(image="seg:2", gpu=True, network=True, pull="always")
    manifest = job_manifest(_run(tmp_path, module), _options(tmp_path), "j")
    container = _pod(manifest)["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["imagePullPolicy"] == "Always"
    assert manifest["metadata"]["labels"]["caduceus.network"] == "allowed"


def test_root_only_when_allowed(tmp_path: Path) -> None:
    module = Module(image="needs-root:1", requires_root=True)
    run = _run(tmp_path, module)
    with pytest.raises(RunnerError, match="needs root"):
        job_manifest(run, _options(tmp_path), "j")
    manifest = job_manifest(run, _options(tmp_path, allow_root=True), "j")
    pod = _pod(manifest)
    assert pod["securityContext"]["runAsNonRoot"] is False
    assert "runAsUser" not in pod["securityContext"]
    capabilities = pod["containers"][0]["securityContext"]["capabilities"]
    assert capabilities["drop"] == ["ALL"]
    assert "SYS_ADMIN" not in capabilities["add"]
    assert pod["containers"][0]["securityContext"]["allowPrivilegeEscalation"] is False


def test_persistence_and_extra_volumes_are_subpaths_of_the_claim(tmp_path: Path) -> None:
    models = tmp_path / "models" / "lung"
    models.mkdir(parents=True)
    module = Module(image="seg:3", persistence=True, volumes=[f"{models}:/models:ro"])
    run = _run(tmp_path, module, persistence=True)
    manifest = job_manifest(run, _options(tmp_path, volume_root=tmp_path / "models"), "j")
    mounts = _mounts(manifest)
    assert mounts["/tmp/persistence"] == ("persistence/seg model", False)
    assert mounts["/models"] == ("models/lung", True)
    env = {item["name"]: item["value"] for item in _pod(manifest)["containers"][0]["env"]}
    assert env["MODULE_PERSISTENCE_DIR"] == "/tmp/persistence"


def test_volumes_refused_outside_the_allowed_folder_or_the_claim(tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    module = Module(image="seg:3", volumes=[f"{outside}:/x"])
    run = _run(root, module)
    with pytest.raises(RunnerError, match="CADUCEUS_PROCESSOR_VOLUME_ROOT"):
        job_manifest(run, _options(root), "j")
    with pytest.raises(RunnerError, match="not on the shared data volume"):
        job_manifest(run, _options(root, volume_root=tmp_path), "j")
    over = Module(image="seg:3", volumes=[f"{root}:/tmp/output"])
    with pytest.raises(RunnerError, match="runner's own"):
        job_manifest(_run(tmp_path / "b", over), _options(tmp_path / "b", volume_root=root), "j")


def test_labels_stay_valid_and_distinct() -> None:
    assert label_value("seg model") != label_value("seg_model")
    long = label_value("x" * 64)
    assert len(long) <= 63 and long[0].isalnum() and long[-1].isalnum()
    assert label_value(TASK) == TASK


def test_the_settings_choose_the_runner(tmp_path: Path) -> None:
    module = Module(image="seg:1")
    settings = Settings(home=tmp_path, processor_runner="kubernetes")
    with pytest.raises(RunnerError, match="DATA_CLAIM"):
        runner_factory(settings)(module)
    # A processor set up so refuses to start, saying why, instead of failing every task.
    env = {**os.environ, "CADUCEUS_HOME": str(tmp_path), "CADUCEUS_PROCESSOR_RUNNER": "kubernetes"}
    env.pop("CADUCEUS_DATABASE_URL", None)
    started = subprocess.run(
        [sys.executable, "-m", "caduceus", "processor"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert started.returncode == 2
    assert "CADUCEUS_PROCESSOR_KUBERNETES_DATA_CLAIM is not set" in started.stderr
    settings = Settings(
        home=tmp_path, processor_runner="kubernetes", processor_kubernetes_data_claim="data"
    )
    runner_for = runner_factory(settings)
    assert isinstance(runner_for(module), KubernetesRunner)
    assert runner_for(module) is runner_for(module)
    assert not isinstance(runner_for(Module(command=["true"], sandbox=False)), KubernetesRunner)


# -- following the Job (against the fake API server) ----------------------------------------


def _runner(root: Path, url: str, **overrides: Any) -> KubernetesRunner:
    configuration = k8s.Configuration(host=url)
    options = _options(root, poll_seconds=0.01, **overrides)
    return KubernetesRunner(options, api_client=k8s.ApiClient(configuration))


def test_a_module_runs_and_its_output_and_log_are_kept(tmp_path: Path) -> None:
    def module(mounts: dict[str, Path]) -> None:
        (mounts["/tmp/output"] / "result.dcm").write_bytes(
            (mounts["/tmp/data"] / "task.json").read_bytes()
        )

    with fake_cluster(tmp_path) as (cluster, url):
        cluster.script = Script(exit_code=0, output="segmenting\ndone\n", module=module)
        run = _run(tmp_path, Module(image="seg:1"))
        outcome = _runner(tmp_path, url).run(run)
        assert outcome.ok
        assert (run.out_dir / "result.dcm").read_text() == "{}"
        assert run.log_path.read_text() == "segmenting\ndone\n"
        (created,) = cluster.created
        assert cluster.namespaces == ["ns"]
        assert cluster.deleted == [created["metadata"]["name"]]
        assert cluster.jobs == {}


def test_a_failing_module_reports_its_exit_code(tmp_path: Path) -> None:
    with fake_cluster(tmp_path) as (cluster, url):
        cluster.script = Script(exit_code=3, output=b"no lungs found \xff\n")
        run = _run(tmp_path, Module(image="seg:1"))
        outcome = _runner(tmp_path, url).run(run)
        assert (outcome.exit_code, outcome.timed_out, outcome.ok) == (3, False, False)
        assert b"no lungs found \xff\n" in run.log_path.read_bytes(), "kept byte for byte"
        assert cluster.jobs == {}


def test_a_short_api_outage_does_not_fail_the_run(tmp_path: Path) -> None:
    with fake_cluster(tmp_path) as (cluster, url):
        cluster.script = Script(exit_code=0, output="fine\n", unavailable_reads=3)
        run = _run(tmp_path, Module(image="seg:1"))
        assert _runner(tmp_path, url).run(run).ok
        assert cluster.unavailable == 3
        assert cluster.jobs == {}


def test_out_of_memory_is_said_in_the_log(tmp_path: Path) -> None:
    with fake_cluster(tmp_path) as (cluster, url):
        cluster.script = Script(exit_code=137, terminated_reason="OOMKilled")
        run = _run(tmp_path, Module(image="seg:1", memory_mb=512))
        outcome = _runner(tmp_path, url).run(run)
        assert outcome.exit_code == 137
        assert "lack of memory (memory_mb=512)" in run.log_path.read_text()


def test_the_clusters_deadline_is_a_time_limit(tmp_path: Path) -> None:
    with fake_cluster(tmp_path) as (cluster, url):
        cluster.script = Script(exit_code=None, failed_reason="DeadlineExceeded", output="slow\n")
        run = _run(tmp_path, Module(image="seg:1", timeout_seconds=5))
        outcome = _runner(tmp_path, url).run(run)
        assert outcome.timed_out and outcome.exit_code is None
        log = run.log_path.read_text()
        assert "slow" in log and "time limit of 5 s" in log
        assert cluster.jobs == {}


def test_a_job_that_never_ends_is_stopped_by_the_runner(tmp_path: Path) -> None:
    with fake_cluster(tmp_path) as (cluster, url):
        cluster.script = Script(never_ends=True)
        run = _run(tmp_path, Module(image="seg:1", timeout_seconds=1))
        outcome = _runner(tmp_path, url, grace_seconds=0.0).run(run)
        assert outcome.timed_out
        assert cluster.jobs == {}, "the Job is deleted, which stops its pod"


def test_a_missing_image_fails_at_once_with_the_reason(tmp_path: Path) -> None:
    with fake_cluster(tmp_path) as (cluster, url):
        cluster.script = Script(waiting=("ImagePullBackOff", 'pull "seg:9": not found'))
        run = _run(tmp_path, Module(image="seg:9"))
        with pytest.raises(RunnerError, match=r"ImagePullBackOff.*not found"):
            _runner(tmp_path, url).run(run)
        assert cluster.jobs == {}


def test_a_processor_without_the_role_gets_the_apis_reason(tmp_path: Path) -> None:
    with fake_cluster(tmp_path) as (cluster, url):
        cluster.script = Script(create_status=403)
        run = _run(tmp_path, Module(image="seg:1"))
        with pytest.raises(RunnerError, match=r"403.*forbidden"):
            _runner(tmp_path, url).run(run)


def test_an_unreachable_api_is_a_runner_error(tmp_path: Path) -> None:
    run = _run(tmp_path, Module(image="seg:1"))
    configuration = k8s.Configuration(host="http://127.0.0.1:9")
    configuration.retries = 0
    runner = KubernetesRunner(_options(tmp_path), api_client=k8s.ApiClient(configuration))
    with pytest.raises(RunnerError, match="could not be created"):
        runner.run(run)


def test_a_cancelled_run_deletes_its_job_at_once(tmp_path: Path) -> None:
    """The processor is stopping: the Job is deleted (which stops its pod) and the run is
    reported as cancelled, not failed, long before the module's time limit."""
    with fake_cluster(tmp_path) as (cluster, url):
        cluster.script = Script(never_ends=True, output="working\n")
        began = time.monotonic()
        run = replace(
            _run(tmp_path, Module(image="seg:1", timeout_seconds=3600)),
            cancelled=lambda: time.monotonic() - began > 0.5,
        )
        outcome = _runner(tmp_path, url).run(run)
        assert outcome.cancelled and not outcome.timed_out and outcome.exit_code is None
        assert cluster.jobs == {} and len(cluster.deleted) == 1
        log = run.log_path.read_text()
        assert "working" in log and "the processor is stopping" in log


def test_a_job_deleted_while_it_runs_ends_the_run_at_once(tmp_path: Path) -> None:
    """Another processor that took the task over deletes this one's Job: the API's 404 says
    so, and the run ends with that reason instead of two minutes of waiting for an outage."""
    with fake_cluster(tmp_path) as (cluster, url):
        cluster.script = Script(never_ends=True)
        run = _run(tmp_path, Module(image="seg:1", timeout_seconds=300))

        def take_over() -> None:
            while not cluster.jobs:
                time.sleep(0.01)
            time.sleep(0.2)
            with cluster.lock:
                cluster.jobs.clear()

        thief = threading.Thread(target=take_over)
        thief.start()
        # Taken for an outage, it would end after two minutes with "lost the Kubernetes API".
        with pytest.raises(RunnerError, match="was deleted while the module ran"):
            _runner(tmp_path, url).run(run)
        thief.join()


def test_leftover_jobs_of_a_task_are_deleted(tmp_path: Path) -> None:
    with fake_cluster(tmp_path) as (cluster, url):
        runner = _runner(tmp_path, url)
        cluster.script = Script(never_ends=True)
        leftover = job_manifest(_run(tmp_path, Module(image="seg:1")), runner.options, "old")
        cluster.jobs["old"] = leftover
        cluster.jobs["other"] = {"metadata": {"name": "other", "labels": {"caduceus.task": "x"}}}
        assert runner.remove_leftovers(TASK) == 1
        assert list(cluster.jobs) == ["other"]


def test_the_jobs_match_the_kubernetes_schema(tmp_path: Path) -> None:
    validate = pytest.importorskip("kubernetes_validate")
    models = tmp_path / "models"
    models.mkdir()
    modules = {
        "plain": Module(image="seg:1"),
        "gpu and network": Module(image="seg:2", gpu=True, network=True, pull="always"),
        "root": Module(image="seg:3", requires_root=True, timeout_seconds=60),
        "volumes": Module(image="seg:4", persistence=True, volumes=[f"{models}:/models:ro"]),
    }
    for name, module in modules.items():
        run = _run(tmp_path / name.replace(" ", "-"), module, name=name, persistence=True)
        options = _options(tmp_path, allow_root=True, volume_root=models)
        manifest = job_manifest(run, options, f"caduceus-{name.replace(' ', '-')}-1")
        try:
            validate.validate(manifest, "1.32.0", strict=True)
        except validate.ValidationError as exc:
            pytest.fail(f"{name}: {exc.message}")


# -- the processor's pipeline with modules as Jobs --------------------------------------------


def _copy_images(mounts: dict[str, Path]) -> None:
    """The module, as the fake cluster runs it: its input's images to its output."""
    for image in mounts["/tmp/data"].glob("*.dcm"):
        (mounts["/tmp/output"] / image.name).write_bytes(image.read_bytes())


def test_a_task_processed_by_jobs_is_done_or_fails_with_the_modules_log(
    receiver: Caduceus, tmp_path: Path
) -> None:
    modules = {"copy": {"image": "registry.example/copy:1"}}
    cfg, task_id = task_for_modules(receiver, tmp_path, modules)
    with fake_cluster(receiver.home) as (cluster, url):
        runner = _runner(receiver.home, url)
        pipeline = Pipeline(receiver.engine(), DataRoot(receiver.home), lambda module: runner)
        cluster.script = Script(exit_code=2, output="weights missing\n")
        assert pipeline.run(cfg, task_id) == "error"
        [task] = tasks(receiver)
        assert task["error"] == "step 1 (copy): copy: exited with code 2"
        [failure] = events(receiver, "process.error")
        assert "weights missing" in failure["details"]["log_tail"]

        restart(receiver.engine(), task_id)
        cluster.script = Script(exit_code=0, output="copied\n", module=_copy_images)
        assert pipeline.run(cfg, task_id) == "done"
        folder = receiver.home / tasks(receiver)[0]["folder"]
        assert len(list((folder / "out").glob("*.dcm"))) == 3
        assert [
            job["spec"]["template"]["spec"]["containers"][0]["image"] for job in cluster.created
        ] == ["registry.example/copy:1"] * 2
        assert cluster.jobs == {}, "every Job is deleted once its run is over"
