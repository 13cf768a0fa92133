"""Leaderboard rules: best correct run per student, ties, hardware classes, aliases, hidden runs and the final
re-measurement after the deadline."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any
from unittest import mock

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from server import db, migrate
from server.assignments.models import Assignment, Extension
from server.audit.models import AuditEvent
from server.auth import service as auth_service
from server.auth.models import User
from server.bootstrap import bootstrap
from server.courses.models import Course, Enrollment, Role
from server.db import utcnow
from server.errors import Conflict
from server.leaderboard import aliases, remeasure
from server.main import create_app
from server.settings import Settings
from server.submissions.models import Submission, SubmissionStatus
from server.submissions.sweeper import sweep
from tests.api.helpers import finish, submit
from tests.conftest import REPO, Account, World

BOARD = "/api/courses/{course}/assignments/warmup/leaderboard"
SOURCE = b"def softmax(x, dim=-1):\n    return x\n\n\ndef rms_norm(x, weight, eps=1e-6):\n    return x\n"


@pytest.fixture
def sent() -> Iterator[list[int]]:
    """Grading tasks sent to the broker (submission ids), without a broker."""
    ids: list[int] = []
    fake = mock.Mock()
    fake.send_task.side_effect = lambda name, *, args, **_: ids.append(args[0])
    with mock.patch("server.queue.get_celery", return_value=fake):
        yield ids


def student(world: World, username: str) -> Account:
    """Another student, with an API token and no password (hashing one is the slow part of an account)."""
    with world.session() as session:
        user = auth_service.create_user(session=session, username=username, password=None)
        course = session.scalar(select(Course).where(Course.slug == world.course))
        assert course is not None
        session.add(Enrollment(course_id=course.id, user_id=user.id, role=Role.student))
        token, _ = auth_service.create_api_token(
            session=session, user=user, name="tests", expires_in_days=None
        )
        session.commit()
        return Account(username, "", token, user.id)


def postgres_world(settings: Settings) -> World:
    """A migrated database with the course, the warm-up assignment and two students (alice, bob)."""
    migrate.upgrade()
    with db.get_session_factory()() as session:
        bootstrap(session=session, settings=settings, packages=[REPO / "graders" / "warmup"])
    nobody = Account("", "", "", 0)  # the staff and outsider accounts are not needed here
    client = TestClient(create_app(settings, run_sweeper=False))
    world = World(settings, client, settings.course_slug, nobody, nobody, nobody, nobody, nobody)
    world.alice, world.bob = student(world, "alice"), student(world, "bob")
    return world


@pytest.fixture
def carol(world: World) -> Account:
    return student(world, "carol")


def ranked(
    world: World,
    account: Account,
    metric: float | None,
    *,
    score: float = 10.0,
    hardware: str = "cpu",
    minutes_ago: float | None = None,
) -> int:
    """A submission by ``account`` with one graded run; returns the submission id."""
    response = submit(world, account, SOURCE)
    assert response.status_code == 201, response.text
    submission_id = int(response.json()["id"])
    finish(
        world,
        submission_id,
        score=score,
        metrics={} if metric is None else {"softmax_ms": metric},
        hardware_class=hardware,
    )
    if minutes_ago is not None:
        with world.session() as session:
            submission = session.get(Submission, submission_id)
            assert submission is not None
            submission.submitted_at = utcnow() - timedelta(minutes=minutes_ago)
            session.commit()
    return submission_id


def board(world: World, account: Account, **params: str) -> dict[str, Any]:
    response = world.client.get(BOARD.format(course=world.course), params=params, headers=account.headers)
    assert response.status_code == 200, response.text
    return dict(response.json())


def rows(body: dict[str, Any]) -> list[tuple[int, str, float]]:
    return [(entry["rank"], entry["name"], entry["metric"]) for entry in body["entries"]]


def change_assignment(world: World, **values: Any) -> None:
    with world.session() as session:
        assignment = session.scalar(select(Assignment).where(Assignment.slug == "warmup"))
        assert assignment is not None
        for name, value in values.items():
            setattr(assignment, name, value)
        session.commit()


def audit_events(world: World, action: str) -> list[AuditEvent]:
    with world.session() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.action == action)))


# -- ranking ---------------------------------------------------------------------------------------------------


def test_ties_on_the_leaderboard_go_to_the_earlier_submission(world: World, sent: list[int]) -> None:
    bob_id = ranked(world, world.bob, 2.0)
    alice_id = ranked(world, world.alice, 2.0)
    assert rows(board(world, world.ta)) == [(1, "bob", 2.0), (2, "alice", 2.0)]
    # The submission time decides, not the id: alice's later row was submitted first.
    with world.session() as session:
        alice_submission, bob_submission = session.get(Submission, alice_id), session.get(Submission, bob_id)
        assert alice_submission is not None and bob_submission is not None
        alice_submission.submitted_at = bob_submission.submitted_at - timedelta(seconds=1)
        session.commit()
    assert rows(board(world, world.ta)) == [(1, "alice", 2.0), (2, "bob", 2.0)]


def test_a_tie_between_a_students_own_runs_keeps_the_earlier_submission(
    world: World, sent: list[int]
) -> None:
    first = ranked(world, world.alice, 2.0, minutes_ago=10)
    ranked(world, world.alice, 2.0)
    (entry,) = board(world, world.ta)["entries"]
    assert entry["submission_id"] == first


def test_only_correct_runs_with_a_finite_metric_rank(world: World, sent: list[int], carol: Account) -> None:
    ranked(world, world.alice, 3.0)
    ranked(world, world.alice, 0.5, score=9.0)  # faster, but one test failed
    ranked(world, world.bob, 0.1, score=7.0)  # nothing correct at all
    for metric in (float("inf"), float("nan"), None):
        ranked(world, carol, metric)
    not_a_number = ranked(world, carol, 1.0)
    with world.session() as session:
        submission = session.get(Submission, not_a_number)
        assert submission is not None
        submission.runs[0].metrics = {"softmax_ms": "fast"}
        session.commit()
    assert rows(board(world, world.ta)) == [(1, "alice", 3.0)]


def test_every_graded_run_of_a_submission_counts_not_only_the_latest(world: World, sent: list[int]) -> None:
    submission_id = ranked(world, world.alice, 2.0)
    finish(world, submission_id, score=10.0, metrics={"softmax_ms": 5.0}, purpose="regrade")
    (entry,) = board(world, world.ta)["entries"]
    assert (entry["metric"], entry["submission_id"]) == (2.0, submission_id)


def test_staff_submissions_stay_off_the_board(world: World, sent: list[int]) -> None:
    ranked(world, world.ta, 0.1)
    ranked(world, world.alice, 1.0)
    assert rows(board(world, world.ta)) == [(1, "alice", 1.0)]


# -- hardware classes ------------------------------------------------------------------------------------------


def test_each_hardware_class_has_its_own_board(world: World, sent: list[int], carol: Account) -> None:
    ranked(world, world.alice, 1.0)
    ranked(world, carol, 2.0)
    ranked(world, world.bob, 5.0)
    ranked(world, world.bob, 0.1, hardware="cuda:NVIDIA H100")
    default = board(world, world.ta)
    assert default["hardware"] == "cpu"
    assert default["hardware_classes"] == [
        {"name": "cpu", "entries": 3},
        {"name": "cuda:NVIDIA H100", "entries": 1},
    ]
    assert rows(default) == [(1, "alice", 1.0), (2, "carol", 2.0), (3, "bob", 5.0)]
    assert {entry["hardware"] for entry in default["entries"]} == {"cpu"}
    gpu = board(world, world.ta, hardware="cuda:NVIDIA H100")
    assert (gpu["hardware"], rows(gpu)) == ("cuda:NVIDIA H100", [(1, "bob", 0.1)])
    missing = world.client.get(
        BOARD.format(course=world.course), params={"hardware": "rocm:MI300X"}, headers=world.alice.headers
    )
    assert missing.status_code == 404
    assert "cpu, cuda:NVIDIA H100" in missing.json()["detail"]


def test_a_gpu_assignment_opens_on_its_gpu_board(world: World, sent: list[int], carol: Account) -> None:
    ranked(world, world.alice, 1.0)
    ranked(world, carol, 2.0)
    ranked(world, world.bob, 0.4, hardware="rocm:AMD Instinct MI300X")
    change_assignment(world, queue="gpu")
    body = board(world, world.alice)
    assert body["hardware"] == "rocm:AMD Instinct MI300X"
    assert [(entry["rank"], entry["you"]) for entry in body["entries"]] == [(1, False)]


def test_an_assignment_without_entries_has_an_empty_board(world: World) -> None:
    body = board(world, world.alice)
    assert (body["hardware"], body["hardware_classes"], body["entries"]) == (None, [], [])


# -- aliases ---------------------------------------------------------------------------------------------------


def set_alias(world: World, account: Account, alias: str | None) -> Any:
    return world.client.put(
        f"/api/courses/{world.course}/me/alias", json={"alias": alias}, headers=account.headers
    )


def test_students_see_aliases_and_pseudonyms_never_usernames(
    world: World, sent: list[int], carol: Account
) -> None:
    ranked(world, world.alice, 1.0)
    ranked(world, world.bob, 2.0)
    ranked(world, carol, 3.0)
    response = set_alias(world, world.alice, "  Speedy   Gonzales ")
    assert response.status_code == 200, response.text
    assert response.json() == {"alias": "Speedy Gonzales", "anonymous": False, "shown_as": "Speedy Gonzales"}

    as_bob = board(world, world.bob)
    text = json.dumps(as_bob)
    assert "alice" not in text and "carol" not in text
    first, second, third = as_bob["entries"]
    assert (first["name"], first["public_name"], first["anonymous"]) == ("Speedy Gonzales",) * 2 + (False,)
    assert first["submission_id"] is None and first["run_id"] is None
    assert (second["name"], second["you"], second["is_you"]) == ("bob", True, True)
    assert second["public_name"].startswith("anon-") and second["run_id"] is None
    assert third["name"].startswith("anon-") and third["anonymous"] and third["submission_id"] is None

    as_staff = board(world, world.ta)
    assert [(e["name"], e["public_name"]) for e in as_staff["entries"]] == [
        ("alice", "Speedy Gonzales"),
        ("bob", second["public_name"]),
        ("carol", third["name"]),
    ]
    assert all(entry["run_id"] and entry["submission_id"] for entry in as_staff["entries"])

    cleared = set_alias(world, world.alice, None)
    assert cleared.json()["anonymous"] is True
    assert board(world, world.bob)["entries"][0]["name"].startswith("anon-")


REFUSED_ALIASES = [
    ("ab", 400, "bad_alias"),
    ("x" * 41, 400, "bad_alias"),
    ("al!ce", 400, "bad_alias"),
    ("\u0430lice", 400, "bad_alias"),  # a Cyrillic a
    ("a\u200bb\u200bc", 400, "bad_alias"),  # zero-width spaces
    ("...", 400, "bad_alias"),
    ("speedy gonzales", 409, "alias_taken"),  # carol's alias, in another case
    ("Speedy_Gonzales", 409, "alias_taken"),  # the same but for separators
    ("BOB", 409, "alias_taken"),  # another student's username
    ("Tina", 409, "alias_taken"),  # the TA's username
    ("p.r.o.f", 400, "reserved_alias"),  # the instructor's username, and a reserved word
    ("TA Tina", 400, "reserved_alias"),
    ("Course Staff", 400, "reserved_alias"),
    ("anon-3fa2b1", 400, "reserved_alias"),  # would pass for an anonymous student
]


def test_alias_rules_refuse_impersonation_and_duplicates(world: World, carol: Account) -> None:
    assert set_alias(world, carol, "Speedy Gonzales").status_code == 200
    assert set_alias(world, world.alice, "Original").status_code == 200
    for alias, status, code in REFUSED_ALIASES:
        response = set_alias(world, world.alice, alias)
        assert (response.status_code, response.json()["code"]) == (status, code), (alias, response.text)
        assert response.json()["detail"] and "bob" not in response.json()["detail"].lower()
    mine = world.client.get(f"/api/courses/{world.course}/me/alias", headers=world.alice.headers).json()
    assert mine["alias"] == "Original"  # nothing lost


def test_an_alias_may_be_the_students_own_username_or_chinese(world: World) -> None:
    assert set_alias(world, world.alice, "Alice").json()["alias"] == "Alice"
    assert set_alias(world, world.alice, "王小明").json()["alias"] == "王小明"
    assert set_alias(world, world.alice, "王小明").status_code == 200  # choosing it again changes nothing


def test_only_the_courses_students_choose_aliases(world: World) -> None:
    assert set_alias(world, world.ta, "Helpful Tina").status_code == 403
    assert set_alias(world, world.outsider, "Mallory").status_code == 404
    missing = world.client.put(
        "/api/courses/no-such-course/me/alias", json={"alias": "Speedy"}, headers=world.alice.headers
    )
    assert missing.status_code == 404


def test_staff_remove_an_offensive_alias_with_a_reason(world: World) -> None:
    set_alias(world, world.alice, "Rude Word")
    url = f"/api/courses/{world.course}/aliases/alice/clear"
    assert world.client.post(url, json={"reason": "x"}, headers=world.bob.headers).status_code == 403
    refused = world.client.post(url, json={"reason": "  "}, headers=world.ta.headers)
    assert refused.json()["code"] == "reason_required"
    assert world.client.post(url, json={"reason": "offensive"}, headers=world.ta.headers).status_code == 204
    mine = world.client.get(f"/api/courses/{world.course}/me/alias", headers=world.alice.headers).json()
    assert mine["anonymous"] is True
    (event,) = audit_events(world, "alias.clear")
    assert event.details["alias"] == "Rude Word" and event.details["reason"] == "offensive"


def _choose_alias(
    world: World, account: Account, alias: str, barrier: threading.Barrier, outcomes: list[str]
) -> None:
    with world.session() as session:
        course = session.scalar(select(Course).where(Course.slug == world.course))
        user = session.get(User, account.user_id)
        assert course is not None and user is not None
        barrier.wait()
        try:
            aliases.set_alias(session=session, course=course, user=user, alias=alias)
            session.commit()
            outcomes.append("ok")
        except Conflict:
            session.rollback()
            outcomes.append("taken")


@pytest.mark.postgres
def test_colliding_aliases_chosen_at_the_same_moment_go_to_one_student(
    configure: Callable[..., Settings], pg_database: str
) -> None:
    world = postgres_world(configure(database__url=pg_database))
    for round_no in range(4):
        barrier = threading.Barrier(2)
        outcomes: list[str] = []
        threads = [
            threading.Thread(target=_choose_alias, args=(world, account, name, barrier, outcomes))
            for account, name in ((world.alice, f"Racer {round_no}"), (world.bob, f"racer_{round_no}"))
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert sorted(outcomes) == ["ok", "taken"], outcomes


# -- hiding runs -----------------------------------------------------------------------------------------------


def standing(world: World, account: Account, submission_id: int) -> list[dict[str, Any]]:
    response = world.client.get(f"/api/submissions/{submission_id}/leaderboard", headers=account.headers)
    assert response.status_code == 200, response.text
    return list(response.json()["runs"])


def test_staff_hide_a_run_with_a_reason_and_it_stays_in_history(world: World, sent: list[int]) -> None:
    fast = ranked(world, world.alice, 1.0)
    ranked(world, world.alice, 3.0)
    (entry,) = board(world, world.ta)["entries"]
    assert entry["submission_id"] == fast
    run_id = entry["run_id"]

    hidden = world.client.post(
        f"/api/runs/{run_id}/hide", json={"reason": "  timing   anomaly "}, headers=world.ta.headers
    )
    assert hidden.status_code == 200, hidden.text
    assert hidden.json() == {
        "run_id": run_id,
        "submission_id": fast,
        "hidden": True,
        "hidden_reason": "timing anomaly",
        "hidden_by": "tina",
    }
    assert rows(board(world, world.ta)) == [(1, "alice", 3.0)]  # her next best run
    (event,) = audit_events(world, "run.hide")
    assert (event.target_id, event.details["reason"]) == (str(run_id), "timing anomaly")

    (student_view,) = standing(world, world.alice, fast)
    assert student_view["hidden"] and not student_view["eligible"]
    assert student_view["explanation"] == "Hidden from the leaderboard by staff: timing anomaly"
    assert student_view["run_id"] is None and student_view["hidden_by"] is None
    (staff_view,) = standing(world, world.ta, fast)
    assert (staff_view["run_id"], staff_view["hidden_by"], staff_view["hidden_reason"]) == (
        run_id,
        "tina",
        "timing anomaly",
    )

    restored = world.client.post(
        f"/api/runs/{run_id}/unhide", json={"reason": "re-checked"}, headers=world.instructor.headers
    )
    assert restored.status_code == 200 and restored.json()["hidden"] is False
    assert rows(board(world, world.ta)) == [(1, "alice", 1.0)]
    (event,) = audit_events(world, "run.unhide")
    assert event.details == {
        "submission_id": fast,
        "reason": "re-checked",
        "hidden_reason": "timing anomaly",
    }
    again = world.client.post(f"/api/runs/{run_id}/unhide", headers=world.ta.headers)
    assert (again.status_code, again.json()["code"]) == (409, "not_hidden")


def test_hiding_needs_staff_and_a_reason(world: World, sent: list[int]) -> None:
    submission_id = ranked(world, world.alice, 1.0)
    (run,) = standing(world, world.ta, submission_id)
    url = f"/api/runs/{run['run_id']}/hide"
    own = world.client.post(url, json={"reason": "mine"}, headers=world.alice.headers)
    assert own.status_code == 403
    for stranger in (world.bob, world.outsider):
        assert world.client.post(url, json={"reason": "x"}, headers=stranger.headers).status_code == 404
    assert (
        world.client.post("/api/runs/999999/hide", json={"reason": "x"}, headers=world.ta.headers).status_code
        == 404
    )
    blank = world.client.post(url, json={"reason": " \n "}, headers=world.ta.headers)
    assert (blank.status_code, blank.json()["code"]) == (400, "reason_required")
    assert world.client.post(url, json={}, headers=world.ta.headers).status_code == 422
    assert rows(board(world, world.ta)) == [(1, "alice", 1.0)]
    assert audit_events(world, "run.hide") == []


def test_the_standing_explains_why_a_run_does_not_rank(world: World, sent: list[int]) -> None:
    submission_id = ranked(world, world.alice, 0.5, score=9.0)
    finish(world, submission_id, score=10.0, metrics={}, purpose="regrade")
    wrong, untimed = standing(world, world.alice, submission_id)
    assert "only runs that pass every test" in wrong["explanation"] and not wrong["correct"]
    assert "no leaderboard time" in untimed["explanation"] and untimed["correct"]
    assert (
        world.client.get(
            f"/api/submissions/{submission_id}/leaderboard", headers=world.bob.headers
        ).status_code
        == 404
    )


# -- the final re-measurement ----------------------------------------------------------------------------------


@pytest.fixture
def contest(world: World, sent: list[int], carol: Account) -> dict[str, int]:
    """Four students: three on the CPU board, one alone on a GPU board; the top 2 of each are re-measured."""
    ids = {
        "alice": ranked(world, world.alice, 1.0),
        "bob": ranked(world, world.bob, 2.0),
        "carol": ranked(world, carol, 3.0),
        "dave": ranked(world, student(world, "dave"), 0.2, hardware="cuda:NVIDIA H100"),
    }
    change_assignment(world, remeasure_top_n=2, due_at=utcnow() + timedelta(hours=1))
    sent.clear()
    return ids


def run_sweeper(world: World) -> list[int]:
    with world.session() as session:
        return sweep(session=session, requeue_after_seconds=300, max_attempts=3).remeasured


def submissions_state(world: World) -> dict[int, tuple[str, int]]:
    with world.session() as session:
        return {s.id: (s.status.value, s.lane) for s in session.scalars(select(Submission))}


def test_the_sweeper_remeasures_the_top_entries_once_after_the_deadline(
    world: World, sent: list[int], contest: dict[str, int]
) -> None:
    assert run_sweeper(world) == []  # before the deadline
    change_assignment(world, due_at=utcnow() - timedelta(minutes=1))
    remeasured = run_sweeper(world)
    top = [contest["alice"], contest["dave"], contest["bob"]]
    assert sorted(remeasured) == sorted(top) and sorted(sent) == sorted(top)
    state = submissions_state(world)
    assert all(state[submission_id] == ("queued", 2) for submission_id in top)
    assert state[contest["carol"]] == ("graded", 0)  # third on its board: not re-measured
    assert board(world, world.alice)["remeasured_at"] is not None
    assert run_sweeper(world) == []  # once only
    assert sorted(sent) == sorted(top)


def test_an_extension_postpones_the_remeasurement(
    world: World, contest: dict[str, int], carol: Account
) -> None:
    change_assignment(world, due_at=utcnow() - timedelta(minutes=1))
    with world.session() as session:
        assignment = session.scalar(select(Assignment).where(Assignment.slug == "warmup"))
        assert assignment is not None
        session.add(
            Extension(
                assignment_id=assignment.id,
                user_id=carol.user_id,
                due_at=utcnow() + timedelta(days=1),
                reason="illness",
            )
        )
        session.commit()
    assert run_sweeper(world) == []
    assert all(lane == 0 for _, lane in submissions_state(world).values())


def test_the_final_measurement_decides_the_ranking(
    world: World, sent: list[int], contest: dict[str, int]
) -> None:
    change_assignment(world, due_at=utcnow() - timedelta(minutes=1))
    run_sweeper(world)
    alice_final = finish(
        world, contest["alice"], score=10.0, metrics={"softmax_ms": 4.0}, purpose="remeasure"
    )
    finish(world, contest["bob"], score=10.0, metrics={"softmax_ms": 2.5}, purpose="remeasure")
    finish(
        world,
        contest["dave"],
        score=10.0,
        metrics={"softmax_ms": 0.3},
        purpose="remeasure",
        hardware_class="cuda:NVIDIA H100",
    )
    body = board(world, world.ta)
    assert rows(body) == [(1, "bob", 2.5), (2, "carol", 3.0), (3, "alice", 4.0)]
    assert [entry["remeasured"] for entry in body["entries"]] == [True, False, True]
    assert rows(board(world, world.ta, hardware="cuda:NVIDIA H100")) == [(1, "dave", 0.3)]
    first, final = standing(world, world.alice, contest["alice"])
    assert "Replaced on the leaderboard by the final re-measurement" in first["explanation"]
    assert final["purpose"] == "remeasure" and final["eligible"]

    # Hiding the re-measured run brings the earlier measurement back.
    hide = world.client.post(
        f"/api/runs/{alice_final}/hide", json={"reason": "noisy neighbour"}, headers=world.ta.headers
    )
    assert hide.status_code == 200
    assert rows(board(world, world.ta))[0] == (1, "alice", 1.0)

    # A final measurement that no longer passes every test takes the submission off the board.
    finish(world, contest["bob"], score=9.0, metrics={"softmax_ms": 0.1}, purpose="remeasure")
    assert [name for _, name, _ in rows(board(world, world.ta))] == ["alice", "carol"]


def test_staff_remeasure_now(world: World, sent: list[int], contest: dict[str, int]) -> None:
    url = f"/api/courses/{world.course}/assignments/warmup/leaderboard/remeasure"
    assert world.client.post(url, headers=world.alice.headers).status_code == 403
    response = world.client.post(url, json={"top_n": 1}, headers=world.ta.headers)
    assert response.status_code == 200, response.text
    assert sorted(response.json()["requeued"]) == sorted([contest["alice"], contest["dave"]])
    assert sorted(sent) == sorted([contest["alice"], contest["dave"]])
    assert submissions_state(world)[contest["alice"]] == ("queued", 2)
    (event,) = audit_events(world, "leaderboard.remeasure")
    assert event.details["top_n"] == 1
    # Still queued from the first request: left alone, and said so.
    again = world.client.post(url, json={"top_n": 1}, headers=world.ta.headers).json()
    assert again["requeued"] == [] and sorted(again["skipped"]) == sorted([contest["alice"], contest["dave"]])
    change_assignment(world, remeasure_top_n=0)
    missing = world.client.post(url, headers=world.ta.headers)
    assert (missing.status_code, missing.json()["code"]) == (409, "no_top_n")


def test_a_queued_submission_keeps_its_earlier_runs_on_the_board(
    world: World, sent: list[int], contest: dict[str, int]
) -> None:
    url = f"/api/courses/{world.course}/assignments/warmup/leaderboard/remeasure"
    world.client.post(url, json={"top_n": 1}, headers=world.ta.headers)
    assert submissions_state(world)[contest["alice"]][0] == SubmissionStatus.queued
    assert rows(board(world, world.bob))[0][2] == 1.0


def _sweep_remeasurements(
    world: World, barrier: threading.Barrier, done: list[remeasure.Remeasurement]
) -> None:
    with world.session() as session:
        barrier.wait()
        done.extend(remeasure.remeasure_due(session=session, now=utcnow()))


@pytest.mark.postgres
def test_two_sweepers_at_once_remeasure_each_entry_once(
    configure: Callable[..., Settings], pg_database: str, sent: list[int]
) -> None:
    world = postgres_world(configure(database__url=pg_database))
    top = [ranked(world, world.alice, 1.0), ranked(world, world.bob, 2.0)]
    change_assignment(world, remeasure_top_n=2, due_at=utcnow() - timedelta(minutes=1))
    barrier = threading.Barrier(3)
    done: list[remeasure.Remeasurement] = []
    threads = [threading.Thread(target=_sweep_remeasurements, args=(world, barrier, done)) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    (only,) = done  # one sweeper claimed the assignment; the others found it taken
    assert sorted(submission.id for submission in only.requeued) == sorted(top) and only.skipped == []
    assert submissions_state(world) == {submission_id: ("queued", 2) for submission_id in top}
