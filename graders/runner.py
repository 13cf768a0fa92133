"""The runner stub: the only grader code that runs inside the sandbox, next to the student's files.

It is copied alone with protocol.py into the sandbox's /runner and started as
``python -I -B /runner/runner.py --module NAME [--workdir /work] [--watch-triton] [--forbid DOTTED.NAME ...]``.
It knows nothing about tests, expected values or scores: it is a remote procedure call server.

The conversation, every message a framed protocol message:

1. The runner imports torch, installs its call monitors (below) and says ``hello``.
2. Before any student code exists in the process, the grader may send ``calibrate`` and ``flush`` requests:
   no-op calls with a benchmark's real payload, whose round trips the grader times as transport overhead.
3. ``import``: the runner imports the student's module and answers ``ready`` (its public callables) or
   ``import_error`` (and exits).
4. ``call``, ``calibrate`` and ``flush`` requests until ``shutdown`` or end of input.

Call monitors, installed before the student's module is imported: with ``--watch-triton`` every Triton kernel
launch is counted, and each ``--forbid`` name (e.g. ``torch.softmax``, ``torch.Tensor.softmax``) is wrapped so
that calling it is recorded. Each result reports what happened during that call. Student code runs in this
process and can undo the wrappers, so the grader treats them as a cross-check, never as proof of innocence.

Everything the student's code prints goes to stderr (the sandbox keeps a capped log of it); the protocol runs
over private duplicates of the original stdin and stdout.
"""

import argparse
import contextlib
import functools
import importlib
import inspect
import json
import math
import os
import sys
import time
import traceback
from typing import Any

# `python -I` leaves the script's directory off sys.path, so put it there for the sibling protocol module.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# OpenMP threads that spin after each parallel region compete with the grader's process for cores while a result
# travels back, which inflates the trusted round trip by more than the student's own work (and, when cores are
# oversubscribed, by tens of milliseconds). Waiting threads sleep instead, unless the sandbox's environment says
# otherwise. libgomp reads this when torch loads it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch
from protocol import (
    DTYPES_BY_NAME,
    Channel,
    MessageLimits,
    ProtocolError,
    pack_value,
    unpack_value,
)

MAX_ERROR_CHARS = 2_000
MAX_TRACEBACK_CHARS = 8_000
# Writing this many bytes evicts every line of the largest GPU L2 caches in service (H100/H200: 50 MiB,
# MI300X: 256 MiB of Infinity Cache).
L2_FLUSH_BYTES = 256 * 2**20
# Taken before the student's code runs, so replacing time.perf_counter later does not change what we measure.
_clock = time.perf_counter


def _take_over_stdio() -> Channel:
    """Move the protocol onto private descriptors and point fd 0/1 away from it."""
    protocol_in = os.dup(0)
    protocol_out = os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    reader = os.fdopen(protocol_in, "rb", buffering=0)
    writer = os.fdopen(protocol_out, "wb", buffering=0)
    return Channel(reader, writer)


def _safe_str(obj: object) -> str:
    try:
        text = str(obj)
    except BaseException:
        return "<unprintable>"
    return text if isinstance(text, str) else "<unprintable>"


def _cap(text: str, limit: int) -> str:
    return text if len(text) <= limit else "..." + text[-(limit - 3) :]


def describe_exception(exc: BaseException) -> str:
    """``"ExcType: message"``, capped; robust against exceptions whose ``__str__`` misbehaves."""
    name = getattr(type(exc), "__name__", "Exception")
    message = _safe_str(exc)
    text = f"{name}: {message}" if message else name
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."


def student_traceback(exc: BaseException, workdir: str) -> str:
    """The traceback limited to frames in the student's files (the runner's own frames are noise to them)."""
    root = os.path.realpath(workdir) + os.sep
    try:
        frames = [
            frame
            for frame in traceback.extract_tb(exc.__traceback__)
            if os.path.isabs(frame.filename) and os.path.realpath(frame.filename).startswith(root)
        ]
        lines = ["Traceback (most recent call last):\n"] if frames else []
        lines += traceback.StackSummary.from_list(frames).format()
        if isinstance(exc, SyntaxError):
            lines += traceback.format_exception_only(type(exc), exc)
        else:
            lines.append(describe_exception(exc) + "\n")
        return _cap("".join(lines), MAX_TRACEBACK_CHARS)
    except BaseException:
        return describe_exception(exc)


