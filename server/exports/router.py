"""Exports over the API: grades CSVs, runs JSON, Gradescope results.json, the roster, the activity feed."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, File, Query, UploadFile
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from server.assignments import service as assignments
from server.assignments.models import Assignment
from server.auth.models import User
from server.courses import service as courses
from server.courses.models import Course, Role
from server.db import get_session_factory
from server.deps import CurrentUser, SessionDep
from server.errors import Forbidden, NotFound
from server.exports import activity, service
from server.policy import service as policy
from server.submissions import service as submissions

router = APIRouter(prefix="/api", tags=["exports"])

CSV_TYPE = "text/csv; charset=utf-8"
ASSIGNMENT = "/courses/{course}/assignments/{slug}"


def _filename(*parts: str) -> str:
    return "-".join(re.sub(r"[^A-Za-z0-9._-]+", "_", part) for part in parts)


def _download(data: bytes, media_type: str, filename: str) -> Response:
    return Response(
        data,
        media_type=media_type,
        headers={"content-disposition": f'attachment; filename="{filename}"', "cache-control": "no-store"},
    )


def _staff_assignment(session: SessionDep, user: User, course: str, slug: str) -> Assignment:
    access = assignments.get_for_user(session=session, user=user, course_slug=course, slug=slug)
    return assignments.require_staff(access).assignment


def _course_for(session: SessionDep, user: User, slug: str, *, instructor: bool = False) -> Course:
    """The course, if ``user`` teaches it (``instructor``: as an instructor). Others cannot tell it exists."""
    course = session.scalar(select(Course).where(Course.slug == slug))
    role = courses.role_in(session=session, user=user, course=course) if course is not None else None
    if course is None or role is None:
        raise NotFound(f"There is no course {slug!r} that you can see.")
    if instructor and role != Role.instructor:
        raise Forbidden("Only the course's instructors can import a roster.")
    if not role.is_staff:
        raise Forbidden("Only the course's TAs and instructors can do this.")
    return course


# -- grades ----------------------------------------------------------------------------------------------------


@router.get(ASSIGNMENT + "/export/grades.csv", response_class=Response)
def assignment_grades_csv(course: str, slug: str, session: SessionDep, user: CurrentUser) -> Response:
    """Every enrolled student's grade on the assignment as CSV (staff): the submission that counts, when it
    was submitted, lateness, autograded score, late multiplier, any override, final score and percent."""
    assignment = _staff_assignment(session, user, course, slug)
    data = service.assignment_grades_csv(session=session, assignment=assignment)
    return _download(data, CSV_TYPE, _filename(assignment.course.slug, assignment.slug, "grades.csv"))


@router.get("/courses/{course}/export/grades.csv", response_class=Response)
def course_grades_csv(course: str, session: SessionDep, user: CurrentUser) -> Response:
    """Every enrolled student's course total as CSV (staff): each assignment's score, maximum and weight, and
    the weighted total in percent."""
    target = _course_for(session, user, course)
    data = service.course_grades_csv(session=session, course=target)
    return _download(data, CSV_TYPE, _filename(target.slug, "grades.csv"))


# -- runs ------------------------------------------------------------------------------------------------------


@router.get(ASSIGNMENT + "/export/runs.json", response_class=StreamingResponse)
def runs_json(
    course: str,
    slug: str,
    session: SessionDep,
    user: CurrentUser,
    include_logs: Annotated[bool, Query(description="Add each run's captured student output.")] = False,
) -> StreamingResponse:
    """Every grading run of the assignment (staff), streamed: regrades and re-measurements included, with the
    bundle, results, metrics, hardware, staff flags, hidden reasons, seed and timings."""
    assignment = _staff_assignment(session, user, course, slug)
    filename = _filename(assignment.course.slug, assignment.slug, "runs.json")
    assignment_id = assignment.id
    session.close()
    return StreamingResponse(
        service.iter_runs_json(
            session_factory=get_session_factory(), assignment_id=assignment_id, include_logs=include_logs
        ),
        media_type="application/json",
        headers={"content-disposition": f'attachment; filename="{filename}"', "cache-control": "no-store"},
    )


@router.get("/submissions/{submission_id}/results.json")
def gradescope_results(submission_id: int, session: SessionDep, user: CurrentUser) -> dict[str, Any]:
    """The submission's latest grading in Gradescope's results.json format (its author or the course staff).

    Students see what the submission page shows them: tests still hidden from them are only counted."""
    submission, staff = submissions.visible_submission(
        session=session, user=user, submission_id=submission_id
    )
    return service.gradescope_results(session=session, submission=submission, staff=staff)


# -- roster ----------------------------------------------------------------------------------------------------


@router.get("/courses/{course}/roster.csv", response_class=Response)
def roster_csv(course: str, session: SessionDep, user: CurrentUser) -> Response:
    """The course's roster as CSV (staff): username, display name, email, role."""
    target = _course_for(session, user, course)
    return _download(
        service.roster_csv(session=session, course=target), CSV_TYPE, _filename(target.slug, "roster.csv")
    )


