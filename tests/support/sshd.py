"""A real OpenSSH server for the SFTP target's tests, on a free port, with everything in tmp_path.

Its own host key, its own authorized_keys, its own config: the system's sshd setup is not used
and no account is created or changed. The client logs in as the user running the tests (root
here) with a key made for the test.
"""

from __future__ import annotations

import getpass
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from tests.support.processes import free_port
from tests.support.waiting import wait_for_port


def make_key(private_path: Path) -> str:
    """Write a new ed25519 private key (OpenSSH format); return its public key line."""
    key = Ed25519PrivateKey.generate()
    private_path.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.OpenSSH, NoEncryption()))
    private_path.chmod(0o600)
    public = key.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH)
    return public.decode()


@dataclass
class Sshd:
    port: int
    host_key: str  # the server's public host key line, as a target's host_key
    client_key: Path  # a private key that the server accepts
    user: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        self.process.terminate()  # sshd ends its listener and exits on SIGTERM
        self.process.wait(10)


def start_sshd(home: Path) -> Sshd:
    """sshd in the foreground (-D), logging to a file, on 127.0.0.1 and a free port."""
    sshd = shutil.which("sshd", path=f"/usr/sbin:/usr/local/sbin:{os.defpath}")
    if sshd is None:
        pytest.skip("sshd is not installed (Debian: openssh-server)")
    home.mkdir(parents=True, exist_ok=True)
    # Run as root, sshd separates privileges and needs this folder (Debian's service makes it).
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    host_key = make_key(home / "host_key")
    (home / "authorized_keys").write_text(make_key(home / "client_key") + "\n")
    port = free_port()
    config = home / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"Port {port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {home / 'host_key'}",
                f"PidFile {home / 'sshd.pid'}",
                f"AuthorizedKeysFile {home / 'authorized_keys'}",
                "Subsystem sftp internal-sftp",
                "UsePAM no",
                "StrictModes no",
                # Root logs in with the test key; passwords are enabled so that a wrong one is
                # refused by the password method rather than by its absence.
                "PermitRootLogin yes",
                "PasswordAuthentication yes",
                "KbdInteractiveAuthentication no",
                "MaxAuthTries 10",
                "LogLevel VERBOSE",
                "",
            ]
        )
    )
    log_path = home / "sshd.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sshd, "-D", "-e", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT
        )
    try:
        wait_for_port(port, process=process)
    except (RuntimeError, TimeoutError) as exc:
        process.kill()
        raise RuntimeError(f"sshd did not start: {exc}\n{log_path.read_text()}") from exc
    return Sshd(port, host_key, home / "client_key", getpass.getuser(), process, log_path)


def login_settings(sshd: Sshd, folder: Path, **changes: object) -> dict[str, object]:
    """An SSH target's settings (SFTP, rsync) for this server: key login, host key checked."""
    values: dict[str, object] = {
        "host": "127.0.0.1",
        "port": sshd.port,
        "user": sshd.user,
        "private_key_file": str(sshd.client_key),
        "folder": str(folder),
        "host_key": sshd.host_key,
    }
    return {**values, **changes}
