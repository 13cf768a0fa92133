"""The trusted grading harness: runs an assignment's tests.py against a student's code in the sandbox.

An assignment's ``tests.py`` declares its cases on a :class:`Suite`::

    suite = Suite()

    @suite.test("softmax_basic")
    def softmax_basic(ctx: Context) -> None:
        x = ctx.randn(4, 16)
        ctx.check_close(ctx.call("softmax", x, dim=-1), ref.softmax(x, dim=-1))

    @suite.benchmark("softmax_ms", unit="ms")
    def softmax_speed(ctx: Context) -> Case:
        x = ctx.randn(512, 1024)
        return Case("softmax", (x,), {"dim": -1}, expected=ref.softmax(x, dim=-1))

:func:`grade` drives those cases over a :class:`~graders.protocol.Channel` to the runner stub, which executes the
student's functions; inputs come from the secret per-run seed, expected values never leave this process, and
every reply is validated before a check looks at it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import math
import random
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from graders.protocol import Channel, ProtocolError, pack_value, unpack_value

if TYPE_CHECKING:
    from graders.package import AssignmentPackage

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int, str], None]

# (rtol, atol) when a check does not give its own; the float ones match torch.testing.assert_close.
DEFAULT_TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-7, 1e-7),
    torch.float32: (1.3e-6, 1e-5),
    torch.float16: (1e-3, 1e-5),
    torch.bfloat16: (1.6e-2, 1e-5),
}
TIME_UNITS = {"s": 1.0, "ms": 1e3, "us": 1e6}
MAX_STUDENT_TEXT = 2_000
MAX_STUDENT_TRACEBACK = 8_000
SHUTDOWN_TIMEOUT_S = 2.0


class TestFailure(Exception):
    """A check failed. The message is shown to the student, so it must not reveal hidden expected values."""

    __test__ = False  # not a pytest test class, despite the name

    def __init__(self, message: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.detail = detail


class CallError(TestFailure):
    """The student's function raised, is missing, or returned something that cannot be sent back."""


class GraderError(RuntimeError):
    """The assignment's tests.py is broken: an infrastructure fault, never the student's."""


