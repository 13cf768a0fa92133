"""Grades as the course's rules make them, computed when asked (never stored), so changing a late policy, an
extension or an override changes every affected grade at once.

For each student and assignment: the student's deadline (an extension replaces the assignment's), each finished
submission's lateness under the late policy, its score (a staff override replaces it; otherwise the autograded or
rubric score times the late multiplier), and the submission that counts (latest, best, or the one the student
marked final). Late days are spent in deadline order across the course, so what an early assignment used is gone
for a later one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from server.assignments.models import Assignment, Extension
from server.audit import service as audit
from server.auth.models import User
from server.courses import service as courses
from server.courses.models import Course, Enrollment, Role
from server.db import utcnow
from server.errors import BadRequest, Forbidden, NotFound
from server.policy.late import Lateness, LatePolicy, PolicyError, accepting_until, assess, parse_policy
from server.submissions.models import ScoreOverride, Submission, SubmissionStatus

COUNTING_RULES = ("latest", "best", "final")
# Finished submissions that have (or will get, for rubric grading) a score; and ones being graded again (a
# regrade or a re-measurement), which keep counting with the score they had until the new one is recorded.
SCORED_STATUSES = (SubmissionStatus.graded, SubmissionStatus.failed, SubmissionStatus.received)
REGRADING_STATUSES = (SubmissionStatus.queued, SubmissionStatus.running)


def zone_of(course: Course) -> ZoneInfo:
    try:
        return ZoneInfo(course.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def local_text(instant: datetime | None, course: Course) -> str | None:
    """An instant as the course's wall clock shows it, with the zone: '2027-03-21 23:59 CST (UTC+08:00)'."""
    if instant is None:
        return None
    local = instant.astimezone(zone_of(course))
    offset = local.strftime("%z")
    return f"{local:%Y-%m-%d %H:%M:%S} {local.tzname()} (UTC{offset[:3]}:{offset[3:]})"


def policy_of(assignment: Assignment) -> LatePolicy:
    try:
        return parse_policy(assignment.late_policy)
    except PolicyError:
        return LatePolicy()  # a policy that no longer parses is treated as the strictest one


@dataclass(frozen=True)
class SubmissionGrade:
    submission: Submission
    lateness: Lateness
    override: ScoreOverride | None
    autograded: float | None  # the latest run's (or the rubric's) score; None: not graded yet
    max_score: float
    score: float | None  # what it is worth: the override, else autograded x late multiplier (0 if too late)


@dataclass
class StudentGrade:
    user: User
    assignment: Assignment
    deadline: datetime | None  # this student's (an extension replaces the assignment's)
    extension: Extension | None
    late_days_left: int  # before this assignment (late_days policies)
    accepting_until: datetime | None  # last instant a submission still counts
    submissions: list[SubmissionGrade] = field(default_factory=list)
    counted: SubmissionGrade | None = None

    @property
    def score(self) -> float:
        if self.counted is None or self.counted.score is None:
            return 0.0
        return self.counted.score

    @property
    def max_score(self) -> float:
        return float(self.assignment.points)

    @property
    def late_days_used(self) -> int:
        return self.counted.lateness.late_days_used if self.counted is not None else 0


def _grade_submission(
    submission: Submission,
    override: ScoreOverride | None,
    *,
    policy: LatePolicy,
    deadline: datetime | None,
    zone: ZoneInfo,
    late_days_left: int,
) -> SubmissionGrade:
    lateness = assess(
        policy, due=deadline, submitted=submission.submitted_at, zone=zone, late_days_left=late_days_left
    )
    autograded = submission.score if submission.status != SubmissionStatus.received else None
    if submission.status == SubmissionStatus.received and submission.score is not None:
        autograded = submission.score
    max_score = float(submission.max_score or submission.assignment.points)
    if override is not None:
        score: float | None = override.score
    elif autograded is None:
        score = None
    else:
        score = round(autograded * lateness.multiplier, 6) if lateness.accepted else 0.0
    return SubmissionGrade(submission, lateness, override, autograded, max_score, score)


def _choose(rule: str, grades: list[SubmissionGrade]) -> SubmissionGrade | None:
    if not grades:
        return None
    by_time = sorted(grades, key=lambda grade: (grade.submission.submitted_at, grade.submission.id))
    if rule == "best":
        scored = [grade for grade in by_time if grade.score is not None]
        if not scored:
            return by_time[-1]
        best = max(grade.score or 0.0 for grade in scored)
        return next(grade for grade in scored if grade.score == best)  # ties: the earlier submission
    if rule == "final":
        marked = [grade for grade in by_time if grade.submission.marked_final_at is not None]
        if marked:
            return max(
                marked, key=lambda grade: grade.submission.marked_final_at or grade.submission.submitted_at
            )
    return by_time[-1]


