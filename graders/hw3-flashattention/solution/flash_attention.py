"""HW3 reference solution: FlashAttention forward (with log-sum-exp) and backward in Triton.

Layout: queries ``(B, H, T, D)``, keys and values ``(B, H_kv, S, D)`` with ``H_kv`` dividing ``H`` (query head
``h`` reads key/value head ``h // (H // H_kv)``). ``causal`` masks top-left: query ``i`` sees keys ``j <= i``.

The forward kernel walks over key blocks with an online softmax (running maximum ``m``, running denominator
``l``, unnormalised output ``acc``) and stores ``lse = m + log(l)`` per row. The backward kernels recompute the
probabilities ``p = exp(s - lse)`` block by block; with ``delta_i = dO_i . O_i`` the softmax gradient is
``ds = p * (dO V^T - delta)``, and ``dV = P^T dO``, ``dK = scale * dS^T Q``, ``dQ = scale * dS K``.
Exponentials are base 2 (``exp(x) = exp2(x * log2(e))``), so ``log2(e)`` is folded into the score scale.
"""

import math
import os

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634  # log2(e): scores are scaled by it so the kernels can use exp2
LN2 = 0.6931471805599453  # ln(2): turns a log2 back into a natural log for the stored lse


def _block_sizes(dtype: torch.dtype) -> tuple[int, int]:
    """(BLOCK_M, BLOCK_N). The CPU interpreter runs every program and loop step as NumPy code, so fewer, larger
    steps are faster there. On a GPU float32 blocks take twice the shared memory of bfloat16 ones, so they are
    narrower; with two pipeline stages (num_stages=2 at each launch) every kernel stays well inside the shared
    memory of current GPUs for head dims up to 128."""
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        return 64, 64
    return (64, 32) if dtype == torch.float32 else (64, 64)


def _dot_precision(dtype: torch.dtype) -> str | None:
    # float32 products default to TF32 on NVIDIA GPUs (10 mantissa bits): ask for exact IEEE products instead.
    return "ieee" if dtype == torch.float32 else None


@triton.jit
def _forward_kernel(
    Q, K, V, OUT, LSE,
    scale_log2,
    stride_qb, stride_qh, stride_qt,
    stride_kb, stride_kh, stride_kt,
    H, GROUP, T, S,
    HEAD_DIM: tl.constexpr,
    CAUSAL: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):  # fmt: skip
    # One program: BLOCK_M query rows of one (batch, head). Grid: (cdiv(T, BLOCK_M), B * H).
    pid_m = tl.program_id(0)
    batch_head = tl.program_id(1)
    batch = (batch_head // H).to(tl.int64)
    head = (batch_head % H).to(tl.int64)
    kv_head = head // GROUP
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, HEAD_DIM)
    row_ok = rows < T

    # OUT shares Q's layout, V shares K's: all four are contiguous.
    q_offsets = batch * stride_qb + head * stride_qh + rows[:, None] * stride_qt + dims[None, :]
    q = tl.load(Q + q_offsets, mask=row_ok[:, None], other=0.0)  # (BLOCK_M, HEAD_DIM)
    kv_base = batch * stride_kb + kv_head * stride_kh

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

    # Causal: keys past the last row of this block are invisible to all of it, so the loop stops there. The
    # first key block holds key 0, which every row sees, so m_i is finite after the first iteration.
    if CAUSAL:
        kv_end = tl.minimum(S, (pid_m + 1) * BLOCK_M)
    else:
        kv_end = S
    for start_n in range(0, kv_end, BLOCK_N):
        cols = start_n + tl.arange(0, BLOCK_N)
        col_ok = cols < S
        kv_offsets = kv_base + cols[:, None] * stride_kt + dims[None, :]
        k = tl.load(K + kv_offsets, mask=col_ok[:, None], other=0.0)  # (BLOCK_N, HEAD_DIM)
        v = tl.load(V + kv_offsets, mask=col_ok[:, None], other=0.0)

        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale_log2  # (BLOCK_M, BLOCK_N), log2 units
        visible = col_ok[None, :]
        if CAUSAL:
            visible = visible & (cols[None, :] <= rows[:, None])
        s = tl.where(visible, s, float("-inf"))

        # Online softmax: raise the running maximum and rescale what was summed under the old one.
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new

    out = acc / l_i[:, None]
    tl.store(OUT + q_offsets, out.to(OUT.dtype.element_ty), mask=row_ok[:, None])
    lse = (m_i + tl.log2(l_i)) * LN2
    tl.store(LSE + batch_head.to(tl.int64) * T + rows, lse, mask=row_ok)


