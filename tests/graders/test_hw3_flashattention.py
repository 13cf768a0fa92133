"""Self-test of the HW3 package (FlashAttention in Triton): the solution passes every test it can run here, the
handout scores zero, planted bugs lose exactly the tests that cover them, and the GPU-only parts say so.

Without a GPU the student's kernels run in Triton's interpreter inside the runner, so every grading here costs
a few seconds; the GPU tests and the leaderboard are reported as not run. On a GPU machine the same tests grade
the GPU tests too, and a test marked ``gpu`` checks that the leaderboard ranks a slower kernel behind.
"""

import subprocess
from collections.abc import Callable

import pytest
import torch

from graders.harness import NEEDS_GPU_MESSAGE
from graders.package import load_package
from graders.static_check import check_package_sources
from tests.graders import hw3_students as students
from tests.graders.conftest import Graded, Grading, PackageGrader, PublicRun

HAS_GPU = torch.cuda.is_available()
GPU_TESTS = {"gpu_long_sequences", "gpu_bfloat16"}
ALL_TESTS = {
    "forward_noncausal",
    "forward_causal",
    "forward_lse",
    "forward_ragged",
    "forward_gqa",
    "backward_noncausal",
    "backward_causal",
    "backward_ragged",
    "backward_gqa",
    "custom_scale",
    "autograd_function",
    "forward_backward_step",
    "inputs_not_mutated",
    *GPU_TESTS,
}
# What a run on this machine cannot pass: the GPU tests are not run without a GPU.
NOT_RUN_HERE = set() if HAS_GPU else GPU_TESTS


@pytest.fixture(scope="module")
def package():
    return load_package(students.HW3)


SEED = 4321
SUBMISSIONS = {
    "solution": students.SOLUTION_DIR,
    "handout": None,  # the untouched handout
    "causal-bottom-right": students.CAUSAL_BOTTOM_RIGHT,
    "lse-without-max": students.LSE_WITHOUT_MAX,
    "dv-unmasked-p": students.DV_UNMASKED_P,
    "gqa-head-modulo": students.GQA_HEAD_MODULO,
    "ragged-keys-unmasked": students.RAGGED_KEYS_UNMASKED,
}
# The handout's public tests (a pytest run each, as a student runs them) on three submissions.
PUBLIC_RUNS = {
    "solution": students.SOLUTION_DIR,
    "handout": None,
    "ragged-keys-unmasked": students.RAGGED_KEYS_UNMASKED,
}


def _grading(name: str) -> Grading:
    return Grading(students.HW3, SUBMISSIONS[name], benchmarks=name == "solution", seed=SEED)


@pytest.fixture(scope="module")
def graded(package_grader: PackageGrader) -> Callable[[str], Graded]:
    """``graded(name)``: the grading of a submission above (the solution's with benchmarks), made once per
    module; every grading and public-test run of the module starts at once.

    Without a GPU the gradings are independent CPU work (the kernels run in Triton's interpreter), so two run
    at a time; on a GPU one at a time, as a GPU worker grades, so that the solution's timings are undisturbed.
    """
    package_grader.start(
        [_grading(name) for name in SUBMISSIONS]
        + [PublicRun(students.HW3, files) for files in PUBLIC_RUNS.values()],
        workers=1 if HAS_GPU else 2,
    )
    return lambda name: package_grader.result(_grading(name))


@pytest.fixture(scope="module")
def public_runs(package_grader: PackageGrader, graded) -> Callable[[str], subprocess.CompletedProcess[str]]:
    """``public_runs(name)``: the public tests run on a submission of PUBLIC_RUNS (started by ``graded``)."""
    return lambda name: package_grader.public_tests(students.HW3, PUBLIC_RUNS[name])


@pytest.fixture(scope="module")
def solution_graded(graded) -> Graded:
    return graded("solution")


def test_manifest_declares_the_interface_and_gpu_tests(package):
    assert package.slug == "hw3-flashattention" and package.queue == "gpu" and package.points == 100
    assert package.module == "flash_attention"
    assert {spec.name for spec in package.tests} == ALL_TESTS
    assert {spec.name for spec in package.tests if spec.requires == "gpu"} == GPU_TESTS
    assert package.leaderboard is not None and package.leaderboard.metric == "fwd_bwd_ms"
    assert set(package.static_check.require_kernel_launch) == set(package.functions)


def test_solution_passes_every_test_it_can_run(solution_graded, package):
    report = solution_graded.report
    assert (report.status, report.failure_reason) == ("graded", None)
    assert solution_graded.failed_tests() == NOT_RUN_HERE
    gpu_points = sum(spec.weight for spec in package.tests if spec.name in NOT_RUN_HERE)
    assert report.max_score == 100 and report.score == 100 - gpu_points
    # No run-time check fired: nothing forbidden was called and every call launched a Triton kernel.
    assert not any(flag.startswith("runtime check") for flag in report.flags)
    assert solution_graded.returncode == 0


