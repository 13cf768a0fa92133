"""Checked calls with an inputs directory: CPU inputs travel through files the grader keeps open.

The runner runs here without a sandbox, so the directory's "inside" path is its host path.
"""

import contextlib
import os
import subprocess
from pathlib import Path

import pytest
import torch

from graders.harness import _SharedInputs, grade
from graders.package import AssignmentPackage
from tests.graders import students
from tests.graders.conftest import runner_options, start_runner

# Mutates its input, then makes everything the runner sends back look untouched: the flag it reports and the
# input tensors it returns (swapped for copies taken before the call).
SWAPS_THE_INPUTS_IT_SENDS_BACK = """import gc
import torch

_channel = next(obj for obj in gc.get_objects() if type(obj).__name__ == "Channel")
_send = _channel.send
_pristine = {}

def _hiding_send(header, tensors=None, **options):
    if isinstance(header, dict) and header.get("op") == "result":
        header = {**header, "mutated": []}
        tensors = {
            name: _pristine.get(tensor.data_ptr(), tensor) for name, tensor in (tensors or {}).items()
        }
    return _send(header, tensors, **options)

_channel.send = _hiding_send

def _remember(*tensors):
    _pristine.clear()
    for tensor in tensors:
        _pristine[tensor.data_ptr()] = tensor.clone()

def softmax(x, dim=-1):
    _remember(x)
    values = x.float()
    exps = (values - values.amax(dim=dim, keepdim=True)).exp()
    x.copy_((exps / exps.sum(dim=dim, keepdim=True)).to(x.dtype))
    return x.clone()

def rms_norm(x, weight, eps=1e-6):
    _remember(x, weight)
    values = x.float()
    x.copy_((values * torch.rsqrt(values.pow(2).mean(-1, keepdim=True) + eps) * weight).to(x.dtype))
    return x.clone()
"""

# Mutates its input, then unlinks every mapped file and puts an untouched copy in its place.
REPLACES_THE_FILES = (
    """import os
import torch

def _replace_mapped_files():
    with open("/proc/self/maps") as maps:
        found = [line.split(maxsplit=5)[5].strip() for line in maps if "/.inputs/" in line]
    paths = {path for path in found if not path.endswith("(deleted)")}  # earlier calls' files
    for path in paths:
        with open(path, "rb") as handle:
            data = handle.read()
        os.unlink(path)
        with open(path, "wb") as handle:
            handle.write(bytes(len(data)))

def softmax(x, dim=-1):
    values = x.float()
    exps = (values - values.amax(dim=dim, keepdim=True)).exp()
    x.copy_((exps / exps.sum(dim=dim, keepdim=True)).to(x.dtype))
    result = x.clone()
    _replace_mapped_files()
    return result
"""
    + students._CORRECT_RMS_NORM
)

# Writes into its input and restores it before returning: the caller's input ends up untouched.
RESTORES_ITS_INPUT = (
    """import torch

def softmax(x, dim=-1):
    saved = x.clone()
    values = x.float()
    exps = (values - values.amax(dim=dim, keepdim=True)).exp()
    x.copy_((exps / exps.sum(dim=dim, keepdim=True)).to(x.dtype))
    result = x.clone()
    x.copy_(saved)
    return result
"""
    + students._CORRECT_RMS_NORM
)


def grade_with_inputs_dir(runner_dir: Path, package: AssignmentPackage, workdir: Path, source: str):
    workdir.mkdir()
    (workdir / f"{package.module}.py").write_text(source)
    inputs_dir = workdir / ".inputs"
    with start_runner(runner_dir, workdir, package.module, runner_options(package)) as runner:
        report = grade(
            package,
            runner.channel,
            seed=99,
            benchmarks=False,
            inputs_dir=inputs_dir,
            inputs_dir_inside=str(inputs_dir),
        )
        runner.process.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            runner.process.wait(timeout=1)
    return report, inputs_dir


def failed(report) -> set[str]:
    return {test.name for test in report.tests if not test.passed}


def test_the_solution_passes_and_no_input_file_is_left(runner_dir, warmup_package, tmp_path):
    report, inputs_dir = grade_with_inputs_dir(runner_dir, warmup_package, tmp_path / "w", students.SOLUTION)
    assert report.status == "graded" and report.score == report.max_score, report
    assert list(inputs_dir.iterdir()) == []


@pytest.mark.parametrize(
    "source",
    [
        students.SOFTMAX_MUTATES_INPUT,
        students.HIDES_ITS_MUTATION,
        SWAPS_THE_INPUTS_IT_SENDS_BACK,
        REPLACES_THE_FILES,
    ],
    ids=["plain", "hides-its-report", "swaps-sent-back-inputs", "replaces-the-files"],
)
def test_a_mutation_is_seen_however_it_is_hidden(runner_dir, warmup_package, tmp_path, source):
    report, inputs_dir = grade_with_inputs_dir(runner_dir, warmup_package, tmp_path / "w", source)
    assert report.status == "graded", report
    assert failed(report) == {"inputs_not_mutated"}, report
    assert list(inputs_dir.iterdir()) == []


def test_swapping_sent_back_inputs_fools_the_fallback_without_an_inputs_dir(grade_source):
    # Documents why the inputs directory exists: without it the check rests on what the runner sends back.
    assert grade_source(SWAPS_THE_INPUTS_IT_SENDS_BACK).failed_tests() == set()


def test_an_input_restored_before_returning_is_not_mutated(runner_dir, warmup_package, tmp_path):
    report, _ = grade_with_inputs_dir(runner_dir, warmup_package, tmp_path / "w", RESTORES_ITS_INPUT)
    assert report.status == "graded" and failed(report) == set(), report


def test_shared_inputs_compare_bit_for_bit_through_the_held_descriptor(tmp_path):
    shared = _SharedInputs(tmp_path / "inputs", "/inside")
    x = torch.tensor([0.0, float("nan"), 1.5])
    y = torch.arange(6, dtype=torch.int64).reshape(2, 3).t()  # not contiguous
    shared.add("t0", x)
    shared.add("t1", y)
    assert shared.specs["t1"]["shape"] == [3, 2] and shared.specs["t0"]["path"].startswith("/inside/")
    assert not shared.changed(x) and not shared.changed(y)
    path = tmp_path / "inputs" / shared.specs["t0"]["path"].rsplit("/", 1)[1]
    assert path.stat().st_mode & 0o777 == 0o666
    mapped = torch.from_file(str(path), shared=True, size=3, dtype=torch.float32)
    mapped[0] = -0.0  # differs from 0.0 in its bits only
    assert shared.changed(x)
    mapped[0] = 0.0
    assert not shared.changed(x)
    os.unlink(path)
    path.write_bytes(b"\0" * 12)  # a stand-in with other bytes is not what is read
    mapped[1] = 2.0
    assert shared.changed(x)
    shared.close()
    assert list((tmp_path / "inputs").iterdir()) == []


def test_a_symlinked_inputs_directory_is_refused(tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir()
    (tmp_path / "inputs").symlink_to(target)
    with pytest.raises(OSError):
        _SharedInputs(tmp_path / "inputs", "/inside")
    assert list(target.iterdir()) == []
