"""Run a module as a local command, plainly (LocalRunner) or in bubblewrap (SandboxRunner).

For hosts without a container engine. The command is a list of arguments, never a shell line.
The module gets a clean environment (never the processor's own, which may hold the database URL
with its password), runs in its own session with the output folder as working directory, and its
output (stdout and stderr) goes to the run's log. At the time limit the whole process group gets
SIGTERM, then SIGKILL after a grace period; processes a module leaves behind when it ends are
killed as well.

memory_mb and cpus are not enforced here: an address-space rlimit breaks runtimes that reserve
large virtual ranges (JVM, Go, CUDA, NumPy's allocators), and setting limits in a pre-exec hook
is unsafe in a threaded processor. Modules that need hard limits belong in a container.

The sandbox shows the module the system (/usr, the /bin and /lib links, a few files of /etc), a
private /dev, /proc and /tmp, its input folder read-only, its output folder (and persistence
folder) writable, files named by absolute path in its command and the administrator's extra
read-only paths; nothing else of the host, in particular not the data root with the other tasks
and the database. No network unless the module asks for it, no capabilities, new namespaces.
A path in the data root (but the task's own folders), the secrets key file or the database is
never shown, to a plain module either: naming one fails the step.

A plain module (sandbox: false) runs as the processor's user, except under a root processor:
then it runs as nobody with no capabilities (_nobody_stage), seeing the host as it is but for
the data root and caduceus's own files (_nobody_view).

The module never runs as the host's root. bwrap started by root would map the sandbox's uid to
root, and root writes /proc/sys whatever the capabilities say. So a processor running as root
builds the sandbox in two stages: bwrap, as root, mounts the module's view (it alone can reach
the task folders in a data root that only root may enter), then setpriv becomes nobody and a
second, unprivileged bwrap puts the module in a user namespace of its own where only nobody's
uid is mapped. A processor running as an ordinary user needs one stage: its bwrap makes the
user namespace itself, and the module runs as that user. Either way /proc/sys is read-only,
/sys is not there, and the module runs under a seccomp filter (seccomp.py) that refuses mount,
ptrace, keyctl, bpf, new user namespaces and the like.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from caduceus.core.config.models import Module
from caduceus.processor.runners.base import (
    CANCEL_POLL_SECONDS,
    UNPRIVILEGED,
    ModuleRun,
    Runner,
    RunnerError,
    RunOutcome,
    folder_environment,
)
from caduceus.processor.runners.seccomp import filter_fd

log = logging.getLogger("caduceus.processor")

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
GRACE_SECONDS = 5.0
SANDBOX_TMP = "/tmp"  # noqa: S108 - a private tmpfs inside the sandbox, not the host's /tmp

# Visible in the sandbox, read-only, where they exist.
_SYSTEM_LINKS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")  # links into /usr, or folders
_ETC_FILES = (
    "alternatives",
    "ca-certificates",
    "ca-certificates.conf",
    "fonts",
    "group",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "localtime",
    "mime.types",
    "nsswitch.conf",
    "os-release",
    "passwd",
    "ssl",
    "timezone",
)
_ETC_NETWORK_FILES = ("gai.conf", "host.conf", "hosts", "protocols", "resolv.conf", "services")


@dataclass(frozen=True)
class _Finished:
    returncode: int
    timed_out: bool
    seconds: float
    cancelled: bool = False


class LocalRunner:
    """Runs the module's command directly on the host: as the processor's user, or as nobody
    when the processor runs as root (see _nobody_stage)."""

    def __init__(
        self,
        *,
        pass_environment: Sequence[str] = (),
        grace_seconds: float = GRACE_SECONDS,
        private_paths: Sequence[str | Path] = (),
    ) -> None:
        # Names of the processor's environment variables a module may see (e.g. TZ).
        self._pass_environment = tuple(pass_environment)
        self._grace = grace_seconds
        # caduceus's own files (data root, secrets key, database), hidden from a module that
        # runs as nobody even where nobody could read them (with CADUCEUS_FILE_GROUP_ACCESS).
        self._private = tuple(Path(p) for p in private_paths)

    def run(self, job: ModuleRun) -> RunOutcome:
        _check_folders(job)
        as_root = os.geteuid() == 0
        setpriv = shutil.which("setpriv")
        bwrap = shutil.which("bwrap") if as_root else None
        if as_root and (setpriv is None or bwrap is None):
            raise RunnerError(
                f"module {job.module_name}: a processor running as root runs plain modules as "
                "nobody, which needs setpriv (util-linux) and bubblewrap (bwrap)"
            )
        with tempfile.TemporaryDirectory(prefix="caduceus-module-") as scratch:
            env = module_environment(
                job,
                path=os.environ.get("PATH") or DEFAULT_PATH,
                scratch=scratch,
                pass_environment=self._pass_environment,
            )
            command = [_find_program(job, env["PATH"]), *job.module.command[1:]]
            if as_root and setpriv and bwrap:
                _hand_over(job)
                os.chown(scratch, *UNPRIVILEGED)
                view = _nobody_view(job, command, Path(scratch), self._private)
                argv = [bwrap, *view, *_nobody_stage(setpriv), *command]
            elif setpriv:
                # A module must not outlive a processor that is killed: another processor
                # takes the task over and would run the same step beside it. setpriv asks the
                # kernel to kill the module when its parent dies; the sandbox has bwrap's
                # --die-with-parent for the same.
                argv = [setpriv, "--pdeathsig", "KILL", "--", *command]
            else:
                argv = command
            # bwrap reports a module killed by signal N as exit code 128 + N, as a shell does.
            done = _run_process(argv, env, job, grace=self._grace, signal_codes=as_root)
        return _outcome(job, done)


def _nobody_stage(setpriv: str) -> list[str]:
    """setpriv's options that make a plain module nobody, keeping the processor's group (as
    the sandbox does: the received files are readable by owner and group only), with no
    capability left and none to gain."""
    uid, gid = UNPRIVILEGED
    return [
        "--",
        setpriv,
        "--pdeathsig",
        "KILL",
        f"--reuid={uid}",
        f"--regid={gid}",
        f"--groups={os.getgid()}",
        "--no-new-privs",
        "--inh-caps=-all",
        "--bounding-set=-all",
        "--",
    ]


def _nobody_view(
    job: ModuleRun, command: Sequence[str], scratch: Path, private: Sequence[Path]
) -> list[str]:
    """bwrap's options (run by root) for a plain module that runs as nobody: the host as it
    is, except caduceus's own files, and with its task's folders reachable.

    nobody cannot pass through a private data root (0700) or a private folder above it, so the
    folders above the task's that nobody could not enter are covered with an empty tmpfs in
    which only the path to the task's folders (and to files the command names) is made. The
    data root is covered whatever its mode, and the secrets key and database files are hidden
    behind /dev/null: with CADUCEUS_FILE_GROUP_ACCESS the processor's group could read them."""
    folders = [job.out_dir, scratch]
    if job.module.persistence and job.persistence_dir is not None:
        folders.append(job.persistence_dir)
    shown = [("--bind", Path(os.path.abspath(folder))) for folder in folders]
    shown.append(("--ro-bind", Path(os.path.abspath(job.in_dir))))
    for index, arg in enumerate(command):
        path = Path(arg)
        if not (path.is_absolute() and path.is_file()):
            continue
        _refuse_private(job, path, private)
        real = path.resolve()
        shown += [("--ro-bind", Path(os.path.abspath(path))), ("--ro-bind", real)]
        prefix = real.parent.parent
        if index == 0 and real.parent.name == "bin" and (prefix / "lib").is_dir():
            # An interpreter needs its installation (PREFIX/lib) beside its bin folder.
            _refuse_private(job, prefix, private)
            shown.append(("--ro-bind", prefix))
    # A file inside a folder shown read-only is there already.
    folders_ro = [p for how, p in shown if how == "--ro-bind" and p.is_dir()]
    shown = [
        (how, p)
        for how, p in dict.fromkeys(shown)
        if how != "--ro-bind" or not any(f in p.parents for f in folders_ro)
    ]
    covers = {Path(os.path.abspath(p)) for p in private if p.is_dir()}
    for _how, path in shown:
        for parent in reversed(path.parents[:-1]):
            if not _searchable_by_nobody(parent):
                covers.add(parent)
                break
    covers = {c for c in covers if c != Path("/") and not any(o in c.parents for o in covers)}
    # Its own PID namespace: setpriv's change of user clears the module's parent-death signal,
    # but the namespace dies with its first process, which dies with bwrap, which dies with
    # the processor (--die-with-parent). So a module never outlives its processor.
    options = ["--dev-bind", "/", "/", "--unshare-pid", "--proc", "/proc", "--die-with-parent"]
    # setpriv needs these three to become nobody and empty the bounding set; it drops them.
    options += ["--cap-drop", "ALL"]
    for cap in ("CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP"):
        options += ["--cap-add", cap]
    for cover in sorted(covers, key=lambda c: len(c.parts)):
        options += ["--perms", "0755", "--tmpfs", str(cover)]
    for path in private:
        hidden = Path(os.path.abspath(path))
        if hidden.is_file() and not any(c in hidden.parents for c in covers):
            options += ["--ro-bind", "/dev/null", str(hidden)]
    made: set[Path] = set(covers)
    for how, path in sorted(shown, key=lambda item: len(item[1].parts)):
        under = next((c for c in covers if c in path.parents), None)
        if under is None:
            continue  # nobody reaches it on the host as it is
        for parent in reversed(path.parents[:-1]):
            if under in parent.parents and parent not in made:
                made.add(parent)
                options += ["--perms", "0755", "--dir", str(parent)]
        options += [how, str(path), str(path)]
    return [*options, "--chdir", str(job.out_dir)]


