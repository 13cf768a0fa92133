"""A stand-in for the runner stub: the sandbox's side of the protocol in a thread, answering as a test says.

It lets the harness be driven by a "sandbox" whose timing, clock and messages a test controls exactly: honest,
slow, lying about its own timing, or sending malformed and oversized messages.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from graders.harness import GradeReport, _input_tensors, grade
from graders.package import AssignmentPackage, TestSpec
from graders.protocol import DTYPES_BY_NAME, Channel, ProtocolError, pack_value, unpack_value
from graders.static_check import StaticCheckSpec

# What a call handler returns: a (header, tensors) message to send, or raw bytes to write as they are.
Reply = tuple[dict, dict[str, torch.Tensor]] | bytes
CallHandler = Callable[[dict, dict[str, torch.Tensor]], Reply]


def ok(header: dict, value: Any, *, elapsed_s: float = 0.0, **extra: Any) -> Reply:
    """A successful result of the call ``header``."""
    packed, tensors = pack_value(value)
    result = {
        "op": "result",
        "id": header["id"],
        "ok": True,
        "value": packed,
        "mutated": [],
        "elapsed_s": elapsed_s,
        **extra,
    }
    return result, tensors


def first_tensor(tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    return tensors["t0"]


@dataclass
class FakeRunner:
    """Serve the protocol on pipes; ``channel`` is the grader's end. Use as ``with FakeRunner(...) as fake``."""

    on_call: CallHandler
    transport_s: float = 0.0  # added to every calibration and call reply
    transport_after_import_s: float | None = None  # a different cost for calibration after the import
    hello: dict = field(default_factory=lambda: {"op": "hello", "problems": []})
    ready: dict = field(default_factory=lambda: {"op": "ready", "names": ["double"]})
    requests: list[dict] = field(default_factory=list)  # every request header received, in order
    inputs: list[torch.Tensor] = field(default_factory=list)  # the first tensor of every call
    channel: Channel = field(init=False)

    def __post_init__(self) -> None:
        to_runner_read, to_runner_write = os.pipe()
        from_runner_read, from_runner_write = os.pipe()
        self._fds = [to_runner_read, from_runner_write]
        self.channel = Channel(
            os.fdopen(from_runner_read, "rb", buffering=0),
            os.fdopen(to_runner_write, "wb", buffering=0),
            default_timeout=20,
        )
        self._side = Channel(
            os.fdopen(to_runner_read, "rb", buffering=0), os.fdopen(from_runner_write, "wb", buffering=0)
        )
        self._write_fd = from_runner_write
        self._imported = False
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> FakeRunner:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.channel.close()
        self._thread.join(timeout=10)
        self._side.close()

    def _serve(self) -> None:
        try:
            self._side.send(self.hello)
            while True:
                header, tensors = self._side.recv()
                self.requests.append(header)
                op = header["op"]
                if op == "shutdown":
                    return
                if op == "import":
                    self._imported = True
                    self._side.send(self.ready)
                elif op == "flush":
                    self._side.send({"op": "flushed", "id": header["id"]})
                elif op == "calibrate":
                    self._calibrate(header)
                else:
                    self.inputs.append(first_tensor(tensors))
                    time.sleep(self.transport_s)
                    self._answer(self._with_inputs(header, tensors, self.on_call(header, tensors)))
        except (EOFError, ProtocolError, OSError, ValueError):
            return

    def _calibrate(self, header: dict) -> None:
        delay = self.transport_s
        if self._imported and self.transport_after_import_s is not None:
            delay = self.transport_after_import_s
        time.sleep(delay)
        reply = [torch.zeros(spec["shape"], dtype=DTYPES_BY_NAME[spec["dtype"]]) for spec in header["reply"]]
        self._answer(ok(header, reply[0] if len(reply) == 1 else reply or None))

    @staticmethod
    def _with_inputs(header: dict, tensors: dict[str, torch.Tensor], reply: Reply) -> Reply:
        """Send the inputs back unchanged when the grader asks for them (and the handler did not)."""
        if isinstance(reply, bytes) or not header.get("return_inputs") or not reply[0].get("ok"):
            return reply
        result, out_tensors = reply
        if "inputs_after" in result:
            return reply
        args = unpack_value(header["args"], tensors)
        kwargs = unpack_value(header["kwargs"], tensors)
        inputs = _input_tensors(args, kwargs)
        returned = {f"input{index}": tensor for index, (_, tensor) in enumerate(inputs)}
        refs = [{"$tensor": name} for name in returned]
        return {**result, "inputs_after": refs}, {**out_tensors, **returned}

    def _answer(self, reply: Reply) -> None:
        if isinstance(reply, bytes):
            view = memoryview(reply)
            while view:
                view = view[os.write(self._write_fd, view) :]
        else:
            self._side.send(*reply)


class ReferenceProbe:
    """A reference implementation for fake benchmarks: doubles its input after ``seconds``, remembering inputs."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.inputs: list[torch.Tensor] = []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.clone())
        time.sleep(self.seconds)
        return x * 2


PROBE = ReferenceProbe()

FAKE_TESTS_PY = '''"""A one-test, one-benchmark package for driving the harness with a fake runner."""

from graders.harness import Case, Context, Suite
from tests.graders.fake_runner import PROBE

suite = Suite()


@suite.test("double")
def double(ctx: Context) -> None:
    x = ctx.randn(4)
    ctx.check_close(ctx.call("double", x), x * 2)


@suite.benchmark(
    "double_ms",
    shapes={"small": 16, "large": 256},
    reference=PROBE,
    warmup=1,
    min_reps=BENCH_REPS,
    max_reps=BENCH_REPS,
    max_seconds=30.0,
)
def speed(ctx: Context, size: int) -> Case:
    return Case("double", (ctx.randn(size),))
'''


def fake_package(
    base: AssignmentPackage,
    directory: Path,
    *,
    reps: int = 5,
    static_check: StaticCheckSpec | None = None,
    **overrides: Any,
) -> AssignmentPackage:
    """A package whose tests.py (written to ``directory``) has the test ``double`` and benchmark ``double_ms``."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tests.py").write_text(FAKE_TESTS_PY.replace("BENCH_REPS", str(reps)))
    fields: dict[str, Any] = {
        "path": directory,
        "tests": (TestSpec("double", 1.0, "visible", ""),),
        "leaderboard": None,
        "static_check": static_check or StaticCheckSpec(),
        "time_limit_s": 60.0,
        "call_timeout_s": 5.0,
        "startup_timeout_s": 10.0,
    }
    fields.update(overrides)
    return replace(base, **fields)


def doubles(*, compute_s: float = 0.0, elapsed_s: float | None = None) -> CallHandler:
    """An honest ``double``: sleeps ``compute_s`` and reports it (or ``elapsed_s``) as its own timing."""

    def handle(header: dict, tensors: dict[str, torch.Tensor]) -> Reply:
        time.sleep(compute_s)
        reported = compute_s if elapsed_s is None else elapsed_s
        return ok(header, first_tensor(tensors) * 2, elapsed_s=reported)

    return handle


@contextmanager
def graded_by(
    package: AssignmentPackage, on_call: CallHandler, *, benchmarks: bool = True, **runner: Any
) -> Iterator[tuple[GradeReport, FakeRunner]]:
    """Grade ``package`` against a fake runner; yields the report and the runner (its request log)."""
    with FakeRunner(on_call, **runner) as fake:
        report = grade(package, fake.channel, seed=99, benchmarks=benchmarks)
        yield report, fake
