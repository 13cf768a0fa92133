"""Hidden tests of HW2, the transformer (trusted side: never copied into the sandbox).

Inputs come from the per-test generators, seeded by the secret run seed; expected values and expected gradients
from reference_impl (model.py, functional.py, train.py) through torch.autograd, computed here. Each component is
tested on its own (forward, and backward with ``ctx.call_grad``), then the whole model: when the student's
logits differ, the student's component functions are called on the reference model's own activations, layer by
layer, and the message names the first one whose output differs.

Weights are drawn at the scale of a trained model's activations (matrices ``N(0, 1/fan_in)``, norm weights
near 1), not at the 0.02 initialisation, so that a wrong mask, head grouping or rotation changes the output by
far more than float32 rounding.
"""

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict
from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F
from torch.func import functional_call

from graders.harness import Case, Context, GraderError, Suite, TestFailure
from reference_impl import functional as ref
from reference_impl import train
from reference_impl.model import (
    Attention,
    FeedForward,
    ModelArgs,
    Transformer,
    TransformerBlock,
    apply_rotary_emb,
    precompute_freqs_cis,
)

suite = Suite()

# -- tolerances (float32 throughout) -------------------------------------------------------------------------
# An independent float32 implementation agrees with the reference to ~3e-6 on logits of size ~5 and ~1.4e-6
# (relative to the largest entry) on gradients; these leave a margin of 30x or more, far below what any of the
# planted bugs changes.
SOFTMAX_TOL = {"rtol": 1e-5, "atol": 1e-6}
NORM_TOL = {"rtol": 1e-5, "atol": 1e-5}
COMPONENT_TOL = {"rtol": 1e-4, "atol": 1e-5}  # swiglu, rotary embedding, attention scores
LAYER_TOL = {"rtol": 1e-4, "atol": 1e-4}  # attention, block, logits: several matmuls deep
LOSS_TOL = {"rtol": 1e-5, "atol": 1e-5}
OPTIMIZER_TOL = {"rtol": 1e-5, "atol": 1e-6}
LR_REL_TOL = 1e-6
GRAD_RTOL = 1e-3
GRAD_ATOL_OF_MAX = 1e-4  # gradients: atol is this fraction of the largest expected entry of the tensor

# The model arguments students get, a plain dict: ModelArgs' fields without the optional extensions.
ARG_NAMES = (
    "dim",
    "n_layers",
    "n_heads",
    "n_kv_heads",
    "vocab_size",
    "hidden_dim",
    "norm_eps",
    "rope_theta",
    "max_seq_len",
)
DEBUG = ModelArgs.from_name("debug")  # 2 layers, width 64, 4 query and 2 key/value heads, vocabulary 256
# Other shapes for the hidden model tests: multi-head with another eps and base, grouped-query with groups of
# four, multi-query; each with a sequence length of its own (one token included).
OTHER_CONFIGS: tuple[tuple[str, ModelArgs, tuple[int, int]], ...] = (
    (
        "multi-head attention, rope_theta 500000, norm_eps 1e-6",
        ModelArgs(
            dim=48,
            n_layers=1,
            n_heads=3,
            n_kv_heads=3,
            vocab_size=50,
            hidden_dim=80,
            norm_eps=1e-6,
            rope_theta=500000.0,
            max_seq_len=64,
        ),
        (3, 20),
    ),
    (
        "8 query heads sharing 2 key/value heads, 3 layers, one token",
        ModelArgs(dim=64, n_layers=3, n_heads=8, n_kv_heads=2, vocab_size=40, hidden_dim=96, max_seq_len=64),
        (2, 1),
    ),
    (
        "multi-query attention (1 key/value head), rope_theta 1e6",
        ModelArgs(
            dim=32,
            n_layers=2,
            n_heads=4,
            n_kv_heads=1,
            vocab_size=64,
            hidden_dim=64,
            rope_theta=1e6,
            max_seq_len=64,
        ),
        (1, 50),
    ),
)
ATTENTION_NAMES = ("wq", "wk", "wv", "wo")
BLOCK_WEIGHT_NAMES = (
    "attention_norm.weight",
    "attention.wq.weight",
    "attention.wk.weight",
    "attention.wv.weight",
    "attention.wo.weight",
    "ffn_norm.weight",
    "feed_forward.w1.weight",
    "feed_forward.w2.weight",
    "feed_forward.w3.weight",
)


# -- inputs --------------------------------------------------------------------------------------------------


def args_dict(args: ModelArgs) -> dict[str, Any]:
    return {name: getattr(args, name) for name in ARG_NAMES}


def _shape_args(dim: int, n_heads: int, n_kv_heads: int, hidden_dim: int = 8) -> ModelArgs:
    """ModelArgs for building one attention layer or block (the fields it does not read are placeholders)."""
    return ModelArgs(
        dim=dim, n_layers=1, n_heads=n_heads, n_kv_heads=n_kv_heads, vocab_size=8, hidden_dim=hidden_dim
    )


def _matrix(ctx: Context, rows: int, columns: int) -> torch.Tensor:
    # N(0, 1/fan_in) keeps activations of order 1 through every projection.
    return ctx.randn(rows, columns, scale=1 / math.sqrt(columns))


def _norm_weight(ctx: Context, size: int) -> torch.Tensor:
    return 1.0 + ctx.randn(size, scale=0.2)


def _tokens(ctx: Context, batch: int, length: int, vocab_size: int) -> torch.Tensor:
    # A generator of its own, seeded from the test's stream, so token ids reveal nothing about later inputs.
    generator = torch.Generator().manual_seed(ctx.rng.getrandbits(63))
    return torch.randint(0, vocab_size, (batch, length), generator=generator)


def _random_state_dict(ctx: Context, args: ModelArgs) -> dict[str, torch.Tensor]:
    """Every weight of the reference model for ``args``, under its LLaMA name, drawn from ``ctx``."""
    shapes = {
        name: tuple(value.shape) for name, value in reference_module("model", args).state_dict().items()
    }
    state_dict = {}
    for name, shape in shapes.items():
        if name == "tok_embeddings.weight":
            state_dict[name] = ctx.randn(*shape)
        elif len(shape) == 2:
            state_dict[name] = _matrix(ctx, *shape)
        else:
            state_dict[name] = _norm_weight(ctx, shape[0])
    return state_dict


