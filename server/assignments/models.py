"""Assignments and the versioned grader bundles they are graded with."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, Float, ForeignKey, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from server.courses.models import Course
from server.db import Base, UTCDateTime, utcnow


class GraderBundle(Base):
    """An assignment package as published: a deterministic tar.gz, identified by its sha256."""

    __tablename__ = "grader_bundles"

    id: Mapped[int] = mapped_column(primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    slug: Mapped[str] = mapped_column(String(64), index=True)
    version: Mapped[str] = mapped_column(String(32))
    # The parsed assignment.toml as published, so the server never unpacks bundles to answer questions.
    manifest: Mapped[dict[str, Any]] = mapped_column(JSON)
    # Deferred: answering questions about an assignment never needs the bundle's bytes, only a worker does.
    data: Mapped[bytes] = mapped_column(LargeBinary, deferred=True)
    size: Mapped[int]
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))


class Assignment(Base):
    __tablename__ = "assignments"
    __table_args__ = (UniqueConstraint("course_id", "slug"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    course_id: Mapped[int] = mapped_column(ForeignKey("courses.id", ondelete="CASCADE"), index=True)
    slug: Mapped[str] = mapped_column(String(64))
    title: Mapped[str] = mapped_column(String(200))
    summary: Mapped[str] = mapped_column(Text, default="")
    bundle_id: Mapped[int] = mapped_column(ForeignKey("grader_bundles.id"))
    queue: Mapped[str] = mapped_column(String(32), default="cpu")
    points: Mapped[float] = mapped_column(Float)
    published: Mapped[bool] = mapped_column(Boolean, default=False)
    opens_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    due_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Submissions are refused after this instant (None: never). Late policies come with course operations.
    closes_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Staff may reveal hidden-test details to students at any time; 'after_due' tests open at due_at anyway.
    reveal_hidden: Mapped[bool] = mapped_column(Boolean, default=False)
    leaderboard_enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    # How lateness is scored (see server/policy/late.py): {"kind": "hard"}, {"kind": "window", ...} or
    # {"kind": "late_days", ...}. Scores are computed from it at query time, so editing it rescores everyone.
    late_policy: Mapped[dict[str, Any]] = mapped_column(JSON, default=lambda: {"kind": "hard"})
    # Which of a student's submissions counts: "latest", "best", or "final" (the one the student marked).
    counting: Mapped[str] = mapped_column(String(16), default="latest", server_default="latest")
    # Share of the course total in percent (None: the assignment does not count towards the total).
    weight: Mapped[float | None] = mapped_column(Float)
    # Fair use: a token bucket of rate_limit_count submissions per rate_limit_window_s per student (None: no
    # limit), and at most max_queued_per_student submissions waiting or running at once.
    rate_limit_count: Mapped[int | None] = mapped_column(Integer)
    rate_limit_window_s: Mapped[int] = mapped_column(Integer, default=3600, server_default="3600")
    max_queued_per_student: Mapped[int] = mapped_column(Integer, default=2, server_default="2")
    # After the deadline the top N leaderboard entries are graded again with a fresh seed (0: never).
    remeasure_top_n: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    remeasured_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    course: Mapped[Course] = relationship(lazy="joined")
    bundle: Mapped[GraderBundle] = relationship(lazy="select")


class Extension(Base):
    """A per-student deadline: moves that student's due date (and the late window after it)."""

    __tablename__ = "extensions"
    __table_args__ = (UniqueConstraint("assignment_id", "user_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    assignment_id: Mapped[int] = mapped_column(ForeignKey("assignments.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    due_at: Mapped[datetime] = mapped_column(UTCDateTime)
    reason: Mapped[str] = mapped_column(Text)
    granted_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class RateBucket(Base):
    """A student's submission token bucket for one assignment (fair use)."""

    __tablename__ = "rate_buckets"

    assignment_id: Mapped[int] = mapped_column(
        ForeignKey("assignments.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    tokens: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class SimilarityReport(Base):
    """A pairwise code-similarity analysis of an assignment's submissions, computed on staff request."""

    __tablename__ = "similarity_reports"

    id: Mapped[int] = mapped_column(primary_key=True)
    assignment_id: Mapped[int] = mapped_column(ForeignKey("assignments.id", ondelete="CASCADE"), index=True)
    status: Mapped[str] = mapped_column(String(16))  # running | done | failed
    requested_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    result: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text)
