"""Self-test of graders/hw2-transformer: full marks for the solution (with the leaderboard metric), zero for the
handout, planted bugs lose exactly the tests that cover them and the model test names the broken component,
and the handout's public tests and golden values agree with the solution and the reference.

Each grading takes seconds, so each submission is graded once per module and shared by the tests that look at
it.
"""

import importlib.util
import math

import pytest
import torch

from graders.package import load_package
from graders.static_check import check_package_sources, check_sources
from tests.graders import hw2_transformer_students as students
from tests.graders.conftest import Grading, PackageGrader, PublicRun

PACKAGE = students.PACKAGE
SOLUTION_DIR = PACKAGE / "solution"
HANDOUT_DIR = PACKAGE / "handout"
ATTENTION_TESTS = {"attention_gqa", "attention_head_layouts", "attention_grad"}
DOWNSTREAM_OF_ATTENTION = {
    "block_forward",
    "block_grad",
    "model_logits",
    "model_other_configs",
    "model_loss_and_grads",
}
MODEL_TESTS = {"model_logits", "model_other_configs", "model_loss_and_grads"}
SEED = 20270404
BUGS = [
    "GQA_TILED",
    "ROPE_HALF_SPLIT",
    "RMS_NORM_DETACHED",
    "EMBEDDING_SCALED",
    "CROSS_ENTROPY_IGNORES_NOTHING",
]


@pytest.fixture(scope="module")
def graded(package_grader: PackageGrader):
    """``graded(files, benchmarks=False)``: the grading of ``files`` over the handout (None: the untouched
    handout), made once per module.

    The solution's timed grading comes first, alone; then the handout's, the planted bugs' and the public-test
    runs start in the background, two at a time.
    """

    def run(files, *, benchmarks=False):
        return package_grader.grade(PACKAGE, files, benchmarks=benchmarks, seed=SEED)

    run(SOLUTION_DIR, benchmarks=True)
    package_grader.start(
        [
            Grading(PACKAGE, None, benchmarks=True, seed=SEED),
            *(Grading(PACKAGE, getattr(students, name), seed=SEED) for name in BUGS),
            PublicRun(PACKAGE, SOLUTION_DIR),
            PublicRun(PACKAGE, None),
            PublicRun(PACKAGE, students.CROSS_ENTROPY_IGNORES_NOTHING),
        ]
    )
    return run


def solution(graded):
    return graded(SOLUTION_DIR, benchmarks=True)


def test_package_declares_the_interface_and_weights():
    package = load_package(PACKAGE)
    assert package.slug == "hw2-transformer" and package.version == "1.0.0" and package.queue == "cpu"
    assert package.points == 100 and package.module == "llama"
    assert package.due_at is not None and package.due_at.isoformat() == "2027-04-04T15:59:00+00:00"
    assert package.leaderboard is not None
    assert (package.leaderboard.metric, package.leaderboard.direction) == ("forward_backward_ms", "asc")
    handout = importlib.util.spec_from_file_location("hw2_handout", HANDOUT_DIR / "llama.py")
    module = importlib.util.module_from_spec(handout)
    handout.loader.exec_module(module)
    public = {name for name, value in vars(module).items() if callable(value) and not name.startswith("_")}
    assert public == set(package.functions)
    assert {"visible", "hidden", "after_due"} == {spec.visibility for spec in package.tests}


@pytest.mark.parametrize("directory", [SOLUTION_DIR, HANDOUT_DIR], ids=["solution", "handout"])
def test_starter_and_solution_pass_the_static_check(directory):
    package = load_package(PACKAGE)
    assert check_package_sources(package, {"llama.py": (directory / "llama.py").read_bytes()}) == []


def test_static_check_refuses_the_builtin_attention():
    source = b"import torch.nn.functional as F\n\ndef f(q, k, v):\n    return F.scaled_dot_product_attention(q, k, v)\n"
    violations = check_sources({"llama.py": source}, load_package(PACKAGE).static_check)
    assert [str(violation) for violation in violations] == [
        "llama.py, line 4: uses torch.nn.functional.scaled_dot_product_attention; not allowed for this assignment"
    ]


def test_solution_scores_full_marks(graded):
    report = solution(graded).report
    assert (report.status, report.failure_reason) == ("graded", None)
    assert [test.message for test in report.tests] == ["passed"] * len(report.tests)
    assert report.score == report.max_score == 100


def test_solution_records_the_forward_backward_time(graded):
    report = solution(graded).report
    metrics = report.metrics
    assert metrics["forward_backward_ms"] > 0 and metrics["forward_backward_ms_reference"] > 0
    for shape in ("b4_t64", "b1_t128"):
        assert metrics[f"forward_backward_ms.{shape}"] > 0
        assert metrics[f"forward_backward_ms.{shape}_reps"] >= 1
    assert report.hardware_class == "cpu"


