"""The processor: mercure-compatible modules, run step by step, with failures that keep data.

Modules here are small Python programs run as local commands (the container runner has its
own tests against Podman). The end-to-end test goes through `caduceus run` with DCMTK on both
sides; the others run the pipeline in the test with the real local runner.
"""

from __future__ import annotations

import json
import os
import signal
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydicom import dcmread
from sqlalchemy import select

from caduceus.core.config.models import Config
from caduceus.core.db.models import TASK_TARGETS, TASKS
from caduceus.core.settings import Settings
from caduceus.core.storage import DataRoot
from caduceus.dispatcher.dispatch import restart
from caduceus.processor.pipeline import Pipeline
from caduceus.processor.runners import runner_factory
from tests.support.pipelines import COUNTED, module, pipeline_for, task_for_modules
from tests.support.processes import Caduceus
from tests.support.routing import router_for
from tests.support.rows import events, tasks
from tests.support.sending import send
from tests.support.storescp import start_storescp

TAGGER = """
    import json, os, pathlib
    from pydicom import dcmread
    src = pathlib.Path(os.environ["MERCURE_IN_DIR"])
    dst = pathlib.Path(os.environ["MERCURE_OUT_DIR"])
    settings = json.loads((src / "task.json").read_text())["process"]["settings"]
    for path in sorted(src.glob("*.dcm")):
        ds = dcmread(path)
        ds.SeriesDescription = settings["description"]
        ds.save_as(dst / path.name)
    print("tagged", len(list(dst.glob("*.dcm"))), "images as", settings["description"])
"""

ROUTER = """
    import json, os, pathlib, shutil
    src = pathlib.Path(os.environ["MERCURE_IN_DIR"])
    dst = pathlib.Path(os.environ["MERCURE_OUT_DIR"])
    for path in src.glob("*.dcm"):
        shutil.copyfile(path, dst / path.name)
    (dst / "result.json").write_text(json.dumps({
        "findings": 3,
        "__mercure_routing": {"target": ["scp"]},
        "__mercure_notification": {"text": "3 findings", "requested": True},
    }))
"""


@pytest.fixture
def tmp_path(reachable_tmp: Path) -> Path:
    """Every test here hands its modules files by path: see reachable_tmp."""
    return reachable_tmp


def test_two_step_pipeline_through_caduceus_run(launch: Any, tmp_path: Path) -> None:
    """Received, tagged by one module, routed by the next one's result.json, delivered."""
    scp = start_storescp(tmp_path / "scp", "+xa")
    archive = tmp_path / "archive"
    archive.mkdir()
    try:
        document = {
            "settings": {"series_complete_trigger": 1},
            "targets": {"scp": scp.target(), "archive": {"type": "folder", "path": str(archive)}},
            "modules": {
                # Secret settings are stored encrypted: the module still gets them in clear.
                "tagger": module(
                    tmp_path,
                    "tagger",
                    TAGGER,
                    settings={"description": "X"},
                    secret_settings=["description"],
                ),
                "router": module(tmp_path, "router", ROUTER),
            },
            "rules": {
                "ct_ai": {
                    "rule": "@Modality@ == 'CT'",
                    "action": "both",
                    "modules": ["tagger", "router"],
                    "module_settings": [{"description": "AI RESULT"}],
                    "targets": ["archive"],
                    "dynamic_routing": True,
                    "dynamic_routing_allowed_targets": ["scp", "archive"],
                }
            },
        }
        (tmp_path / "config.yaml").write_text(yaml.safe_dump(document))
        instance = launch("run", "--config", str(tmp_path / "config.yaml"))
        files = send(instance, tmp_path / "ct", count=5, modality="CT")
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not (
            tasks(instance) and tasks(instance)[0]["state"] in ("done", "error")
        ):
            time.sleep(0.2)
        [task] = tasks(instance)
        assert task["state"] == "done", task["error"]
        received = {dcmread(p).SOPInstanceUID: dcmread(p) for p in scp.files()}
        assert sorted(received) == sorted(dcmread(p).SOPInstanceUID for p in files)
        for original in files:
            sent = dcmread(original)
            got = received[sent.SOPInstanceUID]
            assert got.SeriesDescription == "AI RESULT"  # the module's change arrived
            assert got.PixelData == sent.PixelData
        assert list(archive.iterdir()) == [], "the module's routing replaced the rule's target"
        assert task["results"][1]["result"]["findings"] == 3
        [note] = events(instance, "process.notification")
        assert note["message"] == "3 findings"
        assert note["details"] == {"requested": True, "module": "router"}
        log = (instance.home / task["folder"] / "logs" / "0-tagger.log").read_text()
        assert "tagged 5 images as AI RESULT" in log
    finally:
        scp.stop()


