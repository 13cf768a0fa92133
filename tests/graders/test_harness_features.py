"""Harness features the course's assignments rely on: gradients through student autograd code, metrics recorded by
tests, GPU-only tests and benchmarks on a run without a GPU, and byte strings across the protocol."""

import textwrap
from pathlib import Path

import pytest
import torch

from graders.protocol import ProtocolError, pack_value, unpack_value

MANIFEST = """
slug = "features"
title = "Harness features"
version = "1.0.0"
summary = "A package that exercises call_grad, metrics, GPU-only tests and bytes."
queue = "gpu"
points = 6

[interface]
module = "feat"
functions = ["scaled_tanh", "detached", "merge_bytes"]

[submission]
allowed_files = ["feat.py"]
max_files = 1
max_upload_bytes = 65536
max_file_bytes = 65536

[limits]
time_limit_s = 120
call_timeout_s = 30
memory_mb = 2048
max_processes = 16

[leaderboard]
metric = "quality"
direction = "desc"
unit = "score"
label = "a metric recorded by a test"

[[tests]]
name = "gradients"
weight = 2
visibility = "visible"
description = "gradients of scaled_tanh with respect to x and the weight inside a dict"

[[tests]]
name = "detached_output"
weight = 1
visibility = "visible"
description = "an output cut off from autograd"

[[tests]]
name = "quality_metric"
weight = 1
visibility = "hidden"
description = "records a metric"

[[tests]]
name = "bytes_round_trip"
weight = 1
visibility = "visible"
description = "byte strings in and out"

[[tests]]
name = "big_on_gpu"
weight = 1
visibility = "hidden"
description = "only where there is a GPU"
requires = "gpu"
"""

TESTS = """
import torch

from graders.harness import Case, Context, Suite

suite = Suite()
suite.metric("quality", unit="score")


def _reference(x, params):
    return torch.tanh(x * params["weight"]) * params["scale"]


@suite.test("gradients")
def gradients(ctx: Context) -> None:
    x = ctx.randn(3, 4)
    params = {"weight": ctx.randn(4), "scale": 2.0}
    grad_output = ctx.randn(3, 4)
    out, (dx, dweight) = ctx.call_grad(
        "scaled_tanh", x, params, grad_output=grad_output, wrt=(0, (1, "weight"))
    )
    leaf_x, leaf_w = x.clone().requires_grad_(True), params["weight"].clone().requires_grad_(True)
    expected = _reference(leaf_x, {"weight": leaf_w, "scale": 2.0})
    expected.backward(grad_output)
    ctx.check_close(out, expected.detach(), what="scaled_tanh")
    ctx.check_close(dx, leaf_x.grad, what="the gradient with respect to x")
    ctx.check_close(dweight, leaf_w.grad, what="the gradient with respect to the weight")


@suite.test("detached_output")
def detached_output(ctx: Context) -> None:
    x = ctx.randn(5)
    ctx.call_grad("detached", x, grad_output=torch.ones(5), wrt=(0,))


@suite.test("quality_metric")
def quality_metric(ctx: Context) -> None:
    ctx.metric("quality", 0.75)


@suite.test("bytes_round_trip")
def bytes_round_trip(ctx: Context) -> None:
    merged = ctx.call("merge_bytes", [b"\\xff\\x00", b"a"])
    ctx.check(merged == b"\\xff\\x00a", "merge_bytes must concatenate the byte strings")


@suite.test("big_on_gpu")
def big_on_gpu(ctx: Context) -> None:
    ctx.check(ctx.device.type == "cuda", "this test only runs on a GPU")


@suite.benchmark("tanh_ms", unit="ms", requires="gpu", min_reps=2, max_reps=3)
def tanh_speed(ctx: Context) -> Case:
    x = ctx.randn(64, 64, device=ctx.device)
    return Case("scaled_tanh", (x, {"weight": torch.ones(64, device=ctx.device), "scale": 1.0}),
                expected=torch.tanh(x))
"""

SOLUTION = """
import torch


def scaled_tanh(x, params):
    return torch.tanh(x * params["weight"]) * params["scale"]


def detached(x):
    return (x * 2).detach()


def merge_bytes(parts):
    return b"".join(parts)
"""

WRONG_WEIGHT_GRADIENT = """
import torch


class _WrongBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight):
        ctx.save_for_backward(x, weight)
        return x * weight

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        return grad * weight, (grad * x).sum(0) * 2  # the weight's gradient is doubled


def scaled_tanh(x, params):
    return torch.tanh(_WrongBackward.apply(x, params["weight"])) * params["scale"]


def detached(x):
    return (x * 2).detach()


def merge_bytes(parts):
    return b"".join(parts)
"""


