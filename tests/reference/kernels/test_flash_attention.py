"""FlashAttention kernels against the naive reference, forward and backward.

Without a GPU the kernels run through Triton's interpreter (see conftest.py), so the shapes here are tiny; they
are chosen ragged (not multiples of the 16-row blocks the interpreter uses), with T != S, grouped-query heads and
every supported head dim. bfloat16 runs only on a GPU: the interpreter cannot multiply bfloat16 blocks. The
tests marked ``gpu`` add long sequences and bfloat16, against PyTorch's own flash-attention backend.
"""

import math

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

import triton

import reference_impl.kernels.flash_attention as fa
from reference_impl.kernels.flash_attention import (
    attention_reference,
    flash_attention,
    flash_attention_with_lse,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
requires_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA or ROCm GPU")

# (B, H, H_kv, T, S, D)
SHAPES = [
    (1, 1, 1, 1, 1, 16),
    (2, 2, 2, 17, 17, 32),
    (1, 2, 2, 63, 63, 64),
    (1, 1, 1, 100, 100, 16),
    (1, 2, 1, 32, 32, 32),
    (1, 2, 2, 17, 40, 32),
    (1, 2, 2, 40, 17, 16),
    (1, 4, 2, 33, 33, 32),
    (1, 4, 1, 20, 45, 16),
    (1, 4, 1, 45, 20, 16),
    (1, 1, 1, 20, 20, 128),
]
HALF_SHAPES = [(1, 2, 2, 17, 17, 32), (1, 4, 2, 40, 23, 64), (1, 2, 1, 30, 50, 16)]
FP32_TOLERANCE = {"atol": 2e-5, "rtol": 2e-5}
FP16_TOLERANCE = {"atol": 1e-2, "rtol": 1e-2}


def shape_id(shape: tuple[int, ...]) -> str:
    batch, heads, kv_heads, seq_q, seq_k, head_dim = shape
    return f"B{batch}-H{heads}-Hkv{kv_heads}-T{seq_q}-S{seq_k}-D{head_dim}"


def make_inputs(
    shape: tuple[int, ...], dtype: torch.dtype, seed: int = 0, device: str = DEVICE
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    batch, heads, kv_heads, seq_q, seq_k, head_dim = shape
    generator = torch.Generator().manual_seed(seed)

    def randn(*size: int) -> torch.Tensor:
        return torch.randn(*size, generator=generator).to(device=device, dtype=dtype).requires_grad_()

    return (
        randn(batch, heads, seq_q, head_dim),
        randn(batch, kv_heads, seq_k, head_dim),
        randn(batch, kv_heads, seq_k, head_dim),
    )


def reference_float64(q, k, v, causal, sm_scale=None):
    """Output and gradients of the naive reference in float64 for the same inputs and output gradient."""
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    out = attention_reference(q64, k64, v64, causal=causal, sm_scale=sm_scale)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out.backward(grad_out.to(out.device))
    return out, grad_out, (q64.grad, k64.grad, v64.grad)


def kernel_gradients(q, k, v, causal, grad_out, sm_scale=None):
    out = flash_attention(q, k, v, causal=causal, sm_scale=sm_scale)
    out.backward(grad_out.to(device=out.device, dtype=out.dtype))
    return q.grad, k.grad, v.grad


def assert_close_to(actual: torch.Tensor, expected: torch.Tensor, tolerance: dict) -> None:
    torch.testing.assert_close(actual.double(), expected.to(actual.device), **tolerance)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_forward_matches_reference_float32(shape, causal):
    q, k, v = make_inputs(shape, torch.float32)
    expected, _, _ = reference_float64(q, k, v, causal)
    assert_close_to(flash_attention(q, k, v, causal=causal), expected, FP32_TOLERANCE)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_backward_matches_reference_float32(shape, causal):
    q, k, v = make_inputs(shape, torch.float32)
    _, grad_out, expected = reference_float64(q, k, v, causal)
    for actual, wanted in zip(kernel_gradients(q, k, v, causal, grad_out), expected, strict=True):
        assert_close_to(actual, wanted, FP32_TOLERANCE)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("shape", HALF_SHAPES, ids=shape_id)
def test_forward_matches_reference_float16(shape, causal):
    q, k, v = make_inputs(shape, torch.float16)
    expected, _, _ = reference_float64(q, k, v, causal)
    out = flash_attention(q, k, v, causal=causal)
    assert out.dtype == torch.float16
    assert_close_to(out, expected, FP16_TOLERANCE)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("shape", HALF_SHAPES, ids=shape_id)
def test_backward_matches_reference_float16(shape, causal):
    q, k, v = make_inputs(shape, torch.float16)
    _, grad_out, expected = reference_float64(q, k, v, causal)
    for actual, wanted in zip(kernel_gradients(q, k, v, causal, grad_out), expected, strict=True):
        assert actual.dtype == torch.float16
        assert_close_to(actual, wanted, FP16_TOLERANCE)


@pytest.mark.parametrize(("block_m", "block_n"), [(32, 16), (16, 32), (64, 16)])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_rectangular_blocks(monkeypatch, block_m, block_n, causal):
    # On a GPU the autotuner may pick any (BLOCK_M, BLOCK_N); the loop bounds must not assume they are equal.
    config = triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n}, num_warps=4, num_stages=1)
    for kernel in (fa._forward_kernel, fa._backward_dkdv_kernel, fa._backward_dq_kernel):
        monkeypatch.setattr(kernel, "configs", [config])
    for shape in [(1, 4, 2, 37, 50, 16), (1, 2, 1, 70, 29, 32)]:
        q, k, v = make_inputs(shape, torch.float32)
        expected, grad_out, expected_grads = reference_float64(q, k, v, causal)
        assert_close_to(flash_attention(q, k, v, causal=causal), expected, FP32_TOLERANCE)
        for actual, wanted in zip(kernel_gradients(q, k, v, causal, grad_out), expected_grads, strict=True):
            assert_close_to(actual, wanted, FP32_TOLERANCE)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_saved_log_sum_exp_is_that_of_the_scaled_masked_scores(causal):
    q, k, v = make_inputs((1, 4, 2, 37, 29, 32), torch.float32)
    _, lse = flash_attention_with_lse(q, k, v, causal=causal)
    scores = (
        q.double() @ k.double().repeat_interleave(2, dim=1).transpose(-2, -1) / math.sqrt(32)
    )  # (B, H, T, S)
    if causal:
        visible = torch.ones(37, 29, dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~visible, float("-inf"))
    assert lse.dtype == torch.float32 and lse.shape == (1, 4, 37)
    assert_close_to(lse, torch.logsumexp(scores, dim=-1), FP32_TOLERANCE)


