"""Put in front of every attack when it is submitted: the attack and this are one warmup.py.

``CONTEXT`` is filled in by the test (tests/attacks/conftest.py: ``Arena.context``): host paths, ports and pids
to aim at. ``report`` publishes findings in the student's own log, where a real attacker would read them.
"""

import gc
import json
import os
import sys

import torch

CONTEXT = json.loads(r"""__ATTACK_CONTEXT__""")


def report(attack: str, **findings: object) -> None:
    line = json.dumps({"attack": attack, **findings}, default=repr, sort_keys=True)
    write_all(2, f"\nATTACK-REPORT {line}\n".encode())


def honest_softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    values = x.float() if x.dtype != torch.float64 else x
    exps = (values - values.amax(dim=dim, keepdim=True)).exp()
    return (exps / exps.sum(dim=dim, keepdim=True)).to(x.dtype)


def honest_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    values = x.float() if x.dtype != torch.float64 else x
    inv_rms = torch.rsqrt(values.pow(2).mean(dim=-1, keepdim=True) + eps)
    return (values * inv_rms * weight.to(values.dtype)).to(x.dtype)


# -- the runner's internals: student code runs in the runner's process, so all of it is within reach ---------
def runner_channel():
    """The runner's protocol channel, found on the heap."""
    for obj in gc.get_objects():
        if type(obj).__name__ == "Channel" and callable(getattr(obj, "send", None)):
            return obj
    raise RuntimeError("the runner's channel is not on the heap")


def protocol_fd() -> int:
    """The file descriptor the runner writes its replies to (a private duplicate of the sandbox's stdout)."""
    channel = runner_channel()
    fd = getattr(channel, "_write_fd", None)
    return fd if isinstance(fd, int) else channel._writer.fileno()


def protocol_in_fd() -> int:
    """The file descriptor the runner reads requests from."""
    channel = runner_channel()
    fd = getattr(channel, "_read_fd", None)
    return fd if isinstance(fd, int) else channel._reader.fileno()


def protocol_module():
    """The runner's own protocol module (it imported it from /runner): its encoder makes well-formed frames."""
    return sys.modules["protocol"]


def current_call() -> dict:
    """The request the runner is serving right now, from its stack frames."""
    frame = sys._getframe(1)
    while frame is not None:
        header = frame.f_locals.get("header")
        if isinstance(header, dict) and header.get("op") == "call":
            return header
        frame = frame.f_back
    raise RuntimeError("not inside a call")


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
