"""Fair order in the queue: lanes, then the student served least recently, then first come; the claim stays
atomic and idempotent (SQLite here, PostgreSQL with concurrent workers at the end)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from unittest import mock

import pytest
from sqlalchemy import select, update

from graders.harness import GradeReport
from server.assignments.models import Assignment, GraderBundle
from server.db import get_session_factory, utcnow
from server.settings import Settings
from server.submissions.models import GradingRun, Submission, SubmissionStatus
from tests.api.helpers import submit
from tests.conftest import Account, World, build_world
from worker.grading import Claimed, GradingContext, Outcome, claim, claim_fairest, grade_submission
from worker.sandbox import get_sandbox


def context(world: World, *, fair: bool = True) -> GradingContext:
    worker = world.settings.worker.model_copy(update={"fair_order": fair})
    return GradingContext(
        settings=world.settings.model_copy(update={"worker": worker}),
        session_factory=get_session_factory(),
        sandbox=get_sandbox("local"),
        worker_id="test-worker",
    )


def first_submission(world: World, account: Account, solution_bytes: bytes) -> int:
    response = submit(world, account, solution_bytes)
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


def queue_more(world: World, template_id: int, account: Account, count: int, *, lane: int = 0) -> list[int]:
    """``count`` more queued submissions by ``account``, like the template, each queued after the last."""
    with world.session() as session:
        template = session.get(Submission, template_id)
        assert template is not None
        latest = session.scalar(select(Submission.queued_at).order_by(Submission.queued_at.desc()))
        assert latest is not None
        rows = []
        for i in range(count):
            at = max(latest, utcnow()) + timedelta(milliseconds=i + 1)
            rows.append(
                Submission(
                    assignment_id=template.assignment_id,
                    user_id=account.user_id,
                    archive_sha256=template.archive_sha256,
                    file_names=template.file_names,
                    bundle_id=template.bundle_id,
                    queue=template.queue,
                    status=SubmissionStatus.queued,
                    submitted_at=at,
                    queued_at=at,
                    enqueued_at=at,
                    lane=lane,
                )
            )
        session.add_all(rows)
        session.commit()
        return [row.id for row in rows]


def allow_bursts(world: World) -> None:
    with world.session() as session:
        session.execute(update(Assignment).values(max_queued_per_student=100))
        session.commit()


@contextmanager
def quick_grading() -> Iterator[None]:
    """A worker whose sandbox grades everything at once with full marks."""
    report = GradeReport(
        status="graded", failure_reason=None, tests=[], score=10.0, max_score=10.0, metrics={}
    )
    with (
        mock.patch(
            "worker.grading.run_grading",
            side_effect=lambda **_: Outcome(report=report, sandbox_result=None, seed=1, started_at=utcnow()),
        ),
        mock.patch("worker.grading.environment_info", return_value=({"label": "cpu"}, {})),
    ):
        yield


def deliver(world: World, ctx: GradingContext, messages: list[int]) -> list[int]:
    """Deliver the tasks in order to one worker; returns the submissions in the order they were graded."""
    graded: list[int] = []
    with quick_grading():
        for message in messages:
            if grade_submission(message, ctx) == "skipped":
                continue
            with world.session() as session:
                newest = session.scalar(select(GradingRun).order_by(GradingRun.id.desc()))
                assert newest is not None
                graded.append(newest.submission_id)
    return graded


def set_values(world: World, submission_ids: list[int], **values: object) -> None:
    with world.session() as session:
        session.execute(update(Submission).where(Submission.id.in_(submission_ids)).values(**values))
        session.commit()


def test_a_burst_of_50_delays_another_students_submission_by_at_most_one_grading(
    world: World, solution_bytes: bytes
) -> None:
    allow_bursts(world)
    first = first_submission(world, world.alice, solution_bytes)
    burst = [first, *queue_more(world, first, world.alice, 49)]
    lone = queue_more(world, first, world.bob, 1)[0]
    order = deliver(world, context(world), [*burst, lone])
    assert sorted(order) == sorted([*burst, lone])  # every task graded exactly one submission
    assert order.index(lone) <= 1
    assert order[:2] == [first, lone]


def test_a_lone_submission_arriving_during_a_burst_is_the_next_claimed(
    world: World, solution_bytes: bytes
) -> None:
    allow_bursts(world)
    first = first_submission(world, world.alice, solution_bytes)
    burst = [first, *queue_more(world, first, world.alice, 49)]
    with world.session() as session:
        running = claim_fairest(session=session, submission_id=burst[0], worker_id="w1", lease_seconds=60)
        assert running == Claimed(first, 1)
        lone = queue_more(world, first, world.bob, 1)[0]
        # The task that wakes the next worker names one of alice's; the worker still takes bob's.
        next_claim = claim_fairest(session=session, submission_id=burst[1], worker_id="w2", lease_seconds=60)
        assert next_claim == Claimed(lone, 1)


def test_without_fair_order_the_lone_submission_waits_for_the_whole_burst(
    world: World, solution_bytes: bytes
) -> None:
    allow_bursts(world)
    first = first_submission(world, world.alice, solution_bytes)
    burst = [first, *queue_more(world, first, world.alice, 49)]
    lone = queue_more(world, first, world.bob, 1)[0]
    order = deliver(world, context(world, fair=False), [*burst, lone])
    assert order == [*burst, lone]


def test_students_alternate_when_both_send_bursts(world: World, solution_bytes: bytes) -> None:
    allow_bursts(world)
    first = first_submission(world, world.alice, solution_bytes)
    alices = [first, *queue_more(world, first, world.alice, 2)]
    bobs = queue_more(world, first, world.bob, 3)
    order = deliver(world, context(world), [*alices, *bobs])
    assert order == [alices[0], bobs[0], alices[1], bobs[1], alices[2], bobs[2]]


def test_the_student_served_least_recently_goes_first(world: World, solution_bytes: bytes) -> None:
    allow_bursts(world)
    carol = world.account("carol", "student")
    first = first_submission(world, world.alice, solution_bytes)
    # Finished earlier: carol's an hour ago, alice's a minute ago; bob has never been served.
    served_carol = queue_more(world, first, carol, 1)
    served_alice = queue_more(world, first, world.alice, 1)
    set_values(world, served_carol, status=SubmissionStatus.graded, started_at=utcnow() - timedelta(hours=1))
    set_values(world, [*served_alice, first], status=SubmissionStatus.graded, started_at=utcnow())
    waiting_alice = queue_more(world, first, world.alice, 1)[0]
    waiting_carol = queue_more(world, first, carol, 1)[0]
    waiting_bob = queue_more(world, first, world.bob, 1)[0]
    order = deliver(world, context(world), [waiting_alice, waiting_carol, waiting_bob])
    assert order == [waiting_bob, waiting_carol, waiting_alice]


def test_students_go_before_staff_regrades_before_remeasurements(world: World, solution_bytes: bytes) -> None:
    allow_bursts(world)
    first = first_submission(world, world.alice, solution_bytes)
    remeasure = queue_more(world, first, world.bob, 1, lane=2)
    regrade = queue_more(world, first, world.bob, 1, lane=1)
    set_values(world, [first], lane=1)
    student = queue_more(world, first, world.alice, 1)
    order = deliver(world, context(world), [first, *remeasure, *regrade, *student])
    # Within the staff lane bob goes first: alice was served a moment ago, bob never.
    assert order == [*student, *regrade, first, *remeasure]
    with world.session() as session:
        purposes = {run.submission_id: run.purpose for run in session.scalars(select(GradingRun))}
    assert purposes == {
        student[0]: "grade",
        first: "regrade",
        regrade[0]: "regrade",
        remeasure[0]: "remeasure",
    }


def test_a_task_with_nothing_left_to_claim_does_nothing(world: World, solution_bytes: bytes) -> None:
    first = first_submission(world, world.alice, solution_bytes)
    ctx = context(world)
    # Sent twice (a redelivery, or the sweeper's re-send): the second finds nothing queued.
    assert deliver(world, ctx, [first, first]) == [first]
    with world.session() as session:
        assert claim_fairest(session=session, submission_id=first, worker_id="w", lease_seconds=60) is None
        assert claim_fairest(session=session, submission_id=10_000, worker_id="w", lease_seconds=60) is None
        assert len(session.scalars(select(GradingRun)).all()) == 1


def test_a_claim_lost_to_another_worker_moves_on_to_the_next(world: World, solution_bytes: bytes) -> None:
    allow_bursts(world)
    first = first_submission(world, world.alice, solution_bytes)
    second = queue_more(world, first, world.bob, 1)[0]
    real_claim = claim

    def another_worker_wins_the_first(**kwargs: object) -> int | None:
        if kwargs["submission_id"] == first:
            with world.session() as other:
                assert real_claim(session=other, submission_id=first, worker_id="other", lease_seconds=60)
        return real_claim(**kwargs)  # type: ignore[arg-type]

    with (
        world.session() as session,
        mock.patch("worker.grading.claim", side_effect=another_worker_wins_the_first),
    ):
        assert claim_fairest(
            session=session, submission_id=first, worker_id="me", lease_seconds=60
        ) == Claimed(second, 1)
    with world.session() as session:
        workers = {s.id: s.worker for s in session.scalars(select(Submission))}
    assert workers == {first: "other", second: "me"}


def slower(world: World, submission_ids: list[int], factor: int = 5) -> float:
    """Move the submissions to a copy of their bundle with a time limit ``factor`` times longer; returns it."""
    with world.session() as session:
        bundle = session.scalar(
            select(GraderBundle)
            .join(Submission, Submission.bundle_id == GraderBundle.id)
            .where(Submission.id == submission_ids[0])
        )
        assert bundle is not None
        time_limit = bundle.manifest["time_limit_s"] * factor
        longer = GraderBundle(
            sha256=f"{factor:064d}",
            slug=bundle.slug,
            version=f"{bundle.version}-slow",
            manifest={**bundle.manifest, "time_limit_s": time_limit},
            data=bundle.data,
            size=bundle.size,
        )
        session.add(longer)
        session.flush()
        session.execute(
            update(Submission).where(Submission.id.in_(submission_ids)).values(bundle_id=longer.id)
        )
        session.commit()
        return float(time_limit)


def test_a_task_only_claims_submissions_its_time_limit_covers(world: World, solution_bytes: bytes) -> None:
    allow_bursts(world)
    carol = world.account("carol", "student")
    first = first_submission(world, world.alice, solution_bytes)
    with world.session() as session:  # alice was served a moment ago
        assert claim(session=session, submission_id=first, worker_id="w", lease_seconds=60) == 1
    set_values(world, [first], status=SubmissionStatus.queued)
    slow = queue_more(world, first, world.bob, 1)[0]
    quick = queue_more(world, first, carol, 1)[0]
    slower(world, [slow])
    with world.session() as session:
        # Bob's is the fairest, but it needs a longer time limit than alice's task was sent with: carol's.
        assert claim_fairest(
            session=session, submission_id=first, worker_id="w", lease_seconds=60
        ) == Claimed(quick, 1)
        assert claim_fairest(session=session, submission_id=slow, worker_id="w", lease_seconds=60) == Claimed(
            slow, 1
        )
        assert claim_fairest(
            session=session, submission_id=quick, worker_id="w", lease_seconds=60
        ) == Claimed(first, 2)


def test_a_task_that_took_a_shorter_grading_is_sent_again_for_a_longer_one_waiting(
    world: World, solution_bytes: bytes
) -> None:
    allow_bursts(world)
    first = first_submission(world, world.alice, solution_bytes)
    slow = queue_more(world, first, world.bob, 1)[0]
    served = queue_more(world, first, world.bob, 1)  # bob was served a moment ago: alice's goes first
    set_values(world, served, status=SubmissionStatus.graded, started_at=utcnow())
    time_limit = slower(world, [slow])
    with mock.patch("worker.grading.queue.enqueue_grading", return_value=True) as send:
        # Bob's task takes alice's shorter grading; alice's task could not take bob's, so bob's task goes again.
        order = deliver(world, context(world), [slow, first])
        send.assert_called_once_with(slow, queue="cpu", time_limit_s=time_limit)
        assert order == [first]
        assert deliver(world, context(world), [slow]) == [slow]
        assert send.call_count == 1


@pytest.fixture
def pg_world(configure: Callable[..., Settings], request: pytest.FixtureRequest) -> Iterator[World]:
    built = build_world(configure(database__url=request.getfixturevalue("pg_database")))
    with built.client:
        yield built


@pytest.mark.postgres
def test_concurrent_workers_on_postgresql_claim_each_submission_once_and_fairly(
    pg_world: World, solution_bytes: bytes
) -> None:
    world = pg_world
    allow_bursts(world)
    first = first_submission(world, world.alice, solution_bytes)
    alices = [first, *queue_more(world, first, world.alice, 29)]
    lone = queue_more(world, first, world.bob, 1)[0]
    workers = 6
    start = threading.Barrier(workers)
    claimed: list[tuple[int, int]] = []  # (claim order, submission id)
    lock = threading.Lock()
    errors: list[BaseException] = []

    def work(name: str) -> None:
        try:
            start.wait()
            with get_session_factory()() as session:
                while True:
                    got = claim_fairest(
                        session=session, submission_id=first, worker_id=name, lease_seconds=60
                    )
                    if got is None:
                        return
                    with lock:
                        claimed.append((len(claimed), got.submission_id))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    ids = [submission_id for _, submission_id in claimed]
    assert sorted(ids) == sorted([*alices, lone])  # every one claimed, none twice
    # Claims in flight at the same moment all still see alice as never served (her first grading has not
    # committed its start yet), so up to one round of workers can take hers first; bob's comes in the next
    # round at the latest, never behind her burst of 30.
    assert ids.index(lone) < 2 * workers
    with world.session() as session:
        rows = session.scalars(select(Submission)).all()
    assert all(row.status == SubmissionStatus.running and row.attempt == 1 for row in rows)


def test_a_remeasurement_adds_a_run_but_leaves_the_grade_alone(world: World, solution_bytes: bytes) -> None:
    first = first_submission(world, world.alice, solution_bytes)
    # A graded submission (7.5 of 10) queued again in the re-measurement lane; the quick grader gives 10/10.
    set_values(world, [first], lane=2, score=7.5, max_score=10.0)
    assert deliver(world, context(world), [first]) == [first]
    with world.session() as session:
        submission = session.get(Submission, first)
        run = session.scalar(select(GradingRun).where(GradingRun.submission_id == first))
        assert submission is not None and run is not None
        assert (submission.status, submission.score, submission.max_score) == (
            SubmissionStatus.graded,
            7.5,
            10.0,
        )
        assert (run.purpose, run.score) == ("remeasure", 10.0)


def test_the_queue_position_shown_is_where_the_fair_order_will_take_it(
    world: World, solution_bytes: bytes
) -> None:
    from server.submissions.service import queue_position

    allow_bursts(world)
    first = first_submission(world, world.alice, solution_bytes)
    burst = [first, *queue_more(world, first, world.alice, 9)]
    lone = queue_more(world, first, world.bob, 1)[0]
    with world.session() as session:
        shown = {
            submission_id: queue_position(session=session, submission=session.get(Submission, submission_id))
            for submission_id in [*burst, lone]
        }
    assert shown[lone] == 2  # behind alice's first, not behind her whole burst
    order = deliver(world, context(world), [*burst, lone])
    assert [shown[submission_id] for submission_id in order] == list(range(1, 12))