class RosterProblemOut(BaseModel):
    row: int = Field(description="The row as a spreadsheet numbers it: the header is row 1.")
    problem: str


class RosterImportOut(BaseModel):
    created: list[str]
    updated: list[str]
    generated_passwords: dict[str, str] = Field(
        description="Passwords made for new accounts whose row had none. Shown this once: hand them over."
    )


@router.post(
    "/courses/{course}/roster",
    response_model=RosterImportOut,
    responses={400: {"description": "Rows that need fixing (nothing was imported): detail, code, problems."}},
)
async def import_roster(
    course: str,
    session: SessionDep,
    user: CurrentUser,
    file: Annotated[
        UploadFile, File(description="CSV, UTF-8: username, display_name, email, role, password")
    ],
) -> Any:
    """Create or update accounts and enrollments from a CSV (instructors). Every row is checked first: one bad
    row imports nothing, and the answer lists every row to fix with its row number."""
    target = await run_in_threadpool(_course_for, session, user, course, instructor=True)
    data = await file.read(service.MAX_ROSTER_BYTES + 1)

    def import_and_commit() -> Any:
        result = service.import_roster(session=session, course=target, actor=user, data=data)
        session.commit()
        return result

    try:
        result = await run_in_threadpool(import_and_commit)
    except service.RosterRejected as exc:
        return JSONResponse(
            {
                "detail": exc.message,
                "code": exc.code,
                "problems": [{"row": problem.row, "problem": problem.problem} for problem in exc.problems],
            },
            status_code=exc.status_code,
        )
    return {
        "created": result.created,
        "updated": result.updated,
        "generated_passwords": result.generated_passwords,
    }


# -- activity --------------------------------------------------------------------------------------------------


class ActivityOut(BaseModel):
    at: datetime
    at_local: str | None
    kind: str
    actor: str | None = Field(description="Who did it; null for the system (workers, the server's CLI).")
    student: str | None
    summary: str
    submission_id: int | None
    run_id: int | None
    links: dict[str, str]
    details: dict[str, Any]


class ActivityPageOut(BaseModel):
    assignment: str
    total: int
    offset: int
    limit: int
    items: list[ActivityOut]


@router.get(ASSIGNMENT + "/activity", response_model=ActivityPageOut)
def assignment_activity(
    course: str,
    slug: str,
    session: SessionDep,
    user: CurrentUser,
    offset: Annotated[int, Query(ge=0, le=activity.MAX_OFFSET)] = 0,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> dict[str, Any]:
    """What happened on the assignment, newest first (staff): submissions, gradings finished or failed,
    regrades, overrides, rubric scores, extensions, settings changes."""
    assignment = _staff_assignment(session, user, course, slug)
    page = activity.feed(session=session, assignment=assignment, offset=offset, limit=limit)
    items = []
    for item in page.items:
        links = {}
        if item.submission_id is not None:
            links["submission"] = f"/api/submissions/{item.submission_id}"
            links["results"] = f"/api/submissions/{item.submission_id}/results.json"
        items.append(
            {
                "at": item.at,
                "at_local": policy.local_text(item.at, assignment.course),
                "kind": item.kind,
                "actor": item.actor,
                "student": item.student,
                "summary": item.summary,
                "submission_id": item.submission_id,
                "run_id": item.run_id,
                "links": links,
                "details": item.details,
            }
        )
    return {
        "assignment": assignment.slug,
        "total": page.total,
        "offset": offset,
        "limit": limit,
        "items": items,
    }