def _searchable_by_nobody(folder: Path) -> bool:
    """Whether nobody, with the processor's group, may pass through folder (ACLs aside:
    a folder they open is covered needlessly, which costs nothing)."""
    try:
        info = folder.stat()
    except OSError:
        return False
    uid, gid = UNPRIVILEGED
    if info.st_uid == uid:
        return bool(info.st_mode & stat.S_IXUSR)
    if info.st_gid in (gid, os.getgid()):
        return bool(info.st_mode & stat.S_IXGRP)
    return bool(info.st_mode & stat.S_IXOTH)


def _refuse_private(job: ModuleRun, path: Path, private: Sequence[Path]) -> None:
    """A path a module would be shown must not be caduceus's own: in the data root (other
    than the task's own folders), the secrets key file or the database, nor contain them."""
    real = path.resolve()
    folders = [job.in_dir, job.out_dir]
    if job.persistence_dir is not None:
        folders.append(job.persistence_dir)
    if any(real.is_relative_to(folder.resolve()) for folder in folders):
        return
    for own in private:
        hidden = own.resolve()
        if real.is_relative_to(hidden) or hidden.is_relative_to(real):
            raise RunnerError(
                f"module {job.module_name}: {path} is, or holds, caduceus's own data (its data "
                "root, secrets key file or database), which is never shown to a module"
            )


