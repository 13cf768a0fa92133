"""The final re-measurement: after the deadline the top entries of every board are graded again.

Each grading draws a fresh secret seed, so the re-measurement times new inputs on a quiet queue: the submissions
go back to 'queued' in lane 2, the lowest-priority lane, and the worker records the run with purpose
"remeasure". From then on the board ranks each re-measured submission by that run (server/leaderboard/service.py).

Two triggers: the sweeper, once per assignment when its last deadline has passed (``remeasure_due``), and staff
asking for it now (``remeasure``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from server.assignments.models import Assignment, Extension
from server.leaderboard import service
from server.submissions import service as submissions
from server.submissions.models import Submission

log = logging.getLogger(__name__)

REMEASURE_LANE = 2


@dataclass
class Remeasurement:
    assignment_id: int
    requeued: list[Submission] = field(default_factory=list)
    # Submissions that were already queued or running (a regrade, an earlier re-measurement): left alone.
    skipped: list[int] = field(default_factory=list)


def top_submissions(*, session: Session, assignment: Assignment, top_n: int) -> list[int]:
    """The submissions behind the first ``top_n`` entries of every board, best ranks first, each once."""
    chosen: list[int] = []
    boards = service.all_boards(session=session, assignment=assignment)
    for rank in range(top_n):
        for hardware in sorted(boards):
            entries = boards[hardware]
            if rank < len(entries) and entries[rank].submission_id not in chosen:
                chosen.append(entries[rank].submission_id)
    return chosen


def remeasure(*, session: Session, assignment: Assignment, top_n: int, now: datetime) -> Remeasurement:
    """Queue the top ``top_n`` entries of each board for grading in lane 2. The caller commits, then enqueues."""
    result = Remeasurement(assignment_id=assignment.id)
    for submission_id in top_submissions(session=session, assignment=assignment, top_n=top_n):
        submission = session.get(Submission, submission_id)
        assert submission is not None
        if submissions.requeue(session=session, submission=submission):
            submission.lane = REMEASURE_LANE
            result.requeued.append(submission)
        else:
            result.skipped.append(submission_id)
    assignment.remeasured_at = now
    session.flush()
    return result


def last_deadline(*, session: Session, assignment: Assignment) -> datetime | None:
    """The assignment's deadline, or the latest extension when one reaches further."""
    latest_extension = session.scalar(
        select(func.max(Extension.due_at)).where(Extension.assignment_id == assignment.id)
    )
    if assignment.due_at is None:
        return None
    return max(assignment.due_at, latest_extension or assignment.due_at)


def remeasure_due(*, session: Session, now: datetime) -> list[Remeasurement]:
    """Re-measure, once each, every assignment whose last deadline has passed and that asks for it.

    Safe with several sweepers at once: an assignment is claimed by a conditional update of remeasured_at, and
    only the sweeper whose update changed the row requeues its entries. Commits each assignment separately.
    """
    done: list[Remeasurement] = []
    pending = session.scalars(
        select(Assignment).where(
            Assignment.remeasure_top_n > 0,
            Assignment.remeasured_at.is_(None),
            Assignment.leaderboard_enabled.is_(True),
            Assignment.due_at.is_not(None),
            Assignment.due_at <= now,
        )
    ).all()
    for assignment in pending:
        deadline = last_deadline(session=session, assignment=assignment)
        if deadline is None or deadline > now:
            continue
        claimed = session.execute(
            update(Assignment)
            .where(Assignment.id == assignment.id, Assignment.remeasured_at.is_(None))
            .values(remeasured_at=now)
            .execution_options(synchronize_session=False)
        ).rowcount  # type: ignore[attr-defined]
        if not claimed:
            session.rollback()
            continue
        session.refresh(assignment)
        result = remeasure(session=session, assignment=assignment, top_n=assignment.remeasure_top_n, now=now)
        session.commit()
        log.info(
            "leaderboard re-measurement of assignment %s: requeued %s, skipped %s",
            assignment.id,
            [submission.id for submission in result.requeued],
            result.skipped,
        )
        done.append(result)
    return done
