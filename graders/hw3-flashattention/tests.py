"""Hidden tests of HW3, FlashAttention in Triton (trusted side: never copied into the sandbox).

Expected values: reference_impl.kernels.flash_attention.attention_reference (naive softmax attention with the
same conventions as the reference kernels) evaluated in float64 on the very inputs the student gets, its
gradients by torch.autograd, then cast to the inputs' dtype. The log-sum-exp is computed here from the same
float64 scores.

Without a GPU the student's kernels run in Triton's interpreter (the runner sets TRITON_INTERPRET=1), which is
slow and cannot multiply bfloat16 blocks: the CPU tests use a few tiny float32 shapes. Long sequences,
bfloat16 and the leaderboard need a GPU (``requires = "gpu"``): without one they are reported as not run.
"""

import math

import torch

from graders.harness import Case, Context, Suite

suite = Suite()

# float32 against a float64 reference: a correct kernel with IEEE float32 products is ~1e-6 off on these shapes;
# the margin leaves room for any summation order, and every planted bug misses by orders of magnitude.
FP32 = {"rtol": 1e-4, "atol": 1e-4}
# Long sequences on a GPU add thousands of terms per dot product and exp2 approximations.
FP32_LONG = {"rtol": 5e-4, "atol": 5e-4}
# bfloat16: the kernel may be this many times less accurate than plain PyTorch attention computed in bfloat16
# (every tensor rounded to bfloat16, products accumulated in float32), plus a small absolute slack.
BF16_ERROR_FACTOR = 3.0
BF16_SLACK = 1e-3
# Timed calls are checked against the reference kernel's own bfloat16 output: two correct kernels differ by
# their roundings, garbage differs by far more.
BENCH_TOLERANCE = {"rtol": 3e-2, "atol": 3e-2}

# Shapes are (B, H, H_kv, T, S, D). Block-aligned lengths are multiples of 64; ragged ones are not multiples
# of 16 (the smallest block tl.dot accepts), and T != S. Outside the ragged tests every S is a multiple of 64.
ALIGNED_NONCAUSAL = [(1, 2, 2, 64, 64, 32), (2, 1, 1, 64, 128, 16)]
ALIGNED_CAUSAL = [(1, 2, 2, 64, 64, 16), (1, 1, 1, 128, 128, 32)]
RAGGED = [  # (shape, causal)
    ((1, 2, 2, 1, 1, 16), False),
    ((1, 2, 2, 17, 45, 32), True),
    ((2, 1, 1, 50, 23, 16), True),
    ((1, 1, 1, 37, 37, 64), False),
]
GQA = [((1, 4, 2, 64, 64, 16), True), ((1, 8, 2, 32, 64, 16), False)]  # groups of 2 and 4 query heads


def _describe(shape: tuple[int, ...], causal: bool, dtype: torch.dtype = torch.float32) -> str:
    batch, heads, kv_heads, seq_q, seq_k, head_dim = shape
    kind = "causal" if causal else "non-causal"
    precision = str(dtype).removeprefix("torch.")
    return (
        f"q {(batch, heads, seq_q, head_dim)}, k/v {(batch, kv_heads, seq_k, head_dim)}, {kind}, {precision}"
    )


def _inputs(
    ctx: Context, shape: tuple[int, ...], dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    batch, heads, kv_heads, seq_q, seq_k, head_dim = shape
    return (
        ctx.randn(batch, heads, seq_q, head_dim, dtype=dtype),
        ctx.randn(batch, kv_heads, seq_k, head_dim, dtype=dtype),
        ctx.randn(batch, kv_heads, seq_k, head_dim, dtype=dtype),
    )


def _scale(q: torch.Tensor, sm_scale: float | None) -> float:
    return 1.0 / math.sqrt(q.shape[-1]) if sm_scale is None else sm_scale


def reference_lse(
    q: torch.Tensor, k: torch.Tensor, causal: bool, sm_scale: float | None = None
) -> torch.Tensor:
    """``lse[b, h, i] = log(sum_j exp(sm_scale * q_i . k_j))`` over the keys query ``i`` sees; float32."""
    group = q.shape[1] // k.shape[1]
    keys = k.double().repeat_interleave(group, dim=1)  # (B, H, S, D)
    scores = q.double() @ keys.transpose(-2, -1) * _scale(q, sm_scale)  # (B, H, T, S)
    if causal:
        visible = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~visible, float("-inf"))
    return torch.logsumexp(scores, dim=-1).float()


def reference_output(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, sm_scale: float | None = None
) -> torch.Tensor:
    """The attention output in float64."""
    # Imported here: the module loads Triton, which only a grading run needs, not every process that reads
    # this package (the server validates it when it is published).
    from reference_impl.kernels.flash_attention import attention_reference

    return attention_reference(q.double(), k.double(), v.double(), causal=causal, sm_scale=sm_scale)


