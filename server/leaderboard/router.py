"""The leaderboard of an assignment."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter
from pydantic import BaseModel

from server.assignments import service as assignments
from server.deps import CurrentUser, SessionDep, SettingsDep
from server.errors import NotFound
from server.leaderboard import service

router = APIRouter(prefix="/api", tags=["leaderboard"])


class EntryOut(BaseModel):
    rank: int
    name: str
    is_you: bool
    score: float
    max_score: float
    metric: float | None
    submitted_at: datetime
    hardware: str
    submission_id: int | None


class LeaderboardOut(BaseModel):
    course: str
    assignment: str
    metric: str | None
    label: str | None
    unit: str | None
    direction: str | None
    entries: list[EntryOut]


@router.get("/courses/{course}/assignments/{slug}/leaderboard", response_model=LeaderboardOut)
def leaderboard(
    course: str, slug: str, session: SessionDep, settings: SettingsDep, user: CurrentUser
) -> LeaderboardOut:
    access = assignments.get_for_user(session=session, user=user, course_slug=course, slug=slug)
    assignment = access.assignment
    if not assignment.leaderboard_enabled and not access.is_staff:
        raise NotFound("This assignment has no leaderboard.")
    board = assignment.bundle.manifest.get("leaderboard") or {}
    secret = settings.secret_key.get_secret_value()
    entries = []
    for entry in service.entries(session=session, assignment=assignment):
        mine = entry.user_id == user.id
        # Students see themselves by name and everyone else by a stable pseudonym; submission ids of others
        # are not theirs to know.
        shown = access.is_staff or mine
        entries.append(
            EntryOut(
                rank=entry.rank,
                name=entry.username
                if shown
                else service.pseudonym(entry.user_id, assignment_id=assignment.id, secret=secret),
                is_you=mine,
                score=entry.score,
                max_score=entry.max_score,
                metric=entry.metric,
                submitted_at=entry.submitted_at,
                hardware=entry.hardware,
                submission_id=entry.submission_id if shown else None,
            )
        )
    return LeaderboardOut(
        course=assignment.course.slug,
        assignment=assignment.slug,
        metric=board.get("metric"),
        label=board.get("label"),
        unit=board.get("unit"),
        direction=board.get("direction"),
        entries=entries,
    )
