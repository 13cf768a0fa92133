"""Grades as CSV, every grading run as JSON, one submission as a Gradescope results.json, and the roster.

Grades are never computed here: every number comes from ``server.policy.service``, the same code the grade pages
use, so an export always agrees with what students and staff see.

CSV files are written for spreadsheets: UTF-8 with a byte-order mark (Excel otherwise reads Chinese names as
mojibake), CRLF line ends, a header row, and text cells that a spreadsheet would run as a formula (starting with
``= + - @``, a tab or a carriage return) prefixed with an apostrophe.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, defer, sessionmaker

from server.assignments.models import Assignment, GraderBundle
from server.audit import service as audit
from server.auth import service as auth_service
from server.auth.models import User
from server.courses import service as courses
from server.courses.models import Course, Enrollment, Role
from server.db import utcnow
from server.errors import BadRequest, Conflict, PayloadTooLarge
from server.leaderboard import service as leaderboard
from server.policy import service as policy
from server.submissions import service as submissions
from server.submissions.models import GradingRun, Submission, SubmissionStatus

BOM = "\ufeff"
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
RUNS_BATCH = 200
MAX_ROSTER_BYTES = 2 * 2**20
MAX_ROSTER_ROWS = 5_000
MAX_REPORTED_PROBLEMS = 50

Cell = str | int | float | None


# -- CSV -------------------------------------------------------------------------------------------------------


def neutralize(text: str) -> str:
    """A text cell a spreadsheet shows as text: formula starters get a leading apostrophe."""
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def unneutralize(text: str) -> str:
    """Undo ``neutralize`` (a re-imported export gets its names back exactly)."""
    if len(text) >= 2 and text[0] == "'" and text[1:].startswith(FORMULA_STARTS):
        return text[1:]
    return text


def number(value: float) -> str:
    """A number as a spreadsheet reads it: no exponent, at most six decimals, no trailing zeros."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _cell(value: Cell) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        return number(float(value))
    return neutralize(value)