@pytest.fixture(scope="module")
def package_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("features")
    (root / "assignment.toml").write_text(MANIFEST)
    (root / "tests.py").write_text(TESTS)
    (root / "handout").mkdir()
    (root / "handout" / "README.md").write_text("# Features\n")
    (root / "handout" / "feat.py").write_text(
        textwrap.dedent(
            """
            def scaled_tanh(x, params):
                raise NotImplementedError


            def detached(x):
                raise NotImplementedError


            def merge_bytes(parts):
                raise NotImplementedError
            """
        )
    )
    return root


@pytest.mark.skipif(torch.cuda.is_available(), reason="asserts what a run without a GPU reports")
def test_solution_passes_runs_metrics_and_skips_gpu_parts_clearly(grade_package, package_dir):
    graded = grade_package(package_dir, {"feat.py": SOLUTION}, benchmarks=True)
    report = graded.report
    assert report.status == "graded"
    assert graded.failed_tests() == {"detached_output", "big_on_gpu"}
    detached_message = graded.outcome("detached_output").message
    assert "does not depend on the inputs through autograd" in detached_message
    skipped = graded.outcome("big_on_gpu")
    assert skipped.skipped and skipped.score == 0 and "needs a GPU and this run had none" in skipped.message
    assert report.metrics == {"quality": 0.75}  # the GPU-only benchmark was not timed
    assert any("need a GPU and were not run" in note and "big_on_gpu" in note for note in report.notes)
    assert any(note == "Not timed without a GPU: tanh_ms." for note in report.notes)
    assert "graded without a GPU: 1 GPU test(s) not run" in report.flags
    assert report.score == 4


def test_a_wrong_backward_fails_only_the_gradient_it_gets_wrong(grade_package, package_dir):
    graded = grade_package(package_dir, {"feat.py": WRONG_WEIGHT_GRADIENT})
    message = graded.outcome("gradients").message
    assert "the gradient with respect to the weight does not match" in message
    assert "gradients" in graded.failed_tests()


def test_byte_strings_cross_the_protocol_both_ways():
    value = {"vocab": [b"\x00\xff", b""], "text": "b"}
    packed, tensors = pack_value(value)
    assert unpack_value(packed, tensors) == value
    with pytest.raises(TypeError, match="reserved key"):
        pack_value({"$bytes": "AA=="})
    with pytest.raises(ProtocolError, match="malformed byte string"):
        unpack_value({"$bytes": "not base64!"}, {})


def _context(package_dir: Path, *, visible: bool):
    import io

    from graders.harness import Context, _Session
    from graders.package import load_package
    from graders.protocol import Channel

    session = _Session(load_package(package_dir), Channel(io.BytesIO(), io.BytesIO()), 7)
    return Context(session, "case", visible=visible)


@pytest.mark.parametrize(
    ("actual", "complaint"),
    [
        ([torch.ones(2), {"wq": torch.zeros(3)}], r"the output\[1\]\['wq'\] does not match"),
        ([torch.ones(2), {}], r"the output\[1\] does not have the expected keys: missing 'wq'"),
        ([torch.ones(2)], r"the output is not a list of 2 items \(got a list of 1\)"),
        ([torch.ones(2, dtype=torch.int64), {"wq": torch.ones(3)}], r"the output\[0\] has dtype torch.int64"),
    ],
    ids=["nested-value", "missing-key", "length", "dtype"],
)
def test_check_matches_names_the_place_of_a_nested_difference(package_dir, actual, complaint):
    from graders.harness import TestFailure

    ctx = _context(package_dir, visible=False)
    with pytest.raises(TestFailure, match=complaint):
        ctx.check_matches(actual, (torch.ones(2), {"wq": torch.ones(3)}))


def test_check_matches_compares_bytes_exactly_and_floats_with_tolerance(package_dir):
    from graders.harness import TestFailure

    ctx = _context(package_dir, visible=False)
    ctx.check_matches([b"ab", 1.0 + 1e-9, 3], [b"ab", 1.0, 3])
    with pytest.raises(TestFailure, match=r"the output\[0\] is not the expected value$"):
        ctx.check_matches([b"ac"], [b"ab"])
    with pytest.raises(TestFailure, match="an integer too large"):
        ctx.check_matches(10**400, 1.0)


def test_a_timed_output_is_checked_however_nested(package_dir):
    from graders.harness import CallResult, Case, TestFailure, _check_output

    ctx = _context(package_dir, visible=False)
    case = Case("f", expected=None)
    expected = [torch.ones(2), {"grad": torch.ones(2)}]
    good = CallResult([torch.ones(2), {"grad": torch.ones(2)}], (), 0.0, None)
    bad = CallResult([torch.ones(2), {"grad": torch.zeros(2)}], (), 0.0, None)
    _check_output(ctx, case, expected, good)
    with pytest.raises(TestFailure, match=r"the output of f\[1\]\['grad'\]"):
        _check_output(ctx, case, expected, bad)
