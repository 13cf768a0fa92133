"""Hidden tests of HW5 (inference, tensor parallelism, ZeRO-1, retrieval); trusted side only.

Expected values come from reference_impl: ``generate`` (prefill, decode_step, top_k_mask, top_p_mask, and the
greedy loop), ``model`` (Attention, FeedForward, the KV cache), ``parallel.partition_bounds`` and ``rag``; the
tensor-parallel results are checked against the dense layers they split. Inputs and models are drawn from the
per-test generators (the secret run seed).

Greedy decoding is compared token for token. To make that fair, every greedy case is checked on this side
first: at every step, the reference's best logit beats the runner-up by at least ``GREEDY_MARGIN``, far more
than the float32 rounding of any correct implementation, so no correct submission can pick a different token.
Prompts that miss the margin are drawn again.
"""

import contextlib
import functools
import json
import math
import statistics
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from graders.harness import Context, Suite
from reference_impl import generate as ref_generate
from reference_impl import rag as ref_rag
from reference_impl.kv_cache import KVCache
from reference_impl.model import (
    Attention,
    FeedForward,
    ModelArgs,
    Transformer,
    attention_mask,
    precompute_freqs_cis,
)
from reference_impl.parallel import partition_bounds

suite = Suite()
suite.metric("tokens_per_s", unit="tokens/s")  # the leaderboard: greedy generate throughput, timed here
suite.metric("tokens_per_s_reference", unit="tokens/s")  # the reference's, on one thread of this machine
suite.metric("recall_at_5", unit="fraction")  # on the hidden questions

DATA_DIR = Path(__file__).resolve().parent / "data"
HIDDEN_QUESTIONS = DATA_DIR / "hidden_questions.jsonl"

# float32 attention/model outputs: a few hundred roundings deep, compared with a reference that may sum in
# another order (SDPA versus an explicit softmax).
ATTENTION_F32 = {"rtol": 1e-4, "atol": 1e-5}
ATTENTION_F64 = {"rtol": 1e-9, "atol": 1e-11}
LOGITS_F32 = {"rtol": 1e-4, "atol": 1e-4}
# Tensor-parallel checks run in float64: the only difference left is the order of summation.
PARALLEL_F64 = {"rtol": 1e-7, "atol": 1e-9}
EMBEDDING_F32 = {"rtol": 1e-3, "atol": 2e-4}
# Smallest gap between the best and the second-best logit at any greedy step of a test case (float32 logits of
# a few units; implementations that are correct differ by about 1e-5 at most).
GREEDY_MARGIN = 1e-3
PROMPT_DRAWS = 30
# Sampling frequencies: each token's share of N draws must lie within this many standard errors of its
# probability (a correct sampler fails one of these checks about once in a million gradings).
SAMPLING_DRAWS = 4000
SAMPLING_SIGMAS = 5.0
RECALL_K = 5
RECALL_THRESHOLD = 0.9
# The throughput workload (the leaderboard): shapes fixed, weights and prompts fresh per run.
THROUGHPUT_PROMPT_LENGTHS = (6, 9, 12, 15, 18, 21, 24, 27)
THROUGHPUT_NEW_TOKENS = 32
THROUGHPUT_RUNS = 3


# -- models and greedy references ------------------------------------------------------------------------------


def _model_args(**overrides: Any) -> ModelArgs:
    """The debug preset's shape (2 layers, width 64, 4 query and 2 key/value heads, 256 tokens)."""
    shape = dict(ModelArgs.from_name("debug").__dict__)
    shape.update(overrides)
    return ModelArgs(**shape)


def _args_dict(args: ModelArgs) -> dict[str, Any]:
    """What the student's functions get as ``model_args``."""
    fields = asdict(args)
    return {name: fields[name] for name in fields if name not in ("rope_scaling", "tie_embeddings")}


def _build_model(ctx: Context, args: ModelArgs, dtype: torch.dtype = torch.float32) -> Transformer:
    """A reference Transformer with weights from the test's generator.

    Weights are larger than a training initialisation so that attention is far from uniform (masking and
    position bugs show) and the logits are a few units apart (greedy choices are clear-cut).
    """
    model = Transformer(args)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("norm.weight"):
                parameter.copy_(1.0 + ctx.randn(*parameter.shape, scale=0.1))
            elif name == "tok_embeddings.weight":
                parameter.copy_(ctx.randn(*parameter.shape, scale=0.5))
            elif name == "output.weight":
                parameter.copy_(ctx.randn(*parameter.shape, scale=0.3))
            else:
                parameter.copy_(ctx.randn(*parameter.shape, scale=0.1))
    return model.to(dtype).eval()


def _state_dict(model: Transformer) -> dict[str, Tensor]:
    return {name: tensor.clone() for name, tensor in model.state_dict().items()}


@torch.no_grad()
def _greedy_reference(
    model: Transformer, prompts: list[list[int]], max_new_tokens: int
) -> tuple[list[list[int]], float]:
    """``reference_impl.generate.generate`` with temperature 0 (no eos), step by step, also returning the
    smallest gap between the best and the second-best logit of any step."""
    prompt_len = max(len(prompt) for prompt in prompts)
    pad_lengths = torch.tensor([prompt_len - len(prompt) for prompt in prompts])
    tokens = torch.tensor([[0] * (prompt_len - len(prompt)) + prompt for prompt in prompts])
    outputs: list[list[int]] = [[] for _ in prompts]
    smallest_gap = math.inf
    model.setup_caches(len(prompts), prompt_len + max_new_tokens)
    try:
        logits = ref_generate.prefill(model, tokens, pad_lengths)
        for step in range(max_new_tokens):
            top2 = logits.float().topk(2, dim=-1).values  # (B, 2)
            gaps = (top2[:, 0] - top2[:, 1]).tolist()
            smallest_gap = min(smallest_gap, *gaps)
            next_tokens = ref_generate.sample(logits, temperature=0.0)
            for row, token in enumerate(next_tokens.tolist()):
                outputs[row].append(token)
            if step == max_new_tokens - 1:
                break
            logits = ref_generate.decode_step(model, next_tokens, prompt_len + step, pad_lengths)
    finally:
        model.remove_caches()
    return outputs, smallest_gap