def _students(session: Session, course: Course) -> list[User]:
    return list(
        session.scalars(
            select(User)
            .join(Enrollment, Enrollment.user_id == User.id)
            .where(Enrollment.course_id == course.id, Enrollment.role == Role.student)
            .order_by(User.username)
        )
    )


def _course_assignments(session: Session, course: Course) -> list[Assignment]:
    """Every assignment of the course in deadline order (the order late days are spent in)."""
    assignments = list(session.scalars(select(Assignment).where(Assignment.course_id == course.id)))
    return sorted(assignments, key=lambda a: (a.due_at is None, a.due_at or datetime.max, a.id))


def _grades(
    session: Session, course: Course, assignments: list[Assignment], users: Iterable[User]
) -> dict[tuple[int, int], StudentGrade]:
    """(assignment id, user id) -> StudentGrade for ``users`` over ``assignments`` (course deadline order)."""
    users = list(users)
    user_ids = [user.id for user in users]
    if not user_ids or not assignments:
        return {}
    zone = zone_of(course)
    assignment_ids = [assignment.id for assignment in assignments]
    submissions: dict[tuple[int, int], list[Submission]] = {}
    for submission in session.scalars(
        select(Submission).where(
            Submission.assignment_id.in_(assignment_ids),
            Submission.user_id.in_(user_ids),
            or_(
                Submission.status.in_(SCORED_STATUSES),
                and_(Submission.status.in_(REGRADING_STATUSES), Submission.score.is_not(None)),
            ),
        )
    ):
        submissions.setdefault((submission.assignment_id, submission.user_id), []).append(submission)
    all_ids = [s.id for rows in submissions.values() for s in rows]
    overrides = {
        row.submission_id: row
        for row in (
            session.scalars(select(ScoreOverride).where(ScoreOverride.submission_id.in_(all_ids)))
            if all_ids
            else []
        )
    }
    extensions = {
        (row.assignment_id, row.user_id): row
        for row in session.scalars(
            select(Extension).where(
                Extension.assignment_id.in_(assignment_ids), Extension.user_id.in_(user_ids)
            )
        )
    }
    result: dict[tuple[int, int], StudentGrade] = {}
    for user in users:
        late_days_left = course.late_days_budget
        for assignment in assignments:
            policy = policy_of(assignment)
            extension = extensions.get((assignment.id, user.id))
            deadline = extension.due_at if extension is not None else assignment.due_at
            grade = StudentGrade(
                user=user,
                assignment=assignment,
                deadline=deadline,
                extension=extension,
                late_days_left=late_days_left,
                accepting_until=accepting_until(
                    policy, due=deadline, zone=zone, late_days_left=late_days_left
                ),
            )
            grade.submissions = [
                _grade_submission(
                    submission,
                    overrides.get(submission.id),
                    policy=policy,
                    deadline=deadline,
                    zone=zone,
                    late_days_left=late_days_left,
                )
                for submission in submissions.get((assignment.id, user.id), [])
            ]
            grade.counted = _choose(assignment.counting, grade.submissions)
            late_days_left -= grade.late_days_used
            result[(assignment.id, user.id)] = grade
    return result


def student_grade(*, session: Session, assignment: Assignment, user: User) -> StudentGrade:
    course = assignment.course
    grades = _grades(session, course, _course_assignments(session, course), [user])
    return grades[(assignment.id, user.id)]


def assignment_grades(*, session: Session, assignment: Assignment) -> list[StudentGrade]:
    """Every enrolled student's grade on ``assignment`` (students without a submission included, at 0)."""
    course = assignment.course
    students = _students(session, course)
    grades = _grades(session, course, _course_assignments(session, course), students)
    return [grades[(assignment.id, user.id)] for user in students]


def course_grades(*, session: Session, course: Course, users: list[User] | None = None) -> list[CourseGrade]:
    """Per student: every assignment's grade and the weighted course total (in percent)."""
    assignments = _course_assignments(session, course)
    students = users if users is not None else _students(session, course)
    grades = _grades(session, course, assignments, students)
    rows = []
    for user in students:
        per_assignment = [grades[(assignment.id, user.id)] for assignment in assignments]
        total = sum(
            (grade.score / grade.max_score) * float(grade.assignment.weight)
            for grade in per_assignment
            if grade.assignment.weight and grade.max_score > 0
        )
        rows.append(CourseGrade(user=user, grades=per_assignment, total_percent=round(total, 4)))
    return rows