def reference_gradients(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    grad_output: torch.Tensor,
    causal: bool,
    sm_scale: float | None = None,
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """The output and the gradients (dq, dk, dv) for ``grad_output``, all in float64, by torch.autograd."""
    from reference_impl.kernels.flash_attention import attention_reference

    leaves = [tensor.detach().double().requires_grad_() for tensor in (q, k, v)]
    with torch.enable_grad():
        out = attention_reference(*leaves, causal=causal, sm_scale=sm_scale)
        out.backward(grad_output.double())
    return out.detach(), tuple(leaf.grad for leaf in leaves)


def _unpack(ctx: Context, result: object, names: tuple[str, ...], fn: str, what: str) -> list:
    """The items of a tuple result, after checking there are as many as the interface promises."""
    if isinstance(result, list) and len(result) == len(names):
        return result
    got = f"a tuple of {len(result)}" if isinstance(result, list) else f"a {type(result).__name__}"
    ctx.fail(f"{fn} must return a tuple ({', '.join(names)}) for {what}; it returned {got}")
    raise AssertionError("unreachable: ctx.fail raises")


def _check_forward(
    ctx: Context,
    shape: tuple[int, ...],
    causal: bool,
    *,
    check_output: bool = True,
    check_lse: bool = True,
    sm_scale: float | None = None,
    tolerance: dict | None = None,
) -> None:
    q, k, v = _inputs(ctx, shape)
    kwargs = {"causal": causal} if sm_scale is None else {"causal": causal, "sm_scale": sm_scale}
    result = ctx.call("flash_attention_forward", q, k, v, **kwargs)
    described = _describe(shape, causal) + ("" if sm_scale is None else f", sm_scale={sm_scale:g}")
    out, lse = _unpack(ctx, result, ("o", "lse"), "flash_attention_forward", described)
    what = f"flash_attention_forward for {described}"
    tolerance = tolerance or FP32
    if check_output:
        expected = reference_output(q, k, v, causal, sm_scale)
        ctx.check_close(out, expected.to(q.dtype), what=f"the output o of {what}", **tolerance)
    if check_lse:
        expected_lse = reference_lse(q, k, causal, sm_scale)
        ctx.check_close(lse, expected_lse, what=f"the log-sum-exp lse of {what}", **tolerance)


def _check_gradients(
    ctx: Context,
    fn: str,
    what: str,
    grads: object,
    expected: tuple[torch.Tensor, ...],
    tolerances: dict | tuple[dict, ...],
) -> None:
    if isinstance(grads, tuple):  # call_grad's gradients (its own check has their number right)
        grads = list(grads)
    actual_grads = _unpack(ctx, grads, ("dq", "dk", "dv"), fn, what)
    per_grad = tolerances if isinstance(tolerances, tuple) else (tolerances,) * 3
    for name, actual, wanted, tolerance in zip(
        ("dq", "dk", "dv"), actual_grads, expected, per_grad, strict=True
    ):
        if actual is None:
            ctx.fail(f"{fn}: no gradient reached {name[1:]} for {what}")
        ctx.check_close(actual, wanted, what=f"{name} of {fn} for {what}", **tolerance)


def _check_backward(
    ctx: Context,
    shape: tuple[int, ...],
    causal: bool,
    *,
    sm_scale: float | None = None,
    tolerance: dict | None = None,
) -> None:
    q, k, v = _inputs(ctx, shape)
    grad_output = ctx.randn(*q.shape)
    out, grads = reference_gradients(q, k, v, grad_output, causal, sm_scale)
    # o and lse come from the reference, so this test sees the backward pass alone.
    out = out.to(q.dtype)
    lse = reference_lse(q, k, causal, sm_scale)
    kwargs = {"causal": causal} if sm_scale is None else {"causal": causal, "sm_scale": sm_scale}
    result = ctx.call("flash_attention_backward", q, k, v, out, lse, grad_output, **kwargs)
    what = _describe(shape, causal) + ("" if sm_scale is None else f", sm_scale={sm_scale:g}")
    expected = tuple(grad.to(q.dtype) for grad in grads)
    _check_gradients(ctx, "flash_attention_backward", what, result, expected, tolerance or FP32)


@suite.test("forward_noncausal")
def forward_noncausal(ctx: Context) -> None:
    for shape in ALIGNED_NONCAUSAL:
        _check_forward(ctx, shape, False, check_lse=False)


@suite.test("forward_causal")
def forward_causal(ctx: Context) -> None:
    for shape in ALIGNED_CAUSAL:
        _check_forward(ctx, shape, True, check_lse=False)


@suite.test("forward_lse")
def forward_lse(ctx: Context) -> None:
    _check_forward(ctx, ALIGNED_NONCAUSAL[0], False, check_output=False)
    _check_forward(ctx, ALIGNED_CAUSAL[0], True, check_output=False)


@suite.test("forward_ragged")
def forward_ragged(ctx: Context) -> None:
    for shape, causal in RAGGED:
        _check_forward(ctx, shape, causal)


@suite.test("forward_gqa")
def forward_gqa(ctx: Context) -> None:
    for shape, causal in GQA:
        _check_forward(ctx, shape, causal)


@suite.test("backward_noncausal")
def backward_noncausal(ctx: Context) -> None:
    for shape in ALIGNED_NONCAUSAL:
        _check_backward(ctx, shape, False)


@suite.test("backward_causal")
def backward_causal(ctx: Context) -> None:
    for shape in ALIGNED_CAUSAL:
        _check_backward(ctx, shape, True)


@suite.test("backward_ragged")
def backward_ragged(ctx: Context) -> None:
    for shape, causal in RAGGED:
        _check_backward(ctx, shape, causal)


@suite.test("backward_gqa")
def backward_gqa(ctx: Context) -> None:
    for shape, causal in GQA:
        _check_backward(ctx, shape, causal)


@suite.test("custom_scale")
def custom_scale(ctx: Context) -> None:
    # A scale other than 1/sqrt(D) must be honoured everywhere: the scores, lse, and both gradient paths.
    shape = (1, 2, 2, 64, 64, 32)
    _check_forward(ctx, shape, True, sm_scale=0.3)
    _check_backward(ctx, shape, True, sm_scale=0.3)


@suite.test("autograd_function")
def autograd_function(ctx: Context) -> None:
    for shape, causal in [((1, 2, 2, 64, 64, 32), True), ((1, 2, 2, 32, 64, 16), False)]:
        q, k, v = _inputs(ctx, shape)
        grad_output = ctx.randn(*q.shape)
        out, grads = ctx.call_grad(
            "flash_attention", q, k, v, grad_output=grad_output, wrt=(0, 1, 2), causal=causal
        )
        expected_out, expected_grads = reference_gradients(q, k, v, grad_output, causal)
        what = _describe(shape, causal)
        ctx.check_close(
            out, expected_out.to(q.dtype), what=f"the output of flash_attention for {what}", **FP32
        )
        expected = tuple(grad.to(q.dtype) for grad in expected_grads)
        _check_gradients(ctx, "flash_attention (autograd)", what, grads, expected, FP32)


@suite.test("forward_backward_step")
def forward_backward_step(ctx: Context) -> None:
    shape = (1, 2, 2, 64, 64, 16)
    q, k, v = _inputs(ctx, shape)
    grad_output = ctx.randn(*q.shape)
    result = ctx.call("flash_attention_forward_backward", q, k, v, grad_output, causal=True)
    what = _describe(shape, True)
    fn = "flash_attention_forward_backward"
    out, *grads = _unpack(ctx, result, ("o", "dq", "dk", "dv"), fn, what)
    expected_out, expected_grads = reference_gradients(q, k, v, grad_output, True)
    ctx.check_close(out, expected_out.to(q.dtype), what=f"o of {fn} for {what}", **FP32)
    expected = tuple(grad.to(q.dtype) for grad in expected_grads)
    _check_gradients(ctx, fn, what, grads, expected, FP32)


@suite.test("inputs_not_mutated")
def inputs_not_mutated(ctx: Context) -> None:
    shape = (1, 2, 2, 32, 32, 16)
    q, k, v = _inputs(ctx, shape)
    ctx.check_not_mutated(
        ctx.invoke("flash_attention_forward", q, k, v, causal=True), "flash_attention_forward"
    )
    out = reference_output(q, k, v, True)
    lse = reference_lse(q, k, True)
    grad_output = ctx.randn(*q.shape)
    result = ctx.invoke("flash_attention_backward", q, k, v, out.to(q.dtype), lse, grad_output, causal=True)
    ctx.check_not_mutated(result, "flash_attention_backward")


# -- GPU only: long sequences and bfloat16 -------------------------------------------------------------------

LONG_FP32 = [  # (shape, causal): lengths well past any block size, ragged, T != S, grouped heads
    ((1, 4, 2, 1024, 1024, 64), True),
    ((2, 2, 2, 777, 1531, 128), False),
    ((1, 8, 2, 1500, 700, 32), True),
]
BF16 = [
    ((2, 8, 2, 1024, 1024, 128), True),
    ((1, 4, 4, 513, 2000, 64), False),
    ((4, 4, 1, 300, 300, 16), True),
    ((1, 6, 3, 2048, 1000, 32), True),
]


@suite.test("gpu_long_sequences")
def gpu_long_sequences(ctx: Context) -> None:
    for shape, causal in LONG_FP32:
        _check_forward(ctx, shape, causal, tolerance=FP32_LONG)
        _check_backward(ctx, shape, causal, tolerance=FP32_LONG)


def _low_precision_errors(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    grad_output: torch.Tensor,
    causal: bool,
    expected: tuple[torch.Tensor, ...],
) -> list[float]:
    """The largest error of o, dq, dk, dv of plain PyTorch attention computed in the inputs' dtype."""
    leaves = [tensor.detach().clone().requires_grad_() for tensor in (q, k, v)]
    group = q.shape[1] // k.shape[1]
    with torch.enable_grad():
        keys = leaves[1].repeat_interleave(group, dim=1)  # (B, H, S, D)
        values = leaves[2].repeat_interleave(group, dim=1)
        scores = (leaves[0] @ keys.transpose(-2, -1)).float() * _scale(q, None)  # (B, H, T, S)
        if causal:
            visible = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool, device=q.device).tril()
            scores = scores.masked_fill(~visible, float("-inf"))
        probabilities = torch.softmax(scores, dim=-1).to(q.dtype)
        out = probabilities @ values
        out.backward(grad_output)
    actual = [out.detach(), *(leaf.grad for leaf in leaves)]
    return [float((got.double() - want).abs().max()) for got, want in zip(actual, expected, strict=True)]


