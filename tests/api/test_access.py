"""Who may see and do what: the role and ownership matrix."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update

from server.assignments.models import Assignment
from server.db import utcnow
from tests.api.helpers import finish, submit
from tests.conftest import World


@pytest.fixture
def alice_submission(world: World, solution_bytes: bytes) -> int:
    response = submit(world, world.alice, solution_bytes)
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


@pytest.mark.parametrize(
    ("who", "expected"),
    [("alice", 200), ("bob", 404), ("outsider", 404), ("ta", 200), ("instructor", 200)],
)
@pytest.mark.parametrize("suffix", ["", "/log", "/archive", "/events"])
def test_submission_endpoints_by_role_and_owner(
    world: World, alice_submission: int, who: str, expected: int, suffix: str
) -> None:
    if suffix == "/events":
        finish(world, alice_submission)  # a finished submission's stream ends after one event
    response = world.client.get(
        f"/api/submissions/{alice_submission}{suffix}", headers=getattr(world, who).headers
    )
    assert response.status_code == expected
    if expected == 404:
        # Someone else's submission looks exactly like one that does not exist.
        missing = world.client.get(f"/api/submissions/999999{suffix}", headers=getattr(world, who).headers)
        assert missing.status_code == 404
        assert response.json()["detail"].replace(str(alice_submission), "999999") == missing.json()["detail"]


@pytest.mark.parametrize(
    ("who", "expected"), [("alice", 403), ("outsider", 404), ("ta", 200), ("instructor", 200)]
)
def test_all_submissions_of_an_assignment_is_for_staff(
    world: World, alice_submission: int, who: str, expected: int
) -> None:
    response = world.client.get(
        f"/api/courses/{world.course}/assignments/warmup/submissions", headers=getattr(world, who).headers
    )
    assert response.status_code == expected
    if expected == 200:
        body = response.json()
        assert body["total"] == 1 and body["items"][0]["username"] == "alice"


@pytest.mark.parametrize(("who", "expected"), [("alice", 403), ("bob", 404), ("ta", 200)])
def test_regrade_is_for_staff(world: World, alice_submission: int, who: str, expected: int) -> None:
    finish(world, alice_submission)
    response = world.client.post(
        f"/api/submissions/{alice_submission}/regrade", headers=getattr(world, who).headers
    )
    assert response.status_code == expected
    if expected == 200:
        assert response.json()["status"] == "queued"


def test_my_submissions_lists_only_mine(world: World, alice_submission: int, solution_bytes: bytes) -> None:
    submit(world, world.bob, solution_bytes)
    mine = world.client.get("/api/me/submissions", headers=world.alice.headers).json()
    assert [s["id"] for s in mine] == [alice_submission]
    filtered = world.client.get(
        "/api/me/submissions",
        params={"course": world.course, "assignment": "warmup"},
        headers=world.alice.headers,
    )
    assert [s["id"] for s in filtered.json()] == [alice_submission]


def test_students_see_visible_tests_in_full_and_hidden_ones_as_counts(
    world: World, alice_submission: int
) -> None:
    finish(world, alice_submission)
    body = world.client.get(f"/api/submissions/{alice_submission}", headers=world.alice.headers).json()
    assert [t["name"] for t in body["tests"]] == ["softmax_basic"]
    assert body["hidden"] == {"count": 2, "passed": 1, "score": 5.0, "max_score": 8.0}
    assert body["staff"] is None
    text = str(body)
    for secret in ("softmax_secret_case", "index (3, 7)", "123456789", "rms_norm_after_due", "in-sandbox"):
        assert secret not in text


def test_staff_see_every_test_and_the_run_details(world: World, alice_submission: int) -> None:
    finish(world, alice_submission)
    body = world.client.get(f"/api/submissions/{alice_submission}", headers=world.ta.headers).json()
    assert len(body["tests"]) == 3
    assert body["staff"]["seed"] == "123456789"
    assert body["staff"]["flags"] == ["timing: trusted 9.0 ms vs in-sandbox 1.0 ms"]


def test_after_due_tests_open_to_students_once_the_deadline_passed(
    world: World, alice_submission: int
) -> None:
    finish(world, alice_submission)
    with world.session() as session:
        session.execute(update(Assignment).values(due_at=utcnow() - timedelta(minutes=1)))
        session.commit()
    body = world.client.get(f"/api/submissions/{alice_submission}", headers=world.alice.headers).json()
    assert [t["name"] for t in body["tests"]] == ["softmax_basic", "rms_norm_after_due"]
    assert body["hidden"]["count"] == 1


def test_unpublished_assignments_are_invisible_to_students_but_not_staff(world: World) -> None:
    with world.session() as session:
        session.execute(update(Assignment).values(published=False))
        session.commit()
    assert world.client.get("/api/assignments", headers=world.alice.headers).json() == []
    response = world.client.get(
        f"/api/courses/{world.course}/assignments/warmup", headers=world.alice.headers
    )
    assert response.status_code == 404
    staff_view = world.client.get("/api/assignments", headers=world.ta.headers).json()
    assert sorted(a["slug"] for a in staff_view) == ["project", "warmup"]
    assert not any(a["published"] for a in staff_view)


def test_assignment_detail_hides_hidden_test_descriptions_from_students(world: World) -> None:
    student = world.client.get(
        f"/api/courses/{world.course}/assignments/warmup", headers=world.alice.headers
    ).json()
    staff = world.client.get(
        f"/api/courses/{world.course}/assignments/warmup", headers=world.ta.headers
    ).json()
    hidden = [t for t in student["tests"] if t["visibility"] != "visible"]
    assert hidden and all(t["description"] == "" for t in hidden)
    assert any(t["description"] for t in staff["tests"] if t["visibility"] != "visible")
    assert student["points"] == sum(t["weight"] for t in student["tests"])


def test_people_outside_the_course_see_no_assignments(world: World) -> None:
    assert world.client.get("/api/assignments", headers=world.outsider.headers).json() == []
    response = world.client.get(
        f"/api/courses/{world.course}/assignments/warmup/leaderboard", headers=world.outsider.headers
    )
    assert response.status_code == 404


def test_leaderboard_ranks_correctness_then_speed_and_hides_other_students(
    world: World, solution_bytes: bytes
) -> None:
    ids = {}
    for account in (world.alice, world.bob):
        ids[account.username] = submit(world, account, solution_bytes).json()["id"]
    finish(world, ids["alice"], score=10.0, metrics={"softmax_ms": 3.0})
    finish(world, ids["bob"], score=10.0, metrics={"softmax_ms": 1.0})
    slower_but_wrong = submit(world, world.alice, solution_bytes).json()["id"]
    finish(world, slower_but_wrong, score=4.0, metrics={"softmax_ms": 0.1})
    url = f"/api/courses/{world.course}/assignments/warmup/leaderboard"
    board = world.client.get(url, headers=world.alice.headers).json()
    assert [(e["rank"], e["is_you"], e["metric"]) for e in board["entries"]] == [
        (1, False, 1.0),
        (2, True, 3.0),
    ]
    assert board["entries"][0]["name"].startswith("anon-") and board["entries"][0]["submission_id"] is None
    assert board["entries"][1]["name"] == "alice"
    staff = world.client.get(url, headers=world.ta.headers).json()
    assert [e["name"] for e in staff["entries"]] == ["bob", "alice"]