class SandboxRunner:
    """Runs the module's command inside bubblewrap (bwrap); see the module's docstring."""

    def __init__(
        self,
        *,
        readonly_paths: Sequence[str | Path] = (),
        pass_environment: Sequence[str] = (),
        grace_seconds: float = GRACE_SECONDS,
        bwrap: str | None = None,
        private_paths: Sequence[str | Path] = (),
    ) -> None:
        # Folders or files the administrator makes visible to every sandboxed module, at the
        # same path (an interpreter's installation, a module's code).
        self._readonly_paths = tuple(Path(p) for p in readonly_paths)
        self._pass_environment = tuple(pass_environment)
        self._grace = grace_seconds
        self._bwrap = bwrap
        # caduceus's own files (data root, secrets key, database): never shown to a module.
        self._private = tuple(Path(p) for p in private_paths)

    def run(self, job: ModuleRun) -> RunOutcome:
        bwrap = self._bwrap or shutil.which("bwrap")
        if bwrap is None:
            raise RunnerError("bubblewrap (bwrap) is not installed")
        _check_folders(job)
        env = module_environment(
            job, path=DEFAULT_PATH, scratch=SANDBOX_TMP, pass_environment=self._pass_environment
        )
        program = _find_program(job, env["PATH"])
        command = [program, *job.module.command[1:]]
        as_root = os.geteuid() == 0
        setpriv = shutil.which("setpriv") if as_root else None
        if as_root and setpriv is None:
            raise RunnerError(
                "setpriv (util-linux) is not installed: a processor running as root needs it "
                "to run sandboxed modules as nobody"
            )
        tools = [bwrap, setpriv] if setpriv else []
        visible = self._visible_paths(job, [*command, *tools])
        seccomp = filter_fd()
        status_read, status_write = os.pipe()
        try:
            fds = [str(seccomp), str(status_write)]
            if setpriv:
                _hand_over(job)
                inner = _module_stage(bwrap, setpriv, job, *fds)
                argv = [bwrap, *_sandbox_options(job, visible, as_root=True), *inner]
            else:
                argv = [bwrap, *_sandbox_options(job, visible, as_root=False)]
                argv += ["--seccomp", fds[0], "--json-status-fd", fds[1]]
            argv += [
                "--clearenv",
                *[arg for name, value in env.items() for arg in ("--setenv", name, value)],
                "--",
                *command,
            ]
            done = _run_process(
                argv, None, job, grace=self._grace, pass_fds=(seccomp, status_write)
            )
            status = _read_status(status_read)
        finally:
            for fd in (seccomp, status_read, status_write):
                with contextlib.suppress(OSError):
                    os.close(fd)
        stopped = done.timed_out or done.cancelled
        if not stopped and done.returncode >= 0 and "exit-code" not in status:
            # bwrap ended before the command ran: it could not build the sandbox.
            reason = _last_bwrap_message(job.log_path) or f"bwrap exited with {done.returncode}"
            raise RunnerError(
                f"module {job.module_name}: the sandbox could not be set up: {reason}"
            )
        return _outcome(job, done)

    def _visible_paths(self, job: ModuleRun, command: Sequence[str]) -> list[Path]:
        """Extra read-only paths: the administrator's, and files the command names by path."""
        paths: list[Path] = []
        for path in self._readonly_paths:
            if not path.is_absolute() or not path.exists():
                raise RunnerError(f"sandbox path {path} is not an existing absolute path")
            _refuse_private(job, path, self._private)
            paths.append(path)
        for arg in command:
            path = Path(arg)
            if (
                path.is_absolute()
                and path.is_file()
                and not _under_system(path)
                and not any(path.is_relative_to(shown) for shown in paths)
            ):
                _refuse_private(job, path, self._private)
                paths.append(path)
        task_folders = [job.in_dir, job.out_dir]
        if job.persistence_dir is not None:
            task_folders.append(job.persistence_dir)
        for path in paths:
            real = path.resolve()
            for folder in task_folders:
                if folder.resolve().is_relative_to(real) and folder.resolve() != real:
                    raise RunnerError(
                        f"module {job.module_name}: sandbox path {path} contains the task's "
                        "folders and would show the data root"
                    )
        return paths


