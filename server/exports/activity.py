"""The staff's activity feed of one assignment: what happened to it, newest first, in plain words.

Built when read from four sources, merged by time: submissions (made), grading runs (finished or failed, first
gradings, staff regrades and leaderboard re-measurements alike), submissions that ended in an infrastructure
error, and the audit log (overrides, extensions, rubric scores, regrade requests, final marks, hidden runs,
settings changes of the assignment and of its course, publishing). Each source is read newest first and only as
far as the requested page reaches (``offset + limit`` rows), so the first pages stay cheap however long the
history grows; offsets past ``MAX_OFFSET`` are refused.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import String, and_, cast, func, or_, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from server.assignments.models import Assignment
from server.audit.models import AuditEvent
from server.auth.models import User
from server.policy import service as policy
from server.policy.late import PolicyError, parse_policy
from server.submissions.models import GradingRun, Submission, SubmissionStatus

MAX_OFFSET = 10_000

SETTING_LABELS = {
    "title": "title",
    "published": "published",
    "opens_at": "opening time",
    "due_at": "deadline",
    "closes_at": "closing time",
    "late_policy": "late policy",
    "counting": "counting rule",
    "weight": "weight",
    "rate_limit_count": "submissions per window",
    "rate_limit_window_s": "rate-limit window (seconds)",
    "max_queued_per_student": "queued submissions per student",
    "reveal_hidden": "hidden tests revealed",
    "leaderboard_enabled": "leaderboard",
    "remeasure_top_n": "entries re-measured after the deadline",
    "timezone": "time zone",
    "late_days_budget": "late days per student",
}
PURPOSE_WORDS = {"grade": "Grading", "regrade": "Regrade", "remeasure": "Leaderboard re-measurement"}
PURPOSE_KINDS = {"grade": "grading", "regrade": "regrade", "remeasure": "remeasure"}


@dataclass(frozen=True)
class Activity:
    at: datetime
    kind: str
    actor: str | None  # a username; None: the system (a worker, the server's command line)
    summary: str
    student: str | None = None
    submission_id: int | None = None
    run_id: int | None = None
    details: dict[str, Any] = field(default_factory=dict)
    order: tuple[int, int] = (0, 0)  # (source, id): a stable order for things that happened at one instant


@dataclass(frozen=True)
class ActivityPage:
    total: int
    items: list[Activity]


def _score(score: float | None, maximum: float | None) -> str:
    if score is None:
        return "no score"
    text = f"{score:g}"
    return f"{text}/{maximum:g}" if maximum else text


def _num(value: Any) -> str:
    return f"{value:g}" if isinstance(value, int | float) and not isinstance(value, bool) else "?"


def _who(submission_id: int, student: str | None) -> str:
    return f"submission {submission_id}" + (f" ({student})" if student else "")


# -- sources: each a (count, newest-first rows) pair -----------------------------------------------------------


def _submissions(session: Session, assignment: Assignment, reach: int) -> tuple[int, list[Activity]]:
    where = Submission.assignment_id == assignment.id
    total = session.scalar(select(func.count()).select_from(Submission).where(where)) or 0
    rows = session.execute(
        select(Submission.id, Submission.submitted_at, Submission.file_names, User.username)
        .join(User, User.id == Submission.user_id)
        .where(where)
        .order_by(Submission.submitted_at.desc(), Submission.id.desc())
        .limit(reach)
    ).all()
    items = [
        Activity(
            at=submitted_at,
            kind="submission.created",
            actor=username,
            student=username,
            submission_id=submission_id,
            summary=f"{username} submitted {len(files)} file(s): submission {submission_id}.",
            order=(1, submission_id),
        )
        for submission_id, submitted_at, files, username in rows
    ]
    return total, items


def _runs(session: Session, assignment: Assignment, reach: int) -> tuple[int, list[Activity]]:
    where = Submission.assignment_id == assignment.id
    joined = (
        select(func.count())
        .select_from(GradingRun)
        .join(Submission, Submission.id == GradingRun.submission_id)
    )
    total = session.scalar(joined.where(where)) or 0
    rows = session.execute(
        select(
            GradingRun.id,
            GradingRun.submission_id,
            GradingRun.finished_at,
            GradingRun.status,
            GradingRun.score,
            GradingRun.max_score,
            GradingRun.purpose,
            GradingRun.attempt,
            GradingRun.failure_reason,
            GradingRun.worker,
            User.username,
        )
        .join(Submission, Submission.id == GradingRun.submission_id)
        .join(User, User.id == Submission.user_id)
        .where(where)
        .order_by(GradingRun.finished_at.desc(), GradingRun.id.desc())
        .limit(reach)
    ).all()
    items = []
    for (
        run_id,
        submission_id,
        finished_at,
        status,
        score,
        max_score,
        purpose,
        attempt,
        reason,
        worker,
        student,
    ) in rows:
        words = PURPOSE_WORDS.get(purpose, "Grading")
        if status == SubmissionStatus.graded:
            kind = "finished"
            summary = f"{words} of {_who(submission_id, student)} finished: {_score(score, max_score)}."
        else:
            kind = "failed"
            because = f": {reason}" if reason else "."
            summary = f"{words} of {_who(submission_id, student)} could not grade the code{because}"
        items.append(
            Activity(
                at=finished_at,
                kind=f"{PURPOSE_KINDS.get(purpose, 'grading')}.{kind}",
                actor=None,
                student=student,
                submission_id=submission_id,
                run_id=run_id,
                summary=summary,
                details={"attempt": attempt, "worker": worker, "score": score, "max_score": max_score},
                order=(2, run_id),
            )
        )
    return total, items


def _errors(session: Session, assignment: Assignment, reach: int) -> tuple[int, list[Activity]]:
    """Submissions the workers gave up on (infrastructure faults): no run records those."""
    where = and_(
        Submission.assignment_id == assignment.id,
        Submission.status == SubmissionStatus.error,
        Submission.finished_at.is_not(None),
    )
    total = session.scalar(select(func.count()).select_from(Submission).where(where)) or 0
    rows = session.execute(
        select(Submission.id, Submission.finished_at, Submission.attempt, User.username)
        .join(User, User.id == Submission.user_id)
        .where(where)
        .order_by(Submission.finished_at.desc(), Submission.id.desc())
        .limit(reach)
    ).all()
    items = []
    for submission_id, finished_at, attempt, student in rows:
        assert finished_at is not None  # the query asks for finished ones
        items.append(
            Activity(
                at=finished_at,
                kind="grading.error",
                actor=None,
                student=student,
                submission_id=submission_id,
                summary=(
                    f"Grading of {_who(submission_id, student)} gave up after {attempt} attempt(s) because "
                    "of a fault on our side; it needs a regrade."
                ),
                details={"attempt": attempt},
                order=(3, submission_id),
            )
        )
    return total, items


def _audit_filter(assignment: Assignment) -> ColumnElement[bool]:
    submission_ids = select(cast(Submission.id, String)).where(Submission.assignment_id == assignment.id)
    run_ids = (
        select(cast(GradingRun.id, String))
        .join(Submission, Submission.id == GradingRun.submission_id)
        .where(Submission.assignment_id == assignment.id)
    )
    return or_(
        and_(AuditEvent.target_type == "assignment", AuditEvent.target_id == str(assignment.id)),
        and_(AuditEvent.target_type == "submission", AuditEvent.target_id.in_(submission_ids)),
        and_(AuditEvent.target_type == "grading_run", AuditEvent.target_id.in_(run_ids)),
        and_(
            AuditEvent.action == "course.settings",
            AuditEvent.target_type == "course",
            AuditEvent.target_id == str(assignment.course_id),
        ),
    )


def _audit(session: Session, assignment: Assignment, reach: int) -> tuple[int, list[Activity]]:
    where = _audit_filter(assignment)
    total = session.scalar(select(func.count()).select_from(AuditEvent).where(where)) or 0
    events = list(
        session.scalars(
            select(AuditEvent)
            .where(where)
            .order_by(AuditEvent.created_at.desc(), AuditEvent.id.desc())
            .limit(reach)
        )
    )
    user_ids = {event.actor_id for event in events if event.actor_id is not None}
    usernames = (
        {
            key: value
            for key, value in session.execute(select(User.id, User.username).where(User.id.in_(user_ids)))
        }
        if user_ids
        else {}
    )
    submission_ids = {int(event.target_id) for event in events if event.target_type == "submission"}
    submission_ids |= {
        int(event.details["submission_id"])
        for event in events
        if event.target_type == "grading_run" and isinstance(event.details.get("submission_id"), int)
    }
    students = (
        {
            key: value
            for key, value in session.execute(
                select(Submission.id, User.username)
                .join(User, User.id == Submission.user_id)
                .where(Submission.id.in_(submission_ids))
            )
        }
        if submission_ids
        else {}
    )
    items = []
    for event in events:
        actor = usernames.get(event.actor_id) if event.actor_id is not None else None
        submission_id: int | None = None
        run_id: int | None = None
        if event.target_type == "submission":
            submission_id = int(event.target_id)
        elif event.target_type == "grading_run":
            run_id = int(event.target_id)
            raw = event.details.get("submission_id")
            submission_id = raw if isinstance(raw, int) else None
        student = students.get(submission_id) if submission_id is not None else event.details.get("student")
        items.append(
            Activity(
                at=event.created_at,
                kind=event.action,
                actor=actor,
                student=student if isinstance(student, str) else None,
                submission_id=submission_id,
                run_id=run_id,
                summary=_describe(event, actor, student if isinstance(student, str) else None, assignment),
                details=event.details,
                order=(4, event.id),
            )
        )
    return total, items


# -- plain words for audit events ------------------------------------------------------------------------------


def _value(name: str, value: Any, assignment: Assignment) -> str:
    if value is None:
        return "none"
    if name == "late_policy":
        try:
            return parse_policy(value).describe()
        except PolicyError:
            return json.dumps(value)
    if name.endswith("_at") and isinstance(value, str):
        try:
            return policy.local_text(datetime.fromisoformat(value), assignment.course) or value
        except ValueError:
            return value
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _changes(details: dict[str, Any], assignment: Assignment) -> str:
    before = details.get("before") or {}
    after = details.get("after") or {}
    parts = [
        f"{SETTING_LABELS.get(name, name)} from {_value(name, before.get(name), assignment)} "
        f"to {_value(name, value, assignment)}"
        for name, value in after.items()
    ]
    return "; ".join(parts) if parts else "nothing"


def _describe(event: AuditEvent, actor: str | None, student: str | None, assignment: Assignment) -> str:
    who = actor or "The server"
    details = event.details or {}
    reason = details.get("reason")
    because = f" Reason: {reason}" if reason else ""
    target = _who(int(event.target_id), student) if event.target_type == "submission" else ""
    action = event.action
    if action == "assignment.settings":
        return f"{who} changed the assignment's {_changes(details, assignment)}."
    if action == "course.settings":
        return f"{who} changed the course's {_changes(details, assignment)} (every assignment of the course)."
    if action == "extension.grant":
        due = _value("due_at", details.get("due_at"), assignment)
        return f"{who} gave {details.get('student')} an extension to {due}.{because}"
    if action == "extension.revoke":
        return f"{who} revoked {details.get('student')}'s extension.{because}"
    if action == "score.override":
        return (
            f"{who} set the score of {target} to {_num(details.get('score'))} "
            f"(autograded: {_score(details.get('autograded'), None)}).{because}"
        )
    if action == "score.override_removed":
        return f"{who} removed the score override of {target}.{because}"
    if action == "submission.regrade":
        return f"{who} asked for a regrade of {target}."
    if action == "assignment.regrade":
        waiting = details.get("skipped_in_progress") or 0
        still = f" ({waiting} still being graded were left alone)" if waiting else ""
        return (
            f"{who} asked for a regrade of the assignment ({details.get('scope')} submissions): "
            f"{details.get('requeued')} submission(s) requeued{still}."
        )
    if action == "submission.mark_final":
        return f"{who} marked {target} as the submission that counts."
    if action == "rubric.score":
        return (
            f"{who} gave {target} {_num(details.get('points'))} point(s) for '{details.get('criterion')}': "
            f"{details.get('comment')}"
        )
    if action == "run.hide":
        where = f" of {_who(details['submission_id'], student)}" if "submission_id" in details else ""
        return f"{who} took run {event.target_id}{where} off the leaderboard.{because}"
    if action == "run.unhide":
        where = f" of {_who(details['submission_id'], student)}" if "submission_id" in details else ""
        return f"{who} put run {event.target_id}{where} back on the leaderboard.{because}"
    if action == "leaderboard.remeasure":
        requeued = details.get("requeued") or []
        return (
            f"{who} asked to re-measure the top {details.get('top_n')} entries: "
            f"{len(requeued)} submission(s) requeued."
        )
    if action == "similarity.request":
        return f"{who} started a similarity report over {details.get('submissions')} submission(s)."
    if action in ("assignment.publish", "assignment.update"):
        verb = "published" if action == "assignment.publish" else "updated"
        return f"{who} {verb} the grader package, version {details.get('version')}."
    return f"{who}: {action.replace('.', ' ').replace('_', ' ')}."


# -- the feed ---------------------------------------------------------------------------------------------------


def _newest_first(item: Activity) -> tuple[float, int, int]:
    return (-item.at.timestamp(), -item.order[0], -item.order[1])


def feed(*, session: Session, assignment: Assignment, offset: int, limit: int) -> ActivityPage:
    """Items ``offset`` .. ``offset + limit`` of the assignment's activity, newest first."""
    reach = offset + limit
    sources = [source(session, assignment, reach) for source in (_submissions, _runs, _errors, _audit)]
    total = sum(count for count, _ in sources)
    merged: Iterable[Activity] = heapq.merge(*(items for _, items in sources), key=_newest_first)
    return ActivityPage(total=total, items=list(merged)[offset:reach])
