"""Fair use: each student's submission budget per assignment, the cap on submissions waiting at once, and the
order in which workers take queued submissions.

- Budget: a token bucket per (assignment, student) in ``rate_buckets``. It holds at most
  ``Assignment.rate_limit_count`` tokens and refills continuously at that many per ``rate_limit_window_s``; a
  submission takes one. The row stores the tokens as of ``updated_at``; what is available now is computed when
  asked, so nothing needs a timer. A new row is "empty since the epoch", which has long refilled to full.
- Cap: at most ``Assignment.max_queued_per_student`` of the student's own submissions queued or running.
- Both are checked while holding the bucket row's lock (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite allows one
  writer at a time anyway), so simultaneous uploads from one student are decided one after the other: two of them
  never take the same last token nor both squeeze under the cap. Staff are not limited.
- Order: a worker takes the queued submission of its queue in the lowest lane (students, then staff regrades, then
  leaderboard re-measurements), then of the student served least recently on that queue (never served: first),
  then the one queued first. One student's burst therefore delays another student's submission by at most the
  gradings already running.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Select, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from server.assignments.models import Assignment, RateBucket
from server.assignments.service import AssignmentAccess
from server.auth.models import User
from server.errors import TooManyRequests
from server.policy import service as policy
from server.submissions.models import Submission, SubmissionStatus

# Tokens stored as of this instant have refilled to a full bucket by any time a request can arrive.
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Float sums of refills must not leave a student one rounding error short of a token at the promised time.
EPSILON = 1e-9
EPSILON_SECONDS = 1e-6
STUDENT_LANE = 0
IN_PROGRESS = (SubmissionStatus.queued, SubmissionStatus.running)


@dataclass(frozen=True)
class Quota:
    """Where a user stands with an assignment's limits at one instant."""

    exempt: bool  # staff: neither limit applies
    rate_limit_count: int | None  # submissions per window (None: no rate limit)
    rate_limit_window_s: int
    available: float | None  # tokens in the bucket now (None: no rate limit)
    next_token_at: datetime | None  # when the next whole token is there (None: one is there now, or no limit)
    in_progress: int  # the user's own submissions queued or running
    max_in_progress: int | None  # None: no cap (staff)

    @property
    def submissions_left(self) -> int | None:
        """Whole submissions the rate limit allows right now (None: no rate limit)."""
        return None if self.available is None else math.floor(self.available + EPSILON)

    @property
    def capped(self) -> bool:
        return self.max_in_progress is not None and self.in_progress >= self.max_in_progress

    @property
    def admits_one_now(self) -> bool:
        """Whether :func:`take` would admit a submission at this instant."""
        return self.exempt or (self.next_token_at is None and not self.capped)


def quota(*, session: Session, access: AssignmentAccess, user: User, now: datetime) -> Quota:
    """The user's budget and queue cap on the assignment, read without taking anything."""
    assignment = access.assignment
    in_progress = _in_progress(session, assignment, user)
    if access.is_staff:
        return Quota(True, None, assignment.rate_limit_window_s, None, None, in_progress, None)
    bucket = session.get(RateBucket, (assignment.id, user.id))
    available, next_token_at = _bucket_state(assignment, bucket, now)
    return Quota(
        False,
        assignment.rate_limit_count,
        assignment.rate_limit_window_s,
        available,
        next_token_at,
        in_progress,
        assignment.max_queued_per_student,
    )


def take(*, session: Session, access: AssignmentAccess, user: User, now: datetime) -> None:
    """Admit one new submission from ``user`` or raise TooManyRequests; the caller's commit makes it stick.

    On a refusal nothing is taken: the request's transaction is rolled back with it.
    """
    if access.is_staff:
        return
    assignment = access.assignment
    bucket = _locked_bucket(session, assignment, user)
    in_progress = _in_progress(session, assignment, user)
    cap = assignment.max_queued_per_student
    if in_progress >= cap:
        raise TooManyRequests(
            f"You already have {_count(in_progress, 'submission')} waiting or being graded for this "
            f"assignment (at most {cap} at a time). Submit again when one of them has finished.",
            code="too_many_queued",
        )
    available, next_token_at = _bucket_state(assignment, bucket, now)
    if available is None:
        return
    if next_token_at is not None:
        allowed = _count(assignment.rate_limit_count or 0, "submission")
        window = _per(assignment.rate_limit_window_s)
        when = policy.local_text(next_token_at, assignment.course)
        raise TooManyRequests(
            f"You have used every submission this assignment allows for now ({allowed} per {window}). Your "
            f"next submission is allowed at {when}, in {_wait(next_token_at, now)}.",
            code="rate_limited",
            retry_at=next_token_at,
        )
    bucket.tokens = available - 1
    bucket.updated_at = max(bucket.updated_at, now)