def csv_bytes(header: Sequence[str], rows: Iterable[Sequence[Cell]]) -> bytes:
    """A CSV file for spreadsheets (see the module docstring). Numbers are ours; every text cell is guarded."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow([neutralize(name) for name in header])
    for row in rows:
        writer.writerow([_cell(value) for value in row])
    return (BOM + out.getvalue()).encode("utf-8")


def _percent(score: float, maximum: float) -> float | None:
    return round(100.0 * score / maximum, 4) if maximum > 0 else None


def _iso(instant: datetime | None) -> str | None:
    return instant.isoformat() if instant is not None else None


# -- grades ----------------------------------------------------------------------------------------------------

ASSIGNMENT_GRADE_COLUMNS = (
    "username",
    "display_name",
    "submission_id",
    "submitted_at_utc",
    "submitted_at_local",
    "deadline_local",
    "late",
    "autograded_score",
    "late_multiplier",
    "override_score",
    "override_reason",
    "final_score",
    "max_score",
    "percent",
)


def assignment_grades_csv(*, session: Session, assignment: Assignment) -> bytes:
    """One row per enrolled student: the submission that counts and how its score came about."""
    course = assignment.course
    rows: list[list[Cell]] = []
    for grade in policy.assignment_grades(session=session, assignment=assignment):
        counted = grade.counted
        submission = counted.submission if counted is not None else None
        override = counted.override if counted is not None else None
        rows.append(
            [
                grade.user.username,
                grade.user.display_name,
                submission.id if submission is not None else None,
                _iso(submission.submitted_at) if submission is not None else None,
                policy.local_text(submission.submitted_at, course) if submission is not None else None,
                policy.local_text(grade.deadline, course),
                counted.lateness.describe() if counted is not None else "no submission",
                counted.autograded if counted is not None else None,
                counted.lateness.multiplier if counted is not None else None,
                override.score if override is not None else None,
                override.reason if override is not None else None,
                grade.score,
                grade.max_score,
                _percent(grade.score, grade.max_score),
            ]
        )
    return csv_bytes(ASSIGNMENT_GRADE_COLUMNS, rows)


def course_grade_columns(assignments: Sequence[Assignment]) -> list[str]:
    columns = ["username", "display_name"]
    for assignment in assignments:
        columns += [f"{assignment.slug}_score", f"{assignment.slug}_max", f"{assignment.slug}_weight"]
    return [*columns, "total_percent"]


def course_grades_csv(*, session: Session, course: Course) -> bytes:
    """One row per enrolled student: every assignment's score, its maximum and weight, and the course total.

    The total is ``server.policy.service.course_grades``'s weighted percentage: the sum over weighted assignments
    of score / max x weight (an assignment without a weight does not count towards it).
    """
    rows = policy.course_grades(session=session, course=course)
    assignments = [grade.assignment for grade in rows[0].grades] if rows else []
    body: list[list[Cell]] = []
    for row in rows:
        cells: list[Cell] = [row.user.username, row.user.display_name]
        for grade in row.grades:
            cells += [grade.score, grade.max_score, grade.assignment.weight]
        body.append([*cells, row.total_percent])
    return csv_bytes(course_grade_columns(assignments), body)


# -- every run as JSON -----------------------------------------------------------------------------------------


def _run_json(
    run: GradingRun,
    submission: Submission,
    student: User,
    *,
    bundles: dict[int, str],
    hidden_by: dict[int, str],
    log_chars: int,
    include_logs: bool,
) -> dict[str, Any]:
    record: dict[str, Any] = {
        "run_id": run.id,
        "submission_id": submission.id,
        "username": student.username,
        "display_name": student.display_name,
        "submitted_at": _iso(submission.submitted_at),
        "attempt": run.attempt,
        "purpose": run.purpose,
        "status": run.status.value,
        "score": run.score,
        "max_score": run.max_score,
        "results": run.results,
        "metrics": run.metrics,
        "notes": run.notes,
        "failure_reason": run.failure_reason,
        "failure_detail": run.failure_detail,
        "flags": run.flags,
        "hardware_class": run.hardware_class,
        "hardware": run.hardware,
        "software": run.software,
        "sandbox": run.sandbox,
        "worker": run.worker,
        "bundle_sha256": run.bundle_sha256,
        "bundle_version": bundles.get(run.bundle_id),
        "seed": run.seed,
        "hidden_reason": run.hidden_reason,
        "hidden_by": hidden_by.get(run.hidden_by_id) if run.hidden_by_id is not None else None,
        "started_at": _iso(run.started_at),
        "finished_at": _iso(run.finished_at),
        "duration_s": round((run.finished_at - run.started_at).total_seconds(), 3),
        "log_chars": log_chars,
        "log_truncated": run.log_truncated,
    }
    if include_logs:
        record["log"] = run.log
    return record


def count_runs(*, session: Session, assignment: Assignment) -> int:
    return (
        session.scalar(
            select(func.count())
            .select_from(GradingRun)
            .join(Submission, Submission.id == GradingRun.submission_id)
            .where(Submission.assignment_id == assignment.id)
        )
        or 0
    )


def iter_runs_json(
    *, session_factory: sessionmaker[Session], assignment_id: int, include_logs: bool
) -> Iterator[str]:
    """Every grading run of the assignment (regrades and re-measurements too) as one JSON document, in pieces.

    Runs are read in batches of ``RUNS_BATCH`` by id, so a course's whole history never sits in memory; the
    student's output logs (up to the log cap each) are only included when asked for.
    """
    with session_factory() as session:
        assignment = session.get(Assignment, assignment_id)
        assert assignment is not None
        head = {
            "course": assignment.course.slug,
            "assignment": assignment.slug,
            "exported_at": utcnow().isoformat(),
        }
        yield json.dumps(head)[:-1] + ', "runs": ['
        last_id = 0
        count = 0
        while True:
            query = (
                select(GradingRun, Submission, User, func.length(GradingRun.log))
                .join(Submission, Submission.id == GradingRun.submission_id)
                .join(User, User.id == Submission.user_id)
                .where(Submission.assignment_id == assignment_id, GradingRun.id > last_id)
                .order_by(GradingRun.id)
                .limit(RUNS_BATCH)
            )
            if not include_logs:
                query = query.options(defer(GradingRun.log))
            batch = session.execute(query).all()
            if not batch:
                break
            bundle_ids = {run.bundle_id for run, *_ in batch}
            bundles = {
                key: value
                for key, value in session.execute(
                    select(GraderBundle.id, GraderBundle.version).where(GraderBundle.id.in_(bundle_ids))
                )
            }
            hider_ids = {run.hidden_by_id for run, *_ in batch if run.hidden_by_id is not None}
            hidden_by = (
                {
                    key: value
                    for key, value in session.execute(
                        select(User.id, User.username).where(User.id.in_(hider_ids))
                    )
                }
                if hider_ids
                else {}
            )
            pieces = []
            for run, submission, student, log_chars in batch:
                record = _run_json(
                    run,
                    submission,
                    student,
                    bundles=bundles,
                    hidden_by=hidden_by,
                    log_chars=int(log_chars or 0),
                    include_logs=include_logs,
                )
                pieces.append(("," if count else "") + "\n" + json.dumps(record, ensure_ascii=False))
                count += 1
            # One piece per batch: the server hands each piece of a stream to a thread, which costs per piece.
            yield "".join(pieces)
            last_id = batch[-1][0].id
            session.expunge_all()  # the batch is written out; let it go
        yield f'\n], "count": {count}}}\n'


# -- Gradescope results.json -----------------------------------------------------------------------------------

GRADESCOPE_VISIBILITY = {"visible": "visible", "hidden": "hidden", "after_due": "after_due_date"}


def _test_output(test: dict[str, Any]) -> str:
    return str(test.get("message") or ("passed" if test.get("passed") else "failed"))


def gradescope_results(*, session: Session, submission: Submission, staff: bool) -> dict[str, Any]:
    """The latest grading run of ``submission`` in Gradescope's results.json format.

    Students get exactly what the submission API shows them: tests they may not see yet are left out and only
    counted (in ``output`` and ``extra_data.hidden_tests``). Staff get every test with its visibility, and the
    run's staff-only flags in ``extra_data``. The top-level score is the autograder's; what the course's late
    policy and any override make of it is in ``extra_data.grade``.
    """
    run = submissions.latest_run(session=session, submission=submission)
    if run is None:
        if submission.status == SubmissionStatus.received or submissions.is_manual(
            submission.assignment.bundle.manifest
        ):
            raise Conflict(
                f"Submission {submission.id} is graded by the course staff with a rubric, not by the "
                "autograder, so it has no autograder results.",
                code="no_results",
            )
        raise Conflict(
            f"Submission {submission.id} has no autograder results yet (it is {submission.status.value}).",
            code="no_results",
        )
    assignment = submission.assignment
    presented = submissions.present_results(run, submissions.visibility_for(submission, staff=staff))
    tests = []
    for number_, test in enumerate(presented["tests"], start=1):
        tests.append(
            {
                "name": str(test.get("name", f"test {number_}")),
                "number": str(number_),
                "score": float(test.get("score", 0.0)),
                "max_score": float(test.get("max_score", 0.0)),
                "status": "passed" if test.get("passed") else "failed",
                "output": _test_output(test),
                "visibility": GRADESCOPE_VISIBILITY.get(str(test.get("visibility")), "hidden"),
                "extra_data": {"duration_s": test.get("duration_s")},
            }
        )
    hidden = presented["hidden"]
    grade = _submission_grade(session=session, submission=submission)
    output: list[str] = []
    if run.failure_reason:
        output.append(run.failure_reason)
    if run.failure_detail:
        output.append(run.failure_detail)
    output += list(run.notes or [])
    if hidden["count"]:
        output.append(
            f"{hidden['count']} hidden test(s): {hidden['passed']} passed, "
            f"{number(hidden['score'])} of {number(hidden['max_score'])} points."
        )
    if grade is not None and grade.lateness.units_late:
        output.append(f"Submitted late: {grade.lateness.describe()}.")
    if grade is not None and grade.override is not None:
        score = number(grade.override.score)
        output.append(f"The course staff set this submission's score to {score}: {grade.override.reason}")
    extra: dict[str, Any] = {
        "submission_id": submission.id,
        "course": assignment.course.slug,
        "assignment": assignment.slug,
        "username": submission.user.username,
        "status": run.status.value,
        "attempt": run.attempt,
        "purpose": run.purpose,
        "bundle_version": run.bundle.version,
        "submitted_at": submission.submitted_at.isoformat(),
        "hidden_tests": hidden,
        "grade": (
            {
                "late": grade.lateness.describe(),
                "late_multiplier": grade.lateness.multiplier,
                "override_score": grade.override.score if grade.override is not None else None,
                "override_reason": grade.override.reason if grade.override is not None else None,
                "score": grade.score,
                "max_score": grade.max_score,
            }
            if grade is not None
            else None
        ),
    }
    if staff:
        extra["staff"] = {
            "run_id": run.id,
            "flags": run.flags,
            "hardware_class": run.hardware_class,
            "hidden_reason": run.hidden_reason,
        }
    results: dict[str, Any] = {
        "score": float(run.score),
        "execution_time": round(max(0.0, (run.finished_at - run.started_at).total_seconds()), 3),
        "output": "\n\n".join(output),
        "visibility": "visible",
        "stdout_visibility": "hidden",
        "extra_data": extra,
        "tests": tests,
    }
    board = _leaderboard_entry(assignment, run)
    if board is not None:
        results["leaderboard"] = [board]
    return results


def _submission_grade(*, session: Session, submission: Submission) -> policy.SubmissionGrade | None:
    grade = policy.student_grade(session=session, assignment=submission.assignment, user=submission.user)
    return next((item for item in grade.submissions if item.submission.id == submission.id), None)


def _leaderboard_entry(assignment: Assignment, run: GradingRun) -> dict[str, Any] | None:
    """The run's leaderboard metric, unless the assignment has no board or staff took the run off it."""
    metric, direction = leaderboard.leaderboard_spec(assignment)
    value = leaderboard.metric_value(run.metrics or {}, metric)
    if metric is None or value is None or not assignment.leaderboard_enabled or run.hidden_reason:
        return None
    return {"name": metric, "value": value, "order": direction}


