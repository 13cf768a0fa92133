"""The benchmark methodology: transport calibration, floors and geometric means, the reference speed-up, fresh
inputs per call, every timed output checked, and staff flags when the sandbox's own clock disagrees."""

import math

import pytest
import torch

from graders.harness import (
    DEFAULT_SHAPE,
    ShapeSamples,
    ShapeSummary,
    Suite,
    benchmark_metrics,
    geometric_mean,
    median_relative_standard_error,
    summarize_shape,
    timing_flags,
    transport_overhead,
)
from tests.graders.fake_runner import PROBE, doubles, fake_package, first_tensor, graded_by, ok

MS = 1e-3


@pytest.fixture
def package(warmup_package, tmp_path):
    PROBE.seconds = 0.0
    PROBE.inputs.clear()
    return fake_package(warmup_package, tmp_path / "fake")


def summary(label: str, time_s: float, *, reference_s: float | None = None, sandbox_s: float | None = None):
    return ShapeSummary(label, time_s, time_s, 0.0, 0.0, sandbox_s, reference_s, 5)


# -- the arithmetic ----------------------------------------------------------------------------------------------


def test_transport_overhead_is_the_smaller_calibration_median():
    assert transport_overhead([3.0, 1.0, 2.0], [5.0, 4.0, 6.0]) == 2.0
    assert transport_overhead([3.0, 4.0, 5.0], [1.0, 1.5, 2.0]) == 1.5
    assert transport_overhead([], [2.0]) == 2.0
    assert transport_overhead([], []) == 0.0


def test_corrected_median_and_iqr_subtract_the_overhead():
    samples = ShapeSamples(
        "a",
        student=[11 * MS, 12 * MS, 13 * MS, 14 * MS, 15 * MS],
        overhead_before=[10 * MS] * 3,
        overhead_after=[10 * MS] * 3,
        reference=[6 * MS] * 5,
    )
    shape = summarize_shape(samples, floor_s=None)
    assert shape.overhead_s == pytest.approx(10 * MS)
    assert shape.time_s == pytest.approx(3 * MS)
    assert shape.iqr_s == pytest.approx(2 * MS)
    assert shape.reference_s == pytest.approx(6 * MS)


def test_a_shape_faster_than_its_floor_counts_as_the_floor():
    # Round trips no slower than the transport itself: the corrected time is 0, the floor 1% of the reference.
    samples = ShapeSamples("a", student=[5 * MS] * 4, overhead_before=[6 * MS] * 3, reference=[10 * MS] * 4)
    shape = summarize_shape(samples, floor_s=None)
    assert shape.corrected_s == 0.0
    assert shape.time_s == pytest.approx(0.1 * MS)
    assert summarize_shape(samples, floor_s=2 * MS).time_s == pytest.approx(2 * MS)


def test_shapes_combine_by_geometric_mean_and_the_speedup_compares_with_the_reference():
    shapes = [summary("small", 1 * MS, reference_s=4 * MS), summary("large", 9 * MS, reference_s=9 * MS)]
    metrics = benchmark_metrics("attn_ms", "ms", shapes)
    assert metrics["attn_ms"] == pytest.approx(3.0)  # sqrt(1 * 9)
    assert metrics["attn_ms.small"] == pytest.approx(1.0) and metrics["attn_ms.large"] == pytest.approx(9.0)
    assert metrics["attn_ms_reference"] == pytest.approx(6.0)  # sqrt(4 * 9)
    assert metrics["attn_ms_speedup"] == pytest.approx(2.0)
    assert metrics["attn_ms_reps"] == 10


def test_without_a_reference_there_is_no_speedup():
    metrics = benchmark_metrics("t_us", "us", [summary(DEFAULT_SHAPE, 2e-6)])
    assert metrics["t_us"] == pytest.approx(2.0)
    assert "t_us_speedup" not in metrics and "t_us_reference" not in metrics


def test_geometric_mean():
    assert geometric_mean([2.0, 8.0]) == pytest.approx(4.0)
    assert geometric_mean([5.0]) == pytest.approx(5.0)


def test_relative_standard_error_of_the_median_shrinks_with_more_samples():
    noisy = [1.0, 1.1, 0.9, 1.05, 0.95]
    assert median_relative_standard_error([1.0]) == math.inf
    assert median_relative_standard_error(noisy * 4) < median_relative_standard_error(noisy)
    assert median_relative_standard_error([2.0] * 10) == 0.0


@pytest.mark.parametrize(
    ("corrected_ms", "sandbox_ms", "flagged"),
    [(1.0, 1.1, False), (2.5, 1.0, False), (8.0, 1.0, True), (0.2, 1.0, True), (0.01, 0.001, False)],
    ids=["agree", "within-range", "trusted-far-slower", "sandbox-far-slower", "below-the-noise"],
)
def test_disagreeing_clocks_raise_a_staff_flag(corrected_ms, sandbox_ms, flagged):
    shape = ShapeSummary("a", corrected_ms * MS, corrected_ms * MS, 0.0, 0.1 * MS, sandbox_ms * MS, None, 5)
    flags = timing_flags("m", shape, ShapeSamples("a"))
    assert bool(flags) is flagged
    if flagged:
        assert flags[0].startswith("timing: m.a took") and "sandbox's own clock" in flags[0]


