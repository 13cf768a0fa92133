"""The trusted grading harness: runs an assignment's tests.py against a student's code in the sandbox.

An assignment's ``tests.py`` declares its cases on a :class:`Suite`::

    suite = Suite()

    @suite.test("softmax_basic")
    def softmax_basic(ctx: Context) -> None:
        x = ctx.randn(4, 16)
        ctx.check_close(ctx.call("softmax", x, dim=-1), ref.softmax(x, dim=-1))

    @suite.benchmark("softmax_ms", unit="ms", shapes={"256x1024": (256, 1024)}, reference=ref.softmax)
    def softmax_speed(ctx: Context, shape: tuple[int, int]) -> Case:
        return Case("softmax", (ctx.randn(*shape),), {"dim": -1})

:func:`grade` drives those cases over a :class:`~graders.protocol.Channel` to the runner stub, which executes the
student's functions; inputs come from the secret per-run seed, expected values never leave this process, and
every reply is type-checked and size-capped before a check looks at it.

Timing (see :func:`_run_benchmark`): the trusted clock measures the whole round trip of each call, and the
transport's share is measured with no-op calls of the same payload (before the student's module is imported,
where it cannot be tampered with, and again between the timed calls; the smaller median is subtracted). The
runner's own measurement is recorded beside it; a large disagreement becomes a staff-only flag.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import math
import os
import random
import re
import secrets
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from graders.protocol import Channel, MessageLimits, ProtocolError, pack_value, unpack_value

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
_METRIC_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
NEEDS_GPU_MESSAGE = (
    "Not run: this test needs a GPU and this run had none. It counts once the submission is graded on a GPU "
    "worker (the assignment's gpu queue)."
)

# -- what a sandbox message may hold -------------------------------------------------------------------------
# A result may carry this many times the elements of the call's tensors (arguments plus expected output), and
# never fewer than MIN_RESULT_ELEMENTS, unless the package sets limits.max_tensor_elements.
RESULT_ELEMENTS_FACTOR = 4
MIN_RESULT_ELEMENTS = 1 << 20
MAX_RESULT_TENSORS = 256
MAX_RESULT_HEADER_BYTES = 1 << 20
MAX_MUTATED_ENTRIES = 1_000
MAX_ANNOUNCED_NAMES = 10_000
MAX_NAME_CHARS = 256
# hello / ready / import_error / flushed carry no tensors and little text.
STARTUP_LIMITS = MessageLimits(max_header_bytes=1 << 20, max_tensors=0, max_tensor_elements=0)
_FAILURE_KINDS = frozenset({"exception", "missing", "bad_result"})

# -- timing --------------------------------------------------------------------------------------------------
CALIBRATION_WARMUP = 2  # no-op round trips per benchmark shape before the student's module is imported ...
CALIBRATION_REPS = 10  # ... of which these are kept
# Default per-shape floor: a time this fraction of the reference's counts as this fraction (a 100x speed-up is
# not credible for the course's kernels, and a near-zero time must not dominate a geometric mean).
FLOOR_FRACTION_OF_REFERENCE = 0.01
MIN_FLOOR_S = 1e-7
# Trusted (overhead-corrected) / in-sandbox time outside this range raises a staff flag, when the difference is
# also larger than the noise of the overhead estimate.
AGREEMENT_RANGE = (0.5, 3.0)
AGREEMENT_SLACK_S = 20e-6
AGREEMENT_SLACK_OF_OVERHEAD = 0.25
# Calibration round trips after the import this much slower than before it raise a staff flag.
CALIBRATION_DRIFT_FACTOR = 2.0
CALIBRATION_DRIFT_SLACK_S = 1e-3
L2_FLUSH_BYTES = 256 * 2**20  # more than any GPU's L2 (the runner uses the same size)
SHAPE_LABEL_CHARS = 48
DEFAULT_SHAPE = "default"

# -- inputs shared through files -----------------------------------------------------------------------------
# Where the worker binds the host directory it passes as ``inputs_dir``, as the sandbox sees it.
SANDBOX_INPUTS_DIR = "/work/.inputs"
SHARED_IO_CHUNK = 1 << 24  # bytes per pwrite / pread of a shared input file


class TestFailure(Exception):
    """A check failed. The message is shown to the student, so it must not reveal hidden expected values."""

    __test__ = False  # not a pytest test class, despite the name

    def __init__(self, message: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.detail = detail


class CallError(TestFailure):
    """The student's function raised, is missing, or returned something that cannot be sent back."""


class GraderError(RuntimeError):
    """The assignment's tests.py is broken, or the sandbox cannot run it: an infrastructure fault."""


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
    kernel_launches: int | None = None  # Triton launches the runner counted (None: not watched; untrusted)
    forbidden_calls: tuple[str, ...] = ()  # forbidden functions the runner saw called (untrusted)


@dataclass(frozen=True)
class Case:
    """One benchmark iteration: the call to time and the value its output must match.

    ``expected`` may be left out when the benchmark has a ``reference``: its output (on the same inputs, timed
    on this side) is then the expected value.
    """

    fn: str
    args: tuple = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    expected: Any = None  # a tensor, or any value the protocol carries (lists, dicts, bytes, ...)
    rtol: float | None = None
    atol: float | None = None
    # check(ctx, output, expected) replaces the default comparison (check_matches), e.g. for per-leaf tolerances.
    check: Callable[[Context, Any, Any], None] | None = None


TestFunction = Callable[["Context"], None]
CaseFactory = Callable[..., Case]


@dataclass(frozen=True)
class Benchmark:
    metric: str
    factory: CaseFactory  # factory(ctx) or, with shapes, factory(ctx, shape)
    unit: str
    warmup: int
    warmup_seconds: float
    min_reps: int
    max_reps: int
    max_seconds: float
    target_rse: float
    shapes: tuple[tuple[str, Any], ...]  # (label, what the factory gets); one unnamed shape without `shapes`
    takes_shape: bool
    reference: Callable[..., Any] | None
    floors_s: Mapping[str, float] | None  # per-shape floor in seconds; None: a fraction of the reference
    requires: Literal["any", "gpu"] = "any"  # "gpu": timed only where the run has a GPU


def _valid_label(label: object) -> bool:
    return (
        isinstance(label, str)
        and 0 < len(label) <= SHAPE_LABEL_CHARS
        and label[0].isalnum()
        and all(char.isalnum() or char in "_-" for char in label)
        and label.isascii()
    )


