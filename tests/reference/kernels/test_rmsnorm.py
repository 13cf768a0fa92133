"""Fused RMSNorm kernels against ``reference_impl.functional.rms_norm``, forward and backward.

Without a GPU the kernels run through Triton's interpreter (see conftest.py). Unlike FlashAttention, RMSNorm only
loads, converts and stores float16/bfloat16 (all arithmetic is float32), which the interpreter supports, so every
dtype is tested on CPU too.
"""

import pytest
import torch

pytest.importorskip("triton")

import reference_impl.kernels.rmsnorm as kernels
from reference_impl.functional import rms_norm as rms_norm_reference
from reference_impl.kernels.rmsnorm import MAX_FEATURES, rms_norm

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
requires_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA or ROCm GPU")

# Leading shapes of every rank, ragged feature counts, more rows than the interpreter's 8 backward programs (so
# each program folds several rows into its partial weight gradient), and the largest supported row.
SHAPES = [(1,), (3, 17), (2, 5, 64), (40, 100), (2, 3, 4, 33), (7, 1000), (2, MAX_FEATURES)]
# Half precision: compare against the float64 result rounded once to the output dtype, allowing a few units in
# the last place of that dtype for the float32 arithmetic in between.
TOLERANCE = {
    torch.float32: {"atol": 1e-5, "rtol": 1e-5},
    torch.float16: {"atol": 2e-3, "rtol": 2e-3},
    torch.bfloat16: {"atol": 2e-2, "rtol": 2e-2},
}


def make_inputs(shape, dtype, weight_dtype=None, device=DEVICE, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=generator).to(device=device, dtype=dtype).requires_grad_()
    weight = 1.0 + 0.5 * torch.randn(shape[-1], generator=generator)
    return x, weight.to(device=device, dtype=weight_dtype or dtype).requires_grad_()


def reference_float64(x, weight, eps=1e-6):
    x64 = x.detach().double().requires_grad_()
    w64 = weight.detach().double().requires_grad_()
    out = rms_norm_reference(x64, w64, eps)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out.backward(grad_out.to(out.device))
    return out, grad_out, x64.grad, w64.grad


