"""Self-test of the hw5-inference package: full marks for the solution (with its throughput and recall metrics),
zero with clear messages for the untouched handout, planted bugs that lose exactly the tests covering them,
the static check against ready-made differentiable collectives and ZeRO, and the handout's public tests.

A grading runs every test (two rank processes, the embedding model), so each submission is graded once per
module, two gradings or public-test runs at a time, and shared by the tests that look at it.
"""

import subprocess
from collections.abc import Callable

import pytest

from graders.static_check import check_package_sources
from tests.graders import hw5_inference_students as students
from tests.graders.conftest import Graded, Grading, PackageGrader, PublicRun, submission_files

ALL_TESTS = {
    "attention_with_cache_prefill",
    "attention_with_cache_decode",
    "prefill_and_decode_step",
    "inputs_not_mutated",
    "top_k_filter",
    "top_p_filter",
    "filters_ties_and_edges",
    "sample_greedy",
    "sample_distribution",
    "generate_greedy_single",
    "generate_greedy_batched_padding",
    "generate_eos_and_limits",
    "generate_sampling",
    "generate_throughput",
    "tp_column_parallel_linear",
    "tp_row_parallel_linear",
    "tp_parallel_mlp",
    "tp_parallel_attention",
    "zero1_optimizer",
    "rag_chunking",
    "rag_embeddings",
    "rag_retrieve_small",
    "rag_recall_hidden",
}
PADDING_TESTS = {
    "attention_with_cache_decode",
    "generate_greedy_batched_padding",
    "generate_eos_and_limits",
    "generate_sampling",
    "generate_throughput",
}
COLUMN_PARALLEL_TESTS = {"tp_column_parallel_linear", "tp_parallel_mlp", "tp_parallel_attention"}

GRADINGS = {
    "solution": students.SOLUTION,
    "handout": None,  # the untouched handout
    **{name: students.submission(edit) for name, edit in students.BUGS.items()},
}
PUBLIC_RUNS = {
    "solution": PublicRun(students.PACKAGE, students.SOLUTION),
    "handout": PublicRun(students.PACKAGE, None),
    # Only sampling.py differs from the solution, whose whole public suite passes: the public tests that reach
    # sampling.py decide whether this bug passes them.
    "top-k-drops-ties": PublicRun(
        students.PACKAGE, GRADINGS["top-k-drops-ties"], selection="top_k or top_p or sample"
    ),
}


@pytest.fixture(scope="module")
def graded(package_grader: PackageGrader) -> Callable[[str], Graded]:
    """``graded(name)``: the grading of a submission of GRADINGS, made once per module; every grading and
    public-test run of the module starts at once, two at a time.

    A grading spends most of its time in the runner process and a public-test run in its own pytest process,
    so two of them keep both cores of a small machine busy.
    """
    package_grader.start(
        [Grading(students.PACKAGE, files) for files in GRADINGS.values()] + list(PUBLIC_RUNS.values())
    )
    return lambda name: package_grader.grade(students.PACKAGE, GRADINGS[name])


@pytest.fixture(scope="module")
def public_runs(package_grader: PackageGrader, graded) -> Callable[[str], subprocess.CompletedProcess[str]]:
    """``public_runs(name)``: the public tests run on a submission of PUBLIC_RUNS (started by ``graded``)."""
    return lambda name: package_grader.result(PUBLIC_RUNS[name])


def test_solution_scores_full_marks(graded):
    report = graded("solution").report
    assert (report.status, report.failure_reason) == ("graded", None)
    assert {test.name: test.message for test in report.tests} == dict.fromkeys(ALL_TESTS, "passed")
    assert report.score == report.max_score == 100


def test_solution_records_throughput_and_recall(graded):
    metrics = graded("solution").report.metrics
    assert metrics["tokens_per_s"] > 0 and metrics["tokens_per_s_reference"] > 0
    assert metrics["recall_at_5"] >= 0.9


def test_untouched_handout_scores_zero_with_clear_messages(graded):
    graded_handout = graded("handout")
    report = graded_handout.report
    assert report.status == "graded" and report.failure_reason is None
    assert report.score == 0 and report.max_score == 100
    assert report.metrics == {}
    for test in report.tests:
        assert "NotImplementedError" in test.message, (test.name, test.message)
    assert graded_handout.outcome("tp_column_parallel_linear").message.startswith(
        "tp_column_parallel_linear raised RuntimeError: column_parallel_linear failed on rank 0: "
        "NotImplementedError: shard"
    )