class Suite:
    """The registry of an assignment's tests and benchmarks, in declaration order."""

    def __init__(self) -> None:
        self.tests: dict[str, TestFunction] = {}
        self.benchmarks: dict[str, Benchmark] = {}
        self.metrics: dict[str, str] = {}  # metric name -> unit, for metrics tests record with Context.metric

    def metric(self, name: str, *, unit: str) -> None:
        """Declare a metric that tests record with ``ctx.metric(name, value)`` (e.g. a held-out loss).

        Declared metrics, like benchmarks, may be an assignment's leaderboard metric.
        """
        if not isinstance(name, str) or not _METRIC_NAME.fullmatch(name):
            raise ValueError(f"metric name {name!r} must be letters, digits and '_' (starting with a letter)")
        if name in self.metrics or name in self.benchmarks:
            raise ValueError(f"metric {name!r} is declared twice")
        self.metrics[name] = unit

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
        shapes: Mapping[str, Any] | None = None,
        reference: Callable[..., Any] | None = None,
        floor: float | Mapping[str, float] | None = None,
        warmup: int = 3,
        warmup_seconds: float = 60.0,
        min_reps: int = 10,
        max_reps: int = 100,
        max_seconds: float = 10.0,
        target_rse: float = 0.01,
        requires: Literal["any", "gpu"] = "any",
    ) -> Callable[[CaseFactory], CaseFactory]:
        """Register ``factory(ctx) -> Case`` (``factory(ctx, shape)`` with ``shapes``) as the timing of ``metric``.

        ``shapes`` maps a label (letters, digits, ``_``, ``-``) to what the factory gets; the metric is the
        geometric mean over shapes of each shape's median time, raised to that shape's ``floor`` (in ``unit``;
        default: 1% of the reference's median, so one implausibly fast shape cannot dominate). ``reference``
        is called on this side with each iteration's inputs and timed the same way, giving
        ``<metric>_speedup``. The factory is called once per iteration (warm-up included): every call gets
        fresh inputs. Per shape, up to ``warmup`` untimed calls (at least one; all shapes together stop
        warming up after ``warmup_seconds``), then timed calls until ``max_reps``, the shape's share of
        ``max_seconds``, or, once ``min_reps`` are in, until the relative standard error of the median falls
        under ``target_rse``. ``requires="gpu"``: a run without a GPU skips this benchmark and says why.
        """
        if requires not in ("any", "gpu"):
            raise ValueError(f"requires must be 'any' or 'gpu', got {requires!r}")
        if unit not in TIME_UNITS:
            raise ValueError(f"unit must be one of {sorted(TIME_UNITS)}, got {unit!r}")
        if not (
            warmup >= 0
            and warmup_seconds > 0
            and 1 <= min_reps <= max_reps
            and max_seconds > 0
            and target_rse > 0
        ):
            raise ValueError(
                "benchmark needs warmup >= 0, warmup_seconds > 0, 1 <= min_reps <= max_reps, "
                "max_seconds > 0 and target_rse > 0"
            )
        if shapes is not None and (not shapes or not all(_valid_label(label) for label in shapes)):
            raise ValueError(
                f"shapes must map labels of letters, digits, '_' and '-' (at most {SHAPE_LABEL_CHARS}) "
                "to the factory's argument"
            )
        if reference is not None and not callable(reference):
            raise ValueError("reference must be callable")
        labels = list(shapes) if shapes is not None else [DEFAULT_SHAPE]
        floors_s = _floors_in_seconds(floor, labels, TIME_UNITS[unit])

        def register(factory: CaseFactory) -> CaseFactory:
            if metric in self.benchmarks or metric in self.metrics:
                raise ValueError(f"benchmark {metric!r} is registered twice")
            self.benchmarks[metric] = Benchmark(
                metric=metric,
                factory=factory,
                unit=unit,
                warmup=warmup,
                warmup_seconds=warmup_seconds,
                min_reps=min_reps,
                max_reps=max_reps,
                max_seconds=max_seconds,
                target_rse=target_rse,
                shapes=tuple(shapes.items()) if shapes is not None else ((DEFAULT_SHAPE, None),),
                takes_shape=shapes is not None,
                reference=reference,
                floors_s=floors_s,
                requires=requires,
            )
            return factory

        return register


def _floors_in_seconds(
    floor: float | Mapping[str, float] | None, labels: list[str], scale: float
) -> dict[str, float] | None:
    if floor is None:
        return None
    floors = dict(floor) if isinstance(floor, Mapping) else dict.fromkeys(labels, floor)
    if set(floors) != set(labels):
        raise ValueError(f"floor must give a value for exactly the shapes {labels}")
    if not all(
        isinstance(value, int | float) and math.isfinite(value) and value > 0 for value in floors.values()
    ):
        raise ValueError("floors must be positive numbers (in the benchmark's unit)")
    return {label: value / scale for label, value in floors.items()}


def derive_seed(seed: int, name: str) -> int:
    """A per-test seed, so a test's inputs do not depend on which tests ran before it."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def _type_name(obj: object) -> str:
    cls = type(obj)
    module = getattr(cls, "__module__", "")
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


def _describe_value(value: Any) -> str:
    if isinstance(value, list | tuple):
        return f"a list of {len(value)}"
    return f"a {_type_name(value)}"


def _format_index(flat_index: int, shape: torch.Size) -> str:
    """``[i, j, ...]`` of the element at ``flat_index`` in a row-major tensor of ``shape``."""
    index = []
    for size in reversed(shape):
        index.append(flat_index % size)
        flat_index //= size
    return "[" + ", ".join(str(i) for i in reversed(index)) + "]"


def _tensors_in(value: Any) -> list[torch.Tensor]:
    """The tensors in a nested value of lists, tuples and dicts."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, list | tuple):
        return [tensor for item in value for tensor in _tensors_in(item)]
    if isinstance(value, dict):
        return [tensor for item in value.values() for tensor in _tensors_in(item)]
    return []


def hardware_class(device: torch.device) -> str:
    """What kind of machine timings come from: ``cpu``, ``cuda:<name>`` or ``rocm:<name>``."""
    if device.type != "cuda":
        return "cpu"
    platform = "rocm" if getattr(torch.version, "hip", None) else "cuda"
    return f"{platform}:{torch.cuda.get_device_name(device)}"


class _SharedInputs:
    """One call's CPU input tensors, each written by this side into a file of its own that the runner maps.

    The student's function gets tensors mapped shared (MAP_SHARED) onto these files, so whatever it writes into
    its inputs lands in them. After the call each file is read back through the descriptor opened here, never by
    path: a student who unlinks, renames or replaces a file (or the directory) cannot change what is read. Any
    byte that differs from this side's copy means the input was mutated.
    """

    def __init__(self, host_dir: Path, inside_dir: str) -> None:
        self.inside_dir = inside_dir.rstrip("/")
        self.specs: dict[str, dict[str, Any]] = {}  # tensor name -> what the runner maps
        self.names_by_id: dict[int, str] = {}  # id() of this side's tensor -> its tensor name
        self._files: dict[str, tuple[str, int, memoryview]] = {}  # tensor name -> (file name, fd, bytes)
        # The sandbox owns the directory above this one and may have replaced it (with a symlink, say): never
        # follow one, and create every file through this descriptor with O_EXCL, so nothing is written elsewhere.
        with contextlib.suppress(FileExistsError):
            os.mkdir(host_dir, 0o755)
        self._dir_fd = os.open(host_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)

    def add(self, name: str, tensor: torch.Tensor) -> None:
        flat = tensor.detach().contiguous().reshape(-1).view(torch.uint8)
        data = flat.numpy().data.cast("B")
        file_name = f"{secrets.token_hex(16)}.bin"
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(file_name, flags, 0o600, dir_fd=self._dir_fd)
        self._files[name] = (file_name, fd, data)
        os.fchmod(fd, 0o666)  # the sandbox uid maps it read-write
        offset = 0
        while offset < len(data):
            offset += os.pwrite(fd, data[offset : offset + SHARED_IO_CHUNK], offset)
        self.specs[name] = {
            "path": f"{self.inside_dir}/{file_name}",
            "dtype": str(tensor.dtype).removeprefix("torch."),
            "shape": list(tensor.shape),
        }
        self.names_by_id[id(tensor)] = name

    def changed(self, tensor: torch.Tensor) -> bool:
        """Whether the file of this (input) tensor no longer holds exactly the bytes written into it."""
        _, fd, data = self._files[self.names_by_id[id(tensor)]]
        if os.fstat(fd).st_size != len(data):
            return True
        offset = 0
        while offset < len(data):
            chunk = os.pread(fd, min(SHARED_IO_CHUNK, len(data) - offset), offset)
            if not chunk or chunk != data[offset : offset + len(chunk)]:
                return True
            offset += len(chunk)
        return False

    def close(self) -> None:
        for file_name, fd, _ in self._files.values():
            with contextlib.suppress(OSError):
                os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(file_name, dir_fd=self._dir_fd)
        self._files.clear()
        with contextlib.suppress(OSError):
            os.close(self._dir_fd)


