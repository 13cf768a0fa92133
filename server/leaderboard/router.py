"""Leaderboards: the boards per hardware class, hiding runs, a submission's runs as the board sees them,
and the final re-measurement."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter
from pydantic import BaseModel, Field

from server import queue
from server.assignments import service as assignments
from server.audit import service as audit
from server.db import utcnow
from server.deps import CurrentUser, SessionDep, SettingsDep
from server.errors import Conflict, NotFound
from server.leaderboard import remeasure, service
from server.submissions import service as submissions

router = APIRouter(prefix="/api", tags=["leaderboard"])


class EntryOut(BaseModel):
    rank: int
    # Staff and the student themself see the username; other students see public_name here too.
    name: str
    # What other students see: the alias the student chose, or a stable pseudonym (anon-xxxxxx).
    public_name: str
    anonymous: bool
    you: bool
    is_you: bool  # the same as ``you``, kept for clients written before it (the CLI)
    score: float
    max_score: float
    metric: float
    submitted_at: datetime
    hardware: str
    remeasured: bool  # ranked by the final re-measurement
    submission_id: int | None  # staff and the student themself
    run_id: int | None  # staff only: what POST /api/runs/{run_id}/hide takes


class HardwareClassOut(BaseModel):
    name: str
    entries: int


class LeaderboardOut(BaseModel):
    course: str
    assignment: str
    metric: str | None
    label: str | None
    unit: str | None
    direction: str | None
    hardware: str | None
    hardware_classes: list[HardwareClassOut]
    remeasured_at: datetime | None  # set once the final re-measurement was started
    entries: list[EntryOut]


@router.get("/courses/{course}/assignments/{slug}/leaderboard", response_model=LeaderboardOut)
def leaderboard(
    course: str,
    slug: str,
    session: SessionDep,
    settings: SettingsDep,
    user: CurrentUser,
    hardware: str | None = None,
) -> LeaderboardOut:
    """One hardware class's board (``hardware``; default: the assignment queue's natural class with the most
    entries) and the list of classes that have one."""
    access = assignments.get_for_user(session=session, user=user, course_slug=course, slug=slug)
    assignment = access.assignment
    if not assignment.leaderboard_enabled and not access.is_staff:
        raise NotFound("This assignment has no leaderboard.")
    spec = assignment.bundle.manifest.get("leaderboard") or {}
    ranked = service.board(session=session, assignment=assignment, hardware=hardware)
    secret = settings.secret_key.get_secret_value()
    entries = []
    for entry in ranked.entries:
        mine = entry.user_id == user.id
        public = service.public_name(entry, assignment_id=assignment.id, secret=secret)
        # Students see everyone else only by alias or pseudonym; other students' ids are not theirs to know.
        entries.append(
            EntryOut(
                rank=entry.rank,
                name=entry.username if access.is_staff or mine else public,
                public_name=public,
                anonymous=entry.alias is None,
                you=mine,
                is_you=mine,
                score=entry.score,
                max_score=entry.max_score,
                metric=entry.metric,
                submitted_at=entry.submitted_at,
                hardware=entry.hardware,
                remeasured=entry.remeasured,
                submission_id=entry.submission_id if access.is_staff or mine else None,
                run_id=entry.run_id if access.is_staff else None,
            )
        )
    return LeaderboardOut(
        course=assignment.course.slug,
        assignment=assignment.slug,
        metric=ranked.metric,
        label=spec.get("label"),
        unit=spec.get("unit"),
        direction=ranked.direction if ranked.metric else None,
        hardware=ranked.hardware,
        hardware_classes=[HardwareClassOut(name=name, entries=n) for name, n in ranked.classes.items()],
        remeasured_at=assignment.remeasured_at,
        entries=entries,
    )


# -- hiding a run --------------------------------------------------------------------------------------------


class HideIn(BaseModel):
    reason: str = Field(max_length=service.MAX_REASON_CHARS, description="shown to the student")


class UnhideIn(BaseModel):
    reason: str | None = Field(default=None, max_length=service.MAX_REASON_CHARS)


class RunHiddenOut(BaseModel):
    run_id: int
    submission_id: int
    hidden: bool
    hidden_reason: str | None
    hidden_by: str | None


def _hidden_out(run_id: int, submission_id: int, reason: str | None, by: str | None) -> RunHiddenOut:
    return RunHiddenOut(
        run_id=run_id,
        submission_id=submission_id,
        hidden=reason is not None,
        hidden_reason=reason,
        hidden_by=by,
    )


@router.post("/runs/{run_id}/hide", response_model=RunHiddenOut)
def hide_run(run_id: int, body: HideIn, session: SessionDep, user: CurrentUser) -> RunHiddenOut:
    """Take a run off the leaderboard (staff). It stays in the submission's history with the reason."""
    run = service.staff_run(session=session, user=user, run_id=run_id)
    service.hide(session=session, actor=user, run=run, reason=body.reason)
    session.commit()
    return _hidden_out(run.id, run.submission_id, run.hidden_reason, user.username)