# -- the pipeline in the test, with an explicit clock ------------------------------------


def starts(counter: Path) -> int:
    return sum(1 for line in counter.read_text().splitlines() if line.startswith("start"))


def test_a_failed_step_keeps_everything_and_a_restart_resumes_there(
    receiver: Caduceus, tmp_path: Path
) -> None:
    first, second = tmp_path / "first.count", tmp_path / "second.count"
    broken = tmp_path / "weights-missing"
    broken.touch()
    modules = {
        "one": module(tmp_path, "one", COUNTED, environment={"COUNTER": str(first)}),
        "two": module(
            tmp_path,
            "two",
            COUNTED,
            environment={"COUNTER": str(second), "FAIL_IF": str(broken)},
        ),
    }
    cfg, task_id = task_for_modules(receiver, tmp_path, modules)
    pipeline = pipeline_for(receiver)
    assert pipeline.run(cfg, task_id) == "error"
    [task] = tasks(receiver)
    assert task["error"] == "step 2 (two): two: exited with code 3"
    assert task["step"] == 1  # step one is done and recorded
    [failure] = events(receiver, "process.error")
    assert "the model could not load its weights" in failure["details"]["log_tail"]
    folder = receiver.home / task["folder"]
    assert len(list((folder / "in").glob("*.dcm"))) == 3  # the input is kept
    step_one = folder / task["results"][0]["folder"] / "out"
    assert len(list(step_one.glob("*.dcm"))) == 3

    broken.unlink()
    restart(receiver.engine(), task_id)
    assert tasks(receiver)[0]["state"] == "queued"
    assert pipeline.run(cfg, task_id) == "done"
    assert (starts(first), starts(second)) == (1, 2), "only the failed step ran again"
    assert len(list((folder / "out").glob("*.dcm"))) == 3


def test_a_module_past_its_time_limit_is_killed_and_the_task_fails(
    receiver: Caduceus, tmp_path: Path
) -> None:
    counter = tmp_path / "slow.count"
    modules = {
        "slow": module(
            tmp_path,
            "slow",
            COUNTED,
            environment={"COUNTER": str(counter), "SLEEP": "60"},
            timeout_seconds=2,
        )
    }
    cfg, task_id = task_for_modules(receiver, tmp_path, modules)
    assert pipeline_for(receiver).run(cfg, task_id) == "error"
    assert "killed after its time limit of 2 s" in tasks(receiver)[0]["error"]
    assert "end" not in counter.read_text()


@pytest.mark.parametrize(
    ("result", "reason"),
    [("[1, 2]", "result.json is not a JSON object"), ("{oops", "result.json is not valid JSON")],
)
def test_invalid_output_fails_the_task(
    receiver: Caduceus, tmp_path: Path, result: str, reason: str
) -> None:
    modules = {
        "odd": module(
            tmp_path,
            "odd",
            COUNTED,
            environment={"COUNTER": str(tmp_path / "c"), "RESULT": result},
        )
    }
    cfg, task_id = task_for_modules(receiver, tmp_path, modules)
    assert pipeline_for(receiver).run(cfg, task_id) == "error"
    assert reason in tasks(receiver)[0]["error"]


def test_a_missing_command_or_module_is_a_clear_error(receiver: Caduceus, tmp_path: Path) -> None:
    modules = {"ghost": {"command": ["/nonexistent/model-runner"], "sandbox": False}}
    cfg, task_id = task_for_modules(receiver, tmp_path, modules)
    assert pipeline_for(receiver).run(cfg, task_id) == "error"
    assert "not found" in tasks(receiver)[0]["error"]
    gone = cfg.model_copy(update={"modules": {}}, deep=True)
    restart(receiver.engine(), task_id)
    assert pipeline_for(receiver).run(gone, task_id) == "error"
    assert "module 'ghost' is no longer configured" in tasks(receiver)[0]["error"]


