"""Hidden tests of the warm-up assignment (trusted side: never copied into the sandbox).

Expected values come from reference_impl.functional; inputs from the per-test generator, seeded by the secret
run seed.
"""

import torch

from graders.harness import Case, Context, Suite
from reference_impl import functional as ref

suite = Suite()

# softmax of float32 is a handful of roundings: exp, sum, divide. Leave room for exp(x - logsumexp) and friends.
SOFTMAX_F32 = {"rtol": 1e-5, "atol": 1e-6}
# Half-precision inputs may be computed in half precision: allow a few units in the last place.
SOFTMAX_HALF = {
    torch.float16: {"rtol": 5e-3, "atol": 1e-4},
    torch.bfloat16: {"rtol": 4e-2, "atol": 1e-3},
}
RMS_NORM_F32 = {"rtol": 1e-5, "atol": 1e-5}


def _check_softmax(ctx: Context, x: torch.Tensor, dim: int, tolerance: dict) -> None:
    out = ctx.call("softmax", x, dim=dim)
    what = f"softmax(x, dim={dim}) for x of shape {tuple(x.shape)} and dtype {x.dtype}"
    ctx.check_close(out, ref.softmax(x, dim=dim), what=what, **tolerance)


def _check_rms_norm(ctx: Context, x: torch.Tensor, weight: torch.Tensor, eps: float | None) -> None:
    if eps is None:
        out = ctx.call("rms_norm", x, weight)
        expected = ref.rms_norm(x, weight)
        what = f"rms_norm(x, weight) with the default eps for x of shape {tuple(x.shape)}"
    else:
        out = ctx.call("rms_norm", x, weight, eps=eps)
        expected = ref.rms_norm(x, weight, eps=eps)
        what = f"rms_norm(x, weight, eps={eps:g}) for x of shape {tuple(x.shape)}"
    ctx.check_close(out, expected, what=what, **RMS_NORM_F32)


@suite.test("softmax_basic")
def softmax_basic(ctx: Context) -> None:
    for shape in [(1, 8), (4, 16), (7, 33), (32, 128)]:
        _check_softmax(ctx, ctx.randn(*shape, scale=3.0), -1, SOFTMAX_F32)


@suite.test("softmax_other_dim")
def softmax_other_dim(ctx: Context) -> None:
    x = ctx.randn(3, 5, 7, scale=2.0)
    for dim in (0, 1, -2):
        _check_softmax(ctx, x, dim, SOFTMAX_F32)


@suite.test("softmax_large_logits")
def softmax_large_logits(ctx: Context) -> None:
    # Offsets keep every entry and its row maximum within a factor of two, so x - max is exact in float32
    # and any correct implementation agrees with the reference to a few ulps.
    for offset in (1000.0, -1000.0, 30000.0):
        x = ctx.randn(6, 50, scale=5.0) + offset
        _check_softmax(ctx, x, -1, SOFTMAX_F32)
    spread = ctx.randn(4, 64, scale=200.0)
    _check_softmax(ctx, spread, -1, SOFTMAX_F32)
    masked = ctx.randn(5, 40, scale=3.0)
    masked[:, 20:] = float("-inf")  # a causal-style mask: half of every row is excluded
    masked[0, :] = torch.arange(40, dtype=torch.float32) * 50.0
    _check_softmax(ctx, masked, -1, SOFTMAX_F32)


@suite.test("softmax_half_precision")
def softmax_half_precision(ctx: Context) -> None:
    for dtype in (torch.float16, torch.bfloat16):
        for shape in [(8, 256), (2, 3, 1000)]:
            x = ctx.randn(*shape, scale=3.0, dtype=dtype)
            _check_softmax(ctx, x, -1, SOFTMAX_HALF[dtype])


@suite.test("rms_norm_basic")
def rms_norm_basic(ctx: Context) -> None:
    for rows, features in [(1, 8), (4, 64), (9, 100)]:
        x = ctx.randn(rows, features)
        weight = ctx.randn(features)
        _check_rms_norm(ctx, x, weight, eps=1e-6)


@suite.test("rms_norm_eps")
def rms_norm_eps(ctx: Context) -> None:
    # Tiny activations make eps matter: sqrt(mean(x**2) + eps) and sqrt(mean(x**2)) + eps differ ~10x here.
    x = ctx.randn(6, 48, scale=1e-3)
    x[0] = 0.0  # an all-zero row must stay zero, not become NaN
    weight = ctx.randn(48).abs() + 0.5
    _check_rms_norm(ctx, x, weight, eps=1e-4)
    _check_rms_norm(ctx, x, weight, eps=1e-2)
    _check_rms_norm(ctx, x, weight, eps=None)


@suite.test("rms_norm_batch_3d")
def rms_norm_batch_3d(ctx: Context) -> None:
    for shape in [(2, 5, 32), (4, 3, 96)]:
        x = ctx.randn(*shape, scale=2.0)
        weight = ctx.randn(shape[-1])
        _check_rms_norm(ctx, x, weight, eps=1e-5)


@suite.test("inputs_not_mutated")
def inputs_not_mutated(ctx: Context) -> None:
    x = ctx.randn(6, 32, scale=3.0)
    ctx.check_not_mutated(ctx.invoke("softmax", x, dim=-1), "softmax")
    ctx.check_not_mutated(ctx.invoke("softmax", x, dim=0), "softmax")
    weight = ctx.randn(32)
    ctx.check_not_mutated(ctx.invoke("rms_norm", x, weight, eps=1e-6), "rms_norm")


# Short and long rows; the leaderboard ranks the geometric mean, and the reference's time gives the speed-up.
@suite.benchmark(
    "softmax_ms",
    unit="ms",
    shapes={"256x1024": (256, 1024), "2048x128": (2048, 128)},
    reference=ref.softmax,
    warmup=3,
    warmup_seconds=10.0,
    min_reps=10,
    max_reps=50,
    max_seconds=4.0,
    target_rse=0.02,
)
def softmax_speed(ctx: Context, shape: tuple[int, int]) -> Case:
    x = ctx.randn(*shape, scale=3.0)
    return Case("softmax", (x,), {"dim": -1}, rtol=SOFTMAX_F32["rtol"], atol=SOFTMAX_F32["atol"])
