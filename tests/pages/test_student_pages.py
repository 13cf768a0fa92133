"""The student pages as a browser sees them: dashboard, assignment page with upload, the live submission page
and its results, and the leaderboard."""

from __future__ import annotations

import json
import re
from datetime import timedelta

from sqlalchemy import func, select

from server.assignments.models import Assignment
from server.db import utcnow
from server.submissions import archive
from server.submissions.models import Blob, Submission, SubmissionStatus
from tests.api.helpers import finish, submit
from tests.conftest import World
from tests.pages.conftest import csrf_of, log_in

WARMUP = "/courses/llm-basics/assignments/warmup"
HTMX = {"hx-request": "true"}


def upload(browser, files: list[tuple[str, bytes]], *, path: str = WARMUP, headers=None):
    page = browser.get(path, headers=headers)
    return browser.post(
        f"{path}/submit",
        data={"csrf_token": csrf_of(page.text)},
        files=[("files", file) for file in files],
        headers=headers,
        follow_redirects=False,
    )


def change_assignment(world: World, slug: str = "warmup", **values) -> None:
    with world.session() as session:
        assignment = session.scalar(select(Assignment).where(Assignment.slug == slug))
        for key, value in values.items():
            setattr(assignment, key, value)
        session.commit()


def submission_count(world: World) -> int:
    with world.session() as session:
        return session.scalar(select(func.count()).select_from(Submission))


def test_the_dashboard_shows_deadline_lateness_best_score_and_submissions_left(
    browser, world: World, solution_bytes
):
    change_assignment(
        world,
        due_at=utcnow() - timedelta(hours=2),
        late_policy={"kind": "window", "per": "day", "penalty_percent": 10, "max_units": 3},
        rate_limit_count=3,
    )
    finish(world, submit(world, world.alice, solution_bytes).json()["id"], score=8.0)
    assert browser.get("/dashboard", follow_redirects=False).headers["location"] == "/login?next=/dashboard"
    log_in(browser, world.alice)
    html = browser.get("/dashboard").text
    card = html[html.index('data-slug="warmup"') :].split("</li>")[0]
    assert re.search(r'<time datetime="\d{4}-\d\d-\d\dT[^"]+">', card)
    assert "course time: " in card and "(UTC+08:00)" in card
    assert 'data-state="late"' in card and "1 day late: 10% penalty" in card
    assert "7.2 / 10" in card  # the best score counts the late penalty
    assert "2 of 3 submissions left" in card


def test_the_assignment_page_shows_the_task_handout_upload_form_and_public_tests_only(browser, world: World):
    log_in(browser, world.alice)
    html = browser.get(WARMUP).text
    assert re.search(r"<h3>[^<]*Warm-up: softmax and RMSNorm</h3>", html)  # the README's title, under the h2
    handout = re.search(r'<a href="([^"]+)" id="handout-link"', html).group(1)
    assert handout == "/api/courses/llm-basics/assignments/warmup/handout.zip"
    assert browser.get(handout).headers["content-type"] == "application/zip"  # the session cookie is enough
    start = html.index('id="upload-form"')
    form = html[start : html.index("</form>", start)]
    assert 'enctype="multipart/form-data"' in form and 'name="csrf_token"' in form and 'type="file"' in form
    assert 'accept=".py,.tar,.tar.gz,.tgz,.zip"' in form
    config = json.loads(re.search(r'id="upload-config">(.*?)</script>', html, re.S).group(1))
    assert config["allowed"] == ["warmup.py"] and config["max_upload_bytes"] == 1048576
    assert "RMSNorm of float32 matrices with a weight" in html  # a visible test's description
    # A hidden test's description is for the staff (the README may still say what is tested).
    assert "logits in the hundreds and thousands" not in html
    assert 'data-testid="no-history"' in html


