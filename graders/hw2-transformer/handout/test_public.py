"""Public tests for HW2. Run them with `pytest test_public.py` next to your llama.py (and tiny_llama.pt).

Parts that PyTorch has built in (softmax, RMSNorm, SiLU, attention, cross-entropy) are compared with the
built-ins; RoPE with its complex-number definition and AdamW with torch.optim.AdamW's documented update,
written out; the parts without a built-in (grouped-query attention, the block, the model and its gradients)
with golden values of a tiny model computed by the course's reference implementation (tiny_llama.pt). The
tolerances are the autograder's. The autograder also runs hidden tests (other shapes, numerical edge cases,
gradients of every component), so passing here is necessary, not sufficient. Needs torch >= 2.4.
"""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from llama import (
    adamw_step,
    apply_rotary_emb,
    cross_entropy,
    lr_schedule,
    multihead_attention,
    precompute_freqs_cis,
    rms_norm,
    scaled_dot_product_attention,
    softmax,
    swiglu,
    transformer,
    transformer_block,
    transformer_forward_backward,
)

FIXTURE = Path(__file__).resolve().parent / "tiny_llama.pt"
COMPONENT = {"rtol": 1e-4, "atol": 1e-5}
LAYER = {"rtol": 1e-4, "atol": 1e-4}