def assert_close_to(actual, expected, dtype):
    # Round the float64 truth to the dtype under test once, so the tolerance measures only the kernel's error.
    expected = expected.to(device=actual.device, dtype=actual.dtype).double()
    torch.testing.assert_close(actual.double(), expected, **TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_matches_reference(shape, dtype):
    x, weight = make_inputs(shape, dtype)
    expected, _, _, _ = reference_float64(x, weight)
    out = rms_norm(x, weight)
    assert out.shape == x.shape and out.dtype == dtype
    assert_close_to(out, expected, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_backward_matches_reference(shape, dtype):
    x, weight = make_inputs(shape, dtype)
    _, grad_out, expected_dx, expected_dw = reference_float64(x, weight)
    rms_norm(x, weight).backward(grad_out.to(device=x.device, dtype=dtype))
    assert x.grad.dtype == dtype and weight.grad.dtype == dtype
    assert_close_to(x.grad, expected_dx, dtype)
    # dweight sums over every row, so its error grows with the row count: scale the tolerance by it.
    rows = x.numel() // x.shape[-1]
    expected_dw = expected_dw.to(weight.dtype).double()
    tolerance = {name: value * max(1.0, rows**0.5) for name, value in TOLERANCE[dtype].items()}
    torch.testing.assert_close(weight.grad.double(), expected_dw.to(weight.device), **tolerance)


def test_matches_the_functional_reference_on_the_same_half_inputs():
    # Same inputs, same float32 math: the outputs agree to within one rounding of the output dtype.
    x, weight = make_inputs((6, 96), torch.bfloat16, weight_dtype=torch.float32)
    expected = rms_norm_reference(x.detach(), weight.detach())
    torch.testing.assert_close(rms_norm(x, weight), expected, atol=0.0, rtol=2**-7)


def test_weight_may_have_its_own_dtype():
    x, weight = make_inputs((5, 48), torch.float16, weight_dtype=torch.float32)
    _, grad_out, expected_dx, expected_dw = reference_float64(x, weight)
    out = rms_norm(x, weight)
    out.backward(grad_out.to(device=x.device, dtype=out.dtype))
    assert out.dtype == torch.float16 and x.grad.dtype == torch.float16 and weight.grad.dtype == torch.float32
    assert_close_to(x.grad, expected_dx, torch.float16)
    torch.testing.assert_close(weight.grad.double(), expected_dw.to(weight.device), atol=5e-3, rtol=5e-3)


def test_eps_is_inside_the_square_root():
    x, weight = make_inputs((4, 32), torch.float32)
    with torch.no_grad():
        x[0].zero_()
    out = rms_norm(x, weight, eps=0.25)
    expected, _, _, _ = reference_float64(x, weight, eps=0.25)
    assert torch.equal(out[0], torch.zeros_like(out[0]))
    assert_close_to(out, expected, torch.float32)


def test_non_contiguous_input_gives_the_contiguous_result():
    x, weight = make_inputs((24, 10), torch.float32)
    x_view = x.detach().t().contiguous().t().requires_grad_()  # same values, column-major
    assert not x_view.is_contiguous()
    torch.testing.assert_close(rms_norm(x_view, weight), rms_norm(x, weight))
    grad_out = torch.randn(24, 10, device=DEVICE)
    rms_norm(x_view, weight.detach()).backward(grad_out)
    rms_norm(x, weight.detach()).backward(grad_out)
    torch.testing.assert_close(x_view.grad, x.grad)


def test_weight_gradient_is_skipped_when_not_needed():
    x, weight = make_inputs((9, 40), torch.float32)
    weight.requires_grad_(False)
    _, grad_out, expected_dx, _ = reference_float64(x, weight)
    rms_norm(x, weight).backward(grad_out.float().to(x.device))
    assert weight.grad is None
    assert_close_to(x.grad, expected_dx, torch.float32)


def test_kernels_are_interpreted_without_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the kernels are compiled for it")
    assert kernels.INTERPRETED


def test_refuses_cpu_tensors_when_the_kernels_are_compiled(monkeypatch):
    monkeypatch.setattr(kernels, "INTERPRETED", False)
    x, weight = make_inputs((2, 8), torch.float32, device="cpu")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        rms_norm(x, weight)


@pytest.mark.parametrize(
    ("x_shape", "weight_shape", "message"),
    [
        ((4, 8), (7,), "weight must have shape"),
        ((4, 8), (1, 8), "weight must have shape"),
        ((), (1,), "at least one dimension"),
        ((0, 8), (8,), "at least one dimension"),
        ((2, MAX_FEATURES + 1), (MAX_FEATURES + 1,), "at most"),
    ],
)
def test_rejects_bad_shapes(x_shape, weight_shape, message):
    with pytest.raises(ValueError, match=message):
        rms_norm(torch.zeros(x_shape, device=DEVICE), torch.ones(weight_shape, device=DEVICE))


@pytest.mark.parametrize("dtype", [torch.float64, torch.int32])
def test_rejects_unsupported_dtypes(dtype):
    with pytest.raises(ValueError, match="float16, bfloat16 or float32"):
        rms_norm(torch.zeros(2, 8, device=DEVICE, dtype=dtype), torch.ones(8, device=DEVICE))


def test_rejects_mixed_devices():
    with pytest.raises(ValueError, match="one device"):
        rms_norm(torch.zeros(2, 8, device=DEVICE), torch.ones(8, device="meta"))


@pytest.mark.parametrize("eps", [-1e-6, float("inf"), float("nan")])
def test_rejects_bad_eps(eps):
    with pytest.raises(ValueError, match="eps"):
        rms_norm(torch.zeros(2, 8, device=DEVICE), torch.ones(8, device=DEVICE), eps=eps)


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [(4096, 4096), (8, 512, 8192), (1000, 16384), (3, 7, 4099)], ids=str)
def test_gpu_large_shapes(shape, dtype):
    x, weight = make_inputs(shape, dtype, device="cuda")
    expected, grad_out, expected_dx, expected_dw = reference_float64(x, weight)
    out = rms_norm(x, weight)
    out.backward(grad_out.to(device="cuda", dtype=dtype))
    assert_close_to(out, expected, dtype)
    assert_close_to(x.grad, expected_dx, dtype)
    rows = x.numel() // x.shape[-1]
    tolerance = {name: value * rows**0.5 for name, value in TOLERANCE[dtype].items()}
    torch.testing.assert_close(weight.grad.double(), expected_dw.to(dtype).double(), **tolerance)