def public_names(module: Any) -> list[str]:
    try:
        items = list(vars(module).items())
    except BaseException:
        return []
    return sorted(
        name
        for name, value in items
        if isinstance(name, str) and not name.startswith("_") and callable(value)
    )


# -- call monitors -------------------------------------------------------------------------------------------


class CallMonitor:
    """Counts Triton kernel launches and calls of forbidden functions since the last :meth:`reset`."""

    def __init__(self) -> None:
        self.watching_triton = False
        self.forbidden: tuple[str, ...] = ()
        self.problems: list[str] = []
        self.kernel_launches = 0
        self.called: set[str] = set()

    def reset(self) -> None:
        self.kernel_launches = 0
        self.called = set()

    def report(self) -> dict[str, Any]:
        """What the result of a call says about it: only the monitors that are installed."""
        report: dict[str, Any] = {}
        if self.watching_triton:
            report["kernel_launches"] = self.kernel_launches
        if self.forbidden:
            report["forbidden_calls"] = sorted(self.called)
        return report

    def watch_triton(self) -> None:
        """Count launches through every Triton launcher (compiled kernels and the CPU interpreter)."""
        if not torch.cuda.is_available():
            # Without a GPU, Triton kernels can only run in its interpreter; it is chosen when triton loads.
            os.environ.setdefault("TRITON_INTERPRET", "1")
        try:
            from triton.runtime import interpreter, jit
        except Exception as exc:
            self.problems.append(f"triton cannot be imported in the sandbox: {describe_exception(exc)}")
            return
        for launcher in (jit.JITFunction, interpreter.InterpretedFunction):
            launcher.run = self._counting_launcher(launcher.run)
        self.watching_triton = True

    def _counting_launcher(self, run: Any) -> Any:
        monitor = self

        @functools.wraps(run)
        def counted(kernel: Any, *args: Any, **kwargs: Any) -> Any:
            if not kwargs.get("warmup", False):  # warmup=True compiles without launching
                monitor.kernel_launches += 1
            return run(kernel, *args, **kwargs)

        return counted

    def forbid(self, names: list[str]) -> None:
        """Wrap each named function (or class, through its ``__init__``) so that calls to it are recorded."""
        installed = []
        for name in names:
            located = _locate(name)
            if located is None:
                continue  # not installed here, so the student cannot call it either
            owner, attribute, target = located
            if inspect.isclass(target):
                owner, attribute, target = target, "__init__", target.__init__
            try:
                setattr(owner, attribute, self._recording(name, target))
            except (AttributeError, TypeError) as exc:
                self.problems.append(f"cannot watch {name}: {describe_exception(exc)}")
                continue
            installed.append(name)
        self.forbidden = tuple(installed)

    def _recording(self, name: str, function: Any) -> Any:
        monitor = self

        @functools.wraps(function)
        def recorded(*args: Any, **kwargs: Any) -> Any:
            monitor.called.add(name)
            return function(*args, **kwargs)

        return recorded


def _locate(dotted: str) -> tuple[Any, str, Any] | None:
    """``(owner, attribute, object)`` for a dotted name like ``torch.nn.functional.softmax``, if it exists."""
    parts = dotted.split(".")
    for split in range(len(parts) - 1, 0, -1):
        try:
            owner = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue  # a shorter prefix may be the module: torch.Tensor.softmax lives in torch
        try:
            for part in parts[split:-1]:
                owner = getattr(owner, part)
            return owner, parts[-1], getattr(owner, parts[-1])
        except AttributeError:
            return None
    return None


# -- serving calls -------------------------------------------------------------------------------------------