class _Session:
    """The state shared by every call of one grading run."""

    def __init__(
        self,
        package: AssignmentPackage,
        channel: Channel,
        seed: int,
        *,
        inputs_dir: Path | None = None,
        inputs_dir_inside: str = SANDBOX_INPUTS_DIR,
    ) -> None:
        self.package = package
        self.channel = channel
        self.seed = seed
        # Host directory the sandbox sees at ``inputs_dir_inside``: checked calls share CPU inputs through it.
        self.inputs_dir = inputs_dir
        self.inputs_dir_inside = inputs_dir_inside
        self.deadline = time.monotonic() + package.time_limit_s
        self.next_id = 1
        self.device = torch.device("cuda" if package.queue == "gpu" and torch.cuda.is_available() else "cpu")
        self.flags: list[str] = []  # for staff only
        self.test_metrics: dict[str, float] = {}  # recorded by tests through Context.metric
        self.declared_metrics: frozenset[str] = frozenset()  # the suite's, set by grade()
        self.activity = "start-up"  # what is running, for flags
        self.forbidden = frozenset(package.static_check.forbid_calls)
        self.requires_launch = frozenset(package.static_check.require_kernel_launch)
        # Transport overhead measured before the student's module was imported, per (metric, shape label).
        self.calibration: dict[tuple[str, str], list[float]] = {}
        self._l2_scratch: torch.Tensor | None = None

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def flag(self, message: str) -> None:
        if message not in self.flags:
            self.flags.append(message)

    def _take_id(self) -> int:
        call_id = self.next_id
        self.next_id += 1
        return call_id

    def _round_trip(
        self, header: dict, tensors: Mapping[str, torch.Tensor], limits: MessageLimits, what: str
    ) -> tuple[dict, dict[str, torch.Tensor], float]:
        """Send a request and wait for its answer; the wall time between the two is the trusted clock."""
        limit = self.package.call_timeout_s
        remaining = self.remaining()
        if remaining <= 0:
            raise _Stop("time_limit", self._time_limit_message())
        timeout = min(limit, remaining)
        try:
            started = time.perf_counter()
            self.channel.send(header, tensors, timeout=timeout)
            reply, reply_tensors = self.channel.recv(
                timeout=max(0.0, timeout - (time.perf_counter() - started)), limits=limits
            )
            wall = time.perf_counter() - started
        except TimeoutError:
            if remaining < limit:
                raise _Stop("time_limit", self._time_limit_message()) from None
            raise _Stop(
                "timeout", f"{what} took longer than {limit:g} s (the time limit for one call)"
            ) from None
        except EOFError:
            raise _Stop("exited", "exited") from None
        except ProtocolError as exc:
            raise _Stop("protocol", str(exc)) from None
        return reply, reply_tensors, wall

    def _result_limits(self, tensors: Mapping[str, torch.Tensor], expected: Any) -> MessageLimits:
        elements = self.package.max_tensor_elements
        if elements is None:
            sent = sum(tensor.numel() for tensor in tensors.values())
            wanted = sum(tensor.numel() for tensor in _tensors_in(expected))
            elements = max(MIN_RESULT_ELEMENTS, RESULT_ELEMENTS_FACTOR * (sent + wanted))
        return MessageLimits(
            max_header_bytes=MAX_RESULT_HEADER_BYTES,
            max_tensors=MAX_RESULT_TENSORS,
            max_tensor_elements=elements,
        )

    def invoke(
        self,
        fn: str,
        args: tuple,
        kwargs: Mapping[str, Any],
        *,
        expected: Any = None,
        check_inputs: bool = False,
        grad: tuple[tuple[tuple[list, torch.Tensor], ...], Any] | None = None,
    ) -> CallResult:
        """Call the student's ``fn``; ``expected`` (if known) sizes the cap on what may come back.

        With ``check_inputs`` ``mutated`` is what this side finds changed, comparing the inputs after the call
        with its own copies (else it is the runner's own, untrusted, report). With an ``inputs_dir`` CPU inputs
        travel through files of this side's (see _SharedInputs); the others, and every input without one, are
        sent back by the runner, which student code can tamper with.
        """
        call_id = self._take_id()
        paths, grad_output = grad if grad is not None else ((), None)
        (packed_args, packed_kwargs, packed_grad), tensors = pack_value(
            [list(args), dict(kwargs), grad_output], name="the call"
        )
        limits = self._result_limits(tensors, expected)
        originals = _input_tensors(args, kwargs) if check_inputs else []
        shared = self._share_inputs(tensors) if check_inputs else None
        try:
            header = {
                "op": "call",
                "id": call_id,
                "fn": fn,
                "args": packed_args,
                "kwargs": packed_kwargs,
                "limits": limits.to_json(),
            }
            if grad is not None:
                header["grad"] = {"wrt": [path for path, _ in paths], "grad_output": packed_grad}
            sent = tensors
            returned = originals
            if shared is not None:
                header["shared_inputs"] = shared.specs
                sent = {name: tensor for name, tensor in tensors.items() if name not in shared.specs}
                returned = [
                    (where, tensor) for where, tensor in originals if id(tensor) not in shared.names_by_id
                ]
            if check_inputs:
                header["return_inputs"] = True
            received_limits = MessageLimits(
                max_header_bytes=limits.max_header_bytes,
                max_tensors=limits.max_tensors + len(returned),
                max_tensor_elements=limits.max_tensor_elements
                + sum(tensor.numel() for _, tensor in returned),
            )
            reply, reply_tensors, wall = self._round_trip(header, sent, received_limits, fn)
            try:
                launches, forbidden_calls = _parse_observations(reply, self.forbidden)
                self._cross_check(fn, reply.get("ok") is True, launches, forbidden_calls)
                result = _parse_result(reply, reply_tensors, call_id, fn, wall)
                if check_inputs:
                    sent_back = set(_mutated_inputs(returned, reply, reply_tensors))
                    claimed = set(result.mutated)
                    held = shared.names_by_id if shared is not None else {}
                    # For a shared input the runner's own report can only count against the student; the file
                    # read back through this side's descriptor decides.
                    mutated = tuple(
                        where
                        for where, tensor in originals
                        if where in sent_back
                        or (
                            id(tensor) in held
                            and (where in claimed or (shared is not None and shared.changed(tensor)))
                        )
                    )
                    result = replace(result, mutated=mutated)
            except ProtocolError as exc:
                raise _Stop("protocol", str(exc)) from None
        finally:
            if shared is not None:
                shared.close()
        if forbidden_calls:
            raise TestFailure(
                f"{fn} called {', '.join(forbidden_calls)}, which this assignment does not allow"
            )
        if fn in self.requires_launch and launches == 0:
            raise TestFailure(
                f"{fn} returned without launching a Triton kernel; this assignment requires {fn} to run "
                "your own Triton kernel"
            )
        return CallResult(
            result.value, result.mutated, result.wall_s, result.sandbox_s, launches, forbidden_calls
        )

    def _share_inputs(self, tensors: Mapping[str, torch.Tensor]) -> _SharedInputs | None:
        """Write the call's non-empty CPU tensors into files the runner maps; None without an inputs_dir."""
        if self.inputs_dir is None:
            return None
        shared: _SharedInputs | None = None
        try:
            shared = _SharedInputs(self.inputs_dir, self.inputs_dir_inside)
            for name, tensor in tensors.items():
                if tensor.device.type == "cpu" and tensor.numel() > 0:
                    shared.add(name, tensor)
        except OSError as exc:
            # The directory lies in the student's own workdir, which their code may have filled or meddled with.
            if shared is not None:
                shared.close()
            raise _Stop(
                "protocol", f"the grader could not hand a call's inputs to your program ({exc.strerror})"
            ) from None
        return shared

    def _cross_check(
        self, fn: str, returned: bool, launches: int | None, forbidden_calls: tuple[str, ...]
    ) -> None:
        """Staff flags for what the runner's monitors saw (the failed test follows in ``invoke``)."""
        if forbidden_calls:
            self.flag(f"runtime check: {fn} called {', '.join(forbidden_calls)} during {self.activity}")
        if returned and fn in self.requires_launch:
            if launches is None:
                raise ProtocolError("a result did not say whether a Triton kernel was launched")
            if launches == 0:
                self.flag(f"runtime check: {fn} launched no Triton kernel during {self.activity}")

    def calibrate(self, args: tuple, kwargs: Mapping[str, Any], reply_like: Any) -> float:
        """The round trip of a no-op call with this payload and a reply shaped like ``reply_like``."""
        call_id = self._take_id()
        (packed_args, packed_kwargs), tensors = pack_value([list(args), dict(kwargs)], name="the call")
        limits = self._result_limits(tensors, reply_like)
        reply_specs = [
            {
                "shape": list(tensor.shape),
                "dtype": str(tensor.dtype).removeprefix("torch."),
                "device": tensor.device.type,
            }
            for tensor in _tensors_in(reply_like)
        ]
        header = {
            "op": "calibrate",
            "id": call_id,
            "args": packed_args,
            "kwargs": packed_kwargs,
            "reply": reply_specs,
            "limits": limits.to_json(),
        }
        reply, reply_tensors, wall = self._round_trip(header, tensors, limits, "a timing calibration call")
        try:
            _parse_observations(reply, self.forbidden)
            _parse_result(reply, reply_tensors, call_id, "a timing calibration call", wall)
        except (ProtocolError, TestFailure) as exc:
            raise _Stop("protocol", f"a timing calibration call failed: {exc}") from None
        return wall

    def _flush_own_l2(self) -> None:
        """Overwrite more than the GPU's L2 from this process (the sandbox shares the GPU) and wait for it."""
        if self._l2_scratch is None:
            self._l2_scratch = torch.empty(L2_FLUSH_BYTES, dtype=torch.uint8, device=self.device)
        self._l2_scratch.zero_()
        torch.cuda.synchronize(self.device)

    def flush_l2(self) -> None:
        """Before a timed GPU call: evict the L2 cache, from this process and from the runner's."""
        if self.device.type != "cuda":
            return
        self._flush_own_l2()
        call_id = self._take_id()
        reply, _, _ = self._round_trip({"op": "flush", "id": call_id}, {}, STARTUP_LIMITS, "an L2 flush")
        if reply != {"op": "flushed", "id": call_id}:
            raise _Stop("protocol", "expected the answer to an L2 flush, got something else")

    def time_reference(self, reference: Callable[..., Any], case: Case) -> tuple[float, Any]:
        """Run the reference on this side on the case's own inputs, timed like the student's call."""
        if self.device.type == "cuda":
            self._flush_own_l2()
        started = time.perf_counter()
        output = reference(*case.args, **case.kwargs)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - started, output

    def _time_limit_message(self) -> str:
        return f"The whole run took longer than its {self.package.time_limit_s:g} s time limit"