@suite.test("gpu_bfloat16")
def gpu_bfloat16(ctx: Context) -> None:
    for shape, causal in BF16:
        q, k, v = _inputs(ctx, shape, torch.bfloat16)
        grad_output = ctx.randn(*q.shape, dtype=torch.bfloat16)
        out64, grads64 = reference_gradients(q, k, v, grad_output, causal)
        errors = _low_precision_errors(q, k, v, grad_output, causal, (out64, *grads64))
        tolerances = [{"rtol": 0.0, "atol": BF16_ERROR_FACTOR * error + BF16_SLACK} for error in errors]
        what = _describe(shape, causal, torch.bfloat16)

        result = ctx.call("flash_attention_forward", q, k, v, causal=causal)
        out, lse_out = _unpack(ctx, result, ("o", "lse"), "flash_attention_forward", what)
        ctx.check_close(
            out,
            out64.to(q.dtype),
            what=f"the output o of flash_attention_forward for {what}",
            **tolerances[0],
        )
        lse = reference_lse(q, k, causal)
        ctx.check_close(
            lse_out, lse, what=f"the log-sum-exp lse of flash_attention_forward for {what}", **FP32_LONG
        )

        grads = ctx.call(
            "flash_attention_backward", q, k, v, out64.to(q.dtype), lse, grad_output, causal=causal
        )
        expected = tuple(grad.to(q.dtype) for grad in grads64)
        _check_gradients(ctx, "flash_attention_backward", what, grads, expected, tuple(tolerances[1:]))