@pytest.mark.skipif(HAS_GPU, reason="checks how a run without a GPU reports the GPU-only parts")
def test_gpu_tests_and_leaderboard_say_they_need_a_gpu(solution_graded):
    report = solution_graded.report
    for name in GPU_TESTS:
        outcome = solution_graded.outcome(name)
        assert outcome.skipped and outcome.score == 0
        assert outcome.message == NEEDS_GPU_MESSAGE
    assert "Not timed without a GPU: fwd_bwd_ms." in report.notes
    assert not any(name.startswith("fwd_bwd_ms") for name in report.metrics)
    assert report.hardware_class == "cpu"


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA or ROCm GPU")
def test_solution_records_the_leaderboard_metric_on_a_gpu(solution_graded):
    metrics = solution_graded.report.metrics
    assert metrics["fwd_bwd_ms"] > 0 and metrics["fwd_bwd_ms_speedup"] > 0
    for label in ("b2-h16-kv4-t2048-d64-causal", "b1-h4-kv1-t16384-d128-causal"):
        assert metrics[f"fwd_bwd_ms.{label}"] > 0
    assert solution_graded.report.hardware_class.startswith(("cuda:", "rocm:"))


def test_solution_passes_the_static_check(package, tmp_path):
    (tmp_path / students.MODULE_FILE).write_text(students.SOLUTION)
    assert check_package_sources(package, tmp_path) == []


def test_static_check_refuses_pytorch_attention_and_code_without_a_kernel(package, tmp_path):
    (tmp_path / students.MODULE_FILE).write_text(
        "import torch.nn.functional as F\n"
        "def flash_attention_forward(q, k, v, causal=False, sm_scale=None):\n"
        "    return F.scaled_dot_product_attention(q, k, v, is_causal=causal), q.logsumexp(-1)\n"
    )
    messages = [str(violation) for violation in check_package_sources(package, tmp_path)]
    assert any("line 3: uses torch.nn.functional.scaled_dot_product_attention" in text for text in messages)
    assert any("torch.Tensor.logsumexp" in text for text in messages)
    assert any("triton.jit" in text for text in messages)


def test_untouched_handout_scores_zero_with_clear_messages(graded):
    report = graded("handout").report
    assert report.status == "graded" and report.score == 0
    for test in report.tests:
        if test.name in NOT_RUN_HERE:
            continue
        assert "NotImplementedError" in test.message and "raised" in test.message, test.message
        assert test.detail is not None and "flash_attention.py" in test.detail


# Each bug also fails both GPU tests on a GPU (their shapes are ragged, causal with T != S, grouped, and check
# lse), and without one those are not run: either way they are in the failed set.
@pytest.mark.parametrize(
    ("submission", "lost", "named"),
    [
        (
            "causal-bottom-right",
            {"forward_ragged"},
            ("forward_ragged", "the output o of flash_attention_forward"),
        ),
        (
            "lse-without-max",
            {
                "forward_lse",
                "forward_ragged",
                "forward_gqa",
                "custom_scale",
                "autograd_function",
                "forward_backward_step",
            },
            ("forward_lse", "the log-sum-exp lse of flash_attention_forward"),
        ),
        (
            "dv-unmasked-p",
            {
                "backward_causal",
                "backward_ragged",
                "backward_gqa",
                "custom_scale",
                "autograd_function",
                "forward_backward_step",
            },
            ("backward_causal", "dv of flash_attention_backward"),
        ),
        (
            "gqa-head-modulo",
            {"forward_gqa", "backward_gqa"},
            ("backward_gqa", "dq of flash_attention_backward"),
        ),
    ],
    ids=["causal-bottom-right", "lse-without-max", "dv-unmasked-p", "gqa-head-modulo"],
)
def test_planted_bug_loses_exactly_its_tests(graded, submission, lost, named):
    bug = graded(submission)
    assert bug.report.status == "graded"
    assert bug.failed_tests() == lost | GPU_TESTS
    test_name, component = named
    assert component in bug.outcome(test_name).message


def test_public_pass_hidden_fail_gets_partial_marks(graded, public_runs):
    ragged = graded("ragged-keys-unmasked")
    report = ragged.report
    assert ragged.failed_tests() == {"forward_ragged"} | GPU_TESTS
    assert 0 < report.score < report.max_score
    message = ragged.outcome("forward_ragged").message
    assert "flash_attention_forward" in message and "does not match the expected values" in message
    assert "expected" not in message.split("does not match the expected values", 1)[1]  # no hidden values
    public = public_runs("ragged-keys-unmasked")
    assert public.returncode == 0, public.stdout + public.stderr


def test_public_tests_pass_on_the_solution(public_runs):
    result = public_runs("solution")
    assert result.returncode == 0, result.stdout + result.stderr


def test_public_tests_fail_on_the_untouched_handout(public_runs):
    result = public_runs("handout")
    assert result.returncode == 1
    assert "NotImplementedError" in result.stdout


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA or ROCm GPU")
def test_leaderboard_ranks_the_slower_kernel_behind(grade_package, solution_graded):
    slow = grade_package(students.HW3, students.SLOW_CORRECT, benchmarks=True)
    assert slow.report.score == solution_graded.report.score == 100
    assert slow.report.metrics["fwd_bwd_ms"] > solution_graded.report.metrics["fwd_bwd_ms"]