def _student_text(value: Any, limit: int) -> str:
    if not isinstance(value, str):
        return ""
    return value if len(value) <= limit else value[: limit - 3] + "..."


def _input_tensors(args: Any, kwargs: Any) -> list[tuple[str, torch.Tensor]]:
    """The call's input tensors with the runner's names for them (``args[0]``, ``kwargs['x']``), in its order."""
    found: list[tuple[str, torch.Tensor]] = []

    def visit(value: Any, where: str) -> None:
        if isinstance(value, torch.Tensor):
            found.append((where, value))
        elif isinstance(value, list | tuple):
            for index, item in enumerate(value):
                visit(item, f"{where}[{index}]")
        elif isinstance(value, dict):
            for key, item in value.items():
                visit(item, f"{where}[{key!r}]")

    visit(list(args), "args")
    visit(dict(kwargs), "kwargs")
    return found


def _same_bits(original: torch.Tensor, after: Any) -> bool:
    """Bit-for-bit equality (NaN equals itself, -0.0 differs from 0.0), shape and dtype included."""
    if type(after) is not torch.Tensor or after.shape != original.shape or after.dtype != original.dtype:
        return False
    mine = original.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
    theirs = after.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
    return torch.equal(mine, theirs)


def _mutated_inputs(
    originals: list[tuple[str, torch.Tensor]], reply: dict, tensors: Mapping[str, torch.Tensor]
) -> tuple[str, ...]:
    """The inputs whose state after the call, as sent back by the runner, differs from this side's copies."""
    after = reply.get("inputs_after")
    if type(after) is not list or len(after) != len(originals):
        raise ProtocolError("a result message does not carry the inputs back as asked")
    values = unpack_value(after, tensors)
    return tuple(
        where
        for (where, original), value in zip(originals, values, strict=True)
        if not _same_bits(original, value)
    )


def _parse_observations(reply: dict, forbidden: frozenset[str]) -> tuple[int | None, tuple[str, ...]]:
    """What the runner's call monitors report in a result: Triton launches and forbidden functions called."""
    launches = reply.get("kernel_launches")
    if launches is not None and (type(launches) is not int or launches < 0):
        raise ProtocolError("a result message has a malformed kernel launch count")
    calls = reply.get("forbidden_calls", [])
    if (
        type(calls) is not list
        or len(calls) > len(forbidden)
        or not all(isinstance(name, str) and name in forbidden for name in calls)
    ):
        raise ProtocolError("a result message has a malformed list of forbidden calls")
    return launches, tuple(sorted(set(calls)))


def _parse_result(reply: dict, tensors: dict, call_id: int, fn: str, wall: float) -> CallResult:
    """Validate an untrusted ``result`` message; ProtocolError if it is not one.

    Every field read is type-checked and capped; fields the grader does not ask for are never read.
    """
    if reply.get("op") != "result" or reply.get("id") != call_id or type(reply.get("ok")) is not bool:
        raise ProtocolError(f"expected the result of call {call_id}, got something else")
    if not reply["ok"]:
        kind, error, trace = reply.get("kind"), reply.get("error"), reply.get("traceback")
        if kind not in _FAILURE_KINDS or not isinstance(error, str) or not isinstance(trace, str | None):
            raise ProtocolError("a failed result message is malformed")
        message = _student_text(error, MAX_STUDENT_TEXT) or "unknown error"
        detail = _student_text(trace, MAX_STUDENT_TRACEBACK) or None
        if kind == "exception":
            raise CallError(f"{fn} raised {message}", detail)
        raise CallError(message, detail)
    if "value" not in reply:
        raise ProtocolError("a result message has no value")
    mutated = reply.get("mutated")
    if (
        type(mutated) is not list
        or len(mutated) > MAX_MUTATED_ENTRIES
        or not all(isinstance(item, str) for item in mutated)
    ):
        raise ProtocolError("a result message has a malformed 'mutated' list")
    elapsed = reply.get("elapsed_s")
    if not isinstance(elapsed, int | float) or isinstance(elapsed, bool) or not 0 <= elapsed < math.inf:
        raise ProtocolError("a result message has a malformed 'elapsed_s'")
    value = unpack_value(reply["value"], tensors)
    return CallResult(value, tuple(_student_text(item, 200) for item in mutated), wall, float(elapsed))


def _grad_path(entry: int | str | tuple) -> list:
    """The runner's path for a ``call_grad`` ``wrt`` entry: ``["args", i, ...]`` or ``["kwargs", name, ...]``."""
    parts = entry if isinstance(entry, tuple) else (entry,)
    if not parts or not isinstance(parts[0], int | str) or isinstance(parts[0], bool):
        raise GraderError(f"call_grad: wrt entry {entry!r} must start with an argument index or keyword name")
    head = ["args", parts[0]] if isinstance(parts[0], int) else ["kwargs", parts[0]]
    return head + list(parts[1:])


