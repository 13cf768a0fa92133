"""The runner stub on its own: startup messages, per-call errors, mutation reports, stdout isolation, exit."""

import textwrap
from pathlib import Path

import pytest
import torch

from graders.protocol import pack_value, unpack_value
from tests.graders.conftest import Runner, start_runner

TOOLKIT = textwrap.dedent(
    """
    import sys
    import threading
    import time

    import numpy
    import torch

    class Sneaky(torch.Tensor):
        pass

    def double(x):
        return x * 2

    def pair(x):
        return [x + 1, {"count": int(x.numel()), "label": "ok"}]

    def fail(message):
        raise ValueError(message)

    def shout(x):
        print("shouting on stdout", x.shape)
        sys.stdout.write("LLMG" * 100)
        sys.stdout.flush()
        return x

    def in_place(x, y):
        x.add_(1)
        return x + y

    def subclass(x):
        return x.as_subclass(Sneaky)

    def as_numpy(x):
        return x.numpy()

    def unprintable():
        class Weird(Exception):
            def __str__(self):
                raise RuntimeError("no")
        raise Weird()

    def start_lingering_thread():
        threading.Thread(target=time.sleep, args=(3600,)).start()
        return None

    def _private():
        return 1

    CONSTANT = 3
    """
)


@pytest.fixture(scope="module")
def toolkit(runner_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    workdir = tmp_path_factory.mktemp("toolkit") / "work"
    workdir.mkdir()
    (workdir / "toolkit.py").write_text(TOOLKIT)
    with start_runner(runner_dir, workdir, "toolkit") as runner:
        ready, _ = runner.channel.recv(timeout=60)
        yield runner, ready


_next_id = iter(range(1, 10_000))


def call(runner: Runner, fn: str, *args, **kwargs) -> dict:
    call_id = next(_next_id)
    (packed_args, packed_kwargs), tensors = pack_value([list(args), kwargs])
    runner.channel.send(
        {"op": "call", "id": call_id, "fn": fn, "args": packed_args, "kwargs": packed_kwargs}, tensors
    )
    header, received = runner.channel.recv(timeout=30)
    assert header["id"] == call_id
    if header["ok"]:
        header["value"] = unpack_value(header["value"], received)
    return header


def test_ready_lists_public_callables_only(toolkit):
    _, ready = toolkit
    assert ready["op"] == "ready"
    assert "double" in ready["names"] and "Sneaky" in ready["names"]
    assert "_private" not in ready["names"] and "CONSTANT" not in ready["names"]


def test_call_returns_tensor_and_timing(toolkit):
    runner, _ = toolkit
    result = call(runner, "double", torch.arange(4.0))
    assert result["ok"] is True
    assert torch.equal(result["value"], torch.tensor([0.0, 2.0, 4.0, 6.0]))
    assert result["mutated"] == []
    assert result["elapsed_s"] >= 0


def test_call_returns_nested_values(toolkit):
    runner, _ = toolkit
    result = call(runner, "pair", torch.zeros(2))
    tensor, info = result["value"]
    assert torch.equal(tensor, torch.ones(2))
    assert info == {"count": 2, "label": "ok"}


def test_exception_is_reported_with_student_frames_only(toolkit):
    runner, _ = toolkit
    result = call(runner, "fail", "bad shape")
    assert result["ok"] is False and result["kind"] == "exception"
    assert result["error"] == "ValueError: bad shape"
    assert "toolkit.py" in result["traceback"] and "raise ValueError(message)" in result["traceback"]
    assert "runner.py" not in result["traceback"]


def test_exception_whose_str_raises_is_still_reported(toolkit):
    runner, _ = toolkit
    result = call(runner, "unprintable")
    assert result["ok"] is False and result["error"] == "Weird: <unprintable>"


@pytest.mark.parametrize("name", ["missing_function", "_private", "CONSTANT"])
def test_missing_private_or_non_callable_names_are_per_call_errors(toolkit, name):
    runner, _ = toolkit
    result = call(runner, name)
    assert result["ok"] is False and result["kind"] == "missing"
    assert name in result["error"]


def test_tensor_subclass_result_is_refused_with_a_clear_error(toolkit):
    runner, _ = toolkit
    result = call(runner, "subclass", torch.ones(2))
    assert result["ok"] is False and result["kind"] == "bad_result"
    assert result["error"] == (
        "the result of subclass is a toolkit.Sneaky, expected a torch.Tensor (a plain tensor, not a subclass)"
    )


def test_numpy_result_is_refused_with_a_clear_error(toolkit):
    runner, _ = toolkit
    result = call(runner, "as_numpy", torch.ones(2))
    assert result["ok"] is False
    assert "the result of as_numpy is a numpy.ndarray, which cannot be sent" in result["error"]


def test_in_place_changes_to_inputs_are_reported(toolkit):
    runner, _ = toolkit
    result = call(runner, "in_place", torch.zeros(3), torch.ones(3))
    assert result["ok"] is True
    assert result["mutated"] == ["args[0]"]


def test_prints_go_to_stderr_not_the_protocol(toolkit):
    runner, _ = toolkit
    result = call(runner, "shout", torch.ones(1))
    assert result["ok"] is True
    assert call(runner, "double", torch.ones(1))["ok"] is True
    assert "shouting on stdout" in runner.stderr()


def test_shutdown_exits_promptly_despite_lingering_threads(runner_dir: Path, tmp_path: Path):
    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / "toolkit.py").write_text(TOOLKIT)
    with start_runner(runner_dir, workdir, "toolkit") as runner:
        runner.channel.recv(timeout=60)
        assert call(runner, "start_lingering_thread")["ok"] is True
        runner.channel.send({"op": "shutdown"})
        assert runner.process.wait(timeout=10) == 0


@pytest.mark.parametrize(
    ("source", "error", "line"),
    [
        ("import torch\nx = 1 / 0\n", "ZeroDivisionError: division by zero", "x = 1 / 0"),
        ("def broken(:\n    pass\n", "SyntaxError", "def broken(:"),
        ("import numpyy\n", "ModuleNotFoundError: No module named 'numpyy'", "import numpyy"),
        ("import sys\nsys.exit(4)\n", "SystemExit: 4", "sys.exit(4)"),
    ],
    ids=["zero-division", "syntax", "missing-module", "sys-exit"],
)
def test_import_failures_are_reported_and_the_runner_exits_cleanly(runner_dir, tmp_path, source, error, line):
    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / "student.py").write_text(source)
    with start_runner(runner_dir, workdir, "student") as runner:
        header, tensors = runner.channel.recv(timeout=60)
        assert runner.process.wait(timeout=10) == 0
    assert header["op"] == "import_error" and tensors == {}
    assert header["error"].startswith(error)
    assert line in header["traceback"]
    assert "runner.py" not in header["traceback"] and "importlib" not in header["traceback"]