# -- the roster over the API -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RosterProblem:
    row: int  # as a spreadsheet numbers it: the header is row 1
    problem: str


class RosterRejected(BadRequest):
    """Rows of an uploaded roster that cannot be imported; nothing was written."""

    code = "bad_roster"

    def __init__(self, problems: list[RosterProblem]) -> None:
        shown = problems[:MAX_REPORTED_PROBLEMS]
        listed = "; ".join(f"row {problem.row}: {problem.problem}" for problem in shown)
        more = f"; and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
        super().__init__(
            f"Nothing was imported: {len(problems)} row(s) of the roster need fixing. {listed}{more}."
        )
        self.problems = shown


def roster_csv(*, session: Session, course: Course) -> bytes:
    """The roster as ``autograder roster export`` prints it, made safe to open in a spreadsheet."""
    rows = list(csv.reader(io.StringIO(courses.export_roster(session=session, course=course))))
    if not rows:
        return csv_bytes(courses.ROSTER_COLUMNS[:4], [])
    return csv_bytes(rows[0], rows[1:])


def _decode_roster(data: bytes) -> str:
    if len(data) > MAX_ROSTER_BYTES:
        raise PayloadTooLarge(f"A roster file is at most {MAX_ROSTER_BYTES // 2**20} MiB.", code="too_large")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise BadRequest(
            "The roster is not UTF-8 text. In Excel, save it as 'CSV UTF-8 (Comma delimited)'.",
            code="bad_roster_encoding",
        ) from None
    if "\x00" in text:
        raise BadRequest("The roster is not a CSV text file.", code="bad_roster_encoding")
    return text


