"""What the staff pages show, assembled from the services: who may open them, filtered submission lists, grades
in words, the settings form (values shown in the course's zone, parsed back into typed changes), the charts'
data, and the queue and worker health.

Everything here returns plain data for templates; words come from the page catalogs through ``t``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.orm import Session, object_session

from server.assignments import service as assignments
from server.assignments.models import Assignment
from server.assignments.service import AssignmentAccess
from server.audit import service as audit
from server.auth.models import User
from server.courses import service as courses
from server.courses.models import Course, Enrollment, Role
from server.errors import BadRequest, DomainError, Forbidden, NotFound
from server.pages import i18n
from server.pages.i18n import Translate
from server.policy import service as policy
from server.policy.late import MAX_UNITS, Lateness, LatePolicy
from server.rubrics import service as rubrics
from server.submissions import service as submissions
from server.submissions.models import GradingRun, Submission, SubmissionStatus

PAGE_SIZE = 50
# Enough for every submission of a course's assignment: score and lateness filters are applied to the rows.
ALL_ROWS = 1_000_000
HISTOGRAM_BINS = 10
MAX_CHART_HOURS = 24 * 60  # the per-hour chart shows at most the last 60 days with submissions
RECENT = timedelta(hours=24)
LATE_FILTERS = ("on_time", "late", "too_late")
LANES = {0: "students", 1: "regrades", 2: "remeasure"}


# -- who may open a staff page ----------------------------------------------------------------------------------


def staff_assignment(
    session: Session, user: User, t: Translate, course_slug: str, slug: str, *, instructor: bool = False
) -> AssignmentAccess:
    """The assignment for its course's staff (``instructor``: its instructors). Students get a 403 page;
    anyone else cannot tell that it exists."""
    try:
        access = assignments.get_for_user(session=session, user=user, course_slug=course_slug, slug=slug)
    except NotFound:
        raise NotFound(t("staff.error.no_assignment")) from None
    if not access.is_staff:
        raise Forbidden(t("staff.error.forbidden"))
    if instructor:
        require_instructor(session, user, t, access.assignment.course)
    return access


def staff_course(
    session: Session, user: User, t: Translate, course_slug: str, *, instructor: bool = False
) -> tuple[Course, Role]:
    course = session.scalar(select(Course).where(Course.slug == course_slug))
    role = courses.role_in(session=session, user=user, course=course) if course is not None else None
    if course is None or role is None:
        raise NotFound(t("staff.error.no_course"))
    if not role.is_staff:
        raise Forbidden(t("staff.error.forbidden"))
    if instructor:
        require_instructor(session, user, t, course)
    return course, role


def require_instructor(session: Session, user: User, t: Translate, course: Course) -> None:
    try:
        policy.require_instructor(session=session, user=user, course=course)
    except Forbidden:
        raise Forbidden(t("staff.error.instructors_only")) from None


def staff_submission(session: Session, user: User, t: Translate, submission_id: int) -> Submission:
    try:
        submission, staff = submissions.visible_submission(
            session=session, user=user, submission_id=submission_id
        )
    except NotFound:
        raise NotFound(t("staff.error.no_submission")) from None
    if not staff:
        raise Forbidden(t("staff.error.forbidden"))
    return submission


def teaches(user: User | None) -> bool:
    """Whether to show the staff link: the user is an administrator or a TA or instructor of some course."""
    if user is None:
        return False
    if user.is_admin:
        return True
    session = object_session(user)
    if session is None:
        return False
    return bool(
        session.scalar(
            select(func.count())
            .select_from(Enrollment)
            .where(Enrollment.user_id == user.id, Enrollment.role.in_([Role.ta, Role.instructor]))
        )
    )


def staff_courses(session: Session, user: User) -> list[tuple[Course, Role]]:
    result = []
    for course in session.scalars(select(Course).order_by(Course.id)):
        role = courses.role_in(session=session, user=user, course=course)
        if role is not None and role.is_staff:
            result.append((course, role))
    return result


def explain(t: Translate, error: DomainError) -> str:
    """A service's refusal in the viewer's language when the catalog knows its code, else its own sentence."""
    key = f"staff.error.{error.code}"
    if key in i18n.catalog(i18n.DEFAULT_LANGUAGE):
        return t(key, **error.details)
    return error.message


# -- words ------------------------------------------------------------------------------------------------------


def plural(t: Translate, key: str, n: int) -> str:
    return t(f"{key}.one" if n == 1 else f"{key}.other", n=n)


def lateness_text(t: Translate, lateness: Lateness) -> str:
    if lateness.units_late == 0:
        return t("staff.late.on_time")
    late = plural(t, f"staff.unit.{lateness.per}", lateness.units_late)
    if not lateness.accepted:
        return t("staff.late.too_late", late=late)
    if lateness.late_days_used:
        return t("staff.late.days_used", late=late, n=lateness.late_days_used)
    if lateness.multiplier < 1:
        return t("staff.late.penalty", late=late, percent=f"{100 * (1 - lateness.multiplier):g}")
    return t("staff.late.late", late=late)


def policy_text(t: Translate, late: LatePolicy) -> str:
    if late.kind == "hard":
        return t("staff.policy.hard")
    if late.kind == "window":
        return t(
            "staff.policy.window",
            window=plural(t, f"staff.unit.{late.per}", late.max_units or 0),
            unit=t(f"staff.unit.{late.per}.name"),
            percent=f"{late.penalty_percent:g}",
        )
    if late.max_units is None:
        return t("staff.policy.late_days")
    return t("staff.policy.late_days_capped", n=late.max_units)


def age_text(t: Translate, seconds: float) -> str:
    """How long ago, roughly: '40 s', '12 min', '3 h', '2 d'."""
    whole = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if whole >= size:
            return t(f"staff.age.{unit}", n=whole // size)
    return t("staff.age.s", n=whole)


def score_text(value: float | None, maximum: float | None = None) -> str:
    if value is None:
        return "—"
    return f"{value:g}" if maximum is None else f"{value:g} / {maximum:g}"


# -- submissions of an assignment -------------------------------------------------------------------------------


@dataclass
class Row:
    """One submission as the staff list shows it."""

    submission: Submission
    grade: policy.SubmissionGrade | None  # None: not finished, or not a student of the course
    counted: bool
    late: str | None


@dataclass
class Filters:
    student: str = ""
    status: str = ""
    min_score: str = ""
    max_score: str = ""
    late: str = ""
    page: int = 1
    errors: dict[str, str] = field(default_factory=dict)
    low: float | None = None
    high: float | None = None

    @property
    def active(self) -> bool:
        return any((self.student, self.status, self.min_score, self.max_score, self.late))

    def query(self, page: int) -> str:
        """The query string of this filter on ``page`` (for paging links)."""
        values = {
            "student": self.student,
            "status": self.status,
            "min_score": self.min_score,
            "max_score": self.max_score,
            "late": self.late,
        }
        values = {key: value for key, value in values.items() if value}
        if page > 1:
            values["page"] = str(page)
        return urlencode(values)


def parse_number(text: str) -> float | None:
    """A finite number typed by a person ('7', '7.5', '7,5'), or None when it is not one."""
    try:
        value = float(text.strip().replace(",", "."))
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def parse_filters(t: Translate, params: Mapping[str, str]) -> Filters:
    filters = Filters(
        student=params.get("student", "").strip()[:64],
        status=params.get("status", ""),
        min_score=params.get("min_score", "").strip()[:32],
        max_score=params.get("max_score", "").strip()[:32],
        late=params.get("late", ""),
    )
    try:
        filters.page = max(1, min(int(params.get("page", "1")), 100_000))
    except ValueError:
        filters.page = 1
    if filters.status and filters.status not in SubmissionStatus.__members__:
        filters.errors["status"] = t("staff.filter.bad_status")
        filters.status = ""
    if filters.late and filters.late not in LATE_FILTERS:
        filters.errors["late"] = t("staff.filter.bad_late")
        filters.late = ""
    for name in ("min_score", "max_score"):
        text = getattr(filters, name)
        if text:
            value = parse_number(text)
            if value is None:
                filters.errors[name] = t("staff.filter.not_a_number")
            elif name == "min_score":
                filters.low = value
            else:
                filters.high = value
    if filters.low is not None and filters.high is not None and filters.low > filters.high:
        filters.errors["max_score"] = t("staff.filter.min_above_max")
        filters.low = filters.high = None
    return filters


def grades_by_submission(
    grades: Iterable[policy.StudentGrade],
) -> tuple[dict[int, policy.SubmissionGrade], set[int]]:
    """submission id -> its grade, and the ids of the submissions that count."""
    by_id: dict[int, policy.SubmissionGrade] = {}
    counted: set[int] = set()
    for grade in grades:
        for item in grade.submissions:
            by_id[item.submission.id] = item
        if grade.counted is not None:
            counted.add(grade.counted.submission.id)
    return by_id, counted


def _keep(filters: Filters, grade: policy.SubmissionGrade | None) -> bool:
    if filters.low is not None or filters.high is not None:
        value = None if grade is None else grade.score
        if value is None:
            return False
        if filters.low is not None and value < filters.low:
            return False
        if filters.high is not None and value > filters.high:
            return False
    if filters.late:
        if grade is None:
            return False
        lateness = grade.lateness
        if filters.late == "on_time" and lateness.units_late != 0:
            return False
        if filters.late == "late" and lateness.units_late == 0:
            return False
        if filters.late == "too_late" and lateness.accepted:
            return False
    return True


def submission_rows(
    session: Session, t: Translate, assignment: Assignment, filters: Filters
) -> tuple[int, list[Row]]:
    """The page of submissions ``filters`` asks for (newest first) and how many match in all.

    Student and status filter in the database; score (what the submission is worth: an override, else the
    autograded score after the late policy) and lateness are computed grades, so they filter the rows.
    """
    by_id, counted = grades_by_submission(policy.assignment_grades(session=session, assignment=assignment))
    status = SubmissionStatus(filters.status) if filters.status else None
    offset = (filters.page - 1) * PAGE_SIZE
    computed = filters.low is not None or filters.high is not None or bool(filters.late)
    total, rows = submissions.list_for_assignment(
        session=session,
        assignment=assignment,
        status=status,
        username=filters.student or None,
        offset=0 if computed else offset,
        limit=ALL_ROWS if computed else PAGE_SIZE,
    )
    if computed:
        rows = [row for row in rows if _keep(filters, by_id.get(row.id))]
        total = len(rows)
        rows = rows[offset : offset + PAGE_SIZE]
    return total, [row_of(t, submission, by_id, counted) for submission in rows]


def row_of(
    t: Translate, submission: Submission, by_id: Mapping[int, policy.SubmissionGrade], counted: set[int]
) -> Row:
    grade = by_id.get(submission.id)
    return Row(
        submission=submission,
        grade=grade,
        counted=submission.id in counted,
        late=lateness_text(t, grade.lateness) if grade is not None else None,
    )


def student_usernames(session: Session, course: Course) -> list[str]:
    return list(
        session.scalars(
            select(User.username)
            .join(Enrollment, Enrollment.user_id == User.id)
            .where(Enrollment.course_id == course.id, Enrollment.role == Role.student)
            .order_by(User.username)
        )
    )


def member(session: Session, t: Translate, course: Course, username: str) -> User:
    """A member of the course by username (any role), else a 404 page."""
    user = session.scalar(select(User).where(User.username == username))
    if user is None or courses.role_in(session=session, user=user, course=course) is None:
        raise NotFound(t("staff.error.no_student"))
    return user


def submission_counts(session: Session, assignment_ids: list[int]) -> dict[int, dict[str, int]]:
    """assignment id -> status -> number of submissions (and "total")."""
    counts: dict[int, dict[str, int]] = {assignment_id: {"total": 0} for assignment_id in assignment_ids}
    if not assignment_ids:
        return counts
    for assignment_id, status, count in session.execute(
        select(Submission.assignment_id, Submission.status, func.count())
        .where(Submission.assignment_id.in_(assignment_ids))
        .group_by(Submission.assignment_id, Submission.status)
    ):
        counts[assignment_id][status.value] = count
        counts[assignment_id]["total"] += count
    return counts


def submissions_per_student(session: Session, assignment: Assignment) -> dict[int, int]:
    return {
        user_id: count
        for user_id, count in session.execute(
            select(Submission.user_id, func.count())
            .where(Submission.assignment_id == assignment.id)
            .group_by(Submission.user_id)
        )
    }


@dataclass(frozen=True)
class ScoreSummary:
    students: int
    submitted: int  # students with a submission that counts
    mean: float | None
    median: float | None


def score_summary(scores: list[float], students: int) -> ScoreSummary:
    if not scores:
        return ScoreSummary(students, 0, None, None)
    ordered = sorted(scores)
    middle = len(ordered) // 2
    median = ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
    return ScoreSummary(students, len(scores), round(sum(scores) / len(scores), 2), round(median, 2))


# -- rubric and roles -------------------------------------------------------------------------------------------


def parse_rubric(
    t: Translate, criteria: list[dict[str, Any]], form: Mapping[str, str]
) -> tuple[list[rubrics.CriterionScore], dict[str, str]]:
    """The criteria the form scores (points and a comment each) and errors per field; empty ones are skipped."""
    scores: list[rubrics.CriterionScore] = []
    errors: dict[str, str] = {}
    for criterion in criteria:
        name = criterion["name"]
        points_text = str(form.get(f"points_{name}", "")).strip()
        comment = str(form.get(f"comment_{name}", ""))
        if not points_text and not comment.strip():
            continue
        maximum = float(criterion["points"])
        points = parse_number(points_text)
        if points is None or not 0 <= points <= maximum:
            errors[f"points_{name}"] = t("staff.rubric.bad_points", maximum=f"{maximum:g}")
        if not comment.strip():
            errors[f"comment_{name}"] = t("staff.rubric.comment_required")
        if points is not None and f"points_{name}" not in errors and comment.strip():
            scores.append(rubrics.CriterionScore(name, points, comment))
    if not scores and not errors:
        errors["form"] = t("staff.rubric.nothing")
    return scores, errors


def change_role(session: Session, course: Course, *, actor: User, member: User, role: str) -> Enrollment:
    """Give a member of the course another role (instructors). Nobody changes their own role, and only an
    administrator changes an administrator's. Audit-logged; the caller commits."""
    if role not in Role.__members__:
        raise BadRequest(f"The role must be student, ta or instructor, not {role!r}.", code="bad_role")
    if member.id == actor.id:
        raise BadRequest("You cannot change your own role in the course.", code="own_role")
    if member.is_admin and not actor.is_admin:
        raise BadRequest(
            "This is an administrator's account; only an administrator can change it.", code="admin_account"
        )
    enrollment = session.scalar(
        select(Enrollment).where(Enrollment.course_id == course.id, Enrollment.user_id == member.id)
    )
    if enrollment is None:
        raise NotFound(f"{member.username} is not enrolled in this course.", code="not_enrolled")
    before = enrollment.role.value
    courses.enroll(session=session, course=course, user=member, role=Role(role))
    audit.record(
        session=session,
        actor=actor,
        action="enrollment.role",
        target_type="user",
        target_id=member.id,
        course_id=course.id,
        username=member.username,
        before=before,
        after=role,
    )
    return enrollment


