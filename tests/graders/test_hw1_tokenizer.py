"""Self-test of the hw1-tokenizer package: full marks for the solution (with its speed metrics), zero for the
handout, planted bugs lose exactly their tests, the public tests tell the solution from the handout, and the
shipped corpus is what its script writes."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import pytest

from graders.package import load_package
from graders.static_check import check_package_sources
from tests.graders import hw1_tokenizer_students as students
from tests.graders.conftest import Graded, Grading, PackageGrader, PublicRun

HW1 = students.HW1
SOLUTION_DIR = HW1 / "solution"
SEED = 2027
FUNCTIONS = ["train_bpe", "encode", "encode_iterable", "decode", "rope", "embedding"]
TRAIN_TESTS = {
    "train_bpe_small",
    "train_bpe_special_tokens",
    "train_bpe_ties",
    "train_bpe_unicode",
    "train_bpe_edge_cases",
    "train_bpe_larger_corpus",
}
ALL_TESTS = TRAIN_TESTS | {
    "encode_basic",
    "encode_special_tokens",
    "encode_overlapping_special_tokens",
    "encode_edge_cases",
    "encode_vocab_layout",
    "decode_roundtrip",
    "decode_invalid_utf8",
    "encode_iterable",
    "encode_iterable_split_anywhere",
    "rope_basic",
    "rope_positions",
    "rope_ntk_scaling",
    "embedding_forward",
    "embedding_backward",
    "inputs_not_mutated",
}
# Graded with benchmarks: each alone, so that nothing else of this module competes with its clock.
TIMED = [students.SOLUTION, students.WRONG_WHEN_TIMED]
UNTIMED = [
    students.HANDOUT,
    students.TIES_BY_ID,
    students.SPECIAL_TOKENS_IN_LIST_ORDER,
    students.EMBEDDING_DETACHED,
]
PUBLIC_RUNS = [SOLUTION_DIR, None, {"hw1.py": students.SPECIAL_TOKENS_IN_LIST_ORDER}]
GradeOnce = Callable[..., Graded]


@pytest.fixture(scope="module")
def graded(package_grader: PackageGrader) -> GradeOnce:
    """``graded(source, benchmarks=False)``: the grading of hw1.py with this source, made once per module.

    The timed gradings come first, one at a time; then the others and the public-test runs start in the
    background, two at a time.
    """

    def run(source: str, *, benchmarks: bool = False) -> Graded:
        return package_grader.grade(HW1, {"hw1.py": source}, benchmarks=benchmarks, seed=SEED)

    for source in TIMED:
        run(source, benchmarks=True)
    package_grader.start(
        [Grading(HW1, {"hw1.py": source}, seed=SEED) for source in UNTIMED]
        + [PublicRun(HW1, files) for files in PUBLIC_RUNS]
    )
    return run


def test_package_declares_every_test_with_weights_summing_to_100():
    package = load_package(HW1)
    assert {spec.name for spec in package.tests} == ALL_TESTS
    assert package.points == 100
    assert list(package.functions) == FUNCTIONS
    assert package.leaderboard is not None and package.leaderboard.metric == "bpe_train_ms"
    assert package.due_at is not None and package.due_at.isoformat() == "2027-03-21T15:59:00+00:00"


def test_solution_scores_full_marks_with_speed_metrics(graded):
    report = graded(students.SOLUTION, benchmarks=True).report
    assert (report.status, report.failure_reason) == ("graded", None)
    assert {test.name: test.message for test in report.tests} == dict.fromkeys(ALL_TESTS, "passed")
    assert report.score == report.max_score == 100
    metrics = report.metrics
    for metric in ("bpe_train_ms", "encode_ms"):
        assert metrics[metric] > 0 and metrics[f"{metric}_reference"] > 0 and metrics[f"{metric}_speedup"] > 0
        assert metrics[f"{metric}_reps"] >= 3
    assert report.hardware_class == "cpu"


def test_untouched_handout_scores_zero_with_clear_messages(graded):
    report = graded(students.HANDOUT).report
    assert report.status == "graded"
    assert report.score == 0 and report.max_score == 100
    for test in report.tests:
        assert "raised NotImplementedError" in test.message, test.name
        assert any(f"{function} is not implemented yet" in test.message for function in FUNCTIONS), test.name
        assert test.detail is not None and "hw1.py" in test.detail and "runner.py" not in test.detail


SPECIAL_TOKEN_TESTS = {
    "train_bpe_edge_cases": "train_bpe",
    "encode_overlapping_special_tokens": "encode",
    "encode_iterable_split_anywhere": "encode_iterable",
}


@pytest.mark.parametrize(
    ("source", "lost"),
    [
        (students.TIES_BY_ID, dict.fromkeys(TRAIN_TESTS, "train_bpe")),
        (students.SPECIAL_TOKENS_IN_LIST_ORDER, SPECIAL_TOKEN_TESTS),
        (students.EMBEDDING_DETACHED, {"embedding_backward": "embedding"}),
    ],
    ids=[
        "ties-by-id",
        "special-tokens-in-list-order",
        "embedding-detached",
    ],
)
def test_planted_bug_loses_exactly_its_tests(graded, source, lost):
    """``lost``: each test the bug must fail, with the function its message must name."""
    result = graded(source)
    assert result.report.status == "graded"
    assert result.failed_tests() == set(lost)
    assert result.report.score == 100 - sum(result.outcome(name).max_score for name in lost)
    for name, component in lost.items():
        message = result.outcome(name).message
        assert f"{component} " in message.split(":")[0], message


def test_hidden_message_names_the_first_wrong_merge_without_the_expected_one(graded):
    message = graded(students.TIES_BY_ID).outcome("train_bpe_ties").message
    assert message.startswith("train_bpe of 'xab xab abc abc' (equal pair counts): merge 1 (0-based) is not")
    assert "got" not in message and "b'" not in message


def test_visible_message_shows_the_merges_that_differ(graded):
    message = graded(students.TIES_BY_ID).outcome("train_bpe_small").message
    assert "got (b'" in message and "expected (b'" in message


def test_gradient_cut_off_from_autograd_is_explained(graded):
    message = graded(students.EMBEDDING_DETACHED).outcome("embedding_backward").message
    assert "the gradient of embedding with respect to weight (20, 8)" in message
    assert "does not depend on the inputs through autograd" in message


def test_passing_the_public_tests_but_not_a_hidden_edge_case_gives_partial_marks(graded, package_grader):
    public = package_grader.public_tests(HW1, {"hw1.py": students.SPECIAL_TOKENS_IN_LIST_ORDER})
    assert public.returncode == 0, public.stdout[-3000:]
    result = graded(students.SPECIAL_TOKENS_IN_LIST_ORDER)
    assert 0 < result.report.score < result.report.max_score
    assert all(result.outcome(name).visibility == "hidden" for name in result.failed_tests())


def test_public_tests_pass_on_the_solution(package_grader):
    result = package_grader.public_tests(HW1, SOLUTION_DIR)
    assert result.returncode == 0, result.stdout[-3000:]
    assert " passed" in result.stdout and "failed" not in result.stdout


def test_public_tests_fail_on_the_untouched_handout(package_grader):
    result = package_grader.public_tests(HW1, None)
    assert result.returncode == 1
    assert "NotImplementedError" in result.stdout


def test_wrong_results_while_timed_record_no_metric(graded):
    report = graded(students.WRONG_WHEN_TIMED, benchmarks=True).report
    assert report.status == "graded" and report.score == 100
    assert "bpe_train_ms" not in report.metrics and "encode_ms" not in report.metrics
    assert (
        "bpe_train_ms was not recorded: during timing, train_bpe of the timed corpus (200,000 characters): "
        "learned 742 merges, expected 743 (the first 742 match)"
    ) in report.notes
    prefix = "encode_ms was not recorded: during timing, encode of the timed text (200,000 characters): got "
    assert any(note.startswith(prefix) and note.endswith(" match)") for note in report.notes), report.notes


def test_solution_passes_the_static_check():
    assert check_package_sources(load_package(HW1), SOLUTION_DIR) == []


def test_tokenizer_libraries_and_torch_embedding_are_refused():
    source = "import tiktoken\nimport torch.nn.functional as F\n\ndef embedding(ids, weight):\n"
    source += "    return F.embedding(ids, weight)\n"
    violations = check_package_sources(load_package(HW1), {"hw1.py": source.encode()})
    messages = [str(violation) for violation in violations]
    assert any("tiktoken" in message for message in messages)
    assert any("line 5: uses torch.nn.functional.embedding" in message for message in messages)


def test_shipped_corpus_and_merges_are_what_make_data_writes():
    spec = importlib.util.spec_from_file_location("hw1_make_data", HW1 / "make_data.py")
    assert spec is not None and spec.loader is not None
    make_data = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_data)
    text = make_data.corpus_text()
    data = HW1 / "handout" / "data"
    assert (data / "corpus.txt").read_bytes() == text.encode("utf-8")
    assert (data / "corpus_merges.json").read_text(encoding="utf-8") == make_data.merges_document(text)
    assert 200_000 <= len(text.encode("utf-8")) <= 500_000
