"""The sweeper: no submission is ever lost between the database and the broker.

Two cases, both decided by the database alone:
- 'queued' for longer than ``requeue_after`` since its task was last sent: the message may have been lost
  (broker restarted, enqueue failed after the commit). Send the task again. A duplicate is harmless because a
  worker must claim the row atomically before grading it.
- 'running' with an expired lease: the worker that claimed it died (a live worker renews its lease). Put it
  back to 'queued' and send the task, or give up with 'error' once it has used every attempt.

It also starts each assignment's final leaderboard re-measurement once its deadline has passed
(server/leaderboard/remeasure.py).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from server.db import utcnow
from server.leaderboard.remeasure import remeasure_due
from server.queue import enqueue_grading
from server.submissions.models import Submission, SubmissionStatus

log = logging.getLogger(__name__)

GAVE_UP_MESSAGE = (
    "Grading could not be completed because of a problem on our side, not in your code. "
    "The course staff have been notified; you do not need to submit again."
)


@dataclass
class SweepReport:
    resent: list[int] = field(default_factory=list)
    reclaimed: list[int] = field(default_factory=list)
    gave_up: list[int] = field(default_factory=list)
    remeasured: list[int] = field(default_factory=list)  # submissions queued for a leaderboard re-measurement


def sweep(*, session: Session, requeue_after_seconds: float, max_attempts: int) -> SweepReport:
    now = utcnow()
    report = SweepReport()
    expired = session.scalars(
        select(Submission).where(
            Submission.status == SubmissionStatus.running, Submission.lease_expires_at < now
        )
    ).all()
    for submission in expired:
        gave_up = submission.attempt >= max_attempts
        values: dict[str, object] = (
            {"status": SubmissionStatus.error, "finished_at": now, "status_message": GAVE_UP_MESSAGE}
            if gave_up
            else {"status": SubmissionStatus.queued, "enqueued_at": now, "worker": None}
        )
        # Guarded by the attempt we saw: if the worker finished (or renewed) in the meantime, leave it alone.
        changed = session.execute(
            update(Submission)
            .where(
                Submission.id == submission.id,
                Submission.status == SubmissionStatus.running,
                Submission.attempt == submission.attempt,
                Submission.lease_expires_at < now,
            )
            .values(lease_expires_at=None, **values)
            .execution_options(synchronize_session=False)
        ).rowcount  # type: ignore[attr-defined]
        if changed:
            (report.gave_up if gave_up else report.reclaimed).append(submission.id)
    cutoff = now - timedelta(seconds=requeue_after_seconds)
    stale = session.scalars(
        select(Submission.id).where(
            Submission.status == SubmissionStatus.queued,
            (Submission.enqueued_at.is_(None)) | (Submission.enqueued_at < cutoff),
        )
    ).all()
    if stale:
        session.execute(
            update(Submission)
            .where(Submission.id.in_(stale), Submission.status == SubmissionStatus.queued)
            .values(enqueued_at=now)
            .execution_options(synchronize_session=False)
        )
    session.commit()
    for submission_id in [*report.reclaimed, *stale]:
        to_send = session.get(Submission, submission_id)
        if to_send is None:
            continue
        time_limit = float(to_send.assignment.bundle.manifest["time_limit_s"])
        if enqueue_grading(submission_id, queue=to_send.queue, time_limit_s=time_limit):
            report.resent.append(submission_id)
    if report.reclaimed or report.gave_up or report.resent:
        log.warning(
            "sweeper: reclaimed %s, gave up on %s, re-sent %s",
            report.reclaimed,
            report.gave_up,
            report.resent,
        )
    for remeasurement in remeasure_due(session=session, now=now):
        for submission in remeasurement.requeued:
            report.remeasured.append(submission.id)
            time_limit = float(submission.assignment.bundle.manifest["time_limit_s"])
            enqueue_grading(submission.id, queue=submission.queue, time_limit_s=time_limit)
    return report


class SweeperThread(threading.Thread):
    """Runs :func:`sweep` every ``interval`` seconds until stopped."""

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        *,
        interval: float,
        requeue_after_seconds: float,
        max_attempts: int,
    ) -> None:
        super().__init__(name="sweeper", daemon=True)
        self._session_factory = session_factory
        self._interval = interval
        self._requeue_after = requeue_after_seconds
        self._max_attempts = max_attempts
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self._interval):
            try:
                with self._session_factory() as session:
                    sweep(
                        session=session,
                        requeue_after_seconds=self._requeue_after,
                        max_attempts=self._max_attempts,
                    )
            except Exception:
                log.exception("sweeper pass failed; trying again in %.0f s", self._interval)

    def stop(self) -> None:
        self._stop_event.set()
