"""The configuration in the database: every change is a new, complete version."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, insert, select

from caduceus.core.config.models import Config
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
    return (int(row.id), Config.model_validate(row.content)) if row else None


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
    return Config.model_validate(content)


def save(engine: Engine, config: Config, author: str, comment: str = "") -> tuple[int, bool]:
    """Store config as the newest version. Returns (version, whether anything changed)."""
    content = content_of(config)
    with engine.begin() as conn:
        row = conn.execute(
            select(CONFIG_VERSIONS.c.id, CONFIG_VERSIONS.c.content)
            .order_by(CONFIG_VERSIONS.c.id.desc())
            .limit(1)
        ).first()
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