def _import_student(module_name: str, workdir: str) -> tuple[Any, dict | None]:
    """The student's module, or None and the ``import_error`` message to send."""
    sys.path.insert(0, workdir)
    try:
        return importlib.import_module(module_name), None
    except BaseException as exc:
        message = {
            "op": "import_error",
            "error": describe_exception(exc),
            "traceback": student_traceback(exc, workdir),
        }
        return None, message


def _tensor_inputs(value: Any, where: str, found: list[tuple[str, torch.Tensor]]) -> None:
    if isinstance(value, torch.Tensor):
        found.append((where, value))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _tensor_inputs(item, f"{where}[{index}]", found)
    elif isinstance(value, dict):
        for key, item in value.items():
            _tensor_inputs(item, f"{where}[{key!r}]", found)


def map_shared_inputs(spec: Any, tensors: dict) -> dict[str, torch.Tensor]:
    """The call's ``shared_inputs``: input tensors the grader wrote into files of its own, mapped here.

    ``spec`` maps a tensor name (as the call's args and kwargs refer to it) to ``{"path", "dtype", "shape"}``.
    Each file is mapped shared (MAP_SHARED), so what the student's function writes into its input lands in
    the grader's file, which the grader reads back through a descriptor it kept: the mutation check it trusts.
    """
    if spec is None:
        return {}
    if not isinstance(spec, dict):
        raise ProtocolError("a call's shared_inputs must be an object")
    mapped: dict[str, torch.Tensor] = {}
    for name, entry in spec.items():
        if name in tensors or not isinstance(entry, dict):
            raise ProtocolError("malformed shared input in a call")
        path, dtype, shape = entry.get("path"), DTYPES_BY_NAME.get(entry.get("dtype")), entry.get("shape")
        if (
            not isinstance(path, str)
            or dtype is None
            or type(shape) is not list
            or not all(type(size) is int and size >= 0 for size in shape)
        ):
            raise ProtocolError("malformed shared input in a call")
        numel = math.prod(shape)
        try:
            mapped[name] = torch.from_file(path, shared=True, size=numel, dtype=dtype).view(shape)
        except (RuntimeError, OSError, ValueError) as exc:
            raise ProtocolError(
                f"could not map the shared input {name[:64]!r}: {_safe_str(exc)[:200]}"
            ) from None
    return mapped


def _unchanged(before: torch.Tensor, after: torch.Tensor) -> bool:
    """Bit-for-bit equality, so NaNs compare equal to themselves and -0.0 differs from 0.0."""
    try:
        if before.shape != after.shape or before.dtype != after.dtype or before.device != after.device:
            return False
        after_bytes = after.detach().contiguous().reshape(-1).view(torch.uint8)
        return torch.equal(before.reshape(-1).view(torch.uint8), after_bytes)
    except Exception:
        return False


def _cuda_in_use() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_initialized()


def _synchronize() -> None:
    if _cuda_in_use():
        torch.cuda.synchronize()


class _L2Flusher:
    """Evicts the GPU's L2 cache by overwriting a scratch buffer larger than it (a no-op without CUDA)."""

    def __init__(self) -> None:
        self._scratch: torch.Tensor | None = None

    def flush(self) -> None:
        if not _cuda_in_use():
            return
        if self._scratch is None:
            self._scratch = torch.empty(L2_FLUSH_BYTES, dtype=torch.uint8, device="cuda")
        self._scratch.zero_()
        torch.cuda.synchronize()


def _failure(call_id: int, kind: str, error: str, trace: str | None = None) -> dict:
    """A failed call; ``kind`` is "exception" (the function raised), "missing" or "bad_result"."""
    return {"op": "result", "id": call_id, "ok": False, "kind": kind, "error": error, "traceback": trace}


