"""Self-test of the hw4-moe-lora-finetune package: full marks and a held-out loss for the solution, zero with clear
messages for the untouched handout, planted bugs that lose exactly the tests covering them, the static check
against pickled checkpoints, and the handout's public tests.

A grading runs a LoRA fine-tuning in the sandbox, so each submission is graded once per module and shared by the
tests that look at it. The gradings run one at a time: the fine-tuning tests hold the submission to a time
budget, which a second grading competing for the cores would eat into.
"""

import importlib.util
from collections.abc import Callable

import pytest
import torch

from graders.static_check import check_package_sources
from reference_impl.lora import apply_lora, lora_state_dict
from reference_impl.model import ModelArgs, Transformer
from tests.graders import hw4_moe_lora_finetune_students as students
from tests.graders.conftest import Files, Graded, PackageGrader, submission_files

ALL_TESTS = {
    "moe_forward_basic",
    "moe_top_k_extremes",
    "moe_routing_ties",
    "moe_gradients",
    "lora_forward_basic",
    "lora_gradients",
    "lora_merge_unmerge",
    "lora_merge_half_precision",
    "adapter_state_dict_basic",
    "adapter_state_dict_edge_keys",
    "checkpoint_round_trip",
    "checkpoint_exotic_tensors",
    "checkpoint_overwrite_and_nesting",
    "inputs_not_mutated",
    "finetune_heldout_loss",
    "finetune_adapters",
}
BUGS = {
    "ties-with-topk": students.ROUTES_TIES_WITH_TOPK,
    "adapter-keys-by-substring": students.ADAPTER_KEYS_BY_SUBSTRING,
    "stops-late": students.STOPS_LATE,
    "adam-without-eps": students.ADAM_WITHOUT_EPS,
}


@pytest.fixture(scope="module")
def graded(package_grader: PackageGrader) -> Callable[[Files], Graded]:
    """``graded(files)``: the grading of ``files`` over the handout (None: the untouched handout), made once
    per module."""
    return lambda files: package_grader.grade(students.PACKAGE, files)


def test_solution_scores_full_marks(graded):
    graded_solution = graded(students.SOLUTION)
    report = graded_solution.report
    assert (report.status, report.failure_reason) == ("graded", None)
    assert {test.name: test.message for test in report.tests} == dict.fromkeys(ALL_TESTS, "passed")
    assert report.score == report.max_score == 100
    assert graded_solution.returncode == 0


def test_solution_records_the_heldout_loss_for_the_leaderboard(graded):
    metrics = graded(students.SOLUTION).report.metrics
    assert 0 < metrics["heldout_loss"] < 0.05


def test_untouched_handout_scores_zero_with_clear_messages(graded):
    report = graded(None).report
    assert report.status == "graded" and report.failure_reason is None
    assert report.score == 0 and report.max_score == 100
    assert report.metrics == {}
    for test in report.tests:
        assert "raised NotImplementedError" in test.message, (test.name, test.message)
        assert test.detail is not None and "moe_lora.py" in test.detail and "runner.py" not in test.detail


@pytest.mark.parametrize(
    ("bug", "lost", "message"),
    [
        ("ties-with-topk", {"moe_routing_ties"}, "moe_forward's y for x of shape (48, 8), 6 experts, top_k="),
        ("adapter-keys-by-substring", {"adapter_state_dict_edge_keys"}, "adapter_state_dict of a state dict"),
        ("stops-late", {"finetune_adapters"}, "finetune_lora took"),
        ("adam-without-eps", {"finetune_heldout_loss", "finetune_adapters"}, "NaN or infinite values"),
    ],
    ids=["ties-with-topk", "adapter-keys-by-substring", "stops-late", "adam-without-eps"],
)
def test_planted_bug_loses_exactly_its_tests(graded, bug, lost, message):
    result = graded(students.submission(BUGS[bug]))
    assert result.report.status == "graded"
    assert result.failed_tests() == lost
    assert result.report.score == 100 - sum(result.outcome(name).max_score for name in lost)
    for name in lost:
        assert message in result.outcome(name).message, result.outcome(name).message


def test_hidden_failure_message_gives_counts_not_the_expected_keys(graded):
    result = graded(students.submission(students.ADAPTER_KEYS_BY_SUBSTRING))
    message = result.outcome("adapter_state_dict_edge_keys").message
    assert "0 expected key(s) missing, 5 key(s) that should not be there" in message
    assert "lora_" not in message.split("adapter_state_dict of a state dict")[1]


def test_bug_that_passes_the_public_tests_gets_partial_marks(graded, package_grader):
    submission = students.submission(students.ADAPTER_KEYS_BY_SUBSTRING)
    # Only adapter_state_dict differs from the solution, whose whole public suite passes (below): the public
    # tests of adapter_state_dict decide.
    public = package_grader.public_tests(students.PACKAGE, submission, selection="adapter_state_dict")
    assert public.returncode == 0 and "1 passed" in public.stdout, public.stdout + public.stderr
    report = graded(submission).report
    assert 0 < report.score < report.max_score


def test_solution_passes_the_static_check(packages):
    package = packages(students.PACKAGE)
    assert check_package_sources(package, submission_files(package, students.SOLUTION)) == []


@pytest.mark.parametrize(
    ("source", "forbidden"),
    [
        ("import torch\n\ndef save(state, path):\n    torch.save(state, path)\n", "torch.save"),
        ("from torch import load\n\ndef read(path):\n    return load(path)\n", "torch.load"),
        ("import pickle\n\ndef read(path):\n    return pickle.loads(path)\n", "pickle"),
        ("from peft import LoraConfig\n", "peft"),
    ],
    ids=["torch-save", "torch-load", "pickle", "peft"],
)
def test_static_check_refuses_pickled_checkpoints_and_ready_made_lora(packages, source, forbidden):
    violations = check_package_sources(packages(students.PACKAGE), {"moe_lora.py": source.encode()})
    assert any(forbidden in violation.message for violation in violations), violations


def test_handout_model_matches_the_reference_transformer():
    """tiny_llama.forward with adapters is the reference model with LoRA: adapters trained on one fit the other."""
    spec = importlib.util.spec_from_file_location("hw4_tiny_llama", students.HANDOUT / "tiny_llama.py")
    assert spec is not None and spec.loader is not None
    tiny_llama = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tiny_llama)
    args = ModelArgs(
        dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=16, hidden_dim=48, max_seq_len=32
    )
    generator = torch.Generator().manual_seed(0)
    model = Transformer(args)
    apply_lora(model, ["wq", "wk", "wv", "wo", "w1", "w2", "w3", "output"], r=2, alpha=6.0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    base = {key: value for key, value in model.state_dict().items() if "lora_" not in key}
    model_args = {
        key: getattr(args, key) for key in ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size")
    }
    model_args |= {
        "hidden_dim": 48,
        "norm_eps": args.norm_eps,
        "rope_theta": args.rope_theta,
        "max_seq_len": 32,
    }
    tokens = torch.randint(0, 16, (3, 11), generator=generator)
    with torch.no_grad():
        expected = model(tokens)
        actual = tiny_llama.forward(base, tokens, model_args, lora_state_dict(model), lora_scaling=3.0)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


def test_public_tests_pass_on_the_solution(package_grader):
    result = package_grader.public_tests(students.PACKAGE, students.SOLUTION)
    assert result.returncode == 0, result.stdout + result.stderr


def test_public_tests_fail_on_the_untouched_handout(package_grader):
    result = package_grader.public_tests(students.PACKAGE, None)
    assert result.returncode == 1 and "NotImplementedError" in result.stdout