def _attention_weights(ctx: Context, dim: int, n_heads: int, n_kv_heads: int) -> dict[str, torch.Tensor]:
    head_dim = dim // n_heads
    return {
        "wq": _matrix(ctx, n_heads * head_dim, dim),
        "wk": _matrix(ctx, n_kv_heads * head_dim, dim),
        "wv": _matrix(ctx, n_kv_heads * head_dim, dim),
        "wo": _matrix(ctx, dim, n_heads * head_dim),
    }


def _layer_weights(state_dict: dict[str, torch.Tensor], layer: int) -> dict[str, torch.Tensor]:
    prefix = f"layers.{layer}."
    return {name.removeprefix(prefix): value for name, value in state_dict.items() if name.startswith(prefix)}


# -- the reference, called with explicit weights ---------------------------------------------------------------


def reference_module(kind: str, args: ModelArgs) -> torch.nn.Module:
    """The reference module of this kind and shape; torch.func.functional_call supplies the weights."""
    return _cached_module(kind, tuple(sorted(asdict(args).items())))


@lru_cache(maxsize=32)
def _cached_module(kind: str, fields: tuple[tuple[str, Any], ...]) -> torch.nn.Module:
    # Built once per shape and never changed: functional_call swaps the weights in for one call only.
    args = ModelArgs(**dict(fields))
    if kind == "attention":
        return Attention(args)
    if kind == "feed_forward":
        return FeedForward(args.dim, args.hidden_dim)
    if kind == "block":
        return TransformerBlock(args)
    if kind == "model":
        return Transformer(args)
    raise ValueError(f"no reference module of kind {kind!r}")


def reference_swiglu(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, w3: torch.Tensor) -> torch.Tensor:
    args = _shape_args(w1.shape[1], 1, 1, hidden_dim=w1.shape[0])
    weights = {"w1.weight": w1, "w2.weight": w2, "w3.weight": w3}
    return functional_call(reference_module("feed_forward", args), weights, (x,))


def reference_attention(
    x: torch.Tensor, weights: dict[str, torch.Tensor], n_heads: int, n_kv_heads: int, freqs_cis: torch.Tensor
) -> torch.Tensor:
    args = _shape_args(weights["wq"].shape[1], n_heads, n_kv_heads)
    parameters = {f"{name}.weight": weights[name] for name in ATTENTION_NAMES}
    return functional_call(reference_module("attention", args), parameters, (x, freqs_cis, None, None))


def reference_block(
    x: torch.Tensor, weights: dict[str, torch.Tensor], freqs_cis: torch.Tensor, args: dict[str, Any]
) -> torch.Tensor:
    model_args = ModelArgs(**args)
    return functional_call(reference_module("block", model_args), weights, (x, freqs_cis, None, None))


def reference_logits(
    tokens: torch.Tensor, state_dict: dict[str, torch.Tensor], args: dict[str, Any]
) -> torch.Tensor:
    return functional_call(reference_module("model", ModelArgs(**args)), state_dict, (tokens,))


def reference_forward_backward(
    tokens: torch.Tensor, targets: torch.Tensor, state_dict: dict[str, torch.Tensor], args: dict[str, Any]
) -> list:
    """``[loss, {name: gradient}]``: what ``transformer_forward_backward`` returns, through torch.autograd."""
    leaves = {name: value.detach().clone().requires_grad_(True) for name, value in state_dict.items()}
    loss = train.cross_entropy(reference_logits(tokens, leaves, args), targets)
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return [loss.detach(), dict(zip(leaves, grads, strict=True))]


def reference_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal)


