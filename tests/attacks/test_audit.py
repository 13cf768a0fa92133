"""The arena's audit itself: a leak of each kind it looks for must be caught (no sandbox run needed)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.attacks.conftest import SECRET_KEY, Arena, Graded
from tests.conftest import REPO

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]

SEED = "8675309123456789012"
HIDDEN_MESSAGE = "rms_norm(x, weight, eps=0.0001) for x of shape (6, 48) does not match the expected values"


def clean() -> Graded:
    return Graded(
        name="control",
        submission_id=1,
        outcome="graded",
        source="def softmax(x, dim=-1): ...\n",
        elapsed_s=1.0,
        student={"staff": None, "tests": [], "failure_reason": None, "status": "graded", "score": 1.0},
        student_log="hello\n",
        log_truncated=False,
        staff={
            "staff": {"seed": SEED},
            "tests": [
                {"name": "rms_norm_eps", "visibility": "hidden", "passed": False, "message": HIDDEN_MESSAGE}
            ],
        },
    )


def leak_in_log(text: str) -> Graded:
    graded = clean()
    graded.student_log += text
    return graded


def leak_in_json(key: str, value: Any) -> Graded:
    graded = clean()
    graded.student = copy.deepcopy(graded.student)
    graded.student[key] = value
    return graded


def test_the_audit_catches_every_kind_of_leak(arena: Arena) -> None:
    arena.check_no_leaks(clean())
    tests_line = next(
        line.strip()
        for line in (REPO / "graders" / "warmup" / "tests.py").read_text().splitlines()
        if len(line.strip()) >= 30
    )
    hidden_description = next(t.description for t in arena.package.tests if t.visibility == "hidden")
    leaks = {
        "seed in the log": leak_in_log(f"my seed was {SEED}"),
        "secret in the log": leak_in_log(SECRET_KEY),
        "hidden test source": leak_in_log(tests_line),
        "hidden description": leak_in_json("notes", [hidden_description]),
        "hidden failure message": leak_in_json("failure_detail", HIDDEN_MESSAGE),
        "seed field": leak_in_json("extra", {"seed": "1"}),
        "staff view": leak_in_json("staff", {"worker": "w"}),
        "hidden test listed": leak_in_json("tests", [{"name": "rms_norm_eps"}]),
    }
    for what, graded in leaks.items():
        with pytest.raises(AssertionError):
            arena.check_no_leaks(graded)
            pytest.fail(f"the audit missed: {what}")
