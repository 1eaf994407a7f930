"""Masked secrets in edits: kept only while they go where they went before; secret module
environment variables and webhook URLs treated like other secrets; URLs that cannot be taken
apart refused; the key file durable; an edit never encrypted with a key a rotation drops."""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from pydantic import ValidationError
from sqlalchemy import Engine, insert, select, text, update

from caduceus.core import secret_keys
from caduceus.core.config import store
from caduceus.core.config.models import MASK, Config
from caduceus.core.database import open_database
from caduceus.core.db.engine import make_engine
from caduceus.core.db.migrate import upgrade
from caduceus.core.db.models import CONFIG_VERSIONS
from caduceus.core.secret_keys import ENCRYPTED, Keyring, is_encrypted, transform
from caduceus.core.settings import Settings

API_KEY = "module-ApiKey-81723"
ENV_TOKEN = "env-Token-55190"
HOOK_TOKEN = "XyZhookToken4412"
HOOK = f"https://hooks.example/services/T0/B0/{HOOK_TOKEN}?sig=HookSig9931"


def _document() -> dict[str, Any]:
    return {
        "modules": {
            "ai": {
                "image": "example/ai:1",
                "settings": {"endpoint": "https://good.example", "api_key": API_KEY},
                "environment": {"API_TOKEN": ENV_TOKEN, "MODE": "fast"},
            }
        },
        "rules": {
            "r": {
                "rule": "True",
                "action": "process",
                "modules": ["ai"],
                "module_settings": [{"endpoint": "https://good.example", "api_token": API_KEY}],
                "notification": {"webhook_url": HOOK, "on_reception": True},
            }
        },
    }


@pytest.fixture
def engine(database_url: str, tmp_path: Path) -> Iterator[Engine]:
    settings = Settings(home=tmp_path / "home", database_url=database_url)
    engine = open_database(settings, migrate=True)
    store.save(engine, Config.model_validate(_document()), "test")
    yield engine
    engine.dispose()


def _masked() -> dict[str, Any]:
    """The configuration as every role is shown it (and an admin's form sends it back)."""
    dumped: dict[str, Any] = Config.model_validate(_document()).model_dump(mode="json")
    return dumped


def _raw(engine: Engine) -> str:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT CAST(content AS TEXT) FROM config_versions"))
        return "\n".join(str(row[0]) for row in rows)


def _redirect_setting(doc: dict[str, Any]) -> None:
    doc["modules"]["ai"]["settings"]["endpoint"] = "https://evil.example"


def _network(doc: dict[str, Any]) -> None:
    doc["modules"]["ai"]["network"] = True


def _volume(doc: dict[str, Any]) -> None:
    doc["modules"]["ai"]["volumes"] = ["/srv/shared:/out"]


def _environment(doc: dict[str, Any]) -> None:
    doc["modules"]["ai"]["environment"]["HTTPS_PROXY"] = "http://evil.example:3128"


def _rule_redirect(doc: dict[str, Any]) -> None:
    doc["rules"]["r"]["module_settings"][0]["endpoint"] = "https://evil.example"


@pytest.mark.parametrize(
    "change", [_redirect_setting, _network, _volume, _environment, _rule_redirect]
)
def test_a_masked_module_secret_does_not_follow_a_changed_module(
    engine: Engine, change: Any
) -> None:
    document = _masked()
    change(document)
    with pytest.raises(ValueError, match="give the real value again"):
        store.save(engine, Config.model_validate(document), "admin")
    stored = store.current_or_default(engine)
    assert stored.modules["ai"].settings["endpoint"] == "https://good.example"
    assert stored.rules["r"].module_settings[0]["endpoint"] == "https://good.example"


def test_an_unchanged_module_keeps_its_masked_secrets(engine: Engine) -> None:
    document = _masked()
    document["modules"]["ai"]["comment"] = "edited"
    document["rules"]["r"]["comment"] = "edited"
    _, changed = store.save(engine, Config.model_validate(document), "admin")
    assert changed
    stored = store.current_or_default(engine)
    assert stored.modules["ai"].settings["api_key"] == API_KEY
    assert stored.modules["ai"].environment["API_TOKEN"] == ENV_TOKEN
    assert stored.rules["r"].module_settings[0]["api_token"] == API_KEY
    assert stored.rules["r"].notification.webhook_url == HOOK
    assert stored.modules["ai"].comment == "edited"


