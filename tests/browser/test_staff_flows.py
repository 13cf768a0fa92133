"""The staff's side in a real browser, against the real server and worker: a TA overrides a score with a
reason and the student sees both; a student who opens a TA page gets the 403 page; the instructor creates an
assignment from a grader package, changes its deadline (a past one is refused with what was typed kept) and
exports the grades as CSV. Screenshots of the TA and instructor pages for the README.
"""

from __future__ import annotations

import csv
import io
import re
import tomllib
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import pytest

from server.pages.i18n import translator
from tests.browser.conftest import (
    COURSE,
    INSTRUCTOR,
    OTHER_STUDENT,
    PHONE,
    STUDENT,
    TA,
    WARMUP,
    Shared,
    log_in,
    shoot,
    speaking,
)
from tests.stack import REPO

if TYPE_CHECKING:
    from playwright.sync_api import Page

expect = pytest.importorskip("playwright.sync_api").expect
zh = translator("zh")

WARMUP_TITLE = "Warm-up: softmax and RMSNorm"
STAFF_WARMUP = f"/staff/{COURSE}/assignments/warmup"
HW1 = "hw1-tokenizer"
HW1_TITLE = tomllib.loads((REPO / "graders" / HW1 / "assignment.toml").read_text())["title"]
REASON = "Agreed by email: the rms_norm fix came a day late / 邮件确认 rms_norm 的修正晚交了一天"
GRADE_COLUMNS = [
    "username",
    "display_name",
    "submission_id",
    "submitted_at_utc",
    "submitted_at_local",
    "deadline_local",
    "late",
    "autograded_score",
    "late_multiplier",
    "override_score",
    "override_reason",
    "final_score",
    "max_score",
    "percent",
]


def test_a_ta_overrides_a_score_and_the_student_sees_the_score_and_reason(
    page: Page, open_page: Callable[..., Page], graded_submission: int
) -> None:
    log_in(page, TA)
    page.get_by_test_id("nav-staff").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Staff")
    page.get_by_test_id("assignment-row-warmup").get_by_role("link", name=WARMUP_TITLE).click()
    page.get_by_test_id("submissions-link").click()
    expect(page.get_by_role("heading", level=1)).to_have_text(f"Submissions: {WARMUP_TITLE}")
    row = page.locator(f"[data-testid=submission-row][data-submission-id='{graded_submission}']")
    expect(row).to_contain_text(STUDENT.username)
    expect(row.get_by_test_id("status-badge")).to_have_text("Graded")
    expect(row.get_by_test_id("row-score")).to_have_text("10 / 10")
    shoot(page, "ta-submissions-desktop", docs=True, max_height=1500)

    row.get_by_role("link", name=str(graded_submission), exact=True).click()
    page.wait_for_url(re.compile(rf"/staff/submissions/{graded_submission}$"))
    score = page.get_by_label("New score (0 to 10)")
    reason = page.get_by_label("Reason (the student reads it)")
    submit = page.get_by_role("button", name="Override the score")
    # Without a reason the override is refused, and the score typed stays in its field.
    score.fill("7.5")
    submit.click()
    expect(page.get_by_test_id("override-error")).to_have_text("A reason is required: the student sees it.")
    expect(score).to_have_value("7.5")
    expect(reason).to_have_attribute("aria-invalid", "true")
    reason.fill(REASON)
    submit.click()
    page.wait_for_url(re.compile(rf"/staff/submissions/{graded_submission}\?done=override$"))
    expect(page.get_by_test_id("done-note")).to_have_text(
        "The score was overridden. The student sees the new score and your reason."
    )
    expect(page.get_by_test_id("current-override")).to_contain_text("Overridden score: 7.5")
    expect(page.get_by_test_id("override-reason")).to_have_text(REASON)
    expect(page.get_by_test_id("effective-score")).to_contain_text("7.5 / 10")

    student = open_page()
    log_in(student, STUDENT)
    student.goto(f"/submissions/{graded_submission}")
    note = student.get_by_test_id("override")
    expect(note).to_contain_text("The course staff changed this score to 7.5.")
    expect(note.locator(".override-reason")).to_have_text(REASON)
    expect(student.get_by_test_id("counted-score")).to_contain_text("Counts as 7.5 / 10")
    student.goto(WARMUP)
    expect(student.get_by_test_id("counted-score")).to_contain_text("7.5 / 10")
    expect(student.get_by_test_id("override").locator(".override-reason")).to_have_text(REASON)
    history = student.locator(f"[data-testid=history-row][data-submission='{graded_submission}']")
    expect(history.get_by_test_id("history-override")).to_contain_text(REASON)


def test_a_student_who_opens_a_ta_page_gets_the_403_page(page: Page, shared: Shared) -> None:
    log_in(page, STUDENT)
    page.goto("/dashboard")
    expect(page.get_by_test_id("nav-staff")).to_have_count(0)
    paths = ["/staff", f"{STAFF_WARMUP}/submissions", f"{STAFF_WARMUP}/settings", f"/staff/{COURSE}/roster"]
    if STUDENT.username in shared.submissions:
        paths.append(f"/staff/submissions/{shared.submissions[STUDENT.username]}")
    for path in paths:
        response = page.goto(path)
        assert response is not None and response.status == 403, path
        expect(page.get_by_role("heading", level=1)).to_have_text("Not allowed")
        expect(page.get_by_role("alert")).not_to_be_empty()
        html = page.content()
        assert "Traceback" not in html and "Internal Server Error" not in html, path
        assert page.get_by_role("link", name="Back to the start page").is_visible()
    shoot(page, "forbidden-desktop")