def local_runner(
    module: Module,
    *,
    readonly_paths: Sequence[str | Path] = (),
    pass_environment: Sequence[str] = (),
    private_paths: Sequence[str | Path] = (),
) -> Runner:
    """The runner for a module that is a command: sandboxed unless the module says otherwise.

    A module that asks for the sandbox (the default) never runs without one: where bwrap is
    missing it fails with the reason, instead of running with all of the processor's rights.
    """
    if not module.sandbox:
        return LocalRunner(pass_environment=pass_environment, private_paths=private_paths)
    if shutil.which("bwrap") is None:
        raise RunnerError(
            "bubblewrap (bwrap) is not installed, so the module cannot run in its sandbox; "
            "install bubblewrap, or set sandbox: false for this module"
        )
    return SandboxRunner(
        readonly_paths=readonly_paths,
        pass_environment=pass_environment,
        private_paths=private_paths,
    )


def module_environment(
    job: ModuleRun, *, path: str, scratch: str, pass_environment: Sequence[str] = ()
) -> dict[str, str]:
    """The module's whole environment: a minimal base, the variables the administrator lets
    through, the module's and the run's own, and the folder variables (which always win)."""
    env = {
        "PATH": path,
        "HOME": scratch,
        "TMPDIR": scratch,
        "LANG": os.environ.get("LANG") or "C.UTF-8",
    }
    for name in pass_environment:
        if name in os.environ:
            env[name] = os.environ[name]
    env.update(job.module.environment)
    env.update(job.environment)
    env.update(folder_environment(str(job.in_dir), str(job.out_dir)))
    if job.module.persistence and job.persistence_dir is not None:
        env["MODULE_PERSISTENCE_DIR"] = str(job.persistence_dir)
    for name, value in env.items():
        if not name or "=" in name or "\0" in name or "\0" in value:
            raise RunnerError(f"module {job.module_name}: invalid environment variable {name!r}")
    return env