def _restore_cells(text: str) -> str:
    """The CSV with the formula guards of an export taken off the name and email cells (the only text an export
    guards), so an exported roster imports back unchanged. Passwords are never touched."""
    try:
        rows = list(csv.reader(io.StringIO(text)))
    except csv.Error as exc:
        raise BadRequest(f"The roster is not valid CSV: {exc}.", code="bad_roster") from None
    if len(rows) > MAX_ROSTER_ROWS + 1:
        raise BadRequest(f"A roster has at most {MAX_ROSTER_ROWS} rows.", code="bad_roster")
    if rows:
        guarded = [index for index, name in enumerate(rows[0]) if name.strip() in ("display_name", "email")]
        for row in rows[1:]:
            for index in guarded:
                if index < len(row):
                    row[index] = unneutralize(row[index])
    out = io.StringIO()
    csv.writer(out).writerows(rows)
    return out.getvalue()


def check_roster(*, session: Session, course: Course, actor: User, csv_text: str) -> list[RosterProblem]:
    """Every row that ``courses.import_roster`` would refuse, plus what an import over the API may not do.

    The shared service stops at the first bad row; an instructor fixing a spreadsheet wants them all. Over the
    API, unlike the administrators' CLI, an instructor may not change an administrator's account or set the
    password of an account that already exists (its owner or an administrator does), nor change their own role.
    A header problem is left to the service, which explains it.
    """
    reader = csv.DictReader(io.StringIO(csv_text))
    if (
        reader.fieldnames is None
        or "username" not in reader.fieldnames
        or set(reader.fieldnames) - set(courses.ROSTER_COLUMNS)
    ):
        return []
    parsed = [(row_no, row) for row_no, row in enumerate(reader, start=2)]
    names = [(row.get("username") or "").strip() for _, row in parsed]
    existing = {
        user.username: user for user in session.scalars(select(User).where(User.username.in_(set(names))))
    }
    enrolled = {
        user_id: role
        for user_id, role in session.execute(
            select(Enrollment.user_id, Enrollment.role).where(
                Enrollment.course_id == course.id,
                Enrollment.user_id.in_([user.id for user in existing.values()]),
            )
        )
    }
    own_role = courses.role_in(session=session, user=actor, course=course)
    problems: list[RosterProblem] = []
    seen: set[str] = set()
    for (row_no, row), username in zip(parsed, names, strict=True):
        role_text = (row.get("role") or "student").strip().lower()
        password = (row.get("password") or "").strip()
        found: list[str] = []
        try:
            auth_service.validate_username(username)
        except BadRequest as exc:
            found.append(exc.message)
        if role_text not in Role.__members__:
            found.append(f"role must be student, ta or instructor, not {role_text!r}")
        if password:
            try:
                auth_service.validate_password(password)
            except BadRequest as exc:
                found.append(exc.message)
        if username and username in seen:
            found.append(f"{username!r} appears twice")
        seen.add(username)
        account = existing.get(username)
        if account is not None and not actor.is_admin:
            if account.is_admin and _changes_account(row, account, enrolled.get(account.id)):
                found.append(
                    f"{username!r} is an administrator's account; only an administrator can change it"
                )
            elif password and not account.is_admin:
                found.append(
                    f"{username!r} already has an account; a roster import does not change its password "
                    "(leave the password empty)"
                )
            if account.id == actor.id and role_text in Role.__members__ and Role(role_text) != own_role:
                found.append("you cannot change your own role in the course")
        problems += [RosterProblem(row_no, message.rstrip(".")) for message in found]
    return problems