# -- charts -----------------------------------------------------------------------------------------------------


def histogram(scores: list[float], maximum: float, bins: int = HISTOGRAM_BINS) -> dict[str, Any]:
    """Counts of ``scores`` in ``bins`` equal bins from 0 to ``maximum`` (the last bin includes the maximum)."""
    width = maximum / bins if maximum > 0 else 1.0
    counts = [0] * bins
    for score in scores:
        counts[min(bins - 1, max(0, int(score / width)))] += 1
    return {
        "starts": [round(i * width, 6) for i in range(bins)],
        "width": round(width, 6),
        "counts": counts,
        "maximum": maximum,
    }


def per_hour(instants: list[datetime]) -> dict[str, Any]:
    """Submissions per hour (UTC hour starts, as Unix seconds), zero hours included, the last 60 days at most."""
    if not instants:
        return {"hours": [], "counts": []}
    hours: dict[int, int] = {}
    for instant in instants:
        start = int(instant.timestamp()) // 3600 * 3600
        hours[start] = hours.get(start, 0) + 1
    last = max(hours)
    first = max(min(hours), last - (MAX_CHART_HOURS - 1) * 3600)
    axis = list(range(first, last + 3600, 3600))
    return {"hours": axis, "counts": [hours.get(hour, 0) for hour in axis]}