def _clear_prompts(
    ctx: Context, model: Transformer, lengths: list[int] | tuple[int, ...], max_new_tokens: int
) -> tuple[list[list[int]], list[list[int]], float]:
    """Random prompts of these lengths whose greedy continuation is unambiguous: (prompts, expected, seconds
    the reference took to generate them)."""
    vocab = model.args.vocab_size
    for _ in range(PROMPT_DRAWS):
        prompts = [[ctx.rng.randrange(vocab) for _ in range(length)] for length in lengths]
        started = time.perf_counter()
        expected, gap = _greedy_reference(model, prompts, max_new_tokens)
        seconds = time.perf_counter() - started
        if gap >= GREEDY_MARGIN:
            return prompts, expected, seconds
    raise RuntimeError(f"no prompts with a greedy margin of {GREEDY_MARGIN} in {PROMPT_DRAWS} draws")


def _check_token_lists(ctx: Context, actual: Any, expected: list[list[int]], what: str) -> None:
    """Token-exact comparison; the message says where a row first differs (values only in visible tests)."""
    if type(actual) is not list or len(actual) != len(expected):
        got = f"a list of {len(actual)}" if type(actual) is list else f"a {type(actual).__name__}"
        ctx.fail(f"{what} returned {got}, expected a list of {len(expected)} token lists (one per prompt)")
    for row, (got, want) in enumerate(zip(actual, expected, strict=True)):
        if type(got) is not list or not all(type(token) is int for token in got):
            ctx.fail(f"{what}: row {row} is not a list of int token ids")
        if got != want:
            first = next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), None)
            where = f"at new token {first}" if first is not None else "in length"
            message = (
                f"{what}: row {row} differs from the expected tokens {where} ({len(got)} tokens returned"
            )
            message += f", {len(want)} expected)"
            if ctx.visible:
                message += f"; expected {want}, got {got}"
            ctx.fail(message)


def _unpack(ctx: Context, value: Any, count: int, what: str) -> list:
    if type(value) is not list or len(value) != count:
        ctx.fail(f"{what} must return a tuple of {count} values")
    return value


# -- attention with a cache ------------------------------------------------------------------------------------


def _attention_weights(ctx: Context, dim: int, n_heads: int, n_kv_heads: int, dtype: torch.dtype) -> dict:
    head_dim = dim // n_heads
    shapes = {
        "wq": (n_heads * head_dim, dim),
        "wk": (n_kv_heads * head_dim, dim),
        "wv": (n_kv_heads * head_dim, dim),
        "wo": (dim, n_heads * head_dim),
    }
    return {name: ctx.randn(*shape, scale=0.15, dtype=dtype) for name, shape in shapes.items()}


