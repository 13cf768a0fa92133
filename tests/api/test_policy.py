"""Deadlines, late policies, extensions, overrides and counting rules over the API: grades are computed when read,
so every rule change shows at once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from server.assignments.models import Assignment
from server.audit.models import AuditEvent
from server.courses.models import Course
from server.submissions.models import Submission
from tests.api.helpers import finish, submit
from tests.api.test_project import PDF, score, upload
from tests.conftest import World

DUE = datetime(2026, 3, 13, 23, 59, tzinfo=UTC)  # in the past


def place(world: World, submission_id: int, submitted_at: datetime) -> None:
    with world.session() as session:
        session.execute(
            update(Submission).where(Submission.id == submission_id).values(submitted_at=submitted_at)
        )
        session.commit()


def configure_assignment(world: World, slug: str = "warmup", **values: Any) -> None:
    with world.session() as session:
        session.execute(update(Assignment).where(Assignment.slug == slug).values(**values))
        session.commit()


def graded_submission(world: World, solution_bytes: bytes, *, at: datetime, points: float, who=None) -> int:
    response = submit(world, who or world.alice, solution_bytes)
    assert response.status_code == 201, response.text
    submission_id = int(response.json()["id"])
    finish(world, submission_id, score=points)
    place(world, submission_id, at)
    return submission_id


def my_grade(world: World, who=None, slug: str = "warmup") -> dict:
    response = world.client.get(
        f"/api/courses/{world.course}/assignments/{slug}/my-grade", headers=(who or world.alice).headers
    )
    assert response.status_code == 200, response.text
    return response.json()


def settings(world: World, who=None, **changes: Any):
    return world.client.patch(
        f"/api/courses/{world.course}/assignments/warmup/settings",
        json=changes,
        headers=(who or world.instructor).headers,
    )


@pytest.fixture
def late_submission(world: World, solution_bytes: bytes) -> int:
    """Alice's warm-up, graded 7/10, submitted 1.5 days after a deadline that lies in the past."""
    submission_id = graded_submission(world, solution_bytes, at=DUE + timedelta(days=1, hours=12), points=7.0)
    configure_assignment(world, due_at=DUE, late_policy={"kind": "hard"})
    return submission_id


def test_changing_the_late_policy_rescores_at_once(world: World, late_submission: int):
    grade = my_grade(world)
    assert grade["score"] == 0 and grade["counted"]["late"] == "2 days late: too late to count"
    response = settings(
        world, late_policy={"kind": "window", "per": "day", "penalty_percent": 10, "max_units": 3}
    )
    assert response.status_code == 200, response.text
    assert "each started day late costs 10%" in response.json()["late_policy_text"]
    grade = my_grade(world)
    assert grade["score"] == pytest.approx(5.6) and grade["counted"]["multiplier"] == pytest.approx(0.8)
    assert grade["counted"]["late"] == "2 days late: 20% penalty"
    with world.session() as session:
        event = session.scalars(select(AuditEvent).where(AuditEvent.action == "assignment.settings")).one()
    assert event.details["before"]["late_policy"] == {"kind": "hard"}


def test_an_extension_moves_one_students_deadline_and_can_be_revoked(world: World, late_submission: int):
    url = f"/api/courses/{world.course}/assignments/warmup/extensions/alice"
    granted = world.client.put(
        url,
        json={"due_at": (DUE + timedelta(days=2)).isoformat(), "reason": "hospital note"},
        headers=world.ta.headers,
    )
    assert granted.status_code == 200, granted.text
    assert granted.json()["granted_by"] == "tina"
    grade = my_grade(world)
    assert grade["score"] == 7.0 and grade["counted"]["late"] == "on time"
    assert grade["extension"]["reason"] == "hospital note"
    assert my_grade(world, world.bob)["extension"] is None  # only alice's deadline moved
    no_reason = world.client.request("DELETE", url, json={"reason": " "}, headers=world.ta.headers)
    assert no_reason.status_code == 400 and no_reason.json()["code"] == "reason_required"
    revoked = world.client.request(
        "DELETE", url, json={"reason": "note was forged"}, headers=world.ta.headers
    )
    assert revoked.status_code == 204
    assert my_grade(world)["score"] == 0


