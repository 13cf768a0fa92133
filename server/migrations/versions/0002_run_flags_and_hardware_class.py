"""grading runs: staff flags and the hardware class of their timings

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 12:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("grading_runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("flags", sa.JSON(), nullable=False, server_default=sa.text("'[]'")))
        batch_op.add_column(
            sa.Column("hardware_class", sa.String(length=128), nullable=False, server_default="cpu")
        )


def downgrade() -> None:
    with op.batch_alter_table("grading_runs", schema=None) as batch_op:
        batch_op.drop_column("hardware_class")
        batch_op.drop_column("flags")
