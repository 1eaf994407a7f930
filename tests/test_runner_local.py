"""Local-command runners: the plain one and the bubblewrap sandbox."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from caduceus.core.config.models import Module
from caduceus.processor.runners.base import ModuleRun, RunnerError
from caduceus.processor.runners.local import LocalRunner, SandboxRunner, local_runner

SECRET_URL = "postgresql://caduceus:hunter2-secret@db.example/caduceus"
FOLDER_VARIABLES = {
    "MERCURE_IN_DIR": "in",
    "MONAI_INPUTPATH": "in",
    "HOLOSCAN_INPUT_PATH": "in",
    "MERCURE_OUT_DIR": "out",
    "MONAI_OUTPUTPATH": "out",
    "HOLOSCAN_OUTPUT_PATH": "out",
}

needs_bwrap = pytest.mark.skipif(
    shutil.which("bwrap") is None, reason="bubblewrap (bwrap) is not installed"
)


class Task:
    """A data root with one task being processed, a sibling task and a database file."""

    def __init__(self, root: Path) -> None:
        self.root = root / "data"
        self.task_dir = self.root / "processing" / "task-1"
        self.in_dir = self.task_dir / "in"
        self.out_dir = self.task_dir / "out"
        self.in_dir.mkdir(parents=True)
        self.out_dir.mkdir()
        (self.in_dir / "image.dcm").write_bytes(b"DICM-image-bytes")
        (self.in_dir / "task.json").write_text('{"id": "task-1"}')
        self.sibling = self.root / "processing" / "task-2"
        self.sibling.mkdir()
        (self.sibling / "other.dcm").write_text("SIBLING-PATIENT-DATA")
        self.database = self.root / "caduceus.db"
        self.database.write_text("DATABASE-CONTENT")
        self.persistence = self.root / "persistent" / "m"
        self.log_path = self.root / "logs" / "task-1.log"
        self.bin = root / "bin"
        self.bin.mkdir()

    def script(self, name: str, body: str) -> str:
        path = self.bin / name
        path.write_text("#!/bin/sh\n" + body)
        path.chmod(0o755)
        return str(path)

    def job(self, command: list[str], **module: Any) -> ModuleRun:
        environment = module.pop("job_environment", {})
        return ModuleRun(
            task_id="task-1",
            module_name="m",
            module=Module(command=command, **module),
            in_dir=self.in_dir,
            out_dir=self.out_dir,
            log_path=self.log_path,
            persistence_dir=self.persistence,
            environment=environment,
        )

    def log(self) -> str:
        return self.log_path.read_text()

    def logged_environment(self) -> dict[str, str]:
        lines = [line for line in self.log().splitlines() if "=" in line]
        return dict(line.split("=", 1) for line in lines)


@pytest.fixture
def task(tmp_path: Path) -> Task:
    return Task(tmp_path)


@pytest.fixture(autouse=True)
def parent_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CADUCEUS_DATABASE_URL", SECRET_URL)
    monkeypatch.setenv("CADUCEUS_SECRET_KEY", "hunter2-secret-key")


def process_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def processes_with(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


COPY = 'cp "$MERCURE_IN_DIR"/* "$MERCURE_OUT_DIR"/ && pwd > cwd.txt && echo copied'

# --- plain runner -----------------------------------------------------------------------------


def test_local_copies_input_to_output(task: Task) -> None:
    outcome = LocalRunner().run(task.job(["/bin/sh", "-c", COPY]))
    assert outcome.ok and outcome.exit_code == 0 and not outcome.timed_out
    assert (task.out_dir / "image.dcm").read_bytes() == b"DICM-image-bytes"
    assert (task.out_dir / "cwd.txt").read_text().strip() == str(task.out_dir)
    assert "copied" in task.log()


def test_local_environment_is_clean_and_complete(
    task: Task, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TZ", "Europe/Berlin")
    job = task.job(
        ["env"],
        persistence=True,
        environment={"MODULE_VAR": "1", "MERCURE_OUT_DIR": "/elsewhere"},
        job_environment={"RUN_VAR": "2"},
    )
    assert LocalRunner(pass_environment=["TZ"]).run(job).ok
    env = task.logged_environment()
    folders = {"in": str(task.in_dir), "out": str(task.out_dir)}
    for name, which in FOLDER_VARIABLES.items():
        assert env[name] == folders[which]
    assert env["MODULE_PERSISTENCE_DIR"] == str(task.persistence)
    assert task.persistence.is_dir()
    assert env["MODULE_VAR"] == "1" and env["RUN_VAR"] == "2" and env["TZ"] == "Europe/Berlin"
    assert env["HOME"] != os.environ.get("HOME")
    assert "hunter2" not in task.log()
    expected = {"PATH", "HOME", "TMPDIR", "LANG", "TZ", "MODULE_PERSISTENCE_DIR"}
    if os.geteuid() == 0:  # run as nobody through bwrap, which sets PWD for its --chdir
        assert env.pop("PWD") == str(task.out_dir)
    assert set(env) == expected | set(FOLDER_VARIABLES) | {"MODULE_VAR", "RUN_VAR"}


def test_local_no_persistence_variable_unless_asked(task: Task) -> None:
    assert LocalRunner().run(task.job(["env"])).ok
    assert "MODULE_PERSISTENCE_DIR" not in task.logged_environment()


def test_local_nonzero_exit_and_stderr_logged(task: Task) -> None:
    outcome = LocalRunner().run(task.job(["/bin/sh", "-c", "echo broken >&2; exit 3"]))
    assert outcome.exit_code == 3 and not outcome.ok and not outcome.timed_out
    assert "broken" in task.log()


def test_local_killed_by_signal(task: Task) -> None:
    outcome = LocalRunner().run(task.job(["/bin/sh", "-c", "kill -KILL $$"]))
    assert outcome.exit_code is None and not outcome.timed_out and not outcome.ok
    assert "SIGKILL" in task.log()


def gone(marker: str) -> bool:
    """No process names marker any more (by name: a module's pids may be those of its own PID
    namespace). SIGKILL is sent when the module ends; on a loaded machine the kernel may take
    a moment to carry it out, so this allows that moment (not the time the child would sleep)."""
    deadline = time.monotonic() + 10
    while processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    return processes_with(marker) == []


def test_local_timeout_kills_the_process_group(task: Task) -> None:
    # Both the module and its child ignore SIGTERM: only the SIGKILL after the grace ends them.
    marker = str(600_000 + secrets.randbelow(300_000))
    script = task.script("stubborn.sh", f"trap '' TERM\nsleep {marker} &\ntouch started\nwait\n")
    started = time.monotonic()
    outcome = LocalRunner(grace_seconds=0.5).run(task.job([script], timeout_seconds=1))
    assert outcome.timed_out and outcome.exit_code is None and not outcome.ok
    assert 1 <= time.monotonic() - started < 5
    assert (task.out_dir / "started").exists()
    assert gone(marker) and gone(script)
    assert "time limit" in task.log()


def test_local_cancelled_run_stops_the_module_within_seconds(task: Task) -> None:
    """The processor is stopping: the module is stopped (its group too) and the run is
    reported as cancelled, neither failed nor timed out, long before its time limit."""
    marker = str(600_000 + secrets.randbelow(300_000))
    script = task.script("long.sh", f"sleep {marker} &\ntouch started\nwait\n")
    # Cancelled once the module is under way (it started its child).
    job = replace(
        task.job([script], timeout_seconds=600), cancelled=(task.out_dir / "started").exists
    )
    outcome = LocalRunner(grace_seconds=0.5).run(job)
    assert outcome.cancelled and not outcome.timed_out and not outcome.ok
    assert outcome.exit_code is None  # and not after sleep's 600 s: pytest's timeout is 300
    assert gone(marker)
    assert "the processor is stopping" in task.log()


def test_local_leftover_processes_are_killed_at_the_end(task: Task) -> None:
    marker = str(600_000 + secrets.randbelow(300_000))
    outcome = LocalRunner().run(task.job(["/bin/sh", "-c", f"sleep {marker} & exit 0"]))
    assert outcome.ok and outcome.seconds < 5
    assert gone(marker)


def test_local_command_not_found(task: Task) -> None:
    with pytest.raises(RunnerError, match="module m: command not found: no-such-command-xyz"):
        LocalRunner().run(task.job(["no-such-command-xyz"]))
    with pytest.raises(RunnerError, match="command not found"):
        LocalRunner().run(task.job([str(task.bin / "missing.sh")]))
    with pytest.raises(RunnerError, match="absolute path"):
        LocalRunner().run(task.job(["bin/relative.sh"]))


def test_local_runner_choice(task: Task, monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(local_runner(Module(command=["true"], sandbox=False)), LocalRunner)
    if shutil.which("bwrap"):
        assert isinstance(local_runner(Module(command=["true"])), SandboxRunner)
    monkeypatch.setenv("PATH", str(task.bin))  # no bwrap there
    # Asked for, the sandbox is never silently dropped.
    with pytest.raises(RunnerError, match="cannot run in its sandbox"):
        local_runner(Module(command=["true"]))
    assert isinstance(local_runner(Module(command=["true"], sandbox=False)), LocalRunner)


def test_sandbox_without_bwrap(task: Task, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(task.bin))
    with pytest.raises(RunnerError, match=r"bubblewrap \(bwrap\) is not installed"):
        SandboxRunner().run(task.job(["/bin/true"]))


# --- sandbox ----------------------------------------------------------------------------------


@needs_bwrap
def test_sandbox_copies_input_to_output(task: Task) -> None:
    # State left by an earlier run as the processor's user (before modules ran as nobody).
    (task.persistence / "old").mkdir(parents=True)
    (task.persistence / "old" / "state").write_text("old\n")
    command = COPY + ' && echo state > "$MODULE_PERSISTENCE_DIR/state"'
    command += ' && echo more >> "$MODULE_PERSISTENCE_DIR/old/state"'
    outcome = SandboxRunner().run(task.job(["/bin/sh", "-c", command], persistence=True))
    assert outcome.ok, task.log()
    assert (task.out_dir / "image.dcm").read_bytes() == b"DICM-image-bytes"
    assert (task.out_dir / "cwd.txt").read_text().strip() == str(task.out_dir)
    assert (task.persistence / "state").read_text() == "state\n"
    assert (task.persistence / "old" / "state").read_text() == "old\nmore\n"


@needs_bwrap
def test_sandbox_environment_is_only_what_we_set(task: Task) -> None:
    job = task.job(["/usr/bin/env"], environment={"MODULE_VAR": "1"})
    assert SandboxRunner().run(job).ok, task.log()
    env = task.logged_environment()
    expected = {"PATH", "HOME", "TMPDIR", "LANG", "MODULE_VAR", *FOLDER_VARIABLES}
    assert set(env) == expected | {"PWD"}  # bwrap sets PWD for --chdir
    assert env["PWD"] == str(task.out_dir) and env["HOME"] == "/tmp"
    assert env["MERCURE_IN_DIR"] == str(task.in_dir)
    assert "hunter2" not in task.log()


@needs_bwrap
def test_sandbox_cannot_write_outside_its_output_or_read_the_data_root(task: Task) -> None:
    targets = {
        "input": task.in_dir / "new",
        "etc": Path("/etc/caduceus-sandbox-test"),
        "root": Path("/caduceus-sandbox-test"),
        "sibling": task.sibling / "new",
        "task": task.task_dir / "new",
    }
    lines = [f'touch "{path}" 2>/dev/null && echo "wrote {name}"' for name, path in targets.items()]
    lines += [
        f'cat "{task.database}" 2>/dev/null',
        f'cat "{task.sibling}/other.dcm" 2>/dev/null',
        f'ls "{task.root}" "{task.sibling}" 2>/dev/null',
        'cat "$MERCURE_IN_DIR/task.json" && echo',
        "touch out-ok && echo wrote output",
    ]
    script = task.script("escape.sh", "\n".join(lines) + "\nexit 0\n")
    assert SandboxRunner().run(task.job([script])).ok, task.log()
    log = task.log()
    assert "wrote output" in log and '{"id": "task-1"}' in log  # the script did run
    for name, path in targets.items():
        assert not path.exists()  # nothing reached the host
        if name != "task":  # the folder above the task's is the sandbox's own private /tmp
            assert f"wrote {name}" not in log
    assert "DATABASE-CONTENT" not in log and "SIBLING-PATIENT-DATA" not in log
    assert "caduceus.db" not in log and "other.dcm" not in log


@needs_bwrap
@pytest.mark.parametrize("network", [False, True])
def test_sandbox_network_only_when_asked(task: Task, network: bool) -> None:
    if shutil.which("bash") is None:
        pytest.skip("bash is not installed")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(0.5)
        port = listener.getsockname()[1]
        connect = f"exec 3<>/dev/tcp/127.0.0.1/{port} && echo connected"
        job = task.job(["/bin/bash", "-c", connect], network=network)
        outcome = SandboxRunner().run(job)
        try:
            connection, _ = listener.accept()
            connection.close()
            seen = True
        except TimeoutError:
            seen = False
    assert seen is network
    assert ("connected" in task.log()) is network
    assert outcome.ok is network


@needs_bwrap
def test_sandbox_timeout_kills_everything(task: Task) -> None:
    marker = str(600_000 + secrets.randbelow(300_000))
    script = task.script("stubborn.sh", f"trap '' TERM\nsleep {marker} &\nsleep {marker}\n")
    started = time.monotonic()
    outcome = SandboxRunner(grace_seconds=0.5).run(task.job([script], timeout_seconds=1))
    assert outcome.timed_out and outcome.exit_code is None
    assert time.monotonic() - started < 5
    deadline = time.monotonic() + 10  # the namespace's processes die with its first one
    while processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes_with(marker) == []


@needs_bwrap
def test_sandbox_cancelled_run_stops_everything(task: Task) -> None:
    marker = str(600_000 + secrets.randbelow(300_000))
    script = task.script("long.sh", f"sleep {marker} &\ntouch started\nsleep {marker}\n")
    started = task.out_dir / "started"  # the sandbox's working folder is the output folder
    job = replace(task.job([script], timeout_seconds=600), cancelled=started.exists)
    outcome = SandboxRunner(grace_seconds=0.5).run(job)
    assert outcome.cancelled and not outcome.timed_out and outcome.exit_code is None
    deadline = time.monotonic() + 10  # the namespace's processes die with its first one
    while processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes_with(marker) == []


@needs_bwrap
def test_sandbox_python_module_with_readonly_paths(task: Task) -> None:
    code = task.bin / "copy.py"
    code.write_text(
        "import os, shutil\n"
        "src, dst = os.environ['MERCURE_IN_DIR'], os.environ['MERCURE_OUT_DIR']\n"
        "for name in os.listdir(src):\n"
        "    shutil.copy(os.path.join(src, name), os.path.join(dst, 'py-' + name))\n"
    )
    runner = SandboxRunner(readonly_paths=sorted({sys.prefix, sys.base_prefix}))
    outcome = runner.run(task.job([sys.executable, str(code)]))
    assert outcome.ok, task.log()
    assert (task.out_dir / "py-image.dcm").read_bytes() == b"DICM-image-bytes"


@needs_bwrap
def test_sandbox_refuses_paths_that_show_the_data_root(task: Task) -> None:
    with pytest.raises(RunnerError, match="data root"):
        SandboxRunner(readonly_paths=[task.root]).run(task.job(["/bin/true"]))
    with pytest.raises(RunnerError, match="not an existing absolute path"):
        SandboxRunner(readonly_paths=[task.root / "nothing"]).run(task.job(["/bin/true"]))
    with pytest.raises(RunnerError, match="command not found: no-such-command-xyz"):
        SandboxRunner().run(task.job(["no-such-command-xyz"]))


def test_sandbox_setup_failure_is_a_runner_error(task: Task) -> None:
    # A stand-in for bwrap that fails the way bwrap does when it cannot build the sandbox.
    fake = task.script("fake-bwrap", "echo 'bwrap: Creating new namespace failed' >&2\nexit 1\n")
    with pytest.raises(RunnerError, match="sandbox could not be set up: bwrap: Creating new"):
        SandboxRunner(bwrap=fake).run(task.job(["/bin/true"]))


# --- escapes (issue 14: a module must not reach the host's kernel settings or processes) -----

ESCAPES = r"""
import ctypes, errno, json, os, sys, time

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
config = json.loads(sys.argv[1])
seen = {"uid": os.getuid(), "uid_map": open("/proc/self/uid_map").read().split()}


