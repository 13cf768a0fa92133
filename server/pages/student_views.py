"""What the student pages show, assembled from the services: grades and deadlines, submission budgets, a
submission's live state and results, its files highlighted, and the leaderboard with its chart data.

Everything here returns plain data for templates; words come from the page catalogs through ``t``.
"""

from __future__ import annotations

import logging
import math
import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from markupsafe import Markup
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexer import Lexer
from pygments.lexers import TextLexer, get_lexer_for_filename
from pygments.util import ClassNotFound
from sqlalchemy import select
from sqlalchemy.orm import Session, load_only

from server.assignments import service as assignments
from server.assignments.models import Assignment
from server.assignments.service import AssignmentAccess
from server.auth.models import User
from server.courses.models import Course
from server.db import utcnow
from server.leaderboard import service as leaderboard
from server.pages.i18n import Translate
from server.pages.render import render_markdown
from server.policy import service as policy
from server.policy.late import Lateness, LatePolicy
from server.rubrics import service as rubrics
from server.submissions import archive, limits
from server.submissions import service as submissions
from server.submissions.models import Blob, GradingRun, ScoreOverride, Submission, SubmissionStatus

log = logging.getLogger(__name__)

# What the submission page shows of the submitted files: never more than this per file, nor this many files.
MAX_SHOWN_BYTES = 100_000
MAX_SHOWN_FILES = 40
# The leaderboard chart: the top entries' progress over time, and the viewer's own.
CHART_TOP = 5
ARCHIVE_SUFFIXES = (".zip", ".tar.gz", ".tgz", ".tar")


# -- words ----------------------------------------------------------------------------------------------------


def plural(t: Translate, key: str, n: int) -> str:
    """``key.one`` for exactly one, ``key.other`` otherwise (the Chinese catalog has the same text in both)."""
    return t(f"{key}.one" if n == 1 else f"{key}.other", n=n)