def test_an_upload_from_the_page_is_followed_live_until_its_results_and_leaderboard_row(
    browser, world: World, solution_bytes
):
    log_in(browser, world.alice)
    sent = upload(browser, [("warmup.py", solution_bytes)])
    assert sent.status_code == 303
    page_url = sent.headers["location"]
    submission_id = int(page_url.rsplit("/", 1)[1])
    page = browser.get(page_url).text
    assert f'hx-get="/submissions/{submission_id}/status"' in page and 'hx-trigger="every 1s"' in page
    assert 'aria-live="polite"' in page and "softmax" in page  # the announcer, and the submitted file

    queued = browser.get(f"/submissions/{submission_id}/status", headers=HTMX)
    assert queued.status_code == 200 and 'data-status="queued"' in queued.text
    assert "Position 1 in the cpu queue" in queued.text and 'data-testid="elapsed"' in queued.text

    with world.session() as session:
        submission = session.get(Submission, submission_id)
        submission.status = SubmissionStatus.running
        submission.started_at = utcnow()
        submission.progress_total, submission.progress_done = 5, 2
        submission.current_test = "softmax_other_dim"
        session.commit()
    running = browser.get(f"/submissions/{submission_id}/status", headers=HTMX).text
    assert "Running test 3 of 5" in running and 'max="5" value="2"' in running
    assert "softmax_other_dim" in running and 'hx-trigger="every 1s"' in running

    finish(world, submission_id, score=10.0, metrics={"softmax_ms": 1.5, "softmax_ms_speedup": 2.0})
    done = browser.get(f"/submissions/{submission_id}/status", headers=HTMX)
    assert done.status_code == 286  # htmx stops polling and swaps the results in
    assert 'data-testid="submission-results"' in done.text and "hx-trigger" not in done.text
    row = re.search(r'data-test="softmax_basic" data-passed="true">(.*?)</tr>', done.text, re.S).group(1)
    assert ">ok<" in row
    assert "softmax_secret_case" not in done.text and "max abs error" not in done.text
    assert "Hidden tests: 1 of 2 passed, 5 / 8 points." in done.text
    assert "1.5 ms" in done.text and "2\u00d7 the reference" in done.text
    assert "You are ranked #1 of 1 on the cpu leaderboard." in done.text
    assert '<pre id="run-log" data-testid="run-log" tabindex="0">student output' in done.text

    board = browser.get(f"{WARMUP}/leaderboard").text
    mine = re.search(r'<tr data-testid="board-row" data-rank="1" class="mine"[^>]*>(.*?)</tr>', board, re.S)
    assert mine and "alice" in mine.group(1)


def test_the_status_fragment_sends_plain_visits_to_the_page_and_expired_sessions_to_login(
    browser, world: World, solution_bytes
):
    submission_id = submit(world, world.alice, solution_bytes).json()["id"]
    status_url = f"/submissions/{submission_id}/status"
    expired = browser.get(status_url, headers=HTMX, follow_redirects=False)
    assert expired.headers["hx-redirect"] == f"/login?next=/submissions/{submission_id}"
    log_in(browser, world.alice)
    plain = browser.get(status_url, follow_redirects=False)
    assert plain.status_code == 303 and plain.headers["location"] == f"/submissions/{submission_id}"


def test_a_file_the_assignment_does_not_accept_is_refused_with_a_translated_reason(browser, world: World):
    log_in(browser, world.alice)
    refused = upload(browser, [("notes.txt", b"hello")])
    assert refused.status_code == 400
    box = re.search(r'<div id="upload-error"[^>]*>(.*?)</div>', refused.text, re.S)
    assert " hidden" not in box.group(0)[: box.group(0).index(">")]
    assert "A file is not one this assignment accepts." in box.group(1) and "notes.txt" in box.group(1)
    assert 'aria-invalid="true"' in refused.text
    browser.get("/lang/zh")
    chinese = upload(browser, [("notes.txt", b"hello")])
    assert chinese.status_code == 400 and "有文件不是本作业接受的文件。" in chinese.text
    assert submission_count(world) == 0


def test_an_oversized_upload_is_refused_and_nothing_is_kept(browser, world: World):
    log_in(browser, world.alice)
    refused = upload(browser, [("warmup.py", b"#" * (1024 * 1024 + 1))])
    assert refused.status_code == 413 and "The upload is too large." in refused.text
    assert "Traceback" not in refused.text and submission_count(world) == 0