def test_explicit_sm_scale_is_used_forward_and_backward():
    q, k, v = make_inputs((1, 2, 2, 19, 19, 32), torch.float32)
    expected, grad_out, expected_grads = reference_float64(q, k, v, causal=True, sm_scale=0.3)
    assert_close_to(flash_attention(q, k, v, causal=True, sm_scale=0.3), expected, FP32_TOLERANCE)
    for actual, wanted in zip(
        kernel_gradients(q, k, v, True, grad_out, sm_scale=0.3), expected_grads, strict=True
    ):
        assert_close_to(actual, wanted, FP32_TOLERANCE)


def test_large_scores_do_not_overflow():
    # Scores around 1e3 would overflow exp() in float32 without the running-maximum subtraction.
    q, k, v = make_inputs((1, 1, 1, 33, 33, 64), torch.float32)
    with torch.no_grad():
        q.mul_(40.0)
    expected, grad_out, expected_grads = reference_float64(q, k, v, causal=True)
    out = flash_attention(q, k, v, causal=True)
    assert torch.isfinite(out).all()
    assert_close_to(out, expected, {"atol": 1e-4, "rtol": 1e-4})
    for actual, wanted in zip(kernel_gradients(q, k, v, True, grad_out), expected_grads, strict=True):
        assert torch.isfinite(actual).all()
        assert_close_to(actual, wanted, {"atol": 1e-3, "rtol": 1e-3})


def test_non_contiguous_inputs_give_the_contiguous_result():
    q, k, v = make_inputs((1, 2, 2, 21, 21, 32), torch.float32)
    # The same values laid out (B, T, H, D) in memory and viewed as (B, H, T, D).
    q_view, k_view, v_view = (
        t.detach().transpose(1, 2).contiguous().transpose(1, 2).requires_grad_() for t in (q, k, v)
    )
    assert not q_view.is_contiguous()
    _, grad_out, _ = reference_float64(q, k, v, causal=True)
    expected_out = flash_attention(q, k, v, causal=True)
    expected_grads = kernel_gradients(q, k, v, True, grad_out)
    torch.testing.assert_close(flash_attention(q_view, k_view, v_view, causal=True), expected_out)
    for actual, wanted in zip(
        kernel_gradients(q_view, k_view, v_view, True, grad_out), expected_grads, strict=True
    ):
        torch.testing.assert_close(actual, wanted)


