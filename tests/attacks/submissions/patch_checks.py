"""Monkeypatches every comparison the grader might use so that anything equals anything, then returns zeros.

The patches live in the sandbox's interpreter; the grader compares in its own process with its own torch.
"""

import torch
import torch.testing
from _prelude import report


def _true(*args, **kwargs):
    return True


def _ones(a, b, *args, **kwargs):
    return torch.ones(torch.broadcast_shapes(a.shape, b.shape), dtype=torch.bool)


torch.allclose = _true
torch.equal = _true
torch.isclose = _ones
torch.Tensor.allclose = _true
torch.Tensor.equal = _true
torch.Tensor.__eq__ = lambda self, other: torch.ones_like(self, dtype=torch.bool)
torch.Tensor.__ne__ = lambda self, other: torch.zeros_like(self, dtype=torch.bool)
torch.testing.assert_close = lambda *args, **kwargs: None
report("patch_checks", patched=torch.allclose(torch.zeros(1), torch.ones(1)))


def softmax(x, dim=-1):
    return torch.zeros_like(x)


def rms_norm(x, weight, eps=1e-6):
    return torch.zeros_like(x)
