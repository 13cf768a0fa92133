"""Public tests for the warm-up. Run them with `pytest test_public.py` next to your warmup.py.

They compare your functions with PyTorch's built-ins (torch >= 2.4 for rms_norm) on the same kinds of inputs
as the visible tests of the autograder. The autograder also runs hidden tests (numerical stability, half
precision, eps handling, batched inputs, inputs left unmodified), so passing here is necessary, not sufficient.
"""

import pytest
import torch
import torch.nn.functional as F
from warmup import rms_norm, softmax


@pytest.mark.parametrize("shape", [(1, 8), (4, 16), (7, 33), (32, 128)])
def test_softmax_last_dim(shape):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)) * 3
    torch.testing.assert_close(softmax(x, dim=-1), torch.softmax(x, dim=-1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dim", [0, 1, -2])
def test_softmax_other_dim(dim):
    x = torch.randn(3, 5, 7, generator=torch.Generator().manual_seed(1)) * 2
    torch.testing.assert_close(softmax(x, dim=dim), torch.softmax(x, dim=dim), rtol=1e-5, atol=1e-6)


def test_softmax_rows_sum_to_one():
    x = torch.randn(4, 10, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(softmax(x, dim=-1).sum(dim=-1), torch.ones(4))


@pytest.mark.parametrize(("rows", "features"), [(1, 8), (4, 64), (9, 100)])
def test_rms_norm(rows, features):
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(rows, features, generator=generator)
    weight = torch.randn(features, generator=generator)
    expected = F.rms_norm(x, (features,), weight=weight, eps=1e-6)
    torch.testing.assert_close(rms_norm(x, weight, eps=1e-6), expected, rtol=1e-5, atol=1e-5)
