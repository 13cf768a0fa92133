"""course operations: late policy, extensions, overrides, lanes, fair use, similarity

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 13:54:18
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "extensions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("assignment_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("granted_by_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["assignment_id"],
            ["assignments.id"],
            name=op.f("fk_extensions_assignment_id_assignments"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["granted_by_id"],
            ["users.id"],
            name=op.f("fk_extensions_granted_by_id_users"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_extensions_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_extensions")),
        sa.UniqueConstraint("assignment_id", "user_id", name=op.f("uq_extensions_assignment_id")),
    )
    with op.batch_alter_table("extensions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_extensions_assignment_id"), ["assignment_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_extensions_user_id"), ["user_id"], unique=False)

    op.create_table(
        "rate_buckets",
        sa.Column("assignment_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("tokens", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["assignment_id"],
            ["assignments.id"],
            name=op.f("fk_rate_buckets_assignment_id_assignments"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_rate_buckets_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("assignment_id", "user_id", name=op.f("pk_rate_buckets")),
    )
    op.create_table(
        "similarity_reports",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("assignment_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("requested_by_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("result", sa.JSON(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["assignment_id"],
            ["assignments.id"],
            name=op.f("fk_similarity_reports_assignment_id_assignments"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["requested_by_id"],
            ["users.id"],
            name=op.f("fk_similarity_reports_requested_by_id_users"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_similarity_reports")),
    )
    with op.batch_alter_table("similarity_reports", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_similarity_reports_assignment_id"), ["assignment_id"], unique=False
        )

    op.create_table(
        "score_overrides",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("submission_id", sa.Integer(), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_by_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["created_by_id"],
            ["users.id"],
            name=op.f("fk_score_overrides_created_by_id_users"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["submission_id"],
            ["submissions.id"],
            name=op.f("fk_score_overrides_submission_id_submissions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_score_overrides")),
        sa.UniqueConstraint("submission_id", name=op.f("uq_score_overrides_submission_id")),
    )
    with op.batch_alter_table("assignments", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "late_policy", sa.JSON(), nullable=False, server_default=sa.text('\'{"kind": "hard"}\'')
            )
        )
        batch_op.add_column(
            sa.Column("counting", sa.String(length=16), server_default="latest", nullable=False)
        )
        batch_op.add_column(sa.Column("weight", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("rate_limit_count", sa.Integer(), nullable=True))
        batch_op.add_column(
            sa.Column("rate_limit_window_s", sa.Integer(), server_default="3600", nullable=False)
        )
        batch_op.add_column(
            sa.Column("max_queued_per_student", sa.Integer(), server_default="2", nullable=False)
        )
        batch_op.add_column(sa.Column("remeasure_top_n", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("remeasured_at", sa.DateTime(timezone=True), nullable=True))

    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(sa.Column("language", sa.String(length=8), nullable=True))

    with op.batch_alter_table("courses", schema=None) as batch_op:
        batch_op.add_column(sa.Column("late_days_budget", sa.Integer(), server_default="0", nullable=False))

    with op.batch_alter_table("enrollments", schema=None) as batch_op:
        batch_op.add_column(sa.Column("alias", sa.String(length=40), nullable=True))
        batch_op.create_unique_constraint("uq_enrollments_course_id_alias", ["course_id", "alias"])

    with op.batch_alter_table("grading_runs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("purpose", sa.String(length=16), server_default="grade", nullable=False)
        )
        batch_op.add_column(sa.Column("hidden_reason", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("hidden_by_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_grading_runs_hidden_by_id_users"),
            "users",
            ["hidden_by_id"],
            ["id"],
            ondelete="SET NULL",
        )

    with op.batch_alter_table("submissions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("lane", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("marked_final_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("submitted_at", sa.DateTime(timezone=True), nullable=True))
    # Until now queued_at was the submission time (a regrade re-queues, so it is the best estimate there is).
    op.execute("UPDATE submissions SET submitted_at = queued_at")
    with op.batch_alter_table("submissions", schema=None) as batch_op:
        batch_op.alter_column("submitted_at", existing_type=sa.DateTime(timezone=True), nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("submissions", schema=None) as batch_op:
        batch_op.drop_column("submitted_at")
        batch_op.drop_column("marked_final_at")
        batch_op.drop_column("lane")

    with op.batch_alter_table("grading_runs", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_grading_runs_hidden_by_id_users"), type_="foreignkey")
        batch_op.drop_column("hidden_by_id")
        batch_op.drop_column("hidden_reason")
        batch_op.drop_column("purpose")

    with op.batch_alter_table("enrollments", schema=None) as batch_op:
        batch_op.drop_constraint("uq_enrollments_course_id_alias", type_="unique")
        batch_op.drop_column("alias")

    with op.batch_alter_table("courses", schema=None) as batch_op:
        batch_op.drop_column("late_days_budget")

    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_column("language")

    with op.batch_alter_table("assignments", schema=None) as batch_op:
        batch_op.drop_column("remeasured_at")
        batch_op.drop_column("remeasure_top_n")
        batch_op.drop_column("max_queued_per_student")
        batch_op.drop_column("rate_limit_window_s")
        batch_op.drop_column("rate_limit_count")
        batch_op.drop_column("weight")
        batch_op.drop_column("counting")
        batch_op.drop_column("late_policy")

    op.drop_table("score_overrides")
    with op.batch_alter_table("similarity_reports", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_similarity_reports_assignment_id"))

    op.drop_table("similarity_reports")
    op.drop_table("rate_buckets")
    with op.batch_alter_table("extensions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_extensions_user_id"))
        batch_op.drop_index(batch_op.f("ix_extensions_assignment_id"))

    op.drop_table("extensions")