def outcome(call):
    ctypes.set_errno(0)
    try:
        result = call()
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))
    if isinstance(result, int) and result == -1:
        return errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))
    return "succeeded"


def write(path, text):
    with open(path, "w") as file:
        file.write(text)


child = os.fork()
if child == 0:  # a process of the module's own, which the kernel alone would let it trace
    time.sleep(30)
    os._exit(0)
attempts = {
    "write lease-break-time": lambda: write("/proc/sys/fs/lease-break-time", config["lease"]),
    "open core_pattern": lambda: open("/proc/sys/kernel/core_pattern", "w").close(),
    "mount tmpfs": lambda: libc.mount(b"none", b"/tmp", b"tmpfs", 0, None),
    "ptrace the processor": lambda: libc.ptrace(16, config["processor"], None, None),
    "ptrace own child": lambda: libc.ptrace(16, child, None, None),
    "processor's environ": lambda: open(f"/proc/{config['processor']}/environ").read(),
    "read another task": lambda: open(config["sibling"]).read(),
    "list the data root": lambda: os.listdir(config["processing"]) == ["task-1"] or 1 / 0,
    "unshare a user namespace": lambda: libc.unshare(0x10000000),
    "keyctl": lambda: libc.syscall(config["keyctl"], 0, -3, 0),
    "bpf": lambda: libc.syscall(config["bpf"], 0, None, 0),
    "write /sys": lambda: write("/sys/kernel/uevent_helper", "x"),
}
for name, call in attempts.items():
    seen[name] = outcome(call)
