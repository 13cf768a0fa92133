"""Public tests for HW3. Run them with `pytest test_public.py` next to your flash_attention.py.

They compare your functions with plain PyTorch attention computed in float64, on the kinds of inputs the
visible autograder tests use: float32, sequence lengths that are multiples of 64, as many key/value heads as
query heads. Without a GPU the kernels run in Triton's interpreter (see conftest.py), slowly, so the shapes are
small. The hidden tests add ragged lengths, T != S, grouped-query heads, a custom sm_scale, autograd, and on a
GPU long sequences and bfloat16: passing here is necessary, not sufficient.
"""

import math

import pytest
import torch
from flash_attention import flash_attention_backward, flash_attention_forward

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOLERANCE = {"rtol": 1e-4, "atol": 1e-4}  # the autograder's float32 tolerance
# (B, H, T, S, D)
NONCAUSAL_SHAPES = [(1, 2, 64, 64, 32), (2, 1, 64, 128, 16)]
CAUSAL_SHAPES = [(1, 2, 64, 64, 16), (1, 1, 128, 128, 32)]


def make_inputs(shape, seed):
    batch, heads, seq_q, seq_k, head_dim = shape
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, seq_q, head_dim, generator=generator)
    k = torch.randn(batch, heads, seq_k, head_dim, generator=generator)
    v = torch.randn(batch, heads, seq_k, head_dim, generator=generator)
    return q.to(DEVICE), k.to(DEVICE), v.to(DEVICE)


def naive_attention(q, k, v, causal):
    """softmax(q k^T / sqrt(D) [masked]) v and the log-sum-exp of each row, in float64.

    The causal mask is top-left: query i sees keys j <= i, as F.scaled_dot_product_attention(is_causal=True).
    """
    scores = q.double() @ k.double().transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, H, T, S)
    if causal:
        visible = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~visible, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v.double(), torch.logsumexp(scores, dim=-1)


def naive_gradients(q, k, v, do, causal):
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    out, _ = naive_attention(*leaves, causal)
    out.backward(do.double())
    return [leaf.grad for leaf in leaves]


@pytest.mark.parametrize("causal", [False, True], ids=["noncausal", "causal"])
def test_forward_output(causal):
    for index, shape in enumerate(CAUSAL_SHAPES if causal else NONCAUSAL_SHAPES):
        q, k, v = make_inputs(shape, seed=index)
        out, _ = flash_attention_forward(q, k, v, causal=causal)
        expected, _ = naive_attention(q, k, v, causal)
        assert out.dtype == q.dtype and out.shape == q.shape
        torch.testing.assert_close(out, expected.float(), **TOLERANCE)


@pytest.mark.parametrize("causal", [False, True], ids=["noncausal", "causal"])
def test_forward_lse(causal):
    q, k, v = make_inputs((1, 2, 64, 64, 32), seed=10)
    _, lse = flash_attention_forward(q, k, v, causal=causal)
    _, expected = naive_attention(q, k, v, causal)
    assert lse.dtype == torch.float32 and lse.shape == q.shape[:3]
    torch.testing.assert_close(lse, expected.float(), **TOLERANCE)


@pytest.mark.parametrize("causal", [False, True], ids=["noncausal", "causal"])
def test_backward(causal):
    for index, shape in enumerate(CAUSAL_SHAPES if causal else NONCAUSAL_SHAPES):
        q, k, v = make_inputs(shape, seed=20 + index)
        do = torch.randn(q.shape, generator=torch.Generator().manual_seed(30 + index)).to(DEVICE)
        out, lse = naive_attention(q, k, v, causal)
        grads = flash_attention_backward(q, k, v, out.float(), lse.float(), do, causal=causal)
        for name, actual, expected in zip(
            ("dq", "dk", "dv"), grads, naive_gradients(q, k, v, do, causal), strict=True
        ):
            assert actual.shape == expected.shape, name
            torch.testing.assert_close(
                actual, expected.float(), **TOLERANCE, msg=lambda m, n=name: f"{n}: {m}"
            )