def test_secret_environment_and_webhook_are_masked_and_encrypted(engine: Engine) -> None:
    shown = json.dumps(_masked())
    for secret in (ENV_TOKEN, HOOK_TOKEN, "HookSig9931"):
        assert secret not in shown
    module = _masked()["modules"]["ai"]
    assert module["environment"] == {"API_TOKEN": MASK, "MODE": "fast"}
    assert _masked()["rules"]["r"]["notification"]["webhook_url"] == f"https://hooks.example/{MASK}"
    raw = _raw(engine)
    assert ENCRYPTED in raw
    for secret in (API_KEY, ENV_TOKEN, HOOK_TOKEN, "HookSig9931"):
        assert secret not in raw


def test_a_masked_webhook_for_another_host_is_refused(engine: Engine) -> None:
    document = _masked()
    document["rules"]["r"]["notification"]["webhook_url"] = f"https://evil.example/{MASK}"
    with pytest.raises(ValueError, match="webhook URL is masked"):
        store.save(engine, Config.model_validate(document), "admin")
    assert store.current_or_default(engine).rules["r"].notification.webhook_url == HOOK


@pytest.mark.parametrize(
    "url", ["http://[::1/x", "http://host:port/x", "ftp://host/x", "http:///x"]
)
def test_a_url_that_cannot_be_taken_apart_is_refused(url: str) -> None:
    with pytest.raises(ValidationError):
        Config.model_validate({"targets": {"w": {"type": "dicomweb", "url": url}}})
    document = _document()
    document["rules"]["r"]["notification"]["webhook_url"] = url
    with pytest.raises(ValidationError):
        Config.model_validate(document)


def test_a_stored_malformed_url_still_starts_and_is_shown_masked(
    database_url: str, tmp_path: Path
) -> None:
    """A version stored in clear by a release without the check: the migration that encrypts
    it, and every page that shows it, must not fail on it."""
    settings = Settings(home=tmp_path / "home", database_url=database_url)
    engine = make_engine(settings.resolved_database_url)
    upgrade(engine)
    bad = "http://[::1/x?apikey=StoredKey7731"
    content = {"targets": {"w": {"type": "dicomweb", "url": bad}}}
    with engine.begin() as conn:
        conn.execute(
            insert(CONFIG_VERSIONS).values(
                created_at=datetime.now(UTC), author="old", content=content
            )
        )
    engine.dispose()
    opened = open_database(settings, migrate=True)
    try:
        config = store.current_or_default(opened)
        assert config.model_dump(mode="json")["targets"]["w"]["url"] == MASK
        assert "StoredKey7731" not in _raw(opened)
    finally:
        opened.dispose()