@dataclass(frozen=True)
class CourseGrade:
    user: User
    grades: list[StudentGrade]
    total_percent: float  # the weighted sum of assignment percentages, out of the sum of the weights


def counted_submissions(*, session: Session, assignment: Assignment) -> dict[int, Submission]:
    """user id -> the submission that counts for that student on ``assignment`` (students with one only)."""
    return {
        grade.user.id: grade.counted.submission
        for grade in assignment_grades(session=session, assignment=assignment)
        if grade.counted is not None
    }


# -- changing the rules (shared by the API and the staff pages) --------------------------------------------------

MAX_REASON_CHARS = 2_000
MAX_TITLE_CHARS = 200
# Inclusive bounds of the numeric settings.
SETTING_RANGES: dict[str, tuple[float, float]] = {
    "weight": (0, 100),
    "rate_limit_count": (1, 10_000),
    "rate_limit_window_s": (60, 30 * 86400),
    "max_queued_per_student": (1, 100),
    "remeasure_top_n": (0, 100),
}
SETTINGS = frozenset(
    {
        "title",
        "published",
        "opens_at",
        "due_at",
        "closes_at",
        "late_policy",
        "counting",
        "weight",
        "reveal_hidden",
        "leaderboard_enabled",
        *SETTING_RANGES,
    }
)
# Settings that may be cleared (None): no date, no weight in the course total, no rate limit.
CLEARABLE = frozenset({"opens_at", "due_at", "closes_at", "weight", "rate_limit_count"})


def require_instructor(*, session: Session, user: User, course: Course) -> None:
    role = courses.role_in(session=session, user=user, course=course)
    if role != Role.instructor and not user.is_admin:
        raise Forbidden("Only the course's instructors can change this.")


def clean_reason(text: str, what: str) -> str:
    """A staff reason the student will read: required, and not endless."""
    reason = text.strip()
    if not reason:
        raise BadRequest(f"A reason is required for {what}: the student sees it.", code="reason_required")
    if len(reason) > MAX_REASON_CHARS:
        raise BadRequest(f"The reason is longer than {MAX_REASON_CHARS} characters.", code="reason_too_long")
    return reason


def aware(name: str, value: datetime | None) -> datetime | None:
    """``value`` in UTC; an instant without a UTC offset is refused (whose wall clock would it be?)."""
    if value is not None and (value.tzinfo is None or value.utcoffset() is None):
        raise BadRequest(
            f"{name} needs a UTC offset, e.g. 2027-03-21T23:59:00+08:00.", code="naive_datetime", field=name
        )
    return value.astimezone(UTC) if value is not None else None


