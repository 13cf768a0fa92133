"""Leaderboards: each student's best correct run, one board per hardware class.

The rules, in the order they are applied:
- A run is a candidate when it belongs to a student of the course, is not hidden by staff, passed every test
  (graded, score == max_score) and recorded the assignment's leaderboard metric as a finite number. Every run of
  a submission counts (first grading, regrades), not only the latest one.
- Once a submission has been re-measured (a run with purpose "remeasure" on that hardware class), its latest
  re-measurement replaces all its earlier runs on that board: the final ranking uses the final measurement,
  even when it is slower or no longer correct. Hiding the re-measured run brings the earlier runs back.
- Per student the best metric wins (direction "asc": smaller is better, "desc": larger is better); ties go to
  the earlier submission (submitted_at, then id). Students are ranked the same way.
- Runs on different hardware classes ("cpu", "cuda:<name>", "rocm:<name>") are never ranked together.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.assignments.models import Assignment
from server.audit import service as audit
from server.auth.models import User
from server.courses.models import Enrollment, Role
from server.errors import BadRequest, Conflict, Forbidden, NotFound
from server.submissions import service as submissions
from server.submissions.models import GradingRun, Submission, SubmissionStatus

REMEASURE = "remeasure"
MAX_REASON_CHARS = 500
# Statuses of runs that can decide a board: graded ones rank, a failed re-measurement removes its submission.
_BOARD_STATUSES = (SubmissionStatus.graded, SubmissionStatus.failed)


@dataclass(frozen=True)
class Entry:
    rank: int
    user_id: int
    username: str
    alias: str | None
    submission_id: int
    run_id: int
    score: float
    max_score: float
    metric: float
    submitted_at: datetime
    hardware: str
    remeasured: bool  # the metric comes from the final re-measurement


@dataclass(frozen=True)
class Board:
    metric: str | None
    direction: str
    hardware: str | None  # the class this board ranks; None when no class has an entry yet
    classes: dict[str, int]  # every hardware class with entries -> its number of entries
    entries: list[Entry] = field(default_factory=list)


class _Run(NamedTuple):
    run_id: int
    submission_id: int
    status: SubmissionStatus
    score: float
    max_score: float
    metrics: dict[str, Any]
    hardware: str
    purpose: str
    user_id: int
    username: str
    alias: str | None
    submitted_at: datetime


def leaderboard_spec(assignment: Assignment) -> tuple[str | None, str]:
    """The manifest's metric name and direction ("asc" or "desc")."""
    spec = assignment.bundle.manifest.get("leaderboard") or {}
    direction = spec.get("direction", "asc")
    return spec.get("metric"), direction if direction in ("asc", "desc") else "asc"


def metric_value(metrics: dict[str, Any], name: str | None) -> float | None:
    """The metric as a finite float, or None when it is missing, not a number, infinite or NaN."""
    if name is None:
        return None
    value = metrics.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def is_correct(run: GradingRun | _Run) -> bool:
    """Every test passed: the run was graded and earned the whole score."""
    return run.status == SubmissionStatus.graded and run.max_score > 0 and run.score >= run.max_score


def _student_runs(session: Session, assignment: Assignment) -> list[_Run]:
    rows = session.execute(
        select(
            GradingRun.id.label("run_id"),
            GradingRun.submission_id,
            GradingRun.status,
            GradingRun.score,
            GradingRun.max_score,
            GradingRun.metrics,
            GradingRun.hardware_class.label("hardware"),
            GradingRun.purpose,
            Submission.user_id,
            User.username,
            Enrollment.alias,
            Submission.submitted_at,
        )
        .join(Submission, Submission.id == GradingRun.submission_id)
        .join(User, User.id == Submission.user_id)
        .join(
            Enrollment,
            (Enrollment.user_id == Submission.user_id) & (Enrollment.course_id == assignment.course_id),
        )
        .where(
            Submission.assignment_id == assignment.id,
            Enrollment.role == Role.student,
            GradingRun.status.in_(_BOARD_STATUSES),
            GradingRun.hidden_reason.is_(None),
            # Runs that cannot rank are left in the database, except re-measurements: those decide even so.
            (GradingRun.purpose == REMEASURE)
            | (
                (GradingRun.status == SubmissionStatus.graded)
                & (GradingRun.max_score > 0)
                & (GradingRun.score >= GradingRun.max_score)
            ),
        )
        .order_by(GradingRun.id)
    ).all()
    return [_Run._make(row) for row in rows]


