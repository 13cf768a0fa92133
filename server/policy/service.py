"""Grades as the course's rules make them, computed when asked (never stored), so changing a late policy, an
extension or an override changes every affected grade at once.

For each student and assignment: the student's deadline (an extension replaces the assignment's), each finished
submission's lateness under the late policy, its score (a staff override replaces it; otherwise the autograded or
rubric score times the late multiplier), and the submission that counts (latest, best, or the one the student
marked final). Late days are spent in deadline order across the course, so what an early assignment used is gone
for a later one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.assignments.models import Assignment, Extension
from server.auth.models import User
from server.courses.models import Course, Enrollment, Role
from server.policy.late import Lateness, LatePolicy, PolicyError, accepting_until, assess, parse_policy
from server.submissions.models import ScoreOverride, Submission, SubmissionStatus

COUNTING_RULES = ("latest", "best", "final")
# Finished submissions that have (or will get, for rubric grading) a score.
SCORED_STATUSES = (SubmissionStatus.graded, SubmissionStatus.failed, SubmissionStatus.received)


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
            Submission.status.in_(SCORED_STATUSES),
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