def test_the_key_file_rename_reaches_the_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A spy on fsync: no power cut can be made here, so what is written out is recorded."""
    synced: list[bool] = []
    real = os.fsync

    def spy(fd: int) -> None:
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real(fd)

    monkeypatch.setattr(secret_keys.os, "fsync", spy)
    path = tmp_path / "keys" / "secret.key"
    secret_keys.create_key_file(path)
    assert synced == [False, True]  # the file, then the folder holding its name
    synced.clear()
    secret_keys.write_key_file(path, [Fernet.generate_key()])
    assert synced == [False, True]  # the new file, then the folder after the rename


def test_an_edit_during_a_rotation_is_encrypted_with_the_new_key(
    postgres_engine: tuple[Engine, Path],
) -> None:
    """The rotation takes its lock, as `caduceus secrets rotate-key` does, while an edit
    starts; the edit must wait and encrypt with the key that is kept, not the dropped one."""
    engine, path = postgres_engine
    old = secret_keys.keys_in(path)
    new = Fernet.generate_key()
    done: list[BaseException | None] = []

    def edit() -> None:
        try:

            def change(previous: Config | None) -> Config:
                assert previous is not None
                edited = previous.model_copy(deep=True)
                edited.modules["ai"].settings["api_key"] = "edited-Key-2291"
                return edited

            store.edit(engine, change, "admin")
            done.append(None)
        except BaseException as exc:
            done.append(exc)

    with engine.connect() as rotation:
        rotation.execute(text("LOCK TABLE config_versions IN EXCLUSIVE MODE"))
        editor = threading.Thread(target=edit)
        editor.start()
        time.sleep(1.5)  # the edit reads (and, unlocked, encrypts) while the rotation runs
        assert not done, "the edit must wait for the rotation"
        secret_keys.write_key_file(path, [new, *old])
        keyring = Keyring(path)
        for row in rotation.execute(select(CONFIG_VERSIONS.c.id, CONFIG_VERSIONS.c.content)):
            content = transform(
                row.content,
                lambda v: {ENCRYPTED: keyring.rotate(v[ENCRYPTED])} if is_encrypted(v) else v,
            )
            rotation.execute(
                update(CONFIG_VERSIONS)
                .where(CONFIG_VERSIONS.c.id == row.id)
                .values(content=content)
            )
        rotation.commit()
    editor.join(30)
    assert done == [None]
    secret_keys.write_key_file(path, [new])  # the rotation drops the old key
    only_new = Keyring(path)
    with engine.connect() as conn:
        rows = conn.execute(select(CONFIG_VERSIONS.c.content).order_by(CONFIG_VERSIONS.c.id))
        contents = [row.content for row in rows]
    assert len(contents) == 2
    newest = secret_keys.decrypted(contents[-1], only_new)  # fails with the dropped key
    assert newest["modules"]["ai"]["settings"]["api_key"] == "edited-Key-2291"


@pytest.fixture
def postgres_engine(database_url: str, tmp_path: Path) -> Iterator[tuple[Engine, Path]]:
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite takes its write lock at BEGIN: edits and rotation cannot overlap")
    settings = Settings(home=tmp_path / "home", database_url=database_url)
    engine = open_database(settings, migrate=True)
    store.save(engine, Config.model_validate(_document()), "test")
    yield engine, settings.secrets_key_path
    engine.dispose()


def test_a_second_machine_with_its_own_key_cannot_store_secrets(
    database_url: str, tmp_path: Path
) -> None:
    """Two machines started on a fresh database each made a key; the second to save secrets
    is stopped, not left storing versions the first cannot read."""
    first, second = (
        open_database(Settings(home=tmp_path / name, database_url=database_url), migrate=True)
        for name in ("first", "second")
    )
    try:
        store.save(first, Config.model_validate(_document()), "first")
        store.save(first, Config(), "first")  # the newest version holds no secret
        with pytest.raises(secret_keys.SecretKeyError, match="not the key"):
            store.save(second, Config.model_validate(_document()), "second")
        assert len(store.history(first)) == 2
    finally:
        first.dispose()
        second.dispose()


def test_a_web_save_with_the_wrong_key_says_so_and_saves_nothing(
    database_url: str, tmp_path: Path
) -> None:
    """The second machine's web: the admin's save is refused with the reason (503), not a
    500, and no version is added."""
    from tests.support.web import as_role, web_client

    first = open_database(
        Settings(home=tmp_path / "first", database_url=database_url), migrate=True
    )
    second = open_database(Settings(home=tmp_path / "second", database_url=database_url))
    try:
        store.save(first, Config.model_validate(_document()), "first")
        client = web_client(tmp_path / "second", database_url, second)
        admin = as_role(client, second, "admin")
        answer = client.put("/api/config", json=_document(), headers=admin)
        assert answer.status_code == 503, answer.text
        assert "Nothing was saved" in answer.json()["detail"]
        assert "not the key" in answer.json()["detail"]
        assert len(store.history(first)) == 1
    finally:
        first.dispose()
        second.dispose()
