"""Submissions, their stored archives and the grading runs that scored them."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from server.assignments.models import Assignment, GraderBundle
from server.auth.models import User
from server.db import Base, UTCDateTime, utcnow


class SubmissionStatus(enum.StrEnum):
    queued = "queued"
    running = "running"
    graded = "graded"  # the grader ran to the end; the score stands (it may be zero)
    failed = (
        "failed"  # the student's code could not be graded (import error, crash, time limit): reason shown
    )
    error = "error"  # infrastructure fault after every retry; staff must look
    received = "received"  # a manually graded assignment's upload, waiting for the staff's rubric scores

    @property
    def finished(self) -> bool:
        """Nothing more happens to it without a person: no worker will pick it up."""
        return self in (
            SubmissionStatus.graded,
            SubmissionStatus.failed,
            SubmissionStatus.error,
            SubmissionStatus.received,
        )


class Blob(Base):
    """Content-addressed bytes: identical uploads are stored once."""

    __tablename__ = "blobs"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(Integer)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Submission(Base):
    __tablename__ = "submissions"
    __table_args__ = (
        Index("ix_submissions_status_queue", "status", "queue", "queued_at"),
        Index("ix_submissions_assignment_user", "assignment_id", "user_id"),
        # The fair claim asks when each waiting student was last served on a queue.
        Index("ix_submissions_queue_user_started", "queue", "user_id", "started_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    assignment_id: Mapped[int] = mapped_column(ForeignKey("assignments.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    archive_sha256: Mapped[str] = mapped_column(ForeignKey("blobs.sha256"))
    file_names: Mapped[list[str]] = mapped_column(JSON)
    bundle_id: Mapped[int] = mapped_column(ForeignKey("grader_bundles.id"))
    queue: Mapped[str] = mapped_column(String(32))
    status: Mapped[SubmissionStatus] = mapped_column(
        Enum(SubmissionStatus, native_enum=False, length=16), default=SubmissionStatus.queued
    )
    # Incremented by each claim; a result is recorded only by the holder of the current attempt.
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(128))
    # When the student submitted: what deadlines are judged by. Never changes (queued_at does, on a regrade).
    submitted_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    queued_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    progress_done: Mapped[int] = mapped_column(Integer, default=0)
    progress_total: Mapped[int] = mapped_column(Integer, default=0)
    current_test: Mapped[str | None] = mapped_column(String(128))
    score: Mapped[float | None] = mapped_column(Float)
    max_score: Mapped[float | None] = mapped_column(Float)
    # Plain-language reason shown to the student when the status is failed or error.
    status_message: Mapped[str | None] = mapped_column(Text)
    # Queue lane: 0 students' submissions, 1 staff regrades, 2 leaderboard re-measurements. A worker takes
    # the lowest lane first, and within a lane the student served least recently.
    lane: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Set when the student marks this submission as the one that counts (assignments counting "final").
    marked_final_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    assignment: Mapped[Assignment] = relationship(lazy="joined")
    user: Mapped[User] = relationship(lazy="joined")
    runs: Mapped[list[GradingRun]] = relationship(
        back_populates="submission", order_by="GradingRun.id", lazy="select"
    )


class GradingRun(Base):
    """One complete grading of a submission. Regrades add runs; history is never rewritten."""

    __tablename__ = "grading_runs"
    __table_args__ = (UniqueConstraint("submission_id", "attempt"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    submission_id: Mapped[int] = mapped_column(ForeignKey("submissions.id", ondelete="CASCADE"), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    status: Mapped[SubmissionStatus] = mapped_column(Enum(SubmissionStatus, native_enum=False, length=16))
    score: Mapped[float] = mapped_column(Float)
    max_score: Mapped[float] = mapped_column(Float)
    # [{name, visibility, passed, score, max_score, message, duration_s}, ...] exactly as the harness reported.
    results: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    metrics: Mapped[dict[str, float]] = mapped_column(JSON, default=dict)
    failure_reason: Mapped[str | None] = mapped_column(Text)
    # The student's own traceback when their module failed to import (frames of their files only).
    failure_detail: Mapped[str | None] = mapped_column(Text)
    # Student-facing remarks from the grader, e.g. why a leaderboard metric was not recorded.
    notes: Mapped[list[str]] = mapped_column(JSON, default=list)
    # Staff-only: suspicious timings, runtime cross-check hits. Never shown to the student.
    flags: Mapped[list[str]] = mapped_column(JSON, default=list)
    # Where the timings come from ("cpu", "cuda:<name>", "rocm:<name>"): boards never mix classes.
    hardware_class: Mapped[str] = mapped_column(String(128), default="cpu")
    log: Mapped[str] = mapped_column(Text, default="")
    log_truncated: Mapped[bool] = mapped_column(Boolean, default=False)
    sandbox: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    worker: Mapped[str] = mapped_column(String(128))
    hardware: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    software: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    bundle_id: Mapped[int] = mapped_column(ForeignKey("grader_bundles.id"))
    bundle_sha256: Mapped[str] = mapped_column(String(64))
    # The secret input seed: staff-only, for reproducing a run; never sent to the sandbox or to students.
    seed: Mapped[str] = mapped_column(String(32))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Why the run was made: "grade" (the submission), "regrade" (staff) or "remeasure" (leaderboard, new seed).
    purpose: Mapped[str] = mapped_column(String(16), default="grade", server_default="grade")
    # Staff may hide a run from the leaderboard (it stays in history): the reason, and who did it.
    hidden_reason: Mapped[str | None] = mapped_column(Text)
    hidden_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))

    submission: Mapped[Submission] = relationship(back_populates="runs")
    bundle: Mapped[GraderBundle] = relationship(lazy="select")


class ScoreOverride(Base):
    """A staff-set score for one submission: it replaces the computed score and survives every regrade."""

    __tablename__ = "score_overrides"

    id: Mapped[int] = mapped_column(primary_key=True)
    submission_id: Mapped[int] = mapped_column(ForeignKey("submissions.id", ondelete="CASCADE"), unique=True)
    score: Mapped[float] = mapped_column(Float)
    reason: Mapped[str] = mapped_column(Text)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    created_by: Mapped[User | None] = relationship(lazy="joined")
