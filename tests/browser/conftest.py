"""Browser tests: Debian's Chromium, driven by Playwright, against a real server and worker (tests/stack.py).

Skipped when chromium or playwright is missing (scripts/ensure-browser.sh installs chromium for `make test`).
Screenshots go to ``artifacts/screenshots`` (or $AUTOGRADER_ARTIFACTS); with UPDATE_DOCS_IMAGES=1 the ones the
README shows are copied to docs/images as well.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.stack import REPO, Stack

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
ARTIFACTS = Path(os.environ.get("AUTOGRADER_ARTIFACTS", REPO / "artifacts")) / "screenshots"
DOCS_IMAGES = REPO / "docs" / "images"
COURSE = "llm-basics"
WARMUP = f"/courses/{COURSE}/assignments/warmup"
WARMUP_SOLUTION = REPO / "graders" / "warmup" / "solution" / "warmup.py"
# Grading the warm-up takes seconds on an idle machine; a loaded 2-core runner needs far more.
GRADING_TIMEOUT_MS = 180_000
# Modules that leave state the later ones use (the student flow's graded submissions), in the order they run.
MODULE_ORDER = ("test_account_flows", "test_student_flow", "test_staff_flows")

playwright_api = pytest.importorskip("playwright.sync_api")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (scripts/ensure-browser.sh)"),
]


@dataclass(frozen=True)
class Person:
    username: str
    password: str


STUDENT = Person("alice", "alice-password-123")
OTHER_STUDENT = Person("bob", "bob-password-123")
TA = Person("tina", "tina-password-123")
INSTRUCTOR = Person("prof", "prof-password-123")


def quick_warmup(tmp: Path) -> Path:
    """The warm-up with short limits, so a grading finishes in seconds."""
    package = tmp / "warmup"
    shutil.copytree(REPO / "graders" / "warmup", package, ignore=shutil.ignore_patterns("__pycache__"))
    manifest = package / "assignment.toml"
    text = manifest.read_text()
    text = re.sub(r"(?m)^time_limit_s\s*=.*$", "time_limit_s = 60", text)
    text = re.sub(r"(?m)^call_timeout_s\s*=.*$", "call_timeout_s = 10", text)
    manifest.write_text(text)
    return package


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the browser modules in MODULE_ORDER (others after them), leaving every other test where it was."""
    here = Path(__file__).parent
    slots = [i for i, item in enumerate(items) if here in item.path.parents]

    def rank(item: pytest.Item) -> int:
        name = item.path.stem
        return MODULE_ORDER.index(name) if name in MODULE_ORDER else len(MODULE_ORDER)

    ordered = sorted((items[i] for i in slots), key=rank)  # stable: tests keep their order in a module
    for slot, item in zip(slots, ordered, strict=True):
        items[slot] = item


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("browser")
    env = {
        "AUTOGRADER_ENV": "test",
        "AUTOGRADER_DATA_DIR": str(tmp / "var"),
        "AUTOGRADER_BROKER__SWEEP_INTERVAL_SECONDS": "1",
        "AUTOGRADER_COURSE_TIMEZONE": "Asia/Shanghai",
    }
    for key in ("AUTOGRADER_DATABASE__URL", "AUTOGRADER_BROKER__URL"):
        env[key] = ""
    stack = Stack(env, tmp)
    assert stack.cli("db", "upgrade").returncode == 0
    for package in (quick_warmup(tmp), REPO / "graders" / "project"):
        published = stack.cli("assignment", "publish", str(package))
        assert published.returncode == 0, published.stderr
    for person, role in (
        (STUDENT, "student"),
        (OTHER_STUDENT, "student"),
        (TA, "ta"),
        (INSTRUCTOR, "instructor"),
    ):
        added = stack.cli("user", "add", person.username, "--role", role, "--password", person.password)
        assert added.returncode == 0, added.stderr
    stack.start_server()
    stack.start_worker()
    yield stack
    stack.stop()


@pytest.fixture(scope="session")
def chromium() -> Iterator[object]:
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def _page(chromium: object, stack: Stack, viewport: dict[str, int], locale: str) -> Iterator[object]:
    context = chromium.new_context(  # type: ignore[attr-defined]
        base_url=stack.url, viewport=viewport, locale=locale, timezone_id="Asia/Shanghai"
    )
    context.set_default_timeout(20_000)
    page = context.new_page()
    yield page
    context.close()


