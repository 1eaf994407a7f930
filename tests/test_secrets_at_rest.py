"""Secrets at rest: encrypted in every configuration version with a key file outside the
database, rotation, private files whatever the umask, and exports without secrets."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy import insert, select, text

from caduceus.core.config import store
from caduceus.core.config.models import Config, FolderTarget
from caduceus.core.db.engine import make_engine
from caduceus.core.db.migrate import upgrade
from caduceus.core.db.models import CONFIG_VERSIONS
from caduceus.core.secret_keys import ENCRYPTED
from caduceus.dispatcher.targets.base import Shipment
from caduceus.dispatcher.targets.folder import FolderWriter
from tests.conftest import Launch
from tests.support.processes import Caduceus, free_port

SECRETS = {
    "sftp": "sftp-Pa55word-7781",
    "token": "dicomweb-Token-99812",
    "apikey": "QueryApiKey-44120",
    "key_id": "AKIAKEYID00112233",
    "s3": "s3-Secret-Access-55671",
    "smtp": "smtp-Pa55-31337",
    "module": "module-Licence-60606",
}


def _document(comment: str = "") -> dict[str, object]:
    return {
        "settings": {
            "smtp": {"host": "mail.example", "username": "u", "password": SECRETS["smtp"]}
        },
        "targets": {
            "sftp": {
                "type": "sftp",
                "host": "127.0.0.1",
                "user": "u",
                "password": SECRETS["sftp"],
                "folder": "/in",
                "accept_unknown_host_key": True,
                "comment": comment,
            },
            "web": {
                "type": "dicomweb",
                "url": f"https://pacs.example/dicomweb?apikey={SECRETS['apikey']}",
                "token": SECRETS["token"],
            },
            "bucket": {
                "type": "s3",
                "bucket": "images",
                "access_key_id": SECRETS["key_id"],
                "secret_access_key": SECRETS["s3"],
            },
        },
        "modules": {
            "ai": {
                "image": "example/ai:1",
                "settings": {"licence": SECRETS["module"], "x": 1},
                "secret_settings": ["licence"],
            },
        },
    }


def _raw_rows(instance: Caduceus) -> list[str]:
    """Every stored version as the database holds it (no decryption)."""
    engine = make_engine(instance.database_url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.connect() as conn:
            return [
                str(row[0])
                for row in conn.execute(text("SELECT CAST(content AS TEXT) FROM config_versions"))
            ]
    finally:
        engine.dispose()


def _database_bytes(instance: Caduceus) -> bytes:
    """The SQLite file and its WAL as bytes on disk; for PostgreSQL the rows' text."""
    if instance.database_url.startswith("sqlite"):
        path = Path(instance.database_url.removeprefix("sqlite:///"))
        return b"".join(p.read_bytes() for p in (path, Path(f"{path}-wal")) if p.exists())
    return "\n".join(_raw_rows(instance)).encode()


@pytest.fixture
def configured(tmp_path: Path, database_url: str) -> Iterator[Caduceus]:
    """Two configuration versions with secrets, imported with the CLI (the real code path)."""
    instance = Caduceus(tmp_path / "home", database_url, free_port())
    instance.home.mkdir(parents=True)
    for version, comment in ((1, "comment-one"), (2, "comment-two")):
        path = tmp_path / f"v{version}.yaml"
        path.write_text(yaml.safe_dump(_document(comment)))
        instance.cli("config", "import", str(path))
    yield instance


def test_no_version_holds_a_secret_in_clear(configured: Caduceus, tmp_path: Path) -> None:
    rows = _raw_rows(configured)
    assert len(rows) == 2 and all(ENCRYPTED in row for row in rows)
    stored = _database_bytes(configured)
    for value in SECRETS.values():
        assert value.encode() not in stored, value
    # The services get the values back: an export with secrets, of each version.
    for version in ("1", "2"):
        out = tmp_path / f"export{version}.yaml"
        configured.cli("config", "export", "--version", version, "--with-secrets", "-o", str(out))
        exported = out.read_text()
        assert all(value in exported for value in SECRETS.values())
        assert stat.S_IMODE(out.stat().st_mode) == 0o600
    # Without --with-secrets: none of them, also not the URL's query or the key id.
    plain = configured.cli("config", "export").stdout
    assert not [value for value in SECRETS.values() if value in plain]
    assert "https://pacs.example/dicomweb?**********" in plain
    # An old version restored is usable, and stored encrypted again.
    configured.cli("config", "restore", "1")
    out = tmp_path / "restored.yaml"
    configured.cli("config", "export", "--with-secrets", "-o", str(out))
    assert "comment: comment-one" in out.read_text() and SECRETS["sftp"] in out.read_text()
    assert not [v for v in SECRETS.values() if v.encode() in _database_bytes(configured)]


def test_a_masked_export_imported_again_keeps_every_secret(
    configured: Caduceus, tmp_path: Path
) -> None:
    masked = tmp_path / "masked.yaml"
    masked.write_text(
        configured.cli("config", "export").stdout.replace("comment-two", "comment-three")
    )
    configured.cli("config", "import", str(masked))
    out = tmp_path / "after.yaml"
    configured.cli("config", "export", "--with-secrets", "-o", str(out))
    exported = out.read_text()
    assert "comment: comment-three" in exported
    assert all(value in exported for value in SECRETS.values())


