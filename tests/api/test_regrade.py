"""Staff regrades after a grader update: one submission, all of them, each student's counted one or each latest
one; in the staff lane, with the new bundle, history and overrides kept."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from server.assignments import service as assignments
from server.assignments.models import Assignment
from server.audit.models import AuditEvent
from server.courses import service as courses
from server.submissions.models import GradingRun, Submission, SubmissionStatus
from tests.api.helpers import finish, submit
from tests.conftest import REPO, Account, World
from tests.worker.test_fair_queue import context, deliver


def regrade(world: World, scope: str, who: Account | None = None, slug: str = "warmup") -> Any:
    return world.client.post(
        f"/api/courses/{world.course}/assignments/{slug}/regrade",
        json={"scope": scope},
        headers=(who or world.ta).headers,
    )


def submitted(world: World, account: Account, solution_bytes: bytes) -> int:
    response = submit(world, account, solution_bytes)
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


def graded(world: World, account: Account, solution_bytes: bytes, score: float = 7.0) -> int:
    submission_id = submitted(world, account, solution_bytes)
    finish(world, submission_id, score=score)
    return submission_id


def publish_new_version(world: World, tmp_path: Path) -> str:
    """The warm-up package again with a fixed grader: a new bundle version for the same assignment."""
    package = tmp_path / "warmup"
    shutil.copytree(REPO / "graders" / "warmup", package, ignore=shutil.ignore_patterns("__pycache__"))
    manifest = package / "assignment.toml"
    manifest.write_text(re.sub(r'(?m)^version = ".*"$', 'version = "9.9.9"', manifest.read_text()))
    with world.session() as session:
        course = courses.get_course(session=session, slug=world.course)
        assignment = assignments.publish_package(session=session, course=course, path=package, actor=None)
        session.commit()
        return assignment.bundle.sha256


def rows(world: World, ids: list[int]) -> dict[int, Submission]:
    with world.session() as session:
        return {s.id: s for s in session.scalars(select(Submission).where(Submission.id.in_(ids)))}


def runs_of(world: World, submission_id: int) -> list[tuple[str, str]]:
    with world.session() as session:
        return [
            (run.purpose, run.bundle_sha256)
            for run in session.scalars(
                select(GradingRun).where(GradingRun.submission_id == submission_id).order_by(GradingRun.id)
            )
        ]


def test_regrade_all_keeps_overrides_and_every_earlier_run_with_its_bundle(
    world: World, solution_bytes: bytes, tmp_path: Path
) -> None:
    ctx = context(world)
    first = submitted(world, world.alice, solution_bytes)
    latest = submitted(world, world.alice, solution_bytes)
    bobs = submitted(world, world.bob, solution_bytes)
    assert sorted(deliver(world, ctx, [first, latest, bobs])) == [first, latest, bobs]
    old_sha = runs_of(world, first)[0][1]
    override = world.client.put(
        f"/api/submissions/{latest}/override",
        json={"score": 9.5, "reason": "test 3 of the old grader was wrong"},
        headers=world.ta.headers,
    )
    assert override.status_code == 200
    new_sha = publish_new_version(world, tmp_path)
    assert new_sha != old_sha
    carol = world.account("carol", "student")
    waiting = submitted(world, carol, solution_bytes)  # still queued: skipped, and graded before the regrades

    response = regrade(world, "all")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["requeued"] == 3 and body["skipped_in_progress"] == 1
    assert body["submission_ids"] == [first, latest, bobs]
    assert (body["bundle_version"], body["bundle_sha256"]) == ("9.9.9", new_sha)
    queued = rows(world, [first, latest, bobs, waiting])
    assert all(
        queued[i].status == SubmissionStatus.queued and queued[i].lane == 1 for i in (first, latest, bobs)
    )
    assert queued[waiting].lane == 0

    order = deliver(world, ctx, [first, latest, bobs, waiting])
    assert order[0] == waiting  # the student's own submission does not wait behind the staff's regrades
    for submission_id in (first, latest, bobs):
        assert runs_of(world, submission_id) == [("grade", old_sha), ("regrade", new_sha)]
    grade = world.client.get(
        f"/api/courses/{world.course}/assignments/warmup/my-grade", headers=world.alice.headers
    ).json()
    assert grade["counted"]["submission_id"] == latest
    assert grade["score"] == 9.5  # the override stands
    assert grade["counted"]["autograded"] == 10.0  # the new autograded score, shown beside it
    with world.session() as session:
        event = session.scalar(select(AuditEvent).where(AuditEvent.action == "assignment.regrade"))
        assert event is not None and event.details["scope"] == "all" and event.details["requeued"] == 3


def test_regrade_counted_follows_the_counting_rule(world: World, solution_bytes: bytes) -> None:
    with world.session() as session:
        session.execute(update(Assignment).where(Assignment.slug == "warmup").values(counting="best"))
        session.commit()
    best = graded(world, world.alice, solution_bytes, score=9.0)
    graded(world, world.alice, solution_bytes, score=6.0)
    bobs = graded(world, world.bob, solution_bytes, score=5.0)
    response = regrade(world, "counted")
    assert response.status_code == 200, response.text
    assert response.json()["submission_ids"] == [best, bobs]


def test_regrade_latest_takes_each_submitters_newest(world: World, solution_bytes: bytes) -> None:
    graded(world, world.alice, solution_bytes)
    newest = graded(world, world.alice, solution_bytes)
    bobs_old = graded(world, world.bob, solution_bytes)
    bobs_new = submitted(world, world.bob, solution_bytes)  # still queued
    body = regrade(world, "latest").json()
    assert body["submission_ids"] == [newest] and body["skipped_in_progress"] == 1
    assert rows(world, [bobs_old])[bobs_old].status == SubmissionStatus.graded
    assert rows(world, [bobs_new])[bobs_new].lane == 0


def test_one_submission_is_regraded_in_the_staff_lane(world: World, solution_bytes: bytes) -> None:
    submission_id = graded(world, world.alice, solution_bytes)
    response = world.client.post(f"/api/submissions/{submission_id}/regrade", headers=world.ta.headers)
    assert response.status_code == 200 and response.json()["status"] == "queued"
    assert rows(world, [submission_id])[submission_id].lane == 1
    again = world.client.post(f"/api/submissions/{submission_id}/regrade", headers=world.ta.headers)
    assert again.status_code == 409 and again.json()["code"] == "not_finished"
    assert deliver(world, context(world), [submission_id]) == [submission_id]
    assert [purpose for purpose, _ in runs_of(world, submission_id)] == ["grade", "regrade"]


@pytest.mark.parametrize(
    ("who", "body", "status", "code"),
    [
        ("alice", {"scope": "all"}, 403, "forbidden"),
        ("outsider", {"scope": "all"}, 404, "not_found"),
        ("ta", {"scope": "everything"}, 422, "invalid"),
        ("ta", {}, 422, "invalid"),
    ],
    ids=["student", "outsider", "bad-scope", "no-scope"],
)
def test_regrade_requests_are_refused_plainly(
    world: World, solution_bytes: bytes, who: str, body: dict[str, str], status: int, code: str
) -> None:
    submission_id = graded(world, world.alice, solution_bytes)
    response = world.client.post(
        f"/api/courses/{world.course}/assignments/warmup/regrade",
        json=body,
        headers=getattr(world, who).headers,
    )
    assert response.status_code == status and response.json()["code"] == code
    assert rows(world, [submission_id])[submission_id].status == SubmissionStatus.graded


def test_a_rubric_graded_assignment_cannot_be_regraded_by_a_worker(world: World) -> None:
    response = regrade(world, "all", slug="project")
    assert response.status_code == 409 and response.json()["code"] == "manual_grading"
