"""The whole product as a student meets it: server and worker as real processes, the CLI, the sandbox.

The warm-up package is published from a copy with short time limits, as an instructor would do for a
quick assignment, so that the runaway-code cases finish in seconds.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.stack import REPO, Stack

pytestmark = [pytest.mark.slow, pytest.mark.sandbox]

PARTLY_WRONG = """
import torch

def softmax(x, dim=-1):
    e = torch.exp(x)  # no max subtraction: overflows on large logits
    return e / e.sum(dim=dim, keepdim=True)

def rms_norm(x, weight, eps=1e-6):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight
"""

CRASHES_ON_IMPORT = "import torch\nraise RuntimeError('my module is broken')\n"

LOOPS_FOREVER = """
def softmax(x, dim=-1):
    while True:
        pass

def rms_norm(x, weight, eps=1e-6):
    while True:
        pass
"""

SLOW_BUT_CORRECT = """
import time
import torch

_slept = False

def softmax(x, dim=-1):
    global _slept
    if not _slept:
        _slept = True
        time.sleep(3)  # under the 4 s call limit of the quick package
    e = torch.exp(x - x.amax(dim=dim, keepdim=True))
    return e / e.sum(dim=dim, keepdim=True)

def rms_norm(x, weight, eps=1e-6):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight
"""


def quick_package(tmp: Path) -> Path:
    package = tmp / "warmup"
    shutil.copytree(REPO / "graders" / "warmup", package, ignore=shutil.ignore_patterns("__pycache__"))
    manifest = package / "assignment.toml"
    text = manifest.read_text()
    text = re.sub(r"(?m)^time_limit_s\s*=.*$", "time_limit_s = 25", text)
    text = re.sub(r"(?m)^call_timeout_s\s*=.*$", "call_timeout_s = 4", text)
    manifest.write_text(text)
    return package


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("e2e")
    env = {
        "AUTOGRADER_ENV": "test",
        "AUTOGRADER_DATA_DIR": str(tmp / "var"),
        "AUTOGRADER_BROKER__SWEEP_INTERVAL_SECONDS": "1",
        "AUTOGRADER_BROKER__REQUEUE_AFTER_SECONDS": "30",
        "AUTOGRADER_WORKER__LEASE_SECONDS": "6",
        "AUTOGRADER_CLIENT_CONFIG": str(tmp / "client.json"),
    }
    for key in (
        "AUTOGRADER_SERVER",
        "AUTOGRADER_TOKEN",
        "AUTOGRADER_COURSE",
        "AUTOGRADER_DATABASE__URL",
        "AUTOGRADER_BROKER__URL",
    ):
        env[key] = ""
    stack = Stack(env, tmp)
    assert stack.cli("db", "upgrade").returncode == 0
    published = stack.cli("assignment", "publish", str(quick_package(tmp)))
    assert published.returncode == 0, published.stderr
    for name, role in (("alice", "student"), ("tina", "ta")):
        added = stack.cli("user", "add", name, "--role", role, "--password", f"{name}-password-123")
        assert added.returncode == 0, added.stderr
    stack.start_server()
    stack.start_worker()
    login = stack.cli(
        "login",
        "--server",
        stack.url,
        "--username",
        "alice",
        "--password-stdin",
        input_text="alice-password-123\n",
    )
    assert login.returncode == 0, login.stderr
    assert (tmp / "client.json").stat().st_mode & 0o777 == 0o600
    yield stack
    stack.stop()


def student_file(tmp_path: Path, source: str) -> Path:
    path = tmp_path / "warmup.py"
    path.write_text(source)
    return path


def test_reference_solution_gets_full_marks(stack: Stack) -> None:
    result = stack.cli("submit", "warmup", str(REPO / "graders" / "warmup" / "solution" / "warmup.py"))
    assert result.returncode == 0, result.stdout + result.stderr + stack.logs()
    assert re.search(r"graded 10/10", result.stdout), result.stdout
    assert "queued" in result.stdout or "running" in result.stdout  # progress was shown while waiting
    assert "softmax_ms" in result.stdout
    board = stack.cli("leaderboard", "warmup")
    assert board.returncode == 0
    assert re.search(r"^\s+1\s+alice\s+10/10.*<- you", board.stdout, re.M), board.stdout


def test_partly_wrong_solution_gets_partial_marks_and_names_the_failing_tests(
    stack: Stack, tmp_path: Path
) -> None:
    result = stack.cli("submit", "warmup", str(student_file(tmp_path, PARTLY_WRONG)))
    assert result.returncode == 0, result.stdout + result.stderr
    score = re.search(r"graded (\S+)/10", result.stdout)
    assert score is not None and 0 < float(score.group(1)) < 10, result.stdout
    failing = re.findall(r"\[FAIL\] (\S+)", result.stdout)
    hidden = re.search(r"hidden tests: (\d+)/(\d+) passed", result.stdout)
    assert failing or (hidden and hidden.group(1) != hidden.group(2)), result.stdout
    assert all("softmax" in name for name in failing), result.stdout


def test_code_that_crashes_on_import_fails_with_the_reason(stack: Stack, tmp_path: Path) -> None:
    result = stack.cli("submit", "warmup", str(student_file(tmp_path, CRASHES_ON_IMPORT)))
    assert result.returncode == 2
    assert "failed" in result.stdout
    assert "my module is broken" in result.stdout


def test_code_that_loops_forever_fails_within_the_time_limit(stack: Stack, tmp_path: Path) -> None:
    started = time.monotonic()
    result = stack.cli("submit", "warmup", str(student_file(tmp_path, LOOPS_FOREVER)))
    elapsed = time.monotonic() - started
    assert result.returncode == 2, result.stdout
    assert "failed" in result.stdout
    assert re.search(r"(longer than|time limit)", result.stdout), result.stdout
    assert elapsed < 25 + 30  # the package's time limit plus start-up and queueing


def test_killing_a_worker_mid_grading_records_exactly_one_result(stack: Stack, tmp_path: Path) -> None:
    submitted = stack.cli("submit", "warmup", str(student_file(tmp_path, SLOW_BUT_CORRECT)), "--no-wait")
    assert submitted.returncode == 0, submitted.stderr
    submission_id = int(re.search(r"Submission (\d+) accepted", submitted.stdout).group(1))  # type: ignore[union-attr]
    token = httpx.post(
        f"{stack.url}/api/auth/token", json={"username": "tina", "password": "tina-password-123"}
    ).json()["token"]
    headers = {"authorization": f"Bearer {token}"}

    def detail() -> dict:
        return httpx.get(f"{stack.url}/api/submissions/{submission_id}", headers=headers, timeout=10).json()

    deadline = time.monotonic() + 60
    while detail()["status"] != "running":
        assert time.monotonic() < deadline, stack.logs()
        time.sleep(0.2)
    time.sleep(1.0)  # inside the student's slow call
    stack.kill(stack.workers[-1])
    stack.start_worker()
    deadline = time.monotonic() + 90
    while (current := detail())["status"] not in ("graded", "failed", "error"):
        assert time.monotonic() < deadline, stack.logs()
        time.sleep(0.5)
    assert current["status"] == "graded", (current["status_message"], current["tests"])
    assert current["score"] == 10
    assert current["attempt"] == 2
    assert current["staff"]["runs"] == 1
