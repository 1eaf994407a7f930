"""The configuration in the database: every change is a new, complete version.

Secrets are stored encrypted with the key of the engine (see core.database.open_database and
core.secret_keys); every read decrypts them, and versions from before, stored in clear, are
encrypted at the next migration (encrypt_clear_secrets).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pydantic import SecretStr
from sqlalchemy import Connection, Engine, Text, cast, insert, select, text, update

from caduceus.core.config.models import (
    MASK,
    SECRET_NAME,
    STORED,
    Config,
    DicomWebTarget,
    Module,
    masked_url,
    masked_webhook,
)
from caduceus.core.db.models import CONFIG_VERSIONS
from caduceus.core.engine_keyring import keyring_of
from caduceus.core.events import record_event
from caduceus.core.secret_keys import (
    ENCRYPTED,
    SEALED,
    Keyring,
    SecretKeyError,
    decrypted,
    holds_clear_secrets,
    is_encrypted,
    sealed,
    transform,
)


def content_of(config: Config) -> dict[str, Any]:
    """The configuration as a document, secrets in clear (never to be shown or stored)."""
    return config.model_dump(mode="json", context={"reveal_secrets": True})


def _keyring(engine: Engine | Connection) -> Keyring | None:
    if isinstance(engine, Connection):
        engine = engine.engine
    return keyring_of(engine)


def stored_content(config: Config, keyring: Keyring | None) -> dict[str, Any]:
    """The document as the database keeps it: secrets encrypted."""
    document = config.model_dump(mode="json", context={"seal": True})
    result: dict[str, Any] = sealed(document, keyring)
    return result


def _loaded(engine: Engine, content: Any) -> Config:
    # STORED: a version an earlier release accepted still loads (its refused rules become
    # rule errors when evaluated, not a configuration that cannot be read).
    return Config.model_validate(decrypted(content, _keyring(engine)), context=STORED)


def current(engine: Engine) -> tuple[int, Config] | None:
    with engine.connect() as conn:
        row = conn.execute(
            select(CONFIG_VERSIONS.c.id, CONFIG_VERSIONS.c.content)
            .order_by(CONFIG_VERSIONS.c.id.desc())
            .limit(1)
        ).first()
    return (int(row.id), _loaded(engine, row.content)) if row else None


def current_or_default(engine: Engine) -> Config:
    found = current(engine)
    return found[1] if found else Config()


def get(engine: Engine, version: int) -> Config:
    with engine.connect() as conn:
        content = conn.execute(
            select(CONFIG_VERSIONS.c.content).where(CONFIG_VERSIONS.c.id == version)
        ).scalar()
    if content is None:
        raise LookupError(f"there is no configuration version {version}")
    return _loaded(engine, content)


def _reserved_keys(document: Any) -> list[str]:
    found: list[str] = []

    def look(value: dict[str, Any]) -> dict[str, Any]:
        found.extend(key for key in (ENCRYPTED, SEALED) if key in value)
        return value

    transform(document, look)
    return found


# Where a target sends to, and how it makes sure it is talking to that place: a masked secret
# is kept only while these stay the same, so that neither pointing a target elsewhere nor
# loosening its host-key or certificate check hands its old password to another server.
_DESTINATION = (
    "host",
    "port",
    "url",
    "bucket",
    "endpoint_url",
    "region",
    "user",
    "username",
    "host_key",
    "accept_unknown_host_key",
    "verify_tls",
    "verify_hostname",
    "tls_ca_certificate",
    "access_key_id",
    "security",
    "allow_login_in_clear",
)


def _moved(old: object, new: object) -> bool:
    """Whether new points elsewhere than old, or trusts it less: a stored secret must not
    follow it there unseen."""
    return any(getattr(old, key, None) != getattr(new, key, None) for key in _DESTINATION)


def keep_secrets(config: Config, previous: Config | None) -> Config:
    """Masked secrets (as an export without secrets shows them) keep their stored value.

    A configuration exported without its secrets can so be edited and imported again, and a
    form that never shows a password can save the rest. A masked secret with nothing to keep,
    or on a target that now points elsewhere, is an error, not a password of ten asterisks.
    """
    updated = config.model_copy(deep=True)
    problems = []
    for name, target in updated.targets.items():
        old = previous.targets.get(name) if previous else None
        moved = old is None or old.type != target.type
        if not moved:
            _unmask_partial(old, target)
        problems += [f"target {name!r}: {problem}" for problem in _still_masked(target)]
        if old is not None and not moved:
            moved = _moved(old, target)
        for field in type(target).model_fields:
            value = getattr(target, field)
            if not isinstance(value, SecretStr) or value.get_secret_value() != MASK:
                continue
            kept = None if moved else getattr(old, field)
            if isinstance(kept, SecretStr) and kept.get_secret_value():
                setattr(target, field, kept)
            elif moved and old is not None:
                problems.append(
                    f"target {name!r}: {field} is masked but the target now points elsewhere; "
                    "give the real value"
                )
            else:
                problems.append(f"target {name!r}: {field} is masked; give the real value")
    smtp = updated.settings.smtp
    if smtp.password.get_secret_value() == MASK:
        old_smtp = previous.settings.smtp if previous else None
        if old_smtp and not _moved(old_smtp, smtp):
            smtp.password = old_smtp.password
        else:
            problems.append("settings.smtp: password is masked; give the real value")
    problems += _keep_module_settings(updated, previous)
    problems += _keep_webhooks(updated, previous)
    if problems:
        raise ValueError("; ".join(problems))
    return updated


def _unmask_partial(old: object, new: object) -> None:
    """A URL whose query string (or password) is masked, or a masked access key id, as
    answers show them: the stored value, when the rest is unchanged."""
    for field, masked in (("url", masked_url), ("access_key_id", lambda _value: MASK)):
        stored, given = getattr(old, field, None), getattr(new, field, None)
        if isinstance(stored, str) and stored and given != stored and given == masked(stored):
            setattr(new, field, stored)


def _still_masked(target: object) -> list[str]:
    problems = []
    if isinstance(target, DicomWebTarget) and MASK in target.url:
        problems.append("the url is masked and cannot be kept; give the whole URL")
    if getattr(target, "access_key_id", "") == MASK:
        problems.append("access_key_id is masked and cannot be kept; give the real value")
    return problems


# What a module runs, what it reaches and what it is given besides its settings: a masked
# secret is kept only while these and its other settings stay the same, so that neither a new
# endpoint setting nor a network or a volume of its own hands the stored key to someone else.
_MODULE_REACH = (
    "image",
    "command",
    "network",
    "volumes",
    "sandbox",
    "requires_root",
    "capabilities",
    "secret_settings",
    "docker_arguments",
    "persistence_folder_name",
)


def _same_others(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether the values that new does not mask are those of old."""
    masked = {key for key, value in new.items() if value == MASK}
    return {k: v for k, v in old.items() if k not in masked} == {
        k: v for k, v in new.items() if k not in masked
    }


