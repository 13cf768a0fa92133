"""Deadlines, late policies, extensions, overrides, final marks and grades over the API."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field
from sqlalchemy import select

from server.assignments import service as assignments
from server.assignments.models import Assignment, Extension
from server.audit import service as audit
from server.auth.models import User
from server.courses import service as courses
from server.courses.models import Course, Role
from server.db import utcnow
from server.deps import CurrentUser, SessionDep
from server.errors import BadRequest, Conflict, Forbidden, NotFound
from server.policy import service
from server.submissions import service as submissions
from server.submissions.models import ScoreOverride, Submission

router = APIRouter(prefix="/api", tags=["grades and policy"])

MAX_REASON_CHARS = service.MAX_REASON_CHARS


# -- reading grades -------------------------------------------------------------------------------------------


class SubmissionGradeOut(BaseModel):
    submission_id: int
    submitted_at: datetime
    submitted_local: str | None
    status: str
    autograded: float | None
    late: str  # plain language: "on time", "2 days late: 20% penalty", ...
    units_late: int
    multiplier: float
    accepted: bool
    late_days_used: int
    override: dict[str, Any] | None
    score: float | None
    max_score: float
    marked_final: bool


class StudentGradeOut(BaseModel):
    username: str
    display_name: str
    assignment: str
    deadline: datetime | None
    deadline_local: str | None
    extension: dict[str, Any] | None
    accepting_until: datetime | None
    accepting_until_local: str | None
    late_policy: dict[str, Any]
    late_policy_text: str
    counting: str
    late_days_left: int
    score: float
    max_score: float
    counted: SubmissionGradeOut | None
    submissions: list[SubmissionGradeOut]


def submission_grade_out(grade: service.SubmissionGrade, course: Course) -> dict[str, Any]:
    submission = grade.submission
    override = grade.override
    return {
        "submission_id": submission.id,
        "submitted_at": submission.submitted_at,
        "submitted_local": service.local_text(submission.submitted_at, course),
        "status": submission.status.value,
        "autograded": grade.autograded,
        "late": grade.lateness.describe(),
        "units_late": grade.lateness.units_late,
        "multiplier": grade.lateness.multiplier,
        "accepted": grade.lateness.accepted,
        "late_days_used": grade.lateness.late_days_used,
        "override": override_out(override) if override is not None else None,
        "score": grade.score,
        "max_score": grade.max_score,
        "marked_final": submission.marked_final_at is not None,
    }


def override_out(override: ScoreOverride) -> dict[str, Any]:
    return {
        "score": override.score,
        "reason": override.reason,
        "by": override.created_by.username if override.created_by else None,
        "at": override.updated_at,
    }


def student_grade_out(grade: service.StudentGrade) -> dict[str, Any]:
    course = grade.assignment.course
    policy = service.policy_of(grade.assignment)
    extension = grade.extension
    return {
        "username": grade.user.username,
        "display_name": grade.user.display_name,
        "assignment": grade.assignment.slug,
        "deadline": grade.deadline,
        "deadline_local": service.local_text(grade.deadline, course),
        "extension": (
            {
                "due_at": extension.due_at,
                "reason": extension.reason,
                "due_local": service.local_text(extension.due_at, course),
            }
            if extension is not None
            else None
        ),
        "accepting_until": grade.accepting_until,
        "accepting_until_local": service.local_text(grade.accepting_until, course),
        "late_policy": policy.to_json(),
        "late_policy_text": policy.describe(),
        "counting": grade.assignment.counting,
        "late_days_left": grade.late_days_left,
        "score": grade.score,
        "max_score": grade.max_score,
        "counted": submission_grade_out(grade.counted, course) if grade.counted is not None else None,
        "submissions": [submission_grade_out(item, course) for item in grade.submissions],
    }


@router.get("/courses/{course}/assignments/{slug}/my-grade", response_model=StudentGradeOut)
def my_grade(course: str, slug: str, session: SessionDep, user: CurrentUser) -> dict[str, Any]:
    """Your deadline (with any extension), the late policy, every submission's score and the one that counts."""
    access = assignments.get_for_user(session=session, user=user, course_slug=course, slug=slug)
    return student_grade_out(service.student_grade(session=session, assignment=access.assignment, user=user))


class GradePage(BaseModel):
    assignment: str
    total: int
    items: list[StudentGradeOut]


@router.get("/courses/{course}/assignments/{slug}/grades", response_model=GradePage)
def assignment_grades(course: str, slug: str, session: SessionDep, user: CurrentUser) -> dict[str, Any]:
    """Every student's grade on the assignment (staff)."""
    access = assignments.require_staff(
        assignments.get_for_user(session=session, user=user, course_slug=course, slug=slug)
    )
    grades = service.assignment_grades(session=session, assignment=access.assignment)
    return {"assignment": slug, "total": len(grades), "items": [student_grade_out(grade) for grade in grades]}


