"""The runner stub on its own: the start-up handshake, per-call errors, mutation reports, stdout isolation, exit,
calibration calls, result caps and the call monitors."""

import textwrap
from pathlib import Path

import pytest
import torch

from graders.protocol import MessageLimits, pack_value, unpack_value
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

    def many(count):
        return [torch.zeros(1) for _ in range(count)]

    def big(count):
        return torch.zeros(count)

    def long_list(count):
        return list(range(count))

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
        yield runner, handshake(runner)


_next_id = iter(range(1, 10_000))


def handshake(runner: Runner) -> dict:
    """hello, then import: returns the runner's answer to the import (ready or import_error)."""
    hello, _ = runner.channel.recv(timeout=60)
    assert hello == {"op": "hello", "problems": []}
    runner.channel.send({"op": "import"})
    answer, _ = runner.channel.recv(timeout=60)
    return answer


def call(runner: Runner, fn: str, *args, limits: MessageLimits | None = None, **kwargs) -> dict:
    call_id = next(_next_id)
    (packed_args, packed_kwargs), tensors = pack_value([list(args), kwargs])
    header = {"op": "call", "id": call_id, "fn": fn, "args": packed_args, "kwargs": packed_kwargs}
    if limits is not None:
        header["limits"] = limits.to_json()
    runner.channel.send(header, tensors)
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
        handshake(runner)
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
        header = handshake(runner)
        assert runner.process.wait(timeout=10) == 0
    assert header["op"] == "import_error"
    assert header["error"].startswith(error)
    assert line in header["traceback"]
    assert "runner.py" not in header["traceback"] and "importlib" not in header["traceback"]


SMALL = MessageLimits(max_header_bytes=64 * 1024, max_tensors=8, max_tensor_elements=1000)


@pytest.mark.parametrize(
    ("fn", "count", "complaint"),
    [
        ("many", 20, "the result of many cannot be sent back: it holds 20 tensors, at most 8 can be"),
        ("big", 5000, "the result of big cannot be sent back: it holds 5,000 tensor elements, at most 1,000"),
        ("long_list", 50_000, "the result of long_list cannot be sent back: its non-tensor part is over"),
    ],
    ids=["tensors", "elements", "header"],
)
def test_results_over_the_calls_limits_are_refused_with_a_clear_error(toolkit, fn, count, complaint):
    runner, _ = toolkit
    result = call(runner, fn, count, limits=SMALL)
    assert result["ok"] is False and result["kind"] == "bad_result"
    assert result["error"].startswith(complaint)
    assert call(runner, fn, 3, limits=SMALL)["ok"] is True


def calibrate(runner: Runner, x: torch.Tensor, reply: list[dict]) -> dict:
    (packed_args, packed_kwargs), tensors = pack_value([[x], {}])
    header = {
        "op": "calibrate",
        "id": next(_next_id),
        "args": packed_args,
        "kwargs": packed_kwargs,
        "reply": reply,
    }
    runner.channel.send(header, tensors)
    answer, received = runner.channel.recv(timeout=30)
    answer["value"] = unpack_value(answer["value"], received)
    return answer


def test_calibration_and_flush_are_served_before_and_after_the_import(runner_dir: Path, tmp_path: Path):
    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / "toolkit.py").write_text(TOOLKIT)
    reply = [{"shape": [3, 4], "dtype": "bfloat16", "device": "cpu"}]
    with start_runner(runner_dir, workdir, "toolkit") as runner:
        assert runner.channel.recv(timeout=60)[0]["op"] == "hello"
        before = calibrate(runner, torch.ones(1000), reply)
        runner.channel.send({"op": "flush", "id": 77})
        assert runner.channel.recv(timeout=30)[0] == {"op": "flushed", "id": 77}
        runner.channel.send({"op": "import"})
        assert runner.channel.recv(timeout=60)[0]["op"] == "ready"
        after = calibrate(runner, torch.ones(1000), [])
    assert before["ok"] is True and before["mutated"] == [] and before["elapsed_s"] < 0.1
    assert before["value"].shape == (3, 4) and before["value"].dtype == torch.bfloat16
    assert after["ok"] is True and after["value"] is None


def test_a_call_before_the_import_is_a_protocol_error(runner_dir: Path, tmp_path: Path):
    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / "toolkit.py").write_text(TOOLKIT)
    with start_runner(runner_dir, workdir, "toolkit") as runner:
        runner.channel.recv(timeout=60)
        runner.channel.send({"op": "call", "id": 1, "fn": "double", "args": [], "kwargs": {}})
        assert runner.process.wait(timeout=10) == 2
    assert "a call arrived before the module was imported" in runner.stderr()


MONITORED = textwrap.dedent(
    """
    import torch
    import triton
    import triton.language as tl

    sneaky_name = "soft" + "max"
    helper = torch.nn.RMSNorm(4)  # constructing a forbidden class while importing is recorded too


    @triton.jit
    def _add_one(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
        offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offsets < n
        tl.store(out_ptr + offsets, tl.load(x_ptr + offsets, mask=mask) + 1, mask=mask)


    def add_one(x):
        out = torch.empty_like(x)
        _add_one[(triton.cdiv(x.numel(), 64),)](x, out, x.numel(), BLOCK=64)
        return out


    def add_one_in_torch(x):
        return x + 1


    def evasive(x):
        return getattr(torch, sneaky_name)(x, -1)


    def method(x):
        return x.softmax(-1)
    """
)


def test_monitors_report_kernel_launches_and_forbidden_calls_per_call(runner_dir: Path, tmp_path: Path):
    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / "monitored.py").write_text(MONITORED)
    options = ["--watch-triton", "--forbid", "torch.softmax", "--forbid", "torch.Tensor.softmax"]
    options += ["--forbid", "torch.nn.RMSNorm", "--forbid", "not_installed.anything"]
    with start_runner(runner_dir, workdir, "monitored", options) as runner:
        ready = handshake(runner)
        results = {
            fn: call(runner, fn, torch.arange(8.0))
            for fn in ("add_one", "add_one_in_torch", "evasive", "method")
        }
    assert ready["op"] == "ready" and ready["forbidden_calls"] == ["torch.nn.RMSNorm"]
    assert torch.equal(results["add_one"]["value"], torch.arange(8.0) + 1)
    observed = {fn: (result["kernel_launches"], result["forbidden_calls"]) for fn, result in results.items()}
    assert observed == {
        "add_one": (1, []),
        "add_one_in_torch": (0, []),
        "evasive": (0, ["torch.softmax"]),
        "method": (0, ["torch.Tensor.softmax"]),
    }


def test_inputs_are_sent_back_after_the_call_when_asked(toolkit):
    runner, _ = toolkit
    (packed_args, packed_kwargs), tensors = pack_value([[torch.zeros(3), torch.ones(3)], {}])
    header = {
        "op": "call",
        "id": next(_next_id),
        "fn": "in_place",
        "args": packed_args,
        "kwargs": packed_kwargs,
    }
    runner.channel.send({**header, "return_inputs": True}, tensors)
    answer, received = runner.channel.recv(timeout=30)
    after = unpack_value(answer["inputs_after"], received)
    assert torch.equal(after[0], torch.ones(3)) and torch.equal(after[1], torch.ones(3))
    assert torch.equal(unpack_value(answer["value"], received), torch.full((3,), 2.0))