def _input_at(args: tuple, kwargs: Mapping[str, Any], entry: int | str | tuple) -> torch.Tensor:
    parts = entry if isinstance(entry, tuple) else (entry,)
    try:
        value: Any = args[parts[0]] if isinstance(parts[0], int) else kwargs[parts[0]]
        for step in parts[1:]:
            value = value[step]
    except (IndexError, KeyError, TypeError):
        raise GraderError(f"call_grad: wrt entry {entry!r} names no argument of the call") from None
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        raise GraderError(f"call_grad: wrt entry {entry!r} is not a floating-point tensor")
    return value


def _describe_path(entry: int | str | tuple) -> str:
    parts = entry if isinstance(entry, tuple) else (entry,)
    head = f"argument {parts[0]}" if isinstance(parts[0], int) else f"{parts[0]}"
    return head + "".join(f"[{step!r}]" for step in parts[1:])


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
        """Call the student's ``fn`` in the sandbox; raises TestFailure if it raised or returned junk.

        ``mutated`` is found on this side: the runner sends the inputs back and they are compared with the
        originals here.
        """
        return self._session.invoke(fn, args, kwargs, check_inputs=True)

    def call(self, fn: str, /, *args: Any, **kwargs: Any) -> Any:
        """Call the student's ``fn`` in the sandbox and return its (validated, decoded) result."""
        return self._session.invoke(fn, args, kwargs, check_inputs=True).value

    def call_grad(
        self,
        fn: str,
        /,
        *args: Any,
        grad_output: torch.Tensor | Sequence[torch.Tensor | None],
        wrt: Sequence[int | str | tuple],
        **kwargs: Any,
    ) -> tuple[Any, tuple[torch.Tensor | None, ...]]:
        """Call ``fn`` with the ``wrt`` inputs as leaves requiring grad and back-propagate ``grad_output``.

        Each ``wrt`` entry names an input: a positional index, a keyword name, or a tuple path into a dict or
        list argument (``(1, "wq")`` is ``args[1]["wq"]``). ``grad_output`` is one tensor for a tensor output, or
        a list (None to skip an output) for a list or tuple of outputs. Returns the output and the gradients in
        ``wrt`` order (None where no gradient reached that input); each gradient is checked to have its input's
        shape, so tests compare values with ``check_close``.
        """
        paths = [(_grad_path(entry), _input_at(args, kwargs, entry)) for entry in wrt]
        result = self._session.invoke(fn, args, kwargs, check_inputs=True, grad=(tuple(paths), grad_output))
        value = result.value
        if not (isinstance(value, list) and len(value) == 2 and isinstance(value[1], list)):
            raise TestFailure(f"{fn}: the runner sent back a malformed gradient result")
        output, grads = value
        if len(grads) != len(paths):
            raise TestFailure(f"{fn}: the runner sent back {len(grads)} gradients for {len(paths)} inputs")
        for (_, tensor), gradient, entry in zip(paths, grads, wrt, strict=True):
            if gradient is not None and (
                not isinstance(gradient, torch.Tensor) or gradient.shape != tensor.shape
            ):
                raise TestFailure(
                    f"{fn}: the gradient with respect to {_describe_path(entry)} does not have the input's "
                    f"shape {tuple(tensor.shape)}"
                )
        return output, tuple(grads)

    def metric(self, name: str, value: float) -> None:
        """Record a metric measured or computed on this (trusted) side, e.g. a held-out loss or tokens/s.

        It joins the run's metrics beside the benchmarks' and may be an assignment's leaderboard metric.
        """
        if name not in self._session.declared_metrics:
            raise GraderError(
                f"metric {name!r} is not declared: add suite.metric({name!r}, unit=...) to tests.py"
            )
        number = float(value)
        if not math.isfinite(number):
            raise TestFailure(f"the metric {name} is not a finite number")
        self._session.test_metrics[name] = number

    # -- inputs ----------------------------------------------------------------------------------------------
    def randn(
        self,
        *shape: int,
        dtype: torch.dtype = torch.float32,
        scale: float = 1.0,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """Standard normal values times ``scale``, drawn in float32 on the CPU (reproducible) then cast.

        Each tensor comes from a generator of its own, seeded by hashing the secret run seed with a draw of
        ``self.generator``: the values a student sees never expose the state of the generator that makes the
        next inputs (a Mersenne Twister's state can be recovered from 624 consecutive outputs).
        """
        draw = int(torch.randint(0, 2**62, (1,), generator=self.generator))
        own = torch.Generator().manual_seed(derive_seed(self._session.seed, f"{self.test_name}#{draw}"))
        values = torch.randn(shape, generator=own, dtype=torch.float32) * scale
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

    def check_matches(
        self,
        actual: Any,
        expected: Any,
        *,
        rtol: float | None = None,
        atol: float | None = None,
        what: str = "the output",
    ) -> None:
        """Compare nested values: floating tensors with ``check_close``, the rest exactly; lists and tuples
        element by element (a tuple arrives as a list), dicts key by key. Failures name the place, e.g.
        ``the output of f[1]['wq']``."""
        if isinstance(expected, torch.Tensor):
            if expected.is_floating_point():
                self.check_close(actual, expected, rtol=rtol, atol=atol, what=what)
            else:
                self.check_equal(actual, expected, what=what)
        elif isinstance(expected, list | tuple):
            if not isinstance(actual, list | tuple) or len(actual) != len(expected):
                raise TestFailure(
                    f"{what} is not a list of {len(expected)} items (got {_describe_value(actual)})"
                )
            for index, (got, want) in enumerate(zip(actual, expected, strict=True)):
                self.check_matches(got, want, rtol=rtol, atol=atol, what=f"{what}[{index}]")
        elif isinstance(expected, dict):
            if not isinstance(actual, dict):
                raise TestFailure(f"{what} is a {_type_name(actual)}, expected a dict")
            missing = [key for key in expected if key not in actual]
            extra = [key for key in actual if key not in expected]
            if missing or extra:
                parts = ([f"missing {', '.join(map(repr, missing[:5]))}"] if missing else []) + (
                    [f"unexpected {', '.join(map(repr, extra[:5]))}"] if extra else []
                )
                raise TestFailure(f"{what} does not have the expected keys: {'; '.join(parts)}")
            for key, want in expected.items():
                self.check_matches(actual[key], want, rtol=rtol, atol=atol, what=f"{what}[{key!r}]")
        elif isinstance(expected, float) and isinstance(actual, int | float) and not isinstance(actual, bool):
            if isinstance(actual, int) and abs(actual) > 2**53:
                raise TestFailure(f"{what} is an integer too large to be the expected number")
            self.check_close(
                torch.tensor(float(actual), dtype=torch.float64),
                torch.tensor(expected, dtype=torch.float64),
                rtol=rtol,
                atol=atol,
                what=what,
            )
        else:
            self.check_equal(actual, expected, what=what)

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
    skipped: bool = False  # not run here (e.g. it needs a GPU and this run had none); scores nothing


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
    flags: list[str] = field(default_factory=list)  # for staff only: suspicious timings, runtime-check hits
    hardware_class: str = "cpu"  # where timings come from: "cpu", "cuda:<name>" or "rocm:<name>"

    def to_json(self) -> dict:
        """Everything, flags included: for staff and storage."""
        return asdict(self)

    def student_json(self) -> dict:
        """What the student may see: everything but the staff flags."""
        payload = asdict(self)
        del payload["flags"]
        return payload


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
    session.activity = f"test {spec.name}"
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


# -- timing --------------------------------------------------------------------------------------------------


def _make_case(bench: Benchmark, ctx: Context, shape: Any) -> Case:
    case = bench.factory(ctx, shape) if bench.takes_shape else bench.factory(ctx)
    if not isinstance(case, Case):
        raise GraderError(f"benchmark {bench.metric!r} must return a Case, got {_type_name(case)}")
    return case


@dataclass
class ShapeSamples:
    """Everything measured for one benchmark shape, in seconds."""

    label: str
    student: list[float] = field(default_factory=list)  # trusted round trips of the timed calls
    sandbox: list[float] = field(default_factory=list)  # the runner's own figure for the same calls
    overhead_before: list[float] = field(default_factory=list)  # no-op round trips before the import
    overhead_after: list[float] = field(default_factory=list)  # no-op round trips between timed calls
    reference: list[float] = field(default_factory=list)  # the reference on this side, same inputs
    warmup_calls: int = 0
    warmup_s: float = 0.0


@dataclass(frozen=True)
class ShapeSummary:
    """One shape's figures, in seconds."""

    label: str
    time_s: float  # median of the overhead-corrected round trips, raised to the floor
    corrected_s: float  # the same before the floor
    iqr_s: float
    overhead_s: float
    sandbox_s: float | None
    reference_s: float | None
    reps: int


def transport_overhead(before: Sequence[float], after: Sequence[float]) -> float:
    """The round-trip cost to subtract: the smaller of the two calibration medians.

    The calibration before the import cannot be tampered with; the one between timed calls follows drift.
    Student code can only make a no-op slower, never faster than the transport, so the minimum is safe.
    """
    medians = [statistics.median(samples) for samples in (before, after) if samples]
    return min(medians) if medians else 0.0


def median_relative_standard_error(samples: Sequence[float]) -> float:
    """Standard error of the median relative to it, from the median absolute deviation (robust to outliers)."""
    if len(samples) < 2:
        return math.inf
    center = statistics.median(samples)
    if center <= 0:
        return math.inf
    spread = 1.4826 * statistics.median(abs(sample - center) for sample in samples)
    return 1.2533 * spread / math.sqrt(len(samples)) / center


def geometric_mean(values: Sequence[float]) -> float:
    return math.exp(statistics.fmean(math.log(value) for value in values))


def _quartiles(samples: Sequence[float]) -> tuple[float, float]:
    if len(samples) < 2:
        return samples[0], samples[0]
    low, _, high = statistics.quantiles(samples, n=4, method="inclusive")
    return low, high


def summarize_shape(samples: ShapeSamples, floor_s: float | None) -> ShapeSummary:
    """Correct the round trips for transport, take median and IQR, and apply the floor."""
    overhead = transport_overhead(samples.overhead_before, samples.overhead_after)
    corrected = [max(wall - overhead, 0.0) for wall in samples.student]
    reference = statistics.median(samples.reference) if samples.reference else None
    if floor_s is None:
        floor_s = FLOOR_FRACTION_OF_REFERENCE * reference if reference else MIN_FLOOR_S
    median = statistics.median(corrected)
    low, high = _quartiles(corrected)
    in_sandbox = samples.sandbox if len(samples.sandbox) == len(samples.student) else []
    return ShapeSummary(
        label=samples.label,
        time_s=max(median, floor_s, MIN_FLOOR_S),
        corrected_s=median,
        iqr_s=high - low,
        overhead_s=overhead,
        sandbox_s=statistics.median(in_sandbox) if in_sandbox else None,
        reference_s=reference,
        reps=len(corrected),
    )


def benchmark_metrics(metric: str, unit: str, shapes: Sequence[ShapeSummary]) -> dict[str, float]:
    """The report's metrics: per shape ``<metric>.<label>`` (and ``_iqr``, ``_reference``, ``_sandbox``,
    ``_overhead``, ``_reps``), overall ``<metric>`` (geometric mean), ``<metric>_speedup``,
    ``<metric>_reference``, ``<metric>_sandbox`` and ``<metric>_reps``."""
    scale = TIME_UNITS[unit]
    metrics: dict[str, float] = {}
    for shape in shapes:
        key = f"{metric}.{shape.label}"
        metrics[key] = shape.time_s * scale
        metrics[f"{key}_iqr"] = shape.iqr_s * scale
        metrics[f"{key}_overhead"] = shape.overhead_s * scale
        metrics[f"{key}_reps"] = float(shape.reps)
        if shape.sandbox_s is not None:
            metrics[f"{key}_sandbox"] = shape.sandbox_s * scale
        if shape.reference_s is not None:
            metrics[f"{key}_reference"] = shape.reference_s * scale
    metrics[metric] = geometric_mean([shape.time_s for shape in shapes]) * scale
    metrics[f"{metric}_reps"] = float(sum(shape.reps for shape in shapes))
    sandbox = [shape.sandbox_s for shape in shapes]
    if all(value is not None for value in sandbox):
        metrics[f"{metric}_sandbox"] = geometric_mean([max(v or 0.0, MIN_FLOOR_S) for v in sandbox]) * scale
    references = [shape.reference_s for shape in shapes]
    if all(value is not None and value > 0 for value in references):
        reference_mean = geometric_mean([value or 0.0 for value in references])
        metrics[f"{metric}_reference"] = reference_mean * scale
        metrics[f"{metric}_speedup"] = reference_mean / geometric_mean([shape.time_s for shape in shapes])
    return metrics


def timing_flags(metric: str, shape: ShapeSummary, samples: ShapeSamples) -> list[str]:
    """Staff flags when the trusted clock and the runner's own clock disagree, or calibration drifted."""
    flags = []
    where = f"{metric}.{shape.label}"
    if shape.sandbox_s is not None:
        slack = max(AGREEMENT_SLACK_S, AGREEMENT_SLACK_OF_OVERHEAD * shape.overhead_s)
        low, high = AGREEMENT_RANGE
        ratio = shape.corrected_s / shape.sandbox_s if shape.sandbox_s > 0 else math.inf
        if not low <= ratio <= high and abs(shape.corrected_s - shape.sandbox_s) > slack:
            flags.append(
                f"timing: {where} took {shape.corrected_s * 1e3:.4g} ms by the trusted clock (after "
                f"{shape.overhead_s * 1e3:.4g} ms transport) but {shape.sandbox_s * 1e3:.4g} ms by the "
                f"sandbox's own clock (ratio {ratio:.3g}, outside [{low:g}, {high:g}])"
            )
    if samples.overhead_before and samples.overhead_after:
        before = statistics.median(samples.overhead_before)
        after = statistics.median(samples.overhead_after)
        if after > CALIBRATION_DRIFT_FACTOR * before + CALIBRATION_DRIFT_SLACK_S:
            flags.append(
                f"timing: {where} no-op round trips took {after * 1e3:.4g} ms after the student's module was "
                f"imported, {before * 1e3:.4g} ms before (the smaller was used)"
            )
    return flags


def _expected_of(case: Case, reference_output: Any) -> Any:
    return case.expected if case.expected is not None else reference_output


def _check_output(ctx: Context, case: Case, expected: Any, result: CallResult) -> None:
    if case.check is not None:
        case.check(ctx, result.value, expected)
    elif expected is not None:
        ctx.check_matches(
            result.value, expected, rtol=case.rtol, atol=case.atol, what=f"the output of {case.fn}"
        )


@contextlib.contextmanager
def _quiet_cpu(device: torch.device) -> Iterator[None]:
    """On CPU, keep this process's torch work on one thread while timing (the reference included).

    OpenMP worker threads spin for a while after every parallel region: ours would compete with the sandbox
    for cores during the student's call, and when the machine's cores are oversubscribed a multi-threaded
    reference can take tens of times its real time. One thread also matches the one CPU a docker sandbox
    gets by default.
    """
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _warm_up(
    session: _Session, bench: Benchmark, ctx: Context, shape: Any, samples: ShapeSamples, deadline: float
) -> None:
    """Untimed calls that let kernels compile and autotune (the reference's too): at least one, then until
    ``deadline``."""
    started = time.monotonic()
    for index in range(max(1, bench.warmup)):
        if index and time.monotonic() >= deadline:
            break
        case = _make_case(bench, ctx, shape)
        reference_output = None
        if bench.reference is not None:
            _, reference_output = session.time_reference(bench.reference, case)
        expected = _expected_of(case, reference_output)
        result = session.invoke(case.fn, tuple(case.args), case.kwargs, expected=expected)
        _check_output(ctx, case, expected, result)
        samples.warmup_calls += 1
    samples.warmup_s = time.monotonic() - started


InputState = tuple[torch.Tensor, tuple]  # what the context's generators held before a case was made


def _time_student(
    session: _Session, bench: Benchmark, ctx: Context, shape: Any, samples: ShapeSamples, budget_s: float
) -> list[InputState]:
    """Timed calls, each with fresh inputs, followed by a no-op calibration call and the output check.

    Returns the generator states the cases were made from, so the reference can be timed on the same inputs.
    """
    started = time.monotonic()
    floor_s = bench.floors_s[samples.label] if bench.floors_s is not None else MIN_FLOOR_S
    states: list[InputState] = []
    while len(samples.student) < bench.max_reps:
        states.append((ctx.generator.get_state(), ctx.rng.getstate()))
        case = _make_case(bench, ctx, shape)
        session.flush_l2()
        result = session.invoke(case.fn, tuple(case.args), case.kwargs, expected=case.expected)
        reference_output = None
        if case.expected is None and bench.reference is not None:
            reference_output = bench.reference(*case.args, **case.kwargs)
        session.flush_l2()
        samples.overhead_after.append(session.calibrate(tuple(case.args), case.kwargs, result.value))
        _check_output(ctx, case, _expected_of(case, reference_output), result)
        samples.student.append(result.wall_s)
        if result.sandbox_s is not None:
            samples.sandbox.append(result.sandbox_s)

        if time.monotonic() - started >= budget_s or session.remaining() < session.package.call_timeout_s:
            break
        if len(samples.student) >= bench.min_reps:
            overhead = transport_overhead(samples.overhead_before, samples.overhead_after)
            corrected = [max(wall - overhead, floor_s) for wall in samples.student]
            if median_relative_standard_error(corrected) <= bench.target_rse:
                break
    return states


def _time_reference(
    session: _Session,
    bench: Benchmark,
    ctx: Context,
    shape: Any,
    samples: ShapeSamples,
    states: list[InputState],
) -> None:
    """Time the reference on this side on exactly the inputs the student's timed calls got (replayed from the
    generator states), after one untimed call that lets the sandbox's threads settle."""
    if bench.reference is None or not states:
        return
    after = (ctx.generator.get_state(), ctx.rng.getstate())
    for index, (torch_state, rng_state) in enumerate([states[0], *states]):
        if session.remaining() < session.package.call_timeout_s:
            break
        ctx.generator.set_state(torch_state)
        ctx.rng.setstate(rng_state)
        seconds, _ = session.time_reference(bench.reference, _make_case(bench, ctx, shape))
        if index:
            samples.reference.append(seconds)
    ctx.generator.set_state(after[0])
    ctx.rng.setstate(after[1])


def _run_benchmark(session: _Session, bench: Benchmark) -> tuple[dict[str, float], list[str]]:
    """Time ``bench`` over its shapes; returns (metrics, notes). Raises TestFailure if an output is wrong
    and _Stop if the sandbox is lost.

    Per shape: warm-up, then timed iterations of [fresh inputs; flush L2 on GPU; the student's call, timed
    around the round trip on this side; flush; a no-op call with the same payload; the output check], then the
    reference on this side on the same inputs. The student's time is the median round trip minus the transport
    overhead (the smaller median of the no-op round trips before the import and between calls), raised to the
    shape's floor.
    """
    ctx = Context(session, f"benchmark:{bench.metric}", visible=False)
    session.activity = f"benchmark {bench.metric}"
    warmup_deadline = time.monotonic() + bench.warmup_seconds
    budget_s = bench.max_seconds / len(bench.shapes)
    summaries = []
    notes = []
    warmup_s = 0.0
    warmup_calls = 0
    for label, shape in bench.shapes:
        samples = ShapeSamples(
            label, overhead_before=list(session.calibration.get((bench.metric, label), []))
        )
        _warm_up(session, bench, ctx, shape, samples, warmup_deadline)
        if samples.warmup_calls < bench.warmup:
            notes.append(
                f"{bench.metric}: warm-up of {label} stopped after {samples.warmup_calls} of {bench.warmup} "
                f"calls (all warm-up together is capped at {bench.warmup_seconds:g} s)."
            )
        states = _time_student(session, bench, ctx, shape, samples, budget_s)
        _time_reference(session, bench, ctx, shape, samples, states)
        floor_s = bench.floors_s[label] if bench.floors_s is not None else None
        summary = summarize_shape(samples, floor_s)
        for message in timing_flags(bench.metric, summary, samples):
            session.flag(message)
        summaries.append(summary)
        warmup_s += samples.warmup_s
        warmup_calls += samples.warmup_calls
    metrics = benchmark_metrics(bench.metric, bench.unit, summaries)
    metrics[f"{bench.metric}_warmup_s"] = warmup_s
    metrics[f"{bench.metric}_warmup_calls"] = float(warmup_calls)
    return metrics, notes


def _calibrate_before_import(session: _Session, benchmarks: Sequence[Benchmark]) -> None:
    """No-op round trips with each benchmark shape's payload while no student code is loaded in the runner."""
    with _quiet_cpu(session.device):
        _calibrate_each(session, benchmarks)


def _calibrate_each(session: _Session, benchmarks: Sequence[Benchmark]) -> None:
    for bench in benchmarks:
        for label, shape in bench.shapes:
            ctx = Context(session, f"calibration:{bench.metric}:{label}", visible=False)
            session.activity = f"calibration of {bench.metric}.{label}"
            case = _make_case(bench, ctx, shape)
            reply_like = case.expected
            if reply_like is None and bench.reference is not None:
                reply_like = bench.reference(*case.args, **case.kwargs)
            samples = []
            for _ in range(CALIBRATION_WARMUP + CALIBRATION_REPS):
                session.flush_l2()
                samples.append(session.calibrate(tuple(case.args), case.kwargs, reply_like))
            session.calibration[(bench.metric, label)] = samples[CALIBRATION_WARMUP:]


# -- start-up ------------------------------------------------------------------------------------------------


def _valid_names(value: Any, limit: int) -> bool:
    return (
        type(value) is list
        and len(value) <= limit
        and all(isinstance(name, str) and len(name) <= MAX_NAME_CHARS for name in value)
    )


def _startup(session: _Session, benchmarks: Sequence[Benchmark]) -> tuple[str, str, str | None] | None:
    """Greet the runner, calibrate the timing before any student code is loaded, then import the module.

    Returns None once it is ready, else (failure reason, message for each test, detail such as a traceback).
    """
    package = session.package
    broke = "Your program broke the grading protocol while starting up"
    not_started = (
        f"Your program did not start within {package.startup_timeout_s:g} s "
        f"(importing {package.module} took too long).",
        "Not run: your program did not start in time.",
        None,
    )
    exited = (
        f"Your program exited while {package.module} was being imported.",
        "Not run: your program exited while it was being imported.",
        None,
    )
    startup_deadline = time.monotonic() + package.startup_timeout_s

    def startup_timeout() -> float:
        return max(0.0, min(startup_deadline - time.monotonic(), session.remaining()))

    try:
        hello, _ = session.channel.recv(timeout=startup_timeout(), limits=STARTUP_LIMITS)
    except TimeoutError:
        return not_started
    except EOFError:
        return exited
    except ProtocolError as exc:
        return f"{broke}: {exc}.", "Not run: your program broke the grading protocol.", None
    problems = hello.get("problems")
    if hello.get("op") != "hello" or not _valid_names(problems, 16):
        raise GraderError(f"{package.slug}: the runner did not greet the grader as expected: {hello!r:.200}")
    if problems:
        raise GraderError(f"{package.slug}: the sandbox cannot run this assignment: {'; '.join(problems)}")

    waited = time.monotonic()
    try:
        _calibrate_before_import(session, benchmarks)
    except _Stop as stop:
        # No student code is loaded yet: whatever went wrong is ours (or the sandbox's), not the student's.
        raise GraderError(
            f"{package.slug}: timing calibration failed before the import: {stop.message}"
        ) from None
    startup_deadline += time.monotonic() - waited  # calibration does not count against the import

    try:
        session.channel.send({"op": "import"}, timeout=startup_timeout())
        header, _ = session.channel.recv(timeout=startup_timeout(), limits=STARTUP_LIMITS)
    except TimeoutError:
        return not_started
    except EOFError:
        return exited
    except ProtocolError as exc:
        return f"{broke}: {exc}.", "Not run: your program broke the grading protocol.", None
    op = header.get("op")
    if op == "import_error":
        error = _student_text(header.get("error"), MAX_STUDENT_TEXT) or "unknown error"
        trace = _student_text(header.get("traceback"), MAX_STUDENT_TRACEBACK) or None
        reason = f"Your module {package.module} could not be imported: {error}"
        return reason, "Not run: your module could not be imported.", trace
    try:
        _, forbidden_calls = _parse_observations(header, session.forbidden)
    except ProtocolError:
        forbidden_calls = None
    if op != "ready" or forbidden_calls is None or not _valid_names(header.get("names"), MAX_ANNOUNCED_NAMES):
        return (
            f"{broke}: it did not announce itself.",
            "Not run: your program broke the grading protocol.",
            None,
        )
    if forbidden_calls:
        session.flag(f"runtime check: importing {package.module} called {', '.join(forbidden_calls)}")
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
    session: _Session, benchmarks: Sequence[Benchmark], progress: Callable[[int, str], None], first: int
) -> tuple[dict[str, float], list[str], str | None, bool]:
    """Time every benchmark; returns (metrics, notes, failure reason or None, whether the sandbox is usable)."""
    metrics: dict[str, float] = {}
    notes: list[str] = []
    for offset, bench in enumerate(benchmarks):
        progress(first + offset, bench.metric)
        try:
            with _quiet_cpu(session.device):
                bench_metrics, bench_notes = _run_benchmark(session, bench)
            metrics.update(bench_metrics)
            notes += bench_notes
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
    inputs_dir: Path | None = None,
    inputs_dir_inside: str = SANDBOX_INPUTS_DIR,
) -> GradeReport:
    """Run every test of ``package`` (then its benchmarks, if all passed) against the runner on ``channel``.

    ``benchmarks=False`` skips the timing (a correctness-only run).

    ``inputs_dir``: a host directory the sandbox sees at ``inputs_dir_inside`` (read-write). With it, the CPU
    inputs of checked calls travel through files this side keeps open, so whether the student's code mutated
    them is judged from evidence it cannot forge; without it, from the inputs the runner sends back.

    Never raises because of anything the sandbox sends; raises GraderError if tests.py itself is broken or
    the sandbox cannot run the assignment (infrastructure faults).
    The caller owns the sandbox: afterwards it should wait for it briefly and then kill it.
    """
    suite = load_suite(package.path)
    declared = [spec.name for spec in package.tests]
    if set(declared) != set(suite.tests):
        raise GraderError(
            f"{package.slug}: tests.py registers {sorted(suite.tests)}, assignment.toml {declared}"
        )
    session = _Session(package, channel, seed, inputs_dir=inputs_dir, inputs_dir_inside=inputs_dir_inside)
    session.declared_metrics = frozenset(suite.metrics)
    has_gpu = session.device.type == "cuda"
    timed = (
        [bench for bench in suite.benchmarks.values() if has_gpu or bench.requires != "gpu"]
        if benchmarks
        else []
    )
    gpu_only_benchmarks = [
        bench.metric
        for bench in suite.benchmarks.values()
        if benchmarks and bench.requires == "gpu" and not has_gpu
    ]
    total = len(package.tests) + len(timed)

    def progress(done: int, current: str) -> None:
        if on_progress is not None:
            on_progress(done, total, current)

    def report(
        status: Literal["graded", "failed"],
        reason: str | None,
        outcomes: list[TestOutcome],
        metrics: dict[str, float],
        notes: list[str],
        detail: str | None = None,
    ) -> GradeReport:
        score = round(sum(outcome.score for outcome in outcomes), 6)
        max_score = round(sum(spec.weight for spec in package.tests), 6)
        return GradeReport(
            status,
            reason,
            outcomes,
            score,
            max_score,
            metrics,
            notes,
            failure_detail=detail,
            flags=session.flags,
            hardware_class=hardware_class(session.device),
        )

    try:
        startup_failure = _startup(session, timed)
    except Exception as exc:
        if isinstance(exc, GraderError):
            raise
        raise GraderError(f"{package.slug}: start-up failed on the grader's side: {exc!r}") from exc
    if startup_failure is not None:
        reason, not_run, detail = startup_failure
        not_run_outcomes = [_outcome(spec, False, not_run, 0.0) for spec in package.tests]
        progress(total, "")
        return report("failed", reason, not_run_outcomes, {}, [], detail)

    outcomes: list[TestOutcome] = []
    failure_reason: str | None = None
    notes: list[str] = []
    stopped: str | None = None  # why the remaining tests are not run
    for index, spec in enumerate(package.tests):
        progress(index, spec.name)
        if stopped is not None:
            outcomes.append(_outcome(spec, False, f"Not run: {stopped}", 0.0))
            continue
        if spec.requires == "gpu" and not has_gpu:
            outcomes.append(replace(_outcome(spec, False, NEEDS_GPU_MESSAGE, 0.0), skipped=True))
            continue
        started = time.monotonic()
        try:
            outcomes.append(_run_test(session, spec, suite.tests[spec.name]))
        except _Stop as stop:
            outcome, stopped, failure_reason = _stop_outcome(spec, stop, time.monotonic() - started)
            outcomes.append(outcome)

    metrics: dict[str, float] = dict(session.test_metrics)
    usable = stopped is None
    skipped = [outcome.name for outcome in outcomes if outcome.skipped]
    if skipped:
        notes.append(
            f"{len(skipped)} test(s) need a GPU and were not run, because this run had none: "
            f"{', '.join(skipped)}. They count once the submission is graded on a GPU worker."
        )
        session.flag(f"graded without a GPU: {len(skipped)} GPU test(s) not run")
    if gpu_only_benchmarks:
        notes.append(f"Not timed without a GPU: {', '.join(gpu_only_benchmarks)}.")
    if usable and all(outcome.passed for outcome in outcomes if not outcome.skipped):
        bench_metrics, bench_notes, failure_reason, usable = _run_benchmarks(
            session, timed, progress, len(package.tests)
        )
        metrics.update(bench_metrics)
        notes += bench_notes
    elif usable and timed:
        notes.append("Speed is only measured once every test passes.")

    if usable:
        try:
            channel.send({"op": "shutdown"}, timeout=SHUTDOWN_TIMEOUT_S)
        except (TimeoutError, EOFError, ProtocolError, OSError):
            logger.info("the sandbox did not take the shutdown message")
    progress(total, "")
    return report("failed" if failure_reason else "graded", failure_reason, outcomes, metrics, notes)
