"""Claiming, recording and recovering gradings, driven directly (no broker)."""

from __future__ import annotations

from datetime import timedelta
from unittest import mock

import pytest
from sqlalchemy import func, select, update

from graders.harness import GradeReport
from server.db import get_session_factory, utcnow
from server.submissions.models import GradingRun, Submission, SubmissionStatus
from server.submissions.sweeper import sweep
from tests.api.helpers import submit
from tests.conftest import World
from worker.grading import GradingContext, Outcome, claim, grade_submission
from worker.sandbox import SandboxError, get_sandbox


@pytest.fixture
def submission_id(world: World, solution_bytes: bytes) -> int:
    response = submit(world, world.alice, solution_bytes)
    assert response.status_code == 201
    return int(response.json()["id"])


@pytest.fixture
def ctx(world: World) -> GradingContext:
    return GradingContext(
        settings=world.settings,
        session_factory=get_session_factory(),
        sandbox=get_sandbox("local"),
        worker_id="test-worker",
    )


def status_of(world: World, submission_id: int) -> Submission:
    with world.session() as session:
        submission = session.get(Submission, submission_id)
        assert submission is not None
        return submission


def run_count(world: World) -> int:
    with world.session() as session:
        return int(session.scalar(select(func.count()).select_from(GradingRun)) or 0)


def test_claim_is_atomic_and_single(world: World, submission_id: int) -> None:
    with world.session() as session:
        assert claim(session=session, submission_id=submission_id, worker_id="w1", lease_seconds=60) == 1
        assert claim(session=session, submission_id=submission_id, worker_id="w2", lease_seconds=60) is None
    assert status_of(world, submission_id).worker == "w1"


@pytest.mark.sandbox
def test_grading_twice_records_one_result(world: World, submission_id: int, ctx: GradingContext) -> None:
    assert grade_submission(submission_id, ctx) == "graded"
    assert grade_submission(submission_id, ctx) == "skipped"
    finished = status_of(world, submission_id)
    assert finished.status == SubmissionStatus.graded and finished.score == 10
    assert run_count(world) == 1


def test_sweeper_reclaims_an_expired_lease_and_resends_it(world: World, submission_id: int) -> None:
    with world.session() as session:
        claim(session=session, submission_id=submission_id, worker_id="dead", lease_seconds=60)
        session.execute(update(Submission).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
        session.commit()
        with mock.patch("server.submissions.sweeper.enqueue_grading", return_value=True) as enqueue:
            report = sweep(session=session, requeue_after_seconds=300, max_attempts=3)
    assert report.reclaimed == [submission_id] and report.resent == [submission_id]
    enqueue.assert_called_once()
    assert status_of(world, submission_id).status == SubmissionStatus.queued


def test_sweeper_leaves_live_leases_and_fresh_queue_entries_alone(world: World, submission_id: int) -> None:
    patch = mock.patch("server.submissions.sweeper.enqueue_grading", return_value=True)
    with world.session() as session, patch as enqueue:
        report = sweep(session=session, requeue_after_seconds=300, max_attempts=3)
        assert report.resent == [] and not enqueue.called
        claim(session=session, submission_id=submission_id, worker_id="alive", lease_seconds=60)
        report = sweep(session=session, requeue_after_seconds=300, max_attempts=3)
        assert report.reclaimed == [] and not enqueue.called


def test_sweeper_resends_a_submission_whose_message_was_lost(world: World, submission_id: int) -> None:
    with world.session() as session:
        session.execute(update(Submission).values(enqueued_at=utcnow() - timedelta(minutes=10)))
        session.commit()
        with mock.patch("server.submissions.sweeper.enqueue_grading", return_value=True) as enqueue:
            report = sweep(session=session, requeue_after_seconds=300, max_attempts=3)
    assert report.resent == [submission_id]
    enqueue.assert_called_once()


def test_sweeper_gives_up_after_the_last_attempt(world: World, submission_id: int) -> None:
    with world.session() as session:
        session.execute(update(Submission).values(attempt=2))
        session.commit()
        claim(session=session, submission_id=submission_id, worker_id="dead", lease_seconds=60)
        session.execute(update(Submission).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
        session.commit()
        report = sweep(session=session, requeue_after_seconds=300, max_attempts=3)
    assert report.gave_up == [submission_id]
    gave_up = status_of(world, submission_id)
    assert gave_up.status == SubmissionStatus.error
    assert "not in your code" in (gave_up.status_message or "")


def test_a_result_from_a_reclaimed_attempt_is_discarded(
    world: World, submission_id: int, ctx: GradingContext
) -> None:
    real_claim = claim
    report = GradeReport(
        status="graded", failure_reason=None, tests=[], score=10.0, max_score=10.0, metrics={}
    )
    full_marks = Outcome(report=report, sandbox_result=None, seed=1, started_at=utcnow())

    def claim_then_lose_it(**kwargs: object) -> int | None:
        attempt = real_claim(**kwargs)  # type: ignore[arg-type]
        with world.session() as session:
            # Meanwhile the sweeper decided this worker was dead and another worker took attempt 2.
            session.execute(update(Submission).values(attempt=Submission.attempt + 1))
            session.commit()
        return attempt

    with (
        mock.patch("worker.grading.claim", side_effect=claim_then_lose_it),
        mock.patch("worker.grading.run_grading", return_value=full_marks),
    ):
        outcome = grade_submission(submission_id, ctx)
    assert outcome == "skipped"
    assert run_count(world) == 0


def test_an_infrastructure_fault_is_retried_then_reported(
    world: World, submission_id: int, ctx: GradingContext
) -> None:
    with (
        mock.patch("worker.grading.run_grading", side_effect=SandboxError("bwrap vanished")),
        mock.patch("worker.grading.queue.enqueue_grading", return_value=True) as enqueue,
    ):
        assert grade_submission(submission_id, ctx) == "retry"
        assert status_of(world, submission_id).status == SubmissionStatus.queued
        assert grade_submission(submission_id, ctx) == "retry"
        assert grade_submission(submission_id, ctx) == "error"
    assert enqueue.call_count == 2
    final = status_of(world, submission_id)
    assert final.status == SubmissionStatus.error and final.attempt == 3
    assert "bwrap" not in (final.status_message or "")  # staff detail stays in the worker log
    assert run_count(world) == 0