def _course_clock_input(days: int) -> str:
    """A datetime-local value ``days`` from now on the course's clock, at 23:59."""
    day = datetime.now(ZoneInfo("Asia/Shanghai")).date() + timedelta(days=days)
    return f"{day.isoformat()}T23:59"


def test_the_instructor_creates_an_assignment_and_changes_its_deadline(page: Page, phone: Page) -> None:
    log_in(page, INSTRUCTOR)
    page.goto("/staff")
    page.get_by_test_id("new-assignment-link").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("New assignment")
    expect(page.get_by_test_id("package-warmup")).to_have_count(0)  # already an assignment of the course

    # Nothing chosen: refused, with the tick kept.
    visible = page.get_by_label("Visible to students at once")
    visible.check()
    page.get_by_role("button", name="Create the assignment").click()
    expect(page.get_by_test_id("new-error")).to_have_text("Choose one of the packages below.")
    expect(visible).to_be_checked()
    visible.uncheck()
    page.get_by_label(HW1_TITLE).check()
    page.get_by_role("button", name="Create the assignment").click()
    page.wait_for_url(re.compile(rf"/staff/{COURSE}/assignments/{HW1}/settings\?done=created$"))
    expect(page.get_by_test_id("done-note")).to_have_text(
        "The assignment was created from its package. Check its settings below."
    )
    expect(page.get_by_test_id("visibility")).to_have_text("Students cannot see this assignment yet.")

    # A deadline in the past is refused; the form keeps everything typed and says what to fix.
    title = page.get_by_label("Title", exact=True)
    deadline = page.get_by_label("Deadline", exact=True)
    title.fill("HW1: BPE tokenizer (spring)")
    deadline.fill("2020-01-01T12:00")
    page.get_by_role("button", name="Save settings").click()
    summary = page.get_by_test_id("settings-errors")
    expect(summary).to_contain_text("The settings were not saved. Fix these:")
    expect(summary).to_be_focused()
    expect(page.get_by_test_id("error-due_at")).to_have_text(
        "The deadline is in the past. Choose a later one, or tick “I mean this past deadline”."
    )
    expect(deadline).to_have_attribute("aria-invalid", "true")
    expect(deadline).to_have_value(re.compile(r"^2020-01-01T12:00(:00)?$"))
    expect(title).to_have_value("HW1: BPE tokenizer (spring)")
    shoot(page, "settings-error-desktop", max_height=1200)

    due = _course_clock_input(120)
    deadline.fill(due)
    page.get_by_role("button", name="Save settings").click()
    page.wait_for_url(re.compile(rf"/staff/{COURSE}/assignments/{HW1}/settings\?done=saved$"))
    expect(page.get_by_test_id("done-note")).to_have_text(
        "The settings were saved. Grades follow the new rules at once."
    )
    expect(deadline).to_have_value(re.compile(rf"^{due}(:00)?$"))
    expect(title).to_have_value("HW1: BPE tokenizer (spring)")
    shoot(page, "settings-desktop", docs=True, max_height=1500)

    page.goto(f"/staff/{COURSE}/assignments/{HW1}")
    expect(page.get_by_role("heading", level=1)).to_have_text("HW1: BPE tokenizer (spring)")
    day, clock = due.split("T")
    expect(page.get_by_test_id("deadline")).to_contain_text(f"course time: {day} {clock}:00 CST")

    log_in(phone, INSTRUCTOR)
    with speaking(phone, "zh"):
        phone.goto(f"/staff/{COURSE}/assignments/{HW1}/settings")
        expect(phone.get_by_role("heading", level=1)).to_have_text(
            zh("staff.settings.title", title="HW1: BPE tokenizer (spring)")
        )
        assert phone.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        shoot(phone, "settings-phone", docs=True, max_height=PHONE["height"])


def test_the_instructor_exports_the_grades_as_csv(page: Page) -> None:
    log_in(page, INSTRUCTOR)
    page.goto(STAFF_WARMUP)
    expect(page.get_by_role("heading", level=1)).to_have_text(WARMUP_TITLE)
    shown = page.get_by_test_id(f"grade-row-{STUDENT.username}").get_by_role("cell").first.inner_text()
    with page.expect_download() as info:
        page.get_by_role("link", name="Export grades (CSV)").click()
    download = info.value
    assert download.suggested_filename.endswith(".csv")
    data = download.path().read_bytes()
    assert data.startswith(b"\xef\xbb\xbf")  # the BOM spreadsheets need for UTF-8
    rows = list(csv.DictReader(io.StringIO(data.decode("utf-8-sig"))))
    assert list(rows[0]) == GRADE_COLUMNS
    by_name = {row["username"]: row for row in rows}
    assert {STUDENT.username, OTHER_STUDENT.username} <= set(by_name)
    assert TA.username not in by_name and INSTRUCTOR.username not in by_name
    alice = by_name[STUDENT.username]
    if alice["submission_id"]:
        # The CSV agrees with the page: the final score (after any override) out of 10.
        assert shown.startswith(f"{float(alice['final_score']):g} / 10"), (shown, alice)
        assert alice["max_score"] in ("10", "10.0")
    else:
        assert shown == "Nothing submitted", shown


def test_the_ta_pages_fit_a_phone_in_chinese(phone: Page, graded_submission: int) -> None:
    log_in(phone, TA)
    with speaking(phone, "zh"):
        phone.goto(f"{STAFF_WARMUP}/submissions")
        expect(phone.get_by_role("heading", level=1)).to_have_text(
            zh("staff.submissions.title", title=WARMUP_TITLE)
        )
        expect(phone.locator(f"[data-submission-id='{graded_submission}']")).to_be_visible()
        assert phone.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        shoot(phone, "ta-submissions-phone", docs=True, max_height=1500)