def _deciding_runs(runs: list[_Run]) -> list[_Run]:
    """Per submission and hardware class: its latest re-measurement if it has one, else all its runs."""
    remeasured: dict[tuple[int, str], _Run] = {}
    for run in runs:  # ordered by id: the last one seen is the latest
        if run.purpose == REMEASURE:
            remeasured[(run.submission_id, run.hardware)] = run
    return [run for run in runs if remeasured.get((run.submission_id, run.hardware), run) is run]


def _ranked(runs: list[_Run], metric: str | None, direction: str) -> dict[str, list[Entry]]:
    """hardware class -> its ranked entries (one per student)."""

    def key(run: _Run, value: float) -> tuple[float, datetime, int, int]:
        return (value if direction == "asc" else -value, run.submitted_at, run.submission_id, run.run_id)

    best: dict[tuple[str, int], tuple[tuple[float, datetime, int, int], _Run, float]] = {}
    for run in _deciding_runs(runs):
        value = metric_value(run.metrics, metric)
        if value is None or not is_correct(run):
            continue
        candidate = (key(run, value), run, value)
        slot = (run.hardware, run.user_id)
        if slot not in best or candidate[0] < best[slot][0]:
            best[slot] = candidate
    boards: dict[str, list[Entry]] = {}
    for (hardware, _), (_, run, value) in sorted(best.items(), key=lambda item: item[1][0]):
        entries = boards.setdefault(hardware, [])
        entries.append(
            Entry(
                rank=len(entries) + 1,
                user_id=run.user_id,
                username=run.username,
                alias=run.alias,
                submission_id=run.submission_id,
                run_id=run.run_id,
                score=run.score,
                max_score=run.max_score,
                metric=value,
                submitted_at=run.submitted_at,
                hardware=hardware,
                remeasured=run.purpose == REMEASURE,
            )
        )
    return boards


def all_boards(*, session: Session, assignment: Assignment) -> dict[str, list[Entry]]:
    """Every hardware class's ranked board."""
    metric, direction = leaderboard_spec(assignment)
    if metric is None:
        return {}
    return _ranked(_student_runs(session, assignment), metric, direction)


def default_hardware(classes: dict[str, int], queue: str) -> str | None:
    """The board shown when none is asked for: the queue's natural class with the most entries.

    A GPU queue's natural classes are the GPU ones ("cuda:...", "rocm:..."), a CPU queue's is "cpu"; when the
    natural classes have no entries, the class with the most entries overall. Ties go to the name first in order.
    """
    gpu = queue.startswith("gpu")
    natural = {
        name: count
        for name, count in classes.items()
        if (name.startswith(("cuda:", "rocm:")) if gpu else name == "cpu")
    }
    pool = natural or classes
    if not pool:
        return None
    return min(pool, key=lambda name: (-pool[name], name))


def board(*, session: Session, assignment: Assignment, hardware: str | None = None) -> Board:
    """The board of one hardware class (``hardware``, or the default one) and the classes there are."""
    metric, direction = leaderboard_spec(assignment)
    boards = all_boards(session=session, assignment=assignment)
    classes = {name: len(entries) for name, entries in sorted(boards.items())}
    if hardware is not None and hardware not in boards:
        available = ", ".join(classes) or "none yet"
        raise NotFound(
            f"There is no leaderboard for hardware {hardware!r} on this assignment. Boards: {available}.",
            code="no_such_board",
        )
    chosen = hardware if hardware is not None else default_hardware(classes, assignment.queue)
    return Board(
        metric=metric,
        direction=direction,
        hardware=chosen,
        classes=classes,
        entries=boards.get(chosen, []) if chosen is not None else [],
    )


def pseudonym(user_id: int, *, assignment_id: int, secret: str) -> str:
    """A stable anonymous name per student and assignment; it cannot be turned back into a user id."""
    mac = hmac.new(secret.encode(), f"{assignment_id}:{user_id}".encode(), hashlib.sha256).hexdigest()
    return f"anon-{mac[:6]}"


def public_name(entry: Entry, *, assignment_id: int, secret: str) -> str:
    """What other students see: the student's alias, or their pseudonym when they chose none."""
    return entry.alias or pseudonym(entry.user_id, assignment_id=assignment_id, secret=secret)


# -- one submission's runs as the leaderboard sees them ------------------------------------------------------


