"""association tls

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05 08:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Whether the association came in on the receiver's TLS port; the earlier ones did not.
    with op.batch_alter_table("associations", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("tls", sa.Boolean(), server_default=sa.false(), nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("associations", schema=None) as batch_op:
        batch_op.drop_column("tls")