def chart_data(
    session: Session, t: Translate, assignment: Assignment, grades: list[policy.StudentGrade]
) -> dict[str, Any]:
    scores = [grade.score for grade in grades if grade.counted is not None]
    times = list(
        session.scalars(select(Submission.submitted_at).where(Submission.assignment_id == assignment.id))
    )
    return {
        "histogram": histogram(scores, float(assignment.points)),
        "per_hour": per_hour(times),
        "labels": {
            "score": t("staff.chart.score"),
            "students": t("staff.chart.students"),
            "hour": t("staff.chart.hour"),
            "submissions": t("staff.chart.submissions"),
        },
    }


# -- the settings form ------------------------------------------------------------------------------------------

DATE_FIELDS = ("opens_at", "due_at", "closes_at")
CHECKBOXES = ("reveal_hidden", "leaderboard_enabled")


def local_input(instant: datetime | None, zone: ZoneInfo) -> str:
    """An instant as a datetime-local input shows it, on the course's wall clock."""
    if instant is None:
        return ""
    local = instant.astimezone(zone)
    return local.strftime("%Y-%m-%dT%H:%M" if local.second == 0 else "%Y-%m-%dT%H:%M:%S")


def settings_values(assignment: Assignment) -> dict[str, str]:
    """The form's fields as text, filled from the assignment."""
    zone = policy.zone_of(assignment.course)
    late = policy.policy_of(assignment)
    values = {name: local_input(getattr(assignment, name), zone) for name in DATE_FIELDS}
    values.update(
        title=assignment.title,
        late_kind=late.kind,
        late_per=late.per,
        late_penalty=f"{late.penalty_percent:g}" if late.kind == "window" else "",
        late_max_units="" if late.max_units is None else str(late.max_units),
        counting=assignment.counting,
        weight="" if assignment.weight is None else f"{assignment.weight:g}",
        rate_limit_count="" if assignment.rate_limit_count is None else str(assignment.rate_limit_count),
        rate_limit_window_min=f"{assignment.rate_limit_window_s / 60:g}",
        max_queued_per_student=str(assignment.max_queued_per_student),
        remeasure_top_n=str(assignment.remeasure_top_n),
        reveal_hidden="1" if assignment.reveal_hidden else "",
        leaderboard_enabled="1" if assignment.leaderboard_enabled else "",
        allow_past_deadline="",
    )
    return values


