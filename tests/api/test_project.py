"""The final project: uploads of code and a PDF report, graded by the staff against the package's rubric."""

from __future__ import annotations

import io
import zipfile

import pytest
from sqlalchemy import select

from server.audit.models import AuditEvent
from tests.conftest import Account, World

PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"
FULL_MARKS = {"problem": 10, "implementation": 30, "experiments": 30, "analysis": 20, "report": 10}


def upload(world: World, account: Account, files: list[tuple[str, bytes]]):
    return world.client.post(
        f"/api/courses/{world.course}/assignments/project/submissions",
        files=[("files", (name, content)) for name, content in files],
        headers=account.headers,
    )


def score(world: World, account: Account, submission_id: int, scores: list[dict]):
    return world.client.put(
        f"/api/submissions/{submission_id}/rubric", json={"scores": scores}, headers=account.headers
    )


@pytest.fixture
def project_submission(world: World) -> int:
    response = upload(world, world.alice, [("report.pdf", PDF), ("code/main.py", b"print('hi')\n")])
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


def test_the_project_is_published_with_its_rubric_deadline_and_points(world: World):
    body = world.client.get(
        f"/api/courses/{world.course}/assignments/project", headers=world.alice.headers
    ).json()
    assert body["grading"] == "manual" and body["points"] == 100 and body["queue"] == "manual"
    assert body["due_at"].startswith("2027-06-27T15:59:00")
    assert body["required_files"] == ["report.pdf"]
    assert [criterion["name"] for criterion in body["rubric"]] == list(FULL_MARKS)
    assert sum(criterion["points"] for criterion in body["rubric"]) == 100
    assert body["tests"] == [] and body["leaderboard"] is None
    settings = world.client.get(
        f"/api/courses/{world.course}/assignments/project/settings", headers=world.instructor.headers
    ).json()
    assert settings["weight"] == 20  # from the package's weight, a share of the course total


def test_an_upload_is_received_for_staff_grading_not_queued(world: World, project_submission: int):
    body = world.client.get(f"/api/submissions/{project_submission}", headers=world.alice.headers).json()
    assert body["status"] == "received" and body["queue_position"] is None
    assert body["files"] == ["code/main.py", "report.pdf"]
    assert "grade it by rubric" in body["status_message"]


@pytest.mark.parametrize(
    ("files", "code", "complaint"),
    [
        ([("code/main.py", b"x = 1\n")], "missing_files", "missing report.pdf"),
        ([("report.pdf", b"<html>not a pdf</html>")], "not_a_pdf", "report.pdf is not a PDF file"),
        ([("report.pdf", PDF), ("slides.pptx", b"x")], "name_not_allowed", "slides.pptx"),
    ],
    ids=["no-report", "fake-pdf", "stray-file"],
)
def test_bad_uploads_are_refused_with_the_reason(world: World, files, code, complaint):
    response = upload(world, world.alice, files)
    assert response.status_code == 400
    assert response.json()["code"] == code and complaint in response.json()["detail"]


def test_only_staff_enter_rubric_scores(world: World, project_submission: int):
    response = score(
        world, world.alice, project_submission, [{"criterion": "problem", "points": 10, "comment": "me"}]
    )
    assert response.status_code == 403
    response = score(
        world, world.bob, project_submission, [{"criterion": "problem", "points": 10, "comment": "x"}]
    )
    assert response.status_code == 404


@pytest.mark.parametrize(
    ("entry", "code"),
    [
        ({"criterion": "vibes", "points": 5, "comment": "nice"}, "unknown_criterion"),
        ({"criterion": "problem", "points": 11, "comment": "too many"}, "points_out_of_range"),
        ({"criterion": "problem", "points": -1, "comment": "negative"}, "points_out_of_range"),
        ({"criterion": "problem", "points": 5, "comment": "   "}, "comment_required"),
    ],
    ids=["unknown", "over-max", "negative", "no-comment"],
)
def test_bad_rubric_scores_are_refused_and_nothing_is_saved(
    world: World, project_submission: int, entry, code
):
    good = {"criterion": "analysis", "points": 12, "comment": "fine"}
    response = score(world, world.ta, project_submission, [good, entry])
    assert response.status_code == 400 and response.json()["code"] == code
    rubric = world.client.get(
        f"/api/submissions/{project_submission}/rubric", headers=world.ta.headers
    ).json()
    assert all(criterion["points"] is None for criterion in rubric["criteria"])


def test_partial_then_complete_rubric_grades_the_submission_and_the_student_sees_why(
    world: World, project_submission: int
):
    first = score(
        world, world.ta, project_submission, [{"criterion": "problem", "points": 8, "comment": "Clear."}]
    )
    assert first.status_code == 200
    assert first.json()["complete"] is False and first.json()["status"] == "received"
    rest = [
        {"criterion": name, "points": points - 1, "comment": f"{name}: one point off"}
        for name, points in FULL_MARKS.items()
        if name != "problem"
    ]
    done = score(world, world.ta, project_submission, rest)
    assert done.status_code == 200 and done.json()["complete"] is True
    # Changing one score later recomputes the total.
    again = score(
        world,
        world.instructor,
        project_submission,
        [{"criterion": "problem", "points": 9.5, "comment": "Re-read: clearer."}],
    )
    assert again.json()["score"] == 9.5 + 29 + 29 + 19 + 9

    seen = world.client.get(
        f"/api/submissions/{project_submission}/rubric", headers=world.alice.headers
    ).json()
    problem = next(criterion for criterion in seen["criteria"] if criterion["name"] == "problem")
    assert problem == {
        **problem,
        "points": 9.5,
        "comment": "Re-read: clearer.",
        "grader": "prof",
        "max_points": 10,
    }
    summary = world.client.get(f"/api/submissions/{project_submission}", headers=world.alice.headers).json()
    assert summary["status"] == "graded" and summary["score"] == 95.5 and summary["max_score"] == 100
    with world.session() as session:
        events = session.scalars(select(AuditEvent).where(AuditEvent.action == "rubric.score")).all()
    assert len(events) == 6
    assert events[-1].details["before"] == {"points": 8, "comment": "Clear."}


def test_a_project_submission_cannot_be_regraded_by_a_worker(world: World, project_submission: int):
    response = world.client.post(f"/api/submissions/{project_submission}/regrade", headers=world.ta.headers)
    assert response.status_code == 409 and response.json()["code"] == "manual_grading"


def test_the_handout_downloads_as_a_zip_of_the_handout_only(world: World):
    response = world.client.get(
        f"/api/courses/{world.course}/assignments/warmup/handout.zip", headers=world.alice.headers
    )
    assert response.status_code == 200 and response.headers["content-type"] == "application/zip"
    names = zipfile.ZipFile(io.BytesIO(response.content)).namelist()
    assert sorted(names) == ["warmup/README.md", "warmup/test_public.py", "warmup/warmup.py"]
    again = world.client.get(
        f"/api/courses/{world.course}/assignments/warmup/handout.zip", headers=world.alice.headers
    )
    assert again.content == response.content  # deterministic
    outsider = world.client.get(
        f"/api/courses/{world.course}/assignments/warmup/handout.zip", headers=world.outsider.headers
    )
    assert outsider.status_code == 404
