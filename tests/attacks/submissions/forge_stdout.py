"""Forges protocol frames claiming full marks on every stdout it can find, and computes nothing.

The frames are well formed (made with the runner's own encoder) and name the right call ids, but stdout, fd 1,
/dev/stdout and print() all lead to the capped log: the runner moved the protocol to private descriptors
before the student's module was imported. Only inputs_not_mutated, which looks at no value, can pass.
"""

import contextlib
import os
import sys

import torch
from _prelude import current_call, protocol_module, report

CLAIMS = {"ok": True, "passed": True, "score": 10, "max_score": 10, "status": "graded", "mutated": []}


def forge(call_id):
    frame = protocol_module().encode_message({"op": "result", "id": call_id, "value": 1.0, **CLAIMS}, {})
    written = {}
    for name, write in (
        ("fd1", lambda: os.write(1, frame)),
        ("sys.stdout", lambda: sys.stdout.buffer.write(frame)),
        ("sys.__stdout__", lambda: sys.__stdout__.buffer.write(frame)),
        ("print", lambda: print(frame)),
        ("/dev/stdout", lambda: open("/dev/stdout", "wb").write(frame)),  # noqa: SIM115
        ("/proc/self/fd/1", lambda: open("/proc/self/fd/1", "wb").write(frame)),  # noqa: SIM115
        ("fd0", lambda: os.write(0, frame)),
    ):
        try:
            write()
            written[name] = "written"
        except Exception as exc:
            written[name] = type(exc).__name__
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    return written


report("forge_stdout", at_import=forge(1))


def softmax(x, dim=-1):
    report("forge_stdout", in_call=forge(current_call()["id"]))
    return torch.zeros_like(x)


def rms_norm(x, weight, eps=1e-6):
    forge(current_call()["id"])
    return torch.zeros_like(x)