def test_students_cannot_grant_themselves_extensions_or_change_settings(world: World, late_submission: int):
    url = f"/api/courses/{world.course}/assignments/warmup/extensions/alice"
    mine = world.client.put(
        url, json={"due_at": DUE.isoformat(), "reason": "please"}, headers=world.alice.headers
    )
    assert mine.status_code == 403
    assert settings(world, world.alice, counting="best").status_code == 403
    assert settings(world, world.ta, counting="best").status_code == 403  # instructors only


def test_an_override_replaces_the_score_survives_regrades_and_is_shown_with_its_reason(
    world: World, late_submission: int
):
    url = f"/api/submissions/{late_submission}/override"
    refused = world.client.put(url, json={"score": 9.5, "reason": ""}, headers=world.ta.headers)
    assert refused.status_code == 400 and refused.json()["code"] == "reason_required"
    assert (
        world.client.put(url, json={"score": 11, "reason": "x"}, headers=world.ta.headers).status_code == 400
    )
    assert (
        world.client.put(url, json={"score": 9, "reason": "x"}, headers=world.alice.headers).status_code
        == 403
    )
    done = world.client.put(
        url, json={"score": 9.5, "reason": "grader bug in test 3"}, headers=world.ta.headers
    )
    assert done.status_code == 200 and done.json()["autograded"] == 7.0
    finish(world, late_submission, score=4.0)  # a regrade records a new run with a new autograded score
    grade = my_grade(world)
    assert grade["score"] == 9.5
    assert grade["counted"]["override"]["reason"] == "grader bug in test 3"
    assert grade["counted"]["autograded"] == 4.0  # shown beside the override


def test_counting_latest_best_and_final(world: World, solution_bytes: bytes):
    configure_assignment(world, due_at=datetime.now(UTC) + timedelta(days=7))
    now = datetime.now(UTC)
    first = graded_submission(world, solution_bytes, at=now - timedelta(hours=3), points=9.0)
    second = graded_submission(world, solution_bytes, at=now - timedelta(hours=2), points=6.0)
    tie = graded_submission(world, solution_bytes, at=now - timedelta(hours=1), points=9.0)
    assert my_grade(world)["counted"]["submission_id"] == tie  # latest
    assert settings(world, counting="best").status_code == 200
    assert my_grade(world)["counted"]["submission_id"] == first  # best; the tie goes to the earlier one
    assert settings(world, counting="final").status_code == 200
    assert my_grade(world)["counted"]["submission_id"] == tie  # nothing marked yet: the latest
    marked = world.client.post(f"/api/submissions/{second}/final", headers=world.alice.headers)
    assert marked.status_code == 200
    grade = my_grade(world)
    assert grade["counted"]["submission_id"] == second and grade["score"] == 6.0
    assert world.client.post(f"/api/submissions/{second}/final", headers=world.bob.headers).status_code == 404


def test_the_final_mark_cannot_change_after_the_deadline(world: World, late_submission: int):
    response = world.client.post(f"/api/submissions/{late_submission}/final", headers=world.alice.headers)
    assert response.status_code == 409 and response.json()["code"] == "deadline_passed"


def test_a_student_cannot_submit_after_the_window_but_staff_can(world: World, solution_bytes: bytes):
    configure_assignment(world, due_at=datetime.now(UTC) - timedelta(minutes=1), late_policy={"kind": "hard"})
    refused = submit(world, world.alice, solution_bytes)
    assert refused.status_code == 409 and refused.json()["code"] == "past_deadline"
    assert "No late submissions" in refused.json()["detail"]
    configure_assignment(
        world, late_policy={"kind": "window", "per": "hour", "penalty_percent": 50, "max_units": 1}
    )
    assert submit(world, world.alice, solution_bytes).status_code == 201  # within the one-hour window
    assert submit(world, world.ta, solution_bytes).status_code == 201


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"due_at": "2020-01-01T00:00:00+00:00"}, "deadline_in_past"),
        ({"due_at": "2030-01-01T00:00:00"}, "naive_datetime"),
        ({"late_policy": {"kind": "window", "per": "day"}}, "bad_late_policy"),
        (
            {"due_at": "2030-01-01T00:00:00+00:00", "closes_at": "2029-01-01T00:00:00+00:00"},
            "closes_before_due",
        ),
        ({"counting": "random"}, "invalid"),
    ],
)
def test_bad_settings_are_refused_and_nothing_changes(world: World, changes, code):
    before = world.client.get(
        f"/api/courses/{world.course}/assignments/warmup/settings", headers=world.instructor.headers
    ).json()
    response = settings(world, **changes)
    assert response.status_code in (400, 422) and response.json()["code"] == code, response.text
    after = world.client.get(
        f"/api/courses/{world.course}/assignments/warmup/settings", headers=world.instructor.headers
    ).json()
    assert after == before