class CourseGradeOut(BaseModel):
    username: str
    total_percent: float
    weights: dict[str, float | None]
    assignments: dict[str, float]  # slug -> score


@router.get("/courses/{course}/me/grades", response_model=CourseGradeOut)
def my_course_grade(course: str, session: SessionDep, user: CurrentUser) -> dict[str, Any]:
    target = courses.get_course(session=session, slug=course)
    if courses.role_in(session=session, user=user, course=target) is None:
        raise NotFound(f"There is no course {course!r} that you can see.")
    row = service.course_grades(session=session, course=target, users=[user])[0]
    visible = [grade for grade in row.grades if grade.assignment.published]
    return {
        "username": user.username,
        "total_percent": row.total_percent,
        "weights": {grade.assignment.slug: grade.assignment.weight for grade in visible},
        "assignments": {grade.assignment.slug: grade.score for grade in visible},
    }


# -- changing the rules -----------------------------------------------------------------------------------------


class AssignmentSettingsIn(BaseModel):
    """Only the fields sent are changed."""

    title: str | None = Field(default=None, min_length=1, max_length=200)
    published: bool | None = None
    opens_at: datetime | None = None
    due_at: datetime | None = None
    closes_at: datetime | None = None
    late_policy: dict[str, Any] | None = None
    counting: Literal["latest", "best", "final"] | None = None
    weight: float | None = Field(default=None, ge=0, le=100)
    rate_limit_count: int | None = Field(default=None, ge=1, le=10_000)
    rate_limit_window_s: int | None = Field(default=None, ge=60, le=30 * 86400)
    max_queued_per_student: int | None = Field(default=None, ge=1, le=100)
    reveal_hidden: bool | None = None
    leaderboard_enabled: bool | None = None
    remeasure_top_n: int | None = Field(default=None, ge=0, le=100)
    allow_past_deadline: bool = False  # a deadline in the past is refused unless this says it is meant


class AssignmentSettingsOut(BaseModel):
    slug: str
    title: str
    published: bool
    opens_at: datetime | None
    due_at: datetime | None
    due_local: str | None
    closes_at: datetime | None
    late_policy: dict[str, Any]
    late_policy_text: str
    counting: str
    weight: float | None
    rate_limit_count: int | None
    rate_limit_window_s: int
    max_queued_per_student: int
    reveal_hidden: bool
    leaderboard_enabled: bool
    remeasure_top_n: int
    timezone: str


def settings_out(assignment: Assignment) -> dict[str, Any]:
    policy = service.policy_of(assignment)
    return {
        "slug": assignment.slug,
        "title": assignment.title,
        "published": assignment.published,
        "opens_at": assignment.opens_at,
        "due_at": assignment.due_at,
        "due_local": service.local_text(assignment.due_at, assignment.course),
        "closes_at": assignment.closes_at,
        "late_policy": policy.to_json(),
        "late_policy_text": policy.describe(),
        "counting": assignment.counting,
        "weight": assignment.weight,
        "rate_limit_count": assignment.rate_limit_count,
        "rate_limit_window_s": assignment.rate_limit_window_s,
        "max_queued_per_student": assignment.max_queued_per_student,
        "reveal_hidden": assignment.reveal_hidden,
        "leaderboard_enabled": assignment.leaderboard_enabled,
        "remeasure_top_n": assignment.remeasure_top_n,
        "timezone": assignment.course.timezone,
    }


def _aware(name: str, value: datetime | None) -> datetime | None:
    if value is not None and (value.tzinfo is None or value.utcoffset() is None):
        raise BadRequest(f"{name} needs a UTC offset, e.g. 2027-03-21T23:59:00+08:00.", code="naive_datetime")
    return value.astimezone(UTC) if value is not None else None


@router.get("/courses/{course}/assignments/{slug}/settings", response_model=AssignmentSettingsOut)
def get_settings(course: str, slug: str, session: SessionDep, user: CurrentUser) -> dict[str, Any]:
    access = assignments.require_staff(
        assignments.get_for_user(session=session, user=user, course_slug=course, slug=slug)
    )
    return settings_out(access.assignment)