def _reply_tensors(specs: Any) -> Any:
    """The value a ``calibrate`` request asks to get back: empty tensors of the given shapes and dtypes."""
    if type(specs) is not list or len(specs) > 1024:
        raise ProtocolError("a calibrate request needs a list of reply tensors")
    tensors = []
    for spec in specs:
        if type(spec) is not dict or set(spec) != {"shape", "dtype", "device"}:
            raise ProtocolError("malformed reply tensor in a calibrate request")
        shape, dtype, device = spec["shape"], DTYPES_BY_NAME.get(spec["dtype"]), spec["device"]
        if (
            type(shape) is not list
            or not all(type(size) is int and size >= 0 for size in shape)
            or dtype is None
        ):
            raise ProtocolError("malformed reply tensor in a calibrate request")
        if device not in ("cpu", "cuda"):
            raise ProtocolError("malformed reply tensor device in a calibrate request")
        tensors.append(torch.empty(shape, dtype=dtype, device=device))
    if not tensors:
        return None
    return tensors[0] if len(tensors) == 1 else tensors


def _over_limits(packed: Any, tensors: dict, limits: MessageLimits | None, what: str) -> str | None:
    """Why a result cannot be sent back within ``limits`` (the grader enforces them too), or None."""
    if limits is None:
        return None
    if len(tensors) > limits.max_tensors:
        return f"{what} cannot be sent back: it holds {len(tensors)} tensors, at most {limits.max_tensors} can be"
    elements = sum(tensor.numel() for tensor in tensors.values())
    if elements > limits.max_tensor_elements:
        return (
            f"{what} cannot be sent back: it holds {elements:,} tensor elements, at most "
            f"{limits.max_tensor_elements:,} can be from this call"
        )
    # The rest of the result header (ids, flags, error texts) stays well under this margin.
    budget = limits.max_header_bytes - 4096
    if len(json.dumps(packed, separators=(",", ":"))) > budget:
        return (
            f"{what} cannot be sent back: its non-tensor part is over {budget:,} bytes; "
            "return tensors rather than long lists or strings"
        )
    return None


def _grad_leaves(spec: Any, args: list, kwargs: dict, tensors: dict) -> tuple[list[torch.Tensor], list]:
    """Replace each input named by a ``grad`` request's ``wrt`` paths with a leaf that requires grad.

    A path is ``["args", index, ...]`` or ``["kwargs", name, ...]``, going on into the dicts and lists of that
    argument. Returns the leaves (in ``wrt`` order) and the list of gradients to back-propagate (one per output
    tensor; None entries are skipped).
    """
    if type(spec) is not dict or set(spec) != {"wrt", "grad_output"} or type(spec["wrt"]) is not list:
        raise ProtocolError("malformed grad request in a call")
    leaves = []
    for path in spec["wrt"]:
        if type(path) is not list or len(path) < 2 or path[0] not in ("args", "kwargs"):
            raise ProtocolError("malformed grad path in a call")
        container: Any = args if path[0] == "args" else kwargs
        for step in path[1:-1]:
            container = _child(container, step)
        key = path[-1]
        tensor = _child(container, key)
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
            raise ProtocolError("a grad path does not lead to a floating-point tensor")
        leaf = tensor.detach().clone().requires_grad_(True)
        container[key] = leaf
        leaves.append(leaf)
    grad_output = unpack_value(spec["grad_output"], tensors)
    grad_outputs = grad_output if type(grad_output) is list else [grad_output]
    return leaves, grad_outputs


def _child(container: Any, step: Any) -> Any:
    if (type(container) is list and type(step) is int and 0 <= step < len(container)) or (
        type(container) is dict and type(step) is str and step in container
    ):
        return container[step]
    raise ProtocolError("a grad path does not exist in the call's arguments")