def _module_unchanged(old: Module | None, new: Module | None) -> bool:
    """Whether new runs the same program, reaching the same places with the same other
    settings and environment as old (masked values left out of the comparison)."""
    return (
        old is not None
        and new is not None
        and all(getattr(old, key) == getattr(new, key) for key in _MODULE_REACH)
        and _same_others(old.settings, new.settings)
        and _same_others(old.environment, new.environment)
    )


_MOVED_MODULE = "is masked but the module changed; give the real value again"


def _keep_module_settings(config: Config, previous: Config | None) -> list[str]:
    """Masked secret settings and environment variables of modules (and of rules for their
    modules) keep the stored value while the module is unchanged otherwise; anything else is
    an error."""
    problems = []
    for name, module in config.modules.items():
        old = previous.modules.get(name) if previous else None
        same = _module_unchanged(old, module)
        for field, kept, secret in (
            ("setting", old.settings if old else {}, module.is_secret),
            ("environment variable", old.environment if old else {}, SECRET_NAME.search),
        ):
            given = module.settings if field == "setting" else module.environment
            for key, value in given.items():
                if value != MASK or not secret(key):
                    continue
                if same and key in kept:
                    given[key] = kept[key]
                elif old is not None and key in kept:
                    problems.append(f"module {name!r}: {field} {key!r} {_MOVED_MODULE}")
                else:
                    problems.append(
                        f"module {name!r}: {field} {key!r} is masked; give the real value"
                    )
    for name, rule in config.rules.items():
        old_rule = previous.rules.get(name) if previous else None
        for index, given in enumerate(rule.module_settings):
            module_name = rule.modules[index] if index < len(rule.modules) else ""
            used = config.modules.get(module_name)
            old_one: dict[str, Any] = {}
            if (
                old_rule is not None
                and index < len(old_rule.module_settings)
                and old_rule.modules[index] == module_name
                and previous is not None
            ):
                old_one = old_rule.module_settings[index]
            same = (
                previous is not None
                and _module_unchanged(previous.modules.get(module_name), used)
                and _same_others(old_one, given)
            )
            for key, value in given.items():
                if value != MASK:
                    continue
                if same and key in old_one:
                    given[key] = old_one[key]
                elif key in old_one:
                    problems.append(
                        f"rule {name!r}: setting {key!r} for module {module_name!r} {_MOVED_MODULE}"
                    )
                elif used is None or used.is_secret(key):
                    problems.append(
                        f"rule {name!r}: setting {key!r} for module {module_name!r} is masked; "
                        "give the real value"
                    )
    return problems


