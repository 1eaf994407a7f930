"""Schema migrations (Alembic), run from code so that no alembic.ini is needed on a server."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine

from caduceus.core.db.engine import writer
from caduceus.core.db.migration_lock import migration_lock

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(engine: Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    # SQLite: take the write lock at BEGIN, so a service reading meanwhile makes the migration
    # wait its turn instead of failing with "database is locked".
    cfg.attributes["engine"] = writer(engine)
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Upgrade the schema; processes starting at once take turns, the first one migrates."""
    with migration_lock(engine):
        command.upgrade(alembic_config(engine), revision)