@dataclass(frozen=True)
class RunStanding:
    run: GradingRun
    metric: float | None
    correct: bool
    superseded: bool  # a later re-measurement of the submission decides instead
    hidden_by: str | None

    @property
    def eligible(self) -> bool:
        return self.correct and self.metric is not None and not self.superseded and not self.hidden

    @property
    def hidden(self) -> bool:
        return self.run.hidden_reason is not None

    @property
    def explanation(self) -> str:
        """Plain language for the student and the staff alike."""
        if self.hidden:
            return f"Hidden from the leaderboard by staff: {self.run.hidden_reason}"
        if self.superseded:
            return "Replaced on the leaderboard by the final re-measurement of this submission."
        if not self.correct:
            return "Not on the leaderboard: only runs that pass every test are ranked."
        if self.metric is None:
            return "Not on the leaderboard: this run recorded no leaderboard time."
        return "Eligible for the leaderboard."


def run_standings(*, session: Session, submission: Submission) -> list[RunStanding]:
    """Every run of the submission, oldest first, with whether (and why not) it can rank."""
    metric, _ = leaderboard_spec(submission.assignment)
    runs = list(
        session.scalars(
            select(GradingRun).where(GradingRun.submission_id == submission.id).order_by(GradingRun.id)
        )
    )
    latest_remeasure: dict[str, int] = {}
    for run in runs:
        if run.purpose == REMEASURE and run.hidden_reason is None and run.status in _BOARD_STATUSES:
            latest_remeasure[run.hardware_class] = run.id
    hiders = {
        user.id: user.username
        for user in session.scalars(
            select(User).where(User.id.in_({run.hidden_by_id for run in runs if run.hidden_by_id}))
        )
    }
    return [
        RunStanding(
            run=run,
            metric=metric_value(run.metrics, metric),
            correct=is_correct(run),
            superseded=latest_remeasure.get(run.hardware_class, run.id) != run.id,
            hidden_by=hiders.get(run.hidden_by_id) if run.hidden_by_id else None,
        )
        for run in runs
    ]


# -- hiding runs ---------------------------------------------------------------------------------------------


def staff_run(*, session: Session, user: User, run_id: int) -> GradingRun:
    """The run, if ``user`` teaches its course. Its author is told no; anyone else learns nothing."""
    run = session.get(GradingRun, run_id)
    if run is None:
        raise NotFound(f"There is no grading run {run_id} that you can see.")
    try:
        _, staff = submissions.visible_submission(session=session, user=user, submission_id=run.submission_id)
    except NotFound:
        raise NotFound(f"There is no grading run {run_id} that you can see.") from None
    if not staff:
        raise Forbidden("Only the course's TAs and instructors can hide or restore leaderboard runs.")
    return run


def clean_reason(reason: str | None, *, required: bool) -> str | None:
    text = " ".join((reason or "").split())
    if not text:
        if required:
            raise BadRequest(
                "Give a reason: the student sees it beside the hidden run.", code="reason_required"
            )
        return None
    if len(text) > MAX_REASON_CHARS:
        raise BadRequest(f"The reason is at most {MAX_REASON_CHARS} characters.", code="reason_too_long")
    return text


def hide(*, session: Session, actor: User, run: GradingRun, reason: str) -> GradingRun:
    """Take a run off the leaderboard (it stays in the submission's history). Hiding again changes the reason."""
    text = clean_reason(reason, required=True)
    previous = run.hidden_reason
    run.hidden_reason = text
    run.hidden_by_id = actor.id
    audit.record(
        session=session,
        actor=actor,
        action="run.hide",
        target_type="grading_run",
        target_id=run.id,
        course_id=run.submission.assignment.course_id,
        submission_id=run.submission_id,
        reason=text,
        previous_reason=previous,
    )
    return run


def unhide(*, session: Session, actor: User, run: GradingRun, reason: str | None) -> GradingRun:
    """Put a hidden run back on the leaderboard."""
    if run.hidden_reason is None:
        raise Conflict("This run is not hidden from the leaderboard.", code="not_hidden")
    text = clean_reason(reason, required=False)
    audit.record(
        session=session,
        actor=actor,
        action="run.unhide",
        target_type="grading_run",
        target_id=run.id,
        course_id=run.submission.assignment.course_id,
        submission_id=run.submission_id,
        reason=text,
        hidden_reason=run.hidden_reason,
    )
    run.hidden_reason = None
    run.hidden_by_id = None
    return run