def _check_folders(job: ModuleRun) -> None:
    if not job.module.command:
        raise RunnerError(f"module {job.module_name}: has no command to run")
    if not job.in_dir.is_dir():
        raise RunnerError(f"module {job.module_name}: input folder {job.in_dir} is missing")
    job.out_dir.mkdir(parents=True, exist_ok=True)
    if job.module.persistence and job.persistence_dir is not None:
        job.persistence_dir.mkdir(parents=True, exist_ok=True)
    job.log_path.parent.mkdir(parents=True, exist_ok=True)


def _find_program(job: ModuleRun, path: str) -> str:
    """The command's program as a path, looked up the way the module's PATH would find it."""
    name = job.module.command[0]
    if "/" in name and not name.startswith("/"):
        raise RunnerError(
            f"module {job.module_name}: the command must be an absolute path or a name on "
            f"PATH, not {name}"
        )
    found = shutil.which(name, path=path) if name else None
    if found is None:
        raise RunnerError(f"module {job.module_name}: command not found: {name}")
    return found


def _under_system(path: Path) -> bool:
    return any(path.is_relative_to(root) for root in ("/usr", "/etc", "/proc", "/dev"))


def _module_stage(bwrap: str, setpriv: str, job: ModuleRun, seccomp: str, status: str) -> list[str]:
    """The second stage under a root processor: inside the sandbox root built, become nobody
    (keeping the processor's group, which may read the received files), then enter a user
    namespace of nobody's own under the seccomp filter. The environment options that follow
    go to this inner bwrap."""
    uid, gid = UNPRIVILEGED
    return [
        "--",
        setpriv,
        f"--reuid={uid}",
        f"--regid={gid}",
        f"--groups={os.getgid()}",
        "--inh-caps=-all",
        "--no-new-privs",
        "--",
        bwrap,
        "--unshare-user",
        "--uid",
        str(uid),
        "--gid",
        str(gid),
        "--bind",
        "/",
        "/",
        "--die-with-parent",
        "--seccomp",
        seccomp,
        "--json-status-fd",
        status,
        "--chdir",
        str(job.out_dir),
    ]


def _hand_over(job: ModuleRun) -> None:
    """A root processor gives the writable folders to nobody, and lets its group (which the
    module keeps) read the input, whatever the umask was when the pipeline made it."""
    uid, gid = UNPRIVILEGED
    os.chown(job.out_dir, uid, gid)
    if job.module.persistence and job.persistence_dir is not None:
        # State kept by runs from before modules ran as nobody belongs to root: hand it over.
        _give_to_nobody(job.persistence_dir)
    own = os.getuid()
    for dirpath, _dirs, names in os.walk(job.in_dir):
        entries = [(Path(dirpath), 0o050), *[(Path(dirpath, name), 0o040) for name in names]]
        for path, wanted in entries:
            info = path.lstat()
            mine = info.st_uid == own and not stat.S_ISLNK(info.st_mode)
            if mine and info.st_mode & wanted != wanted:
                os.chmod(path, stat.S_IMODE(info.st_mode) | wanted)