def test_retained_input_images_are_sent_along_with_the_results(
    receiver: Caduceus, tmp_path: Path
) -> None:
    derived = """
        import os, pathlib
        from pydicom import dcmread
        from pydicom.uid import generate_uid
        src = pathlib.Path(os.environ["MERCURE_IN_DIR"])
        dst = pathlib.Path(os.environ["MERCURE_OUT_DIR"])
        ds = dcmread(sorted(src.glob("*.dcm"))[0])
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SeriesDescription = "SUMMARY"
        ds.save_as(dst / "summary.dcm")
    """
    modules = {"summary": module(tmp_path, "summary", derived)}
    cfg, task_id = task_for_modules(receiver, tmp_path, modules, retain_input_images=True)
    assert pipeline_for(receiver).run(cfg, task_id) == "done"
    [task] = tasks(receiver)
    out = receiver.home / task["folder"] / "out"
    names = sorted(p.name for p in out.glob("*.dcm"))
    assert len(names) == 4 and "summary.dcm" in names
    assert task["file_count"] == 4


def test_a_module_can_discard_when_the_rule_allows_it(receiver: Caduceus, tmp_path: Path) -> None:
    discard = json.dumps({"__mercure_routing": {"discard": True}})
    modules = {
        "triage": module(
            tmp_path,
            "triage",
            COUNTED,
            environment={"COUNTER": str(tmp_path / "c"), "RESULT": discard},
        )
    }
    cfg, task_id = task_for_modules(
        receiver,
        tmp_path,
        modules,
        action="both",
        targets=["archive"],
        dynamic_routing=True,
    )
    assert pipeline_for(receiver).run(cfg, task_id) == "discarded"
    assert [e["message"] for e in events(receiver, "process.routing")] == [
        "the module discarded the task"
    ]


def test_routing_the_rule_does_not_allow_is_ignored(receiver: Caduceus, tmp_path: Path) -> None:
    wish = json.dumps({"__mercure_routing": {"target": ["elsewhere"]}})
    modules = {
        "triage": module(
            tmp_path,
            "triage",
            COUNTED,
            environment={"COUNTER": str(tmp_path / "c"), "RESULT": wish},
        )
    }
    cfg, task_id = task_for_modules(receiver, tmp_path, modules, action="both", targets=["archive"])
    assert pipeline_for(receiver).run(cfg, task_id) == "dispatching"
    with receiver.engine().connect() as conn:
        targets = conn.execute(select(TASK_TARGETS.c.target)).scalars().all()
    assert targets == ["archive"]
    [ignored] = events(receiver, "process.routing")
    assert ignored["severity"] == "warning"


def processor_in_module(
    receiver: Caduceus,
    launch: Any,
    tmp_path: Path,
    environment: dict[str, str],
    lease: dict[str, str] | None = None,
) -> Caduceus:
    """A real `caduceus processor` whose task's module (COUNTED, counting its starts in
    tmp_path/long.count) has started once."""
    counter = tmp_path / "long.count"
    modules = {"long": module(tmp_path, "long", COUNTED, environment=environment)}
    cfg, _ = task_for_modules(receiver, tmp_path, modules)
    (tmp_path / "config.yaml").write_text(
        yaml.safe_dump(cfg.model_dump(mode="json", context={"reveal_secrets": True}))
    )
    receiver.cli("config", "import", str(tmp_path / "config.yaml"))
    processor: Caduceus = launch("processor", home=receiver.home, **(lease or {}))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (counter.exists() and starts(counter) == 1):
        time.sleep(0.05)
    assert processor.process is not None
    return processor


def test_a_processor_killed_mid_module_is_taken_over_and_nothing_runs_twice_at_once(
    receiver: Caduceus, launch: Any, tmp_path: Path
) -> None:
    counter = tmp_path / "long.count"
    lease = {"CADUCEUS_PROCESSOR_LEASE_SECONDS": "3"}
    first = processor_in_module(
        receiver, launch, tmp_path, {"COUNTER": str(counter), "SLEEP": "4"}, lease
    )
    os.kill(first.process.pid, signal.SIGKILL)
    first.process.wait(10)
    assert tasks(receiver)[0]["state"] == "processing"

    launch("processor", home=receiver.home, **lease)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and tasks(receiver)[0]["state"] != "done":
        time.sleep(0.2)
    assert tasks(receiver)[0]["state"] == "done"
    lines = counter.read_text().splitlines()
    # The killed run's module died with its processor: it never finished, and the second run
    # began only after it was gone.
    assert [line.split()[0] for line in lines] == ["start", "start", "end"]
    with receiver.engine().connect() as conn:
        assert conn.execute(select(TASKS.c.step)).scalar_one() == 1