def test_an_upload_over_the_budget_says_when_the_next_one_is_allowed(browser, world: World, solution_bytes):
    change_assignment(world, rate_limit_count=1)
    log_in(browser, world.alice)
    assert upload(browser, [("warmup.py", solution_bytes)]).status_code == 303
    refused = upload(browser, [("warmup.py", solution_bytes)])
    assert refused.status_code == 429
    box = re.search(r'<div id="upload-error"[^>]*>(.*?)</div>', refused.text, re.S).group(1)
    assert "You have used every submission this assignment allows for now." in box
    assert re.search(r'Next one allowed at <time datetime="[^"]+">', box)
    assert "0 of 1 submissions left" in refused.text and submission_count(world) == 1


def test_the_upload_form_needs_its_csrf_token(browser, world: World, solution_bytes):
    log_in(browser, world.alice)
    refused = browser.post(f"{WARMUP}/submit", files=[("files", ("warmup.py", solution_bytes))])
    assert refused.status_code == 403 and refused.headers["content-type"].startswith("text/html")
    assert submission_count(world) == 0


def test_someone_elses_submission_and_a_course_one_is_not_in_are_not_found(
    browser, world: World, solution_bytes
):
    submission_id = submit(world, world.alice, solution_bytes).json()["id"]
    log_in(browser, world.bob)
    for path in (f"/submissions/{submission_id}", f"/submissions/{submission_id}/status"):
        page = browser.get(path, headers=HTMX)
        assert page.status_code == 404 and "Traceback" not in page.text
    browser.cookies.clear()
    log_in(browser, world.outsider)
    for path in (WARMUP, f"{WARMUP}/leaderboard"):
        assert browser.get(path).status_code == 404


def test_submitted_files_are_highlighted_with_names_escaped_and_binary_files_not_shown(browser, world: World):
    files = {
        "warmup.py": b"def softmax(x):\n    return '<script>alert(1)</script>'\n",
        "a<b>.py": b"x = 1\n",
        "blob.bin": b"\x00\x01\x02binary",
        "big.txt": b"y" * 150_000,
    }
    data = archive.pack(files)
    with world.session() as session:
        assignment = session.scalar(select(Assignment).where(Assignment.slug == "warmup"))
        session.add(Blob(sha256=archive.sha256_hex(data), size=len(data), data=data))
        submission = Submission(
            assignment_id=assignment.id,
            user_id=world.alice.user_id,
            archive_sha256=archive.sha256_hex(data),
            file_names=sorted(files),
            bundle_id=assignment.bundle_id,
            queue="cpu",
            status=SubmissionStatus.queued,
        )
        session.add(submission)
        session.commit()
        submission_id = submission.id
    log_in(browser, world.alice)
    html = browser.get(f"/submissions/{submission_id}").text
    assert '<span class="k">def</span>' in html and 'class="hl"' in html
    assert "<script>alert" not in html and "&lt;script&gt;" in html
    assert "a&lt;b&gt;.py" in html and "a<b>.py" not in html
    assert html.count('data-testid="binary-file"') == 1 and "\x00" not in html
    assert 'data-testid="file-truncated"' in html and "y" * 100_001 not in html


def test_a_staff_override_shows_the_new_score_and_reason_on_the_submission_and_assignment_pages(
    browser, world: World, solution_bytes
):
    submission_id = submit(world, world.alice, solution_bytes).json()["id"]
    finish(world, submission_id, score=7.0)
    reason = "Regraded by hand: the tolerance was too strict"
    changed = world.client.put(
        f"/api/submissions/{submission_id}/override",
        json={"score": 9.5, "reason": reason},
        headers=world.ta.headers,
    )
    assert changed.status_code == 200, changed.text
    log_in(browser, world.alice)
    page = browser.get(f"/submissions/{submission_id}").text
    assert "The course staff changed this score to 9.5." in page and reason in page
    assignment_page = browser.get(WARMUP).text
    grade = assignment_page[assignment_page.index('data-testid="grade-card"') :].split("</section>")[0]
    assert "9.5 / 10" in grade and reason in grade
    assert 'data-testid="history-override"' in assignment_page


