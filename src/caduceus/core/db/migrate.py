"""Schema migrations (Alembic), run from code so that no alembic.ini is needed on a server."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from caduceus.core.db.engine import writer
from caduceus.core.db.migration_lock import migration_lock

MIGRATIONS = Path(__file__).parent / "migrations"


class SchemaTooNew(RuntimeError):
    """The database was migrated by a newer caduceus than this one."""


def alembic_config(engine: Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    # SQLite: take the write lock at BEGIN, so a service reading meanwhile makes the migration
    # wait its turn instead of failing with "database is locked".
    cfg.attributes["engine"] = writer(engine)
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Upgrade the schema; processes starting at once take turns, the first one migrates."""
    cfg = alembic_config(engine)
    with migration_lock(engine):
        _refuse_unknown_revisions(engine, ScriptDirectory.from_config(cfg))
        command.upgrade(cfg, revision)


def _refuse_unknown_revisions(engine: Engine, scripts: ScriptDirectory) -> None:
    # Alembic would only say "Can't locate revision": after an upgrade of some machines, an
    # old one must tell its operator what happened.
    known = {script.revision for script in scripts.walk_revisions()}
    with engine.connect() as conn:
        current = MigrationContext.configure(conn).get_current_heads()
    unknown = sorted(set(current) - known)
    if unknown:
        raise SchemaTooNew(
            f"the database schema is at revision {', '.join(unknown)}, which this version of "
            "caduceus does not know: a newer version migrated it. Install that version (or a "
            "newer one) here too, or restore a backup taken before the upgrade."
        )