os.kill(child, 9)
with open(os.path.join(os.environ["MERCURE_OUT_DIR"], "seen.json"), "w") as out:
    json.dump(seen, out)
print(json.dumps(seen, indent=1))
"""


@needs_bwrap
def test_sandbox_escapes_fail(task: Task) -> None:
    """A module tries to write the host's kernel settings, mount, trace the processor and its
    own child, read another task, make a user namespace, use keyctl and bpf: each is refused,
    and the host's lease-break-time is unchanged."""
    import pyseccomp  # the test's own source of the system call numbers

    lease = Path("/proc/sys/fs/lease-break-time")
    before = lease.read_text()
    config = {
        "lease": str(int(before) + 1),
        "processor": os.getpid(),
        "sibling": str(task.sibling / "other.dcm"),
        "processing": str(task.root / "processing"),
        "keyctl": pyseccomp.resolve_syscall(pyseccomp.system_arch(), "keyctl"),
        "bpf": pyseccomp.resolve_syscall(pyseccomp.system_arch(), "bpf"),
    }
    code = task.bin / "escape.py"
    code.write_text(ESCAPES)
    runner = SandboxRunner(readonly_paths=sorted({sys.prefix, sys.base_prefix}))
    try:
        outcome = runner.run(task.job([sys.executable, str(code), json.dumps(config)]))
    finally:
        after = lease.read_text()
        if after != before and os.geteuid() == 0:  # put the host back before failing
            lease.write_text(before)
    assert outcome.ok, task.log()
    assert after == before
    seen = json.loads((task.out_dir / "seen.json").read_text())
    assert seen["write lease-break-time"] in ("EROFS", "EACCES")
    assert seen["open core_pattern"] in ("EROFS", "EACCES")
    assert seen["write /sys"] == "ENOENT"  # no /sys at all
    for refused in ("mount tmpfs", "ptrace own child", "unshare a user namespace", "keyctl", "bpf"):
        assert seen[refused] == "EPERM", (refused, seen)
    assert seen["ptrace the processor"] in ("EPERM", "ESRCH")
    assert seen["processor's environ"] == "ENOENT"  # not in the module's pid namespace
    assert seen["read another task"] == "ENOENT"
    assert seen["list the data root"] == "succeeded"  # only the way to its own task
    if os.geteuid() == 0:
        # nobody, in a user namespace that maps nobody alone (to nobody on the host)
        assert seen["uid"] == 65534 and seen["uid_map"] == ["65534", "65534", "1"]
        made = task.out_dir / "seen.json"
        assert made.stat().st_uid == 65534
        moved = task.task_dir / "seen-moved.json"  # the processor still moves what it made
        made.rename(moved)
        assert json.loads(moved.read_text()) == seen
    else:
        assert seen["uid"] == os.getuid()