@triton.jit
def _backward_dkdv_kernel(
    Q, K, V, OUT, DO, LSE, DK, DV,
    sm_scale, scale_log2,
    stride_qb, stride_qh, stride_qt,
    stride_kb, stride_kh, stride_kt,
    H, GROUP, T, S,
    HEAD_DIM: tl.constexpr,
    CAUSAL: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):  # fmt: skip
    # One program: BLOCK_N keys of one (batch, kv head); it streams every query block of every query head that
    # reads this kv head past them, so dK and dV are summed over the group without atomics.
    # Grid: (cdiv(S, BLOCK_N), B * H_kv).
    pid_n = tl.program_id(0)
    batch_kv_head = tl.program_id(1)
    kv_heads = H // GROUP
    batch = (batch_kv_head // kv_heads).to(tl.int64)
    kv_head = (batch_kv_head % kv_heads).to(tl.int64)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    dims = tl.arange(0, HEAD_DIM)
    col_ok = cols < S

    kv_offsets = batch * stride_kb + kv_head * stride_kh + cols[:, None] * stride_kt + dims[None, :]
    k = tl.load(K + kv_offsets, mask=col_ok[:, None], other=0.0)  # (BLOCK_N, HEAD_DIM)
    v = tl.load(V + kv_offsets, mask=col_ok[:, None], other=0.0)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)

    # Causal: query blocks that end before this key block's first key see none of it.
    if CAUSAL:
        first_row = (pid_n * BLOCK_N // BLOCK_M) * BLOCK_M
    else:
        first_row = 0
    for group_index in range(0, GROUP):
        head = kv_head * GROUP + group_index
        q_base = batch * stride_qb + head * stride_qh
        stats_base = (batch * H + head) * T
        for start_m in range(first_row, T, BLOCK_M):
            rows = start_m + tl.arange(0, BLOCK_M)
            row_ok = rows < T
            q_offsets = q_base + rows[:, None] * stride_qt + dims[None, :]
            q = tl.load(Q + q_offsets, mask=row_ok[:, None], other=0.0)  # (BLOCK_M, HEAD_DIM)
            do = tl.load(DO + q_offsets, mask=row_ok[:, None], other=0.0)
            o = tl.load(OUT + q_offsets, mask=row_ok[:, None], other=0.0)
            lse = tl.load(LSE + stats_base + rows, mask=row_ok, other=0.0)
            delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)  # (BLOCK_M,)

            # Transposed blocks, (BLOCK_N, BLOCK_M), so P^T and dS^T feed the dot products directly.
            s_t = tl.dot(k, tl.trans(q), input_precision=PRECISION) * scale_log2
            p_t = tl.exp2(s_t - lse[None, :] * 1.4426950408889634)
            visible = col_ok[:, None] & row_ok[None, :]
            if CAUSAL:
                visible = visible & (rows[None, :] >= cols[:, None])
            p_t = tl.where(visible, p_t, 0.0)

            dv += tl.dot(p_t.to(do.dtype), do, input_precision=PRECISION)
            dp_t = tl.dot(v, tl.trans(do), input_precision=PRECISION)
            ds_t = p_t * (dp_t - delta[None, :])
            dk += tl.dot(ds_t.to(q.dtype), q, input_precision=PRECISION)

    tl.store(DK + kv_offsets, (dk * sm_scale).to(DK.dtype.element_ty), mask=col_ok[:, None])
    tl.store(DV + kv_offsets, dv.to(DV.dtype.element_ty), mask=col_ok[:, None])


