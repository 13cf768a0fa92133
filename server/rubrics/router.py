"""Rubric scores: staff enter them, the student and staff read them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from server.deps import CurrentUser, SessionDep
from server.errors import Forbidden
from server.rubrics import service
from server.submissions import service as submissions

router = APIRouter(prefix="/api", tags=["rubrics"])


class CriterionIn(BaseModel):
    criterion: str = Field(min_length=1, max_length=100)
    points: float
    comment: str


class RubricIn(BaseModel):
    scores: list[CriterionIn] = Field(min_length=1, max_length=100)


class CriterionOut(BaseModel):
    name: str
    title: str
    max_points: float
    description: str
    points: float | None
    comment: str | None
    grader: str | None
    updated_at: datetime | None


class RubricOut(BaseModel):
    submission_id: int
    status: str
    score: float | None
    max_score: float
    complete: bool
    criteria: list[CriterionOut]


def rubric_out(session: SessionDep, submission: Any) -> dict[str, Any]:
    scored = {row.criterion: row for row in service.scores_for(session=session, submission=submission)}
    criteria = []
    for criterion in service.criteria_of(submission):
        row = scored.get(criterion["name"])
        criteria.append(
            {
                "name": criterion["name"],
                "title": criterion["title"],
                "max_points": criterion["points"],
                "description": criterion.get("description", ""),
                "points": row.points if row else None,
                "comment": row.comment if row else None,
                "grader": row.grader.username if row and row.grader else None,
                "updated_at": row.updated_at if row else None,
            }
        )
    return {
        "submission_id": submission.id,
        "status": submission.status.value,
        "score": submission.score,
        "max_score": sum(float(item["max_points"]) for item in criteria),
        "complete": bool(criteria) and all(item["points"] is not None for item in criteria),
        "criteria": criteria,
    }


@router.get("/submissions/{submission_id}/rubric", response_model=RubricOut)
def get_rubric(submission_id: int, session: SessionDep, user: CurrentUser) -> dict[str, Any]:
    submission, _ = submissions.visible_submission(session=session, user=user, submission_id=submission_id)
    return rubric_out(session, submission)


@router.put("/submissions/{submission_id}/rubric", response_model=RubricOut)
def put_rubric(submission_id: int, body: RubricIn, session: SessionDep, user: CurrentUser) -> dict[str, Any]:
    submission, staff = submissions.visible_submission(
        session=session, user=user, submission_id=submission_id
    )
    if not staff:
        raise Forbidden("Only the course's TAs and instructors can grade by rubric.")
    service.set_scores(
        session=session,
        submission=submission,
        grader=user,
        scores=[service.CriterionScore(item.criterion, item.points, item.comment) for item in body.scores],
    )
    session.commit()
    return rubric_out(session, submission)
