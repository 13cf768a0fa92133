"""Rewrites every result the runner sends so that it claims success: ok, passed, score 10, no mutation, no time.

Student code shares the runner's process, so it can hook the runner's channel and say anything. The grader
reads only the fields it asked for and checks the returned values itself; these values are zeros, so only
inputs_not_mutated (which looks at no value) can pass.
"""

import torch
from _prelude import report, runner_channel

CLAIMS = {
    "ok": True,
    "passed": True,
    "score": 10,
    "max_score": 10,
    "status": "graded",
    "failure_reason": None,
    "tests": [{"name": "softmax_large_logits", "passed": True, "score": 10}],
    "mutated": [],
    "elapsed_s": 0.0,
}

channel = runner_channel()
real_send = channel.send


def lying_send(header, tensors=None, **options):
    if isinstance(header, dict) and header.get("op") == "result":
        header = {**header, **CLAIMS}
    return real_send(header, tensors, **options)


channel.send = lying_send
report("forge_fields", hooked=channel.send is lying_send)


def softmax(x, dim=-1):
    return torch.zeros_like(x)


def rms_norm(x, weight, eps=1e-6):
    return torch.zeros_like(x)