def test_a_processor_stopped_mid_module_hands_the_step_back_at_once(
    receiver: Caduceus, launch: Any, tmp_path: Path
) -> None:
    """SIGTERM (a restart, an upgrade) while a module runs: the module is stopped and the task
    released at the same step, without a failure. With the default 10-minute lease, another
    processor runs the step again at once."""
    counter = tmp_path / "long.count"
    hold = tmp_path / "hold"  # the module runs until this file is gone
    hold.touch()
    first = processor_in_module(
        receiver, launch, tmp_path, {"COUNTER": str(counter), "HOLD": str(hold)}
    )
    os.kill(first.process.pid, signal.SIGTERM)
    assert first.process.wait(60) == 0  # waiting for its module, it would never end
    [task] = tasks(receiver)
    assert (task["state"], task["step"], task["lease_owner"]) == ("processing", 0, None)
    assert not task["error"] and not events(receiver, "process.error")
    [interrupted] = events(receiver, "process.interrupted")
    assert "step 1 (long) stopped: the processor is stopping" in interrupted["message"]

    hold.unlink()
    launch("processor", home=receiver.home)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and tasks(receiver)[0]["state"] != "done":
        time.sleep(0.2)
    assert tasks(receiver)[0]["state"] == "done"
    # The stopped run never ended; the second one ran the step whole.
    assert [line.split()[0] for line in counter.read_text().splitlines()] == [
        "start",
        "start",
        "end",
    ]


def test_a_container_module_in_the_pipeline(receiver: Caduceus, tmp_path: Path) -> None:
    """The pipeline with the container runner on a real Podman service (Docker Engine API)."""
    from tests.support.podman import start_podman

    podman = start_podman(tmp_path / "podman")
    try:
        script = "cp /tmp/data/*.dcm /tmp/output/ && id -u && echo copied in a container"
        modules = {"copy": {"image": podman.image, "environment": {"TEST_SCRIPT": script}}}
        cfg, task_id = task_for_modules(receiver, tmp_path, modules)
        settings = Settings(
            home=receiver.home,
            database_url=receiver.database_url,
            processor_docker_url=podman.url,
        )
        pipeline = Pipeline(receiver.engine(), DataRoot(receiver.home), runner_factory(settings))
        assert pipeline.run(cfg, task_id) == "done", tasks(receiver)[0]["error"]
        [task] = tasks(receiver)
        folder = receiver.home / task["folder"]
        for original in (folder / "in").glob("*.dcm"):
            assert (folder / "out" / original.name).read_bytes() == original.read_bytes()
        log = (folder / "logs" / "0-copy.log").read_text()
        assert "copied in a container" in log
        assert log.split()[0] != "0", "the module does not run as root"
        assert podman.labelled(task_id) == []
    finally:
        podman.stop()


def test_several_processors_share_the_queue_and_each_task_runs_once(
    receiver: Caduceus, launch: Any, tmp_path: Path
) -> None:
    counter = tmp_path / "runs.log"
    script = """
        import os, pathlib, shutil, time, json
        src = pathlib.Path(os.environ["MERCURE_IN_DIR"])
        dst = pathlib.Path(os.environ["MERCURE_OUT_DIR"])
        task = json.loads((src / "task.json").read_text())["id"]
        with open(os.environ["COUNTER"], "a") as fh:
            fh.write(f"{task} {os.getppid()}\\n")
        time.sleep(1)
        for path in src.glob("*.dcm"):
            shutil.copyfile(path, dst / path.name)
    """
    for index in range(5):
        send(receiver, tmp_path / f"s{index}", count=2, modality="CT")
    document = {
        "modules": {
            "work": module(tmp_path, "work", script, environment={"COUNTER": str(counter)})
        },
        "rules": {"all": {"rule": "True", "action": "process", "modules": ["work"]}},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(document))
    receiver.cli("config", "import", str(tmp_path / "config.yaml"))
    cfg = Config.model_validate(document)
    router_for(receiver).run_pass(cfg, datetime.now(UTC) + timedelta(seconds=61))
    assert len(tasks(receiver)) == 5
    launch("processor", home=receiver.home, CADUCEUS_PROCESSOR_PARALLEL="2")
    launch("processor", home=receiver.home)
    deadline = time.monotonic() + 90
    # Who runs a task is its lease's owner (the module itself may be in a PID namespace of its
    # own, where its parent's pid says nothing); each run holds its lease for a second.
    owners: set[str] = set()
    while time.monotonic() < deadline and any(t["state"] != "done" for t in tasks(receiver)):
        owners |= {t["lease_owner"] for t in tasks(receiver) if t["lease_owner"]}
        time.sleep(0.2)
    assert [t["state"] for t in tasks(receiver)] == ["done"] * 5
    runs = [line.split() for line in counter.read_text().splitlines()]
    assert sorted(task for task, _ in runs) == sorted(t["id"] for t in tasks(receiver))
    assert len(owners) >= 2, "both processors took work"