@torch.no_grad()
def _reference_attention(
    x: Tensor,
    weights: dict[str, Tensor],
    cache_k: Tensor,
    cache_v: Tensor,
    input_pos: Tensor,
    pad_lengths: Tensor,
    n_heads: int,
    n_kv_heads: int,
    rope_theta: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """``reference_impl.model.Attention`` over a ``KVCache`` holding the given contents."""
    batch, _, dim = x.shape
    head_dim = dim // n_heads
    n_slots = cache_k.shape[2]
    args = ModelArgs(
        dim=dim,
        n_layers=1,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        vocab_size=1,
        hidden_dim=1,
        rope_theta=rope_theta,
        max_seq_len=n_slots,
    )
    attention = Attention(args).to(x.dtype)
    for name in ("wq", "wk", "wv", "wo"):
        getattr(attention, name).weight.copy_(weights[name])
    attention.kv_cache = KVCache(batch, n_slots, n_kv_heads, head_dim, dtype=x.dtype)
    attention.kv_cache.k_cache.copy_(cache_k)
    attention.kv_cache.v_cache.copy_(cache_v)
    positions = (input_pos[None, :] - pad_lengths[:, None]).clamp(min=0)  # (B, T)
    freqs_cis = precompute_freqs_cis(head_dim, n_slots, rope_theta)[positions]  # (B, T, D/2, 2)
    mask = attention_mask(input_pos, n_slots, pad_lengths)
    out = attention(x, freqs_cis, mask, input_pos)
    return out, attention.kv_cache.k_cache.clone(), attention.kv_cache.v_cache.clone()


def _check_close_where(
    ctx: Context, actual: Any, expected: Tensor, keep: Tensor, what: str, tolerance: dict
) -> None:
    """``check_close`` on the entries where ``keep`` (broadcast to the shape) is True; padding is ignored."""
    ctx.check_tensor(actual, shape=expected.shape, dtype=expected.dtype, device=expected.device, what=what)
    keep = keep.expand(expected.shape)
    ctx.check_close(
        torch.where(keep, actual, torch.zeros_like(actual)),
        torch.where(keep, expected, torch.zeros_like(expected)),
        what=what,
        **tolerance,
    )


def _check_attention_case(
    ctx: Context,
    *,
    batch: int,
    n_tokens: int,
    n_slots: int,
    filled: int,
    pad_lengths: list[int],
    dim: int,
    n_heads: int,
    n_kv_heads: int,
    rope_theta: float,
    dtype: torch.dtype,
) -> None:
    """One attention_step call: tokens at slots ``filled .. filled + n_tokens - 1`` over a cache whose first
    ``filled`` slots hold earlier keys and values."""
    head_dim = dim // n_heads
    x = ctx.randn(batch, n_tokens, dim, dtype=dtype)
    weights = _attention_weights(ctx, dim, n_heads, n_kv_heads, dtype)
    cache_shape = (batch, n_kv_heads, n_slots, head_dim)
    cache_k, cache_v = torch.zeros(cache_shape, dtype=dtype), torch.zeros(cache_shape, dtype=dtype)
    cache_k[:, :, :filled] = ctx.randn(batch, n_kv_heads, filled, head_dim, dtype=dtype)
    cache_v[:, :, :filled] = ctx.randn(batch, n_kv_heads, filled, head_dim, dtype=dtype)
    input_pos = torch.arange(filled, filled + n_tokens)
    pads = torch.tensor(pad_lengths)
    value = ctx.call(
        "attention_step", x, weights, cache_k, cache_v, input_pos, pads, n_heads, n_kv_heads, rope_theta
    )
    out, new_k, new_v = _unpack(ctx, value, 3, "attention_step")
    want_out, want_k, want_v = _reference_attention(
        x, weights, cache_k, cache_v, input_pos, pads, n_heads, n_kv_heads, rope_theta
    )
    case = (
        f"attention_step with x {tuple(x.shape)} {str(dtype).removeprefix('torch.')}, {n_heads} query and "
        f"{n_kv_heads} key/value heads, slots {filled}..{filled + n_tokens - 1} of {n_slots}, "
        f"pad_lengths {pad_lengths}"
    )
    tolerance = ATTENTION_F64 if dtype == torch.float64 else ATTENTION_F32
    real_queries = (input_pos[None, :] >= pads[:, None])[:, :, None]  # (B, T, 1)
    real_slots = (torch.arange(n_slots)[None, :] >= pads[:, None])[:, None, :, None]  # (B, 1, S, 1)
    _check_close_where(ctx, out, want_out, real_queries, f"the output of {case}", tolerance)
    _check_close_where(ctx, new_k, want_k, real_slots, f"the returned cache_k of {case}", tolerance)
    _check_close_where(ctx, new_v, want_v, real_slots, f"the returned cache_v of {case}", tolerance)


@suite.test("attention_with_cache_prefill")
def attention_with_cache_prefill(ctx: Context) -> None:
    for n_heads, n_kv_heads in ((4, 2), (4, 4)):
        _check_attention_case(
            ctx,
            batch=2,
            n_tokens=6,
            n_slots=10,
            filled=0,
            pad_lengths=[0, 0],
            dim=64,
            n_heads=n_heads,
            n_kv_heads=n_kv_heads,
            rope_theta=10000.0,
            dtype=torch.float32,
        )


@suite.test("attention_with_cache_decode")
def attention_with_cache_decode(ctx: Context) -> None:
    # One token after a left-padded prompt, a chunk of three, multi-query attention, the last slot, float64.
    common = {"dim": 64, "n_heads": 4, "dtype": torch.float32}
    _check_attention_case(
        ctx,
        batch=3,
        n_tokens=1,
        n_slots=12,
        filled=7,
        pad_lengths=[0, 3, 1],
        n_kv_heads=2,
        rope_theta=10000.0,
        **common,
    )
    _check_attention_case(
        ctx,
        batch=3,
        n_tokens=3,
        n_slots=12,
        filled=7,
        pad_lengths=[2, 0, 4],
        n_kv_heads=1,
        rope_theta=500000.0,
        **common,
    )
    _check_attention_case(
        ctx,
        batch=2,
        n_tokens=1,
        n_slots=9,
        filled=8,
        pad_lengths=[5, 0],
        dim=32,
        n_heads=2,
        n_kv_heads=2,
        rope_theta=10000.0,
        dtype=torch.float64,
    )


# -- prefill and decode steps ----------------------------------------------------------------------------------


def _check_caches(
    ctx: Context, actual: Any, model: Transformer, pads: Tensor, what: str, tolerance: dict
) -> None:
    layers = model.layers
    if type(actual) is not list or len(actual) != len(layers):
        ctx.fail(f"{what}: the caches must be a list with one {{'k', 'v'}} dict per layer ({len(layers)})")
    for index, (cache, layer) in enumerate(zip(actual, layers, strict=True)):
        if type(cache) is not dict or set(cache) != {"k", "v"}:
            ctx.fail(f"{what}: the cache of layer {index} must be a dict with the keys 'k' and 'v'")
        reference = layer.attention.kv_cache
        n_slots = reference.k_cache.shape[2]
        real_slots = (torch.arange(n_slots)[None, :] >= pads[:, None])[:, None, :, None]  # (B, 1, S, 1)
        for key, expected in (("k", reference.k_cache), ("v", reference.v_cache)):
            _check_close_where(
                ctx, cache[key], expected, real_slots, f"{what}: layer {index} cache '{key}'", tolerance
            )


@suite.test("prefill_and_decode_step")
def prefill_and_decode_step(ctx: Context) -> None:
    args = _model_args()
    model = _build_model(ctx, args)
    state_dict, model_args = _state_dict(model), _args_dict(args)
    batch, prompt_len, cache_len = 2, 6, 9
    tokens = torch.randint(0, args.vocab_size, (batch, prompt_len), generator=ctx.generator)
    pads = torch.zeros(batch, dtype=torch.int64)
    case = f"tokens of shape {(batch, prompt_len)} and cache_len {cache_len}"

    logits, caches = _unpack(
        ctx, ctx.call("prefill", state_dict, model_args, tokens, pads, cache_len), 2, "prefill"
    )
    model.setup_caches(batch, cache_len)
    try:
        with torch.no_grad():
            want = ref_generate.prefill(model, tokens, pads)
        ctx.check_close(logits, want, what=f"the logits of prefill for {case}", **LOGITS_F32)
        _check_caches(ctx, caches, model, pads, f"prefill for {case}", ATTENTION_F32)

        # The decode step starts from the reference's caches, so an error in prefill is not counted twice.
        given = [
            {"k": layer.attention.kv_cache.k_cache.clone(), "v": layer.attention.kv_cache.v_cache.clone()}
            for layer in model.layers
        ]
        next_tokens = torch.randint(0, args.vocab_size, (batch,), generator=ctx.generator)
        value = ctx.call("decode_step", state_dict, model_args, given, next_tokens, prompt_len, pads)
        logits, caches = _unpack(ctx, value, 2, "decode_step")
        with torch.no_grad():
            want = ref_generate.decode_step(model, next_tokens, prompt_len, pads)
        what = f"decode_step at slot {prompt_len} after prefill of {case}"
        ctx.check_close(logits, want, what=f"the logits of {what}", **LOGITS_F32)
        _check_caches(ctx, caches, model, pads, what, ATTENTION_F32)
    finally:
        model.remove_caches()


@suite.test("inputs_not_mutated")
def inputs_not_mutated(ctx: Context) -> None:
    n_heads, n_kv_heads, dim, n_slots = 4, 2, 64, 8
    x = ctx.randn(2, 1, dim)
    weights = _attention_weights(ctx, dim, n_heads, n_kv_heads, torch.float32)
    cache_k = ctx.randn(2, n_kv_heads, n_slots, dim // n_heads)
    cache_v = ctx.randn(2, n_kv_heads, n_slots, dim // n_heads)
    result = ctx.invoke(
        "attention_step",
        x,
        weights,
        cache_k,
        cache_v,
        torch.tensor([5]),
        torch.tensor([0, 2]),
        n_heads,
        n_kv_heads,
        10000.0,
    )
    ctx.check_not_mutated(result, "attention_step")

    args = _model_args()
    model = _build_model(ctx, args)
    shape = (2, args.n_kv_heads, n_slots, args.head_dim)
    caches = [{"k": ctx.randn(*shape), "v": ctx.randn(*shape)} for _ in range(args.n_layers)]
    result = ctx.invoke(
        "decode_step",
        _state_dict(model),
        _args_dict(args),
        caches,
        torch.tensor([3, 4]),
        5,
        torch.tensor([1, 0]),
    )
    ctx.check_not_mutated(result, "decode_step")
    logits = ctx.randn(3, 20)
    ctx.check_not_mutated(ctx.invoke("sample", logits, 0.8, 5, 0.9, 7), "sample")
    ctx.check_not_mutated(ctx.invoke("top_p_filter", torch.softmax(logits, dim=-1), 0.8), "top_p_filter")


# -- sampling --------------------------------------------------------------------------------------------------


def _check_top_k(ctx: Context, logits: Tensor, top_k: int) -> None:
    mask = ctx.call("top_k_filter", logits, top_k)
    what = f"top_k_filter(logits of shape {tuple(logits.shape)} {logits.dtype}, top_k={top_k})"
    ctx.check_equal(mask, ref_generate.top_k_mask(logits, top_k), what=what)


def _check_top_p(ctx: Context, probs: Tensor, top_p: float) -> None:
    mask = ctx.call("top_p_filter", probs, top_p)
    what = f"top_p_filter(probs of shape {tuple(probs.shape)} {probs.dtype}, top_p={top_p:g})"
    ctx.check_equal(mask, ref_generate.top_p_mask(probs, top_p), what=what)


@suite.test("top_k_filter")
def top_k_filter(ctx: Context) -> None:
    logits = ctx.randn(4, 50, scale=2.0)
    for top_k in (1, 7, 50):
        _check_top_k(ctx, logits, top_k)
    _check_top_k(ctx, ctx.randn(2, 3, 20, scale=2.0), 4)


@suite.test("top_p_filter")
def top_p_filter(ctx: Context) -> None:
    probs = torch.softmax(ctx.randn(4, 50, scale=2.0), dim=-1)
    for top_p in (0.3, 0.75, 0.95):
        _check_top_p(ctx, probs, top_p)
    _check_top_p(ctx, torch.softmax(ctx.randn(2, 3, 20, scale=2.0), dim=-1), 0.6)


@suite.test("filters_ties_and_edges")
def filters_ties_and_edges(ctx: Context) -> None:
    # Small integer logits tie all the time: every token equal to the k-th largest is kept.
    tied = torch.randint(0, 4, (6, 16), generator=ctx.generator).float()
    for top_k in (2, 5):
        _check_top_k(ctx, tied, top_k)
    _check_top_k(ctx, ctx.randn(3, 10), 100)  # k larger than the vocabulary keeps everything
    _check_top_k(ctx, ctx.randn(3, 12, dtype=torch.float64), 3)
    # Exactly representable probabilities with ties at the nucleus boundary.
    quarters = torch.tensor([0.25, 0.25, 0.25, 0.125, 0.125])
    rows = torch.stack([quarters[torch.randperm(5, generator=ctx.generator)] for _ in range(4)])
    for top_p in (0.5, 0.6, 1e-6):
        _check_top_p(ctx, rows, top_p)
    _check_top_p(ctx, torch.tensor([[0.4, 0.4, 0.1, 0.1]]), 0.3)  # the tied maxima are both kept
    _check_top_p(ctx, torch.softmax(ctx.randn(3, 30), dim=-1), 1.0)  # top_p = 1 keeps every token
    _check_top_p(ctx, torch.softmax(ctx.randn(2, 3, 9, dtype=torch.float64), dim=-1), 0.7)


@suite.test("sample_greedy")
def sample_greedy(ctx: Context) -> None:
    for shape in ((5, 30), (2, 3, 30)):
        logits = ctx.randn(*shape, scale=2.0)
        logits[..., 0, 7] = logits[..., 0, 21] = logits.amax() + 1.0  # a tie: the lower id wins
        for top_k, top_p in ((None, None), (3, 0.5)):
            ids = ctx.call("sample", logits, 0.0, top_k, top_p, 1234)
            what = f"sample(logits of shape {shape}, temperature=0, top_k={top_k}, top_p={top_p})"
            ctx.check_equal(ids, ref_generate.sample(logits, temperature=0.0), what=what)


def _reference_probs(logits: Tensor, temperature: float, top_k: int | None, top_p: float | None) -> Tensor:
    """The distribution ``reference_impl.generate.sample`` draws from, row by row."""
    scores = logits.double() / temperature
    if top_k is not None:
        scores = scores.masked_fill(~ref_generate.top_k_mask(scores, top_k), float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    if top_p is not None and top_p < 1:
        probs = probs.masked_fill(~ref_generate.top_p_mask(probs, top_p), 0.0)
        probs = probs / probs.sum(dim=-1, keepdim=True)
    return probs


def _check_frequencies(ctx: Context, ids: Tensor, row_of_draw: Tensor, probs: Tensor, what: str) -> None:
    """Draw ``i`` came from row ``row_of_draw[i]`` of ``probs``: every token drawn must be allowed, and each
    token's frequency must lie within SAMPLING_SIGMAS standard errors of its probability."""
    vocab = probs.shape[-1]
    if bool(((ids < 0) | (ids >= vocab)).any()):
        ctx.fail(f"{what} returned token ids outside [0, {vocab})")
    for row in range(probs.shape[0]):
        drawn = ids[row_of_draw == row]
        allowed = probs[row] > 0
        if not bool(allowed[drawn].all()):
            ctx.fail(f"{what} drew a token that top-k/top-p filtering removes")
        counts = torch.bincount(drawn, minlength=vocab).double()
        draws = drawn.numel()
        error = (counts / draws - probs[row]).abs()
        bound = SAMPLING_SIGMAS * (probs[row] * (1 - probs[row]) / draws).sqrt() + 2.0 / draws
        if bool((error > bound).any()):
            token = int((error - bound).argmax())
            ctx.fail(
                f"{what}: the frequency of token {token} over {draws} draws is more than "
                f"{SAMPLING_SIGMAS:g} standard errors from its probability"
            )


@suite.test("sample_distribution")
def sample_distribution(ctx: Context) -> None:
    vocab = 10
    cases = ((1.0, None, None), (0.7, 5, None), (1.3, None, 0.8), (1.0, 6, 0.7))
    for temperature, top_k, top_p in cases:
        rows = ctx.randn(2, vocab, scale=1.5)
        row_of_draw = torch.arange(SAMPLING_DRAWS) % 2  # the two rows interleaved
        logits = rows[row_of_draw]  # (N, V)
        seed = ctx.rng.randrange(2**31)
        what = f"sample(temperature={temperature:g}, top_k={top_k}, top_p={top_p}, seed={seed})"
        ids = ctx.call("sample", logits, temperature, top_k, top_p, seed)
        ctx.check_tensor(ids, shape=(SAMPLING_DRAWS,), dtype=torch.int64, what=f"the result of {what}")
        _check_frequencies(ctx, ids, row_of_draw, _reference_probs(rows, temperature, top_k, top_p), what)
    logits = ctx.randn(4, 8, 16)
    seed = ctx.rng.randrange(2**31)
    first = ctx.call("sample", logits, 1.0, None, 0.9, seed)
    ctx.check_tensor(first, shape=(4, 8), dtype=torch.int64, what="sample of logits of shape (4, 8, 16)")
    again = ctx.call("sample", logits, 1.0, None, 0.9, seed)
    ctx.check_equal(again, first, what=f"a second sample with the same seed ({seed})")


# -- generation ------------------------------------------------------------------------------------------------


def _call_generate(
    ctx: Context, model: Transformer, prompts: list[list[int]], max_new_tokens: int, **options: Any
) -> Any:
    return ctx.call(
        "generate", _state_dict(model), _args_dict(model.args), prompts, max_new_tokens, **options
    )


@suite.test("generate_greedy_single")
def generate_greedy_single(ctx: Context) -> None:
    model = _build_model(ctx, _model_args())
    prompts, expected, _ = _clear_prompts(ctx, model, [7], 24)
    out = _call_generate(ctx, model, prompts, 24, temperature=0.0)
    _check_token_lists(ctx, out, expected, "generate of one prompt of 7 tokens, 24 new tokens, greedy")


@suite.test("generate_greedy_batched_padding")
def generate_greedy_batched_padding(ctx: Context) -> None:
    # Ragged prompts (left padding), grouped-query then multi-query attention and another RoPE base.
    for overrides, lengths, new_tokens in (
        ({}, [1, 12, 5, 9, 3], 16),
        ({"n_kv_heads": 1, "rope_theta": 500000.0}, [4, 11, 7], 12),
    ):
        model = _build_model(ctx, _model_args(**overrides))
        prompts, expected, _ = _clear_prompts(ctx, model, lengths, new_tokens)
        out = _call_generate(ctx, model, prompts, new_tokens, temperature=0.0)
        what = f"generate of prompts of lengths {lengths}, {new_tokens} new tokens, greedy"
        _check_token_lists(ctx, out, expected, what)


@suite.test("generate_eos_and_limits")
def generate_eos_and_limits(ctx: Context) -> None:
    model = _build_model(ctx, _model_args())
    lengths, new_tokens = [5, 8, 3], 14
    prompts, full, _ = _clear_prompts(ctx, model, lengths, new_tokens)
    eos_id = full[1][4]  # the fifth token of row 1: that row, at least, stops early
    expected = [row[: row.index(eos_id) + 1] if eos_id in row else row for row in full]
    out = _call_generate(ctx, model, prompts, new_tokens, temperature=0.0, eos_id=eos_id)
    _check_token_lists(ctx, out, expected, f"generate with eos_id={eos_id} (rows stop after it)")
    out = _call_generate(ctx, model, prompts, 0, temperature=0.0)
    _check_token_lists(ctx, out, [[] for _ in prompts], "generate with max_new_tokens=0")
    out = _call_generate(ctx, model, prompts, 1, temperature=0.0)
    _check_token_lists(ctx, out, [row[:1] for row in full], "generate with max_new_tokens=1")


@suite.test("generate_sampling")
def generate_sampling(ctx: Context) -> None:
    model = _build_model(ctx, _model_args())
    lengths, new_tokens = [6, 2, 9], 10
    prompts, greedy, _ = _clear_prompts(ctx, model, lengths, new_tokens)
    seed = ctx.rng.randrange(2**31)
    out = _call_generate(ctx, model, prompts, new_tokens, temperature=0.8, top_k=1, seed=seed)
    _check_token_lists(ctx, out, greedy, "generate with top_k=1 (which leaves only the best token)")
    options = {"temperature": 1.0, "top_k": 50, "top_p": 0.9, "seed": seed}
    first = _call_generate(ctx, model, prompts, new_tokens, **options)
    ctx.check(
        type(first) is list
        and len(first) == len(prompts)
        and all(type(row) is list and len(row) == new_tokens for row in first)
        and all(type(token) is int and 0 <= token < model.args.vocab_size for row in first for token in row),
        f"generate with sampling must return {len(prompts)} lists of {new_tokens} token ids in "
        f"[0, {model.args.vocab_size})",
    )
    second = _call_generate(ctx, model, prompts, new_tokens, **options)
    _check_token_lists(ctx, second, first, f"a second sampled generate with the same seed ({seed})")


@suite.test("generate_throughput")
def generate_throughput(ctx: Context) -> None:
    """The leaderboard: new tokens per second of generate, timed by the grader around the whole call, with
    fresh prompts each run and every output checked token for token."""
    model = _build_model(ctx, _model_args())
    state_dict, model_args = _state_dict(model), _args_dict(model.args)
    lengths = list(THROUGHPUT_PROMPT_LENGTHS)
    new_tokens = len(lengths) * THROUGHPUT_NEW_TOKENS
    what = f"generate of {len(lengths)} prompts of lengths {lengths[0]}..{lengths[-1]}, greedy"
    student_s, reference_s = [], []
    for run in range(1 + THROUGHPUT_RUNS):  # the first run warms up
        with _one_thread():  # the reference's time, on what a sandbox gets
            prompts, expected, seconds = _clear_prompts(ctx, model, lengths, THROUGHPUT_NEW_TOKENS)
        result = ctx.invoke(
            "generate", state_dict, model_args, prompts, THROUGHPUT_NEW_TOKENS, temperature=0.0
        )
        _check_token_lists(ctx, result.value, expected, what)
        if run:
            student_s.append(result.wall_s)
            reference_s.append(seconds)
    ctx.metric("tokens_per_s", new_tokens / statistics.median(student_s))
    ctx.metric("tokens_per_s_reference", new_tokens / statistics.median(reference_s))


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# -- tensor parallelism and ZeRO-1 -----------------------------------------------------------------------------

WORLD_SIZE = 2


def _rank_values(ctx: Context, result: Any, key: str, what: str) -> list:
    if type(result) is not dict or key not in result:
        ctx.fail(f"{what} must return a dict with the key {key!r} (the launcher's result)")
    values = result[key]
    if type(values) is not list or len(values) != WORLD_SIZE:
        ctx.fail(f"{what}: result[{key!r}] must be a list with one entry per rank ({WORLD_SIZE})")
    return values


def _check_ranks(
    ctx: Context, result: Any, key: str, expected: list[Tensor], what: str, tolerance: dict = PARALLEL_F64
) -> None:
    """Rank ``r``'s ``result[key]`` must match ``expected[r]``."""
    for rank, (actual, want) in enumerate(zip(_rank_values(ctx, result, key, what), expected, strict=True)):
        label = f"{key} on rank {rank} of {what}"
        if actual is None:
            ctx.fail(f"{label} is None: no gradient reached it (is the communication differentiable?)")
        ctx.check_close(actual, want, what=label, **tolerance)


def _backward(out: Tensor, grad_output: Tensor) -> None:
    """``out.backward(grad_output)`` as the gradient of ``(out * grad_output).sum()`` (the same numbers):
    passing a gradient tensor to ``backward`` imports sympy, seconds the first time."""
    (out * grad_output).sum().backward()


def _leaf(tensor: Tensor) -> Tensor:
    return tensor.detach().clone().requires_grad_(True)


def _shards(full: Tensor, dim: int) -> list[Tensor]:
    return list(full.chunk(WORLD_SIZE, dim=dim))


@suite.test("tp_column_parallel_linear")
def tp_column_parallel_linear(ctx: Context) -> None:
    for gather_output in (True, False):
        x = ctx.randn(3, 5, 12, dtype=torch.float64)
        weight, bias = ctx.randn(8, 12, dtype=torch.float64), ctx.randn(8, dtype=torch.float64)
        grad_output = ctx.randn(3, 5, 8, dtype=torch.float64)
        result = ctx.call("tp_column_parallel_linear", x, weight, bias, grad_output, gather_output)
        what = (
            f"tp_column_parallel_linear (x {tuple(x.shape)}, weight (8, 12), gather_output={gather_output})"
        )
        x_, w_, b_ = _leaf(x), _leaf(weight), _leaf(bias)
        out = F.linear(x_, w_, b_)
        _backward(out, grad_output)
        expected_out = [out.detach()] * WORLD_SIZE if gather_output else _shards(out.detach(), -1)
        _check_ranks(ctx, result, "out", expected_out, what)
        _check_ranks(ctx, result, "grad_x", [x_.grad] * WORLD_SIZE, what)
        _check_ranks(ctx, result, "grad_weight", _shards(w_.grad, 0), what)
        _check_ranks(ctx, result, "grad_bias", _shards(b_.grad, 0), what)


@suite.test("tp_row_parallel_linear")
def tp_row_parallel_linear(ctx: Context) -> None:
    for input_is_parallel in (False, True):
        x = ctx.randn(4, 2, 12, dtype=torch.float64)
        weight, bias = ctx.randn(6, 12, dtype=torch.float64), ctx.randn(6, dtype=torch.float64)
        grad_output = ctx.randn(4, 2, 6, dtype=torch.float64)
        result = ctx.call("tp_row_parallel_linear", x, weight, bias, grad_output, input_is_parallel)
        what = f"tp_row_parallel_linear (x {tuple(x.shape)}, weight (6, 12), input_is_parallel={input_is_parallel})"
        x_, w_, b_ = _leaf(x), _leaf(weight), _leaf(bias)
        out = F.linear(x_, w_, b_)
        _backward(out, grad_output)
        _check_ranks(ctx, result, "out", [out.detach()] * WORLD_SIZE, what)
        grad_x = _shards(x_.grad, -1) if input_is_parallel else [x_.grad] * WORLD_SIZE
        _check_ranks(ctx, result, "grad_x", grad_x, what)
        _check_ranks(ctx, result, "grad_weight", _shards(w_.grad, 1), what)
        _check_ranks(ctx, result, "grad_bias", [b_.grad] * WORLD_SIZE, what)


@suite.test("tp_parallel_mlp")
def tp_parallel_mlp(ctx: Context) -> None:
    dim, hidden = 16, 24
    x, grad_output = ctx.randn(2, 5, dim, dtype=torch.float64), ctx.randn(2, 5, dim, dtype=torch.float64)
    dense = FeedForward(dim, hidden).double()
    with torch.no_grad():
        for linear in (dense.w1, dense.w2, dense.w3):
            linear.weight.copy_(ctx.randn(*linear.weight.shape, scale=0.3, dtype=torch.float64))
    w1, w2, w3 = (linear.weight.detach().clone() for linear in (dense.w1, dense.w2, dense.w3))
    result = ctx.call("tp_feed_forward", x, w1, w2, w3, grad_output)
    what = f"tp_feed_forward (x {tuple(x.shape)}, hidden_dim {hidden})"
    x_ = _leaf(x)
    out = dense(x_)
    _backward(out, grad_output)
    _check_ranks(ctx, result, "out", [out.detach()] * WORLD_SIZE, what)
    _check_ranks(ctx, result, "grad_x", [x_.grad] * WORLD_SIZE, what)
    _check_ranks(ctx, result, "grad_w1", _shards(dense.w1.weight.grad, 0), what)
    _check_ranks(ctx, result, "grad_w3", _shards(dense.w3.weight.grad, 0), what)
    _check_ranks(ctx, result, "grad_w2", _shards(dense.w2.weight.grad, 1), what)


@suite.test("tp_parallel_attention")
def tp_parallel_attention(ctx: Context) -> None:
    for n_heads, n_kv_heads, rope_theta in ((4, 2, 10000.0), (4, 4, 500000.0)):
        dim, batch, seq_len = 32, 2, 6
        args = ModelArgs(
            dim=dim,
            n_layers=1,
            n_heads=n_heads,
            n_kv_heads=n_kv_heads,
            vocab_size=1,
            hidden_dim=1,
            rope_theta=rope_theta,
            max_seq_len=seq_len,
        )
        dense = Attention(args).double()
        with torch.no_grad():
            for name in ("wq", "wk", "wv", "wo"):
                weight = getattr(dense, name).weight
                weight.copy_(ctx.randn(*weight.shape, scale=0.3, dtype=torch.float64))
        weights = [getattr(dense, name).weight.detach().clone() for name in ("wq", "wk", "wv", "wo")]
        x = ctx.randn(batch, seq_len, dim, dtype=torch.float64)
        grad_output = ctx.randn(batch, seq_len, dim, dtype=torch.float64)
        result = ctx.call("tp_attention", x, *weights, n_heads, n_kv_heads, rope_theta, grad_output)
        what = f"tp_attention (x {tuple(x.shape)}, {n_heads} query and {n_kv_heads} key/value heads)"
        x_ = _leaf(x)
        freqs_cis = precompute_freqs_cis(args.head_dim, seq_len, rope_theta)  # (T, D/2, 2)
        out = dense(x_, freqs_cis, None, None)  # causal, no cache
        _backward(out, grad_output)
        _check_ranks(ctx, result, "out", [out.detach()] * WORLD_SIZE, what)
        _check_ranks(ctx, result, "grad_x", [x_.grad] * WORLD_SIZE, what)
        for name, dim_split in (("wq", 0), ("wk", 0), ("wv", 0), ("wo", 1)):
            grad = getattr(dense, name).weight.grad
            _check_ranks(ctx, result, f"grad_{name}", _shards(grad, dim_split), what)


@suite.test("zero1_optimizer")
def zero1_optimizer(ctx: Context) -> None:
    # 35 + 7 + 21 = 63 elements: the ranks own 31 and 32, and the boundary cuts the first tensor in two.
    shapes = [(7, 5), (7,), (3, 7)]
    steps = 3
    hyper = {"lr": 0.05, "betas": [0.9, 0.99], "eps": 1e-8, "weight_decay": 0.1}
    params = [ctx.randn(*shape, dtype=torch.float64) for shape in shapes]
    grads = [
        [[ctx.randn(*shape, dtype=torch.float64) for shape in shapes] for _ in range(WORLD_SIZE)]
        for _ in range(steps)
    ]
    result = ctx.call("zero1_adamw", params, grads, **hyper)
    what = f"zero1_adamw ({steps} steps over parameters of shapes {shapes})"

    reference = [_leaf(p) for p in params]
    optimizer = torch.optim.AdamW(
        reference,
        lr=hyper["lr"],
        betas=tuple(hyper["betas"]),
        eps=hyper["eps"],
        weight_decay=hyper["weight_decay"],
    )
    for step_grads in grads:
        for index, p in enumerate(reference):
            p.grad = torch.stack([step_grads[rank][index] for rank in range(WORLD_SIZE)]).mean(dim=0)
        optimizer.step()
    final = [p.detach() for p in reference]
    for rank, rank_params in enumerate(_rank_values(ctx, result, "params", what)):
        if type(rank_params) is not list or len(rank_params) != len(shapes):
            ctx.fail(f"{what}: params on rank {rank} must be a list of {len(shapes)} tensors")
        for index, (actual, want) in enumerate(zip(rank_params, final, strict=True)):
            ctx.check_close(
                actual, want, what=f"parameter {index} on rank {rank} after {what}", **PARALLEL_F64
            )

    numel = sum(p.numel() for p in params)
    bounds = partition_bounds(numel, WORLD_SIZE)
    for rank, actual in enumerate(_rank_values(ctx, result, "bounds", what)):
        if type(actual) is not list or not all(type(value) is int for value in actual):
            ctx.fail(f"{what}: the bounds of rank {rank} must be a list of two ints")
        ctx.check_equal(actual, list(bounds[rank]), what=f"the partition bounds of rank {rank} ({what})")
    for key in ("exp_avg", "exp_avg_sq"):
        flat = torch.cat([optimizer.state[p][key].reshape(-1) for p in reference])
        shards = [flat[start:end] for start, end in bounds]
        _check_ranks(ctx, result, key, shards, f"{what} (each rank keeps the state of its partition only)")


# -- retrieval -------------------------------------------------------------------------------------------------


def _corpus() -> list[dict]:
    documents, _ = ref_rag.load_sample_corpus()
    return [{"id": document["id"], "text": document["text"]} for document in documents]


@suite.test("rag_chunking")
def rag_chunking(ctx: Context) -> None:
    words = [f"w{index}" for index in range(23)]
    texts = [
        " ".join(words),
        "  leading and trailing   spaces\nand a newline\tand a tab  ",
        "short text",
        " ".join(words[:8]),  # exactly one chunk of 8
        "   ",
        _corpus()[ctx.rng.randrange(10)]["text"],
    ]
    for chunk_size, chunk_overlap in ((8, 3), (5, 0), (4, 3), (30, 10)):
        for index, text in enumerate(texts):
            chunks = ctx.call("chunk_words", text, chunk_size, chunk_overlap)
            what = f"chunk_words(text {index}, chunk_size={chunk_size}, chunk_overlap={chunk_overlap})"
            expected = ref_rag.chunk_words(text, chunk_size, chunk_overlap)
            if type(chunks) is not list or not all(type(chunk) is str for chunk in chunks):
                ctx.fail(f"{what} must return a list of str")
            ctx.check_equal(chunks, expected, what=what)


@suite.test("rag_embeddings")
def rag_embeddings(ctx: Context) -> None:
    corpus = _corpus()
    texts = [
        "How do bees tell each other where the flowers are?",
        corpus[ctx.rng.randrange(len(corpus))]["text"],
        "tea",
        " ".join(document["text"] for document in corpus[:5]),  # far more than 256 word pieces: truncated
    ]
    vectors = ctx.call("embed", texts)
    expected = ref_rag.shipped_embedder().encode(texts)
    ctx.check_close(vectors, expected, what=f"embed of {len(texts)} texts", **EMBEDDING_F32)


def _retrieved_ids(ctx: Context, value: Any, n_queries: int, length: int, ids: set, what: str) -> list[list]:
    if type(value) is not list or len(value) != n_queries:
        ctx.fail(f"{what} must return one list of document ids per query ({n_queries})")
    for row in value:
        if type(row) is not list or len(row) != length or not all(type(doc_id) is str for doc_id in row):
            ctx.fail(f"{what} must return, for every query, a list of {length} document ids (str)")
        if not set(row) <= ids:
            ctx.fail(f"{what} returned a document id that is not in the corpus")
    return value


@suite.test("rag_retrieve_small")
def rag_retrieve_small(ctx: Context) -> None:
    documents, questions = ref_rag.load_sample_corpus()
    chosen = ctx.rng.sample(range(len(documents)), 8)
    corpus = [{"id": documents[i]["id"], "text": documents[i]["text"]} for i in chosen]
    ids = {document["id"] for document in corpus}
    pairs = [(question, gold) for question, gold in questions if gold in ids][:5]
    k, chunk_size, chunk_overlap = 3, 30, 5
    queries = [question for question, _ in pairs]
    value = ctx.call("retrieve", corpus, queries, k, chunk_size, chunk_overlap)
    what = f"retrieve over {len(corpus)} documents (k={k}, chunk_size={chunk_size}, chunk_overlap={chunk_overlap})"
    results = _retrieved_ids(ctx, value, len(queries), k, ids, what)
    reference = _reference_search(
        tuple(document["id"] for document in corpus), tuple(queries), k, chunk_size, chunk_overlap
    )
    for index, (row, passages) in enumerate(zip(results, reference, strict=True)):
        # The best chunk must agree with the reference wherever the reference's choice is clear-cut.
        if passages[0].score - passages[1].score > 0.02 and row[0] != passages[0].doc_id:
            ctx.fail(f"{what}: query {index}'s best chunk comes from a different document than expected")


@functools.lru_cache(maxsize=8)
def _reference_search(
    doc_ids: tuple[str, ...], queries: tuple[str, ...], k: int, chunk_size: int, chunk_overlap: int
) -> list[list[ref_rag.Passage]]:
    """The reference retriever's results (the embedding model is slow on a CPU; a regrade reuses them)."""
    texts = {document["id"]: document["text"] for document in _corpus()}
    corpus = [{"id": doc_id, "text": texts[doc_id]} for doc_id in doc_ids]
    return ref_rag.Retriever(corpus, chunk_size, chunk_overlap).search_batch(list(queries), k)


@suite.test("rag_recall_hidden")
def rag_recall_hidden(ctx: Context) -> None:
    lines = HIDDEN_QUESTIONS.read_text(encoding="utf-8").splitlines()
    pairs = [(entry["question"], entry["doc_id"]) for entry in map(json.loads, filter(None, lines))]
    ctx.rng.shuffle(pairs)
    corpus = _corpus()
    chunk_size, chunk_overlap = 40, 10
    queries = [question for question, _ in pairs]
    value = ctx.call("retrieve", corpus, queries, RECALL_K, chunk_size, chunk_overlap)
    what = f"retrieve of {len(queries)} hidden questions (k={RECALL_K})"
    results = _retrieved_ids(ctx, value, len(queries), RECALL_K, {d["id"] for d in corpus}, what)
    recall = sum(gold in row for row, (_, gold) in zip(results, pairs, strict=True)) / len(pairs)
    ctx.metric("recall_at_5", recall)
    ctx.check(
        recall >= RECALL_THRESHOLD,
        f"recall@{RECALL_K} on the hidden questions is {recall:.3f}, below the required {RECALL_THRESHOLD:.2f}",
    )
