"""Fused RMSNorm in Triton, forward and backward.

``y = x * rstd * w`` with ``rstd = 1 / sqrt(mean(x**2) + eps)`` over the last dimension (``eps`` inside the
square root, as in LLaMA and ``reference_impl.functional.rms_norm``, which this matches: float32 math whatever
the input dtype, output in the dtype of ``x``).

Forward: one program per row reads the row once, reduces ``sum(x**2)`` on chip, and writes ``y`` and the row's
``rstd`` (float32, saved for the backward pass). The whole row sits in one block, so the last dimension is capped
at ``MAX_FEATURES``.

Backward: with ``x_hat = x * rstd`` and ``g = dy * w``, differentiating through ``rstd`` gives

    dx = rstd * (g - x_hat * mean(g * x_hat))
    dw = sum over rows of dy * x_hat

``dx`` is per row, but ``dw`` sums over every row. Rather than contend on one vector with atomics, each of a
fixed number of programs walks a strided share of the rows, keeps its own float32 partial ``dw`` on chip and
writes it out; a second kernel sums the partials column block by column block. The result is deterministic.

Kernels launch on a CUDA (or ROCm) GPU. Without one, start the process with ``TRITON_INTERPRET=1`` (it must be
set before Triton is first imported) to run them through Triton's interpreter on CPU tensors: slowly, and in
every dtype, bfloat16 included, because the kernels only load, convert and store float16/bfloat16 values and do
all arithmetic in float32.
"""

import math

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = ["INTERPRETED", "MAX_FEATURES", "rms_norm"]

# Read once, as triton.jit reads it when the kernels below are decorated: True means they run in the interpreter.
INTERPRETED: bool = bool(triton.knobs.runtime.interpret)

# One row must fit in one block: 16384 float32 values are 64 KiB of registers spread over 16 warps.
MAX_FEATURES = 16384
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# Column and partial-row blocks of the dweight reduction kernel (in the interpreter, small enough that the tests'
# 8 partial rows take two steps).
_REDUCE_BLOCK_N = 16 if INTERPRETED else 128
_REDUCE_BLOCK_P = 4 if INTERPRETED else 32


@triton.jit
def _rms_norm_forward_kernel(X, W, Y, RSTD, stride_x, stride_y, N, eps, BLOCK_SIZE: tl.constexpr):
    # One program normalises one row.
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_SIZE)
    valid = cols < N
    x = tl.load(X + row * stride_x + cols, mask=valid, other=0.0).to(tl.float32)
    w = tl.load(W + cols, mask=valid, other=0.0).to(tl.float32)
    # Padding lanes hold zeros, so they add nothing to the sum of squares; the mean divides by the true N.
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / N + eps)
    tl.store(RSTD + row, rstd)
    tl.store(Y + row * stride_y + cols, (x * rstd * w).to(Y.dtype.element_ty), mask=valid)


@triton.jit
def _rms_norm_backward_kernel(
    DY,
    X,
    W,
    RSTD,
    DX,
    DW_PARTIAL,
    stride_dy,
    stride_x,
    stride_dx,
    M,
    N,
    BLOCK_SIZE: tl.constexpr,
    COMPUTE_DW: tl.constexpr,
):
    # Program p handles rows p, p + P, p + 2P, ... (P programs in all) and writes one row of DW_PARTIAL (P, N).
    program = tl.program_id(0)
    programs = tl.num_programs(0)
    cols = tl.arange(0, BLOCK_SIZE)
    valid = cols < N
    w = tl.load(W + cols, mask=valid, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK_SIZE], dtype=tl.float32)
    for row_index in range(program, M, programs):
        row = tl.cast(row_index, tl.int64)
        x = tl.load(X + row * stride_x + cols, mask=valid, other=0.0).to(tl.float32)
        dy = tl.load(DY + row * stride_dy + cols, mask=valid, other=0.0).to(tl.float32)
        rstd = tl.load(RSTD + row)
        x_hat = x * rstd
        g = dy * w
        # dx = rstd * (g - x_hat * mean(g * x_hat)): the second term is the path through rstd.
        dx = rstd * (g - x_hat * (tl.sum(g * x_hat, axis=0) / N))
        tl.store(DX + row * stride_dx + cols, dx.to(DX.dtype.element_ty), mask=valid)
        if COMPUTE_DW:
            dw += dy * x_hat
    if COMPUTE_DW:
        tl.store(DW_PARTIAL + program.to(tl.int64) * N + cols, dw, mask=valid)


@triton.jit
def _rms_norm_dweight_kernel(DW_PARTIAL, DW, P, N, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr):
    # Sum the P partial rows of DW_PARTIAL (P, N) for BLOCK_N columns, BLOCK_P partial rows at a time.
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_valid = cols < N
    total = tl.zeros([BLOCK_N], dtype=tl.float32)
    for start in range(0, P, BLOCK_P):
        rows = start + tl.arange(0, BLOCK_P)
        mask = (rows[:, None] < P) & col_valid[None, :]
        partial = tl.load(DW_PARTIAL + rows[:, None].to(tl.int64) * N + cols[None, :], mask=mask, other=0.0)
        total += tl.sum(partial, axis=0)
    tl.store(DW + cols, total.to(DW.dtype.element_ty), mask=col_valid)


