"""The runner stub: the only grader code that runs inside the sandbox, next to the student's files.

It is copied alone with protocol.py into the sandbox's /runner and started as
``python -I -B /runner/runner.py --module NAME [--workdir /work]``. It imports the student's module, announces
the module's public callables, then executes the calls the trusted grader sends over stdin/stdout until told to
shut down. It knows nothing about tests, expected values or scores: it is a remote procedure call server.

Everything the student's code prints goes to stderr (the sandbox keeps a capped log of it); the protocol runs
over private duplicates of the original stdin and stdout.
"""

import argparse
import contextlib
import importlib
import os
import sys
import time
import traceback
from typing import Any

# `python -I` leaves the script's directory off sys.path, so put it there for the sibling protocol module.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch
from protocol import Channel, ProtocolError, pack_value, unpack_value

MAX_ERROR_CHARS = 2_000
MAX_TRACEBACK_CHARS = 8_000


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


def _import_student(channel: Channel, module_name: str, workdir: str) -> Any:
    sys.path.insert(0, workdir)
    try:
        return importlib.import_module(module_name)
    except BaseException as exc:
        channel.send(
            {
                "op": "import_error",
                "error": describe_exception(exc),
                "traceback": student_traceback(exc, workdir),
            }
        )
        return None


def _tensor_inputs(value: Any, where: str, found: list[tuple[str, torch.Tensor]]) -> None:
    if isinstance(value, torch.Tensor):
        found.append((where, value))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _tensor_inputs(item, f"{where}[{index}]", found)
    elif isinstance(value, dict):
        for key, item in value.items():
            _tensor_inputs(item, f"{where}[{key!r}]", found)


def _unchanged(before: torch.Tensor, after: torch.Tensor) -> bool:
    """Bit-for-bit equality, so NaNs compare equal to themselves and -0.0 differs from 0.0."""
    try:
        if before.shape != after.shape or before.dtype != after.dtype or before.device != after.device:
            return False
        after_bytes = after.detach().contiguous().reshape(-1).view(torch.uint8)
        return torch.equal(before.reshape(-1).view(torch.uint8), after_bytes)
    except Exception:
        return False


def _synchronize() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _failure(call_id: int, kind: str, error: str, trace: str | None = None) -> dict:
    """A failed call; ``kind`` is "exception" (the function raised), "missing" or "bad_result"."""
    return {"op": "result", "id": call_id, "ok": False, "kind": kind, "error": error, "traceback": trace}


def handle_call(module: Any, header: dict, tensors: dict, workdir: str) -> tuple[dict, dict]:
    """Run one ``call`` request; returns the ``result`` header and its tensors."""
    call_id = header.get("id")
    function_name = header.get("fn")
    if type(call_id) is not int or not isinstance(function_name, str):
        raise ProtocolError("a call needs an integer id and a function name")
    args = unpack_value(header.get("args", []), tensors)
    kwargs = unpack_value(header.get("kwargs", {}), tensors)
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise ProtocolError("a call's args must be a list and its kwargs an object")

    function = getattr(module, function_name, None) if not function_name.startswith("_") else None
    if function is None or not callable(function):
        return _failure(call_id, "missing", f"your module has no function named {function_name!r}"), {}

    inputs: list[tuple[str, torch.Tensor]] = []
    _tensor_inputs(args, "args", inputs)
    _tensor_inputs(kwargs, "kwargs", inputs)
    # The argument objects are compared afterwards with these copies: in-place changes of values or shape show.
    snapshots = [(where, tensor, tensor.detach().clone().contiguous()) for where, tensor in inputs]

    try:
        _synchronize()
        started = time.perf_counter()
        value = function(*args, **kwargs)
        _synchronize()
        elapsed = time.perf_counter() - started
    except BaseException as exc:
        return _failure(call_id, "exception", describe_exception(exc), student_traceback(exc, workdir)), {}

    mutated = [where for where, tensor, before in snapshots if not _unchanged(before, tensor)]
    try:
        packed, out_tensors = pack_value(value, name=f"the result of {function_name}")
    except Exception as exc:
        return _failure(call_id, "bad_result", _safe_str(exc)), {}
    result = {
        "op": "result",
        "id": call_id,
        "ok": True,
        "value": packed,
        "mutated": mutated,
        "elapsed_s": elapsed,
    }
    return result, out_tensors


def serve(channel: Channel, module: Any, workdir: str) -> int:
    while True:
        try:
            header, tensors = channel.recv()
        except EOFError:
            return 0
        op = header.get("op")
        if op == "shutdown":
            return 0
        if op != "call":
            raise ProtocolError(f"unexpected request {_safe_str(op)[:40]!r}")
        result, out_tensors = handle_call(module, header, tensors, workdir)
        try:
            channel.send(result, out_tensors)
        except (TypeError, ValueError, RuntimeError, ProtocolError) as exc:
            # Raised before anything is written: the result could not be encoded or is over the size limit.
            message = f"the result of {header['fn']} cannot be sent back: {exc}"
            channel.send(_failure(result["id"], "bad_result", message))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run a student's module for the trusted grader.")
    parser.add_argument("--module", required=True, help="the student module to import, e.g. warmup")
    parser.add_argument("--workdir", default="/work", help="the directory holding the student's files")
    options = parser.parse_args(argv)
    workdir = os.path.abspath(options.workdir)

    channel = _take_over_stdio()
    os.chdir(workdir)
    module = _import_student(channel, options.module, workdir)
    if module is None:
        return 0
    channel.send({"op": "ready", "names": public_names(module)})
    try:
        return serve(channel, module, workdir)
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
