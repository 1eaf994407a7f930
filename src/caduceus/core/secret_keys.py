"""The key that encrypts the configuration's secrets in the database, kept in a file outside it.

The key file holds one Fernet key (AES-128-CBC with HMAC-SHA256, from `cryptography`) per
line: the first encrypts, every line decrypts (a rotation keeps the old key in the file until
every version is encrypted with the new one). In the stored configuration an encrypted value
is the object {"$encrypted": "<token>"}; the token holds the value as JSON.

Every machine that shares the database needs the same key file.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

log = logging.getLogger("caduceus.secrets")

ENCRYPTED = "$encrypted"
# What a model dump puts where a secret goes before it is encrypted (see config.models).
SEALED = "$sealed"
KEY_FILE_NAME = "secret.key"


class SecretKeyError(RuntimeError):
    """The key file is missing, unreadable, or not the key the secrets were encrypted with."""


def keys_in(path: Path) -> list[bytes]:
    """The keys of a key file, the one that encrypts first."""
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not a key file"
        raise SecretKeyError(f"cannot read the secrets key file {path}: {reason}") from exc
    keys = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            Fernet(line.encode())
        except ValueError as exc:
            raise SecretKeyError(
                f"the secrets key file {path}: line {number} is not a key"
            ) from exc
        keys.append(line.encode())
    if not keys:
        raise SecretKeyError(f"the secrets key file {path} holds no key")
    return keys


def write_key_file(path: Path, keys: list[bytes]) -> None:
    """Replace the key file at once (a new file, mode 600, renamed over the old one)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.part")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write("".join(key.decode() + "\n" for key in keys))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _sync_folder(path.parent)


def _sync_folder(folder: Path) -> None:
    """A rename or a new name is durable only once its folder is written out: without this
    a power cut after a rotation could bring back the old key file."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create_key_file(path: Path) -> bool:
    """A new key file with a fresh key, unless one exists (another process may be creating it
    at this moment: O_EXCL lets exactly one win). Returns whether this call created it."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(Fernet.generate_key().decode() + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    _sync_folder(path.parent)
    log.info("created the secrets key file %s: back it up apart from the database", path)
    return True


class Keyring:
    """The keys of one key file; it is read again when it changed (after a rotation)."""

    def __init__(self, path: Path):
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._fernet = MultiFernet([Fernet(Fernet.generate_key())])  # replaced by _load
        self._load()

    def _load(self) -> None:
        keys = keys_in(self.path)
        info = self.path.stat()
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("the secrets key file %s can be read by others: chmod 600 it", self.path)
        self._fernet = MultiFernet([Fernet(key) for key in keys])
        self._stamp = (info.st_ino, info.st_mtime_ns)

    def _reload_if_changed(self) -> bool:
        try:
            info = self.path.stat()
        except OSError:
            return False
        if (info.st_ino, info.st_mtime_ns) == self._stamp:
            return False
        self._load()
        return True

    def encrypt(self, value: Any) -> dict[str, str]:
        self._reload_if_changed()
        token = self._fernet.encrypt(json.dumps(value).encode())
        return {ENCRYPTED: token.decode()}

    def decrypt(self, token: str) -> Any:
        try:
            return json.loads(self._fernet.decrypt(token.encode()))
        except InvalidToken:
            if self._reload_if_changed():
                return self.decrypt(token)
            raise SecretKeyError(
                f"a stored secret cannot be decrypted with the key in {self.path}: it is not the "
                "key the secrets were encrypted with (every machine sharing the database needs "
                "the same key file; restore it from a backup)"
            ) from None

    def rotate(self, token: str) -> str:
        """The token encrypted again with the first key."""
        try:
            return self._fernet.rotate(token.encode()).decode()
        except InvalidToken:
            raise SecretKeyError(
                f"a stored secret cannot be decrypted with the keys in {self.path}"
            ) from None


def is_encrypted(value: Any) -> bool:
    return (
        isinstance(value, dict) and set(value) == {ENCRYPTED} and isinstance(value[ENCRYPTED], str)
    )


def transform(document: Any, change: Callable[[dict[str, Any]], Any]) -> Any:
    """The document with every object that `change` answers for replaced (change returns
    the object itself for the others)."""
    if isinstance(document, dict):
        replaced = change(document)
        if replaced is not document:
            return replaced
        return {key: transform(value, change) for key, value in document.items()}
    if isinstance(document, list):
        return [transform(value, change) for value in document]
    return document


def decrypted(document: Any, keyring: Keyring | None) -> Any:
    """The stored document with its secrets in clear (clear ones, from before encryption,
    are taken as they are)."""

    def open_one(value: dict[str, Any]) -> Any:
        if not is_encrypted(value):
            return value
        if keyring is None:
            raise SecretKeyError("the configuration holds encrypted secrets and no key was given")
        return keyring.decrypt(value[ENCRYPTED])

    return transform(document, open_one)


def sealed(document: Any, keyring: Keyring | None) -> Any:
    """A dump made with the context {"seal": True}, its secrets encrypted."""

    def seal_one(value: dict[str, Any]) -> Any:
        if set(value) != {SEALED}:
            return value
        if keyring is None:
            raise SecretKeyError("a secret cannot be stored: no secrets key was given")
        return keyring.encrypt(value[SEALED])

    return transform(document, seal_one)


def holds_clear_secrets(stored: Any, resealed: Any) -> bool:
    """Whether `stored` has a secret in clear where `resealed` (the same configuration
    dumped and encrypted now) has it encrypted."""
    if is_encrypted(resealed):
        return not is_encrypted(stored)
    if isinstance(resealed, dict) and isinstance(stored, dict):
        return any(holds_clear_secrets(stored.get(k), v) for k, v in resealed.items())
    if isinstance(resealed, list) and isinstance(stored, list):
        return any(holds_clear_secrets(s, r) for s, r in zip(stored, resealed, strict=False))
    return False
