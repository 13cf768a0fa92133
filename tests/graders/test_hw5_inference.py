"""Self-test of the hw5-inference package: full marks for the solution (with its throughput and recall metrics),
zero with clear messages for the untouched handout, planted bugs that lose exactly the tests covering them, and
the handout's public tests.

A grading runs every test (two rank processes, the embedding model), so each submission is graded once per
module, two gradings or public-test runs at a time, and shared by the tests that look at it.
"""

import functools
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from graders.harness import grade
from tests.graders import hw5_inference_students as students
from tests.graders.conftest import Graded, run_public_tests, runner_options, start_runner

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


def _write(workdir: Path, files: Path | Mapping[str, str]) -> None:
    if isinstance(files, Path):
        shutil.copytree(files, workdir, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
        return
    for relative, source in files.items():
        (workdir / relative).parent.mkdir(parents=True, exist_ok=True)
        (workdir / relative).write_text(source)


def _grade(package, runner_dir: Path, workdir: Path, files: Path | Mapping[str, str]) -> Graded:
    workdir.mkdir()
    _write(workdir, files)
    with start_runner(runner_dir, workdir, package.module, runner_options(package)) as runner:
        report = grade(package, runner.channel, seed=1234, benchmarks=False)
        runner.process.stdin.close()
        try:
            returncode: int | None = runner.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            returncode = None
    return Graded(report, returncode, runner.stderr())


def _run_public_subset(files: Mapping[str, str], selection: str) -> subprocess.CompletedProcess[str]:
    """The handout's public tests chosen by ``-k selection``, run against ``files`` as a student would."""
    with tempfile.TemporaryDirectory(prefix="handout-") as directory:
        workdir = Path(directory) / "handout"
        shutil.copytree(students.HANDOUT, workdir, ignore=shutil.ignore_patterns("__pycache__"))
        _write(workdir, files)
        return subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", selection, "."],
            cwd=workdir,
            capture_output=True,
            text=True,
            timeout=300,
        )


@pytest.fixture(scope="module")
def results(runner_dir, packages, tmp_path_factory) -> Iterator[dict[str, Future]]:
    """Every grading and public-test run this module looks at, started at once, two at a time.

    A grading spends most of its time in the runner process and a public-test run in its own pytest process,
    so two of them keep both cores of a small machine busy; each is run once and shared by the tests.
    """
    package = packages(students.PACKAGE)
    gradings: dict[str, Path | Mapping[str, str]] = {
        "solution": students.SOLUTION,
        "handout": students.HANDOUT,
    }
    gradings.update({name: students.submission(edit) for name, edit in students.BUGS.items()})
    jobs: dict[str, Callable[[], object]] = {
        name: functools.partial(_grade, package, runner_dir, tmp_path_factory.mktemp(name) / "work", files)
        for name, files in gradings.items()
    }
    jobs["public-solution"] = functools.partial(run_public_tests, students.PACKAGE, students.SOLUTION)
    jobs["public-handout"] = functools.partial(run_public_tests, students.PACKAGE, None)
    # Only sampling.py differs from the solution, whose whole public suite passes: the public tests that reach
    # sampling.py decide whether this bug passes them.
    jobs["public-top-k-bug"] = functools.partial(
        _run_public_subset, gradings["top-k-drops-ties"], "top_k or top_p or sample"
    )
    with ThreadPoolExecutor(max_workers=2) as pool:
        yield {name: pool.submit(job) for name, job in jobs.items()}


def test_solution_scores_full_marks(results):
    report = results["solution"].result().report
    assert (report.status, report.failure_reason) == ("graded", None)
    assert {test.name: test.message for test in report.tests} == dict.fromkeys(ALL_TESTS, "passed")
    assert report.score == report.max_score == 100


def test_solution_records_throughput_and_recall(results):
    metrics = results["solution"].result().report.metrics
    assert metrics["tokens_per_s"] > 0 and metrics["tokens_per_s_reference"] > 0
    assert metrics["recall_at_5"] >= 0.9


def test_untouched_handout_scores_zero_with_clear_messages(results):
    graded_handout = results["handout"].result()
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
def test_planted_bug_loses_exactly_its_tests(results, bug, lost, component):
    result = results[bug].result()
    assert result.report.status == "graded"
    assert result.failed_tests() == lost
    assert result.report.score == 100 - sum(result.outcome(name).max_score for name in lost)
    first = min(lost, key=[test.name for test in result.report.tests].index)
    assert component in result.outcome(first).message


def test_hidden_failure_message_gives_no_expected_values(results):
    result = results["top-k-drops-ties"].result()
    message = result.outcome("filters_ties_and_edges").message
    assert "does not match exactly" in message
    assert "expected" not in message.split("does not match exactly")[1]


def test_bug_that_passes_the_public_tests_gets_partial_marks(results):
    public = results["public-top-k-bug"].result()
    assert public.returncode == 0, public.stdout + public.stderr
    report = results["top-k-drops-ties"].result().report
    assert 0 < report.score < report.max_score


def test_public_tests_pass_on_the_solution(results):
    public = results["public-solution"].result()
    assert public.returncode == 0, public.stdout + public.stderr


def test_public_tests_fail_on_the_untouched_handout(results):
    public = results["public-handout"].result()
    assert public.returncode == 1 and "NotImplementedError" in public.stdout