def fair_order(*, queue: str) -> Select[int]:
    """Ids of the queued submissions of ``queue``, fairest first (see the module's docstring)."""
    waiting = select(Submission.user_id).where(
        Submission.status == SubmissionStatus.queued, Submission.queue == queue
    )
    last_served = (
        select(Submission.user_id, func.max(Submission.started_at).label("served_at"))
        .where(
            Submission.queue == queue,
            Submission.user_id.in_(waiting),
            # Always true; it lets the (assignment_id, user_id) index find the waiting students' submissions
            # instead of scanning every submission ever made.
            Submission.assignment_id.in_(select(Assignment.id)),
        )
        .group_by(Submission.user_id)
        .subquery()
    )
    return (
        select(Submission.id)
        .outerjoin(last_served, last_served.c.user_id == Submission.user_id)
        .where(Submission.status == SubmissionStatus.queued, Submission.queue == queue)
        .order_by(
            Submission.lane,
            last_served.c.served_at.asc().nulls_first(),
            Submission.queued_at,
            Submission.id,
        )
    )


def fair_position(*, session: Session, submission: Submission) -> int:
    """Where ``submission`` stands in :func:`fair_order` if nothing new arrives: 1 is the next to be claimed.

    Replays the workers' choices: each claim takes the lowest lane, then the student served least recently, then
    the earliest queued, and the student just served becomes the most recently served. Each student's queued
    submissions are a list (lane, queued_at order); a heap holds each student's first one.
    """
    rows = session.execute(
        select(Submission.id, Submission.user_id, Submission.lane, Submission.queued_at).where(
            Submission.status == SubmissionStatus.queued, Submission.queue == submission.queue
        )
    ).all()
    served_at = dict(
        session.execute(
            select(Submission.user_id, func.max(Submission.started_at))
            .where(
                Submission.queue == submission.queue,
                Submission.user_id.in_({row.user_id for row in rows}),
                Submission.assignment_id.in_(select(Assignment.id)),
            )
            .group_by(Submission.user_id)
        ).all()
    )
    waiting: dict[int, list[tuple[int, datetime, int]]] = {}
    for row in rows:
        waiting.setdefault(row.user_id, []).append((row.lane, row.queued_at, row.id))
    # Never served sorts first, then by the last service; a student served during the replay sorts after both.
    served: dict[int, tuple[int, float]] = {}
    for user in waiting:
        last = served_at.get(user)
        served[user] = (0, 0.0) if last is None else (1, last.timestamp())
    heads = []
    for user, items in waiting.items():
        items.sort(reverse=True)  # pop() takes the earliest
        lane, queued_at, submission_id = items[-1]
        heads.append((lane, served[user], queued_at, submission_id, user))
    heapq.heapify(heads)
    position = 0
    while heads:
        _lane, _served, _queued, submission_id, user = heapq.heappop(heads)
        position += 1
        if submission_id == submission.id:
            return position
        waiting[user].pop()
        if waiting[user]:
            lane, queued_at, next_id = waiting[user][-1]
            heapq.heappush(heads, (lane, (2, float(position)), queued_at, next_id, user))
    return position + 1


def _locked_bucket(session: Session, assignment: Assignment, user: User) -> RateBucket:
    """The (assignment, user) bucket row, created if missing and locked until the transaction ends."""
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    session.execute(
        insert(RateBucket)
        .values(assignment_id=assignment.id, user_id=user.id, tokens=0.0, updated_at=EPOCH)
        .on_conflict_do_nothing()
    )
    return session.scalars(
        select(RateBucket)
        .where(RateBucket.assignment_id == assignment.id, RateBucket.user_id == user.id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one()


def _bucket_state(
    assignment: Assignment, bucket: RateBucket | None, now: datetime
) -> tuple[float | None, datetime | None]:
    """(tokens available at ``now``, when the next whole token arrives if none is there now)."""
    if assignment.rate_limit_count is None:
        return None, None
    # The settings API keeps both at 1 or more; a row edited by hand must not divide by zero.
    capacity = max(1, assignment.rate_limit_count)
    window = max(1, assignment.rate_limit_window_s)
    if bucket is None:
        return float(capacity), None
    elapsed = max(0.0, (now - bucket.updated_at).total_seconds())
    available = min(float(capacity), bucket.tokens + elapsed * capacity / window)
    if available + EPSILON >= 1:
        return available, None
    # Rounded up to a whole second (less a rounding error), so that Retry-After in seconds never points at a
    # moment that would still be refused.
    wait = math.ceil((1 - available) * window / capacity - EPSILON_SECONDS)
    return available, max(now, bucket.updated_at) + timedelta(seconds=wait)


def _in_progress(session: Session, assignment: Assignment, user: User) -> int:
    """The user's own submissions still waiting or being graded (staff regrades of them do not count)."""
    return int(
        session.scalar(
            select(func.count())
            .select_from(Submission)
            .where(
                Submission.assignment_id == assignment.id,
                Submission.user_id == user.id,
                Submission.lane == STUDENT_LANE,
                Submission.status.in_(IN_PROGRESS),
            )
        )
        or 0
    )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _per(seconds: int) -> str:
    """A window in plain words: 'hour', '2 hours', '30 minutes', '90 seconds'."""
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            return unit if seconds == size else _count(seconds // size, unit)
    return _count(seconds, "second")


def _wait(instant: datetime, now: datetime) -> str:
    """How long until ``instant``, rounded up: '40 seconds', '13 minutes', '3 hours'."""
    seconds = max(1, math.ceil((instant - now).total_seconds()))
    if seconds <= 120:
        return _count(seconds, "second")
    if seconds <= 2 * 3600:
        return _count(math.ceil(seconds / 60), "minute")
    return _count(math.ceil(seconds / 3600), "hour")
