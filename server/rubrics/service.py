"""Scoring a submission of a manually graded assignment against its package's rubric."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.audit import service as audit
from server.auth.models import User
from server.db import utcnow
from server.errors import BadRequest, Conflict
from server.rubrics.models import RubricScore
from server.submissions.models import Submission, SubmissionStatus

MAX_COMMENT_CHARS = 10_000


@dataclass(frozen=True)
class CriterionScore:
    criterion: str
    points: float
    comment: str


def criteria_of(submission: Submission) -> list[dict[str, Any]]:
    """The rubric the submission is graded against (from the bundle it was submitted under)."""
    return list(submission.assignment.bundle.manifest.get("rubric") or [])


def scores_for(*, session: Session, submission: Submission) -> list[RubricScore]:
    return list(
        session.scalars(
            select(RubricScore).where(RubricScore.submission_id == submission.id).order_by(RubricScore.id)
        )
    )


def set_scores(
    *, session: Session, submission: Submission, grader: User, scores: Sequence[CriterionScore]
) -> list[RubricScore]:
    """Record (or change) points and a comment per criterion; every change is audit-logged.

    Once every criterion has points, the submission is graded with their sum. The caller commits.
    """
    criteria = {criterion["name"]: criterion for criterion in criteria_of(submission)}
    if not criteria:
        raise Conflict("This assignment is graded automatically; it has no rubric.", code="no_rubric")
    seen: set[str] = set()
    for score in scores:
        criterion = criteria.get(score.criterion)
        if criterion is None:
            raise BadRequest(
                f"There is no rubric criterion {score.criterion!r}; the criteria are {', '.join(criteria)}.",
                code="unknown_criterion",
            )
        if score.criterion in seen:
            raise BadRequest(
                f"The criterion {score.criterion!r} is scored twice.", code="duplicate_criterion"
            )
        seen.add(score.criterion)
        maximum = float(criterion["points"])
        if not (math.isfinite(score.points) and 0 <= score.points <= maximum):
            raise BadRequest(
                f"{criterion['title']}: points must be between 0 and {maximum:g}, got {score.points:g}.",
                code="points_out_of_range",
            )
        if not score.comment.strip():
            raise BadRequest(
                f"{criterion['title']}: a comment is required, so the student knows why.",
                code="comment_required",
            )
        if len(score.comment) > MAX_COMMENT_CHARS:
            raise BadRequest(
                f"{criterion['title']}: the comment is longer than {MAX_COMMENT_CHARS} characters.",
                code="comment_too_long",
            )
    existing = {row.criterion: row for row in scores_for(session=session, submission=submission)}
    for score in scores:
        row = existing.get(score.criterion)
        before = None if row is None else {"points": row.points, "comment": row.comment}
        if row is None:
            row = RubricScore(submission_id=submission.id, criterion=score.criterion)
            session.add(row)
            existing[score.criterion] = row
        row.points = float(score.points)
        row.comment = score.comment.strip()
        row.grader_id = grader.id
        audit.record(
            session=session,
            actor=grader,
            action="rubric.score",
            target_type="submission",
            target_id=submission.id,
            course_id=submission.assignment.course_id,
            criterion=score.criterion,
            points=row.points,
            comment=row.comment,
            before=before,
        )
    session.flush()
    if set(existing) >= set(criteria):
        submission.score = round(sum(existing[name].points for name in criteria), 6)
        submission.max_score = round(sum(float(criterion["points"]) for criterion in criteria.values()), 6)
        submission.status = SubmissionStatus.graded
        submission.finished_at = submission.finished_at or utcnow()
        submission.status_message = None
    else:
        missing = [criteria[name]["title"] for name in criteria if name not in existing]
        submission.status_message = f"Being graded by the course staff ({len(missing)} criteria to go)."
    session.flush()
    return [existing[name] for name in criteria if name in existing]