@pytest.mark.parametrize(
    ("bug", "lost", "component"),
    [
        ("top-k-drops-ties", {"filters_ties_and_edges"}, "top_k_filter"),
        ("attends-to-padding", PADDING_TESTS, "attention_step"),
        ("copy-backward-without-all-reduce", COLUMN_PARALLEL_TESTS, "grad_x on rank 0"),
    ],
)
def test_planted_bug_loses_exactly_its_tests(graded, bug, lost, component):
    result = graded(bug)
    assert result.report.status == "graded"
    assert result.failed_tests() == lost
    assert result.report.score == 100 - sum(result.outcome(name).max_score for name in lost)
    first = min(lost, key=[test.name for test in result.report.tests].index)
    assert component in result.outcome(first).message


def test_hidden_failure_message_gives_no_expected_values(graded):
    result = graded("top-k-drops-ties")
    message = result.outcome("filters_ties_and_edges").message
    assert "does not match exactly" in message
    assert "expected" not in message.split("does not match exactly")[1]


def test_bug_that_passes_the_public_tests_gets_partial_marks(graded, public_runs):
    public = public_runs("top-k-drops-ties")
    assert public.returncode == 0, public.stdout + public.stderr
    report = graded("top-k-drops-ties").report
    assert 0 < report.score < report.max_score


def test_public_tests_pass_on_the_solution(public_runs):
    public = public_runs("solution")
    assert public.returncode == 0, public.stdout + public.stderr


def test_public_tests_fail_on_the_untouched_handout(public_runs):
    public = public_runs("handout")
    assert public.returncode == 1 and "NotImplementedError" in public.stdout


@pytest.mark.parametrize("files", [students.SOLUTION, None], ids=["solution", "handout"])
def test_solution_and_handout_pass_the_static_check(packages, files):
    """The handout's launcher starts the ranks with multiprocessing, which the check cannot follow: the
    assignment allows it, and nothing else it uses is refused."""
    package = packages(students.PACKAGE)
    handed_in = submission_files(package, files)
    assert (
        "hw5_inference/launcher.py" in handed_in
        and b"import multiprocessing" in handed_in["hw5_inference/launcher.py"]
    )
    assert check_package_sources(package, handed_in) == []


READY_MADE = {
    "differentiable-all-reduce": (
        "from torch.distributed.nn.functional import all_reduce\n",
        "line 1: imports torch.distributed.nn.functional",
    ),
    "differentiable-module": (
        "import torch.distributed.nn as dist_nn\n\ndef f(x):\n    return dist_nn.functional.all_gather(x)\n",
        "line 1: imports torch.distributed.nn",
    ),
    "through-torch": (
        "import torch\n\ndef f(x):\n    return torch.distributed.nn.functional.all_reduce(x)\n",
        "line 4: uses torch.distributed.nn",
    ),
    "functional-collectives": (
        "from torch.distributed import _functional_collectives as fc\n",
        "line 1: uses torch.distributed._functional_collectives",
    ),
    "zero-redundancy-optimizer": (
        "from torch.distributed.optim import ZeroRedundancyOptimizer\n",
        "line 1: imports torch.distributed.optim",
    ),
    "zero-from-its-module": (
        "import torch.distributed.optim.zero_redundancy_optimizer as zro\n",
        "line 1: imports torch.distributed.optim.zero_redundancy_optimizer",
    ),
}


def _refusals(package, zero_py: str) -> list[str]:
    """Why the static check refuses the solution with hw5_inference/zero.py replaced by ``zero_py`` (the
    worker fails a submission with any violation before it runs); every reason must be in that file."""
    handed_in = submission_files(package, students.SOLUTION) | {"hw5_inference/zero.py": zero_py.encode()}
    violations = check_package_sources(package, handed_in)
    assert violations, "the submission was not refused"
    assert all(violation.path == "hw5_inference/zero.py" for violation in violations), violations
    return [str(violation) for violation in violations]


@pytest.mark.parametrize(("source", "expected"), READY_MADE.values(), ids=READY_MADE.keys())
def test_ready_made_collectives_and_zero_are_refused(packages, source, expected):
    messages = _refusals(packages(students.PACKAGE), source)
    assert any(
        expected in message and "not allowed for this assignment" in message for message in messages
    ), messages


def test_allowing_multiprocessing_still_refuses_other_process_spawners(packages):
    assert _refusals(packages(students.PACKAGE), "import subprocess\n") == [
        "hw5_inference/zero.py, line 1: imports subprocess; not allowed for this assignment "
        "(code run that way cannot be checked)"
    ]