class _Stop(BaseException):
    """The sandbox can no longer be used (exited, stuck, out of time, or broke the protocol).

    A BaseException so that a test's ``except Exception`` cannot swallow it.
    """

    def __init__(self, kind: Literal["exited", "protocol", "timeout", "time_limit"], message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


# -- the API tests.py is written against -------------------------------------------------------------------


@dataclass(frozen=True)
class CallResult:
    """One call's outcome: the returned value plus what the runner observed."""

    value: Any
    mutated: tuple[str, ...]  # input tensors the function changed in place, e.g. ("args[0]",)
    wall_s: float  # round trip measured here, the trusted figure
    sandbox_s: float | None  # what the runner measured around the call (untrusted)


@dataclass(frozen=True)
class Case:
    """One benchmark iteration: the call to time and the value its output must match."""

    fn: str
    args: tuple = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    expected: torch.Tensor | None = None
    rtol: float | None = None
    atol: float | None = None


TestFunction = Callable[["Context"], None]
CaseFactory = Callable[["Context"], Case]


@dataclass(frozen=True)
class Benchmark:
    metric: str
    factory: CaseFactory
    unit: str
    warmup: int
    min_reps: int
    max_reps: int
    max_seconds: float
    target_rse: float


class Suite:
    """The registry of an assignment's tests and benchmarks, in declaration order."""

    def __init__(self) -> None:
        self.tests: dict[str, TestFunction] = {}
        self.benchmarks: dict[str, Benchmark] = {}

    def test(self, name: str) -> Callable[[TestFunction], TestFunction]:
        """Register ``fn(ctx)`` as the test ``name`` (must match a ``[[tests]]`` entry in assignment.toml)."""
        if not isinstance(name, str) or not name:
            raise ValueError("a test needs a non-empty name")

        def register(function: TestFunction) -> TestFunction:
            if name in self.tests:
                raise ValueError(f"test {name!r} is registered twice")
            self.tests[name] = function
            return function

        return register

    def benchmark(
        self,
        metric: str,
        *,
        unit: str = "ms",
        warmup: int = 3,
        min_reps: int = 10,
        max_reps: int = 100,
        max_seconds: float = 10.0,
        target_rse: float = 0.01,
    ) -> Callable[[CaseFactory], CaseFactory]:
        """Register ``factory(ctx) -> Case`` as the timing of ``metric``.

        The factory is called once per iteration (warm-up included), so every iteration gets fresh inputs.
        Repetitions stop after ``max_reps``, after ``max_seconds``, or once at least ``min_reps`` are in and the
        relative standard error of the mean falls under ``target_rse``.
        """
        if unit not in TIME_UNITS:
            raise ValueError(f"unit must be one of {sorted(TIME_UNITS)}, got {unit!r}")
        if not (warmup >= 0 and 1 <= min_reps <= max_reps and max_seconds > 0 and target_rse > 0):
            raise ValueError("benchmark needs warmup >= 0, 1 <= min_reps <= max_reps, max_seconds > 0")

        def register(factory: CaseFactory) -> CaseFactory:
            if metric in self.benchmarks:
                raise ValueError(f"benchmark {metric!r} is registered twice")
            self.benchmarks[metric] = Benchmark(
                metric, factory, unit, warmup, min_reps, max_reps, max_seconds, target_rse
            )
            return factory

        return register


def derive_seed(seed: int, name: str) -> int:
    """A per-test seed, so a test's inputs do not depend on which tests ran before it."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def _type_name(obj: object) -> str:
    cls = type(obj)
    module = getattr(cls, "__module__", "")
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


def _format_index(flat_index: int, shape: torch.Size) -> str:
    """``[i, j, ...]`` of the element at ``flat_index`` in a row-major tensor of ``shape``."""
    index = []
    for size in reversed(shape):
        index.append(flat_index % size)
        flat_index //= size
    return "[" + ", ".join(str(i) for i in reversed(index)) + "]"


class _Session:
    """The state shared by every call of one grading run."""

    def __init__(self, package: AssignmentPackage, channel: Channel, seed: int) -> None:
        self.package = package
        self.channel = channel
        self.seed = seed
        self.deadline = time.monotonic() + package.time_limit_s
        self.next_id = 1
        self.device = torch.device("cuda" if package.queue == "gpu" and torch.cuda.is_available() else "cpu")

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def invoke(self, fn: str, args: tuple, kwargs: Mapping[str, Any]) -> CallResult:
        call_id = self.next_id
        self.next_id += 1
        (packed_args, packed_kwargs), tensors = pack_value([list(args), dict(kwargs)], name="the call")
        header = {"op": "call", "id": call_id, "fn": fn, "args": packed_args, "kwargs": packed_kwargs}

        limit = self.package.call_timeout_s
        remaining = self.remaining()
        if remaining <= 0:
            raise _Stop("time_limit", self._time_limit_message())
        timeout = min(limit, remaining)
        try:
            started = time.perf_counter()
            self.channel.send(header, tensors, timeout=timeout)
            reply, reply_tensors = self.channel.recv(
                timeout=max(0.0, timeout - (time.perf_counter() - started))
            )
            wall = time.perf_counter() - started
        except TimeoutError:
            if remaining < limit:
                raise _Stop("time_limit", self._time_limit_message()) from None
            raise _Stop(
                "timeout", f"{fn} took longer than {limit:g} s (the time limit for one call)"
            ) from None
        except EOFError:
            raise _Stop("exited", "exited") from None
        except ProtocolError as exc:
            raise _Stop("protocol", str(exc)) from None
        try:
            return _parse_result(reply, reply_tensors, call_id, fn, wall)
        except ProtocolError as exc:
            raise _Stop("protocol", str(exc)) from None

    def _time_limit_message(self) -> str:
        return f"The whole run took longer than its {self.package.time_limit_s:g} s time limit"


def _student_text(value: Any, limit: int) -> str:
    if not isinstance(value, str):
        return ""
    return value if len(value) <= limit else value[: limit - 3] + "..."


def _parse_result(reply: dict, tensors: dict, call_id: int, fn: str, wall: float) -> CallResult:
    """Validate an untrusted ``result`` message; ProtocolError for anything that is not one."""
    if reply.get("op") != "result" or reply.get("id") != call_id or type(reply.get("ok")) is not bool:
        raise ProtocolError(f"expected the result of call {call_id}, got something else")
    if not reply["ok"]:
        error = _student_text(reply.get("error"), MAX_STUDENT_TEXT) or "unknown error"
        trace = _student_text(reply.get("traceback"), MAX_STUDENT_TRACEBACK) or None
        if reply.get("kind") == "exception":
            raise CallError(f"{fn} raised {error}", trace)
        raise CallError(error, trace)
    if "value" not in reply:
        raise ProtocolError("a result message has no value")
    value = unpack_value(reply["value"], tensors)
    mutated = reply.get("mutated", [])
    if not isinstance(mutated, list) or not all(isinstance(item, str) for item in mutated):
        raise ProtocolError("a result message has a malformed 'mutated' list")
    sandbox_s = _untrusted_seconds(reply.get("elapsed_s"))
    return CallResult(value, tuple(_student_text(item, 200) for item in mutated[:100]), wall, sandbox_s)


def _untrusted_seconds(value: object) -> float | None:
    """A duration reported by the sandbox, if it is a finite, non-negative number (never used to rank)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) and value >= 0 else None


