"""Self-test of the warm-up package: full marks for the solution, zero for the handout, planted bugs lose exactly
their tests, and hostile or broken submissions end in a clear report instead of a crashed grader."""

import subprocess
import sys
import time

import pytest

from tests.graders import students

ALL_TESTS = {
    "softmax_basic",
    "softmax_other_dim",
    "softmax_large_logits",
    "softmax_half_precision",
    "rms_norm_basic",
    "rms_norm_eps",
    "rms_norm_batch_3d",
    "inputs_not_mutated",
}
SOFTMAX_TESTS = ["softmax_basic", "softmax_other_dim", "softmax_large_logits", "softmax_half_precision"]


def test_solution_scores_full_marks_with_metrics(grade_source):
    graded = grade_source(students.SOLUTION, benchmarks=True)
    report = graded.report
    assert (report.status, report.failure_reason) == ("graded", None)
    assert [test.message for test in report.tests] == ["passed"] * len(ALL_TESTS)
    assert report.score == report.max_score == 10
    metrics = report.metrics
    assert (
        metrics["softmax_ms"] > 0
        and metrics["softmax_ms_speedup"] > 0
        and metrics["softmax_ms_reference"] > 0
    )
    assert metrics["softmax_ms_reps"] >= 2 and metrics["softmax_ms_warmup_calls"] >= 2
    for shape in ("256x1024", "2048x128"):
        assert metrics[f"softmax_ms.{shape}"] > 0 and metrics[f"softmax_ms.{shape}_reps"] >= 1
        for figure in ("iqr", "sandbox", "reference", "overhead"):
            assert f"softmax_ms.{shape}_{figure}" in metrics
    assert report.hardware_class == "cpu"
    assert graded.returncode == 0


def test_untouched_handout_scores_zero_with_clear_messages(grade_source):
    report = grade_source(students.HANDOUT, benchmarks=True).report
    assert report.status == "graded"
    assert report.score == 0 and report.max_score == 10
    assert report.metrics == {}
    for test in report.tests:
        assert "NotImplementedError" in test.message and "raised" in test.message
        assert test.detail is not None and "warmup.py" in test.detail and "runner.py" not in test.detail
    assert "Speed is only measured once every test passes." in report.notes


@pytest.mark.parametrize(
    ("source", "lost"),
    [
        (students.SOFTMAX_WITHOUT_MAX, {"softmax_large_logits"}),
        (students.SOFTMAX_IGNORES_DIM, {"softmax_other_dim"}),
        (students.RMS_NORM_EPS_OUTSIDE_SQRT, {"rms_norm_eps"}),
        (students.SOFTMAX_MUTATES_INPUT, {"inputs_not_mutated"}),
        (students.HIDES_ITS_MUTATION, {"inputs_not_mutated"}),
    ],
    ids=["softmax-without-max", "softmax-ignores-dim", "eps-outside-sqrt", "mutates-input", "hides-mutation"],
)
def test_planted_bug_loses_exactly_its_tests(grade_source, source, lost):
    graded = grade_source(source)
    assert graded.report.status == "graded"
    assert graded.failed_tests() == lost
    assert graded.report.score == 10 - sum(graded.outcome(name).max_score for name in lost)


def test_failure_message_of_hidden_test_gives_error_size_not_expected_values(grade_source):
    message = grade_source(students.SOFTMAX_WITHOUT_MAX).outcome("softmax_large_logits").message
    assert "does not match the expected values" in message
    assert "NaN or infinite" in message
    assert "expected 0" not in message and "got nan" not in message


def test_mutation_is_named_in_the_message(grade_source):
    message = grade_source(students.SOFTMAX_MUTATES_INPUT).outcome("inputs_not_mutated").message
    assert "softmax modified its input (args[0]) in place" in message


def test_import_error_fails_the_run_and_names_the_exception(grade_source):
    report = grade_source(students.RAISES_ON_IMPORT).report
    assert report.status == "failed"
    assert "could not be imported" in report.failure_reason
    assert "RuntimeError: the model weights are missing" in report.failure_reason
    assert report.failure_detail is not None and "warmup.py" in report.failure_detail
    assert report.score == 0 and all(not test.passed for test in report.tests)
    assert all(test.message == "Not run: your module could not be imported." for test in report.tests)


def test_exit_mid_call_fails_the_run_and_keeps_earlier_scores(grade_source):
    graded = grade_source(students.EXITS_IN_RMS_NORM)
    report = graded.report
    assert report.status == "failed"
    assert report.failure_reason == "Your program exited during test rms_norm_basic."
    assert graded.returncode == 3
    assert all(graded.outcome(name).passed for name in SOFTMAX_TESTS)
    assert report.score == sum(graded.outcome(name).max_score for name in SOFTMAX_TESTS)
    assert graded.outcome("rms_norm_eps").message.startswith(
        "Not run: your program exited during test rms_norm_basic"
    )