def test_a_past_deadline_is_accepted_when_meant(world: World):
    response = settings(world, due_at="2020-01-01T00:00:00+08:00", allow_past_deadline=True)
    assert response.status_code == 200
    assert response.json()["due_at"].startswith("2019-12-31T16:00:00")


def test_late_days_are_spent_in_deadline_order_across_the_course(world: World, solution_bytes: bytes):
    with world.session() as session:
        session.execute(update(Course).values(late_days_budget=3, timezone="Asia/Shanghai"))
        session.commit()
    warmup_id = graded_submission(world, solution_bytes, at=DUE + timedelta(days=1, hours=1), points=8.0)
    response = upload(world, world.alice, [("report.pdf", PDF)])
    project_id = int(response.json()["id"])
    criteria = ("problem", "implementation", "experiments", "analysis", "report")
    assert (
        score(
            world, world.ta, project_id, [{"criterion": c, "points": 5, "comment": "ok"} for c in criteria]
        ).status_code
        == 200
    )
    late_days = {"kind": "late_days"}
    configure_assignment(world, "warmup", due_at=DUE, late_policy=late_days)  # warm-up: two days late
    configure_assignment(world, "project", due_at=DUE + timedelta(days=10), late_policy=late_days)
    assert warmup_id
    place(world, project_id, DUE + timedelta(days=11, hours=1))  # two days late, but only one late day left
    warmup = my_grade(world)
    assert (warmup["score"], warmup["counted"]["late_days_used"], warmup["late_days_left"]) == (8.0, 2, 3)
    project = my_grade(world, slug="project")
    assert project["late_days_left"] == 1 and project["score"] == 0
    assert project["counted"]["late"] == "2 days late: too late to count"
    course = world.client.get(f"/api/courses/{world.course}/me/grades", headers=world.alice.headers).json()
    assert course["assignments"] == {"warmup": 8.0, "project": 0.0}


def test_course_total_weights_each_assignment(world: World, solution_bytes: bytes):
    configure_assignment(world, "warmup", due_at=datetime.now(UTC) + timedelta(days=1), weight=80.0)
    configure_assignment(world, "project", weight=20.0)
    graded_submission(world, solution_bytes, at=datetime.now(UTC), points=5.0)  # 50% of the warm-up
    course = world.client.get(f"/api/courses/{world.course}/me/grades", headers=world.alice.headers).json()
    assert course["total_percent"] == pytest.approx(40.0)
    staff = world.client.get(
        f"/api/courses/{world.course}/assignments/warmup/grades", headers=world.ta.headers
    ).json()
    assert {item["username"]: item["score"] for item in staff["items"]} == {"alice": 5.0, "bob": 0.0}
    assert (
        world.client.get(
            f"/api/courses/{world.course}/assignments/warmup/grades", headers=world.alice.headers
        ).status_code
        == 403
    )


def test_a_submission_being_regraded_keeps_counting_with_its_score(world: World, solution_bytes: bytes):
    configure_assignment(world, due_at=datetime.now(UTC) + timedelta(days=1))
    first = graded_submission(world, solution_bytes, at=datetime.now(UTC) - timedelta(hours=1), points=8.0)
    regrade = world.client.post(f"/api/submissions/{first}/regrade", headers=world.ta.headers)
    assert regrade.status_code == 200, regrade.text
    grade = my_grade(world)
    assert grade["score"] == 8.0 and grade["counted"]["status"] == "queued"
