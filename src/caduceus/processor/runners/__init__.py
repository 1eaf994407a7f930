"""Module runners: one module per way of starting a module (container engine, local process).

A module with an image runs in a container through the Docker Engine API (Docker or Podman); a
module with a command runs as a local process, in a bubblewrap sandbox where bwrap exists. A
module with an image runs as a Kubernetes Job instead when CADUCEUS_PROCESSOR_RUNNER=kubernetes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sqlalchemy.engine import make_url

from caduceus.core.config.models import Module
from caduceus.core.settings import Settings
from caduceus.processor.runners.base import ModuleRun, Runner, RunnerError, RunOutcome


def runner_factory(settings: Settings) -> Callable[[Module], Runner]:
    """The runner for each module, with one container engine client shared by all.

    The Kubernetes runner is made at once: a processor set up for it without the data claim or
    the client refuses to start with the reason, instead of failing every task's step."""
    shared: dict[str, Runner] = {}
    if settings.processor_runner == "kubernetes":
        shared["kubernetes"] = _kubernetes_runner(settings)

    def runner_for(module: Module) -> Runner:
        if module.image and "kubernetes" in shared:
            return shared["kubernetes"]
        if module.image:
            if "container" not in shared:
                from caduceus.processor.runners.container import ContainerRunner

                shared["container"] = ContainerRunner(
                    settings.processor_docker_url,
                    allow_root=settings.processor_allow_root,
                    volume_root=settings.processor_volume_root,
                )
            return shared["container"]
        from caduceus.processor.runners.local import local_runner

        return local_runner(
            module,
            readonly_paths=settings.processor_sandbox_paths,
            private_paths=private_paths(settings),
        )

    return runner_for


def private_paths(settings: Settings) -> list[Path]:
    """caduceus's own files, which no module is ever shown: the data root (but for the task's
    own folders), the secrets key file and an SQLite database with its companion files."""
    paths = [settings.home, settings.secrets_key_path]
    url = make_url(settings.resolved_database_url)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        database = Path(url.database)
        paths += [database, *(Path(f"{database}{end}") for end in ("-wal", "-shm", "-journal"))]
    return paths


def _kubernetes_runner(settings: Settings) -> Runner:
    if not settings.processor_kubernetes_data_claim:
        raise RunnerError(
            "CADUCEUS_PROCESSOR_KUBERNETES_DATA_CLAIM is not set: module Jobs need the claim "
            "of the shared data root"
        )
    try:
        from caduceus.processor.runners.kubernetes import JobOptions, KubernetesRunner
    except ImportError as exc:
        raise RunnerError(
            f"the Kubernetes client is not installed ({exc}): pip install 'caduceus[kubernetes]'"
        ) from exc
    return KubernetesRunner(
        JobOptions(
            data_root=settings.home,
            data_claim=settings.processor_kubernetes_data_claim,
            namespace=settings.processor_kubernetes_namespace,
            allow_root=settings.processor_allow_root,
            volume_root=settings.processor_volume_root,
            pull_policy=settings.processor_kubernetes_pull_policy,
            ttl_seconds=settings.processor_kubernetes_job_ttl_seconds,
        )
    )


__all__ = ["ModuleRun", "RunOutcome", "Runner", "RunnerError", "runner_factory"]
