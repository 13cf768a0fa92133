"""Test helpers that act on the database directly, standing in for a worker."""

from __future__ import annotations

from typing import Any

from server.db import utcnow
from server.submissions.models import GradingRun, Submission, SubmissionStatus
from tests.conftest import Account, World

RESULTS = [
    {
        "name": "softmax_basic",
        "visibility": "visible",
        "passed": True,
        "score": 2.0,
        "max_score": 2.0,
        "message": "ok",
        "duration_s": 0.01,
    },
    {
        "name": "softmax_secret_case",
        "visibility": "hidden",
        "passed": False,
        "score": 0.0,
        "max_score": 3.0,
        "message": "max abs error 0.5 at index (3, 7)",
        "duration_s": 0.01,
    },
    {
        "name": "rms_norm_after_due",
        "visibility": "after_due",
        "passed": True,
        "score": 5.0,
        "max_score": 5.0,
        "message": "ok",
        "duration_s": 0.01,
    },
]


def submit(
    world: World, account: Account, content: bytes, name: str = "warmup.py", slug: str = "warmup"
) -> Any:
    return world.client.post(
        f"/api/courses/{world.course}/assignments/{slug}/submissions",
        files=[("files", (name, content))],
        headers=account.headers,
    )


def finish(
    world: World,
    submission_id: int,
    *,
    score: float = 7.0,
    metrics: dict[str, float] | None = None,
    results: list[dict[str, Any]] | None = None,
    hardware_class: str = "cpu",
    purpose: str = "grade",
) -> int:
    """Record a graded run the way a worker would; returns the run's id."""
    with world.session() as session:
        submission = session.get(Submission, submission_id)
        assert submission is not None
        submission.attempt += 1
        submission.status = SubmissionStatus.graded
        submission.score = score
        submission.max_score = 10.0
        submission.finished_at = utcnow()
        run = GradingRun(
            submission_id=submission_id,
            attempt=submission.attempt,
            status=SubmissionStatus.graded,
            score=score,
            max_score=10.0,
            results=results if results is not None else RESULTS,
            metrics=metrics if metrics is not None else {"softmax_ms": 1.5},
            log="student output\n",
            worker="test-worker",
            hardware={"label": "cpu"},
            software={"torch": "test"},
            bundle_id=submission.bundle_id,
            bundle_sha256="0" * 64,
            seed="123456789",
            flags=["timing: trusted 9.0 ms vs in-sandbox 1.0 ms"],
            started_at=utcnow(),
            hardware_class=hardware_class,
            purpose=purpose,
        )
        session.add(run)
        session.commit()
        return run.id