def _backward(value: Any, grad_outputs: list, leaves: list[torch.Tensor]) -> list[torch.Tensor | None]:
    """Back-propagate ``grad_outputs`` through the output(s) in ``value``; the leaves' gradients, in order.

    Raises ValueError (a bad result: the student's output cannot be differentiated as asked).
    """
    outputs = list(value) if isinstance(value, list | tuple) else [value]
    if len(outputs) != len(grad_outputs):
        raise ValueError(
            f"the result has {len(outputs)} output(s), but the grader back-propagates through "
            f"{len(grad_outputs)}; return exactly what the interface describes"
        )
    pairs = [(output, grad) for output, grad in zip(outputs, grad_outputs, strict=True) if grad is not None]
    for index, (output, grad) in enumerate(pairs):
        if not isinstance(output, torch.Tensor) or output.shape != grad.shape:
            raise ValueError(f"output {index} is not a tensor of shape {tuple(grad.shape)}")
        if not output.requires_grad:
            raise ValueError(
                f"output {index} does not depend on the inputs through autograd (was it detached, computed "
                "under torch.no_grad(), or converted through numpy?)"
            )
    # One scalar, sum(output * grad_output), gives the same gradients as backward(outputs, grad_outputs) without
    # loading torch's symbolic-shape machinery (over a second of every grading's first gradient call).
    total = sum((output * grad.to(output.dtype)).sum() for output, grad in pairs)
    if isinstance(total, torch.Tensor):
        total.backward()
    return [leaf.grad for leaf in leaves]


def _detached(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, list | tuple):
        return [_detached(item) for item in value]
    if isinstance(value, dict):
        return {key: _detached(item) for key, item in value.items()}
    return value


def handle_call(
    module: Any,
    header: dict,
    tensors: dict,
    workdir: str,
    monitor: CallMonitor,
) -> tuple[dict, dict]:
    """Run one ``call`` (or, with ``module`` None, ``calibrate``) request; returns the result and its tensors."""
    call_id = header.get("id")
    if type(call_id) is not int:
        raise ProtocolError("a request needs an integer id")
    limits = MessageLimits.from_json(header["limits"]) if "limits" in header else None
    shared = map_shared_inputs(header.get("shared_inputs"), tensors)
    tensors = {**tensors, **shared}
    shared_ids = {id(tensor) for tensor in shared.values()}
    args = unpack_value(header.get("args", []), tensors)
    kwargs = unpack_value(header.get("kwargs", {}), tensors)
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise ProtocolError("a call's args must be a list and its kwargs an object")

    function: Any
    if module is None:
        reply = _reply_tensors(header.get("reply"))
        function_name = "calibration"

        def function(*_args: Any, **_kwargs: Any) -> Any:
            return reply

    else:
        requested = header.get("fn")
        if not isinstance(requested, str):
            raise ProtocolError("a call needs a function name")
        function_name = requested
        function = getattr(module, function_name, None) if not function_name.startswith("_") else None
        if function is None or not callable(function):
            return _failure(call_id, "missing", f"your module has no function named {function_name!r}"), {}

    leaves: list[torch.Tensor] = []
    grad_outputs: list = []
    if "grad" in header and module is not None:
        leaves, grad_outputs = _grad_leaves(header["grad"], args, kwargs, tensors)

    inputs: list[tuple[str, torch.Tensor]] = []
    _tensor_inputs(args, "args", inputs)
    _tensor_inputs(kwargs, "kwargs", inputs)
    # The argument objects are compared afterwards with these copies: in-place changes of values or shape show.
    snapshots = [(where, tensor, tensor.detach().clone().contiguous()) for where, tensor in inputs]
    use_events = _cuda_in_use()

    monitor.reset()
    try:
        _synchronize()
        if use_events:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        started = _clock()
        with torch.enable_grad() if leaves else contextlib.nullcontext():
            value = function(*args, **kwargs)
            if leaves:
                try:
                    grads = _backward(value, grad_outputs, leaves)
                except ValueError as exc:
                    return {**_failure(call_id, "bad_result", _safe_str(exc)), **monitor.report()}, {}
                value = [_detached(value), grads]
        if use_events:
            end.record()
        _synchronize()
        elapsed = _clock() - started
        if use_events:
            elapsed = start.elapsed_time(end) / 1e3
    except BaseException as exc:
        failure = _failure(call_id, "exception", describe_exception(exc), student_traceback(exc, workdir))
        return {**failure, **monitor.report()}, {}
    observed = monitor.report()

    mutated = [where for where, tensor, before in snapshots if not _unchanged(before, tensor)]
    what = f"the result of {function_name}"
    try:
        packed, out_tensors = pack_value(value, name=what)
    except Exception as exc:
        return {**_failure(call_id, "bad_result", _safe_str(exc)), **observed}, {}
    too_big = _over_limits(packed, out_tensors, limits, what)
    if too_big is not None:
        return {**_failure(call_id, "bad_result", too_big), **observed}, {}
    result = {
        "op": "result",
        "id": call_id,
        "ok": True,
        "value": packed,
        "mutated": mutated,
        "elapsed_s": elapsed if math.isfinite(elapsed) and elapsed >= 0 else 0.0,
        **observed,
    }
    if header.get("return_inputs") is True:
        # The grader compares these with its own pristine copies (shared inputs it reads from its own files).
        returned = [tensor for _, tensor in inputs if id(tensor) not in shared_ids]
        try:
            both, out_tensors = pack_value({"value": value, "inputs": returned}, name=what)
        except Exception as exc:
            return {**_failure(call_id, "bad_result", _safe_str(exc)), **observed}, {}
        result["value"], result["inputs_after"] = both["value"], both["inputs"]
    return result, out_tensors