def _num_warps(block_size: int) -> int:
    # About 256 elements per warp keeps each thread's share of the row in a few registers.
    return min(max(block_size // 256, 1), 16)


def _backward_programs(rows: int, device: torch.device) -> int:
    # Enough programs to fill the GPU a couple of times over, no more: each one adds a partial row to reduce.
    if INTERPRETED or device.type != "cuda":
        return min(rows, 8)
    return min(rows, 2 * torch.cuda.get_device_properties(device).multi_processor_count)


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, eps: float) -> Tensor:
        features = x.shape[-1]
        rows = x.reshape(-1, features)  # (M, N), contiguous: the caller made x contiguous
        out = torch.empty_like(rows)
        rstd = torch.empty(rows.shape[0], device=x.device, dtype=torch.float32)
        block_size = triton.next_power_of_2(features)
        _rms_norm_forward_kernel[(rows.shape[0],)](
            rows, weight, out, rstd, rows.stride(0), out.stride(0), features, eps,
            BLOCK_SIZE=block_size, num_warps=_num_warps(block_size),
        )  # fmt: skip
        ctx.save_for_backward(rows, weight, rstd)
        return out.view(x.shape)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor, Tensor | None, None]:
        rows, weight, rstd = ctx.saved_tensors
        count, features = rows.shape
        grad_rows = grad_out.reshape(-1, features).contiguous()  # (M, N)
        dx = torch.empty_like(rows)
        compute_dw = ctx.needs_input_grad[1]
        programs = _backward_programs(count, rows.device)
        block_size = triton.next_power_of_2(features)
        partial_shape = (programs, features) if compute_dw else (1,)
        partial = torch.empty(partial_shape, device=rows.device, dtype=torch.float32)
        _rms_norm_backward_kernel[(programs,)](
            grad_rows, rows, weight, rstd, dx, partial,
            grad_rows.stride(0), rows.stride(0), dx.stride(0), count, features,
            BLOCK_SIZE=block_size, COMPUTE_DW=compute_dw, num_warps=_num_warps(block_size),
        )  # fmt: skip
        dw = None
        if compute_dw:
            dw = torch.empty_like(weight)
            _rms_norm_dweight_kernel[(triton.cdiv(features, _REDUCE_BLOCK_N),)](
                partial, dw, programs, features, BLOCK_P=_REDUCE_BLOCK_P, BLOCK_N=_REDUCE_BLOCK_N
            )
        return dx.view(grad_out.shape), dw, None


def _check_inputs(x: Tensor, weight: Tensor, eps: float) -> None:
    for name, tensor in (("x", x), ("weight", weight)):
        if not isinstance(tensor, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
        if tensor.dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"{name} must be float16, bfloat16 or float32, got {tensor.dtype}")
    if x.dim() == 0 or x.numel() == 0:
        raise ValueError(f"x must have at least one dimension and one element, got shape {tuple(x.shape)}")
    if weight.shape != x.shape[-1:]:
        raise ValueError(f"weight must have shape {tuple(x.shape[-1:])}, got {tuple(weight.shape)}")
    if x.shape[-1] > MAX_FEATURES:
        raise ValueError(f"the last dimension must be at most {MAX_FEATURES}, got {x.shape[-1]}")
    if x.device != weight.device:
        raise ValueError(f"x and weight must be on one device, got {x.device} and {weight.device}")
    if not (isinstance(eps, int | float) and math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    if not INTERPRETED and x.device.type != "cuda":
        raise RuntimeError(
            f"the RMSNorm kernels run on a GPU, and these tensors are on {x.device}. To run them on the CPU, set "
            "TRITON_INTERPRET=1 before Triton is first imported, e.g. `TRITON_INTERPRET=1 python ...` (Triton's "
            "interpreter: correct but slow, for small shapes)."
        )


def rms_norm(x: Tensor, weight: Tensor, eps: float = 1e-6) -> Tensor:
    """``x / sqrt(mean(x**2, -1) + eps) * weight`` by the fused kernels, differentiable once in ``x`` and ``weight``.

    ``x`` has any leading shape and a last dimension ``N <= MAX_FEATURES``; ``weight`` is ``(N,)``. Both are
    float16, bfloat16 or float32 (not necessarily the same); the math is float32, the output has ``x``'s dtype and
    the weight gradient ``weight``'s. Non-contiguous inputs are copied.
    """
    _check_inputs(x, weight, eps)
    return _RMSNorm.apply(x.contiguous(), weight.contiguous(), float(eps))