def test_a_link_left_in_the_output_fails_the_step(receiver: Caduceus, tmp_path: Path) -> None:
    """A module must not make the next step or the dispatcher reach a file outside the task."""
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the PACS")
    linker = f"""
        import os, pathlib
        dst = pathlib.Path(os.environ["MERCURE_OUT_DIR"])
        os.symlink({str(secret)!r}, dst / "leak.dcm")
    """
    modules = {"linker": module(tmp_path, "linker", linker)}
    cfg, task_id = task_for_modules(receiver, tmp_path, modules, action="both", targets=["archive"])
    assert pipeline_for(receiver).run(cfg, task_id) == "error"
    assert "invalid output: leak.dcm is a symbolic link" in tasks(receiver)[0]["error"]


def test_a_failure_after_the_last_module_reruns_it_on_restart(
    receiver: Caduceus, tmp_path: Path
) -> None:
    """A "both" task whose last module wrote no DICOM files fails; a restart runs it again."""
    counter, empty = tmp_path / "c", tmp_path / "write-nothing"
    empty.touch()
    nothing = COUNTED.replace(
        "for path in src.glob",
        "for path in ([] if pathlib.Path(os.environ['EMPTY']).exists() else src.glob",
    ).replace('.glob("*.dcm"):\n', '.glob("*.dcm")):\n')
    modules = {
        "maybe": module(
            tmp_path, "maybe", nothing, environment={"COUNTER": str(counter), "EMPTY": str(empty)}
        )
    }
    cfg, task_id = task_for_modules(receiver, tmp_path, modules, action="both", targets=["archive"])
    pipeline = pipeline_for(receiver)
    assert pipeline.run(cfg, task_id) == "error"
    assert "produced no DICOM files to send" in tasks(receiver)[0]["error"]
    empty.unlink()
    restart(receiver.engine(), task_id)
    assert pipeline.run(cfg, task_id) == "dispatching"
    assert starts(counter) == 2
    with pytest.raises(LookupError, match="not in error"):
        restart(receiver.engine(), task_id)


def test_each_step_gets_its_own_answer_and_any_step_may_ask_for_a_notification(
    receiver: Caduceus, tmp_path: Path
) -> None:
    asks = json.dumps({"__mercure_notification": {"text": "look", "requested": True}})
    copy_all = """
        import os, pathlib, shutil
        src, dst = os.environ["MERCURE_IN_DIR"], os.environ["MERCURE_OUT_DIR"]
        print("input:", sorted(p.name for p in pathlib.Path(src).iterdir()))
        shutil.copytree(src, dst, dirs_exist_ok=True)
    """
    modules = {
        "first": module(
            tmp_path, "first", COUNTED, environment={"COUNTER": str(tmp_path / "c"), "RESULT": asks}
        ),
        "second": module(tmp_path, "second", copy_all),
    }
    cfg, task_id = task_for_modules(receiver, tmp_path, modules)
    assert pipeline_for(receiver).run(cfg, task_id) == "done"
    [task] = tasks(receiver)
    log = (receiver.home / task["folder"] / "logs" / "1-second.log").read_text()
    assert "result.json" not in log, "the first step's answer is not the second's input"
    assert task["results"][1]["result"] is None
    [note] = events(receiver, "process.notification")
    assert note["details"] == {"requested": True, "module": "first"}


