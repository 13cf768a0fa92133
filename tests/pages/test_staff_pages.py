"""The TA and instructor pages as a browser sees them: who may open them, the submission list with its filters and
paging, a student's history, score overrides the student then sees, rubric grading, regrades, a new assignment
from a package and its settings, publishing, the roster, the charts and the queue."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from server import queue
from server.assignments.models import Assignment
from server.audit.models import AuditEvent
from server.auth.models import User
from server.courses.models import Enrollment, Role
from server.pages import staff_views
from server.submissions.models import Submission, SubmissionStatus
from tests.api.helpers import finish, submit
from tests.api.test_project import PDF, upload
from tests.conftest import Account, World
from tests.pages.conftest import csrf_of, log_in


def submitted(world: World, account: Account, content: bytes) -> int:
    response = submit(world, account, content)
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


def graded(world: World, account: Account, content: bytes, score: float, at: datetime | None = None) -> int:
    submission_id = submitted(world, account, content)
    finish(world, submission_id, score=score)
    if at is not None:
        with world.session() as session:
            session.execute(update(Submission).where(Submission.id == submission_id).values(submitted_at=at))
            session.commit()
    return submission_id


def set_assignment(world: World, slug: str = "warmup", **values: Any) -> None:
    with world.session() as session:
        session.execute(update(Assignment).where(Assignment.slug == slug).values(**values))
        session.commit()


def ids_in(html: str) -> list[int]:
    return [
        int(found) for found in re.findall(r'data-testid="submission-row" data-submission-id="(\d+)"', html)
    ]


def form_page(browser: TestClient, url: str) -> tuple[str, str]:
    response = browser.get(url)
    assert response.status_code == 200, response.text
    return response.text, csrf_of(response.text)


def test_a_student_gets_the_403_page_and_an_outsider_learns_nothing(
    browser: TestClient, world: World, solution_bytes: bytes
):
    own = submitted(world, world.alice, solution_bytes)
    course = world.course
    log_in(browser, world.alice)
    assert 'data-testid="nav-staff"' not in browser.get("/account").text
    for url in (
        "/staff",
        f"/staff/{course}/assignments/warmup",
        f"/staff/{course}/assignments/warmup/submissions",
        f"/staff/{course}/assignments/warmup/students/alice",
        f"/staff/{course}/assignments/warmup/settings",
        f"/staff/{course}/assignments/new",
        f"/staff/{course}/roster",
        f"/staff/{course}/queue",
        f"/staff/submissions/{own}",
    ):
        response = browser.get(url)
        assert response.status_code == 403, url
        assert response.headers["content-type"].startswith("text/html")
        assert (
            "Only the course&#39;s TAs and instructors" in response.text and "Traceback" not in response.text
        )
    token = csrf_of(browser.get("/account").text)
    refused = browser.post(
        f"/staff/submissions/{own}/override", data={"score": "10", "reason": "x", "csrf_token": token}
    )
    assert refused.status_code == 403
    browser.cookies.clear()
    log_in(browser, world.outsider)
    assert browser.get(f"/staff/{course}/assignments/warmup").status_code == 404
    assert browser.get(f"/staff/submissions/{own}").status_code == 404
    browser.cookies.clear()
    anonymous = browser.get("/staff/submissions/1", follow_redirects=False)
    assert anonymous.status_code == 303 and anonymous.headers["location"].startswith("/login?next=/staff/")


def test_a_ta_filters_and_pages_through_submissions(
    browser: TestClient, world: World, solution_bytes: bytes, monkeypatch: pytest.MonkeyPatch
):
    due = datetime.now(UTC) - timedelta(days=1)
    on_time = graded(world, world.alice, solution_bytes, 3.0, at=due - timedelta(hours=2))
    one_day_late = graded(world, world.alice, solution_bytes, 7.0, at=due + timedelta(hours=1))
    bob_on_time = graded(world, world.bob, solution_bytes, 5.0, at=due - timedelta(hours=1))
    too_late = graded(world, world.bob, solution_bytes, 10.0, at=due + timedelta(days=5))
    set_assignment(
        world, due_at=due, late_policy={"kind": "window", "per": "day", "penalty_percent": 10, "max_units": 3}
    )
    log_in(browser, world.ta)
    base = f"/staff/{world.course}/assignments/warmup/submissions"
    everything = browser.get(base).text
    assert ids_in(everything) == [too_late, bob_on_time, one_day_late, on_time]  # newest first
    assert "1 day late: 10% penalty" in everything and "5 days late: too late to count" in everything
    assert set(ids_in(browser.get(base, params={"student": "alice"}).text)) == {on_time, one_day_late}
    assert set(ids_in(browser.get(base, params={"late": "late"}).text)) == {one_day_late, too_late}
    assert ids_in(browser.get(base, params={"late": "too_late"}).text) == [too_late]
    assert set(ids_in(browser.get(base, params={"late": "on_time"}).text)) == {on_time, bob_on_time}
    # Scores are what a submission is worth: 7 one day late is 6.3, 10 too late is 0.
    assert set(ids_in(browser.get(base, params={"min_score": "5"}).text)) == {one_day_late, bob_on_time}
    assert set(ids_in(browser.get(base, params={"max_score": "4", "status": "graded"}).text)) == {
        on_time,
        too_late,
    }
    assert ids_in(browser.get(base, params={"status": "queued"}).text) == []

    bad = browser.get(base, params={"min_score": "lots", "max_score": "2"})
    assert bad.status_code == 400 and "Enter a number, e.g. 7.5." in bad.text
    assert 'value="lots"' in bad.text and 'aria-invalid="true" aria-describedby="min_score-error"' in bad.text
    inverted = browser.get(base, params={"min_score": "8", "max_score": "2"})
    assert inverted.status_code == 400 and "The lowest score is above the highest." in inverted.text

    monkeypatch.setattr(staff_views, "PAGE_SIZE", 3)
    first = browser.get(base).text
    assert (
        ids_in(first) == [too_late, bob_on_time, one_day_late]
        and "Showing 1\u20133 of 4 submissions." in first
    )
    following = re.search(r'href="\?([^"]+)" rel="next"', first).group(1)
    second = browser.get(f"{base}?{following.replace('&amp;', '&')}").text
    assert ids_in(second) == [on_time] and "Page 2 of 2" in second
    filtered = browser.get(base, params={"late": "late", "page": "1"}).text
    assert "Showing 1\u20132 of 2 submissions." in filtered

    history = browser.get(f"/staff/{world.course}/assignments/warmup/students/alice").text
    assert re.findall(r'data-testid="history-row" data-submission-id="(\d+)"', history) == [
        str(one_day_late),
        str(on_time),
    ]
    assert 'data-testid="student-score">6.3 / 10' in history


def test_a_ta_overrides_a_score_and_the_student_sees_it_with_the_reason(
    browser: TestClient, world: World, solution_bytes: bytes
):
    submission_id = graded(world, world.alice, solution_bytes, 7.0)
    log_in(browser, world.ta)
    url = f"/staff/submissions/{submission_id}"
    html, token = form_page(browser, url)
    assert 'data-testid="override-form"' in html and 'data-testid="test-results"' in html
    assert "softmax_secret_case" in html  # staff see hidden tests in full

    no_reason = browser.post(url + "/override", data={"score": "9.5", "reason": "  ", "csrf_token": token})
    assert no_reason.status_code == 400 and "A reason is required: the student sees it." in no_reason.text
    assert 'value="9.5"' in no_reason.text
    not_a_number = browser.post(
        url + "/override", data={"score": "nine", "reason": "grader bug in test 3", "csrf_token": token}
    )
    assert not_a_number.status_code == 400 and "Enter the new score as a number" in not_a_number.text
    assert ">grader bug in test 3</textarea>" in not_a_number.text and 'value="nine"' in not_a_number.text
    too_high = browser.post(url + "/override", data={"score": "11", "reason": "x", "csrf_token": token})
    assert too_high.status_code == 400 and "The score must be between 0 and 10." in too_high.text
    assert (
        browser.post(url + "/override", data={"score": "9", "reason": "x"}).status_code == 403
    )  # no CSRF token

    done = browser.post(
        url + "/override",
        data={"score": "9.5", "reason": "grader bug in test 3", "csrf_token": token},
        follow_redirects=False,
    )
    assert done.status_code == 303 and done.headers["location"] == f"{url}?done=override"
    shown = browser.get(done.headers["location"]).text
    assert 'data-testid="done-note"' in shown and "Overridden score: 9.5" in shown
    assert 'data-testid="override-reason">grader bug in test 3<' in shown

    grade = world.client.get(
        f"/api/courses/{world.course}/assignments/warmup/my-grade", headers=world.alice.headers
    ).json()
    assert grade["score"] == 9.5 and grade["counted"]["override"]["reason"] == "grader bug in test 3"
    browser.cookies.clear()
    log_in(browser, world.alice)
    own_page = browser.get(f"/submissions/{submission_id}").text
    assert "grader bug in test 3" in own_page and "9.5" in own_page
    with world.session() as session:
        event = session.scalar(select(AuditEvent).where(AuditEvent.action == "score.override"))
        assert event is not None and event.actor_id == world.ta.user_id and event.details["autograded"] == 7.0

    browser.cookies.clear()
    log_in(browser, world.ta)
    token = csrf_of(browser.get(url).text)
    removed = browser.post(url + "/override/remove", data={"reason": "", "csrf_token": token})
    assert removed.status_code == 400 and "A reason is required" in removed.text
    removed = browser.post(url + "/override/remove", data={"reason": "fixed the grader", "csrf_token": token})
    assert removed.status_code == 200 and "The override was removed" in removed.text


def test_a_ta_regrades_one_submission(
    browser: TestClient, world: World, solution_bytes: bytes, monkeypatch: pytest.MonkeyPatch
):
    submission_id = graded(world, world.alice, solution_bytes, 7.0)
    sent: list[tuple[int, str]] = []
    monkeypatch.setattr(
        queue, "enqueue_grading", lambda sid, *, queue, time_limit_s: sent.append((sid, queue))
    )
    log_in(browser, world.ta)
    url = f"/staff/submissions/{submission_id}"
    _, token = form_page(browser, url)
    done = browser.post(url + "/regrade", data={"csrf_token": token}, follow_redirects=False)
    assert done.status_code == 303 and sent == [(submission_id, "cpu")]
    with world.session() as session:
        submission = session.get(Submission, submission_id)
        assert submission.status == SubmissionStatus.queued and submission.lane == 1
        assert session.scalar(select(AuditEvent).where(AuditEvent.action == "submission.regrade")) is not None
    again = browser.post(url + "/regrade", data={"csrf_token": token})
    assert again.status_code == 409 and "still queued or running" in again.text and len(sent) == 1


def test_a_ta_grades_the_project_by_rubric(browser: TestClient, world: World):
    response = upload(world, world.alice, [("report.pdf", PDF)])
    submission_id = int(response.json()["id"])
    log_in(browser, world.ta)
    url = f"/staff/submissions/{submission_id}"
    html, token = form_page(browser, url)
    assert 'data-testid="rubric-form"' in html and 'data-testid="regrade-button"' not in html
    names = ("problem", "implementation", "experiments", "analysis", "report")
    wrong = browser.post(
        url + "/rubric",
        data={"csrf_token": token, "points_problem": "12", "comment_problem": "clear", "points_report": "5"},
    )
    assert wrong.status_code == 400 and "Enter points from 0 to 10." in wrong.text
    assert "A comment is required, so the student knows why." in wrong.text
    assert 'value="12"' in wrong.text and ">clear</textarea>" in wrong.text
    form = {"csrf_token": token}
    for name in names:
        form[f"points_{name}"] = "8"
        form[f"comment_{name}"] = f"good {name}"
    done = browser.post(url + "/rubric", data=form, follow_redirects=False)
    assert done.status_code == 303
    with world.session() as session:
        submission = session.get(Submission, submission_id)
        assert submission.status == SubmissionStatus.graded and submission.score == 40.0
    assert "The rubric scores were saved." in browser.get(done.headers["location"]).text


def test_an_instructor_creates_an_assignment_changes_its_deadline_and_exports_grades(
    browser: TestClient, world: World
):
    course = world.course
    log_in(browser, world.instructor)
    html, token = form_page(browser, f"/staff/{course}/assignments/new")
    assert 'data-testid="package-hw3-flashattention"' in html and 'data-testid="package-warmup"' not in html
    unchosen = browser.post(f"/staff/{course}/assignments/new", data={"csrf_token": token, "published": "1"})
    assert unchosen.status_code == 400 and "Choose one of the packages below." in unchosen.text
    assert 'name="published" value="1" checked' in unchosen.text  # the choice made stays
    created = browser.post(
        f"/staff/{course}/assignments/new",
        data={"csrf_token": token, "package": "hw3-flashattention"},
        follow_redirects=False,
    )
    settings_url = f"/staff/{course}/assignments/hw3-flashattention/settings"
    assert created.status_code == 303 and created.headers["location"] == settings_url + "?done=created"
    with world.session() as session:
        assignment = session.scalar(select(Assignment).where(Assignment.slug == "hw3-flashattention"))
        assert assignment is not None and not assignment.published

    html, token = form_page(browser, settings_url)
    assert 'data-testid="leaderboard-metric">Metric: fwd_bwd_ms (smaller is better)' in html
    fields = dict(
        re.findall(r'<input id="([a-z_]+)" name="\1" type="(?:text|datetime-local)" value="([^"]*)"', html)
    )
    fields.update(
        csrf_token=token, late_kind="window", late_per="day", counting="latest", leaderboard_enabled="1"
    )
    past = {
        **fields,
        "due_at": "2020-01-01T12:00",
        "late_penalty": "10",
        "late_max_units": "3",
        "title": "HW3 新",
    }
    refused = browser.post(settings_url, data=past)
    assert refused.status_code == 400
    assert "The deadline is in the past." in refused.text and 'value="2020-01-01T12:00"' in refused.text
    assert 'value="HW3 新"' in refused.text and 'value="10"' in refused.text  # what was typed stays
    assert 'aria-invalid="true" aria-describedby="due_at-help due_at-error"' in refused.text
    bad_numbers = browser.post(
        settings_url, data={**past, "due_at": "2099-01-01T12:00", "late_penalty": "150"}
    )
    assert bad_numbers.status_code == 400 and "Enter a penalty from 0 to 100 (percent)." in bad_numbers.text
    saved = browser.post(
        settings_url,
        data={**past, "due_at": "2099-03-21T23:59", "rate_limit_count": "5", "rate_limit_window_min": "60"},
        follow_redirects=False,
    )
    assert saved.status_code == 303 and saved.headers["location"] == settings_url + "?done=saved"
    with world.session() as session:
        assignment = session.scalar(select(Assignment).where(Assignment.slug == "hw3-flashattention"))
        assert assignment.due_at == datetime(2099, 3, 21, 15, 59, tzinfo=UTC)  # Asia/Shanghai wall clock
        assert assignment.title == "HW3 新" and assignment.rate_limit_count == 5
        assert assignment.late_policy == {
            "kind": "window",
            "per": "day",
            "penalty_percent": 10.0,
            "max_units": 3,
        }
    unchanged = browser.post(
        settings_url,
        data={**form_fields(browser.get(settings_url).text), "csrf_token": token},
        follow_redirects=False,
    )
    assert unchanged.status_code == 303 and unchanged.headers["location"].endswith("done=unchanged")

    published = browser.post(
        f"/staff/{course}/assignments/hw3-flashattention/publish",
        data={"csrf_token": token, "published": "1"},
        follow_redirects=False,
    )
    assert published.status_code == 303
    overview = browser.get(f"/staff/{course}/assignments/hw3-flashattention").text
    assert 'data-testid="visibility">Visible to students' in overview
    export = re.search(r'href="([^"]+/export/grades\.csv)"', overview).group(1)
    assert export == f"/api/courses/{course}/assignments/hw3-flashattention/export/grades.csv"
    csv = browser.get(export)
    assert csv.status_code == 200 and csv.headers["content-type"].startswith("text/csv")


def form_fields(html: str) -> dict[str, str]:
    """The values of a rendered settings form, as the browser would send them untouched."""
    values = dict(
        re.findall(r'<input id="([a-z_]+)" name="\1" type="(?:text|datetime-local)" value="([^"]*)"', html)
    )
    for name in re.findall(r'<input id="([a-z_]+)" name="\1" type="checkbox" value="1" checked', html):
        values[name] = "1"
    for name, body in re.findall(r'<select id="([a-z_]+)" name="\1"[^>]*>(.*?)</select>', html, re.S):
        values[name] = re.search(r'<option value="([^"]+)" selected', body).group(1)
    return values


def test_tas_cannot_use_the_instructors_pages(browser: TestClient, world: World):
    log_in(browser, world.ta)
    course = world.course
    for url in (f"/staff/{course}/assignments/warmup/settings", f"/staff/{course}/assignments/new"):
        response = browser.get(url)
        assert (
            response.status_code == 403 and "Only the course&#39;s instructors can do this." in response.text
        )
    roster = browser.get(f"/staff/{course}/roster")
    assert roster.status_code == 200 and 'data-testid="roster-import-form"' not in roster.text
    token = csrf_of(roster.text)
    assert (
        browser.post(f"/staff/{course}/roster/bob/role", data={"role": "ta", "csrf_token": token}).status_code
        == 403
    )
    overview = browser.get(f"/staff/{course}/assignments/warmup").text
    assert 'data-testid="settings-link"' not in overview and 'data-testid="publish-button"' not in overview


def test_an_instructor_imports_a_roster_and_changes_roles(browser: TestClient, world: World):
    course = world.course
    log_in(browser, world.instructor)
    _, token = form_page(browser, f"/staff/{course}/roster")
    bad_csv = "username,display_name,role\ncarol,Carol,student\nbad name!,X,wizard\n"
    refused = browser.post(f"/staff/{course}/roster/import", data={"csrf_token": token, "csv_text": bad_csv})
    assert refused.status_code == 400 and "Nothing was imported" in refused.text
    assert "Row 3" in refused.text and "bad name!,X,wizard\n</textarea>" in refused.text
    imported = browser.post(
        f"/staff/{course}/roster/import",
        data={"csrf_token": token, "csv_text": "username,display_name,role\ncarol,Carol,student\n"},
    )
    assert imported.status_code == 200 and "1 new account(s)" in imported.text
    assert re.search(
        r'data-testid="generated-passwords">.*<td>carol</td><td><code>\S+</code>', imported.text, re.S
    )
    changed = browser.post(
        f"/staff/{course}/roster/bob/role", data={"role": "ta", "csrf_token": token}, follow_redirects=False
    )
    assert changed.status_code == 303
    own = browser.post(f"/staff/{course}/roster/prof/role", data={"role": "student", "csrf_token": token})
    assert own.status_code == 400 and "You cannot change your own role in the course." in own.text
    with world.session() as session:
        roles = dict(
            session.execute(
                select(User.username, Enrollment.role).join(Enrollment, Enrollment.user_id == User.id)
            ).all()
        )
        assert roles["bob"] == Role.ta and roles["carol"] == Role.student and roles["prof"] == Role.instructor


def test_the_overview_charts_and_the_queue_page(browser: TestClient, world: World, solution_bytes: bytes):
    graded(world, world.alice, solution_bytes, 10.0)
    graded(world, world.bob, solution_bytes, 4.0)
    waiting = submitted(world, world.bob, solution_bytes)
    log_in(browser, world.ta)
    html = browser.get(f"/staff/{world.course}/assignments/warmup").text
    data = json.loads(
        re.search(r'<script type="application/json" id="chart-data">(.*?)</script>', html).group(1)
    )
    assert data["histogram"]["counts"] == [0, 0, 0, 0, 1, 0, 0, 0, 0, 1]  # bob's 4 and alice's 10 (of 10)
    assert sum(data["per_hour"]["counts"]) == 3
    assert 'data-testid="score-histogram"' in html and "charts.js" in html and "uplot-1.6.31.min.js" in html
    assert "2 of 2 students have a submission that counts." in html

    page = browser.get(f"/staff/{world.course}/queue").text
    assert 'hx-get="/staff/' in page and 'aria-live="polite"' in page
    row = re.search(r'data-testid="load-cpu-0">(.*?)</tr>', page, re.S).group(1)
    assert 'data-testid="load-queued">1<' in row
    assert "test-worker" in page  # seen through its recent runs
    panel = browser.get(f"/staff/{world.course}/queue/panel")
    assert panel.status_code == 200 and "<html" not in panel.text and 'data-testid="queue-load"' in panel.text
    assert waiting > 0


def test_staff_pages_speak_chinese_and_show_the_staff_link(browser: TestClient, world: World):
    log_in(browser, world.ta)
    home = browser.get("/staff", headers={"accept-language": "zh-CN,zh;q=0.9"})
    assert (
        home.status_code == 200
        and "<h1>教学管理</h1>" in home.text
        and 'data-testid="nav-staff"' in home.text
    )
    assert 'data-testid="assignment-row-warmup"' in home.text
    listing = browser.get(
        f"/staff/{world.course}/assignments/warmup/submissions",
        params={"min_score": "x"},
        headers={"accept-language": "zh-CN"},
    )
    assert "请输入数字" in listing.text
