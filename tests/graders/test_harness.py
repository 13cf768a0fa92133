"""The harness API tests.py is written against: seeding, checks and their student-facing messages, and what
happens when tests.py itself is broken."""

import io
import re
import shutil
from pathlib import Path

import pytest
import torch

from graders.harness import (
    CallResult,
    Context,
    GraderError,
    Suite,
    TestFailure,
    _Session,
    derive_seed,
    grade,
    load_suite,
)
from graders.package import load_package
from graders.protocol import Channel
from tests.graders import students
from tests.graders.conftest import start_runner


def make_context(package, *, visible: bool, seed: int = 5, name: str = "case") -> Context:
    session = _Session(package, Channel(io.BytesIO(), io.BytesIO()), seed)
    return Context(session, name, visible=visible)


def test_seeds_are_per_test_and_reproducible(warmup_package):
    assert derive_seed(1, "a") == derive_seed(1, "a")
    assert len({derive_seed(1, "a"), derive_seed(1, "b"), derive_seed(2, "a")}) == 3
    first = make_context(warmup_package, visible=True, seed=9).randn(4)
    again = make_context(warmup_package, visible=True, seed=9).randn(4)
    other = make_context(warmup_package, visible=True, seed=10).randn(4)
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_randn_draws_in_float32_then_casts(warmup_package):
    ctx = make_context(warmup_package, visible=True)
    half = ctx.randn(3, 4, dtype=torch.float16, scale=2.0)
    assert half.dtype == torch.float16 and half.shape == (3, 4) and half.device.type == "cpu"


@pytest.mark.parametrize(
    ("actual", "complaint"),
    [
        ([0.5, 0.5], "is a list, expected a torch.Tensor"),
        (torch.ones(3), r"has shape \(3,\), expected \(2,\)"),
        (torch.ones(2, dtype=torch.float64), "has dtype torch.float64, expected torch.float32"),
    ],
    ids=["list", "shape", "dtype"],
)
def test_check_close_validates_type_shape_and_dtype_first(warmup_package, actual, complaint):
    ctx = make_context(warmup_package, visible=False)
    with pytest.raises(TestFailure, match=complaint):
        ctx.check_close(actual, torch.ones(2))


def test_check_close_on_a_hidden_test_reports_error_size_only(warmup_package):
    ctx = make_context(warmup_package, visible=False)
    expected = torch.tensor([0.125, 0.25, 0.625])
    with pytest.raises(TestFailure) as failure:
        ctx.check_close(torch.tensor([0.125, 0.75, 0.625]), expected, what="softmax(x)")
    message = str(failure.value)
    assert "softmax(x) does not match the expected values: 1 of 3 elements differ" in message
    assert "largest absolute error 0.5 at index [1]" in message
    assert "0.25" not in message and "0.75" not in message


def test_check_close_on_a_visible_test_shows_the_values(warmup_package):
    ctx = make_context(warmup_package, visible=True)
    with pytest.raises(TestFailure, match=re.escape("at index [1] expected 0.25, got 0.75")):
        ctx.check_close(torch.tensor([0.125, 0.75]), torch.tensor([0.125, 0.25]))


def test_check_close_counts_nan_where_a_finite_value_was_expected(warmup_package):
    ctx = make_context(warmup_package, visible=False)
    with pytest.raises(
        TestFailure, match="2 of them NaN or infinite where a finite value was expected"
    ) as failure:
        ctx.check_close(torch.tensor([float("nan"), float("inf"), 1.0]), torch.tensor([0.5, 0.5, 1.0]))
    assert "largest absolute error" not in str(failure.value)


def test_check_close_reports_finite_values_where_nan_was_expected(warmup_package):
    ctx = make_context(warmup_package, visible=False)
    with pytest.raises(TestFailure, match="1 of them finite where NaN or infinity was expected"):
        ctx.check_close(torch.tensor([0.0, 1.0]), torch.tensor([float("nan"), 1.0]))


def test_check_close_accepts_matching_nan_and_default_tolerances(warmup_package):
    ctx = make_context(warmup_package, visible=False)
    ctx.check_close(torch.tensor([float("nan"), 1.0 + 1e-7]), torch.tensor([float("nan"), 1.0]))
    ctx.check_close(torch.tensor([1.0004]).half(), torch.tensor([1.0]).half())


def test_check_close_compares_integer_tensors_exactly(warmup_package):
    ctx = make_context(warmup_package, visible=False)
    with pytest.raises(TestFailure, match="does not match exactly: 1 of 3 elements differ"):
        ctx.check_close(torch.tensor([1, 2, 4]), torch.tensor([1, 2, 3]))


def test_check_not_mutated_names_the_argument(warmup_package):
    ctx = make_context(warmup_package, visible=False)
    ctx.check_not_mutated(CallResult(None, (), 0.0, None), "f")
    with pytest.raises(TestFailure, match=r"f modified its input \(args\[1\]\) in place"):
        ctx.check_not_mutated(CallResult(None, ("args[1]",), 0.0, None), "f")


def test_suite_refuses_duplicate_registrations():
    suite = Suite()
    suite.test("a")(lambda ctx: None)
    with pytest.raises(ValueError, match="registered twice"):
        suite.test("a")(lambda ctx: None)
    with pytest.raises(ValueError, match="unit"):
        suite.benchmark("speed", unit="fortnights")


def test_load_suite_needs_a_suite(tmp_path):
    (tmp_path / "tests.py").write_text("cases = []\n")
    with pytest.raises(GraderError, match="must define `suite = Suite\\(\\)`"):
        load_suite(tmp_path)


def test_a_broken_tests_py_raises_grader_error_not_a_student_failure(runner_dir, tmp_path: Path):
    package_dir = tmp_path / "warmup"
    shutil.copytree(students.WARMUP, package_dir, ignore=shutil.ignore_patterns("__pycache__"))
    tests_py = package_dir / "tests.py"
    tests_py.write_text(
        tests_py.read_text().replace(
            "    for shape in [(1, 8), (4, 16), (7, 33), (32, 128)]:",
            "    {}['oops']\n    for shape in []:",
            1,
        )
    )
    package = load_package(package_dir)
    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / "warmup.py").write_text(students.SOLUTION)
    expected = re.escape("test 'softmax_basic' of warmup raised KeyError")
    with start_runner(runner_dir, workdir, "warmup") as runner, pytest.raises(GraderError, match=expected):
        grade(package, runner.channel, seed=1, benchmarks=False)
