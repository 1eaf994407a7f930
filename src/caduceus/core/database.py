"""Opening the database named by the settings, migrated to the current schema."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from sqlalchemy import Engine, Text, cast, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from caduceus.core.config.store import encrypt_clear_secrets
from caduceus.core.db.engine import make_engine, writer
from caduceus.core.db.migrate import upgrade
from caduceus.core.db.models import CONFIG_VERSIONS
from caduceus.core.engine_keyring import attach_keyring
from caduceus.core.secret_keys import (
    ENCRYPTED,
    Keyring,
    SecretKeyError,
    create_key_file,
    decrypted,
)
from caduceus.core.settings import Settings


def open_database(settings: Settings, *, migrate: bool = False, pool_size: int = 5) -> Engine:
    """The engine for writers (SQLite transactions take the write lock at BEGIN), with the
    key of the configuration's secrets.

    Raises SecretKeyError, with a message for the operator, when the key is missing or is not
    the one the stored secrets were encrypted with."""
    _private_sqlite_file(settings)
    engine = make_engine(
        settings.resolved_database_url,
        pool_size=pool_size,
        durable=settings.fsync,
        busy_timeout=settings.database_busy_timeout_seconds,
    )
    try:
        if migrate:
            upgrade(engine)
        attach_keyring(engine, open_keyring(settings.secrets_key_path, engine))
        if migrate:
            encrypt_clear_secrets(writer(engine))
    except BaseException:
        engine.dispose()
        raise
    return writer(engine)


def _newest_encrypted(engine: Engine) -> object | None:
    """The newest stored configuration holding an encrypted secret, if any."""
    query = (
        select(CONFIG_VERSIONS.c.content)
        .where(cast(CONFIG_VERSIONS.c.content, Text).like(f"%{ENCRYPTED}%"))
        .order_by(CONFIG_VERSIONS.c.id.desc())
        .limit(1)
    )
    try:
        with engine.connect() as conn:
            return conn.execute(query).scalar()
    except DBAPIError:
        return None  # no schema yet: nothing is encrypted


def open_keyring(path: Path, engine: Engine) -> Keyring:
    """The key file's keys; a new key file when there is none and nothing is encrypted yet.

    A new key where secrets are encrypted already would only hide the loss of the old one."""
    stored = _newest_encrypted(engine)
    if not path.exists():
        if stored is not None:
            raise SecretKeyError(
                f"the secrets key file {path} is missing, and the database holds secrets "
                "encrypted with it: restore the file from a backup (or set "
                "CADUCEUS_SECRETS_KEY_FILE to where it is)"
            )
        create_key_file(path)
    keyring = Keyring(path)
    if stored is not None:
        decrypted(stored, keyring)  # the wrong key fails here, at start, not at first use
    return keyring


def _private_sqlite_file(settings: Settings) -> None:
    """The SQLite file is created private before SQLite opens it: SQLite gives its -wal and
    -shm files the database file's mode. One from before is made private too."""
    url = make_url(settings.resolved_database_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return
    path = Path(url.database)
    path.parent.mkdir(parents=True, exist_ok=True, mode=settings.folder_mode)
    # Only a file that is not there: closing any descriptor of an open SQLite file would drop
    # this process's locks on it (POSIX), and another process could then take the WAL away.
    if not path.exists():
        with contextlib.suppress(FileExistsError):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, settings.file_mode))
    for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        try:
            if name.stat().st_mode & 0o777 & ~settings.file_mode:
                os.chmod(name, settings.file_mode)
        except (FileNotFoundError, PermissionError):
            continue  # not there yet, or another account's file: SQLite reports what fails
