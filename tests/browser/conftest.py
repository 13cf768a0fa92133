"""Browser tests: Debian's Chromium, driven by Playwright, against a real server and worker (tests/stack.py).

Skipped when chromium or playwright is missing (scripts/ensure-browser.sh installs chromium for `make test`).
Screenshots go to ``artifacts/screenshots`` (or $AUTOGRADER_ARTIFACTS); with UPDATE_DOCS_IMAGES=1 the ones the
README shows are copied to docs/images as well.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.stack import REPO, Stack

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
ARTIFACTS = Path(os.environ.get("AUTOGRADER_ARTIFACTS", REPO / "artifacts")) / "screenshots"
DOCS_IMAGES = REPO / "docs" / "images"

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


def shoot(page: object, name: str, *, docs: bool = False) -> Path:
    """A full-page screenshot into the artifact folder (and docs/images when refreshing the README's)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)  # type: ignore[attr-defined]
    if docs and os.environ.get("UPDATE_DOCS_IMAGES") == "1":
        DOCS_IMAGES.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, DOCS_IMAGES / path.name)
    return path
