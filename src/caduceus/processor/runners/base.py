"""What every module runner provides: run one module on one input folder, within limits.

A runner knows one way of starting a module (a container engine, a local process, a cluster
job). It never decides what a result means; the pipeline does (pipeline.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from caduceus.core.config.models import Module


class RunnerError(Exception):
    """The module could not be started at all (no engine, no image, no sandbox); says why."""


# How often a runner checks ModuleRun.cancelled while its module runs.
CANCEL_POLL_SECONDS = 1.0
# The uid and gid a module runs as when the processor itself runs as root: nobody, never root.
UNPRIVILEGED = (65534, 65534)


@dataclass(frozen=True)
class ModuleRun:
    """One run of one module: its folders, its environment and its limits."""

    task_id: str
    module_name: str
    module: Module
    in_dir: Path  # the input: DICOM files and task.json; read-only for the module
    out_dir: Path  # empty, writable
    log_path: Path  # the runner writes the module's output (stdout and stderr) here
    persistence_dir: Path | None = None  # kept between runs, when the module asks for it
    # The module's environment beyond the folder variables the runner sets itself.
    environment: dict[str, str] = field(default_factory=dict)
    # True once the processor is stopping or lost its lease: the runner stops the module
    # (it checks every CANCEL_POLL_SECONDS) and reports the run as cancelled, not failed.
    cancelled: Callable[[], bool] = field(default=lambda: False, compare=False)


@dataclass(frozen=True)
class RunOutcome:
    exit_code: int | None  # None when the module never ran or was killed
    timed_out: bool = False
    seconds: float = 0.0
    cancelled: bool = False  # stopped on ModuleRun.cancelled; the step is to run again

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and not self.cancelled


# The folder variables every module sees (mercure's names and the MONAI/Holoscan aliases).
IN_VARIABLES = ("MERCURE_IN_DIR", "MONAI_INPUTPATH", "HOLOSCAN_INPUT_PATH")
OUT_VARIABLES = ("MERCURE_OUT_DIR", "MONAI_OUTPUTPATH", "HOLOSCAN_OUTPUT_PATH")


def folder_environment(in_dir: str, out_dir: str) -> dict[str, str]:
    """The folder variables for a module that sees its folders at these paths."""
    return {**dict.fromkeys(IN_VARIABLES, in_dir), **dict.fromkeys(OUT_VARIABLES, out_dir)}


class Runner(Protocol):
    def run(self, job: ModuleRun) -> RunOutcome:
        """Run the module to its end or its time limit (module.timeout_seconds); write its
        output to job.log_path. Raise RunnerError when it cannot be started."""
        ...