def test_call_that_never_returns_fails_within_the_call_timeout(grade_source):
    started = time.monotonic()
    graded = grade_source(students.SLEEPS_IN_RMS_NORM, call_timeout_s=1.0)
    assert time.monotonic() - started < 15
    report = graded.report
    assert report.status == "failed"
    assert report.failure_reason == (
        "Your program stopped responding during test rms_norm_basic: "
        "rms_norm took longer than 1 s (the time limit for one call)."
    )
    assert report.score > 0  # the softmax tests that passed before it keep their points
    assert (
        graded.outcome("rms_norm_basic").message
        == "rms_norm took longer than 1 s (the time limit for one call)."
    )
    assert graded.failed_tests() == {
        "rms_norm_basic",
        "rms_norm_eps",
        "rms_norm_batch_3d",
        "inputs_not_mutated",
    }
    assert graded.outcome("inputs_not_mutated").message.startswith("Not run: your program stopped responding")
    assert graded.returncode is None  # still asleep: the grader left it for the caller to kill


def test_whole_run_time_limit_is_enforced(grade_source):
    graded = grade_source(students.SLEEPS_IN_RMS_NORM, time_limit_s=5.0, call_timeout_s=5.0)
    assert graded.report.status == "failed"
    assert "ran out of time" in (graded.report.failure_reason or "")
    messages = [test.message for test in graded.report.tests]
    assert "The whole run took longer than its 5 s time limit." in messages


def test_tensor_subclass_and_list_results_fail_with_clear_messages(grade_source):
    graded = grade_source(students.RETURNS_SUBCLASS_AND_LIST)
    assert graded.report.status == "graded" and graded.report.score == 0
    softmax_message = graded.outcome("softmax_basic").message
    assert "the result of softmax is a warmup.Sneaky, expected a torch.Tensor" in softmax_message
    rms_message = graded.outcome("rms_norm_basic").message
    assert "is a list, expected a torch.Tensor" in rms_message


def test_garbage_on_the_protocol_fails_the_run_without_crashing_the_grader(grade_source):
    report = grade_source(students.WRITES_GARBAGE_TO_PROTOCOL).report
    assert report.status == "failed"
    assert report.failure_reason.startswith(
        "Your program broke the grading protocol during test softmax_basic"
    )
    assert "magic" in report.failure_reason
    assert report.score == 0


def test_student_prints_do_not_corrupt_the_protocol(grade_source):
    graded = grade_source(students.PRINTS_EVERYWHERE)
    assert graded.report.score == 10
    assert "hello from import time" in graded.stderr
    assert "softmax called with (1, 8)" in graded.stderr
    assert "raw bytes on fd 1" in graded.stderr


def test_progress_is_reported_for_every_test(runner_dir, warmup_package, tmp_path):
    from graders.harness import grade
    from tests.graders.conftest import start_runner

    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / "warmup.py").write_text(students.SOLUTION)
    calls = []
    with start_runner(runner_dir, workdir, "warmup") as runner:
        grade(
            warmup_package,
            runner.channel,
            seed=7,
            benchmarks=False,
            on_progress=lambda *args: calls.append(args),
        )
    names = [spec.name for spec in warmup_package.tests]
    assert calls == [(index, len(names), name) for index, name in enumerate(names)] + [
        (len(names), len(names), "")
    ]


def test_public_handout_tests_pass_on_the_solution(tmp_path):
    (tmp_path / "test_public.py").write_text((students.WARMUP / "handout" / "test_public.py").read_text())
    (tmp_path / "warmup.py").write_text(students.SOLUTION)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(tmp_path),
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_wrong_output_while_timed_records_no_metric(grade_source):
    report = grade_source(students.WRONG_WHEN_TIMED, benchmarks=True).report
    assert report.status == "graded" and report.score == 10
    assert report.metrics == {}
    assert any(note.startswith("softmax_ms was not recorded: during timing,") for note in report.notes)


def test_a_forbidden_call_that_evades_the_static_check_fails_at_run_time(grade_source):
    graded = grade_source(students.EVADES_STATIC_CHECK)
    report = graded.report
    assert report.status == "graded"
    assert graded.failed_tests() == {*SOFTMAX_TESTS, "inputs_not_mutated"}
    assert graded.outcome("softmax_basic").message == (
        "softmax called torch.softmax, which this assignment does not allow"
    )
    assert "runtime check: softmax called torch.softmax during test softmax_basic" in report.flags