@router.patch("/courses/{course}/assignments/{slug}/settings", response_model=AssignmentSettingsOut)
def update_settings(
    course: str, slug: str, body: AssignmentSettingsIn, session: SessionDep, user: CurrentUser
) -> dict[str, Any]:
    """Change an assignment's deadline, late policy, counting rule, weight, limits or visibility (instructors).

    Grades are computed from these when read, so a change rescores every student at once.
    """
    access = assignments.get_for_user(session=session, user=user, course_slug=course, slug=slug)
    assignment = service.apply_settings(
        session=session,
        assignment=access.assignment,
        actor=user,
        changes=body.model_dump(exclude_unset=True, exclude={"allow_past_deadline"}),
        allow_past_deadline=body.allow_past_deadline,
    )
    session.commit()
    return settings_out(assignment)


class CourseSettingsIn(BaseModel):
    timezone: str | None = Field(default=None, max_length=64)
    late_days_budget: int | None = Field(default=None, ge=0, le=365)


class CourseSettingsOut(BaseModel):
    slug: str
    title: str
    timezone: str
    late_days_budget: int


@router.patch("/courses/{course}", response_model=CourseSettingsOut)
def update_course(
    course: str, body: CourseSettingsIn, session: SessionDep, user: CurrentUser
) -> dict[str, Any]:
    target = courses.get_course(session=session, slug=course)
    if courses.role_in(session=session, user=user, course=target) is None:
        raise NotFound(f"There is no course {course!r} that you can see.")
    service.require_instructor(session=session, user=user, course=target)
    changes = body.model_dump(exclude_unset=True)
    if changes.get("timezone") is not None:
        try:
            service.ZoneInfo(changes["timezone"])
        except (service.ZoneInfoNotFoundError, ValueError):
            raise BadRequest(
                f"{changes['timezone']!r} is not a time zone name like Asia/Shanghai.", code="bad_timezone"
            ) from None
    before = {name: getattr(target, name) for name in changes}
    for name, value in changes.items():
        if value is not None:
            setattr(target, name, value)
    audit.record(
        session=session,
        actor=user,
        action="course.settings",
        target_type="course",
        target_id=target.id,
        course_id=target.id,
        before=before,
        after=changes,
    )
    session.commit()
    return {
        "slug": target.slug,
        "title": target.title,
        "timezone": target.timezone,
        "late_days_budget": target.late_days_budget,
    }


# -- extensions -----------------------------------------------------------------------------------------------


class ExtensionIn(BaseModel):
    due_at: datetime
    reason: str = Field(max_length=MAX_REASON_CHARS)


class ExtensionOut(BaseModel):
    username: str
    due_at: datetime
    due_local: str | None
    reason: str
    granted_by: str | None


def _extension_out(session: SessionDep, extension: Extension, course: Course) -> dict[str, Any]:
    student = session.get(User, extension.user_id)
    granted_by = session.get(User, extension.granted_by_id) if extension.granted_by_id else None
    return {
        "username": student.username if student else "",
        "due_at": extension.due_at,
        "due_local": service.local_text(extension.due_at, course),
        "reason": extension.reason,
        "granted_by": granted_by.username if granted_by else None,
    }


def _student_of(session: SessionDep, course: Course, username: str) -> User:
    student = session.scalar(select(User).where(User.username == username))
    if student is None or courses.role_in(session=session, user=student, course=course) != Role.student:
        raise NotFound(f"There is no student {username!r} in this course.")
    return student


@router.get("/courses/{course}/assignments/{slug}/extensions", response_model=list[ExtensionOut])
def list_extensions(course: str, slug: str, session: SessionDep, user: CurrentUser) -> list[dict[str, Any]]:
    access = assignments.require_staff(
        assignments.get_for_user(session=session, user=user, course_slug=course, slug=slug)
    )
    rows = session.scalars(
        select(Extension).where(Extension.assignment_id == access.assignment.id).order_by(Extension.id)
    )
    return [_extension_out(session, row, access.assignment.course) for row in rows]


@router.put("/courses/{course}/assignments/{slug}/extensions/{username}", response_model=ExtensionOut)
def grant_extension(
    course: str, slug: str, username: str, body: ExtensionIn, session: SessionDep, user: CurrentUser
) -> dict[str, Any]:
    """Give one student their own deadline (their late window moves with it). Staff; reason required."""
    access = assignments.require_staff(
        assignments.get_for_user(session=session, user=user, course_slug=course, slug=slug)
    )
    assignment = access.assignment
    student = _student_of(session, assignment.course, username)
    due_at = service.aware("due_at", body.due_at)
    assert due_at is not None
    reason = service.clean_reason(body.reason, "an extension")
    extension = session.scalar(
        select(Extension).where(Extension.assignment_id == assignment.id, Extension.user_id == student.id)
    )
    before = (
        None if extension is None else {"due_at": extension.due_at.isoformat(), "reason": extension.reason}
    )
    if extension is None:
        extension = Extension(assignment_id=assignment.id, user_id=student.id)
        session.add(extension)
    extension.due_at = due_at
    extension.reason = reason
    extension.granted_by_id = user.id
    audit.record(
        session=session,
        actor=user,
        action="extension.grant",
        target_type="assignment",
        target_id=assignment.id,
        course_id=assignment.course_id,
        student=student.username,
        due_at=due_at.isoformat(),
        reason=reason,
        before=before,
    )
    session.commit()
    return _extension_out(session, extension, assignment.course)


