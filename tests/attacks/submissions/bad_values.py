"""Returns nearly right tensors, one flaw per call: float64 instead of the input's dtype, half precision
instead of float32 (or bfloat16 for float16), an extra dimension, one NaN, float32 values rounded through
float16 (lower precision for float32 tests), the right values in the wrong order. All must fail; only
inputs_not_mutated, which checks no value, passes."""

import torch
from _prelude import honest_rms_norm, honest_softmax, report


def with_nan(out):
    out = out.clone()
    out.view(-1)[0] = float("nan")
    return out


FLAWS = [
    ("float64", lambda x, out: out.double()),
    ("half", lambda x, out: out.bfloat16() if x.dtype == torch.float16 else out.half()),
    ("extra_dim", lambda x, out: out.unsqueeze(0)),
    ("nan", lambda x, out: with_nan(out)),
    ("rounded", lambda x, out: out.half().float() if x.dtype == torch.float32 else out.float()),
    ("shuffled", lambda x, out: out.flip(-1).roll(1, -1)),
]
calls = []


def flaw(x, out):
    name, make = FLAWS[len(calls) % len(FLAWS)]
    calls.append(name)
    report("bad_values", flaws=calls)
    return make(x, out)


def softmax(x, dim=-1):
    return flaw(x, honest_softmax(x, dim))


def rms_norm(x, weight, eps=1e-6):
    return flaw(x, honest_rms_norm(x, weight, eps))