def test_calibration_slower_after_the_import_raises_a_staff_flag():
    shape = summary("a", 1 * MS)
    drifted = ShapeSamples("a", overhead_before=[1 * MS] * 3, overhead_after=[5 * MS] * 3)
    steady = ShapeSamples("a", overhead_before=[1 * MS] * 3, overhead_after=[1.2 * MS] * 3)
    assert "no-op round trips took 5 ms after" in timing_flags("m", shape, drifted)[0]
    assert timing_flags("m", shape, steady) == []


@pytest.mark.parametrize(
    ("options", "complaint"),
    [
        ({"shapes": {}}, "shapes must map labels"),
        ({"shapes": {"a b": 1}}, "shapes must map labels"),
        ({"shapes": {"a": 1}, "floor": {"b": 1.0}}, "floor must give a value for exactly the shapes"),
        ({"floor": -1.0}, "floors must be positive"),
        ({"warmup_seconds": 0}, "warmup_seconds > 0"),
        ({"reference": "ref.softmax"}, "reference must be callable"),
    ],
    ids=["no-shapes", "bad-label", "floor-labels", "negative-floor", "warmup-cap", "reference"],
)
def test_benchmark_options_are_validated(options, complaint):
    with pytest.raises(ValueError, match=complaint):
        Suite().benchmark("m", **options)


# -- against a runner whose timing the test controls -----------------------------------------------------------


def test_transport_overhead_is_subtracted_and_the_speedup_reported(package):
    PROBE.seconds = 40 * MS
    with graded_by(package, doubles(compute_s=20 * MS), transport_s=15 * MS) as (report, _):
        metrics = report.metrics
    assert report.status == "graded" and report.score == 1
    for label in ("small", "large"):
        assert 13 * MS < metrics[f"double_ms.{label}_overhead"] / 1e3 < 25 * MS
        assert 15 < metrics[f"double_ms.{label}"] < 30  # 20 ms of work, not 30 ms of round trip
    assert 15 < metrics["double_ms"] < 30
    assert 1.4 < metrics["double_ms_speedup"] < 2.8
    assert metrics["double_ms_warmup_calls"] == 2 and metrics["double_ms_reps"] == 10
    assert report.flags == [] and report.hardware_class == "cpu"


def test_calibration_runs_before_the_import_and_timed_calls_get_fresh_inputs(package):
    with graded_by(package, doubles()) as (report, fake):
        ops = [header["op"] for header in fake.requests]
    assert report.metrics["double_ms"] > 0
    first_import = ops.index("import")
    assert set(ops[:first_import]) == {"calibrate"} and len(ops[:first_import]) == 2 * 12
    assert "call" not in ops[:first_import]
    timed = [tensor for tensor in fake.inputs if tensor.numel() in (16, 256)]
    assert len(timed) == 2 * (1 + 5)  # a warm-up and five timed calls per shape
    assert len({tuple(tensor.tolist()) for tensor in timed}) == len(timed)
    assert all(len(header.get("args", [])) == 1 for header in fake.requests if header["op"] == "call")


def test_the_reference_is_timed_on_exactly_the_students_inputs(package):
    with graded_by(package, doubles()) as (report, fake):
        assert report.metrics["double_ms_reference"] > 0
    for size in (16, 256):
        student = [tensor for tensor in fake.inputs if tensor.numel() == size][1:]  # after the warm-up
        reference = [tensor for tensor in PROBE.inputs if tensor.numel() == size][-len(student) :]
        assert all(torch.equal(a, b) for a, b in zip(student, reference, strict=True))


def test_a_sandbox_that_misreports_its_own_timing_is_flagged_for_staff(package):
    with graded_by(package, doubles(compute_s=20 * MS, elapsed_s=1e-6)) as (report, _):
        assert report.status == "graded"
    assert len(report.flags) == 2
    assert all("by the sandbox's own clock" in flag for flag in report.flags)
    assert not any("flag" in note or "sandbox" in note for note in report.notes)
    assert "flags" not in report.student_json() and report.to_json()["flags"] == report.flags


def test_slowing_down_calibration_after_the_import_does_not_lower_the_time(package):
    with graded_by(
        package, doubles(compute_s=20 * MS), transport_s=5 * MS, transport_after_import_s=40 * MS
    ) as (report, _):
        metrics = report.metrics
    assert 15 < metrics["double_ms"] < 30  # the untampered calibration before the import was used
    assert any("no-op round trips took" in flag for flag in report.flags)


def test_a_wrong_output_while_timed_records_no_metric(package):
    calls = 0

    def wrong_on_the_fourth_call(header, tensors):
        nonlocal calls
        calls += 1
        factor = 3 if calls == 4 else 2
        return ok(header, first_tensor(tensors) * factor)

    with graded_by(package, wrong_on_the_fourth_call) as (report, _):
        assert report.status == "graded" and report.score == 1
    assert report.metrics == {}
    assert report.notes[0].startswith("double_ms was not recorded: during timing, the output of double")


def test_metrics_are_floats_and_the_hardware_class_is_separate(package):
    with graded_by(package, doubles()) as (report, _):
        assert all(type(value) is float for value in report.metrics.values())
        assert "device" not in report.metrics and report.hardware_class == "cpu"