def _keep_webhooks(config: Config, previous: Config | None) -> list[str]:
    """A webhook URL shown masked (scheme and host) keeps the stored URL when it still names
    the same host; a masked one for another host is an error."""
    problems = []
    for name, rule in config.rules.items():
        given = rule.notification.webhook_url
        if MASK not in given:
            continue
        old_rule = previous.rules.get(name) if previous else None
        stored = old_rule.notification.webhook_url if old_rule else ""
        if stored and given == masked_webhook(stored):
            rule.notification.webhook_url = stored
        else:
            problems.append(
                f"rule {name!r}: the webhook URL is masked and cannot be kept; give the whole URL"
            )
    return problems


def save(engine: Engine, config: Config, author: str, comment: str = "") -> tuple[int, bool]:
    """Store config as the newest version. Returns (version, whether anything changed).

    Raises ValueError when a masked secret has no stored value to keep.
    """
    return edit(engine, lambda _previous: config, author, comment)


def edit(
    engine: Engine,
    change: Callable[[Config | None], Config],
    author: str,
    comment: str = "",
) -> tuple[int, bool]:
    """Make the newest version from the one stored now, in one transaction: two people
    editing different rules at the same moment both keep their change.

    `change` gets the stored configuration (secrets included, None when there is none yet)
    and returns the new one; masked secrets in it keep their stored values.
    """
    keyring = _keyring(engine)
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Waits for a rotation (reencrypt_all) to commit, and keeps one from starting
            # until this version is in: read, encrypted and inserted with the keys the key
            # file holds once the lock is ours (Keyring.encrypt reads the file again when it
            # changed), never encrypted with a key the rotation is about to drop. (SQLite
            # takes its write lock at BEGIN.)
            conn.execute(text("LOCK TABLE config_versions IN SHARE ROW EXCLUSIVE MODE"))
        row = conn.execute(
            select(CONFIG_VERSIONS.c.id, CONFIG_VERSIONS.c.content)
            .order_by(CONFIG_VERSIONS.c.id.desc())
            .limit(1)
        ).first()
        previous = _loaded(engine, row.content) if row is not None else None
        _same_key(conn, keyring)
        config = keep_secrets(change(previous), previous)
        # Encryption is never the same twice: compare the configurations in clear.
        if row is not None and previous is not None and content_of(previous) == content_of(config):
            return int(row.id), False
        if _reserved_keys(content_of(config)):
            raise ValueError(f"the names {ENCRYPTED} and {SEALED} are reserved")
        content = stored_content(config, keyring)
        version = conn.execute(
            insert(CONFIG_VERSIONS)
            .values(created_at=datetime.now(UTC), author=author, comment=comment, content=content)
            .returning(CONFIG_VERSIONS.c.id)
        ).scalar_one()
        record_event(
            conn,
            "config.changed",
            comment or "configuration changed",
            details={"version": int(version), "author": author},
        )
        return int(version), True


