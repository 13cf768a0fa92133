"""Assignments as students and staff see them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response
from pydantic import BaseModel

from server.assignments import service
from server.assignments.service import AssignmentAccess
from server.db import utcnow
from server.deps import CurrentUser, SessionDep
from server.submissions import limits

router = APIRouter(prefix="/api", tags=["assignments"])


class TestInfo(BaseModel):
    name: str
    weight: float
    visibility: str
    description: str
    requires: str = "any"  # "gpu": graded only on a worker with a GPU


class CriterionInfo(BaseModel):
    name: str
    title: str
    points: float
    description: str


class AssignmentOut(BaseModel):
    course: str
    slug: str
    title: str
    summary: str
    points: float
    queue: str
    published: bool
    opens_at: datetime | None
    due_at: datetime | None
    closes_at: datetime | None
    accepting_submissions: bool
    not_accepting_reason: str | None
    allowed_files: list[str]
    max_upload_bytes: int
    time_limit_s: float
    leaderboard: dict[str, Any] | None
    bundle_version: str
    bundle_sha256: str
    your_role: str
    grading: str  # "auto" (tests in a sandbox) or "manual" (staff grade by rubric)
    required_files: list[str]
    handout_url: str


class AssignmentDetailOut(AssignmentOut):
    readme: str
    functions: list[str]
    tests: list[TestInfo]
    rubric: list[CriterionInfo]


def assignment_out(access: AssignmentAccess) -> dict[str, Any]:
    assignment = access.assignment
    manifest = assignment.bundle.manifest
    reason = service.submission_window_error(assignment)
    return {
        "course": assignment.course.slug,
        "slug": assignment.slug,
        "title": assignment.title,
        "summary": assignment.summary,
        "points": assignment.points,
        "queue": assignment.queue,
        "published": assignment.published,
        "opens_at": assignment.opens_at,
        "due_at": assignment.due_at,
        "closes_at": assignment.closes_at,
        "accepting_submissions": reason is None,
        "not_accepting_reason": reason,
        "allowed_files": manifest["allowed_files"],
        "max_upload_bytes": manifest["max_upload_bytes"],
        "time_limit_s": manifest["time_limit_s"],
        "leaderboard": manifest["leaderboard"] if assignment.leaderboard_enabled else None,
        "bundle_version": assignment.bundle.version,
        "bundle_sha256": assignment.bundle.sha256,
        "your_role": access.role.value,
        "grading": manifest.get("grading", "auto"),
        "required_files": manifest.get("required_files", []),
        "handout_url": f"/api/courses/{assignment.course.slug}/assignments/{assignment.slug}/handout.zip",
    }


@router.get("/assignments", response_model=list[AssignmentOut])
def list_assignments(session: SessionDep, user: CurrentUser) -> list[dict[str, Any]]:
    return [assignment_out(a) for a in service.list_for_user(session=session, user=user)]


@router.get("/courses/{course}/assignments/{slug}", response_model=AssignmentDetailOut)
def get_assignment(course: str, slug: str, session: SessionDep, user: CurrentUser) -> dict[str, Any]:
    access = service.get_for_user(session=session, user=user, course_slug=course, slug=slug)
    manifest = access.assignment.bundle.manifest
    return {
        **assignment_out(access),
        "readme": manifest["readme"],
        "functions": manifest["functions"],
        # Test names and weights are public; their code, inputs and expected outputs never are, and the
        # description of a hidden test is for staff only.
        "tests": [
            test if access.is_staff or test["visibility"] == "visible" else {**test, "description": ""}
            for test in manifest["tests"]
        ],
        "rubric": manifest.get("rubric", []),
    }


@router.get("/courses/{course}/assignments/{slug}/handout.zip")
def download_handout(course: str, slug: str, session: SessionDep, user: CurrentUser) -> Response:
    """The handout (starter code, public tests, README) of the assignment's current bundle, as a zip."""
    access = service.get_for_user(session=session, user=user, course_slug=course, slug=slug)
    data = service.handout_archive(access.assignment)
    return Response(
        data,
        media_type="application/zip",
        headers={
            "content-disposition": f'attachment; filename="{slug}-handout.zip"',
            "cache-control": "private, max-age=60",
        },
    )


class QuotaOut(BaseModel):
    """Where the caller stands with the assignment's fair-use limits."""

    exempt: bool  # staff are not limited
    rate_limit_count: int | None  # submissions allowed per window (None: no rate limit)
    rate_limit_window_s: int
    submissions_left: int | None  # whole submissions the rate limit allows right now (None: no rate limit)
    next_allowed_at: datetime | None  # when the rate limit next allows one, if it allows none now
    in_progress: int  # your submissions waiting or being graded
    max_in_progress: int | None  # how many may wait or be graded at once (None: no cap)
    within_limits: bool  # both limits allow a submission now (the deadline is another matter)


@router.get("/courses/{course}/assignments/{slug}/quota", response_model=QuotaOut)
def get_quota(course: str, slug: str, session: SessionDep, user: CurrentUser) -> dict[str, Any]:
    """Your remaining submission budget for this assignment and when the next submission is allowed."""
    access = service.get_for_user(session=session, user=user, course_slug=course, slug=slug)
    quota = limits.quota(session=session, access=access, user=user, now=utcnow())
    return {
        "exempt": quota.exempt,
        "rate_limit_count": quota.rate_limit_count,
        "rate_limit_window_s": quota.rate_limit_window_s,
        "submissions_left": quota.submissions_left,
        "next_allowed_at": quota.next_token_at,
        "in_progress": quota.in_progress,
        "max_in_progress": quota.max_in_progress,
        "within_limits": quota.admits_one_now,
    }