def test_gradient_only_for_the_inputs_that_ask():
    q, k, v = make_inputs((1, 2, 2, 17, 17, 16), torch.float32)
    k.requires_grad_(False)
    v.requires_grad_(False)
    _, grad_out, (expected_dq, _, _) = reference_float64(q, k, v, causal=False)
    flash_attention(q, k, v).backward(grad_out.float())
    assert k.grad is None and v.grad is None
    assert_close_to(q.grad, expected_dq, FP32_TOLERANCE)


@pytest.mark.parametrize(("seq_q", "seq_k"), [(17, 40), (40, 17)])
def test_causal_mask_is_top_left_like_sdpa(seq_q, seq_k):
    q, k, v = make_inputs((1, 4, 2, seq_q, seq_k, 32), torch.float32)
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    torch.testing.assert_close(flash_attention(q, k, v, causal=True), expected, **FP32_TOLERANCE)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_reference_matches_sdpa(causal):
    q, k, v = make_inputs((2, 4, 1, 23, 31, 16), torch.float32, device="cpu")
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)
    torch.testing.assert_close(attention_reference(q, k, v, causal=causal), expected)


def test_kernels_are_interpreted_without_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the kernels are compiled for it")
    assert fa.INTERPRETED


def test_refuses_cpu_tensors_when_the_kernels_are_compiled(monkeypatch):
    monkeypatch.setattr(fa, "INTERPRETED", False)
    q, k, v = make_inputs((1, 1, 1, 4, 4, 16), torch.float32, device="cpu")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        flash_attention(q, k, v)


def test_refuses_bfloat16_in_the_interpreter():
    if not fa.INTERPRETED:
        pytest.skip("the kernels are compiled: bfloat16 is supported")
    q, k, v = make_inputs((1, 1, 1, 4, 4, 16), torch.bfloat16)
    with pytest.raises(ValueError, match="bfloat16"):
        flash_attention(q, k, v)


def _tensors(q_shape, kv_shape, dtype=torch.float32, device=DEVICE):
    return (
        torch.zeros(q_shape, dtype=dtype, device=device),
        torch.zeros(kv_shape, dtype=dtype, device=device),
        torch.zeros(kv_shape, dtype=dtype, device=device),
    )


@pytest.mark.parametrize(
    ("q_shape", "kv_shape", "message"),
    [
        ((2, 4, 16), (2, 4, 16), "4-D"),
        ((1, 2, 8, 32), (2, 2, 8, 32), "batch size"),
        ((1, 2, 8, 32), (1, 2, 8, 16), "head dim"),
        ((1, 2, 8, 48), (1, 2, 8, 48), "head dim must be one of"),
        ((1, 2, 8, 256), (1, 2, 8, 256), "head dim must be one of"),
        ((1, 3, 8, 32), (1, 2, 8, 32), "multiple"),
        ((1, 2, 0, 32), (1, 2, 8, 32), "non-empty"),
        ((1, 2, 8, 32), (1, 2, 0, 32), "non-empty"),
    ],
)
def test_rejects_bad_shapes(q_shape, kv_shape, message):
    with pytest.raises(ValueError, match=message):
        flash_attention(*_tensors(q_shape, kv_shape))


def test_rejects_k_and_v_of_different_shapes():
    q, k, _ = _tensors((1, 2, 8, 32), (1, 2, 8, 32))
    with pytest.raises(ValueError, match="same shape"):
        flash_attention(q, k, torch.zeros(1, 2, 9, 32, device=DEVICE))


@pytest.mark.parametrize("dtype", [torch.float64, torch.int32])
def test_rejects_unsupported_dtypes(dtype):
    with pytest.raises(ValueError, match="dtype"):
        flash_attention(*_tensors((1, 1, 8, 16), (1, 1, 8, 16), dtype=dtype))