def duration_text(t: Translate, seconds: int) -> str:
    """A whole window in words: '1 hour', '2 days', '30 minutes', '90 seconds'."""
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            return plural(t, f"student.duration.{unit}", seconds // size)
    return plural(t, "student.duration.second", seconds)


def clock(seconds: float) -> str:
    """Elapsed time as a stopwatch shows it: 0:07, 12:30, 1:02:03."""
    whole = max(0, int(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def lateness_text(t: Translate, lateness: Lateness) -> str:
    if lateness.units_late == 0:
        return t("student.late.on_time")
    late = plural(t, f"student.late.{lateness.per}", lateness.units_late)
    if not lateness.accepted:
        return t("student.late.too_late", late=late)
    if lateness.late_days_used:
        return t("student.late.days_used", late=late, n=lateness.late_days_used)
    if lateness.multiplier < 1:
        return t("student.late.penalty", late=late, percent=f"{100 * (1 - lateness.multiplier):g}")
    return late


def policy_text(t: Translate, late_policy: LatePolicy) -> str:
    if late_policy.kind == "hard":
        return t("student.policy.hard")
    if late_policy.kind == "window":
        return t(
            "student.policy.window",
            duration=plural(t, f"student.duration.{late_policy.per}", late_policy.max_units or 0),
            unit=t(f"student.unit.{late_policy.per}"),
            percent=f"{late_policy.penalty_percent:g}",
        )
    text = t("student.policy.late_days")
    if late_policy.max_units is not None:
        text += " " + t("student.policy.late_days_cap", n=late_policy.max_units)
    return text


# -- deadlines, grades and budgets ---------------------------------------------------------------------------


def window_state(assignment: Assignment, grade: policy.StudentGrade, now: datetime) -> str:
    """Where the viewer stands with the assignment's deadlines: not_open | open | no_deadline | late | closed."""
    if assignment.opens_at is not None and now < assignment.opens_at:
        return "not_open"
    if assignments.submission_window_error(assignment) is not None:
        return "closed"
    if grade.deadline is None:
        return "no_deadline"
    if now <= grade.deadline:
        return "open"
    if grade.accepting_until is not None and now <= grade.accepting_until:
        return "late"
    return "closed"


@dataclass(frozen=True)
class Budget:
    """The viewer's fair-use standing in words and instants (None where a limit does not apply)."""

    exempt: bool
    left_text: str | None
    next_at: datetime | None
    waiting_text: str | None
    capped: bool


def budget(session: Session, access: AssignmentAccess, user: User, t: Translate, now: datetime) -> Budget:
    quota = limits.quota(session=session, access=access, user=user, now=now)
    if quota.exempt:
        return Budget(True, None, None, None, False)
    left_text = None
    if quota.rate_limit_count is not None and quota.submissions_left is not None:
        left_text = t(
            "student.quota.left",
            left=quota.submissions_left,
            count=quota.rate_limit_count,
            window=duration_text(t, quota.rate_limit_window_s),
        )
    waiting_text = None
    if quota.max_in_progress is not None:
        waiting_text = t("student.quota.waiting", n=quota.in_progress, cap=quota.max_in_progress)
    return Budget(False, left_text, quota.next_token_at, waiting_text, quota.capped)


def best_score(grade: policy.StudentGrade) -> float | None:
    scores = [item.score for item in grade.submissions if item.score is not None]
    return max(scores) if scores else None


@dataclass(frozen=True)
class DashboardRow:
    access: AssignmentAccess
    grade: policy.StudentGrade
    best: float | None
    state: str
    late_text: str | None  # the lateness of the submission that counts, when it is late
    budget: Budget


@dataclass
class CourseBlock:
    course: Course
    rows: list[DashboardRow] = field(default_factory=list)


def dashboard(session: Session, user: User, t: Translate) -> list[CourseBlock]:
    now = utcnow()
    by_course: dict[int, list[AssignmentAccess]] = {}
    for access in assignments.list_for_user(session=session, user=user):
        by_course.setdefault(access.assignment.course_id, []).append(access)
    blocks = []
    for group in by_course.values():
        block = CourseBlock(group[0].assignment.course)
        graded = policy.course_grades(session=session, course=block.course, users=[user])[0]
        by_assignment = {grade.assignment.id: grade for grade in graded.grades}
        for access in group:
            grade = by_assignment[access.assignment.id]
            counted = grade.counted
            late = counted.lateness if counted is not None and counted.lateness.units_late else None
            block.rows.append(
                DashboardRow(
                    access=access,
                    grade=grade,
                    best=best_score(grade),
                    state=window_state(access.assignment, grade, now),
                    late_text=lateness_text(t, late) if late is not None else None,
                    budget=budget(session, access, user, t, now),
                )
            )
        blocks.append(block)
    return blocks


# -- the assignment page -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HistoryRow:
    submission: Submission
    grade: policy.SubmissionGrade | None  # None while it is not finished (nothing to score yet)
    late_text: str | None
    counted: bool


def upload_rules(access: AssignmentAccess, *, max_request_bytes: int, max_files: int) -> dict[str, Any]:
    """The limits the server enforces, for the form's help text and upload.js's early checks."""
    manifest = access.assignment.bundle.manifest
    rules = assignments.upload_policy(manifest, max_request_bytes=max_request_bytes, max_files=max_files)
    allowed = list(rules.allowed)
    suffixes = sorted({_suffix(pattern) for pattern in allowed} | set(ARCHIVE_SUFFIXES))
    return {
        "allowed": allowed,
        "required": list(manifest.get("required_files") or []),
        "max_files": rules.max_files,
        "max_upload_bytes": rules.max_upload_bytes,
        "max_file_bytes": rules.max_file_bytes,
        "archives": list(ARCHIVE_SUFFIXES),
        # The file picker's filter, when every allowed name has a fixed extension.
        "accept": ",".join(suffixes) if all(_suffix(p) for p in allowed) else "",
    }


def _suffix(pattern: str) -> str:
    last = pattern.rsplit("/", 1)[-1]
    if "." not in last:
        return ""
    suffix = "." + last.rsplit(".", 1)[-1]
    return "" if any(char in suffix for char in "*?[") else suffix


def history(session: Session, user: User, access: AssignmentAccess, t: Translate) -> list[HistoryRow]:
    grade = policy.student_grade(session=session, assignment=access.assignment, user=user)
    graded = {item.submission.id: item for item in grade.submissions}
    counted_id = grade.counted.submission.id if grade.counted is not None else None
    rows = []
    for submission in submissions.list_for_user(session=session, user=user, assignment=access.assignment):
        item = graded.get(submission.id)
        late = item.lateness if item is not None and item.lateness.units_late else None
        rows.append(
            HistoryRow(
                submission=submission,
                grade=item,
                late_text=lateness_text(t, late) if late is not None else None,
                counted=submission.id == counted_id,
            )
        )
    return rows


_HEADING_TAG = re.compile(r"<(/?)h([1-6])>")


def readme_html(text: str) -> Markup:
    """The task README as HTML, its headings moved two levels down to sit under the page's h1 and h2.

    markdown-it escapes any HTML in the source (html=False), so every heading tag here is one it made.
    """
    html = str(render_markdown(text))
    return Markup(_HEADING_TAG.sub(lambda m: f"<{m[1]}h{min(6, int(m[2]) + 2)}>", html))  # noqa: S704


def public_tests(access: AssignmentAccess) -> list[dict[str, Any]]:
    """Test names and weights are public; a non-visible test's description is for the staff only."""
    return [
        test if access.is_staff or test["visibility"] == "visible" else {**test, "description": ""}
        for test in access.assignment.bundle.manifest["tests"]
    ]


# -- a submission --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Live:
    """The part of a submission that changes while it waits and runs."""

    status: str
    finished: bool
    queue_position: int | None
    done: int
    total: int
    current_test: str | None
    elapsed: str | None
    message: str | None
    announce: str


def live(session: Session, submission: Submission, t: Translate) -> Live:
    snapshot = submissions.status_snapshot(session=session, submission=submission)
    status = SubmissionStatus(snapshot["status"])
    now = utcnow()
    elapsed = None
    if status == SubmissionStatus.running and submission.started_at is not None:
        elapsed = clock((now - submission.started_at).total_seconds())
    elif status == SubmissionStatus.queued:
        elapsed = clock((now - submission.queued_at).total_seconds())
    progress = snapshot["progress"]
    if status == SubmissionStatus.queued and snapshot["queue_position"] is not None:
        announce = t("student.live.queued", position=snapshot["queue_position"])
    elif status == SubmissionStatus.running and progress["total"]:
        announce = t(
            "student.live.running", i=min(progress["done"] + 1, progress["total"]), n=progress["total"]
        )
    elif status.finished and submission.score is not None and submission.max_score is not None:
        announce = t(
            "student.live.finished_score",
            status=t(f"student.status.{status.value}"),
            score=f"{submission.score:g}",
            max=f"{submission.max_score:g}",
        )
    else:
        announce = t(f"student.status.{status.value}")
    return Live(
        status=status.value,
        finished=status.finished,
        queue_position=snapshot["queue_position"],
        done=progress["done"],
        total=progress["total"],
        current_test=progress["current_test"],
        elapsed=elapsed,
        message=submission.status_message,
        announce=announce,
    )


@dataclass(frozen=True)
class Standing:
    """The submission's owner on the leaderboard of the run's hardware class, and why this run does not rank."""

    rank: int | None
    entries: int
    metric: float | None
    hardware: str
    from_submission: int | None
    reason: str  # a catalog key explaining this run's standing
    hidden_reason: str | None


@dataclass(frozen=True)
class Results:
    run: GradingRun | None
    tests: list[dict[str, Any]]
    hidden: dict[str, Any]
    grade: policy.SubmissionGrade | None
    late_text: str | None
    override: ScoreOverride | None
    rubric: list[dict[str, Any]]
    metric: (
        dict[str, Any] | None
    )  # the leaderboard metric, its unit, label and the speedup over the reference
    metrics: list[tuple[str, float]]
    duration: str | None
    standing: Standing | None


def results(session: Session, submission: Submission, *, staff: bool, t: Translate) -> Results:
    run = submissions.latest_run(session=session, submission=submission)
    shown: dict[str, Any] = {"tests": [], "hidden": {"count": 0, "passed": 0, "score": 0.0, "max_score": 0.0}}
    if run is not None:
        shown = submissions.present_results(run, submissions.visibility_for(submission, staff=staff))
    manifest_tests = {test["name"]: test for test in submission.assignment.bundle.manifest.get("tests", [])}
    tests = [
        {**test, "description": manifest_tests.get(str(test.get("name")), {}).get("description", "")}
        for test in shown["tests"]
    ]
    grade = policy.student_grade(session=session, assignment=submission.assignment, user=submission.user)
    item = next((g for g in grade.submissions if g.submission.id == submission.id), None)
    late = item.lateness if item is not None and item.lateness.units_late else None
    override = session.scalar(select(ScoreOverride).where(ScoreOverride.submission_id == submission.id))
    return Results(
        run=run,
        tests=tests,
        hidden=shown["hidden"],
        grade=item,
        late_text=lateness_text(t, late) if late is not None else None,
        override=override,
        rubric=rubric_rows(session, submission),
        metric=_metric(submission.assignment, run),
        metrics=sorted((str(k), float(v)) for k, v in (run.metrics if run else {}).items() if _finite(v)),
        duration=clock((run.finished_at - run.started_at).total_seconds()) if run is not None else None,
        standing=_standing(session, submission, run),
    )


def rubric_rows(session: Session, submission: Submission) -> list[dict[str, Any]]:
    """Each rubric criterion with the staff's points and comment, once any criterion has been scored."""
    scored = {row.criterion: row for row in rubrics.scores_for(session=session, submission=submission)}
    if not scored:
        return []
    return [
        {
            "title": criterion.get("title") or criterion["name"],
            "max_points": float(criterion["points"]),
            "points": scored[criterion["name"]].points if criterion["name"] in scored else None,
            "comment": scored[criterion["name"]].comment if criterion["name"] in scored else None,
        }
        for criterion in rubrics.criteria_of(submission)
    ]


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _metric(assignment: Assignment, run: GradingRun | None) -> dict[str, Any] | None:
    spec = assignment.bundle.manifest.get("leaderboard") or {}
    name = spec.get("metric")
    if run is None or name is None:
        return None
    value = leaderboard.metric_value(run.metrics, name)
    if value is None:
        return None
    return {
        "name": name,
        "value": value,
        "unit": spec.get("unit") or "",
        "label": spec.get("label") or name,
        "direction": spec.get("direction", "asc"),
        "speedup": leaderboard.metric_value(run.metrics, f"{name}_speedup"),
    }


def _standing(session: Session, submission: Submission, run: GradingRun | None) -> Standing | None:
    assignment = submission.assignment
    metric, _ = leaderboard.leaderboard_spec(assignment)
    if run is None or metric is None or not assignment.leaderboard_enabled:
        return None
    standings = leaderboard.run_standings(session=session, submission=submission)
    mine = next((s for s in standings if s.run.id == run.id), None)
    if mine is None:
        return None
    if mine.hidden:
        reason = "student.standing.hidden"
    elif mine.superseded:
        reason = "student.standing.superseded"
    elif not mine.correct:
        reason = "student.standing.not_correct"
    elif mine.metric is None:
        reason = "student.standing.no_metric"
    else:
        reason = "student.standing.eligible"
    board = leaderboard.all_boards(session=session, assignment=assignment).get(run.hardware_class, [])
    entry = next((e for e in board if e.user_id == submission.user_id), None)
    return Standing(
        rank=entry.rank if entry is not None else None,
        entries=len(board),
        metric=entry.metric if entry is not None else None,
        hardware=run.hardware_class,
        from_submission=entry.submission_id if entry is not None else None,
        reason=reason,
        hidden_reason=run.hidden_reason,
    )


@dataclass(frozen=True)
class ShownFile:
    index: int
    name: str
    size: int
    binary: bool
    truncated: bool
    html: Markup | None


def _lexer(name: str) -> Lexer:
    try:
        return get_lexer_for_filename(name, stripnl=False)
    except ClassNotFound:
        return TextLexer(stripnl=False)


def files(session: Session, submission: Submission) -> tuple[list[ShownFile], int]:
    """The submitted files as stored, highlighted; binary files are listed, never shown. Also the file count.

    The stored archive is unpacked with the same checks as at upload time (never trusted because it is ours),
    into a private temporary directory, and only the names ``unpack`` returns are read back.
    """
    blob = session.get(Blob, submission.archive_sha256)
    if blob is None:
        return [], 0
    shown: list[ShownFile] = []
    with tempfile.TemporaryDirectory(prefix="ag-view-") as scratch:
        try:
            names = sorted(archive.unpack(blob.data, Path(scratch)))
        except (archive.ArchiveError, OSError):
            log.exception("stored archive of submission %s cannot be unpacked", submission.id)
            return [], len(submission.file_names)  # the page says none of them can be shown
        for index, name in enumerate(names[:MAX_SHOWN_FILES]):
            data = (Path(scratch) / name).read_bytes()
            shown.append(_shown(index, name, data))
    return shown, len(names)


def _shown(index: int, name: str, data: bytes) -> ShownFile:
    try:
        data.decode("utf-8")
        binary = b"\0" in data
    except UnicodeDecodeError:
        binary = True
    if binary:
        return ShownFile(index, name, len(data), True, False, None)
    text = data[:MAX_SHOWN_BYTES].decode("utf-8", errors="ignore")
    # Line anchors (#f0-12) let a traceback's line be linked; the ids come from the index, never the name.
    formatter = HtmlFormatter(cssclass="hl", linenos="table", wrapcode=True, lineanchors=f"f{index}")
    html = Markup(highlight(text, _lexer(name), formatter))  # noqa: S704 - pygments escapes the source text
    return ShownFile(index, name, len(data), False, len(data) > MAX_SHOWN_BYTES, html)


# -- the leaderboard -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BoardRow:
    entry: leaderboard.Entry
    name: str
    mine: bool
    speedup: float | None


def board_rows(
    session: Session,
    assignment: Assignment,
    board: leaderboard.Board,
    user: User,
    *,
    staff: bool,
    secret: str,
) -> list[BoardRow]:
    speedups = _speedups(session, [entry.run_id for entry in board.entries], board.metric)
    rows = []
    for entry in board.entries:
        mine = entry.user_id == user.id
        public = leaderboard.public_name(entry, assignment_id=assignment.id, secret=secret)
        rows.append(
            BoardRow(
                entry=entry,
                # Other students see each other only by alias or pseudonym, exactly as over the API.
                name=entry.username if staff or mine else public,
                mine=mine,
                speedup=speedups.get(entry.run_id),
            )
        )
    return rows


def _speedups(session: Session, run_ids: list[int], metric: str | None) -> dict[int, float]:
    if not run_ids or metric is None:
        return {}
    found = {}
    for run_id, metrics in session.execute(
        select(GradingRun.id, GradingRun.metrics).where(GradingRun.id.in_(run_ids))
    ):
        value = leaderboard.metric_value(metrics or {}, f"{metric}_speedup")
        if value is not None:
            found[run_id] = value
    return found


def chart(
    session: Session, assignment: Assignment, board: leaderboard.Board, rows: list[BoardRow]
) -> dict[str, Any]:
    """Each of the top entries' (and the viewer's) ranked metric per submission, over submission time."""
    chosen = list(rows[:CHART_TOP])
    # The viewer's own line below the top entries (a viewer who does not rank has no correct run to draw).
    chosen += [row for row in rows[CHART_TOP:] if row.mine]
    points = _progress(session, assignment, board, [row.entry.user_id for row in chosen])
    series = [
        {
            "name": row.name,
            "you": row.mine,
            "rank": row.entry.rank,
            "points": points.get(row.entry.user_id, []),
        }
        for row in chosen
    ]
    return {
        "metric": board.metric,
        "direction": board.direction,
        "hardware": board.hardware,
        "series": series,
    }


def _progress(
    session: Session, assignment: Assignment, board: leaderboard.Board, user_ids: Iterable[int]
) -> dict[int, list[list[float]]]:
    """user id -> [[submitted_at as Unix seconds, metric], ...]: one point per correct submission.

    Per submission the runs that decide its place on the board count (its latest re-measurement when it has one,
    else its best run); hidden runs never show.
    """
    if board.metric is None or board.hardware is None:
        return {}
    query = (
        select(GradingRun, Submission.user_id, Submission.submitted_at)
        .join(Submission, Submission.id == GradingRun.submission_id)
        .options(
            load_only(
                GradingRun.id,
                GradingRun.submission_id,
                GradingRun.status,
                GradingRun.score,
                GradingRun.max_score,
                GradingRun.metrics,
                GradingRun.purpose,
            )
        )
        .where(
            Submission.assignment_id == assignment.id,
            Submission.user_id.in_(list(user_ids)),
            GradingRun.hardware_class == board.hardware,
            GradingRun.hidden_reason.is_(None),
        )
        .order_by(GradingRun.id)
    )
    per_submission: dict[int, tuple[int, datetime, list[GradingRun]]] = {}
    for run, user_id, submitted_at in session.execute(query):
        per_submission.setdefault(run.submission_id, (user_id, submitted_at, []))[2].append(run)
    found: dict[int, list[list[float]]] = {}
    for user_id, submitted_at, runs in per_submission.values():
        remeasured = [run for run in runs if run.purpose == leaderboard.REMEASURE]
        deciding = remeasured[-1:] or runs
        values = [
            value
            for run in deciding
            if leaderboard.is_correct(run)
            and (value := leaderboard.metric_value(run.metrics, board.metric)) is not None
        ]
        if values:
            best = min(values) if board.direction == "asc" else max(values)
            found.setdefault(user_id, []).append([submitted_at.timestamp(), best])
    for series in found.values():
        series.sort()
    return found
