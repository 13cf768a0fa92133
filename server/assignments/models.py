"""Assignments and the versioned grader bundles they are graded with."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, Float, ForeignKey, LargeBinary, String, Text, UniqueConstraint
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
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    course: Mapped[Course] = relationship(lazy="joined")
    bundle: Mapped[GraderBundle] = relationship(lazy="select")
