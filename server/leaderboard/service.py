"""Leaderboards: each student's best graded submission, correctness first, then the assignment's metric."""

from __future__ import annotations

import hashlib
import hmac
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.assignments.models import Assignment
from server.auth.models import User
from server.submissions.models import GradingRun, Submission, SubmissionStatus


@dataclass(frozen=True)
class Entry:
    rank: int
    user_id: int
    username: str
    submission_id: int
    score: float
    max_score: float
    metric: float | None
    submitted_at: datetime
    hardware: str


def _sort_key(direction: str, score: float, metric: float | None, submitted_at: datetime) -> tuple[Any, ...]:
    if metric is None or not math.isfinite(metric):
        metric_key = math.inf
    else:
        metric_key = metric if direction == "asc" else -metric
    return (-score, metric_key, submitted_at)


def entries(*, session: Session, assignment: Assignment) -> list[Entry]:
    board = assignment.bundle.manifest.get("leaderboard") or {}
    metric_name = board.get("metric")
    direction = board.get("direction", "asc")
    rows = session.execute(
        select(Submission, GradingRun, User)
        .join(
            GradingRun,
            (GradingRun.submission_id == Submission.id) & (GradingRun.attempt == Submission.attempt),
        )
        .join(User, User.id == Submission.user_id)
        .where(Submission.assignment_id == assignment.id, Submission.status == SubmissionStatus.graded)
    ).all()
    best: dict[int, tuple[tuple[Any, ...], Submission, GradingRun, User]] = {}
    for submission, run, user in rows:
        metric = run.metrics.get(metric_name) if metric_name else None
        key = _sort_key(direction, run.score, metric, submission.queued_at)
        if user.id not in best or key < best[user.id][0]:
            best[user.id] = (key, submission, run, user)
    ordered = sorted(best.values(), key=lambda item: item[0])
    result = []
    for rank, (_, submission, run, user) in enumerate(ordered, start=1):
        metric = run.metrics.get(metric_name) if metric_name else None
        result.append(
            Entry(
                rank=rank,
                user_id=user.id,
                username=user.username,
                submission_id=submission.id,
                score=run.score,
                max_score=run.max_score,
                metric=metric,
                submitted_at=submission.queued_at,
                hardware=run.hardware_class,
            )
        )
    return result


def pseudonym(user_id: int, *, assignment_id: int, secret: str) -> str:
    """A stable anonymous name per student and assignment; it cannot be turned back into a user id."""
    mac = hmac.new(secret.encode(), f"{assignment_id}:{user_id}".encode(), hashlib.sha256).hexdigest()
    return f"anon-{mac[:6]}"
