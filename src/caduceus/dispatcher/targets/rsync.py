"""rsync target: the task's files copied with rsync over SSH, published whole like SFTP.

The files go into `<folder>/.<task_id>.partial/`, then an empty `.complete` marker, then the
folder is renamed to `<folder>/<task_id>`, so a consumer never sees half a task. A partial
folder left by an interrupted or failed attempt is kept: the next attempt's rsync sends only
the files that are not already there whole (same size and time), so a long send resumes.

Like mercure's rsync target, with `run_on_complete` the executable `<folder>/mercure_complete.sh`
on the server is run once the task is published, with the published folder and "rsync" as its
arguments (what mercure passes). Unlike mercure, the server's host key is checked (mercure
accepts any new key), and the script is needed only when `run_on_complete` is on.

Everything runs as argument lists, never through a local shell. The commands run on the server
by ssh are built from the configured folder and the task id, each quoted for the remote shell.
A password is handed to ssh through SSH_ASKPASS from the environment of ssh alone, never on a
command line, where any local user could read it.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from caduceus.core.config.models import RsyncTarget
from caduceus.dispatcher.targets.base import SendReport, Shipment, TargetError
from caduceus.dispatcher.targets.sftp import _ALGORITHMS, _parse_host_key

MARKER = ".complete"
SCRIPT = "mercure_complete.sh"
CONNECT_TIMEOUT = 15
# rsync's --timeout: a server that stops answering mid-transfer ends the attempt.
IO_TIMEOUT = 120
# A remote command (a test, a rename, the completion script) may take this long.
COMMAND_TIMEOUT = 300.0
# How often a running rsync is checked for the dispatcher stopping.
POLL = 0.2
# Files private to the account on the server and its group, as mercure sets them.
CHMOD = "D770,F660"
_ASKPASS = '#!/bin/sh\nprintf "%s\\n" "$CADUCEUS_SSH_PASSWORD"\n'


@dataclass
class _Ssh:
    command: list[str]  # ssh and its options, without the destination
    env: dict[str, str]


class RsyncUploader:
    def __init__(self, settings: RsyncTarget):
        self.settings = settings
        s = settings
        self.where = f"{s.host}:{s.port}"
        # A host or user that looks like an option would be read as one by ssh or rsync.
        if s.host.startswith("-") or any(c.isspace() for c in s.host):
            raise TargetError(f"not a host name: {s.host!r}")
        if s.user.startswith("-") or any(c.isspace() or c in "@:" for c in s.user):
            raise TargetError(f"not a user name: {s.user!r}")
        self.folder = s.folder.rstrip("/") or "/"

    @contextmanager
    def _ssh(self) -> Iterator[_Ssh]:
        s = self.settings
        ssh = shutil.which("ssh")
        if ssh is None:
            raise TargetError("ssh is not installed on this machine (Debian: openssh-client)")
        with tempfile.TemporaryDirectory(prefix="caduceus-rsync-") as private:
            command = [
                ssh,
                "-F",
                "/dev/null",  # not the account's ~/.ssh/config: only what is configured here
                "-p",
                str(s.port),
                "-l",
                s.user,
                "-o",
                f"ConnectTimeout={CONNECT_TIMEOUT}",
                "-o",
                "ServerAliveInterval=15",
                "-o",
                "ServerAliveCountMax=4",
                "-o",
                "GlobalKnownHostsFile=/dev/null",
            ]
            if s.host_key:
                key_type, _ = _parse_host_key(s.host_key)
                known = Path(private, "known_hosts")
                name = s.host if s.port == 22 else f"[{s.host}]:{s.port}"
                fields = s.host_key.split()
                line = " ".join(fields[fields.index(key_type) : fields.index(key_type) + 2])
                known.write_text(f"{name} {line}\n")
                algorithms = ",".join(_ALGORITHMS.get(key_type, (key_type,)))
                command += [
                    "-o",
                    f"UserKnownHostsFile={known}",
                    "-o",
                    "StrictHostKeyChecking=yes",
                    "-o",
                    f"HostKeyAlgorithms={algorithms}",
                ]
            else:  # accept_unknown_host_key: the settings allow no third case
                command += ["-o", "UserKnownHostsFile=/dev/null"]
                command += ["-o", "StrictHostKeyChecking=no", "-o", "LogLevel=ERROR"]
            env = {"PATH": os.environ.get("PATH", os.defpath), "LC_ALL": "C"}
            methods = []
            if s.private_key_file:
                command += ["-i", s.private_key_file, "-o", "IdentitiesOnly=yes"]
                methods.append("publickey")
            password = s.password.get_secret_value()
            if password:
                askpass = Path(private, "askpass")
                askpass.write_text(_ASKPASS)
                askpass.chmod(0o700)
                env.update(
                    SSH_ASKPASS=str(askpass),
                    SSH_ASKPASS_REQUIRE="force",
                    DISPLAY=":0",
                    CADUCEUS_SSH_PASSWORD=password,
                )
                command += ["-o", "NumberOfPasswordPrompts=1"]
                methods += ["password", "keyboard-interactive"]
            else:
                command += ["-o", "BatchMode=yes"]
            command += ["-o", f"PreferredAuthentications={','.join(methods)}"]
            yield _Ssh(command, env)

    def _remote(self, ssh: _Ssh, script: str) -> subprocess.CompletedProcess[str]:
        """Run a command on the server (by its shell: every value in it is quoted)."""
        try:
            done = subprocess.run(
                [*ssh.command, "--", self.settings.host, script],
                env=ssh.env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                errors="replace",
                timeout=COMMAND_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise TargetError(f"{self.where} did not finish a command in time") from exc
        if done.returncode == 255:  # ssh's own failure: connection, host key or login
            raise TargetError(self._ssh_failure(done.stderr))
        return done

    def _ssh_failure(self, stderr: str) -> str:
        s = self.settings
        if "REMOTE HOST IDENTIFICATION HAS CHANGED" in stderr or "Host key verification" in stderr:
            return f"host key of {s.host} does not match the configured one"
        if "Permission denied" in stderr:
            return f"authentication failed for user {s.user} on {self.where}"
        if "Connection refused" in stderr:
            return f"connection to {self.where} refused"
        if "Could not resolve hostname" in stderr:
            return f"cannot resolve host {s.host}"
        if "timed out" in stderr:
            return f"connection to {self.where} timed out"
        return f"SSH to {self.where} failed: {_last_line(stderr)}"

    def _check(self, ssh: _Ssh) -> None:
        """The folder exists and is writable, rsync is there; and the completion script."""
        folder = shlex.quote(self.folder)
        checks = [
            f"test -d {folder} || {{ echo 'folder does not exist'; exit 3; }}",
            f"test -w {folder} || {{ echo 'folder is not writable'; exit 3; }}",
            "command -v rsync >/dev/null || { echo 'rsync is not installed there'; exit 3; }",
        ]
        if self.settings.run_on_complete:
            script = shlex.quote(f"{self.folder}/{SCRIPT}")
            checks.append(f"test -x {script} || {{ echo '{SCRIPT} is not executable'; exit 3; }}")
        done = self._remote(ssh, "; ".join(checks))
        if done.returncode != 0:
            problem = _last_line(done.stdout) or _last_line(done.stderr)
            raise TargetError(f"{self.settings.folder} on {self.settings.host}: {problem}")

    def test(self) -> str:
        with self._ssh() as ssh:
            self._check(ssh)
        extra = f"; {SCRIPT} is executable" if self.settings.run_on_complete else ""
        return (
            f"logged in as {self.settings.user} on {self.where}; "
            f"folder {self.settings.folder} is writable{extra}"
        )

    def send(self, files: list[Path], shipment: Shipment) -> SendReport:
        rsync = shutil.which("rsync")
        if rsync is None:
            raise TargetError("rsync is not installed on this machine (Debian: rsync)")
        sources = {path.parent for path in files}
        if len(sources) > 1:
            raise TargetError("the task's files are not in one folder")
        final = f"{self.folder}/{shipment.task_id}"
        partial = f"{self.folder}/.{shipment.task_id}.partial"
        with self._ssh() as ssh:
            self._check(ssh)
            state = self._remote(
                ssh,
                f"if [ -e {shlex.quote(final)} ]; then echo published; "
                f"else mkdir -p {shlex.quote(partial)} && echo ready; fi",
            )
            if "published" in state.stdout:
                # Delivered by an earlier attempt that died before recording it (or whose
                # completion script failed: it runs again, as mercure's would on a retry).
                self._on_complete(ssh, final)
                return SendReport(accepted=list(files))
            if state.returncode != 0 or "ready" not in state.stdout:
                problem = _last_line(state.stderr) or f"exit {state.returncode}"
                raise TargetError(f"cannot create {partial} on {self.settings.host}: {problem}")
            if shipment.interrupted() or (
                files and not self._rsync(rsync, ssh, files, partial, shipment)
            ):
                return SendReport(interrupted=True)
            # An empty marker, then the rename publishes the folder whole. A concurrent
            # attempt that published first wins, and ours is dropped.
            published = self._remote(
                ssh,
                f"touch {shlex.quote(partial + '/' + MARKER)} && "
                f"if [ -e {shlex.quote(final)} ]; then rm -rf -- {shlex.quote(partial)}; "
                f"else mv -- {shlex.quote(partial)} {shlex.quote(final)}; fi",
            )
            if published.returncode != 0:
                problem = _last_line(published.stderr) or f"exit {published.returncode}"
                raise TargetError(f"cannot publish {final} on {self.settings.host}: {problem}")
            self._on_complete(ssh, final)
        return SendReport(accepted=list(files))

    def _rsync(
        self, rsync: str, ssh: _Ssh, files: list[Path], partial: str, shipment: Shipment
    ) -> bool:
        """Copy the files into the partial folder; False when interrupted."""
        s = self.settings
        with tempfile.NamedTemporaryFile("w", prefix="caduceus-rsync-", suffix=".list") as names:
            names.write("".join(f"{path.name}\n" for path in files))
            names.flush()
            command = [
                rsync,
                "--recursive",
                "--times",  # so that a resumed attempt recognises what arrived whole
                "--perms",  # exactly CHMOD, whatever the umask on the server
                f"--chmod={CHMOD}",
                f"--timeout={IO_TIMEOUT}",
                "--protect-args",  # the remote path is not read by the remote shell
                f"--files-from={names.name}",
                "-e",
                " ".join(shlex.quote(part) for part in ssh.command),
                "--",
                f"{files[0].parent}/",
                f"{s.host}:{partial}/",
            ]
            process = subprocess.Popen(
                command,
                env=ssh.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
                errors="replace",
            )
            try:
                while process.poll() is None:
                    if shipment.interrupted():
                        # What arrived whole stays in the partial folder for the next attempt.
                        process.terminate()
                        process.wait(10)
                        return False
                    time.sleep(POLL)
                stderr = process.stderr.read() if process.stderr else ""
            finally:
                if process.poll() is None:
                    process.kill()
                    process.wait()
                if process.stderr:
                    process.stderr.close()
        if process.returncode == 0:
            return True
        if process.returncode == 255 or "connection unexpectedly closed" in stderr:
            raise TargetError(self._ssh_failure(stderr))
        raise TargetError(
            f"rsync to {self.where} failed (exit {process.returncode}): {_last_line(stderr)}"
        )

    def _on_complete(self, ssh: _Ssh, final: str) -> None:
        if not self.settings.run_on_complete:
            return
        script = f"{self.folder}/{SCRIPT}"
        done = self._remote(ssh, f"{shlex.quote(script)} {shlex.quote(final)} rsync")
        if done.returncode != 0:
            problem = _last_line(done.stderr) or _last_line(done.stdout)
            raise TargetError(
                f"{final} is published, but {SCRIPT} failed (exit {done.returncode})"
                + (f": {problem}" if problem else "")
            )


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""