class ReasonIn(BaseModel):
    reason: str = Field(max_length=MAX_REASON_CHARS)


@router.delete("/courses/{course}/assignments/{slug}/extensions/{username}", status_code=204)
def revoke_extension(
    course: str, slug: str, username: str, body: ReasonIn, session: SessionDep, user: CurrentUser
) -> None:
    access = assignments.require_staff(
        assignments.get_for_user(session=session, user=user, course_slug=course, slug=slug)
    )
    assignment = access.assignment
    student = _student_of(session, assignment.course, username)
    extension = session.scalar(
        select(Extension).where(Extension.assignment_id == assignment.id, Extension.user_id == student.id)
    )
    if extension is None:
        raise NotFound(f"{username} has no extension on {slug}.")
    reason = service.clean_reason(body.reason, "revoking an extension")
    audit.record(
        session=session,
        actor=user,
        action="extension.revoke",
        target_type="assignment",
        target_id=assignment.id,
        course_id=assignment.course_id,
        student=student.username,
        due_at=extension.due_at.isoformat(),
        reason=reason,
    )
    session.delete(extension)
    session.commit()


# -- overrides and final marks ----------------------------------------------------------------------------------


class OverrideIn(BaseModel):
    score: float
    reason: str = Field(max_length=MAX_REASON_CHARS)


class OverrideOut(BaseModel):
    submission_id: int
    score: float
    reason: str
    by: str | None
    at: datetime
    autograded: float | None  # shown beside the override: regrades keep changing it, never the override


def _staff_submission(session: SessionDep, user: User, submission_id: int) -> Submission:
    submission, staff = submissions.visible_submission(
        session=session, user=user, submission_id=submission_id
    )
    if not staff:
        raise Forbidden("Only the course's TAs and instructors can override scores.")
    return submission


@router.put("/submissions/{submission_id}/override", response_model=OverrideOut)
def set_override(
    submission_id: int, body: OverrideIn, session: SessionDep, user: CurrentUser
) -> dict[str, Any]:
    """Replace a submission's score (staff, reason required, audit-logged, shown to the student)."""
    submission = _staff_submission(session, user, submission_id)
    override = service.set_override(
        session=session, submission=submission, actor=user, score=body.score, reason=body.reason
    )
    session.commit()
    return {**override_out(override), "submission_id": submission.id, "autograded": submission.score}


@router.delete("/submissions/{submission_id}/override", status_code=204)
def remove_override(submission_id: int, body: ReasonIn, session: SessionDep, user: CurrentUser) -> None:
    submission = _staff_submission(session, user, submission_id)
    service.remove_override(session=session, submission=submission, actor=user, reason=body.reason)
    session.commit()


class FinalOut(BaseModel):
    submission_id: int
    marked_final_at: datetime


@router.post("/submissions/{submission_id}/final", response_model=FinalOut)
def mark_final(submission_id: int, session: SessionDep, user: CurrentUser) -> dict[str, Any]:
    """Mark your submission as the one that counts (assignments that count the 'final' one), before your deadline."""
    submission, _ = submissions.visible_submission(session=session, user=user, submission_id=submission_id)
    if submission.user_id != user.id:
        raise Forbidden("Only the student who submitted it can mark a submission as final.")
    grade = service.student_grade(session=session, assignment=submission.assignment, user=user)
    now = utcnow()
    if grade.deadline is not None and now > grade.deadline:
        raise Conflict(
            f"Your deadline ({service.local_text(grade.deadline, submission.assignment.course)}) has passed; the final "
            "mark can no longer change.",
            code="deadline_passed",
        )
    others = session.scalars(
        select(Submission).where(
            Submission.assignment_id == submission.assignment_id,
            Submission.user_id == user.id,
            Submission.marked_final_at.is_not(None),
        )
    )
    for other in others:
        other.marked_final_at = None
    submission.marked_final_at = now
    audit.record(
        session=session,
        actor=user,
        action="submission.mark_final",
        target_type="submission",
        target_id=submission.id,
        course_id=submission.assignment.course_id,
    )
    session.commit()
    return {"submission_id": submission.id, "marked_final_at": now}