# -- leaderboard (GPU): forward + backward in bfloat16 ------------------------------------------------------

# Inputs and outputs cross the sandbox boundary through the CPU, so the transport grows with B * H * T * D
# while the work grows with B * H * T * S * D: long sequences with few heads keep the kernels' share of each
# timed round trip large.
BENCHMARK_SHAPES = {  # label -> ((B, H, H_kv, T, S, D), causal)
    "b2-h16-kv4-t2048-d64-causal": ((2, 16, 4, 2048, 2048, 64), True),
    "b1-h8-kv2-t4096-d128-causal": ((1, 8, 2, 4096, 4096, 128), True),
    "b1-h8-t8192-d64": ((1, 8, 8, 8192, 8192, 64), False),
    "b1-h4-kv1-t16384-d128-causal": ((1, 4, 1, 16384, 16384, 128), True),
}


def reference_forward_backward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grad_output: torch.Tensor, causal: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The reference Triton kernels, forward then backward: what the leaderboard's speed-up compares with."""
    from reference_impl.kernels.flash_attention import flash_attention

    leaves = [tensor.detach().requires_grad_() for tensor in (q, k, v)]
    with torch.enable_grad():
        out = flash_attention(*leaves, causal=causal)
        out.backward(grad_output)
    return out.detach(), leaves[0].grad, leaves[1].grad, leaves[2].grad


@suite.benchmark(
    "fwd_bwd_ms",
    unit="ms",
    shapes=BENCHMARK_SHAPES,
    reference=reference_forward_backward,
    warmup=3,
    warmup_seconds=120.0,
    min_reps=10,
    max_reps=50,
    max_seconds=40.0,
    target_rse=0.02,
    requires="gpu",
)
def forward_backward_speed(ctx: Context, shape: tuple[tuple[int, ...], bool]) -> Case:
    dims, causal = shape
    q, k, v = _inputs(ctx, dims, torch.bfloat16)
    grad_output = ctx.randn(*q.shape, dtype=torch.bfloat16)
    return Case(
        "flash_attention_forward_backward", (q, k, v, grad_output), {"causal": causal}, **BENCH_TOLERANCE
    )