def _give_to_nobody(folder: Path) -> None:
    """Give what the processor owns in folder to nobody, without ever following a symlink.

    Earlier runs of the module (as nobody) can write into this folder, and one running now
    could swap a folder for a symlink to /etc between a listing and a chown by path. So every
    step goes through descriptors: fwalk opens each folder without following links (and checks
    it is the folder it listed), and a file is opened without following links, then changed
    through its descriptor, only while it is a regular file with one name that root owns."""
    uid, gid = UNPRIVILEGED
    own = os.getuid()
    for _path, _dirs, names, dir_fd in os.fwalk(folder, follow_symlinks=False):
        if os.fstat(dir_fd).st_uid == own:
            os.fchown(dir_fd, uid, gid)
        for name in names:
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
            try:
                fd = os.open(name, flags, dir_fd=dir_fd)
            except OSError:
                continue  # a symlink (ELOOP), a socket, or gone meanwhile: nothing to hand over
            try:
                info = os.fstat(fd)
                # A second name (a hard link) could be a file outside the folder.
                if info.st_uid == own and stat.S_ISREG(info.st_mode) and info.st_nlink == 1:
                    os.fchown(fd, uid, gid)
            finally:
                os.close(fd)


def _sandbox_options(job: ModuleRun, readonly: Sequence[Path], *, as_root: bool) -> list[str]:
    if as_root:
        # No user namespace at this stage: one made by root maps only root, and the second
        # stage could not become nobody. setpriv gets the two capabilities it needs for that.
        options = ["--unshare-ipc", "--unshare-pid", "--unshare-uts", "--unshare-cgroup-try"]
        if not job.module.network:
            options.append("--unshare-net")
        options += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        options = ["--unshare-all", "--unshare-user"]
        if job.module.network:
            options.append("--share-net")
        options += ["--cap-drop", "ALL"]
    options += ["--die-with-parent", "--new-session"]
    options += ["--ro-bind", "/usr", "/usr"]
    for name in _SYSTEM_LINKS:
        top = Path("/", name)
        if top.is_symlink():
            options += ["--symlink", os.readlink(top), str(top)]
        elif top.is_dir():
            options += ["--ro-bind", str(top), str(top)]
    etc = _ETC_FILES + (_ETC_NETWORK_FILES if job.module.network else ())
    for name in etc:
        path = Path("/etc", name)
        if path.exists():
            options += ["--ro-bind", str(path), str(path)]
    # The kernel's settings are read-only (a new procfs would let the host's root write them).
    options += ["--dev", "/dev", "--proc", "/proc", "--ro-bind", "/proc/sys", "/proc/sys"]
    options += ["--tmpfs", SANDBOX_TMP]
    binds: list[tuple[str, Path]] = [("--ro-bind", path) for path in readonly]
    binds.append(("--ro-bind", job.in_dir))
    if job.module.persistence and job.persistence_dir is not None:
        binds.append(("--bind", job.persistence_dir))
    binds.append(("--bind", job.out_dir))
    made: set[Path] = set()
    for how, path in binds:
        # bwrap would make the folders above a mount point with the mode of the host's (0700
        # for a private data root), which nobody could not pass through.
        for parent in reversed(path.parents[:-1]):
            if parent not in made:
                made.add(parent)
                options += ["--perms", "0755", "--dir", str(parent)]
        options += [how, str(path), str(path)]
    # The sandbox's own root (where bwrap made the mount points) is not writable either.
    options += ["--remount-ro", "/", "--chdir", str(job.out_dir)]
    return options