@pytest.fixture
def open_page(chromium: object, stack: Stack) -> Iterator[Callable[..., object]]:
    """Opens more fresh browser profiles in one test (a TA and a student side by side); closed afterwards."""
    opened: list[Iterator[object]] = []

    def open_one(viewport: dict[str, int] = DESKTOP, locale: str = "en-US") -> object:
        pages = _page(chromium, stack, viewport, locale)
        opened.append(pages)
        return next(pages)

    yield open_one
    for pages in opened:
        next(pages, None)


@pytest.fixture
def page(chromium: object, stack: Stack) -> Iterator[object]:
    """A fresh browser profile (no cookies) at desktop width, English."""
    yield from _page(chromium, stack, DESKTOP, "en-US")


@pytest.fixture
def phone(chromium: object, stack: Stack) -> Iterator[object]:
    """A fresh browser profile at phone width, Chinese."""
    yield from _page(chromium, stack, PHONE, "zh-CN")


def log_in(page: object, person: Person) -> None:
    page.goto("/login")  # type: ignore[attr-defined]
    page.get_by_label(re.compile("Username|用户名")).fill(person.username)  # type: ignore[attr-defined]
    page.get_by_label(re.compile("Password|密码")).fill(person.password)  # type: ignore[attr-defined]
    page.get_by_role("button", name=re.compile("Log in|登录")).click()  # type: ignore[attr-defined]
    page.wait_for_load_state()  # type: ignore[attr-defined]


@contextlib.contextmanager
def speaking(page: object, language: str) -> Iterator[None]:
    """The logged-in user's language switched (the switch saves it for the user, so it beats the browser's own
    language), and back to English afterwards, as the other tests expect of these accounts."""
    page.goto(f"/lang/{language}?next=/account")  # type: ignore[attr-defined]
    try:
        yield
    finally:
        page.goto("/lang/en?next=/account")  # type: ignore[attr-defined]


def shoot(page: object, name: str, *, docs: bool = False, max_height: int | None = None) -> Path:
    """A full-page screenshot into the artifact folder (and docs/images when refreshing the README's).

    ``max_height`` keeps only the top of a long page (the first screen of a phone, say), so that the images
    the README shows stay small.
    """
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    options: dict[str, object] = {"path": str(path), "full_page": True, "animations": "disabled"}
    if max_height is not None:
        width = page.evaluate("document.documentElement.clientWidth")  # type: ignore[attr-defined]
        height = page.evaluate("document.documentElement.scrollHeight")  # type: ignore[attr-defined]
        options["clip"] = {"x": 0, "y": 0, "width": width, "height": min(height, max_height)}
    page.screenshot(**options)  # type: ignore[attr-defined]
    if docs and os.environ.get("UPDATE_DOCS_IMAGES") == "1":
        DOCS_IMAGES.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, DOCS_IMAGES / path.name)
    return path


# -- submissions shared across tests ------------------------------------------------------------------


@dataclass
class Shared:
    """What one test leaves for later ones: each student's warm-up submission id, by username (alice's once
    the student flow saw it graded; bob's as soon as it is uploaded, graded while other tests run)."""

    submissions: dict[str, int] = field(default_factory=dict)


@pytest.fixture(scope="session")
def shared() -> Shared:
    return Shared()


def submission_id(page: object) -> int:
    """The id of the submission page the browser is on (after an upload's redirect)."""
    page.wait_for_url(re.compile(r"/submissions/\d+$"))  # type: ignore[attr-defined]
    return int(page.url.rsplit("/", 1)[1])  # type: ignore[attr-defined]


def wait_until_finished(page: object, submission: int) -> str:
    """Open a submission's page and wait until it shows its results (it updates itself); their status."""
    page.goto(f"/submissions/{submission}")  # type: ignore[attr-defined]
    results = page.get_by_test_id("submission-results")  # type: ignore[attr-defined]
    results.wait_for(timeout=GRADING_TIMEOUT_MS)
    return str(results.get_attribute("data-status"))


@pytest.fixture
def graded_submission(shared: Shared, open_page: Callable[..., object]) -> int:
    """alice's graded warm-up submission: the one the student flow saw graded, or one uploaded now when that
    module did not run first (a staff test run on its own)."""
    if STUDENT.username not in shared.submissions:
        page = open_page()
        log_in(page, STUDENT)
        page.goto(WARMUP)  # type: ignore[attr-defined]
        page.get_by_label("Choose files").set_input_files(WARMUP_SOLUTION)  # type: ignore[attr-defined]
        page.get_by_role("button", name="Submit").click()  # type: ignore[attr-defined]
        submission = submission_id(page)
        assert wait_until_finished(page, submission) == "graded"
        shared.submissions[STUDENT.username] = submission
    return shared.submissions[STUDENT.username]
