"""SFTP target: a new remote folder per task, published atomically with a completion marker.

Like the folder target: the files go into `<folder>/.<task_id>.partial/`, then an empty
`.complete` marker, then the partial folder is renamed to `<folder>/<task_id>`, so a consumer
never sees half a task. The server is identified by its configured public host key before any
credential is sent; only `accept_unknown_host_key` without a `host_key` accepts any server.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import posixpath
import socket
import stat
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import paramiko

from caduceus.core.config.models import SftpTarget
from caduceus.dispatcher.targets.base import SendReport, Shipment, TargetError, excluded

MARKER = ".complete"
CONNECT_TIMEOUT = 15.0
# A server that stops answering mid-upload must not hold the dispatcher forever.
IO_TIMEOUT = 120.0
# Host key algorithms that prove possession of a key of each type: an RSA key signs with SHA-2
# ("rsa-sha2-*") on current servers; the key type itself names the algorithm for the others.
_ALGORITHMS = {"ssh-rsa": ("rsa-sha2-512", "rsa-sha2-256", "ssh-rsa")}


def _parse_host_key(line: str) -> tuple[str, bytes]:
    """Key type and key blob of "ssh-ed25519 AAAA... [comment]" (or a known_hosts line)."""
    fields = line.split()
    for key_type, data in itertools.pairwise(fields):
        if key_type.startswith(("ssh-", "ecdsa-", "sk-")):
            try:
                return key_type, base64.b64decode(data, validate=True)
            except binascii.Error:
                break
    raise TargetError("host_key is not an OpenSSH public key line ('ssh-ed25519 AAAA...')")


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


class SftpUploader:
    def __init__(self, settings: SftpTarget):
        self.settings = settings
        self.where = f"{settings.host}:{settings.port}"

    def _connect(self) -> paramiko.Transport:
        s = self.settings
        try:
            sock = socket.create_connection((s.host, s.port), timeout=CONNECT_TIMEOUT)
        except ConnectionRefusedError as exc:
            raise TargetError(f"connection to {self.where} refused") from exc
        except socket.gaierror as exc:
            raise TargetError(f"cannot resolve host {s.host}") from exc
        except TimeoutError as exc:
            raise TargetError(f"connection to {self.where} timed out") from exc
        except OSError as exc:
            raise TargetError(f"cannot connect to {self.where}: {_reason(exc)}") from exc
        transport = paramiko.Transport(sock)
        try:
            self._handshake(transport)
            self._login(transport)
        except BaseException:
            transport.close()
            raise
        return transport

    def _handshake(self, transport: paramiko.Transport) -> None:
        s = self.settings
        expected = _parse_host_key(s.host_key) if s.host_key else None
        if expected is not None:
            # Ask for the configured key's type first; otherwise a server with several host
            # keys may show another one and be refused although it is the right server.
            options = transport.get_security_options()
            wanted = _ALGORITHMS.get(expected[0], (expected[0],))
            offered = list(options.key_types)
            options.key_types = [k for k in wanted if k in offered] + [
                k for k in offered if k not in wanted
            ]
        try:
            transport.start_client(timeout=CONNECT_TIMEOUT)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise TargetError(f"SSH handshake with {self.where} failed: {exc}") from exc
        key = transport.get_remote_server_key()
        if expected is not None and key.asbytes() != expected[1]:
            raise TargetError(
                f"host key of {s.host} does not match the configured one "
                f"(the server shows {key.get_name()} {key.fingerprint})"
            )

    def _login(self, transport: paramiko.Transport) -> None:
        s = self.settings
        password = s.password.get_secret_value()
        methods: list[Callable[[], object]] = []
        if s.private_key_file:
            key = self._private_key()
            methods.append(lambda: transport.auth_publickey(s.user, key))
        if password:  # also when the key was refused: the server may take either
            methods.append(lambda: transport.auth_password(s.user, password))
        hint = ""
        for method in methods:
            try:
                method()
            except paramiko.BadAuthenticationType as exc:
                hint = f" (the server allows: {', '.join(exc.allowed_types)})"
            except paramiko.AuthenticationException:
                pass
            except (paramiko.SSHException, EOFError, OSError) as exc:
                raise TargetError(f"login on {self.where} failed: {exc}") from exc
            if transport.is_authenticated():
                return
        raise TargetError(f"authentication failed for user {s.user} on {self.where}{hint}")

    def _private_key(self) -> paramiko.PKey:
        path = self.settings.private_key_file
        try:
            return paramiko.PKey.from_path(path)
        except paramiko.PasswordRequiredException as exc:
            raise TargetError(f"private key file {path} is encrypted; use one without") from exc
        except OSError as exc:
            raise TargetError(f"cannot read private key file {path}: {_reason(exc)}") from exc
        except (paramiko.SSHException, ValueError) as exc:
            raise TargetError(f"private key file {path} holds no usable key") from exc

    @contextmanager
    def _session(self) -> Iterator[paramiko.SFTPClient]:
        transport = self._connect()
        try:
            sftp = paramiko.SFTPClient.from_transport(transport)
            if sftp is None:
                raise TargetError(f"{self.where} does not offer SFTP")
            channel = sftp.get_channel()
            if channel is not None:
                channel.settimeout(IO_TIMEOUT)
            yield sftp
        except TimeoutError as exc:
            raise TargetError(f"{self.where} stopped answering") from exc
        except (paramiko.SSHException, EOFError) as exc:
            raise TargetError(f"connection to {self.where} lost: {exc}") from exc
        finally:
            transport.close()

    def _check_folder(self, sftp: paramiko.SFTPClient) -> str:
        folder = self.settings.folder
        try:
            mode = sftp.stat(folder).st_mode
        except FileNotFoundError as exc:
            raise TargetError(f"folder {folder} does not exist on {self.settings.host}") from exc
        except OSError as exc:
            raise TargetError(f"cannot access folder {folder}: {_reason(exc)}") from exc
        if mode is None or not stat.S_ISDIR(mode):
            raise TargetError(f"{folder} on {self.settings.host} is not a folder")
        return folder

    def test(self) -> str:
        with self._session() as sftp:
            folder = self._check_folder(sftp)
            probe = posixpath.join(folder, f".caduceus-probe-{uuid.uuid4().hex[:12]}")
            try:
                sftp.open(probe, "w").close()
                sftp.remove(probe)
            except OSError as exc:
                raise TargetError(
                    f"folder {folder} on {self.settings.host} is not writable: {_reason(exc)}"
                ) from exc
        return f"logged in as {self.settings.user} on {self.where}; folder {folder} is writable"

    def send(self, files: list[Path], shipment: Shipment) -> SendReport:
        report = SendReport()
        with self._session() as sftp:
            folder = self._check_folder(sftp)
            final = posixpath.join(folder, shipment.task_id)
            partial = posixpath.join(folder, f".{shipment.task_id}.partial")
            if _exists(sftp, final):  # delivered by an earlier attempt that died before recording
                report.accepted = list(files)
                return report
            _remove_folder(sftp, partial)
            try:
                sftp.mkdir(partial)
            except OSError as exc:
                raise TargetError(f"cannot create {partial}: {_reason(exc)}") from exc
            for path in files:
                if shipment.interrupted():
                    # Published whole or not at all: the next dispatcher uploads it again.
                    _remove_folder(sftp, partial)
                    return SendReport(interrupted=True)
                if excluded(path, self.settings.exclude):  # not sent, by the target's choice
                    continue
                try:
                    with open(path, "rb") as source:
                        sftp.putfo(source, posixpath.join(partial, path.name), confirm=True)
                    report.accepted.append(path)
                except TimeoutError:
                    raise  # the session is unusable; _session says so
                except OSError as exc:
                    report.failed[path] = f"cannot upload: {_reason(exc)}"
            if report.failed:
                _remove_folder(sftp, partial)
                report.accepted.clear()
                return report
            try:
                sftp.open(posixpath.join(partial, MARKER), "w").close()
                # SFTP's rename never replaces an existing folder, so a concurrent attempt that
                # published first wins and ours is dropped below.
                sftp.rename(partial, final)
            except OSError as exc:
                if not _exists(sftp, final):
                    raise TargetError(f"cannot publish {final}: {_reason(exc)}") from exc
                _remove_folder(sftp, partial)
        return report


def _exists(sftp: paramiko.SFTPClient, path: str) -> bool:
    try:
        sftp.stat(path)
    except FileNotFoundError:
        return False
    return True


def _remove_folder(sftp: paramiko.SFTPClient, path: str) -> None:
    """Remove a partial folder left by a failed attempt (it holds only files)."""
    try:
        names = sftp.listdir(path)
    except FileNotFoundError:
        return
    try:
        for name in names:
            sftp.remove(posixpath.join(path, name))
        sftp.rmdir(path)
    except OSError as exc:
        raise TargetError(f"cannot remove the leftover {path}: {_reason(exc)}") from exc