class Context:
    """What a test function gets: calls into the student's code, seeded random inputs, and checks.

    Attributes: ``test_name``; ``visible`` (whether the student may see this test's details); ``device``
    (where inputs belong: CUDA on the gpu queue, else CPU); ``generator`` (a ``torch.Generator``) and ``rng``
    (a ``random.Random``), both seeded from the secret run seed and the test name.
    """

    def __init__(self, session: _Session, test_name: str, *, visible: bool) -> None:
        self._session = session
        self.test_name = test_name
        self.visible = visible
        self.device = session.device
        seed = derive_seed(session.seed, test_name)
        self.generator = torch.Generator().manual_seed(seed)
        self.rng = random.Random(seed)  # noqa: S311 - test inputs, not cryptography

    # -- calling the student's code --------------------------------------------------------------------------
    def invoke(self, fn: str, /, *args: Any, **kwargs: Any) -> CallResult:
        """Call the student's ``fn`` in the sandbox; raises TestFailure if it raised or returned junk."""
        return self._session.invoke(fn, args, kwargs)

    def call(self, fn: str, /, *args: Any, **kwargs: Any) -> Any:
        """Call the student's ``fn`` in the sandbox and return its (validated, decoded) result."""
        return self._session.invoke(fn, args, kwargs).value

    # -- inputs ----------------------------------------------------------------------------------------------
    def randn(
        self,
        *shape: int,
        dtype: torch.dtype = torch.float32,
        scale: float = 1.0,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """Standard normal values times ``scale``, drawn in float32 on the CPU (reproducible) then cast."""
        values = torch.randn(shape, generator=self.generator, dtype=torch.float32) * scale
        return values.to(dtype=dtype, device=device or self.device)

    # -- checks ----------------------------------------------------------------------------------------------
    def fail(self, message: str) -> None:
        raise TestFailure(message)

    def check(self, condition: bool, message: str) -> None:
        if not condition:
            raise TestFailure(message)

    def check_tensor(
        self,
        actual: Any,
        *,
        shape: tuple[int, ...] | torch.Size,
        dtype: torch.dtype,
        device: torch.device | str | None = None,
        what: str = "the output",
    ) -> torch.Tensor:
        """Check that ``actual`` is a plain tensor of this shape, dtype and device; returns it."""
        if type(actual) is not torch.Tensor:
            raise TestFailure(f"{what} is a {_type_name(actual)}, expected a torch.Tensor")
        if tuple(actual.shape) != tuple(shape):
            raise TestFailure(f"{what} has shape {tuple(actual.shape)}, expected {tuple(shape)}")
        if actual.dtype != dtype:
            raise TestFailure(f"{what} has dtype {actual.dtype}, expected {dtype}")
        expected_device = torch.device(device if device is not None else self.device)
        if actual.device.type != expected_device.type:
            raise TestFailure(f"{what} is on device {actual.device}, expected {expected_device.type}")
        return actual

    def check_close(
        self,
        actual: Any,
        expected: torch.Tensor,
        *,
        rtol: float | None = None,
        atol: float | None = None,
        what: str = "the output",
    ) -> None:
        """Check shape/dtype/device, then ``|actual - expected| <= atol + rtol * |expected|`` elementwise.

        NaN matches NaN. Tolerances default per dtype (:data:`DEFAULT_TOLERANCES`). On failure the message
        gives the number of mismatches and the largest error; actual/expected values only for visible tests.
        """
        self.check_tensor(
            actual, shape=expected.shape, dtype=expected.dtype, device=expected.device, what=what
        )
        if not expected.dtype.is_floating_point:
            self.check_equal(actual, expected, what=what)
            return
        if rtol is None or atol is None:
            if expected.dtype not in DEFAULT_TOLERANCES:
                raise ValueError(f"no default tolerance for {expected.dtype}; pass rtol and atol")
            default_rtol, default_atol = DEFAULT_TOLERANCES[expected.dtype]
            rtol = default_rtol if rtol is None else rtol
            atol = default_atol if atol is None else atol
        got = actual.detach().to("cpu", torch.float64)
        want = expected.detach().to("cpu", torch.float64)
        close = torch.isclose(got, want, rtol=rtol, atol=atol, equal_nan=True)
        if bool(close.all()):
            return
        wrong = ~close
        message = (
            f"{what} does not match the expected values: {int(wrong.sum())} of {got.numel()} elements differ"
        )
        bad_actual = int((wrong & ~torch.isfinite(got)).sum())
        if bad_actual:
            message += f"; {bad_actual} of them NaN or infinite where a finite value was expected"
        bad_expected = int((wrong & torch.isfinite(got) & ~torch.isfinite(want)).sum())
        if bad_expected:
            message += f"; {bad_expected} of them finite where NaN or infinity was expected"
        finite_wrong = wrong & torch.isfinite(got) & torch.isfinite(want)
        if bool(finite_wrong.any()):
            error = torch.where(finite_wrong, (got - want).abs(), torch.zeros_like(got))
            worst = int(error.reshape(-1).argmax())
            where = _format_index(worst, got.shape)
            message += f" (largest absolute error {float(error.max()):.3g} at index {where};"
            message += f" tolerance atol={atol:g}, rtol={rtol:g})"
            if self.visible:
                expected_value, actual_value = float(want.reshape(-1)[worst]), float(got.reshape(-1)[worst])
                message += f"; at index {where} expected {expected_value:.6g}, got {actual_value:.6g}"
        raise TestFailure(message)

    def check_equal(self, actual: Any, expected: Any, *, what: str = "the output") -> None:
        """Exact equality: tensors element for element (with shape/dtype/device checked), anything else by ==."""
        if isinstance(expected, torch.Tensor):
            self.check_tensor(
                actual, shape=expected.shape, dtype=expected.dtype, device=expected.device, what=what
            )
            same = torch.equal(actual.detach().cpu(), expected.detach().cpu())
            if not same:
                count = int((actual.detach().cpu() != expected.detach().cpu()).sum())
                raise TestFailure(
                    f"{what} does not match exactly: {count} of {expected.numel()} elements differ"
                )
            return
        if type(actual) is not type(expected):
            raise TestFailure(f"{what} is a {_type_name(actual)}, expected a {_type_name(expected)}")
        if actual != expected:
            shown = f": expected {expected!r}, got {actual!r}" if self.visible else ""
            raise TestFailure(f"{what} is not the expected value{shown}")

    def check_not_mutated(self, result: CallResult, fn: str) -> None:
        """Fail if the call changed any of its input tensors in place."""
        if result.mutated:
            changed = ", ".join(result.mutated)
            raise TestFailure(
                f"{fn} modified its input ({changed}) in place; it must leave its inputs unchanged "
                "and return a new tensor"
            )


# -- reports -------------------------------------------------------------------------------------------------


@dataclass
class TestOutcome:
    __test__ = False  # not a pytest test class, despite the name

    name: str
    visibility: str
    passed: bool
    score: float
    max_score: float
    message: str  # student-facing, plain language
    duration_s: float
    detail: str | None = None  # the student's own traceback when their code raised


@dataclass
class GradeReport:
    status: Literal["graded", "failed"]
    failure_reason: str | None
    tests: list[TestOutcome]
    score: float
    max_score: float
    metrics: dict[str, float]
    notes: list[str] = field(default_factory=list)  # student-facing remarks, e.g. why a metric is missing
    failure_detail: str | None = None  # e.g. the traceback of an import error

    def to_json(self) -> dict:
        return asdict(self)


# -- driving a run -------------------------------------------------------------------------------------------


def load_suite(package_dir: Path) -> Suite:
    """Import ``package_dir/tests.py`` under a unique module name and return its ``suite``."""
    path = Path(package_dir) / "tests.py"
    module_name = f"_assignment_tests_{uuid.uuid4().hex}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise GraderError(f"{path}: cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except FileNotFoundError:
        raise GraderError(f"{path}: file not found") from None
    except Exception as exc:
        raise GraderError(f"{path}: importing it failed: {type(exc).__name__}: {exc}") from exc
    finally:
        sys.modules.pop(module_name, None)
    suite = getattr(module, "suite", None)
    if not isinstance(suite, Suite):
        raise GraderError(f"{path}: must define `suite = Suite()` (from graders.harness)")
    return suite


def _outcome(
    spec: Any, passed: bool, message: str, duration: float, detail: str | None = None
) -> TestOutcome:
    return TestOutcome(
        name=spec.name,
        visibility=spec.visibility,
        passed=passed,
        score=spec.weight if passed else 0.0,
        max_score=spec.weight,
        message=message,
        duration_s=round(duration, 6),
        detail=detail,
    )


def _run_test(session: _Session, spec: Any, function: TestFunction) -> TestOutcome:
    ctx = Context(session, spec.name, visible=spec.visibility == "visible")
    started = time.monotonic()
    try:
        function(ctx)
    except TestFailure as failure:
        return _outcome(spec, False, str(failure), time.monotonic() - started, failure.detail)
    except Exception as exc:
        raise GraderError(
            f"test {spec.name!r} of {session.package.slug} raised {type(exc).__name__}: {exc}"
        ) from exc
    return _outcome(spec, True, "passed", time.monotonic() - started)


def _check_case(ctx: Context, case: Case, result: CallResult) -> None:
    if case.expected is not None:
        ctx.check_close(
            result.value, case.expected, rtol=case.rtol, atol=case.atol, what=f"the output of {case.fn}"
        )


def _run_benchmark(session: _Session, bench: Benchmark) -> dict[str, float]:
    """Time ``bench``; raises TestFailure if an output is wrong, _Stop if the sandbox is lost."""
    ctx = Context(session, f"benchmark:{bench.metric}", visible=False)

    def one_iteration() -> CallResult:
        case = bench.factory(ctx)
        if not isinstance(case, Case):
            raise GraderError(f"benchmark {bench.metric!r} must return a Case, got {_type_name(case)}")
        result = session.invoke(case.fn, tuple(case.args), case.kwargs)
        _check_case(ctx, case, result)
        return result

    for _ in range(bench.warmup):
        one_iteration()
    wall: list[float] = []
    sandbox: list[float] = []
    started = time.monotonic()
    while len(wall) < bench.max_reps:
        result = one_iteration()
        wall.append(result.wall_s)
        if result.sandbox_s is not None:
            sandbox.append(result.sandbox_s)
        spent = time.monotonic() - started
        if spent >= bench.max_seconds or session.remaining() < session.package.call_timeout_s:
            break
        if len(wall) >= bench.min_reps and _relative_standard_error(wall) <= bench.target_rse:
            break
    scale = TIME_UNITS[bench.unit]
    quartiles = statistics.quantiles(wall, n=4) if len(wall) >= 2 else [wall[0]] * 3
    metrics = {
        bench.metric: statistics.median(wall) * scale,
        f"{bench.metric}_iqr": (quartiles[2] - quartiles[0]) * scale,
        f"{bench.metric}_reps": float(len(wall)),
    }
    if len(sandbox) == len(wall):
        metrics[f"{bench.metric}_sandbox"] = statistics.median(sandbox) * scale
    return metrics


def _relative_standard_error(samples: list[float]) -> float:
    mean = statistics.fmean(samples)
    if len(samples) < 2 or mean <= 0:
        return math.inf
    return statistics.stdev(samples) / math.sqrt(len(samples)) / mean


def _startup(session: _Session) -> tuple[str, str, str | None] | None:
    """Wait for the runner's first message.

    Returns None once it is ready, else (failure reason, message for each test, detail such as a traceback).
    """
    package = session.package
    timeout = min(package.startup_timeout_s, max(0.0, session.remaining()))
    broke = "Your program broke the grading protocol while starting up"
    try:
        header, _ = session.channel.recv(timeout=timeout)
    except TimeoutError:
        reason = (
            f"Your program did not start within {timeout:g} s (importing {package.module} took too long)."
        )
        return reason, "Not run: your program did not start in time.", None
    except EOFError:
        reason = f"Your program exited while {package.module} was being imported."
        return reason, "Not run: your program exited while it was being imported.", None
    except ProtocolError as exc:
        return f"{broke}: {exc}.", "Not run: your program broke the grading protocol.", None
    op = header.get("op")
    if op == "import_error":
        error = _student_text(header.get("error"), MAX_STUDENT_TEXT) or "unknown error"
        trace = _student_text(header.get("traceback"), MAX_STUDENT_TRACEBACK) or None
        reason = f"Your module {package.module} could not be imported: {error}"
        return reason, "Not run: your module could not be imported.", trace
    names = header.get("names")
    if op != "ready" or not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        return (
            f"{broke}: it did not announce itself.",
            "Not run: your program broke the grading protocol.",
            None,
        )
    return None


def _stop_outcome(spec: Any, stop: _Stop, duration: float) -> tuple[TestOutcome, str, str | None]:
    """The failed test's outcome, why later tests are not run, and the run's failure reason."""
    if stop.kind == "exited":
        outcome = _outcome(spec, False, "Your program exited during this test.", duration)
        return (
            outcome,
            f"your program exited during test {spec.name}.",
            f"Your program exited during test {spec.name}.",
        )
    if stop.kind == "protocol":
        outcome = _outcome(spec, False, "Your program broke the grading protocol.", duration)
        reason = f"Your program broke the grading protocol during test {spec.name}: {stop.message}."
        return outcome, f"your program broke the grading protocol during test {spec.name}.", reason
    # A run cut short by time is 'failed' (the reason says why), but the tests that passed keep their points.
    outcome = _outcome(spec, False, stop.message + ".", duration)
    if stop.kind == "time_limit":
        reason = f"Your program ran out of time during test {spec.name}: {stop.message}."
        return outcome, f"the run ran out of time during test {spec.name}.", reason
    reason = f"Your program stopped responding during test {spec.name}: {stop.message}."
    return outcome, f"your program stopped responding during test {spec.name}.", reason


def _run_benchmarks(
    session: _Session, suite: Suite, progress: Callable[[int, str], None], first: int
) -> tuple[dict[str, float], list[str], str | None, bool]:
    """Time every benchmark; returns (metrics, notes, failure reason or None, whether the sandbox is usable)."""
    metrics: dict[str, float] = {}
    notes: list[str] = []
    for offset, bench in enumerate(suite.benchmarks.values()):
        progress(first + offset, bench.metric)
        try:
            metrics.update(_run_benchmark(session, bench))
        except TestFailure as failure:
            notes.append(f"{bench.metric} was not recorded: during timing, {failure}")
        except _Stop as stop:
            if stop.kind == "exited":
                notes.append(
                    f"{bench.metric} was not recorded: your program exited while it was being timed."
                )
                return metrics, notes, f"Your program exited while {bench.metric} was being timed.", False
            if stop.kind == "protocol":
                notes.append(f"{bench.metric} was not recorded: your program broke the grading protocol.")
                reason = (
                    f"Your program broke the grading protocol while {bench.metric} was being timed: "
                    f"{stop.message}."
                )
                return metrics, notes, reason, False
            notes.append(f"{bench.metric} was not recorded. {stop.message}.")
            return metrics, notes, None, False
        except GraderError:
            raise
        except Exception as exc:
            raise GraderError(f"benchmark {bench.metric!r} of {session.package.slug} raised {exc!r}") from exc
    return metrics, notes, None, True


def grade(
    package: AssignmentPackage,
    channel: Channel,
    *,
    seed: int,
    on_progress: ProgressCallback | None = None,
    benchmarks: bool = True,
) -> GradeReport:
    """Run every test of ``package`` (then its benchmarks, if all passed) against the runner on ``channel``.

    ``benchmarks=False`` skips the timing (a correctness-only run).

    Never raises because of anything the sandbox sends; raises GraderError if tests.py itself is broken.
    The caller owns the sandbox: afterwards it should wait for it briefly and then kill it.
    """
    suite = load_suite(package.path)
    declared = [spec.name for spec in package.tests]
    if set(declared) != set(suite.tests):
        raise GraderError(
            f"{package.slug}: tests.py registers {sorted(suite.tests)}, assignment.toml {declared}"
        )
    session = _Session(package, channel, seed)
    timed = suite if benchmarks else Suite()
    total = len(package.tests) + len(timed.benchmarks)

    def progress(done: int, current: str) -> None:
        if on_progress is not None:
            on_progress(done, total, current)

    max_score = round(sum(spec.weight for spec in package.tests), 6)
    startup_failure = _startup(session)
    if startup_failure is not None:
        reason, not_run, detail = startup_failure
        not_run_outcomes = [_outcome(spec, False, not_run, 0.0) for spec in package.tests]
        progress(total, "")
        return GradeReport("failed", reason, not_run_outcomes, 0.0, max_score, {}, failure_detail=detail)

    outcomes: list[TestOutcome] = []
    failure_reason: str | None = None
    notes: list[str] = []
    stopped: str | None = None  # why the remaining tests are not run
    for index, spec in enumerate(package.tests):
        progress(index, spec.name)
        if stopped is not None:
            outcomes.append(_outcome(spec, False, f"Not run: {stopped}", 0.0))
            continue
        started = time.monotonic()
        try:
            outcomes.append(_run_test(session, spec, suite.tests[spec.name]))
        except _Stop as stop:
            outcome, stopped, failure_reason = _stop_outcome(spec, stop, time.monotonic() - started)
            outcomes.append(outcome)

    metrics: dict[str, float] = {}
    usable = stopped is None
    if usable and all(outcome.passed for outcome in outcomes):
        metrics, bench_notes, failure_reason, usable = _run_benchmarks(
            session, timed, progress, len(package.tests)
        )
        notes += bench_notes
    elif usable and timed.benchmarks:
        notes.append("Speed is only measured once every test passes.")

    if usable:
        try:
            channel.send({"op": "shutdown"}, timeout=SHUTDOWN_TIMEOUT_S)
        except (TimeoutError, EOFError, ProtocolError, OSError):
            logger.info("the sandbox did not take the shutdown message")
    progress(total, "")
    score = round(sum(outcome.score for outcome in outcomes), 6)
    status: Literal["graded", "failed"] = "failed" if failure_reason else "graded"
    return GradeReport(status, failure_reason, outcomes, score, max_score, metrics, notes)