def randn(*shape: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * scale


def assert_grad_close(actual: torch.Tensor | None, expected: torch.Tensor) -> None:
    """The autograder's gradient tolerance: 1e-3 relative plus 1e-4 of the largest expected entry."""
    assert actual is not None, "no gradient reached this input"
    atol = 1e-4 * float(expected.abs().max())
    torch.testing.assert_close(actual, expected, rtol=1e-3, atol=atol)


def grads_of(function, inputs: list[torch.Tensor], grad_output: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The gradients of sum(function(*inputs) * grad_output) with respect to each input."""
    leaves = [tensor.clone().requires_grad_(True) for tensor in inputs]
    return torch.autograd.grad((function(*leaves) * grad_output).sum(), leaves)


@pytest.fixture(scope="module")
def tiny() -> dict:
    return torch.load(FIXTURE, weights_only=True)


def layer_weights(state_dict: dict[str, torch.Tensor], layer: int) -> dict[str, torch.Tensor]:
    prefix = f"layers.{layer}."
    return {name.removeprefix(prefix): value for name, value in state_dict.items() if name.startswith(prefix)}


# -- softmax, RMSNorm, SwiGLU --------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 8), (4, 16), (7, 33), (3, 5, 64)])
def test_softmax(shape):
    x = randn(*shape, seed=0, scale=3.0)
    torch.testing.assert_close(softmax(x, dim=-1), torch.softmax(x, dim=-1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("rows", "features"), [(1, 8), (4, 64), (9, 100)])
def test_rms_norm(rows, features):
    x, weight = randn(rows, features, seed=1), 1 + randn(features, seed=2, scale=0.2)
    expected = F.rms_norm(x, (features,), weight=weight, eps=1e-5)
    torch.testing.assert_close(rms_norm(x, weight, eps=1e-5), expected, rtol=1e-5, atol=1e-5)


def test_rms_norm_grad():
    x, weight, grad_output = randn(5, 32, seed=3), 1 + randn(32, seed=4, scale=0.2), randn(5, 32, seed=5)
    got = grads_of(lambda x_, w_: rms_norm(x_, w_, eps=1e-5), [x, weight], grad_output)
    expected = grads_of(lambda x_, w_: F.rms_norm(x_, (32,), weight=w_, eps=1e-5), [x, weight], grad_output)
    for actual, want in zip(got, expected, strict=True):
        assert_grad_close(actual, want)


def swiglu_definition(x, w1, w2, w3):
    return (F.silu(x @ w1.T) * (x @ w3.T)) @ w2.T


@pytest.mark.parametrize(("shape", "hidden"), [((4, 16), 32), ((2, 7, 24), 64)])
def test_swiglu(shape, hidden):
    dim = shape[-1]
    x = randn(*shape, seed=6)
    w1, w2, w3 = randn(hidden, dim, seed=7), randn(dim, hidden, seed=8), randn(hidden, dim, seed=9)
    torch.testing.assert_close(swiglu(x, w1, w2, w3), swiglu_definition(x, w1, w2, w3), **COMPONENT)
    grad_output = randn(*shape, seed=10)
    got = grads_of(swiglu, [x, w1, w2, w3], grad_output)
    for actual, want in zip(got, grads_of(swiglu_definition, [x, w1, w2, w3], grad_output), strict=True):
        assert_grad_close(actual, want)


# -- rotary embeddings ---------------------------------------------------------------------------------------


def rope_definition(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Meta's LLaMA: neighbouring features (2i, 2i+1) are one complex number, rotated by m * theta**(-2i/D)."""
    head_dim = x.shape[-1]
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)  # (D/2,)
    rotation = torch.polar(torch.ones(1, dtype=torch.float64), positions[:, None] * inv_freq)  # (T, D/2)
    pairs = torch.view_as_complex(x.double().reshape(*x.shape[:-1], head_dim // 2, 2))  # (B, T, N, D/2)
    return torch.view_as_real(pairs * rotation[:, None, :]).reshape(x.shape).float()


@pytest.mark.parametrize(
    ("head_dim", "end", "theta"), [(16, 8, 10000.0), (64, 128, 10000.0), (8, 1, 10000.0)]
)
def test_precompute_freqs_cis(head_dim, end, theta):
    table = precompute_freqs_cis(head_dim, end, theta)
    assert table.shape == (end, head_dim // 2, 2) and table.dtype == torch.float32
    angles = torch.arange(end, dtype=torch.float64)[:, None] * theta ** (
        -torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim
    )
    expected = torch.stack((angles.cos(), angles.sin()), dim=-1).float()
    torch.testing.assert_close(table, expected, rtol=0, atol=1e-5 + 5e-7 * end)


def test_apply_rotary_emb():
    xq, xk = randn(2, 8, 4, 16, seed=11), randn(2, 8, 2, 16, seed=12)
    out_q, out_k = apply_rotary_emb(xq, xk, precompute_freqs_cis(16, 8))
    positions = torch.arange(8, dtype=torch.float64)
    torch.testing.assert_close(out_q, rope_definition(xq, positions, 10000.0), **COMPONENT)
    torch.testing.assert_close(out_k, rope_definition(xk, positions, 10000.0), **COMPONENT)


# -- attention -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize(("batch", "heads", "length", "head_dim"), [(2, 4, 8, 16), (1, 2, 17, 32)])
def test_scaled_dot_product_attention(batch, heads, length, head_dim, causal):
    q, k, v = (randn(batch, heads, length, head_dim, seed=13 + i) for i in range(3))
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v, causal=causal), expected, **COMPONENT)


def test_scaled_dot_product_attention_grad():
    inputs = [randn(2, 2, 7, 8, seed=20 + i) for i in range(3)]
    grad_output = randn(2, 2, 7, 8, seed=23)
    got = grads_of(lambda q, k, v: scaled_dot_product_attention(q, k, v, causal=True), inputs, grad_output)
    expected = grads_of(
        lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True), inputs, grad_output
    )
    for actual, want in zip(got, expected, strict=True):
        assert_grad_close(actual, want)


def test_multihead_attention_of_the_tiny_model(tiny):
    args, weights = tiny["args"], layer_weights(tiny["state_dict"], 0)
    x = tiny["layer0_attention_input"]
    attention_weights = {name: weights[f"attention.{name}.weight"] for name in ("wq", "wk", "wv", "wo")}
    freqs_cis = precompute_freqs_cis(args["dim"] // args["n_heads"], x.shape[1], args["rope_theta"])
    out = multihead_attention(x, attention_weights, args["n_heads"], args["n_kv_heads"], freqs_cis)
    torch.testing.assert_close(out, tiny["layer0_attention_output"], **LAYER)


# -- the block and the model ---------------------------------------------------------------------------------


def test_transformer_block_of_the_tiny_model(tiny):
    args, x = tiny["args"], tiny["layer0_input"]
    freqs_cis = precompute_freqs_cis(args["dim"] // args["n_heads"], x.shape[1], args["rope_theta"])
    out = transformer_block(x, layer_weights(tiny["state_dict"], 0), freqs_cis, args)
    torch.testing.assert_close(out, tiny["layer0_block_output"], **LAYER)


def test_transformer_logits_of_the_tiny_model(tiny):
    logits = transformer(tiny["tokens"], tiny["state_dict"], tiny["args"])
    torch.testing.assert_close(logits, tiny["logits"], **LAYER)


def test_transformer_forward_backward_of_the_tiny_model(tiny):
    loss, grads = transformer_forward_backward(
        tiny["tokens"], tiny["targets"], tiny["state_dict"], tiny["args"]
    )
    torch.testing.assert_close(loss, tiny["loss"], rtol=1e-5, atol=1e-5)
    assert set(grads) == set(tiny["state_dict"])
    for name, expected in tiny["grads"].items():
        assert_grad_close(grads[name], expected)


def test_causality(tiny):
    # Changing the last token must not change the logits of any earlier position.
    tokens = tiny["tokens"].clone()
    tokens[:, -1] = (tokens[:, -1] + 1) % tiny["args"]["vocab_size"]
    before = transformer(tiny["tokens"], tiny["state_dict"], tiny["args"])
    after = transformer(tokens, tiny["state_dict"], tiny["args"])
    torch.testing.assert_close(after[:, :-1], before[:, :-1])


# -- training ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("rows", "vocab_size"), [(1, 5), (16, 50), (64, 256)])
def test_cross_entropy(rows, vocab_size):
    logits = randn(rows, vocab_size, seed=30, scale=2.0)
    targets = torch.randint(0, vocab_size, (rows,), generator=torch.Generator().manual_seed(31))
    torch.testing.assert_close(
        cross_entropy(logits, targets), F.cross_entropy(logits, targets), rtol=1e-5, atol=1e-5
    )


def adamw_definition(param, grad, exp_avg, exp_avg_sq, step, lr, betas, eps, weight_decay):
    """torch.optim.AdamW's update, written out in float64 (its documentation's algorithm)."""
    beta1, beta2 = betas
    param = param.double() * (1 - lr * weight_decay)
    exp_avg = beta1 * exp_avg.double() + (1 - beta1) * grad.double()
    exp_avg_sq = beta2 * exp_avg_sq.double() + (1 - beta2) * grad.double() ** 2
    update = (exp_avg / (1 - beta1**step)) / ((exp_avg_sq / (1 - beta2**step)).sqrt() + eps)
    return (param - lr * update).float(), exp_avg.float(), exp_avg_sq.float()


def test_adamw_step_over_three_steps():
    shapes = [(8, 4), (16,)]
    params = [randn(*shape, seed=40 + i) for i, shape in enumerate(shapes)]
    exp_avgs = [torch.zeros(shape) for shape in shapes]
    exp_avg_sqs = [torch.zeros(shape) for shape in shapes]
    options = {"lr": 1e-2, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.1}
    for step in (1, 2, 3):
        grads = [randn(*shape, seed=50 + 10 * step + i, scale=0.1) for i, shape in enumerate(shapes)]
        expected = [
            adamw_definition(*state, step=step, **options)
            for state in zip(params, grads, exp_avgs, exp_avg_sqs, strict=True)
        ]
        params, exp_avgs, exp_avg_sqs = adamw_step(params, grads, exp_avgs, exp_avg_sqs, step, **options)
        for got, want in zip(zip(params, exp_avgs, exp_avg_sqs, strict=True), expected, strict=True):
            for actual, reference in zip(got, want, strict=True):
                torch.testing.assert_close(actual, reference, rtol=1e-5, atol=1e-6)


def test_lr_schedule_warmup_then_cosine():
    max_lr, min_lr, warmup, total = 1e-3, 1e-4, 10, 110
    assert lr_schedule(0, max_lr, min_lr, warmup, total) == pytest.approx(1e-4)
    assert lr_schedule(4, max_lr, min_lr, warmup, total) == pytest.approx(5e-4)
    assert lr_schedule(9, max_lr, min_lr, warmup, total) == pytest.approx(max_lr)
    assert lr_schedule(10, max_lr, min_lr, warmup, total) == pytest.approx(max_lr)
    assert lr_schedule(60, max_lr, min_lr, warmup, total) == pytest.approx((max_lr + min_lr) / 2)
    assert isinstance(lr_schedule(37, max_lr, min_lr, warmup, total), float)