def reference_adamw(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    exp_avgs: Sequence[torch.Tensor],
    exp_avg_sqs: Sequence[torch.Tensor],
    *,
    step: int,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """One step of reference_impl's AdamW from the given state; returns (params, exp_avgs, exp_avg_sqs)."""
    leaves = [torch.nn.Parameter(param.clone()) for param in params]
    optimizer = train.AdamW(leaves, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    for leaf, grad, exp_avg, exp_avg_sq in zip(leaves, grads, exp_avgs, exp_avg_sqs, strict=True):
        leaf.grad = grad.clone()
        optimizer.state[leaf] = {
            "step": step - 1,
            "exp_avg": exp_avg.clone(),
            "exp_avg_sq": exp_avg_sq.clone(),
        }
    optimizer.step()
    states = [optimizer.state[leaf] for leaf in leaves]
    return (
        [leaf.detach() for leaf in leaves],
        [state["exp_avg"] for state in states],
        [state["exp_avg_sq"] for state in states],
    )


def reference_grads(
    function: Callable[..., torch.Tensor], inputs: Sequence[torch.Tensor], grad_output: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """The gradients of ``<function(*inputs), grad_output>`` with respect to each input, through autograd."""
    leaves = [tensor.detach().clone().requires_grad_(True) for tensor in inputs]
    # sum(output * grad_output) has exactly these gradients, and its backward needs no grad_outputs argument
    # (whose first use imports torch's symbolic-shape machinery, a second of start-up).
    return torch.autograd.grad((function(*leaves) * grad_output).sum(), leaves)


# -- checks --------------------------------------------------------------------------------------------------


def shape_of(tensor: torch.Tensor) -> str:
    return "x".join(str(size) for size in tensor.shape) or "scalar"


def grad_tolerance(expected: torch.Tensor) -> dict[str, float]:
    return {"rtol": GRAD_RTOL, "atol": max(GRAD_ATOL_OF_MAX * float(expected.abs().max()), 1e-12)}


def check_grads(
    ctx: Context,
    grads: Sequence[Any],
    expected: Sequence[torch.Tensor],
    names: Sequence[str],
    what: str,
) -> None:
    for grad, want, name in zip(grads, expected, names, strict=True):
        if grad is None:
            ctx.fail(
                f"{what}: no gradient reached {name} (is it detached, or used under torch.no_grad(), or "
                "replaced by a copy that autograd cannot follow?)"
            )
        ctx.check_close(
            grad, want, what=f"the gradient of {what} with respect to {name}", **grad_tolerance(want)
        )


def check_pair(ctx: Context, value: Any, what: str) -> tuple[Any, Any]:
    """The two entries of a returned tuple (it arrives as a list)."""
    ctx.check(
        isinstance(value, list) and len(value) == 2,
        f"{what} must return a tuple of two values, got {type(value).__name__}",
    )
    return value[0], value[1]


def check_lr(ctx: Context, value: Any, expected: float, what: str) -> None:
    ctx.check(
        isinstance(value, int | float) and not isinstance(value, bool),
        f"{what} must return a float, got {type(value).__name__}",
    )
    try:
        number = float(value)
    except OverflowError:  # an int too large for a float (JSON carries any int)
        number = math.inf
    if not math.isclose(number, expected, rel_tol=LR_REL_TOL, abs_tol=1e-12):
        shown = f": expected {expected:.8g}, got {number:.8g}" if ctx.visible else ""
        ctx.fail(f"{what} is not the expected learning rate{shown}")


# -- softmax and RMSNorm -------------------------------------------------------------------------------------


def _check_softmax(ctx: Context, x: torch.Tensor, dim: int) -> None:
    out = ctx.call("softmax", x, dim=dim)
    what = f"softmax(x, dim={dim}) for x of shape {shape_of(x)}"
    ctx.check_close(out, ref.softmax(x, dim=dim), what=what, **SOFTMAX_TOL)


def _check_rms_norm(ctx: Context, x: torch.Tensor, weight: torch.Tensor, eps: float) -> None:
    out = ctx.call("rms_norm", x, weight, eps=eps)
    what = f"rms_norm(x, weight, eps={eps:g}) for x of shape {shape_of(x)}"
    ctx.check_close(out, ref.rms_norm(x, weight, eps=eps), what=what, **NORM_TOL)


@suite.test("softmax_basic")
def softmax_basic(ctx: Context) -> None:
    for shape in [(1, 8), (4, 16), (7, 33), (3, 5, 64)]:
        _check_softmax(ctx, ctx.randn(*shape, scale=3.0), -1)


@suite.test("softmax_stability")
def softmax_stability(ctx: Context) -> None:
    # Offsets keep every entry within a factor of two of its row maximum, so x - max is exact in float32.
    for offset in (1000.0, -1000.0):
        _check_softmax(ctx, ctx.randn(6, 50, scale=5.0) + offset, -1)
    _check_softmax(ctx, ctx.randn(4, 64, scale=200.0), -1)
    masked = ctx.randn(5, 40, scale=3.0)
    masked[:, 25:] = float("-inf")  # masked entries, as a causal mask leaves them
    _check_softmax(ctx, masked, -1)
    x = ctx.randn(3, 5, 7, scale=2.0)
    for dim in (0, 1):
        _check_softmax(ctx, x, dim)


@suite.test("rms_norm_basic")
def rms_norm_basic(ctx: Context) -> None:
    for rows, features in [(1, 8), (4, 64), (9, 100)]:
        _check_rms_norm(ctx, ctx.randn(rows, features), _norm_weight(ctx, features), 1e-5)


@suite.test("rms_norm_edge_cases")
def rms_norm_edge_cases(ctx: Context) -> None:
    # Tiny activations make eps matter: sqrt(mean(x**2) + eps) and sqrt(mean(x**2)) + eps differ ~10x here.
    x = ctx.randn(6, 48, scale=1e-3)
    x[0] = 0.0  # an all-zero row must stay zero, not become NaN
    weight = _norm_weight(ctx, 48)
    _check_rms_norm(ctx, x, weight, 1e-4)
    _check_rms_norm(ctx, x, weight, 1e-2)
    for shape in [(2, 5, 32), (2, 3, 4, 16)]:
        _check_rms_norm(ctx, ctx.randn(*shape, scale=2.0), _norm_weight(ctx, shape[-1]), 1e-6)


@suite.test("rms_norm_grad")
def rms_norm_grad(ctx: Context) -> None:
    for shape, eps in [((5, 32), 1e-5), ((2, 7, 24), 1e-6), ((4, 16), 1e-1)]:
        x = ctx.randn(*shape, scale=1.5)
        weight = _norm_weight(ctx, shape[-1])
        grad_output = ctx.randn(*shape)
        _, grads = ctx.call_grad("rms_norm", x, weight, eps=eps, grad_output=grad_output, wrt=(0, 1))
        expected = reference_grads(
            lambda x_, w_, eps=eps: ref.rms_norm(x_, w_, eps=eps), (x, weight), grad_output
        )
        check_grads(ctx, grads, expected, ("x", "weight"), f"rms_norm for x of shape {shape_of(x)}")


# -- SwiGLU --------------------------------------------------------------------------------------------------


def _swiglu_inputs(ctx: Context, shape: tuple[int, ...], hidden: int) -> tuple[torch.Tensor, ...]:
    dim = shape[-1]
    return ctx.randn(*shape), _matrix(ctx, hidden, dim), _matrix(ctx, dim, hidden), _matrix(ctx, hidden, dim)


@suite.test("swiglu_basic")
def swiglu_basic(ctx: Context) -> None:
    for shape, hidden in [((4, 16), 32), ((2, 7, 24), 64), ((1, 1, 8), 8)]:
        x, w1, w2, w3 = _swiglu_inputs(ctx, shape, hidden)
        out = ctx.call("swiglu", x, w1, w2, w3)
        what = f"swiglu for x of shape {shape_of(x)} and hidden width {hidden}"
        ctx.check_close(out, reference_swiglu(x, w1, w2, w3), what=what, **COMPONENT_TOL)


@suite.test("swiglu_grad")
def swiglu_grad(ctx: Context) -> None:
    for shape, hidden in [((6, 16), 40), ((2, 5, 32), 48)]:
        inputs = _swiglu_inputs(ctx, shape, hidden)
        grad_output = ctx.randn(*shape)
        _, grads = ctx.call_grad("swiglu", *inputs, grad_output=grad_output, wrt=(0, 1, 2, 3))
        expected = reference_grads(reference_swiglu, inputs, grad_output)
        what = f"swiglu for x of shape {shape_of(inputs[0])}"
        check_grads(ctx, grads, expected, ("x", "w1", "w2", "w3"), what)


# -- rotary embeddings ---------------------------------------------------------------------------------------


def _freqs_tolerance(end: int) -> dict[str, float]:
    # Angles m * theta**(-2i/D) are rounded to float32: at position m that is up to ~m * 1.2e-7, and
    # computing the inverse frequencies another way (exp/log, float64) adds as much again.
    return {"rtol": 0.0, "atol": 1e-5 + 5e-7 * end}


def _check_freqs(ctx: Context, head_dim: int, end: int, theta: float) -> None:
    out = ctx.call("precompute_freqs_cis", head_dim, end, theta)
    what = f"precompute_freqs_cis({head_dim}, {end}, theta={theta:g})"
    ctx.check_close(out, precompute_freqs_cis(head_dim, end, theta), what=what, **_freqs_tolerance(end))


def _check_rope(
    ctx: Context, batch: int, length: int, heads: tuple[int, int], head_dim: int, start: int, theta: float
) -> None:
    xq = ctx.randn(batch, length, heads[0], head_dim)
    xk = ctx.randn(batch, length, heads[1], head_dim)
    freqs_cis = precompute_freqs_cis(head_dim, start + length, theta)[start:]  # (T, D/2, 2)
    out_q, out_k = check_pair(ctx, ctx.call("apply_rotary_emb", xq, xk, freqs_cis), "apply_rotary_emb")
    want_q, want_k = apply_rotary_emb(xq, xk, freqs_cis)
    where = f"positions {start}..{start + length - 1}" if start else f"{length} positions"
    ctx.check_close(
        out_q, want_q, what=f"apply_rotary_emb's xq of shape {shape_of(xq)} at {where}", **COMPONENT_TOL
    )
    ctx.check_close(
        out_k, want_k, what=f"apply_rotary_emb's xk of shape {shape_of(xk)} at {where}", **COMPONENT_TOL
    )


@suite.test("rope_freqs")
def rope_freqs(ctx: Context) -> None:
    for head_dim, end in [(16, 8), (64, 128), (8, 1)]:
        _check_freqs(ctx, head_dim, end, 10000.0)


@suite.test("rope_apply")
def rope_apply(ctx: Context) -> None:
    _check_rope(ctx, 2, 8, (4, 2), 16, start=0, theta=10000.0)
    _check_rope(ctx, 1, 33, (2, 2), 32, start=0, theta=10000.0)


@suite.test("rope_edge_cases")
def rope_edge_cases(ctx: Context) -> None:
    _check_freqs(ctx, 128, 2048, 500000.0)  # Llama 3's base over many positions
    _check_freqs(ctx, 2, 5, 10000.0)  # a single feature pair
    _check_rope(ctx, 3, 1, (8, 1), 128, start=0, theta=500000.0)  # one token, multi-query, wide heads
    _check_rope(ctx, 2, 6, (4, 2), 16, start=37, theta=10000.0)  # the rotations of later positions


# -- scaled dot-product attention ----------------------------------------------------------------------------


def _check_sdpa(ctx: Context, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> None:
    out = ctx.call("scaled_dot_product_attention", q, k, v, causal=causal)
    what = (
        f"scaled_dot_product_attention(causal={causal}) for q of shape {shape_of(q)}, k {shape_of(k)}, "
        f"v {shape_of(v)}"
    )
    ctx.check_close(out, reference_sdpa(q, k, v, causal), what=what, **COMPONENT_TOL)


@suite.test("sdpa_basic")
def sdpa_basic(ctx: Context) -> None:
    for batch, heads, length, head_dim in [(2, 4, 8, 16), (1, 2, 17, 32)]:
        for causal in (True, False):
            q, k, v = (ctx.randn(batch, heads, length, head_dim) for _ in range(3))
            _check_sdpa(ctx, q, k, v, causal)


@suite.test("sdpa_edge_cases")
def sdpa_edge_cases(ctx: Context) -> None:
    # More keys than queries (non-causal), and values of another width than the keys.
    _check_sdpa(ctx, ctx.randn(2, 3, 5, 16), ctx.randn(2, 3, 12, 16), ctx.randn(2, 3, 12, 8), causal=False)
    # One query: causal attention over a single position.
    _check_sdpa(ctx, ctx.randn(3, 2, 1, 8), ctx.randn(3, 2, 1, 8), ctx.randn(3, 2, 1, 8), causal=True)
    # Scores in the hundreds: only a softmax that subtracts the maximum stays finite.
    q, k, v = ctx.randn(1, 2, 9, 16, scale=8.0), ctx.randn(1, 2, 9, 16, scale=8.0), ctx.randn(1, 2, 9, 16)
    _check_sdpa(ctx, q, k, v, causal=True)
    # Inputs without a head dimension: (B, T, D).
    _check_sdpa(ctx, ctx.randn(2, 10, 8), ctx.randn(2, 10, 8), ctx.randn(2, 10, 8), causal=True)


@suite.test("sdpa_grad")
def sdpa_grad(ctx: Context) -> None:
    for shape, causal in [((2, 2, 7, 8), True), ((1, 3, 5, 16), False)]:
        inputs = tuple(ctx.randn(*shape) for _ in range(3))
        grad_output = ctx.randn(*shape)
        _, grads = ctx.call_grad(
            "scaled_dot_product_attention", *inputs, causal=causal, grad_output=grad_output, wrt=(0, 1, 2)
        )
        expected = reference_grads(
            lambda q, k, v, causal=causal: reference_sdpa(q, k, v, causal), inputs, grad_output
        )
        what = f"scaled_dot_product_attention(causal={causal}) for q, k, v of shape {shape_of(inputs[0])}"
        check_grads(ctx, grads, expected, ("q", "k", "v"), what)


# -- grouped-query attention ---------------------------------------------------------------------------------


def _attention_case(
    ctx: Context, batch: int, length: int, dim: int, n_heads: int, n_kv_heads: int, theta: float = 10000.0
) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    x = ctx.randn(batch, length, dim)
    weights = _attention_weights(ctx, dim, n_heads, n_kv_heads)
    freqs_cis = precompute_freqs_cis(dim // n_heads, length, theta)
    return x, weights, freqs_cis


def _check_attention(
    ctx: Context, batch: int, length: int, dim: int, n_heads: int, n_kv_heads: int, theta: float = 10000.0
) -> None:
    x, weights, freqs_cis = _attention_case(ctx, batch, length, dim, n_heads, n_kv_heads, theta)
    out = ctx.call("multihead_attention", x, weights, n_heads, n_kv_heads, freqs_cis)
    what = f"multihead_attention with {n_heads} query and {n_kv_heads} key/value heads for x of shape {shape_of(x)}"
    ctx.check_close(
        out, reference_attention(x, weights, n_heads, n_kv_heads, freqs_cis), what=what, **LAYER_TOL
    )


@suite.test("attention_gqa")
def attention_gqa(ctx: Context) -> None:
    _check_attention(ctx, 2, 12, 64, n_heads=4, n_kv_heads=2)
    _check_attention(ctx, 1, 20, 32, n_heads=4, n_kv_heads=2)


@suite.test("attention_head_layouts")
def attention_head_layouts(ctx: Context) -> None:
    _check_attention(ctx, 2, 9, 48, n_heads=3, n_kv_heads=3)  # multi-head: one key/value head per query head
    _check_attention(ctx, 2, 10, 64, n_heads=8, n_kv_heads=1)  # multi-query: one shared key/value head
    _check_attention(ctx, 1, 11, 64, n_heads=8, n_kv_heads=2)  # groups of four query heads
    _check_attention(ctx, 3, 1, 32, n_heads=4, n_kv_heads=2, theta=500000.0)  # one token


@suite.test("attention_grad")
def attention_grad(ctx: Context) -> None:
    for batch, length, dim, n_heads, n_kv_heads in [(2, 8, 32, 4, 2), (1, 6, 48, 6, 3)]:
        x, weights, freqs_cis = _attention_case(ctx, batch, length, dim, n_heads, n_kv_heads)
        grad_output = ctx.randn(*x.shape)
        wrt = (0, *((1, name) for name in ATTENTION_NAMES))
        _, grads = ctx.call_grad(
            "multihead_attention",
            x,
            weights,
            n_heads,
            n_kv_heads,
            freqs_cis,
            grad_output=grad_output,
            wrt=wrt,
        )

        def attention_of(x_, wq, wk, wv, wo, heads=(n_heads, n_kv_heads), freqs=freqs_cis):
            return reference_attention(x_, {"wq": wq, "wk": wk, "wv": wv, "wo": wo}, *heads, freqs)

        inputs = (x, *(weights[name] for name in ATTENTION_NAMES))
        expected = reference_grads(attention_of, inputs, grad_output)
        what = f"multihead_attention ({n_heads} query, {n_kv_heads} key/value heads) for x of shape {shape_of(x)}"
        check_grads(ctx, grads, expected, ("x", *ATTENTION_NAMES), what)


# -- the decoder block ---------------------------------------------------------------------------------------


def _block_case(
    ctx: Context, args: ModelArgs, batch: int, length: int
) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    x = ctx.randn(batch, length, args.dim)
    weights = _layer_weights(_random_state_dict(ctx, args), 0)
    freqs_cis = precompute_freqs_cis(args.head_dim, length, args.rope_theta)
    return x, weights, freqs_cis


@suite.test("block_forward")
def block_forward(ctx: Context) -> None:
    for args, (batch, length) in [(DEBUG, (2, 16)), (OTHER_CONFIGS[0][1], (1, 9))]:
        one_layer = ModelArgs(**{**args_dict(args), "n_layers": 1})
        x, weights, freqs_cis = _block_case(ctx, one_layer, batch, length)
        out = ctx.call("transformer_block", x, weights, freqs_cis, args_dict(one_layer))
        expected = reference_block(x, weights, freqs_cis, args_dict(one_layer))
        heads = f"{args.n_heads} query, {args.n_kv_heads} key/value heads"
        what = f"transformer_block for x of shape {shape_of(x)} ({heads})"
        ctx.check_close(out, expected, what=what, **LAYER_TOL)


@suite.test("block_grad")
def block_grad(ctx: Context) -> None:
    args = ModelArgs(**{**args_dict(DEBUG), "n_layers": 1})
    x, weights, freqs_cis = _block_case(ctx, args, 2, 10)
    grad_output = ctx.randn(*x.shape)
    wrt = (0, *((1, name) for name in BLOCK_WEIGHT_NAMES))
    _, grads = ctx.call_grad(
        "transformer_block", x, weights, freqs_cis, args_dict(args), grad_output=grad_output, wrt=wrt
    )

    def block_of(x_: torch.Tensor, *tensors: torch.Tensor) -> torch.Tensor:
        return reference_block(
            x_, dict(zip(BLOCK_WEIGHT_NAMES, tensors, strict=True)), freqs_cis, args_dict(args)
        )

    inputs = (x, *(weights[name] for name in BLOCK_WEIGHT_NAMES))
    expected = reference_grads(block_of, inputs, grad_output)
    check_grads(
        ctx, grads, expected, ("x", *BLOCK_WEIGHT_NAMES), f"transformer_block for x of shape {shape_of(x)}"
    )


# -- the whole model, and which component breaks it ----------------------------------------------------------


def _attempt(check: Callable[..., None], *args: Any, **kwargs: Any) -> str | None:
    """Run one check; its failure message if it fails (a student's exception included), else None."""
    try:
        check(*args, **kwargs)
    except TestFailure as failure:
        return str(failure)
    return None


def _locate_divergence(
    ctx: Context, tokens: torch.Tensor, state_dict: dict[str, torch.Tensor], args: dict[str, Any]
) -> str:
    """Name the first of the student's component functions that differs on the reference model's activations.

    Walks the reference forward pass step by step; at each step the student's function gets exactly the input
    the reference model gave that step, so a mistake upstream cannot hide or mimic one downstream.
    """
    model_args = ModelArgs(**args)
    length = tokens.shape[1]
    n_heads, n_kv_heads, eps = model_args.n_heads, model_args.n_kv_heads, model_args.norm_eps
    freqs_cis = precompute_freqs_cis(model_args.head_dim, length, model_args.rope_theta)

    def freqs_check() -> None:
        _check_freqs(ctx, model_args.head_dim, length, model_args.rope_theta)

    steps: list[tuple[str, Callable[[], None]]] = [("the rotary table (precompute_freqs_cis)", freqs_check)]
    h = F.embedding(tokens, state_dict["tok_embeddings.weight"])  # (B, T, C)
    for layer in range(model_args.n_layers):
        weights = _layer_weights(state_dict, layer)
        attention_weights = {name: weights[f"attention.{name}.weight"] for name in ATTENTION_NAMES}
        normed = ref.rms_norm(h, weights["attention_norm.weight"], eps)
        batch = h.shape[0]
        q = F.linear(normed, attention_weights["wq"]).view(batch, length, n_heads, -1)  # (B, T, H, D)
        k = F.linear(normed, attention_weights["wk"]).view(batch, length, n_kv_heads, -1)  # (B, T, K, D)
        v = F.linear(normed, attention_weights["wv"]).view(batch, length, n_kv_heads, -1)  # (B, T, K, D)
        q_rot, k_rot = apply_rotary_emb(q, k, freqs_cis)
        group = n_heads // n_kv_heads
        heads_first = (
            q_rot.transpose(1, 2),  # (B, H, T, D)
            k_rot.transpose(1, 2).repeat_interleave(group, dim=1),  # (B, H, T, D)
            v.transpose(1, 2).repeat_interleave(group, dim=1),  # (B, H, T, D)
        )
        mid = h + reference_attention(normed, attention_weights, n_heads, n_kv_heads, freqs_cis)
        ffn_normed = ref.rms_norm(mid, weights["ffn_norm.weight"], eps)
        ffn_weights = [weights[f"feed_forward.{name}.weight"] for name in ("w1", "w2", "w3")]

        def norm_check(x=h, w=weights["attention_norm.weight"]) -> None:
            _check_rms_norm(ctx, x, w, eps)

        def rope_check(q=q, k=k) -> None:
            out_q, out_k = check_pair(ctx, ctx.call("apply_rotary_emb", q, k, freqs_cis), "apply_rotary_emb")
            want_q, want_k = apply_rotary_emb(q, k, freqs_cis)
            ctx.check_close(out_q, want_q, what="apply_rotary_emb's xq", **COMPONENT_TOL)
            ctx.check_close(out_k, want_k, what="apply_rotary_emb's xk", **COMPONENT_TOL)

        def sdpa_check(inputs=heads_first) -> None:
            _check_sdpa(ctx, *inputs, causal=True)

        def attention_check(x=normed, w=attention_weights) -> None:
            out = ctx.call("multihead_attention", x, w, n_heads, n_kv_heads, freqs_cis)
            expected = reference_attention(x, w, n_heads, n_kv_heads, freqs_cis)
            ctx.check_close(out, expected, what="multihead_attention", **LAYER_TOL)

        def ffn_norm_check(x=mid, w=weights["ffn_norm.weight"]) -> None:
            _check_rms_norm(ctx, x, w, eps)

        def swiglu_check(x=ffn_normed, w=ffn_weights) -> None:
            out = ctx.call("swiglu", x, *w)
            ctx.check_close(out, reference_swiglu(x, *w), what="swiglu", **COMPONENT_TOL)

        def block_check(x=h, w=weights) -> None:
            out = ctx.call("transformer_block", x, w, freqs_cis, args)
            ctx.check_close(
                out, reference_block(x, w, freqs_cis, args), what="transformer_block", **LAYER_TOL
            )

        steps += [
            (f"the attention_norm of layer {layer} (rms_norm)", norm_check),
            (f"the rotary embedding of the queries and keys in layer {layer} (apply_rotary_emb)", rope_check),
            (f"the attention weighting in layer {layer} (scaled_dot_product_attention)", sdpa_check),
            (f"the attention in layer {layer} (multihead_attention)", attention_check),
            (f"the ffn_norm of layer {layer} (rms_norm)", ffn_norm_check),
            (f"the feed-forward network of layer {layer} (swiglu)", swiglu_check),
            (
                f"layer {layer} as a whole (transformer_block), although its parts match: check the residual "
                "connections and which input each normalisation gets",
                block_check,
            ),
        ]
        h = reference_block(h, weights, freqs_cis, args)

    # The walk must be the reference model's own forward pass, or its verdicts mean nothing.
    walked = F.linear(ref.rms_norm(h, state_dict["norm.weight"], eps), state_dict["output.weight"])
    if not torch.allclose(walked, reference_logits(tokens, state_dict, args), rtol=1e-5, atol=1e-5):
        raise GraderError(
            "hw2 tests.py: the step-by-step walk no longer matches reference_impl's Transformer"
        )

    def final_norm_check(x=h) -> None:
        _check_rms_norm(ctx, x, state_dict["norm.weight"], eps)

    steps.append(("the final norm (rms_norm)", final_norm_check))
    for name, check in steps:
        problem = _attempt(check)
        if problem is not None:
            return (
                "Your component functions were then called on the reference model's own activations, layer by "
                f"layer; the first that differs is {name}: {problem}"
            )
    return (
        "Each of your component functions matches when called on the reference model's own activations, so "
        "transformer() puts them together differently: check the embedding lookup, that each layer gets the "
        "previous layer's output and its own weights, the rotary table's length and base, and the final norm "
        "and output projection."
    )


def _check_model(ctx: Context, args: ModelArgs, batch: int, length: int, described: str) -> None:
    state_dict = _random_state_dict(ctx, args)
    tokens = _tokens(ctx, batch, length, args.vocab_size)
    arguments = args_dict(args)
    logits = ctx.call("transformer", tokens, state_dict, arguments)
    expected = reference_logits(tokens, state_dict, arguments)
    what = f"transformer's logits for tokens of shape {shape_of(tokens)} ({described})"
    problem = _attempt(ctx.check_close, logits, expected, what=what, **LAYER_TOL)
    if problem is not None:
        ctx.fail(f"{problem}. {_locate_divergence(ctx, tokens, state_dict, arguments)}")


@suite.test("model_logits")
def model_logits(ctx: Context) -> None:
    _check_model(ctx, DEBUG, 2, 16, "the debug model")
    _check_model(ctx, DEBUG, 1, 33, "the debug model")


@suite.test("model_other_configs")
def model_other_configs(ctx: Context) -> None:
    for described, args, (batch, length) in OTHER_CONFIGS:
        _check_model(ctx, args, batch, length, described)


def check_forward_backward(ctx: Context, value: Any, expected: list, shape: str = "") -> None:
    """``transformer_forward_backward``'s ``(loss, grads)`` against the reference's ``[loss, grads]``."""
    loss, grads = check_pair(ctx, value, "transformer_forward_backward")
    expected_loss, expected_grads = expected
    where = f" for {shape}" if shape else ""
    problem = _attempt(
        ctx.check_close, loss, expected_loss, what=f"transformer_forward_backward's loss{where}", **LOSS_TOL
    )
    if problem is not None:
        ctx.fail(
            f"{problem}. The loss is cross_entropy(transformer(tokens), targets): the tests model_logits "
            "and cross_entropy_basic check those two parts on their own."
        )
    ctx.check(
        isinstance(grads, dict) and set(grads) == set(expected_grads),
        "transformer_forward_backward must return a dict of gradients with exactly the keys of state_dict",
    )
    # In the model's order, so the first gradient that differs points at the component to look at.
    for name, want in expected_grads.items():
        what = f"transformer_forward_backward's gradient of {name}{where}"
        ctx.check_close(grads[name], want, what=what, **grad_tolerance(want))


@suite.test("model_loss_and_grads")
def model_loss_and_grads(ctx: Context) -> None:
    for args, (batch, length) in [(DEBUG, (2, 24)), (OTHER_CONFIGS[2][1], (2, 7))]:
        state_dict = _random_state_dict(ctx, args)
        tokens = _tokens(ctx, batch, length, args.vocab_size)
        targets = _tokens(ctx, batch, length, args.vocab_size)
        arguments = args_dict(args)
        value = ctx.call("transformer_forward_backward", tokens, targets, state_dict, arguments)
        expected = reference_forward_backward(tokens, targets, state_dict, arguments)
        check_forward_backward(ctx, value, expected, f"tokens of shape {shape_of(tokens)}")


# -- training: loss, optimiser, schedule ---------------------------------------------------------------------


def _check_cross_entropy(ctx: Context, logits: torch.Tensor, targets: torch.Tensor, **kwargs: Any) -> None:
    out = ctx.call("cross_entropy", logits, targets, **kwargs)
    options = "".join(f", {name}={value}" for name, value in kwargs.items())
    what = f"cross_entropy(logits, targets{options}) for logits of shape {shape_of(logits)}"
    ctx.check_close(out, train.cross_entropy(logits, targets, **kwargs), what=what, **LOSS_TOL)


def _targets(ctx: Context, shape: tuple[int, ...], vocab_size: int) -> torch.Tensor:
    return _tokens(ctx, math.prod(shape), 1, vocab_size).reshape(shape)


@suite.test("cross_entropy_basic")
def cross_entropy_basic(ctx: Context) -> None:
    for rows, vocab_size in [(1, 5), (16, 50), (64, 256)]:
        _check_cross_entropy(ctx, ctx.randn(rows, vocab_size, scale=2.0), _targets(ctx, (rows,), vocab_size))


@suite.test("cross_entropy_edge_cases")
def cross_entropy_edge_cases(ctx: Context) -> None:
    # (B, T, V) logits with (B, T) targets, as the language model produces them.
    _check_cross_entropy(ctx, ctx.randn(2, 9, 30, scale=2.0), _targets(ctx, (2, 9), 30))
    # Logits in the thousands: log-sum-exp must subtract the maximum.
    _check_cross_entropy(ctx, ctx.randn(8, 40, scale=300.0) + 1000.0, _targets(ctx, (8,), 40))
    # Ignored positions (a prompt, padding) count neither in the sum nor in the mean.
    targets = _targets(ctx, (3, 10), 20)
    targets[:, :4] = -100
    _check_cross_entropy(ctx, ctx.randn(3, 10, 20, scale=2.0), targets)
    targets = _targets(ctx, (12,), 16)
    targets[::3] = 0
    _check_cross_entropy(ctx, ctx.randn(12, 16, scale=2.0), targets, ignore_index=0)


@suite.test("cross_entropy_grad")
def cross_entropy_grad(ctx: Context) -> None:
    logits = ctx.randn(2, 6, 25, scale=2.0)
    targets = _targets(ctx, (2, 6), 25)
    targets[0, :2] = -100
    grad_output = torch.tensor(1.0 + float(ctx.randn(1).abs()))
    _, grads = ctx.call_grad("cross_entropy", logits, targets, grad_output=grad_output, wrt=(0,))
    expected = reference_grads(lambda x: train.cross_entropy(x, targets), (logits,), grad_output)
    check_grads(ctx, grads, expected, ("logits",), f"cross_entropy for logits of shape {shape_of(logits)}")


def _adamw_state(
    ctx: Context, shapes: Sequence[tuple[int, ...]], first_step: bool
) -> tuple[list, list, list, list]:
    params = [ctx.randn(*shape) for shape in shapes]
    grads = [ctx.randn(*shape, scale=0.1) for shape in shapes]
    if first_step:
        return (
            params,
            grads,
            [torch.zeros(shape) for shape in shapes],
            [torch.zeros(shape) for shape in shapes],
        )
    exp_avgs = [ctx.randn(*shape, scale=0.05) for shape in shapes]
    exp_avg_sqs = [ctx.randn(*shape, scale=0.01).square() for shape in shapes]
    return params, grads, exp_avgs, exp_avg_sqs


def _check_adamw(
    ctx: Context,
    state: tuple[list, list, list, list],
    *,
    step: int,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
) -> None:
    options = {"step": step, "lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay}
    value = ctx.call("adamw_step", *state, **options)
    ctx.check(
        isinstance(value, list) and len(value) == 3 and all(isinstance(item, list) for item in value),
        "adamw_step must return a tuple of three lists (params, exp_avgs, exp_avg_sqs)",
    )
    expected = reference_adamw(*state, **options)
    described = f"step={step}, lr={lr:g}, betas={betas}, eps={eps:g}, weight_decay={weight_decay:g}"
    for label, got, want in zip(("params", "exp_avgs", "exp_avg_sqs"), value, expected, strict=True):
        ctx.check(len(got) == len(want), f"adamw_step must return {len(want)} {label}, got {len(got)}")
        for index, (tensor, reference) in enumerate(zip(got, want, strict=True)):
            what = f"adamw_step's {label}[{index}] of shape {shape_of(reference)} ({described})"
            ctx.check_close(tensor, reference, what=what, **OPTIMIZER_TOL)


@suite.test("adamw_step_basic")
def adamw_step_basic(ctx: Context) -> None:
    state = _adamw_state(ctx, [(8, 4), (16,)], first_step=True)
    _check_adamw(ctx, state, step=1, lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)


@suite.test("adamw_multi_step")
def adamw_multi_step(ctx: Context) -> None:
    # Later steps from a given state: bias correction with step t, other betas and eps, with and without decay.
    shapes = [(6, 5), (5,), (2, 3, 4)]
    for step, betas, eps, weight_decay in [
        (2, (0.9, 0.999), 1e-8, 0.01),
        (7, (0.8, 0.95), 1e-6, 0.0),
        (100, (0.9, 0.98), 1e-8, 0.05),
    ]:
        state = _adamw_state(ctx, shapes, first_step=False)
        _check_adamw(ctx, state, step=step, lr=3e-3, betas=betas, eps=eps, weight_decay=weight_decay)


def _check_schedule(ctx: Context, step: int, max_lr: float, min_lr: float, warmup: int, total: int) -> None:
    value = ctx.call("lr_schedule", step, max_lr, min_lr, warmup, total)
    expected = train.cosine_schedule(
        step, max_lr=max_lr, min_lr=min_lr, warmup_steps=warmup, total_steps=total
    )
    what = f"lr_schedule(step={step}, max_lr={max_lr:g}, min_lr={min_lr:g}, warmup_steps={warmup}, total_steps={total})"
    check_lr(ctx, value, expected, what)


@suite.test("lr_schedule_basic")
def lr_schedule_basic(ctx: Context) -> None:
    for step in (0, 4, 9, 10, 37, 55, 99):
        _check_schedule(ctx, step, 1e-3, 1e-4, 10, 100)


@suite.test("lr_schedule_edge_cases")
def lr_schedule_edge_cases(ctx: Context) -> None:
    for step in (100, 101, 5000):  # at and after the end: min_lr
        _check_schedule(ctx, step, 1e-3, 1e-4, 10, 100)
    for step in (0, 1, 49):  # no warm-up: the first step already has max_lr
        _check_schedule(ctx, step, 6e-4, 0.0, 0, 50)
    for step in (0, 7, 8, 9):  # warm-up to the very end
        _check_schedule(ctx, step, 2e-3, 2e-4, 8, 8)


@suite.test("inputs_not_mutated")
def inputs_not_mutated(ctx: Context) -> None:
    x = ctx.randn(3, 6, 32)
    ctx.check_not_mutated(ctx.invoke("softmax", x, dim=-1), "softmax")
    ctx.check_not_mutated(ctx.invoke("rms_norm", x, _norm_weight(ctx, 32), eps=1e-5), "rms_norm")
    ctx.check_not_mutated(ctx.invoke("swiglu", *_swiglu_inputs(ctx, (3, 6, 32), 48)), "swiglu")
    freqs_cis = precompute_freqs_cis(8, 6)
    xq, xk = ctx.randn(3, 6, 4, 8), ctx.randn(3, 6, 2, 8)
    ctx.check_not_mutated(ctx.invoke("apply_rotary_emb", xq, xk, freqs_cis), "apply_rotary_emb")
    q, k, v = (ctx.randn(3, 4, 6, 8) for _ in range(3))
    ctx.check_not_mutated(
        ctx.invoke("scaled_dot_product_attention", q, k, v, causal=True), "scaled_dot_product_attention"
    )
    x, weights, freqs_cis = _attention_case(ctx, 3, 6, 32, 4, 2)
    ctx.check_not_mutated(
        ctx.invoke("multihead_attention", x, weights, 4, 2, freqs_cis), "multihead_attention"
    )
    args = ModelArgs(**{**args_dict(DEBUG), "n_layers": 1})
    x, weights, freqs_cis = _block_case(ctx, args, 2, 6)
    ctx.check_not_mutated(
        ctx.invoke("transformer_block", x, weights, freqs_cis, args_dict(args)), "transformer_block"
    )
    state_dict = _random_state_dict(ctx, DEBUG)
    tokens, targets = _tokens(ctx, 2, 6, DEBUG.vocab_size), _tokens(ctx, 2, 6, DEBUG.vocab_size)
    ctx.check_not_mutated(ctx.invoke("transformer", tokens, state_dict, args_dict(DEBUG)), "transformer")
    logits = ctx.randn(12, 20)
    ctx.check_not_mutated(ctx.invoke("cross_entropy", logits, _targets(ctx, (12,), 20)), "cross_entropy")
    ctx.check_not_mutated(
        ctx.invoke("transformer_forward_backward", tokens, targets, state_dict, args_dict(DEBUG)),
        "transformer_forward_backward",
    )


# -- the leaderboard -----------------------------------------------------------------------------------------


# The debug model on batches of 256 and 128 tokens: tens of milliseconds on one CPU core. Weights, tokens and targets
# are fresh for every timed call; the reference is torch.autograd through reference_impl's model.
@suite.benchmark(
    "forward_backward_ms",
    unit="ms",
    shapes={"b4_t64": (4, 64), "b1_t128": (1, 128)},
    reference=reference_forward_backward,
    warmup=2,
    warmup_seconds=10.0,
    min_reps=5,
    max_reps=25,
    max_seconds=4.0,
    target_rse=0.02,
)
def forward_backward_speed(ctx: Context, shape: tuple[int, int]) -> Case:
    batch, length = shape
    state_dict = _random_state_dict(ctx, DEBUG)
    tokens = _tokens(ctx, batch, length, DEBUG.vocab_size)
    targets = _tokens(ctx, batch, length, DEBUG.vocab_size)
    # Every timed output is checked as model_loss_and_grads checks it: a wrong one records no time.
    return Case(
        "transformer_forward_backward",
        (tokens, targets, state_dict, args_dict(DEBUG)),
        check=check_forward_backward,
    )
