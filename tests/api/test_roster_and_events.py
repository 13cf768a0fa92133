"""Roster import, and the live status stream."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select

from server.auth.models import User
from server.courses import service as courses
from server.courses.models import Enrollment, Role
from server.errors import BadRequest
from tests.api.helpers import finish, submit
from tests.conftest import World


def import_csv(world: World, text: str) -> courses.RosterImport:
    with world.session() as session:
        course = courses.get_course(session=session, slug=world.course)
        result = courses.import_roster(session=session, course=course, csv_text=text)
        session.commit()
        return result


def test_roster_import_creates_updates_and_enrolls(world: World) -> None:
    result = import_csv(
        world,
        "username,display_name,email,role,password\n"
        "carol,Carol C,carol@example.edu,student,\n"
        "dave,,,ta,dave-password-1\n"
        "alice,Alice Again,,student,\n",
    )
    assert result.created == ["carol", "dave"] and result.updated == ["alice"]
    assert list(result.generated_passwords) == ["carol"]
    login = world.client.post(
        "/api/auth/login", json={"username": "carol", "password": result.generated_passwords["carol"]}
    )
    assert login.status_code == 200
    with world.session() as session:
        roles = dict(session.execute(select(Enrollment.user_id, Enrollment.role)).all())
    assert Role.ta in roles.values()
    exported = courses.export_roster(
        session=world.session(), course=courses.get_course(session=world.session(), slug=world.course)
    )
    assert "carol,Carol C,carol@example.edu,student" in exported


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name,role\nx,student\n", "username"),
        ("username,role,shoe_size\nx,student,42\n", "Unknown roster column"),
        ("username,role\ngood-one,student\nok-user,professor\n", "line 3"),
        ("username\nbad name!\n", "line 2"),
        ("username\nsame\nsame\n", "appears twice"),
        ("username,password\nnewbie,short\n", "at least 8"),
        ("username\n", "no rows"),
    ],
)
def test_a_bad_roster_is_refused_whole(world: World, text: str, message: str) -> None:
    with world.session() as session:
        users_before = session.scalar(select(func.count()).select_from(User))
    with pytest.raises(BadRequest, match=message):
        import_csv(world, text)
    with world.session() as session:
        assert session.scalar(select(func.count()).select_from(User)) == users_before


def test_events_stream_sends_status_until_finished(world: World, solution_bytes: bytes) -> None:
    submission_id = submit(world, world.alice, solution_bytes).json()["id"]
    finish(world, submission_id, score=10.0)
    with world.client.stream(
        "GET", f"/api/submissions/{submission_id}/events", headers=world.alice.headers
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert lines[0] == "event: status"
    payload = json.loads(lines[1].removeprefix("data: "))
    assert payload["status"] == "graded" and payload["score"] == 10.0