def _run_process(
    argv: list[str],
    env: dict[str, str] | None,
    job: ModuleRun,
    *,
    grace: float,
    pass_fds: tuple[int, ...] = (),
    signal_codes: bool = False,
) -> _Finished:
    """Start argv in a new session, logging to job.log_path; enforce the time limit; kill what
    is left of its process group at the end."""
    with open(job.log_path, "ab") as log_file:
        started = time.monotonic()
        try:
            process = subprocess.Popen(
                argv,
                cwd=job.out_dir,
                env=env if env is not None else {},
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                pass_fds=pass_fds,
            )
        except FileNotFoundError as exc:
            raise RunnerError(f"module {job.module_name}: command not found: {argv[0]}") from exc
        except PermissionError as exc:
            raise RunnerError(
                f"module {job.module_name}: command not executable: {argv[0]}"
            ) from exc
        except OSError as exc:
            raise RunnerError(f"module {job.module_name}: could not start: {exc}") from exc
        timed_out = cancelled = False
        deadline = started + job.module.timeout_seconds
        with _exit_waiter(process.pid) as wait_exit:
            try:
                # The leader is waited for without being reaped: while it is a zombie its
                # process group id cannot be reused, so the group signals reach only its own.
                while not wait_exit(min(CANCEL_POLL_SECONDS, deadline - time.monotonic())):
                    timed_out = time.monotonic() >= deadline
                    cancelled = not timed_out and job.cancelled()
                    if timed_out or cancelled:
                        _signal_group(process.pid, signal.SIGTERM)
                        wait_exit(grace)
                        break
            finally:
                _signal_group(process.pid, signal.SIGKILL)
                returncode = process.wait()
                if signal_codes and returncode - 128 in set(signal.Signals):
                    returncode = 128 - returncode
        seconds = time.monotonic() - started
        if timed_out:
            note = f"time limit of {job.module.timeout_seconds} s reached, module stopped"
        elif cancelled:
            note = "module stopped: the processor is stopping; the step runs again"
        elif returncode < 0:
            note = f"module killed by signal {signal.Signals(-returncode).name}"
        else:
            note = ""
        if note:
            log_file.write(f"\ncaduceus: {note}\n".encode())
    return _Finished(
        returncode=returncode, timed_out=timed_out, seconds=seconds, cancelled=cancelled
    )


@contextlib.contextmanager
def _exit_waiter(pid: int) -> Iterator[Callable[[float], bool]]:
    """A function that waits up to N seconds for the child to end, without reaping it."""
    try:
        pidfd: int | None = os.pidfd_open(pid)
    except OSError:  # kernels before 5.3
        pidfd = None

    def wait(seconds: float) -> bool:
        if pidfd is not None:
            poller = select.poll()
            poller.register(pidfd, select.POLLIN)
            return bool(poller.poll(max(0, int(seconds * 1000))))
        deadline = time.monotonic() + seconds
        while True:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    try:
        yield wait
    finally:
        if pidfd is not None:
            os.close(pidfd)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _outcome(job: ModuleRun, done: _Finished) -> RunOutcome:
    stopped = done.timed_out or done.cancelled
    exit_code = None if stopped or done.returncode < 0 else done.returncode
    if done.timed_out:
        log.warning("module %s (task %s) reached its time limit", job.module_name, job.task_id)
    return RunOutcome(
        exit_code=exit_code,
        timed_out=done.timed_out,
        seconds=done.seconds,
        cancelled=done.cancelled,
    )


def _read_status(fd: int) -> dict[str, object]:
    """What bwrap reported on its status pipe (JSON documents, one a line)."""
    os.set_blocking(fd, False)
    data = b""
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(fd, 65536):
            data += chunk
    status: dict[str, object] = {}
    for line in data.decode(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            document = json.loads(line)
            if isinstance(document, dict):
                status.update(document)
    return status


def _last_bwrap_message(log_path: Path) -> str:
    try:
        with open(log_path, "rb") as log_file:
            log_file.seek(max(0, log_file.seek(0, os.SEEK_END) - 4096))
            tail = log_file.read().decode(errors="replace")
    except OSError:
        return ""
    messages = [line for line in tail.splitlines() if line.startswith("bwrap:")]
    return messages[-1] if messages else ""
