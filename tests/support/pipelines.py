"""The processor's pipeline run inside a test, with modules that are small Python programs.

A module here runs as a local command with this interpreter (the container and Kubernetes
runners have their own tests); its files go in a folder a module running as nobody can enter
(see the reachable_tmp fixture).
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from typing import Any

from caduceus.core.config.models import Config
from caduceus.core.settings import Settings
from caduceus.core.storage import DataRoot
from caduceus.processor.pipeline import Pipeline
from caduceus.processor.runners import runner_factory
from tests.support.clock import later
from tests.support.processes import Caduceus
from tests.support.routing import router_for
from tests.support.rows import tasks
from tests.support.sending import send

# A module that copies its input to its output and notes when it started and ended in the file
# $COUNTER. Its environment steers it: SLEEP seconds of work, HOLD (a file) to wait on, FAIL_IF
# (a file) to fail while it exists, RESULT or RESULT_FILE for its result.json.
COUNTED = """
    import os, pathlib, shutil, sys, time
    src = pathlib.Path(os.environ["MERCURE_IN_DIR"])
    dst = pathlib.Path(os.environ["MERCURE_OUT_DIR"])
    with open(os.environ["COUNTER"], "a") as fh:
        fh.write(f"start {time.time()}\\n")
    time.sleep(float(os.environ.get("SLEEP", "0")))
    while pathlib.Path(os.environ.get("HOLD", "/nonexistent")).exists():
        time.sleep(0.1)
    if pathlib.Path(os.environ.get("FAIL_IF", "/nonexistent")).exists():
        print("the model could not load its weights")
        sys.exit(3)
    for path in src.glob("*.dcm"):
        shutil.copyfile(path, dst / path.name)
    if os.environ.get("RESULT") is not None:
        (dst / "result.json").write_text(os.environ["RESULT"])
    if os.environ.get("RESULT_FILE"):
        shutil.copyfile(os.environ["RESULT_FILE"], dst / "result.json")
    with open(os.environ["COUNTER"], "a") as fh:
        fh.write(f"end {time.time()}\\n")
"""


def module(tmp_path: Path, name: str, source: str, **options: Any) -> dict[str, Any]:
    """A module's configuration that runs `source` (a Python program) from tmp_path."""
    script = tmp_path / f"{name}.py"
    script.write_text(textwrap.dedent(source))
    # The sandbox is the default, but these modules need this interpreter's packages, which
    # a fresh sandbox does not see; the sandbox has its own tests (test_runner_local.py).
    return {"command": [sys.executable, str(script)], "sandbox": False, **options}


def pipeline_for(receiver: Caduceus) -> Pipeline:
    """A pipeline over the receiver's database and data root, with the real runners."""
    settings = Settings(home=receiver.home, database_url=receiver.database_url)
    return Pipeline(receiver.engine(), DataRoot(receiver.home), runner_factory(settings))


def task_for_modules(
    receiver: Caduceus, tmp_path: Path, modules: dict[str, Any], **rule: Any
) -> tuple[Config, str]:
    """Send a CT series and route it by one rule (options: `rule`) that processes it with
    these modules; the configuration, and the id of the task, queued for the processor."""
    send(receiver, tmp_path / "ct", count=3, modality="CT")
    cfg = Config.model_validate(
        {
            "targets": {"archive": {"type": "folder", "path": str(tmp_path / "archive")}},
            "modules": modules,
            "rules": {
                "ai": {"rule": "True", "action": "process", "modules": list(modules), **rule}
            },
        }
    )
    router_for(receiver).run_pass(cfg, later(61))
    [task] = tasks(receiver)
    return cfg, task["id"]