def _same_key(conn: Connection, keyring: Keyring | None) -> None:
    """Raises SecretKeyError unless the key file holds the key of the newest stored secret.

    Two machines started on a fresh database each make a key of their own (nothing is
    encrypted yet to tell them otherwise): the second to save secrets stops here, under the
    lock, instead of storing versions that only its own key file can read."""
    stored = conn.execute(
        select(CONFIG_VERSIONS.c.content)
        .where(cast(CONFIG_VERSIONS.c.content, Text).like(f"%{ENCRYPTED}%"))
        .order_by(CONFIG_VERSIONS.c.id.desc())
        .limit(1)
    ).scalar()
    if stored is not None:
        decrypted(stored, keyring)


def restore(engine: Engine, version: int, author: str) -> int:
    """Make an old version the newest one again (history is never rewritten)."""
    config = get(engine, version)
    new_version, _ = save(engine, config, author, f"restored version {version}")
    return new_version


def history(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                CONFIG_VERSIONS.c.id,
                CONFIG_VERSIONS.c.created_at,
                CONFIG_VERSIONS.c.author,
                CONFIG_VERSIONS.c.comment,
            ).order_by(CONFIG_VERSIONS.c.id.desc())
        )
        return [
            {
                "version": r.id,
                "created_at": r.created_at.isoformat(),
                "author": r.author,
                "comment": r.comment,
            }
            for r in rows
        ]


def encrypt_clear_secrets(engine: Engine) -> int:
    """Encrypt the secrets that versions stored before encryption hold in clear, every
    version at once. Returns how many versions were rewritten."""
    keyring = _keyring(engine)
    if keyring is None:
        raise SecretKeyError("no secrets key: the stored secrets cannot be encrypted")
    rewritten = 0
    with engine.begin() as conn:
        rows = conn.execute(select(CONFIG_VERSIONS.c.id, CONFIG_VERSIONS.c.content)).all()
        for row in rows:
            if not _may_hold_clear_secrets(row.content):
                continue  # written encrypted (or without secrets): no validation at each start
            config = _loaded(engine, row.content)
            content = stored_content(config, keyring)
            if holds_clear_secrets(row.content, content):
                conn.execute(
                    update(CONFIG_VERSIONS)
                    .where(CONFIG_VERSIONS.c.id == row.id)
                    .values(content=content)
                )
                rewritten += 1
    return rewritten


# Names that contain "key" and the like but hold no secret (a file's path, a public key).
_NOT_SECRET = frozenset(
    ("tls_key", "private_key_file", "host_key", "accept_unknown_host_key", "tls_certificate")
)


def _may_hold_clear_secrets(document: Any) -> bool:
    """A quick look at a stored document: False when no value that a dump would encrypt is
    there in clear. (True may be wrong; the caller then compares the full dump.)"""
    found = False
    modules = document.get("modules") if isinstance(document, dict) else None
    marked = {
        str(name)
        for module in (modules.values() if isinstance(modules, dict) else ())
        if isinstance(module, dict) and isinstance(module.get("secret_settings"), list)
        for name in module["secret_settings"]
    }

    def look(value: dict[str, Any]) -> dict[str, Any]:
        nonlocal found
        for key, item in value.items():
            if key in _NOT_SECRET or is_encrypted(item) or item in ("", None, [], {}):
                continue
            if key == "webhook_url":
                found = found or isinstance(item, str)
            elif key == "url":
                found = found or (isinstance(item, str) and masked_url(item) != item)
            elif key != "secret_settings" and (key in marked or SECRET_NAME.search(key)):
                found = True
        return value

    transform(document, look)
    return found


def reencrypt_all(engine: Engine, keyring: Keyring) -> int:
    """Encrypt every stored secret of every version again with the keyring's first key, in
    one transaction (rotation). Returns how many versions there are."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # No version may be added, encrypted with the old key, while this runs.
            conn.execute(text("LOCK TABLE config_versions IN EXCLUSIVE MODE"))
        rows = conn.execute(select(CONFIG_VERSIONS.c.id, CONFIG_VERSIONS.c.content)).all()
        for row in rows:
            content = transform(
                row.content,
                lambda value: (
                    {ENCRYPTED: keyring.rotate(value[ENCRYPTED])} if is_encrypted(value) else value
                ),
            )
            conn.execute(
                update(CONFIG_VERSIONS)
                .where(CONFIG_VERSIONS.c.id == row.id)
                .values(content=content)
            )
    return len(rows)
