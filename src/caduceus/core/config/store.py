"""The configuration in the database: every change is a new, complete version."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pydantic import SecretStr
from sqlalchemy import Engine, insert, select

from caduceus.core.config.models import MASK, STORED, Config
from caduceus.core.db.models import CONFIG_VERSIONS
from caduceus.core.events import record_event


def content_of(config: Config) -> dict[str, Any]:
    # The database is where secrets have to be kept; every other dump masks them.
    return config.model_dump(mode="json", context={"reveal_secrets": True})


def current(engine: Engine) -> tuple[int, Config] | None:
    with engine.connect() as conn:
        row = conn.execute(
            select(CONFIG_VERSIONS.c.id, CONFIG_VERSIONS.c.content)
            .order_by(CONFIG_VERSIONS.c.id.desc())
            .limit(1)
        ).first()
    return (int(row.id), Config.model_validate(row.content, context=STORED)) if row else None


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
    return Config.model_validate(content, context=STORED)


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
    if problems:
        raise ValueError("; ".join(problems))
    return updated


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
    with engine.begin() as conn:
        row = conn.execute(
            select(CONFIG_VERSIONS.c.id, CONFIG_VERSIONS.c.content)
            .order_by(CONFIG_VERSIONS.c.id.desc())
            .limit(1)
        ).first()
        previous = Config.model_validate(row.content, context=STORED) if row is not None else None
        content = content_of(keep_secrets(change(previous), previous))
        if row is not None and row.content == content:
            return int(row.id), False
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