def _whole(t: Translate, text: str, low: int, high: int) -> tuple[int | None, str | None]:
    try:
        value = int(text.strip())
    except ValueError:
        return None, t("staff.settings.whole_number", low=low, high=high)
    if not low <= value <= high:
        return None, t("staff.settings.whole_number", low=low, high=high)
    return value, None


def parse_settings(
    t: Translate, assignment: Assignment, form: Mapping[str, str]
) -> tuple[dict[str, str], dict[str, Any], dict[str, str]]:
    """The typed form (every field as text), the changes it makes, and errors per field.

    Only fields whose value differs from the assignment's are changes, so an untouched past deadline does not
    stop an instructor from fixing a title.
    """
    current = settings_values(assignment)
    # A field the form does not have keeps its value (a checkbox comes with a hidden empty field before it).
    values = {name: str(form[name]).strip() if name in form else current[name] for name in current}
    values["title"] = str(form.get("title", current["title"]))
    for name in (*CHECKBOXES, "allow_past_deadline"):
        values[name] = "1" if form.get(name) else ("" if name in form else current[name])
    zone = policy.zone_of(assignment.course)
    errors: dict[str, str] = {}
    changes: dict[str, Any] = {}

    if values["title"].strip() != assignment.title:
        changes["title"] = values["title"]
    for name in DATE_FIELDS:
        if values[name] == current[name]:
            continue
        if not values[name]:
            changes[name] = None
            continue
        try:
            parsed = datetime.fromisoformat(values[name])
        except ValueError:
            errors[name] = t("staff.settings.bad_date")
            continue
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=zone)
        changes[name] = parsed

    late = _late_policy(t, values, errors)
    if late is not None and late != policy.policy_of(assignment).to_json():
        changes["late_policy"] = late
    if values["counting"] != assignment.counting:
        changes["counting"] = values["counting"]
    if values["weight"] != current["weight"]:
        if not values["weight"]:
            changes["weight"] = None
        else:
            weight = parse_number(values["weight"])
            if weight is None or not 0 <= weight <= 100:
                errors["weight"] = t("staff.error.bad_weight")
            else:
                changes["weight"] = weight
    if values["rate_limit_count"] != current["rate_limit_count"]:
        if not values["rate_limit_count"]:
            changes["rate_limit_count"] = None
        else:
            number, problem = _whole(t, values["rate_limit_count"], *_bounds("rate_limit_count"))
            _take(changes, errors, "rate_limit_count", number, problem)
    if values["rate_limit_window_min"] != current["rate_limit_window_min"]:
        low, high = _bounds("rate_limit_window_s")
        number, problem = _whole(t, values["rate_limit_window_min"], low // 60, high // 60)
        _take(changes, errors, "rate_limit_window_min", number, problem)
        if "rate_limit_window_min" in changes:
            changes["rate_limit_window_s"] = changes.pop("rate_limit_window_min") * 60
    for name in ("max_queued_per_student", "remeasure_top_n"):
        if values[name] != current[name]:
            number, problem = _whole(t, values[name], *_bounds(name))
            _take(changes, errors, name, number, problem)
    for name in CHECKBOXES:
        wanted = bool(values[name])
        if wanted != getattr(assignment, name):
            changes[name] = wanted
    return values, changes, errors


def _bounds(name: str) -> tuple[int, int]:
    low, high = policy.SETTING_RANGES[name]
    return int(low), int(high)


def _take(
    changes: dict[str, Any], errors: dict[str, str], name: str, value: Any, problem: str | None
) -> None:
    if problem is not None:
        errors[name] = problem
    else:
        changes[name] = value


def _late_policy(t: Translate, values: dict[str, str], errors: dict[str, str]) -> dict[str, Any] | None:
    kind = values["late_kind"]
    if kind == "hard":
        return {"kind": "hard"}
    if kind not in ("window", "late_days"):
        errors["late_kind"] = t("staff.settings.bad_late_kind")
        return None
    max_units: int | None = None
    if values["late_max_units"] or kind == "window":
        max_units, problem = _whole(t, values["late_max_units"], 0, MAX_UNITS)
        if problem is not None:
            errors["late_max_units"] = problem
            return None
    if kind == "late_days":
        return {"kind": "late_days", "max_units": max_units}
    if values["late_per"] not in ("day", "hour"):
        errors["late_per"] = t("staff.settings.bad_late_per")
        return None
    penalty = parse_number(values["late_penalty"])
    if penalty is None or not 0 <= penalty <= 100:
        errors["late_penalty"] = t("staff.settings.bad_penalty")
        return None
    return {"kind": "window", "per": values["late_per"], "penalty_percent": penalty, "max_units": max_units}


# -- queue and worker health ------------------------------------------------------------------------------------


@dataclass
class LaneLoad:
    queue: str
    lane: int
    queued: int = 0
    running: int = 0
    oldest_queued_at: datetime | None = None


@dataclass
class WorkerSeen:
    name: str
    last_seen: datetime
    running_now: int = 0
    runs_recent: int = 0


@dataclass
class QueueHealth:
    now: datetime
    loads: list[LaneLoad]
    workers: list[WorkerSeen]
    stale: int  # running, but the worker stopped renewing its lease: the sweeper hands them on
    errors_recent: int  # infrastructure errors in the last 24 hours
    running: list[Submission]  # this course's submissions being graded now

    @property
    def queued(self) -> int:
        return sum(load.queued for load in self.loads)


def queue_health(session: Session, course: Course, now: datetime) -> QueueHealth:
    """Queued and running submissions per queue and lane (all courses share the workers), the workers seen
    in the last 24 hours, and this course's gradings in progress."""
    active = (SubmissionStatus.queued, SubmissionStatus.running)
    loads: dict[tuple[str, int], LaneLoad] = {}
    for queue, lane, status, count, oldest in session.execute(
        select(
            Submission.queue, Submission.lane, Submission.status, func.count(), func.min(Submission.queued_at)
        )
        .where(Submission.status.in_(active))
        .group_by(Submission.queue, Submission.lane, Submission.status)
    ):
        load = loads.setdefault((queue, lane), LaneLoad(queue, lane))
        if status == SubmissionStatus.queued:
            load.queued = count
            load.oldest_queued_at = oldest
        else:
            load.running = count
    workers: dict[str, WorkerSeen] = {}
    for name, last, count in session.execute(
        select(GradingRun.worker, func.max(GradingRun.finished_at), func.count())
        .where(GradingRun.finished_at >= now - RECENT)
        .group_by(GradingRun.worker)
    ):
        workers[name] = WorkerSeen(name, last, runs_recent=count)
    for holder, started in session.execute(
        select(Submission.worker, Submission.started_at).where(
            Submission.status == SubmissionStatus.running, Submission.worker.is_not(None)
        )
    ):
        if holder is None:
            continue
        seen = workers.setdefault(holder, WorkerSeen(holder, started or now))
        seen.running_now += 1
        if started is not None and started > seen.last_seen:
            seen.last_seen = started
    stale = session.scalar(
        select(func.count())
        .select_from(Submission)
        .where(Submission.status == SubmissionStatus.running, Submission.lease_expires_at < now)
    )
    errors = session.scalar(
        select(func.count())
        .select_from(Submission)
        .where(Submission.status == SubmissionStatus.error, Submission.finished_at >= now - RECENT)
    )
    running = list(
        session.scalars(
            select(Submission)
            .join(Assignment, Assignment.id == Submission.assignment_id)
            .where(Submission.status == SubmissionStatus.running, Assignment.course_id == course.id)
            .order_by(Submission.started_at)
            .limit(100)
        )
    )
    return QueueHealth(
        now=now,
        loads=sorted(loads.values(), key=lambda load: (load.queue, load.lane)),
        workers=sorted(workers.values(), key=lambda seen: seen.last_seen, reverse=True),
        stale=stale or 0,
        errors_recent=errors or 0,
        running=running,
    )
