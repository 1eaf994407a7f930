"""Module runners: one module per way of starting a module (container engine, local process).

A module with an image runs in a container through the Docker Engine API (Docker or Podman); a
module with a command runs as a local process, in a bubblewrap sandbox where bwrap exists. A
cluster runner (Kubernetes Jobs) is one more module with the same interface.
"""

from __future__ import annotations

from collections.abc import Callable

from caduceus.core.config.models import Module
from caduceus.core.settings import Settings
from caduceus.processor.runners.base import ModuleRun, Runner, RunnerError, RunOutcome


def runner_factory(settings: Settings) -> Callable[[Module], Runner]:
    """The runner for each module, with one container engine client shared by all."""
    shared: dict[str, Runner] = {}

    def runner_for(module: Module) -> Runner:
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

        return local_runner(module, readonly_paths=settings.processor_sandbox_paths)

    return runner_for


__all__ = ["ModuleRun", "RunOutcome", "Runner", "RunnerError", "runner_factory"]