@pytest.mark.parametrize(
    ("result", "reason"),
    [
        ('{"score": NaN}', "NaN is not a JSON value"),
        ('{"x": "' + "a" * (1024 * 1024) + '"}', "result.json is larger than"),
        ("[" * 100_000 + "]" * 100_000, "result.json is not valid JSON"),
    ],
)
def test_results_that_cannot_be_stored_fail_the_step(
    receiver: Caduceus, tmp_path: Path, result: str, reason: str
) -> None:
    answer = tmp_path / "answer.json"
    answer.write_text(result)
    modules = {
        "odd": module(
            tmp_path,
            "odd",
            COUNTED,
            environment={"COUNTER": str(tmp_path / "c"), "RESULT_FILE": str(answer)},
        )
    }
    cfg, task_id = task_for_modules(receiver, tmp_path, modules)
    assert pipeline_for(receiver).run(cfg, task_id) == "error"
    assert reason in tasks(receiver)[0]["error"]


def test_unexpected_failures_end_in_error_instead_of_a_loop(
    receiver: Caduceus, tmp_path: Path
) -> None:
    from caduceus.core.work_queue import PROCESSABLE, claim
    from caduceus.processor.pipeline import give_up_or_retry

    _, task_id = task_for_modules(
        receiver, tmp_path, {"m": {"command": ["/bin/true"], "sandbox": False}}
    )
    engine = receiver.engine()
    states = []
    for attempt in range(3):
        later = datetime.now(UTC) + timedelta(minutes=5 * attempt)
        assert claim(engine, "p", PROCESSABLE, now=later) == task_id
        states.append(give_up_or_retry(engine, task_id, "p", RuntimeError("bug")))
    assert states == ["processing", "processing", "error"]
    [task] = tasks(receiver)
    assert (
        task["error"] == "internal error in the processor: RuntimeError (see the processor's log)"
    )


def test_a_sandboxed_module_in_the_pipeline(receiver: Caduceus, tmp_path: Path) -> None:
    """The default for local commands: bubblewrap, seeing only its own folders."""
    import shutil as sh

    if sh.which("bwrap") is None:
        pytest.skip("bubblewrap (bwrap) is not installed")
    script = tmp_path / "copy.sh"
    script.write_text(
        '#!/bin/sh\nset -e\ncp "$MERCURE_IN_DIR"/*.dcm "$MERCURE_OUT_DIR"/\n'
        'ls "$(dirname "$(dirname "$MERCURE_IN_DIR")")" || echo "no view of other steps"\n'
        'cat "$CADUCEUS_DB" 2>/dev/null || echo "database unreadable"\n'
    )
    script.chmod(0o755)
    database = receiver.database_url.removeprefix("sqlite:///")
    modules = {"copy": {"command": [str(script)], "environment": {"CADUCEUS_DB": database}}}
    cfg, task_id = task_for_modules(receiver, tmp_path, modules)
    assert pipeline_for(receiver).run(cfg, task_id) == "done", tasks(receiver)[0]["error"]
    [task] = tasks(receiver)
    folder = receiver.home / task["folder"]
    assert len(list((folder / "out").glob("*.dcm"))) == 3
    log = (folder / "logs" / "0-copy.log").read_text()
    assert "database unreadable" in log


def test_a_killed_processors_task_is_taken_over_at_once_by_its_successor_on_this_host(
    receiver: Caduceus, launch: Any, tmp_path: Path
) -> None:
    """SIGKILL a real `caduceus processor` mid-module with the default 10-minute lease: a new
    processor on the same host sees that the holder is gone and runs the step again at once
    (before the fix: 600 s later)."""
    counter = tmp_path / "long.count"
    first = processor_in_module(receiver, launch, tmp_path, {"COUNTER": str(counter), "SLEEP": "3"})
    os.kill(first.process.pid, signal.SIGKILL)
    first.process.wait(10)
    [task] = tasks(receiver)
    assert task["state"] == "processing" and task["lease_owner"]

    second = launch("processor", home=receiver.home)
    deadline = time.monotonic() + 60  # not the ten minutes the dead one's lease still runs
    while time.monotonic() < deadline and tasks(receiver)[0]["state"] != "done":
        time.sleep(0.2)
    assert tasks(receiver)[0]["state"] == "done"
    assert [line.split()[0] for line in counter.read_text().splitlines()] == [
        "start",
        "start",
        "end",
    ]
    assert "which no longer runs" in second.log()