def _jsonable(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def _check_values(changes: dict[str, Any]) -> None:
    for name, value in changes.items():
        if value is None:
            if name not in CLEARABLE:
                raise BadRequest(f"{name} cannot be empty.", code="setting_required", field=name)
            continue
        if name == "title" and not (isinstance(value, str) and 0 < len(value.strip()) <= MAX_TITLE_CHARS):
            raise BadRequest(
                f"The title must be 1 to {MAX_TITLE_CHARS} characters.", code="bad_title", field=name
            )
        if name in ("published", "reveal_hidden", "leaderboard_enabled") and not isinstance(value, bool):
            raise BadRequest(f"{name} must be true or false.", code="bad_setting", field=name)
        if name == "counting" and value not in COUNTING_RULES:
            raise BadRequest(
                f"counting must be one of {', '.join(COUNTING_RULES)}.", code="bad_counting", field=name
            )
        if name in SETTING_RANGES:
            low, high = SETTING_RANGES[name]
            whole = name != "weight"
            if (
                isinstance(value, bool)
                or not isinstance(value, int if whole else int | float)
                or not math.isfinite(value)
                or not low <= value <= high
            ):
                if name == "weight":
                    raise BadRequest(
                        "The weight must be a number from 0 to 100.", code="bad_weight", field=name
                    )
                raise BadRequest(
                    f"{name} must be a whole number from {low:g} to {high:g}.",
                    code="out_of_range",
                    field=name,
                    low=low,
                    high=high,
                )


def apply_settings(
    *,
    session: Session,
    assignment: Assignment,
    actor: User,
    changes: dict[str, Any],
    allow_past_deadline: bool = False,
) -> Assignment:
    """Change an assignment's settings: only the fields in ``changes``, each checked first (instructors).

    Everything is validated before anything is set, so a refused change (BadRequest, with the offending
    ``field`` in its details) leaves the assignment as it was. A deadline in the past is refused unless
    ``allow_past_deadline`` says it is meant. The change is audit-logged; the caller commits. Grades are
    computed from these settings when read, so a change rescores every student at once.
    """
    require_instructor(session=session, user=actor, course=assignment.course)
    unknown = sorted(set(changes) - SETTINGS)
    if unknown:
        raise BadRequest(
            f"{unknown[0]} is not an assignment setting.", code="unknown_setting", field=unknown[0]
        )
    changes = dict(changes)
    for name in ("opens_at", "due_at", "closes_at"):
        if name in changes:
            changes[name] = aware(name, changes[name])
    _check_values(changes)
    if "title" in changes:
        changes["title"] = changes["title"].strip()
    if changes.get("due_at") is not None and changes["due_at"] < utcnow() and not allow_past_deadline:
        raise BadRequest(
            "The deadline is in the past. Choose a later one (or set allow_past_deadline to mean it).",
            code="deadline_in_past",
            field="due_at",
        )
    opens = changes.get("opens_at", assignment.opens_at)
    due = changes.get("due_at", assignment.due_at)
    closes = changes.get("closes_at", assignment.closes_at)
    if opens is not None and due is not None and opens >= due:
        raise BadRequest(
            "The assignment must open before its deadline.",
            code="opens_after_due",
            field="opens_at" if "opens_at" in changes else "due_at",
        )
    if due is not None and closes is not None and closes < due:
        raise BadRequest(
            "Submissions cannot close before the deadline.",
            code="closes_before_due",
            field="closes_at" if "closes_at" in changes else "due_at",
        )
    if "late_policy" in changes:
        try:
            changes["late_policy"] = parse_policy(changes["late_policy"]).to_json()
        except PolicyError as exc:
            raise BadRequest(
                f"The late policy is not valid: {exc}.", code="bad_late_policy", field="late_policy"
            ) from None
    before = {name: _jsonable(getattr(assignment, name)) for name in changes}
    for name, value in changes.items():
        setattr(assignment, name, value)
    audit.record(
        session=session,
        actor=actor,
        action="assignment.settings",
        target_type="assignment",
        target_id=assignment.id,
        course_id=assignment.course_id,
        before=before,
        after={name: _jsonable(value) for name, value in changes.items()},
    )
    session.flush()
    return assignment


def override_of(*, session: Session, submission: Submission) -> ScoreOverride | None:
    return session.scalar(select(ScoreOverride).where(ScoreOverride.submission_id == submission.id))


def set_override(
    *, session: Session, submission: Submission, actor: User, score: float, reason: str
) -> ScoreOverride:
    """Replace a submission's score (the caller checked that ``actor`` is staff): a reason the student sees is
    required, the score stays within the submission's maximum, and the change is audit-logged. Regrades change
    the autograded score beside it, never the override. The caller commits."""
    maximum = float(submission.max_score or submission.assignment.points)
    if not (math.isfinite(score) and 0 <= score <= maximum):
        raise BadRequest(
            f"The score must be between 0 and {maximum:g}.", code="score_out_of_range", maximum=maximum
        )
    text = clean_reason(reason, "a score override")
    override = override_of(session=session, submission=submission)
    before = None if override is None else {"score": override.score, "reason": override.reason}
    if override is None:
        override = ScoreOverride(submission_id=submission.id)
        session.add(override)
    override.score = float(score)
    override.reason = text
    override.created_by_id = actor.id
    audit.record(
        session=session,
        actor=actor,
        action="score.override",
        target_type="submission",
        target_id=submission.id,
        course_id=submission.assignment.course_id,
        score=override.score,
        reason=text,
        before=before,
        autograded=submission.score,
    )
    session.flush()
    session.refresh(override)
    return override


def remove_override(*, session: Session, submission: Submission, actor: User, reason: str) -> None:
    """Give a submission its computed score back (staff, reason required, audit-logged). The caller commits."""
    override = override_of(session=session, submission=submission)
    if override is None:
        raise NotFound(f"Submission {submission.id} has no score override.")
    text = clean_reason(reason, "removing an override")
    audit.record(
        session=session,
        actor=actor,
        action="score.override_removed",
        target_type="submission",
        target_id=submission.id,
        course_id=submission.assignment.course_id,
        score=override.score,
        reason=text,
    )
    session.delete(override)
    session.flush()