def _changes_account(row: dict[str, str | None], account: User, role: Role | None) -> bool:
    """Whether importing ``row`` would change ``account`` (as ``courses.import_roster`` applies a row)."""
    display_name = (row.get("display_name") or "").strip() or account.username
    email = (row.get("email") or "").strip()
    role_text = (row.get("role") or "student").strip().lower()
    return (
        display_name != account.display_name
        or bool(email and email != account.email)
        or bool((row.get("password") or "").strip())
        or role_text != (role.value if role is not None else None)
    )


def import_roster(*, session: Session, course: Course, actor: User, data: bytes) -> courses.RosterImport:
    """Create or update accounts and enrollments from an uploaded CSV: every row, or (on any problem) none.

    The caller commits. Passwords generated for new accounts are in the result, to be handed over once.
    """
    text = _restore_cells(_decode_roster(data))
    problems = check_roster(session=session, course=course, actor=actor, csv_text=text)
    if problems:
        raise RosterRejected(problems)
    try:
        result = courses.import_roster(session=session, course=course, csv_text=text)
        session.flush()
    except IntegrityError:
        session.rollback()
        raise Conflict(
            "Someone changed the same accounts at the same moment; nothing was imported. Try again.",
            code="roster_conflict",
        ) from None
    audit.record(
        session=session,
        actor=actor,
        action="roster.import",
        target_type="course",
        target_id=course.id,
        course_id=course.id,
        created=result.created,
        updated=result.updated,
    )
    return result