def test_versions_stored_in_clear_before_are_encrypted_at_start(
    tmp_path: Path, database_url: str
) -> None:
    # A database as the code before encryption left it: the document with its secrets in
    # clear (store.content_of is what that code stored).
    instance = Caduceus(tmp_path / "home", database_url, free_port())
    instance.home.mkdir(parents=True)
    engine = make_engine(instance.database_url.replace("postgresql://", "postgresql+psycopg://"))
    upgrade(engine)
    clear = store.content_of(Config.model_validate(_document("legacy")))
    with engine.begin() as conn:
        conn.execute(
            insert(CONFIG_VERSIONS).values(
                created_at=__import__("datetime").datetime.now(),
                author="old",
                comment="",
                content=clear,
            )
        )
    assert SECRETS["sftp"] in "".join(_raw_rows(instance))
    engine.dispose()

    instance.cli("config", "history")  # any start migrates
    assert not [v for v in SECRETS.values() if v.encode() in _database_bytes(instance)]
    out = tmp_path / "out.yaml"
    instance.cli("config", "export", "--with-secrets", "-o", str(out))
    assert all(value in out.read_text() for value in SECRETS.values())


def test_a_missing_or_wrong_key_is_said_at_start(configured: Caduceus) -> None:
    key = configured.home / "secret.key"
    saved = key.read_bytes()
    key.unlink()
    missing = configured.cli("config", "export", check=False)
    assert missing.returncode == 2
    assert "secrets key file" in missing.stderr and "missing" in missing.stderr
    assert "Traceback" not in missing.stderr + missing.stdout
    assert not key.exists()  # no new key made over encrypted secrets

    key.write_bytes(Fernet.generate_key() + b"\n")
    wrong = configured.cli("router", check=False, timeout=60)
    assert wrong.returncode == 2
    assert "not the key the secrets were encrypted with" in wrong.stderr
    assert "Traceback" not in wrong.stderr

    key.write_bytes(saved)
    assert configured.cli("config", "history").returncode == 0


def test_rotation_encrypts_every_version_with_a_new_key(
    configured: Caduceus, tmp_path: Path
) -> None:
    key = configured.home / "secret.key"
    old = Fernet(key.read_bytes().strip())
    tokens_before = _tokens(configured)
    assert tokens_before and all(old.decrypt(t.encode()) for t in tokens_before)

    configured.cli("secrets", "rotate-key")

    lines = key.read_text().split()
    assert len(lines) == 1 and stat.S_IMODE(key.stat().st_mode) == 0o600
    tokens = _tokens(configured)
    assert len(tokens) == len(tokens_before)
    for token in tokens:
        with pytest.raises(InvalidToken):
            old.decrypt(token.encode())
        Fernet(lines[0].encode()).decrypt(token.encode())
    out = tmp_path / "out.yaml"
    configured.cli("config", "export", "--version", "1", "--with-secrets", "-o", str(out))
    assert all(value in out.read_text() for value in SECRETS.values())


def _tokens(instance: Caduceus) -> list[str]:
    engine = instance.engine()
    try:
        with engine.connect() as conn:
            contents = conn.execute(select(CONFIG_VERSIONS.c.content)).scalars().all()
    finally:
        engine.dispose()
    found: list[str] = []

    def walk(value: object) -> None:
        if isinstance(value, dict):
            if set(value) == {ENCRYPTED}:
                found.append(value[ENCRYPTED])
            for inner in value.values():
                walk(inner)
        elif isinstance(value, list):
            for inner in value:
                walk(inner)

    walk(contents)
    return found


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_files_are_private_whatever_the_umask(launch: Launch, tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        receiver = launch("receiver")
    finally:
        os.umask(previous)
    home = receiver.home
    assert _mode(home) == 0o700
    assert _mode(home / "secret.key") == 0o600
    assert _mode(home / "logs") == 0o700
    assert _mode(home / "logs" / "receiver.log") == 0o600
    if receiver.database_url.startswith("sqlite"):
        database = Path(receiver.database_url.removeprefix("sqlite:///"))
        assert _mode(database) == 0o600
        assert _mode(Path(f"{database}-wal")) == 0o600


@pytest.mark.parametrize(
    ("group_access", "folder", "file"), [(False, 0o700, 0o600), (True, 0o750, 0o640)]
)
def test_folder_target_outputs_are_private(
    tmp_path: Path, small_series: list[Path], group_access: bool, folder: int, file: int
) -> None:
    (tmp_path / "out").mkdir()
    writer = FolderWriter(FolderTarget(path=str(tmp_path / "out"), group_access=group_access))
    previous = os.umask(0o022)
    try:
        report = writer.send(small_series, Shipment(task_id="t1"))
    finally:
        os.umask(previous)
    assert len(report.accepted) == len(small_series)
    delivered = tmp_path / "out" / "t1"
    assert _mode(delivered) == folder
    assert {_mode(p) for p in delivered.iterdir()} == {file}