@router.post("/runs/{run_id}/unhide", response_model=RunHiddenOut)
def unhide_run(
    run_id: int, session: SessionDep, user: CurrentUser, body: UnhideIn | None = None
) -> RunHiddenOut:
    """Put a hidden run back on the leaderboard (staff)."""
    run = service.staff_run(session=session, user=user, run_id=run_id)
    service.unhide(session=session, actor=user, run=run, reason=body.reason if body else None)
    session.commit()
    return _hidden_out(run.id, run.submission_id, None, None)


# -- a submission's runs as the leaderboard sees them --------------------------------------------------------


class RunStandingOut(BaseModel):
    attempt: int
    purpose: str  # grade | regrade | remeasure
    status: str
    hardware: str
    finished_at: datetime
    metric: float | None
    correct: bool
    eligible: bool  # can rank on its hardware class's board
    hidden: bool
    hidden_reason: str | None
    explanation: str
    run_id: int | None  # staff only
    hidden_by: str | None  # staff only


class SubmissionStandingOut(BaseModel):
    submission_id: int
    metric: str | None
    runs: list[RunStandingOut]


@router.get("/submissions/{submission_id}/leaderboard", response_model=SubmissionStandingOut)
def submission_standing(submission_id: int, session: SessionDep, user: CurrentUser) -> SubmissionStandingOut:
    """Every grading run of the submission and whether it can rank: hidden runs show the staff's reason."""
    submission, staff = submissions.visible_submission(
        session=session, user=user, submission_id=submission_id
    )
    metric, _ = service.leaderboard_spec(submission.assignment)
    return SubmissionStandingOut(
        submission_id=submission.id,
        metric=metric,
        runs=[
            RunStandingOut(
                attempt=standing.run.attempt,
                purpose=standing.run.purpose,
                status=standing.run.status.value,
                hardware=standing.run.hardware_class,
                finished_at=standing.run.finished_at,
                metric=standing.metric,
                correct=standing.correct,
                eligible=standing.eligible,
                hidden=standing.hidden,
                hidden_reason=standing.run.hidden_reason,
                explanation=standing.explanation,
                run_id=standing.run.id if staff else None,
                hidden_by=standing.hidden_by if staff else None,
            )
            for standing in service.run_standings(session=session, submission=submission)
        ],
    )


# -- the final re-measurement --------------------------------------------------------------------------------


class RemeasureIn(BaseModel):
    top_n: int | None = Field(
        default=None,
        ge=1,
        le=100,
        description="entries per board (default: the assignment's remeasure_top_n)",
    )


class RemeasureOut(BaseModel):
    requeued: list[int]
    skipped: list[int]  # already queued or running: left alone
    remeasured_at: datetime


@router.post("/courses/{course}/assignments/{slug}/leaderboard/remeasure", response_model=RemeasureOut)
def remeasure_now(
    course: str, slug: str, session: SessionDep, user: CurrentUser, body: RemeasureIn | None = None
) -> RemeasureOut:
    """Grade the top entries of every board again now, with fresh seeds, in the lowest-priority lane (staff)."""
    access = assignments.require_staff(
        assignments.get_for_user(session=session, user=user, course_slug=course, slug=slug)
    )
    assignment = access.assignment
    metric, _ = service.leaderboard_spec(assignment)
    if metric is None or not assignment.leaderboard_enabled:
        raise Conflict("This assignment has no leaderboard to re-measure.", code="no_leaderboard")
    top_n = body.top_n if body is not None and body.top_n is not None else assignment.remeasure_top_n
    if top_n < 1:
        raise Conflict(
            "Say how many entries to re-measure: set top_n here, or the assignment's remeasure_top_n.",
            code="no_top_n",
        )
    result = remeasure.remeasure(session=session, assignment=assignment, top_n=top_n, now=utcnow())
    audit.record(
        session=session,
        actor=user,
        action="leaderboard.remeasure",
        target_type="assignment",
        target_id=assignment.id,
        course_id=assignment.course_id,
        top_n=top_n,
        requeued=[submission.id for submission in result.requeued],
        skipped=result.skipped,
    )
    session.commit()
    time_limit = float(assignment.bundle.manifest["time_limit_s"])
    for submission in result.requeued:
        queue.enqueue_grading(submission.id, queue=submission.queue, time_limit_s=time_limit)
    assert assignment.remeasured_at is not None
    return RemeasureOut(
        requeued=[submission.id for submission in result.requeued],
        skipped=result.skipped,
        remeasured_at=assignment.remeasured_at,
    )