def test_untouched_handout_scores_zero_with_clear_messages(graded):
    graded_handout = graded(None, benchmarks=True)
    report = graded_handout.report
    assert (report.status, report.score, report.max_score) == ("graded", 0, 100)
    assert report.metrics == {}
    for test in report.tests:
        assert "raised NotImplementedError" in test.message and "is not implemented yet" in test.message
        assert test.detail is not None and "llama.py" in test.detail
    assert "Speed is only measured once every test passes." in report.notes


@pytest.mark.parametrize(
    ("name", "lost", "test", "named"),
    [
        (
            "GQA_TILED",
            ATTENTION_TESTS | DOWNSTREAM_OF_ATTENTION,
            "model_logits",
            "the first that differs is the attention in layer 0 (multihead_attention)",
        ),
        (
            "ROPE_HALF_SPLIT",
            {"rope_apply", "rope_edge_cases"} | ATTENTION_TESTS | DOWNSTREAM_OF_ATTENTION,
            "model_logits",
            "the first that differs is the rotary embedding of the queries and keys in layer 0 (apply_rotary_emb)",
        ),
        (
            "RMS_NORM_DETACHED",
            {"rms_norm_grad", "block_grad", "model_loss_and_grads"},
            "rms_norm_grad",
            "the gradient of rms_norm for x of shape 5x32 with respect to x does not match",
        ),
        (
            "EMBEDDING_SCALED",
            MODEL_TESTS,
            "model_other_configs",
            "Each of your component functions matches when called on the reference model's own activations, so "
            "transformer() puts them together differently",
        ),
        (
            "CROSS_ENTROPY_IGNORES_NOTHING",
            {"cross_entropy_edge_cases", "cross_entropy_grad"},
            "cross_entropy_edge_cases",
            "cross_entropy raised RuntimeError: index -100 is out of bounds",
        ),
    ],
    ids=["gqa-tiled", "rope-half-split", "rms-norm-detached", "embedding-scaled", "cross-entropy-no-ignore"],
)
def test_planted_bug_loses_exactly_its_tests_and_names_the_component(graded, name, lost, test, named):
    graded_bug = graded(getattr(students, name))
    assert graded_bug.report.status == "graded"
    assert graded_bug.failed_tests() == lost
    assert graded_bug.report.score == 100 - sum(graded_bug.outcome(lost_test).max_score for lost_test in lost)
    assert named in graded_bug.outcome(test).message


def test_hidden_test_messages_give_the_error_size_not_expected_values(graded):
    message = graded(students.GQA_TILED).outcome("model_other_configs").message
    assert "largest absolute error" in message and "the attention in layer 0" in message
    assert "expected " not in message.replace("expected values", "")


def test_bug_that_passes_the_public_tests_gets_partial_marks(graded, package_grader):
    public = package_grader.public_tests(PACKAGE, students.CROSS_ENTROPY_IGNORES_NOTHING)
    assert public.returncode == 0, public.stdout
    report = graded(students.CROSS_ENTROPY_IGNORES_NOTHING).report
    assert 0 < report.score < report.max_score


def test_public_tests_pass_on_the_solution(package_grader):
    result = package_grader.public_tests(PACKAGE, SOLUTION_DIR)
    assert result.returncode == 0, result.stdout


def test_public_tests_fail_on_the_untouched_handout(package_grader):
    result = package_grader.public_tests(PACKAGE, None)
    assert result.returncode == 1, result.stdout
    assert "NotImplementedError" in result.stdout


def test_handout_golden_values_match_the_reference():
    spec = importlib.util.spec_from_file_location("hw2_make_fixture", PACKAGE / "make_fixture.py")
    make_fixture = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_fixture)
    shipped = torch.load(HANDOUT_DIR / "tiny_llama.pt", weights_only=True)
    rebuilt = make_fixture.build_fixture()
    assert shipped.keys() == rebuilt.keys() and shipped["args"] == rebuilt["args"]
    for key in ("tokens", "targets"):
        assert torch.equal(shipped[key], rebuilt[key])
    for key in ("state_dict", "grads"):
        assert shipped[key].keys() == rebuilt[key].keys()
        for name in shipped[key]:
            torch.testing.assert_close(shipped[key][name], rebuilt[key][name], rtol=1e-5, atol=1e-7)
    for key in ("layer0_input", "layer0_attention_input", "layer0_attention_output", "layer0_block_output"):
        torch.testing.assert_close(shipped[key], rebuilt[key], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(shipped["logits"], rebuilt["logits"], rtol=1e-5, atol=1e-6)
    assert math.isclose(float(shipped["loss"]), float(rebuilt["loss"]), rel_tol=1e-6)
