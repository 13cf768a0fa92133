"""Fair use over the API and in the service: the per-student token bucket (with a controllable clock), the cap on
submissions waiting at once, the quota shown to students, and simultaneous uploads (SQLite and PostgreSQL)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, update

from server.assignments.models import Assignment, RateBucket
from server.assignments.service import AssignmentAccess
from server.auth.models import User
from server.courses.models import Role
from server.db import get_session_factory
from server.errors import TooManyRequests
from server.settings import Settings
from server.submissions import limits
from server.submissions import service as submissions
from server.submissions.models import Submission, SubmissionStatus
from tests.api.helpers import finish, submit
from tests.conftest import Account, World, build_world

T0 = datetime(2027, 3, 1, 8, 0, tzinfo=UTC)


def limit(world: World, **values: Any) -> None:
    with world.session() as session:
        session.execute(update(Assignment).where(Assignment.slug == "warmup").values(**values))
        session.commit()


def quota(world: World, account: Account) -> dict[str, Any]:
    response = world.client.get(
        f"/api/courses/{world.course}/assignments/warmup/quota", headers=account.headers
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


def stored(world: World) -> int:
    with world.session() as session:
        return int(session.scalar(select(func.count()).select_from(Submission)) or 0)


def tokens_of(world: World, account: Account) -> float:
    with world.session() as session:
        bucket = session.scalar(select(RateBucket).where(RateBucket.user_id == account.user_id))
        assert bucket is not None
        return bucket.tokens


def test_the_rate_limit_refuses_the_next_submission_and_says_when_it_is_allowed(
    world: World, solution_bytes: bytes
) -> None:
    limit(world, rate_limit_count=3, rate_limit_window_s=3600, max_queued_per_student=10)
    for _ in range(3):
        assert submit(world, world.alice, solution_bytes).status_code == 201
    tokens = tokens_of(world, world.alice)
    before = datetime.now(UTC)
    refused = submit(world, world.alice, solution_bytes)
    assert refused.status_code == 429
    body = refused.json()
    assert body["code"] == "rate_limited"
    assert "3 submissions per hour" in body["detail"]
    assert "Your next submission is allowed at" in body["detail"] and "(UTC+08:00)" in body["detail"]
    # One token comes back every 20 minutes: the next submission is allowed about 20 minutes from now.
    allowed_at = datetime.fromisoformat(body["next_allowed_at"])
    assert allowed_at.utcoffset() == timedelta(0)
    assert timedelta(minutes=19) < allowed_at - before <= timedelta(minutes=20, seconds=1)
    assert 19 * 60 <= int(refused.headers["retry-after"]) <= 20 * 60
    # The refused upload left nothing behind, and took nothing.
    assert stored(world) == 3
    assert tokens_of(world, world.alice) == pytest.approx(tokens)
    # Bob has his own budget.
    assert submit(world, world.bob, solution_bytes).status_code == 201


def test_the_bucket_refills_continuously_over_the_window(world: World) -> None:
    limit(world, rate_limit_count=3, rate_limit_window_s=3600)
    with world.session() as session:
        assignment = session.scalar(select(Assignment).where(Assignment.slug == "warmup"))
        alice = session.get(User, world.alice.user_id)
        assert assignment is not None and alice is not None
        access = AssignmentAccess(assignment, Role.student)

        def take(at: datetime) -> datetime | None:
            try:
                limits.take(session=session, access=access, user=alice, now=at)
            except TooManyRequests as refused:
                session.rollback()
                return refused.retry_at or T0
            session.commit()
            return None

        assert limits.quota(session=session, access=access, user=alice, now=T0).submissions_left == 3
        assert [take(T0), take(T0), take(T0)] == [None, None, None]
        assert take(T0) == T0 + timedelta(minutes=20)
        assert take(T0 + timedelta(minutes=19, seconds=59)) == T0 + timedelta(minutes=20)
        now = limits.quota(session=session, access=access, user=alice, now=T0 + timedelta(minutes=10))
        assert (now.submissions_left, now.next_token_at) == (0, T0 + timedelta(minutes=20))
        assert take(T0 + timedelta(minutes=20)) is None
        # The clock keeps running from the last submission: a third of the window per token.
        assert take(T0 + timedelta(minutes=20)) == T0 + timedelta(minutes=40)
        # Idle for a day: full again, but never more than the bucket holds.
        later = T0 + timedelta(days=1)
        assert limits.quota(session=session, access=access, user=alice, now=later).submissions_left == 3
        assert [take(later) for _ in range(4)] == [None, None, None, later + timedelta(minutes=20)]
        # A tighter limit set later applies at once to what is left.
        session.execute(update(Assignment).values(rate_limit_count=1, rate_limit_window_s=600))
        session.commit()
        session.refresh(assignment)
        assert take(later + timedelta(minutes=9)) == later + timedelta(minutes=10)
        assert take(later + timedelta(minutes=10)) is None


def test_the_quota_shows_the_budget_left_and_who_is_exempt(world: World, solution_bytes: bytes) -> None:
    limit(world, rate_limit_count=3, rate_limit_window_s=7200, max_queued_per_student=2)
    fresh = quota(world, world.alice)
    assert fresh == {
        "exempt": False,
        "rate_limit_count": 3,
        "rate_limit_window_s": 7200,
        "submissions_left": 3,
        "next_allowed_at": None,
        "in_progress": 0,
        "max_in_progress": 2,
        "within_limits": True,
    }
    submit(world, world.alice, solution_bytes)
    submit(world, world.alice, solution_bytes)
    busy = quota(world, world.alice)
    assert (busy["submissions_left"], busy["in_progress"], busy["within_limits"]) == (1, 2, False)
    staff = quota(world, world.ta)
    assert staff["exempt"] and staff["within_limits"] and staff["submissions_left"] is None
    response = world.client.get(
        f"/api/courses/{world.course}/assignments/warmup/quota", headers=world.outsider.headers
    )
    assert response.status_code == 404


def test_no_rate_limit_shows_no_budget(world: World) -> None:
    body = quota(world, world.alice)
    assert body["rate_limit_count"] is None and body["submissions_left"] is None
    assert body["next_allowed_at"] is None and body["within_limits"]


def test_the_cap_refuses_a_third_waiting_submission_until_one_finishes(
    world: World, solution_bytes: bytes
) -> None:
    first = submit(world, world.alice, solution_bytes).json()["id"]
    assert submit(world, world.alice, solution_bytes).status_code == 201
    refused = submit(world, world.alice, solution_bytes)
    assert refused.status_code == 429 and refused.json()["code"] == "too_many_queued"
    assert "2 submissions waiting or being graded" in refused.json()["detail"]
    assert refused.json()["next_allowed_at"] is None and "retry-after" not in refused.headers
    assert stored(world) == 2
    finish(world, first)
    assert submit(world, world.alice, solution_bytes).status_code == 201


def test_staff_regrades_of_a_students_work_do_not_count_against_her_cap(
    world: World, solution_bytes: bytes
) -> None:
    for _ in range(2):
        graded = submit(world, world.alice, solution_bytes).json()["id"]
        finish(world, graded)
        response = world.client.post(f"/api/submissions/{graded}/regrade", headers=world.ta.headers)
        assert response.status_code == 200
    assert quota(world, world.alice)["in_progress"] == 0
    assert submit(world, world.alice, solution_bytes).status_code == 201


def test_staff_are_not_limited(world: World, solution_bytes: bytes) -> None:
    limit(world, rate_limit_count=1, max_queued_per_student=1)
    assert [submit(world, world.ta, solution_bytes).status_code for _ in range(3)] == [201, 201, 201]


def test_a_bad_upload_takes_no_token(world: World, solution_bytes: bytes) -> None:
    limit(world, rate_limit_count=2)
    assert submit(world, world.alice, solution_bytes, name="notes.txt").status_code == 400
    assert quota(world, world.alice)["submissions_left"] == 2


# -- simultaneous uploads -------------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def any_world(request: pytest.FixtureRequest, configure: Callable[..., Settings]) -> Iterator[World]:
    if request.param == "sqlite":
        yield request.getfixturevalue("world")
        return
    built = build_world(configure(database__url=request.getfixturevalue("pg_database")))
    with built.client:
        yield built


def upload_at_once(world: World, solution_bytes: bytes, count: int, *, hold_s: float = 0.0) -> list[str]:
    """``count`` uploads by alice, each in its own thread and transaction, started together; their outcomes."""
    start = threading.Barrier(count)
    outcomes: list[str] = []

    def upload() -> None:
        with get_session_factory()() as session:
            assignment = session.scalar(select(Assignment).where(Assignment.slug == "warmup"))
            alice = session.get(User, world.alice.user_id)
            assert assignment is not None and alice is not None
            start.wait()
            try:
                submissions.create(
                    session=session,
                    user=alice,
                    access=AssignmentAccess(assignment, Role.student),
                    parts=[("warmup.py", solution_bytes)],
                    max_request_bytes=2**24,
                    max_files=64,
                )
            except TooManyRequests as refused:
                session.rollback()
                outcomes.append(refused.code)
                return
            time.sleep(hold_s)  # the others must wait for this commit, not slip past the lock
            session.commit()
            outcomes.append("created")

    threads = [threading.Thread(target=upload) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return sorted(outcomes)


def test_simultaneous_uploads_never_both_take_the_last_token(any_world: World, solution_bytes: bytes) -> None:
    limit(any_world, rate_limit_count=3, max_queued_per_student=100)
    assert upload_at_once(any_world, solution_bytes, 8, hold_s=0.05) == ["created"] * 3 + ["rate_limited"] * 5
    assert stored(any_world) == 3
    assert tokens_of(any_world, any_world.alice) == pytest.approx(0.0, abs=0.01)


def test_simultaneous_uploads_never_slip_past_the_cap(any_world: World, solution_bytes: bytes) -> None:
    limit(any_world, max_queued_per_student=2)
    assert (
        upload_at_once(any_world, solution_bytes, 6, hold_s=0.05) == ["created"] * 2 + ["too_many_queued"] * 4
    )
    with any_world.session() as session:
        waiting = session.scalar(
            select(func.count()).select_from(Submission).where(Submission.status == SubmissionStatus.queued)
        )
    assert waiting == 2