@triton.jit
def _backward_dq_kernel(
    Q, K, V, OUT, DO, LSE, DQ,
    sm_scale, scale_log2,
    stride_qb, stride_qh, stride_qt,
    stride_kb, stride_kh, stride_kt,
    H, GROUP, T, S,
    HEAD_DIM: tl.constexpr,
    CAUSAL: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):  # fmt: skip
    # One program: BLOCK_M query rows of one (batch, head), streaming the key blocks they can see.
    # Grid: (cdiv(T, BLOCK_M), B * H).
    pid_m = tl.program_id(0)
    batch_head = tl.program_id(1)
    batch = (batch_head // H).to(tl.int64)
    head = (batch_head % H).to(tl.int64)
    kv_head = head // GROUP
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, HEAD_DIM)
    row_ok = rows < T

    q_offsets = batch * stride_qb + head * stride_qh + rows[:, None] * stride_qt + dims[None, :]
    q = tl.load(Q + q_offsets, mask=row_ok[:, None], other=0.0)
    do = tl.load(DO + q_offsets, mask=row_ok[:, None], other=0.0)
    o = tl.load(OUT + q_offsets, mask=row_ok[:, None], other=0.0)
    lse = tl.load(LSE + batch_head.to(tl.int64) * T + rows, mask=row_ok, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    kv_base = batch * stride_kb + kv_head * stride_kh
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

    if CAUSAL:
        kv_end = tl.minimum(S, (pid_m + 1) * BLOCK_M)
    else:
        kv_end = S
    for start_n in range(0, kv_end, BLOCK_N):
        cols = start_n + tl.arange(0, BLOCK_N)
        col_ok = cols < S
        kv_offsets = kv_base + cols[:, None] * stride_kt + dims[None, :]
        k = tl.load(K + kv_offsets, mask=col_ok[:, None], other=0.0)
        v = tl.load(V + kv_offsets, mask=col_ok[:, None], other=0.0)

        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale_log2
        visible = col_ok[None, :]
        if CAUSAL:
            visible = visible & (cols[None, :] <= rows[:, None])
        p = tl.where(visible, tl.exp2(s - lse[:, None] * 1.4426950408889634), 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)

    tl.store(DQ + q_offsets, (dq * sm_scale).to(DQ.dtype.element_ty), mask=row_ok[:, None])


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if q.dim() != 4 or k.dim() != 4 or k.shape != v.shape:
        raise ValueError(
            f"expected q (B, H, T, D) and k, v (B, H_kv, S, D), got {q.shape}, {k.shape}, {v.shape}"
        )
    if k.shape[0] != q.shape[0] or k.shape[3] != q.shape[3] or q.shape[1] % k.shape[1] != 0:
        raise ValueError(f"q {tuple(q.shape)} and k/v {tuple(k.shape)} do not fit together")
    if q.shape[3] not in (16, 32, 64, 128):
        raise ValueError(f"head dim must be 16, 32, 64 or 128, got {q.shape[3]}")


def _scale(q: torch.Tensor, sm_scale: float | None) -> float:
    return 1.0 / math.sqrt(q.shape[-1]) if sm_scale is None else float(sm_scale)


def flash_attention_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False, sm_scale: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    _check(q, k, v)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    batch, heads, seq_q, head_dim = q.shape
    kv_heads, seq_k = k.shape[1], k.shape[2]
    scale = _scale(q, sm_scale)
    block_m, block_n = _block_sizes(q.dtype)
    out = torch.empty_like(q)
    lse = torch.empty((batch, heads, seq_q), device=q.device, dtype=torch.float32)
    grid = (triton.cdiv(seq_q, block_m), batch * heads)
    _forward_kernel[grid](
        q, k, v, out, lse, scale * LOG2E,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        heads, heads // kv_heads, seq_q, seq_k,
        HEAD_DIM=head_dim, CAUSAL=bool(causal), PRECISION=_dot_precision(q.dtype),
        BLOCK_M=block_m, BLOCK_N=block_n, num_warps=4, num_stages=2,
    )  # fmt: skip
    return out, lse


def flash_attention_backward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    o: torch.Tensor,
    lse: torch.Tensor,
    do: torch.Tensor,
    causal: bool = False,
    sm_scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _check(q, k, v)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    o, do = o.contiguous(), do.to(q.dtype).contiguous()
    lse = lse.to(torch.float32).contiguous()
    batch, heads, seq_q, head_dim = q.shape
    kv_heads, seq_k = k.shape[1], k.shape[2]
    scale = _scale(q, sm_scale)
    block_m, block_n = _block_sizes(q.dtype)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    common = dict(HEAD_DIM=head_dim, CAUSAL=bool(causal), PRECISION=_dot_precision(q.dtype))
    # The dK/dV kernel walks over query blocks; short query steps keep its working set small.
    _backward_dkdv_kernel[(triton.cdiv(seq_k, block_n), batch * kv_heads)](
        q, k, v, o, do, lse, dk, dv, scale, scale * LOG2E,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        heads, heads // kv_heads, seq_q, seq_k,
        BLOCK_M=block_n, BLOCK_N=block_m, num_warps=4, num_stages=2, **common,
    )  # fmt: skip
    _backward_dq_kernel[(triton.cdiv(seq_q, block_m), batch * heads)](
        q, k, v, o, do, lse, dq, scale, scale * LOG2E,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        heads, heads // kv_heads, seq_q, seq_k,
        BLOCK_M=block_m, BLOCK_N=block_n, num_warps=4, num_stages=2, **common,
    )  # fmt: skip
    return dq, dk, dv


class _FlashAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal, sm_scale):
        o, lse = flash_attention_forward(q, k, v, causal, sm_scale)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.causal = causal
        ctx.sm_scale = sm_scale
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = flash_attention_backward(q, k, v, o, lse, do, ctx.causal, ctx.sm_scale)
        return dq, dk, dv, None, None


def flash_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False, sm_scale: float | None = None
) -> torch.Tensor:
    return _FlashAttention.apply(q, k, v, causal, sm_scale)


def flash_attention_forward_backward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    do: torch.Tensor,
    causal: bool = False,
    sm_scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    o, lse = flash_attention_forward(q, k, v, causal, sm_scale)
    dq, dk, dv = flash_attention_backward(q, k, v, o, lse, do, causal, sm_scale)
    return o, dq, dk, dv