@needs_bwrap
def test_sandbox_never_runs_without_its_filter(task: Task, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where libseccomp cannot be loaded the step fails with the reason; the module never
    starts without the filter."""
    from caduceus.processor.runners import seccomp

    seccomp.filter_program.cache_clear()
    monkeypatch.setitem(sys.modules, "pyseccomp", None)  # as if the binding failed to load
    try:
        with pytest.raises(RunnerError, match="needs libseccomp"):
            SandboxRunner().run(task.job(["/bin/sh", "-c", "touch ran"]))
    finally:
        seccomp.filter_program.cache_clear()
    assert not (task.out_dir / "ran").exists()


# --- what a module is never given (issue 14: never host root, never caduceus's own files) ---

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the processor must run as root")

PLAIN_AS_ROOT = r"""
import json, os, sys
config = json.loads(sys.argv[1])
seen = {"uid": os.getuid(), "euid": os.geteuid(), "input": open(config["input"]).read()}
for name, call in {
    "write lease-break-time": lambda: open(config["lease"], "w").write(config["value"]),
    "read root-only file": lambda: open(config["secret"]).read(),
}.items():
    try:
        call()
        seen[name] = "succeeded"
    except OSError as exc:
        seen[name] = type(exc).__name__
with open("seen.json", "w") as out:
    json.dump(seen, out)
"""


@needs_root
def test_plain_module_of_a_root_processor_runs_as_nobody(task: Task, tmp_path: Path) -> None:
    """sandbox: false under a root processor: the module is nobody; it reads its input and
    writes its output, but not the host's kernel settings nor a file only root may read."""
    lease = Path("/proc/sys/fs/lease-break-time")
    before = lease.read_text()
    secret = tmp_path / "root-only"
    secret.write_text("ROOT-ONLY")
    secret.chmod(0o600)
    config = {
        "input": str(task.in_dir / "task.json"),
        "lease": str(lease),
        "value": str(int(before) + 1),
        "secret": str(secret),
    }
    code = task.bin / "plain.py"
    code.write_text(PLAIN_AS_ROOT)
    try:
        # Named in the command, the file is there to try (the rest of tmp_path is hidden).
        command = [sys.executable, str(code), json.dumps(config), str(secret)]
        outcome = LocalRunner().run(task.job(command, persistence=True))
    finally:
        after = lease.read_text()
        if after != before:  # put the host back before failing
            lease.write_text(before)
    assert outcome.ok, task.log()
    assert after == before
    seen = json.loads((task.out_dir / "seen.json").read_text())
    assert seen["uid"] == seen["euid"] == 65534
    assert seen["input"] == '{"id": "task-1"}'
    assert seen["write lease-break-time"] == "PermissionError"
    assert seen["read root-only file"] == "PermissionError"
    assert (task.out_dir / "seen.json").stat().st_uid == 65534
    assert task.persistence.stat().st_uid == 65534


@pytest.mark.parametrize("sandbox", [True, False])
@pytest.mark.parametrize("which", ["key", "database"])
def test_module_is_never_shown_the_key_or_the_database(
    task: Task, tmp_path: Path, sandbox: bool, which: str
) -> None:
    """A module that names caduceus's secrets key file or its SQLite database in its command
    (or an administrator's sandbox path that holds them) fails with the reason, and their
    content does not reach its output."""
    from caduceus.core.settings import Settings
    from caduceus.processor.runners import runner_factory

    if sandbox and shutil.which("bwrap") is None:
        pytest.skip("bubblewrap (bwrap) is not installed")
    if not sandbox and os.geteuid() != 0:
        pytest.skip("a plain module of an ordinary processor runs as that user, by design")
    keys = tmp_path / "keys"
    keys.mkdir()
    key_file = keys / "secret.key"
    key_file.write_text("KEY-FILE-CONTENT")
    settings = Settings(home=task.root, secrets_key_file=key_file)
    target = {"key": key_file, "database": task.database}[which]
    module = Module(command=["/bin/cat", str(target)], sandbox=sandbox)
    job = replace(task.job(["/bin/true"]), module=module)
    with pytest.raises(RunnerError, match="never shown to a module"):
        runner_factory(settings)(module).run(job)
    assert "CONTENT" not in (task.log() if task.log_path.exists() else "")
    if sandbox:  # an administrator's read-only path holding the key is refused too
        shown = Settings(home=task.root, secrets_key_file=key_file, processor_sandbox_paths=[keys])
        with pytest.raises(RunnerError, match="never shown to a module"):
            runner_factory(shown)(Module(command=["/bin/true"])).run(task.job(["/bin/true"]))


@needs_root
def test_plain_module_of_a_root_processor_does_not_see_the_data_root(task: Task) -> None:
    """Even where the processor's group may read the data root (file group access), a plain
    module running as nobody sees only its task's folders there."""
    from caduceus.core.settings import Settings
    from caduceus.processor.runners import runner_factory

    task.root.chmod(0o750)
    task.database.chmod(0o640)
    (task.sibling / "other.dcm").chmod(0o640)
    script = task.script(
        "peek.sh",
        f'cat "{task.database}" "{task.sibling}/other.dcm" 2>/dev/null\n'
        'cat "$MERCURE_IN_DIR/task.json" > seen.json\n',
    )
    module = Module(command=[script], sandbox=False)
    job = replace(task.job([script]), module=module)
    assert runner_factory(Settings(home=task.root))(module).run(job).ok, task.log()
    assert (task.out_dir / "seen.json").read_text() == '{"id": "task-1"}'
    assert "DATABASE-CONTENT" not in task.log() and "SIBLING" not in task.log()


@needs_root
def test_hand_over_never_follows_a_symlink(task: Task, monkeypatch: pytest.MonkeyPatch) -> None:
    """The persistence folder is writable by the module's earlier runs: a symlink there to a
    root file outside, or a folder swapped for a symlink while the hand-over walks it, never
    gives the outside file to nobody."""
    from caduceus.processor.runners import local

    outside = task.root.parent / "outside"
    outside.mkdir()
    victim = outside / "passwd"
    victim.write_text("root:x:0:0")
    (task.persistence / "sub").mkdir(parents=True)
    (task.persistence / "sub" / "state").write_text("kept")
    (task.persistence / "link").symlink_to(victim)
    # The module's concurrent run, simulated at the worst moment: once the top folder is
    # listed, "sub" becomes a symlink to the outside folder.
    real_scandir = os.scandir
    calls = []

    def swapping_scandir(path: Any = ".") -> Any:
        calls.append(path)
        if len(calls) == 2:
            (task.persistence / "sub").rename(task.persistence / "sub-moved")
            (task.persistence / "sub").symlink_to(outside)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", swapping_scandir)
    local._hand_over(task.job(["/bin/true"], persistence=True))
    monkeypatch.undo()
    assert len(calls) >= 2  # the swap happened during the walk
    assert victim.stat().st_uid == 0 and outside.stat().st_uid == 0
    assert task.persistence.stat().st_uid == 65534
    assert (task.persistence / "sub-moved" / "state").stat().st_uid == 65534
