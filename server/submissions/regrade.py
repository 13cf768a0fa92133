"""Staff regrades: finished submissions go back in the queue, in the staff lane, with the assignment's current
grader bundle (typically after the bundle was fixed or updated).

History is never rewritten: each grading adds a GradingRun that keeps the bundle version it was graded with, and
a staff score override lives in its own table, so a regrade changes the autograded score beside it, never it.
A submission still queued or running is left alone (its grading is already on the way) and reported as skipped.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from server import queue
from server.assignments.models import Assignment
from server.audit import service as audit
from server.auth.models import User
from server.db import utcnow
from server.errors import Conflict
from server.policy import service as policy
from server.submissions.models import Submission, SubmissionStatus
from server.submissions.service import is_manual

STAFF_LANE = 1
FINISHED = [status for status in SubmissionStatus if status.finished]
# Bound parameters per statement, well under SQLite's and PostgreSQL's limits.
CHUNK = 500


class Scope(enum.StrEnum):
    all = "all"  # every submission of the assignment
    counted = "counted"  # each student's submission that counts under the counting rule
    latest = "latest"  # each submitter's most recent submission


@dataclass(frozen=True)
class Requeued:
    requeued: list[int]  # put back in the queue, in this order
    in_progress: list[int]  # skipped: still queued or running


def targets(*, session: Session, assignment: Assignment, scope: Scope) -> list[int]:
    """Ids of the submissions ``scope`` names on ``assignment``, oldest first."""
    if scope is Scope.counted:
        counted = policy.counted_submissions(session=session, assignment=assignment)
        return sorted(submission.id for submission in counted.values())
    rows = session.execute(
        select(Submission.id, Submission.user_id, Submission.submitted_at).where(
            Submission.assignment_id == assignment.id
        )
    ).all()
    if scope is Scope.all:
        return sorted(row.id for row in rows)
    newest: dict[int, tuple[datetime, int]] = {}
    for row in rows:
        newest[row.user_id] = max(
            newest.get(row.user_id, (row.submitted_at, row.id)), (row.submitted_at, row.id)
        )
    return sorted(submission_id for _, submission_id in newest.values())


def requeue(
    *, session: Session, assignment: Assignment, submission_ids: Iterable[int], now: datetime
) -> Requeued:
    """Queue the finished ones among ``submission_ids`` (all of ``assignment``) in the staff lane.

    One conditional UPDATE per chunk decides it, so a submission that a worker is grading right now, or that
    another regrade has just queued, is never queued twice. The caller commits, then sends one task per id.
    """
    ids = list(dict.fromkeys(submission_ids))
    requeued: set[int] = set()
    for start in range(0, len(ids), CHUNK):
        chunk = ids[start : start + CHUNK]
        requeued.update(
            session.scalars(
                update(Submission)
                .where(
                    Submission.id.in_(chunk),
                    Submission.assignment_id == assignment.id,
                    Submission.status.in_(FINISHED),
                )
                .values(
                    status=SubmissionStatus.queued,
                    lane=STAFF_LANE,
                    bundle_id=assignment.bundle_id,
                    queue=assignment.queue,
                    queued_at=now,
                    enqueued_at=now,
                    lease_expires_at=None,
                    progress_done=0,
                    current_test=None,
                    status_message=None,
                )
                .returning(Submission.id)
                .execution_options(synchronize_session=False)
            )
        )
    return Requeued(
        requeued=[i for i in ids if i in requeued], in_progress=[i for i in ids if i not in requeued]
    )


def refuse_manual(assignment: Assignment) -> None:
    if is_manual(assignment.bundle.manifest):
        raise Conflict("This assignment is graded by rubric, not by a worker.", code="manual_grading")


def send(assignment: Assignment, submission_ids: list[int]) -> None:
    """One task per requeued submission, after the commit (the sweeper re-sends any the broker loses)."""
    time_limit_s = float(assignment.bundle.manifest["time_limit_s"])
    for submission_id in submission_ids:
        queue.enqueue_grading(submission_id, queue=assignment.queue, time_limit_s=time_limit_s)


def regrade_one(*, session: Session, submission: Submission, actor: User) -> None:
    """Grade one submission again with its assignment's current grader, in the staff lane: requeued,
    audit-logged and committed here, because its task may only be sent after the commit.

    Refuses (Conflict) a rubric-graded assignment ('manual_grading') and a submission still queued or running
    ('not_finished'); the caller checks who may regrade, and rolls back on a refusal.
    """
    assignment = submission.assignment
    refuse_manual(assignment)
    done = requeue(session=session, assignment=assignment, submission_ids=[submission.id], now=utcnow())
    if not done.requeued:
        raise Conflict("This submission is still queued or running.", code="not_finished")
    audit.record(
        session=session,
        actor=actor,
        action="submission.regrade",
        target_type="submission",
        target_id=submission.id,
        course_id=assignment.course_id,
        bundle_sha256=assignment.bundle.sha256,
    )
    session.commit()
    session.refresh(submission)
    send(assignment, done.requeued)
