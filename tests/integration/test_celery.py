"""Celery for real: a worker process grading through the embedded broker and through Redis (with PostgreSQL)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import func, select

from server import db, migrate
from server.assignments.service import AssignmentAccess
from server.bootstrap import bootstrap
from server.courses.models import Role
from server.queue import enqueue_grading
from server.settings import Settings
from server.submissions import service as submissions
from server.submissions.models import GradingRun, Submission
from tests.conftest import REPO
from tests.stack import Stack

pytestmark = [pytest.mark.slow, pytest.mark.sandbox]


@pytest.fixture(params=["embedded", pytest.param("redis", marks=[pytest.mark.redis, pytest.mark.postgres])])
def backend(request: pytest.FixtureRequest, configure: Callable[..., Settings]) -> Settings:
    if request.param == "embedded":
        return configure()
    return configure(
        database__url=request.getfixturevalue("pg_database"), broker__url=request.getfixturevalue("redis_url")
    )


def create_submission(settings: Settings) -> int:
    from server.auth import service as auth_service
    from server.courses import service as courses

    with db.get_session_factory()() as session:
        world = bootstrap(session=session, settings=settings, packages=[REPO / "graders" / "warmup"])
        student = auth_service.create_user(session=session, username="alice", password="alice-password")
        courses.enroll(session=session, course=world.course, user=student, role=Role.student)
        submission = submissions.create(
            session=session,
            user=student,
            access=AssignmentAccess(world.assignments[0], Role.student),
            parts=[("warmup.py", (REPO / "graders" / "warmup" / "solution" / "warmup.py").read_bytes())],
            max_request_bytes=2**24,
            max_files=64,
        )
        session.commit()
        return submission.id


def test_a_worker_grades_a_task_sent_through_the_broker_exactly_once(
    backend: Settings, tmp_path: Path
) -> None:
    migrate.upgrade()
    submission_id = create_submission(backend)
    # Sent twice, as a redelivery or a sweeper re-send would: the second must find nothing to claim.
    assert enqueue_grading(submission_id, queue="cpu", time_limit_s=120)
    assert enqueue_grading(submission_id, queue="cpu", time_limit_s=120)
    env = {
        "AUTOGRADER_ENV": "test",
        "AUTOGRADER_DATA_DIR": str(backend.data_path),
        "AUTOGRADER_DATABASE__URL": backend.database.url,
        "AUTOGRADER_BROKER__URL": backend.broker.url,
    }
    stack = Stack(env, tmp_path)
    stack.start_worker()
    try:
        deadline = time.monotonic() + 120
        while True:
            with db.get_session_factory()() as session:
                submission = session.get(Submission, submission_id)
                assert submission is not None
                if submission.status.finished:
                    break
            assert time.monotonic() < deadline, stack.logs()
            time.sleep(0.5)
        assert submission.status.value == "graded", (submission.status_message, stack.logs())
        assert submission.score == submission.max_score == 10
        time.sleep(2)  # give the duplicate task time to be consumed
        log = stack.read_log("worker-0")
        assert log.count("succeeded") == 2, log[-3000:]
        with db.get_session_factory()() as session:
            assert session.scalar(select(func.count()).select_from(GradingRun)) == 1
    finally:
        stack.stop()
