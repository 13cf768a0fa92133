"""A student's way through the warm-up in a real browser, against the real server and worker: log in,
upload the solution, watch it being graded live (no reload), read the per-test results and find the
highlighted row on the leaderboard; refused files explain themselves and keep the page. Screenshots of the
student pages for the README.

The graded submissions are shared with the staff tests (conftest runs this module before theirs).
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING

import pytest

from server.pages.i18n import translator
from tests.browser.conftest import (
    GRADING_TIMEOUT_MS,
    OTHER_STUDENT,
    PHONE,
    STUDENT,
    WARMUP,
    WARMUP_SOLUTION,
    Shared,
    log_in,
    shoot,
    speaking,
    submission_id,
)

if TYPE_CHECKING:
    from playwright.sync_api import FilePayload, Page

expect = pytest.importorskip("playwright.sync_api").expect
zh = translator("zh")

WARMUP_TITLE = "Warm-up: softmax and RMSNorm"
VISIBLE_TESTS = ["rms_norm_basic", "softmax_basic", "softmax_other_dim"]
HIDDEN_TESTS = ["softmax_large_logits", "softmax_half_precision", "rms_norm_eps", "rms_norm_batch_3d"]

# Every document the browser opens notes the status of the live part when it loads and after each htmx swap:
# one list that goes from queued/running to graded proves the page changed by itself, without a reload.
WATCH_STATUS = """
window.__statuses = [];
const note = () => {
  const live = document.getElementById("submission-status");
  if (live) window.__statuses.push(live.dataset.status);
};
document.addEventListener("DOMContentLoaded", note);
document.addEventListener("htmx:afterSettle", note);
"""

# A file dropped onto the upload zone, as the browser does it: a DataTransfer on dragenter, dragover and drop.
DROP_FILE = """(zone, [name, text]) => {
  const data = new DataTransfer();
  data.items.add(new File([text], name, { type: "text/x-python" }));
  for (const type of ["dragenter", "dragover", "drop"]) {
    zone.dispatchEvent(new DragEvent(type, { bubbles: true, cancelable: true, dataTransfer: data }));
  }
}"""


def _file(name: str, mime_type: str, data: bytes) -> FilePayload:
    return {"name": name, "mimeType": mime_type, "buffer": data}


def _changes(statuses: list[str]) -> list[str]:
    """The statuses in the order seen, each run of repeats as one."""
    return [status for i, status in enumerate(statuses) if i == 0 or statuses[i - 1] != status]


def test_a_student_uploads_the_solution_and_watches_it_graded_live(page: Page, shared: Shared) -> None:
    page.add_init_script(WATCH_STATUS)
    log_in(page, STUDENT)
    page.goto("/dashboard")
    card = page.locator("[data-testid=assignment-card][data-slug=warmup]")
    expect(card.get_by_test_id("best-score")).to_have_text("No score yet")
    card.get_by_role("link", name=WARMUP_TITLE).click()
    expect(page.get_by_role("heading", level=1)).to_have_text(WARMUP_TITLE)
    expect(page.get_by_test_id("no-history")).to_be_visible()

    page.get_by_label("Choose files").set_input_files(WARMUP_SOLUTION)
    expect(page.get_by_test_id("upload-selected")).to_contain_text("warmup.py")
    expect(page.get_by_test_id("upload-error")).to_be_hidden()
    page.get_by_role("button", name="Submit").click()
    submission = submission_id(page)
    expect(page.get_by_role("heading", level=1)).to_have_text(f"Submission #{submission}")

    results = page.get_by_test_id("submission-results")
    results.wait_for(timeout=GRADING_TIMEOUT_MS)
    seen = _changes(page.evaluate("window.__statuses"))
    assert seen[0] in ("queued", "running"), seen  # the page opened before the grading ended ...
    assert seen[-1] == "graded", seen  # ... and the same document (no reload) ends graded
    assert set(seen) <= {"queued", "running", "graded"}, seen
    expect(page.get_by_test_id("live-announcer")).to_contain_text("Graded")  # read out by screen readers
    expect(results.get_by_test_id("status-badge")).to_have_text("Graded")
    expect(results.get_by_test_id("score")).to_have_text("10 / 10")

    # Visible tests one by one; hidden (and after-the-deadline) tests only as counts.
    rows = results.get_by_test_id("test-row")
    assert sorted(rows.evaluate_all("rows => rows.map(row => row.dataset.test)")) == VISIBLE_TESTS
    assert rows.evaluate_all("rows => rows.map(row => row.dataset.passed)") == ["true"] * len(VISIBLE_TESTS)
    expect(rows.first.get_by_role("cell").first).to_have_text("Passed")
    expect(results.get_by_test_id("hidden-summary")).to_have_text(
        "Hidden tests: 5 of 5 passed, 6 / 6 points."
    )
    shown = results.inner_text()
    assert not [name for name in HIDDEN_TESTS if name in shown]
    expect(results.get_by_test_id("standing")).to_contain_text("You are ranked #1")
    shared.submissions[STUDENT.username] = submission
    shoot(page, "submission-desktop", docs=True, max_height=1500)


def test_a_second_student_drops_the_solution_onto_the_page(page: Page, shared: Shared) -> None:
    log_in(page, OTHER_STUDENT)
    page.goto(WARMUP)
    zone = page.get_by_test_id("dropzone")
    zone.evaluate(DROP_FILE, ["warmup.py", WARMUP_SOLUTION.read_text()])
    expect(page.get_by_test_id("upload-selected")).to_contain_text("warmup.py")
    expect(page.get_by_test_id("upload-error")).to_be_hidden()
    assert page.get_by_label("Choose files").evaluate("input => input.files[0].name") == "warmup.py"
    expect(page.get_by_label("Choose files")).to_be_focused()
    page.get_by_role("button", name="Submit").click()
    submission = submission_id(page)
    expect(page.get_by_test_id("file-name")).to_have_text(["warmup.py"])  # the dropped file arrived
    status = page.locator("#submission-status").get_attribute("data-status")
    assert status in ("queued", "running", "graded")
    shared.submissions[OTHER_STUDENT.username] = submission  # graded while the next tests run


def test_wrong_oversized_or_broken_files_are_refused_on_the_page(page: Page) -> None:
    log_in(page, STUDENT)
    page.goto(WARMUP)
    url = page.url
    history = page.get_by_test_id("history-row").count()
    choose = page.get_by_label("Choose files")
    error = page.get_by_test_id("upload-error")

    # The page checks names and sizes as soon as a file is chosen ...
    choose.set_input_files(files=[_file("notes.txt", "text/plain", b"my notes")])
    expect(error).to_have_text(
        "notes.txt: This assignment does not accept this file name. Accepted: warmup.py."
    )
    expect(choose).to_have_attribute("aria-invalid", "true")
    page.get_by_role("button", name="Submit").click()  # and does not send them
    expect(error).to_be_visible()
    assert page.url == url

    too_big = b"# padding\n" * (300 * 1024 // 10)
    choose.set_input_files(files=[_file("warmup.py", "text/x-python", too_big)])
    expect(error).to_have_text("warmup.py: This file is larger than the 256 KiB allowed per file.")
    shoot(page, "upload-error-desktop", max_height=1200)

    # ... and what only the server can tell (an archive that is not one) comes back into the same place,
    # with the file still chosen, so that nothing is lost.
    choose.set_input_files(files=[_file("warmup.zip", "application/zip", b"this is not a zip archive")])
    expect(error).to_be_hidden()
    page.get_by_role("button", name="Submit").click()
    expect(error.locator("[data-code]")).to_have_text("The archive could not be read.")
    expect(choose).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_role("button", name="Submit")).to_be_enabled()
    assert page.url == url
    assert choose.evaluate("input => input.files[0].name") == "warmup.zip"
    assert page.get_by_test_id("history-row").count() == history  # nothing was stored


def _wait_for_rows(page: Page, count: int) -> None:
    """Reload the leaderboard until it has ``count`` rows (another student's run may still be grading)."""
    deadline = time.monotonic() + GRADING_TIMEOUT_MS / 1000
    rows = page.get_by_test_id("board-row")
    while rows.count() < count and time.monotonic() < deadline:
        time.sleep(1)
        page.reload()
    expect(rows).to_have_count(count)


def test_the_leaderboard_highlights_the_students_row(
    page: Page, graded_submission: int, shared: Shared
) -> None:
    log_in(page, STUDENT)
    page.goto(WARMUP)
    expect(page.get_by_test_id("counted-score")).to_contain_text("10 / 10")
    history = page.locator(f"[data-testid=history-row][data-submission='{graded_submission}']")
    expect(history.get_by_test_id("status-badge")).to_have_text("Graded")
    shoot(page, "assignment-desktop", docs=True, max_height=1500)

    page.get_by_test_id("leaderboard-link").click()
    expect(page.get_by_role("heading", level=1)).to_have_text(f"Leaderboard: {WARMUP_TITLE}")
    _wait_for_rows(page, 2 if OTHER_STUDENT.username in shared.submissions else 1)
    mine = page.locator("#my-row")
    expect(mine).to_have_attribute("aria-current", "true")
    expect(mine).to_have_class(re.compile(r"\bmine\b"))
    expect(mine).to_contain_text("(you)")
    expect(mine.get_by_role("link", name=f"submission #{graded_submission}")).to_be_visible()
    # Highlighted: a background of its own, which no other row has.
    backgrounds = page.get_by_test_id("board-row").evaluate_all(
        "rows => rows.map(row => [row.id, getComputedStyle(row).backgroundColor])"
    )
    mine_background = next(color for row_id, color in backgrounds if row_id == "my-row")
    assert mine_background not in ("rgba(0, 0, 0, 0)", "transparent")
    assert all(color != mine_background for row_id, color in backgrounds if row_id != "my-row")
    others = page.locator("[data-testid=board-row]:not(#my-row)")
    for i in range(others.count()):
        expect(others.nth(i)).not_to_contain_text(OTHER_STUDENT.username)  # a pseudonym, not the username
    page.get_by_test_id("leaderboard-chart").locator("canvas").first.wait_for()
    shoot(page, "leaderboard-desktop", docs=True)

    page.goto("/dashboard")
    card = page.locator("[data-testid=assignment-card][data-slug=warmup]")
    expect(card.get_by_test_id("best-score")).to_have_text("10 / 10")
    shoot(page, "dashboard-desktop", docs=True)


def test_the_student_pages_fit_a_phone_in_chinese(phone: Page, graded_submission: int) -> None:
    log_in(phone, STUDENT)
    pages = [
        ("/dashboard", "dashboard-phone", zh("student.dashboard.title")),
        (WARMUP, "assignment-phone", WARMUP_TITLE),
        (
            f"/submissions/{graded_submission}",
            "submission-phone",
            zh("student.submission.title", id=graded_submission),
        ),
        (f"{WARMUP}/leaderboard", "leaderboard-phone", zh("student.board.title", title=WARMUP_TITLE)),
    ]
    with speaking(phone, "zh"):
        for path, name, heading in pages:
            phone.goto(path)
            expect(phone.get_by_role("heading", level=1)).to_have_text(heading)
            assert phone.evaluate("document.documentElement.scrollWidth") <= PHONE["width"], path
            shoot(phone, name, docs=True, max_height=PHONE["height"])