def serve(channel: Channel, module_name: str, workdir: str, monitor: CallMonitor) -> int:
    """Answer requests until ``shutdown`` or end of input; returns the exit code."""
    module: Any = None
    flusher = _L2Flusher()
    while True:
        try:
            header, tensors = channel.recv()
        except EOFError:
            return 0
        op = header.get("op")
        if op == "shutdown":
            return 0
        if op == "import":
            if module is not None:
                raise ProtocolError("the module is already imported")
            monitor.reset()
            os.chdir(workdir)
            module, error = _import_student(module_name, workdir)
            if error is not None:
                channel.send(error)
                return 0
            channel.send({"op": "ready", "names": public_names(module), **monitor.report()})
            continue
        if op == "flush":
            flusher.flush()
            channel.send({"op": "flushed", "id": header.get("id")})
            continue
        if op == "call" and module is None:
            raise ProtocolError("a call arrived before the module was imported")
        if op not in ("call", "calibrate"):
            raise ProtocolError(f"unexpected request {_safe_str(op)[:40]!r}")
        result, out_tensors = handle_call(module if op == "call" else None, header, tensors, workdir, monitor)
        try:
            channel.send(result, out_tensors)
        except (TypeError, ValueError, RuntimeError, ProtocolError) as exc:
            # Raised before anything is written: the result could not be encoded or is over the size limit.
            message = f"the result of {header.get('fn')} cannot be sent back: {exc}"
            channel.send({**_failure(result["id"], "bad_result", message), **monitor.report()})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run a student's module for the trusted grader.")
    parser.add_argument("--module", required=True, help="the student module to import, e.g. warmup")
    parser.add_argument("--workdir", default="/work", help="the directory holding the student's files")
    parser.add_argument("--watch-triton", action="store_true", help="count Triton kernel launches per call")
    parser.add_argument(
        "--forbid", action="append", default=[], metavar="NAME", help="record calls of this function"
    )
    options = parser.parse_args(argv)
    workdir = os.path.abspath(options.workdir)

    channel = _take_over_stdio()
    monitor = CallMonitor()
    if options.watch_triton:
        monitor.watch_triton()
    monitor.forbid(options.forbid)
    channel.send({"op": "hello", "problems": monitor.problems})
    try:
        return serve(channel, options.module, workdir, monitor)
    except ProtocolError as exc:
        sys.stderr.write(f"runner: protocol error from the grader: {exc}\n")
        return 2
    except EOFError:
        return 0


def _flush_and_exit(code: int) -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(BaseException):
            stream.flush()
    # Skip interpreter shutdown: the student's atexit hooks and non-daemon threads must not keep us alive.
    os._exit(code)


def _run() -> None:
    try:
        code = main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 2
    except BaseException:
        traceback.print_exc()
        code = 1
    _flush_and_exit(code)


if __name__ == "__main__":
    _run()