def test_rubric_scores_and_comments_show_for_a_manually_graded_upload(browser, world: World):
    log_in(browser, world.alice)
    sent = upload(
        browser,
        [("report.pdf", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n")],
        path="/courses/llm-basics/assignments/project",
    )
    assert sent.status_code == 303
    submission_id = int(sent.headers["location"].rsplit("/", 1)[1])
    received = browser.get(sent.headers["location"]).text
    assert 'data-testid="submission-results"' in received and 'data-status="received"' in received
    assert 'data-testid="binary-file"' in received  # a PDF is never shown as text
    scores = [
        {"criterion": "problem", "points": 8, "comment": "Clear question; say what success looks like."}
    ]
    assert (
        world.client.put(
            f"/api/submissions/{submission_id}/rubric", json={"scores": scores}, headers=world.ta.headers
        ).status_code
        == 200
    )
    page = browser.get(f"/submissions/{submission_id}").text
    assert "Clear question; say what success looks like." in page and "8 / 10" in page
    assert "Not graded yet" in page  # the criteria still to be scored


def test_the_leaderboard_highlights_the_viewer_hides_other_names_and_carries_chart_data(
    browser, world: World, solution_bytes
):
    for account, times in ((world.bob, (2.0, 1.0)), (world.alice, (3.0,))):
        for ms in times:
            submission_id = submit(world, account, solution_bytes + f"\n# {ms}\n".encode()).json()["id"]
            finish(world, submission_id, score=10.0, metrics={"softmax_ms": ms, "softmax_ms_speedup": 4 / ms})
    log_in(browser, world.alice)
    html = browser.get(f"{WARMUP}/leaderboard").text
    rows = re.findall(r'<tr data-testid="board-row" data-rank="(\d)"([^>]*)>(.*?)</tr>', html, re.S)
    assert [rank for rank, _, _ in rows] == ["1", "2"]
    assert "bob" not in html and "anon-" in rows[0][2]
    assert 'class="mine"' in rows[1][1] and "alice" in rows[1][2] and "(you)" in rows[1][2]
    assert "4\u00d7" in rows[0][2] and "1.33\u00d7" in rows[1][2]
    chart = json.loads(re.search(r'id="leaderboard-data">(.*?)</script>', html, re.S).group(1))
    assert [(s["rank"], s["you"], len(s["points"])) for s in chart["series"]] == [(1, False, 2), (2, True, 1)]
    assert chart["series"][0]["points"][1][1] == 1.0 and chart["y_label"] == "softmax_ms (ms)"
    for asset in re.findall(r'(?:href|src)="(/static/[^"]+)"', html):
        assert browser.get(asset).status_code == 200, asset


def test_every_status_state_and_refusal_has_words_in_both_languages():
    """Keys built at run time (t("student.status.%s" | format(...))) escape the template scan: list them here."""
    from server.pages.i18n import catalog
    from server.pages.student import UPLOAD_ERROR_CODES

    families = {
        "student.status": [status.value for status in SubmissionStatus],
        "student.state": ["open", "no_deadline", "late", "closed", "not_open"],
        "student.visibility": ["visible", "hidden", "after_due"],
        "student.counting": ["latest", "best", "final"],
        "student.standing": ["eligible", "hidden", "superseded", "not_correct", "no_metric"],
        "student.upload.error": [*UPLOAD_ERROR_CODES, "other"],
        "student.late.day": ["one", "other"],
        "student.late.hour": ["one", "other"],
        **{f"student.duration.{unit}": ["one", "other"] for unit in ("day", "hour", "minute", "second")},
    }
    for language in ("en", "zh"):
        texts = catalog(language)
        keys = [f"{family}.{name}" for family, names in families.items() for name in names]
        assert [key for key in keys if key not in texts] == [], language