def test_rejects_mixed_dtypes():
    q, k, v = _tensors((1, 1, 8, 16), (1, 1, 8, 16))
    with pytest.raises(ValueError, match="dtype"):
        flash_attention(q, k.half(), v)


def test_rejects_mixed_devices():
    q, k, v = _tensors((1, 1, 8, 16), (1, 1, 8, 16))
    with pytest.raises(ValueError, match="one device"):
        flash_attention(q, k.to("meta"), v)


def test_rejects_bad_causal_flag_and_scale():
    q, k, v = _tensors((1, 1, 8, 16), (1, 1, 8, 16))
    with pytest.raises(ValueError, match="causal"):
        flash_attention(q, k, v, causal=1)
    with pytest.raises(ValueError, match="sm_scale"):
        flash_attention(q, k, v, sm_scale=float("nan"))


# GPU: long sequences, bfloat16, and PyTorch as the yardstick. Low-precision errors grow with the sequence
# length, so instead of a fixed tolerance (as in flash-attn's own tests) each result's error against the float32
# reference must be at most twice the larger of two PyTorch errors in the same dtype: its flash-attention SDPA
# backend, and plain eager attention.


def _sdpa_flash(q, k, v, causal):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    group = q.shape[1] // k.shape[1]
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        return F.scaled_dot_product_attention(
            q, k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1), is_causal=causal
        )


def _eager_in_input_dtype(q, k, v, causal):
    group = q.shape[1] // k.shape[1]
    scores = q @ k.repeat_interleave(group, dim=1).transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, H, T, S)
    if causal:
        visible = torch.ones(scores.shape[-2:], dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~visible, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v.repeat_interleave(group, dim=1)


def _outputs_and_gradients(attention, q, k, v, causal, grad_out):
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out = attention(q, k, v, causal)
    out.backward(grad_out)
    return [out, q.grad, k.grad, v.grad]


GPU_CASES = [
    (torch.bfloat16, (2, 8, 8, 1024, 1024, 64), True),
    (torch.bfloat16, (2, 8, 8, 1024, 1024, 64), False),
    (torch.bfloat16, (1, 8, 2, 2048, 2048, 128), True),
    (torch.float16, (1, 8, 1, 1500, 1500, 64), True),
    (torch.bfloat16, (1, 4, 4, 4096, 4096, 128), True),
]


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize(("dtype", "shape", "causal"), GPU_CASES)
def test_gpu_half_precision_is_as_accurate_as_pytorch(dtype, shape, causal):
    q, k, v = make_inputs(shape, dtype, device="cuda")
    grad_out = torch.randn(q.shape, device="cuda", dtype=dtype)
    expected = _outputs_and_gradients(
        lambda *a: attention_reference(*a).float(), q.float(), k.float(), v.float(), causal, grad_out.float()
    )
    ours = _outputs_and_gradients(
        lambda q, k, v, c: flash_attention(q, k, v, causal=c), q, k, v, causal, grad_out
    )
    sdpa = _outputs_and_gradients(_sdpa_flash, q, k, v, causal, grad_out)
    eager = _outputs_and_gradients(_eager_in_input_dtype, q, k, v, causal, grad_out)
    for name, mine, flash, plain, truth in zip(
        ["out", "dq", "dk", "dv"], ours, sdpa, eager, expected, strict=True
    ):
        our_error = (mine.float() - truth).abs().max().item()
        pytorch_error = max(
            (flash.float() - truth).abs().max().item(), (plain.float() - truth).abs().max().item()
        )
        assert our_error <= 2 * pytorch_error + 1e-3, f"{name}: {our_error} vs PyTorch {pytorch_error}"


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize(
    "shape", [(2, 4, 2, 1000, 777, 64), (1, 2, 2, 777, 1000, 128), (1, 4, 4, 513, 513, 32)]
)
def test_gpu_float32_long_ragged_sequences(shape, causal):
    q, k, v = make_inputs(shape, torch.float32, device="cuda")
    expected, grad_out, expected_grads = reference_float64(q, k, v, causal)
    assert_close_to(flash_attention(q, k, v, causal=causal), expected, {"atol": 1e-4, "rtol": 1e-4})
    for actual, wanted in zip(kernel_gradients(q, k, v, causal, grad_out), expected_grads, strict=True):
        assert_close_to(actual, wanted, {"atol": 1e-3, "rtol": 1e-3})
