"""rubric scores of manually graded (project) submissions

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 14:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "rubric_scores",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("submission_id", sa.Integer(), nullable=False),
        sa.Column("criterion", sa.String(length=100), nullable=False),
        sa.Column("points", sa.Float(), nullable=False),
        sa.Column("comment", sa.Text(), nullable=False),
        sa.Column("grader_id", sa.Integer(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["grader_id"], ["users.id"], name=op.f("fk_rubric_scores_grader_id_users"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["submission_id"],
            ["submissions.id"],
            name=op.f("fk_rubric_scores_submission_id_submissions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rubric_scores")),
        sa.UniqueConstraint("submission_id", "criterion", name=op.f("uq_rubric_scores_submission_id")),
    )
    with op.batch_alter_table("rubric_scores", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_rubric_scores_submission_id"), ["submission_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("rubric_scores", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_rubric_scores_submission_id"))
    op.drop_table("rubric_scores")
