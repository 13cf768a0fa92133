"""Returns correct values in forms the grader must refuse, one form per call: a tensor subclass, an
nn.Parameter, a Python list, a numpy array, a meta tensor, a sparse tensor, a lazy object, and a tensor over
the message size limit. Every test meets one of them first, so every test fails, inputs_not_mutated too."""

import torch
from _prelude import honest_rms_norm, honest_softmax, report


class Sneaky(torch.Tensor):
    pass


class Lazy:
    """Computes on demand, like a lazy tensor library would."""

    def __init__(self, compute):
        self.compute = compute

    def __array__(self, dtype=None, copy=None):
        return self.compute().numpy()

    def __getattr__(self, name):
        return getattr(self.compute(), name)


FORMS = [
    ("subclass", lambda out: torch.Tensor._make_subclass(Sneaky, out)),
    ("parameter", lambda out: torch.nn.Parameter(out, requires_grad=False)),
    ("list", lambda out: out.tolist()),
    ("numpy", lambda out: out.numpy()),
    ("meta", lambda out: out.to("meta")),
    ("sparse", lambda out: out.to_sparse()),
    ("lazy", lambda out: Lazy(lambda: out)),
    ("huge", lambda out: torch.zeros(1, dtype=torch.uint8).expand(300 * 2**20)),
]
calls = []


def disguise(out):
    name, make = FORMS[len(calls) % len(FORMS)]
    calls.append(name)
    report("bad_unsendable", forms=calls)
    return make(out)


def softmax(x, dim=-1):
    return disguise(honest_softmax(x, dim))


def rms_norm(x, weight, eps=1e-6):
    return disguise(honest_rms_norm(x, weight, eps))
