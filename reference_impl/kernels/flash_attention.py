"""FlashAttention in Triton: exact softmax attention without materialising the (T, S) score matrix.

For one query row ``q_i`` and keys ``k_j``, attention is ``o_i = sum_j softmax_j(s_ij) v_j`` with
``s_ij = sm_scale * q_i . k_j``. The naive way writes every ``s_ij`` to memory; FlashAttention (Dao et al., 2022,
arXiv:2205.14135; the backward pass follows FlashAttention-2, arXiv:2307.08691) instead walks over blocks of keys
and keeps, per query row, a running maximum ``m``, a running denominator ``l = sum_j exp(s_ij - m)`` and an
unnormalised output ``acc = sum_j exp(s_ij - m) v_j``. When a new block raises the maximum from ``m`` to ``m'``,
the old sums are rescaled by ``exp(m - m')``; after the last block ``o_i = acc / l``. This is the "online
softmax": one pass over the keys, memory linear in the sequence length.

The forward kernel also stores the log-sum-exp ``lse_i = m + log(l)`` of every row (natural log, float32). The
backward kernels use it to recompute the probabilities ``p_ij = exp(s_ij - lse_i)`` block by block instead of
saving them, and need one more row statistic, ``delta_i = sum_j p_ij dp_ij = dO_i . O_i``, which a small
preprocess kernel computes. With ``dp = dO V^T`` and ``ds = p * (dp - delta)``, the gradients are
``dV = P^T dO``, ``dK = sm_scale * dS^T Q`` and ``dQ = sm_scale * dS K``.

Conventions:

- Layout ``(B, H, T, D)`` for queries and ``(B, H_kv, S, D)`` for keys and values. ``H_kv`` may divide ``H``
  (grouped-query attention): query head ``h`` reads key/value head ``h // (H // H_kv)``, and the key/value
  gradients sum over the ``H // H_kv`` query heads that share a head.
- ``causal=True`` masks with the top-left convention of ``torch.nn.functional.scaled_dot_product_attention(...,
  is_causal=True)``: query ``i`` sees keys ``j <= i``, counted from the start of both sequences, whatever ``T``
  and ``S`` are. (flash-attn aligns the diagonal to the bottom-right corner instead; the two agree when
  ``T == S``.) Query 0 always sees key 0, so no row is ever fully masked.
- Exponentials are taken in base 2 (``exp(x) = exp2(x * log2(e))``, a cheaper instruction on GPUs), so the
  kernels fold ``log2(e)`` into the score scale.
- float16 and bfloat16 inputs are multiplied on tensor cores with float32 accumulation; every softmax statistic
  is float32. float32 inputs use IEEE float32 products (not TF32): this is a reference implementation.
- Backward is deterministic: one program owns each block of dK/dV (looping over query blocks and over the query
  heads of its group) and another owns each block of dQ, so nothing is accumulated with atomics.

Kernels launch on a CUDA (or ROCm) GPU. On a machine without one, start the process with ``TRITON_INTERPRET=1``
(it must be set before Triton is first imported): Triton then runs the same kernels through its NumPy
interpreter on CPU tensors, slowly, which is how the tests run on CPU. The interpreter does not support
bfloat16 matrix products (triton-lang/triton#11584), so bfloat16 is refused there rather than computed wrongly.
"""

import math

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = [
    "INTERPRETED",
    "SUPPORTED_HEAD_DIMS",
    "attention_reference",
    "flash_attention",
    "flash_attention_with_lse",
]

# Read once, as triton.jit reads it when the kernels below are decorated: True means they run in the interpreter.
INTERPRETED: bool = bool(triton.knobs.runtime.interpret)

SUPPORTED_HEAD_DIMS = (16, 32, 64, 128)
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
LOG2E = math.log2(math.e)  # the kernels spell it, and ln(2), as literals

# The interpreter runs each program instance as NumPy code, so there the blocks are the smallest tl.dot accepts
# (16) and there is nothing to tune. On a GPU the autotuner times a handful of shapes known to suit attention
# and keeps the fastest per (sequence lengths, head dim, causal, dtype); configs that overflow shared memory or
# registers are skipped by the autotuner.
_INTERPRETER_CONFIG = [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16}, num_warps=1, num_stages=1)]


def _configs(shapes: list[tuple[int, int, int, int]]) -> list[triton.Config]:
    if INTERPRETED:
        return _INTERPRETER_CONFIG
    return [
        triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n}, num_warps=warps, num_stages=stages)
        for block_m, block_n, warps, stages in shapes
    ]


# (BLOCK_M, BLOCK_N, num_warps, num_stages). The forward pass wants tall query blocks (more reuse of each loaded
# key block); dK/dV wants wide key blocks and short query steps; dQ the reverse.
_FORWARD_CONFIGS = _configs(
    [(128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 3), (128, 32, 4, 4), (64, 64, 4, 3), (64, 32, 4, 4)]
)
_BACKWARD_DKDV_CONFIGS = _configs([(32, 128, 8, 3), (32, 64, 4, 3), (64, 64, 4, 3), (64, 128, 8, 2)])
_BACKWARD_DQ_CONFIGS = _configs([(128, 32, 8, 3), (64, 32, 4, 3), (64, 64, 4, 3), (128, 64, 8, 2)])
_PREPROCESS_BLOCK_M = 16 if INTERPRETED else 128


@triton.jit
def _forward_inner(
    acc,
    l_i,
    m_i,
    q,
    k_base,
    v_base,
    stride_kn,
    stride_vn,
    offs_m,
    offs_d,
    start,
    end,
    S,
    qk_scale,
    CAUSAL: tl.constexpr,
    MASKED: tl.constexpr,
    BLOCK_N: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    # Fold key blocks [start, end) into the running (acc, l_i, m_i) of one query block. MASKED blocks may run
    # past S or cross the causal diagonal and pay for the masks; the others are wholly visible to every row.
    for start_n in range(start, end, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k_ptrs = k_base + offs_n[:, None] * stride_kn + offs_d[None, :]
        v_ptrs = v_base + offs_n[:, None] * stride_vn + offs_d[None, :]
        if MASKED:
            key_valid = offs_n < S
            k = tl.load(k_ptrs, mask=key_valid[:, None], other=0.0)
            v = tl.load(v_ptrs, mask=key_valid[:, None], other=0.0)
        else:
            k = tl.load(k_ptrs)
            v = tl.load(v_ptrs)

        # Scores in log2 units: s = sm_scale * log2(e) * q k^T, shape (BLOCK_M, BLOCK_N).
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        if MASKED:
            visible = key_valid[None, :]
            if CAUSAL:
                visible = visible & (offs_n[None, :] <= offs_m[:, None])
            s = tl.where(visible, s, float("-inf"))

        # Online softmax: raise the running maximum, rescale what was summed under the old one.
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.math.exp2(s - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.autotune(configs=_FORWARD_CONFIGS, key=["T", "S", "HEAD_DIM", "CAUSAL"])
@triton.jit(do_not_specialize=["T", "S"])
def _forward_kernel(
    Q,
    K,
    V,
    Out,
    LSE,
    qk_scale,
    stride_qb,
    stride_qh,
    stride_qt,
    stride_kb,
    stride_kh,
    stride_kn,
    stride_vb,
    stride_vh,
    stride_vn,
    stride_ob,
    stride_oh,
    stride_ot,
    H,
    GROUP,
    T,
    S,
    HEAD_DIM: tl.constexpr,
    CAUSAL: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    # One program computes BLOCK_M query rows of one (batch, head): grid (cdiv(T, BLOCK_M), B * H).
    start_m = tl.program_id(0) * BLOCK_M
    batch_head = tl.program_id(1)
    batch = (batch_head // H).to(tl.int64)
    head = (batch_head % H).to(tl.int64)
    kv_head = head // GROUP
    q_base = Q + batch * stride_qb + head * stride_qh
    k_base = K + batch * stride_kb + kv_head * stride_kh
    v_base = V + batch * stride_vb + kv_head * stride_vh
    o_base = Out + batch * stride_ob + head * stride_oh

    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_valid = offs_m < T
    # Rows past T load zeros; they compute harmless finite values that are never stored.
    q = tl.load(q_base + offs_m[:, None] * stride_qt + offs_d[None, :], mask=row_valid[:, None], other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

    # Key blocks [0, full_end) are visible to every row of this query block and lie inside S: no masks. Blocks
    # [full_end, end) hold the ragged tail of S and, when causal, the diagonal; keys at or past `end` are
    # invisible to all these rows and are skipped. The first block processed always contains key 0, which every
    # row sees, so the running maximum is finite from then on.
    if CAUSAL:
        end = tl.minimum(S, start_m + BLOCK_M)
        full_end = (tl.minimum(S, start_m + 1) // BLOCK_N) * BLOCK_N
    else:
        end = S
        full_end = (S // BLOCK_N) * BLOCK_N
    acc, l_i, m_i = _forward_inner(
        acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_vn, offs_m, offs_d, 0, full_end, S, qk_scale,
        CAUSAL, False, BLOCK_N, DOT_PRECISION,
    )  # fmt: skip
    acc, l_i, m_i = _forward_inner(
        acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_vn, offs_m, offs_d, full_end, end, S, qk_scale,
        CAUSAL, True, BLOCK_N, DOT_PRECISION,
    )  # fmt: skip

    # lse = m + log(l), converted from the log2 units the loop worked in to natural log.
    lse = (m_i + tl.math.log2(l_i)) * 0.6931471805599453
    tl.store(LSE + batch_head.to(tl.int64) * T + offs_m, lse, mask=row_valid)
    out = acc / l_i[:, None]
    o_ptrs = o_base + offs_m[:, None] * stride_ot + offs_d[None, :]
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=row_valid[:, None])


@triton.jit(do_not_specialize=["T"])
def _backward_preprocess_kernel(
    Out, DO, DELTA, stride_ob, stride_oh, stride_ot, H, T, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr
):
    # delta_i = dO_i . O_i = sum_j p_ij dp_ij: the term the softmax Jacobian subtracts from every dp_ij.
    # O and dO share one layout (both contiguous (B, H, T, D)).
    start_m = tl.program_id(0) * BLOCK_M
    batch_head = tl.program_id(1)
    base = (batch_head // H).to(tl.int64) * stride_ob + (batch_head % H).to(tl.int64) * stride_oh
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_valid = offs_m < T
    ptrs = base + offs_m[:, None] * stride_ot + offs_d[None, :]
    o = tl.load(Out + ptrs, mask=row_valid[:, None], other=0.0).to(tl.float32)
    do = tl.load(DO + ptrs, mask=row_valid[:, None], other=0.0).to(tl.float32)
    tl.store(DELTA + batch_head.to(tl.int64) * T + offs_m, tl.sum(o * do, 1), mask=row_valid)


@triton.autotune(configs=_BACKWARD_DKDV_CONFIGS, key=["T", "S", "HEAD_DIM", "CAUSAL"])
@triton.jit(do_not_specialize=["T", "S"])
def _backward_dkdv_kernel(
    Q,
    K,
    V,
    DO,
    LSE,
    DELTA,
    DK,
    DV,
    sm_scale,
    qk_scale,
    stride_qb,
    stride_qh,
    stride_qt,
    stride_kb,
    stride_kh,
    stride_kn,
    H,
    GROUP,
    T,
    S,
    HEAD_DIM: tl.constexpr,
    CAUSAL: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    # One program owns BLOCK_N keys of one (batch, kv head): grid (cdiv(S, BLOCK_N), B * H_kv). It keeps its
    # K and V block and the dK, dV accumulators on chip and streams every query block of every query head in
    # its group past them. Q, dO share the (B, H, T, D) layout and K, V, dK, dV the (B, H_kv, S, D) one.
    H_KV = H // GROUP
    start_n = tl.program_id(0) * BLOCK_N
    batch_kv_head = tl.program_id(1)
    batch = (batch_kv_head // H_KV).to(tl.int64)
    kv_head = (batch_kv_head % H_KV).to(tl.int64)
    kv_offset = batch * stride_kb + kv_head * stride_kh

    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    key_valid = offs_n < S
    kv_ptrs = kv_offset + offs_n[:, None] * stride_kn + offs_d[None, :]
    k = tl.load(K + kv_ptrs, mask=key_valid[:, None], other=0.0)
    v = tl.load(V + kv_ptrs, mask=key_valid[:, None], other=0.0)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)

    # Causal: query i sees key j only if i >= j, so query blocks that end before this key block are skipped.
    if CAUSAL:
        first_m = (start_n // BLOCK_M) * BLOCK_M
    else:
        first_m = 0
    for group_index in range(0, GROUP):
        head = kv_head * GROUP + group_index
        q_offset = batch * stride_qb + head * stride_qh
        row_stats = (batch * H + head) * T
        for start_m in range(first_m, T, BLOCK_M):
            start_m = tl.multiple_of(start_m, BLOCK_M)
            offs_m = start_m + tl.arange(0, BLOCK_M)
            row_valid = offs_m < T
            q_ptrs = q_offset + offs_m[:, None] * stride_qt + offs_d[None, :]
            q = tl.load(Q + q_ptrs, mask=row_valid[:, None], other=0.0)
            do = tl.load(DO + q_ptrs, mask=row_valid[:, None], other=0.0)
            lse = tl.load(LSE + row_stats + offs_m, mask=row_valid, other=0.0)
            delta = tl.load(DELTA + row_stats + offs_m, mask=row_valid, other=0.0)

            # Work transposed, (BLOCK_N, BLOCK_M), so the accumulations below need no transposes of P or dS.
            # Recompute P^T = exp(s^T - lse) from the saved log-sum-exp, in log2 units.
            s_t = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION) * qk_scale
            p_t = tl.math.exp2(s_t - lse[None, :] * 1.4426950408889634)
            visible = row_valid[None, :]
            if CAUSAL:
                visible = visible & (offs_m[None, :] >= offs_n[:, None])
            p_t = tl.where(visible, p_t, 0.0)

            # dV += P^T dO; dP^T = V dO^T; dS^T = P^T * (dP^T - delta); dK += dS^T Q (scaled once at the end).
            dv = tl.dot(p_t.to(do.dtype), do, dv, input_precision=DOT_PRECISION)
            dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
            ds_t = p_t * (dp_t - delta[None, :])
            dk = tl.dot(ds_t.to(q.dtype), q, dk, input_precision=DOT_PRECISION)

    dk = dk * sm_scale
    tl.store(DK + kv_ptrs, dk.to(DK.dtype.element_ty), mask=key_valid[:, None])
    tl.store(DV + kv_ptrs, dv.to(DV.dtype.element_ty), mask=key_valid[:, None])


@triton.autotune(configs=_BACKWARD_DQ_CONFIGS, key=["T", "S", "HEAD_DIM", "CAUSAL"])
@triton.jit(do_not_specialize=["T", "S"])
def _backward_dq_kernel(
    Q,
    K,
    V,
    DO,
    LSE,
    DELTA,
    DQ,
    sm_scale,
    qk_scale,
    stride_qb,
    stride_qh,
    stride_qt,
    stride_kb,
    stride_kh,
    stride_kn,
    H,
    GROUP,
    T,
    S,
    HEAD_DIM: tl.constexpr,
    CAUSAL: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    # One program owns BLOCK_M query rows of one (batch, head) and streams the key blocks they can see, as the
    # forward pass does: grid (cdiv(T, BLOCK_M), B * H). Q, dO, dQ share one layout and K, V another.
    start_m = tl.program_id(0) * BLOCK_M
    batch_head = tl.program_id(1)
    batch = (batch_head // H).to(tl.int64)
    head = (batch_head % H).to(tl.int64)
    kv_offset = batch * stride_kb + (head // GROUP) * stride_kh

    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_valid = offs_m < T
    q_ptrs = batch * stride_qb + head * stride_qh + offs_m[:, None] * stride_qt + offs_d[None, :]
    q = tl.load(Q + q_ptrs, mask=row_valid[:, None], other=0.0)
    do = tl.load(DO + q_ptrs, mask=row_valid[:, None], other=0.0)
    row_stats = batch_head.to(tl.int64) * T
    lse = tl.load(LSE + row_stats + offs_m, mask=row_valid, other=0.0) * 1.4426950408889634
    delta = tl.load(DELTA + row_stats + offs_m, mask=row_valid, other=0.0)
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

    if CAUSAL:
        end = tl.minimum(S, start_m + BLOCK_M)
    else:
        end = S
    for start_n in range(0, end, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        offs_n = start_n + tl.arange(0, BLOCK_N)
        key_valid = offs_n < S
        kv_ptrs = kv_offset + offs_n[:, None] * stride_kn + offs_d[None, :]
        k = tl.load(K + kv_ptrs, mask=key_valid[:, None], other=0.0)
        v = tl.load(V + kv_ptrs, mask=key_valid[:, None], other=0.0)

        # P = exp(s - lse), zero where the key is past S or, when causal, after the query.
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        visible = key_valid[None, :]
        if CAUSAL:
            visible = visible & (offs_n[None, :] <= offs_m[:, None])
        p = tl.where(visible, tl.math.exp2(s - lse[:, None]), 0.0)

        # dP = dO V^T; dS = P * (dP - delta); dQ += dS K (scaled once at the end).
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=DOT_PRECISION)

    dq = dq * sm_scale
    tl.store(DQ + q_ptrs, dq.to(DQ.dtype.element_ty), mask=row_valid[:, None])


def _check_shapes(q: Tensor, k: Tensor, v: Tensor) -> None:
    for name, tensor in (("q", q), ("k", k), ("v", v)):
        if not isinstance(tensor, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
        if tensor.dim() != 4:
            raise ValueError(
                f"{name} must be 4-D (batch, heads, seq, head_dim), got shape {tuple(tensor.shape)}"
            )
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    batch, heads, _, head_dim = q.shape
    kv_batch, kv_heads, _, kv_head_dim = k.shape
    if kv_batch != batch or kv_head_dim != head_dim:
        raise ValueError(
            f"q {tuple(q.shape)} and k/v {tuple(k.shape)} must agree on batch size (dim 0) and head dim (dim 3)"
        )
    if q.numel() == 0 or k.numel() == 0:
        raise ValueError(f"attention needs non-empty inputs, got q {tuple(q.shape)} and k/v {tuple(k.shape)}")
    if heads % kv_heads != 0:
        raise ValueError(f"the {heads} query heads must be a multiple of the {kv_heads} key/value heads")


def _check_inputs(q: Tensor, k: Tensor, v: Tensor, causal: bool, sm_scale: float | None) -> None:
    _check_shapes(q, k, v)
    if q.dtype not in SUPPORTED_DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(
            f"q, k, v must share one dtype among float16, bfloat16, float32; got {q.dtype}, {k.dtype}, {v.dtype}"
        )
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if q.shape[-1] not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"head dim must be one of {SUPPORTED_HEAD_DIMS}, got {q.shape[-1]}")
    if not isinstance(causal, bool):
        raise ValueError(f"causal must be a bool, got {causal!r}")
    if sm_scale is not None and not (isinstance(sm_scale, int | float) and math.isfinite(sm_scale)):
        raise ValueError(f"sm_scale must be a finite number or None, got {sm_scale!r}")
    if not INTERPRETED and q.device.type != "cuda":
        raise RuntimeError(
            f"the FlashAttention kernels run on a GPU, and these tensors are on {q.device}. To run them on the CPU, "
            "set TRITON_INTERPRET=1 before Triton is first imported, e.g. `TRITON_INTERPRET=1 python ...` (Triton's "
            "interpreter: correct but slow, for small shapes)."
        )
    if INTERPRETED and q.dtype == torch.bfloat16:
        raise ValueError(
            "bfloat16 FlashAttention needs a GPU: the Triton interpreter (TRITON_INTERPRET=1) does not support "
            "bfloat16 matrix products (triton-lang/triton#11584); use float16 or float32 there"
        )


def _dot_precision(dtype: torch.dtype) -> str | None:
    # Products of float16/bfloat16 operands are exact in float32 accumulation, so the backend's default is right
    # for them. For float32 operands that default is TF32 on NVIDIA GPUs, which rounds them to 10 mantissa bits:
    # a reference cannot afford that, so float32 asks for IEEE products.
    return "ieee" if dtype == torch.float32 else None


def _forward(q: Tensor, k: Tensor, v: Tensor, causal: bool, sm_scale: float) -> tuple[Tensor, Tensor]:
    """Run the forward kernel on contiguous inputs: the output ``(B, H, T, D)`` and the float32 log-sum-exp
    ``(B, H, T)`` of each row's scaled scores."""
    batch, heads, seq_q, head_dim = q.shape
    kv_heads, seq_k = k.shape[1], k.shape[2]
    out = torch.empty_like(q)
    lse = torch.empty((batch, heads, seq_q), device=q.device, dtype=torch.float32)

    def grid(meta: dict) -> tuple[int, int]:
        return (triton.cdiv(seq_q, meta["BLOCK_M"]), batch * heads)

    _forward_kernel[grid](
        q, k, v, out, lse, sm_scale * LOG2E,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        heads, heads // kv_heads, seq_q, seq_k,
        HEAD_DIM=head_dim, CAUSAL=causal, DOT_PRECISION=_dot_precision(q.dtype),
    )  # fmt: skip
    return out, lse


def _backward(
    grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, causal: bool, sm_scale: float
) -> tuple[Tensor, Tensor, Tensor]:
    batch, heads, seq_q, head_dim = q.shape
    kv_heads, seq_k = k.shape[1], k.shape[2]
    grad_out = grad_out.contiguous()
    delta = torch.empty_like(lse)
    _backward_preprocess_kernel[(triton.cdiv(seq_q, _PREPROCESS_BLOCK_M), batch * heads)](
        out, grad_out, delta, out.stride(0), out.stride(1), out.stride(2), heads, seq_q,
        HEAD_DIM=head_dim, BLOCK_M=_PREPROCESS_BLOCK_M,
    )  # fmt: skip

    dq = torch.empty_like(q)
    dk = torch.empty_like(k)
    dv = torch.empty_like(v)
    group = heads // kv_heads
    common = dict(HEAD_DIM=head_dim, CAUSAL=causal, DOT_PRECISION=_dot_precision(q.dtype))

    def dkdv_grid(meta: dict) -> tuple[int, int]:
        return (triton.cdiv(seq_k, meta["BLOCK_N"]), batch * kv_heads)

    _backward_dkdv_kernel[dkdv_grid](
        q, k, v, grad_out, lse, delta, dk, dv, sm_scale, sm_scale * LOG2E,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        heads, group, seq_q, seq_k, **common,
    )  # fmt: skip

    def dq_grid(meta: dict) -> tuple[int, int]:
        return (triton.cdiv(seq_q, meta["BLOCK_M"]), batch * heads)

    _backward_dq_kernel[dq_grid](
        q, k, v, grad_out, lse, delta, dq, sm_scale, sm_scale * LOG2E,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        heads, group, seq_q, seq_k, **common,
    )  # fmt: skip
    return dq, dk, dv


class _FlashAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, causal: bool, sm_scale: float) -> Tensor:
        out, lse = _forward(q, k, v, causal, sm_scale)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.causal = causal
        ctx.sm_scale = sm_scale
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor, Tensor, Tensor, None, None]:
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = _backward(grad_out, q, k, v, out, lse, ctx.causal, ctx.sm_scale)
        return dq, dk, dv, None, None


def _prepare(
    q: Tensor, k: Tensor, v: Tensor, causal: bool, sm_scale: float | None
) -> tuple[Tensor, Tensor, Tensor, float]:
    _check_inputs(q, k, v, causal, sm_scale)
    scale = 1.0 / math.sqrt(q.shape[-1]) if sm_scale is None else float(sm_scale)
    return q.contiguous(), k.contiguous(), v.contiguous(), scale


def flash_attention(
    q: Tensor, k: Tensor, v: Tensor, causal: bool = False, sm_scale: float | None = None
) -> Tensor:
    """Softmax attention ``softmax(sm_scale * q k^T [+ causal mask]) v`` by the FlashAttention kernels.

    ``q`` is ``(B, H, T, D)``; ``k`` and ``v`` are ``(B, H_kv, S, D)`` with ``H_kv`` dividing ``H``
    (grouped-query attention when smaller). ``D`` is one of 16, 32, 64, 128; the dtype float16, bfloat16 or
    float32, the same for all three. ``causal`` uses SDPA's top-left alignment (query ``i`` sees keys
    ``j <= i``). ``sm_scale`` defaults to ``1 / sqrt(D)``. Returns ``(B, H, T, D)`` in the input dtype;
    differentiable once with respect to ``q``, ``k`` and ``v``. Non-contiguous inputs are copied.
    """
    q, k, v, scale = _prepare(q, k, v, causal, sm_scale)
    return _FlashAttention.apply(q, k, v, causal, scale)


def flash_attention_with_lse(
    q: Tensor, k: Tensor, v: Tensor, causal: bool = False, sm_scale: float | None = None
) -> tuple[Tensor, Tensor]:
    """The forward pass alone (no autograd): the output and the float32 log-sum-exp ``(B, H, T)`` of each row's
    scaled, masked scores, which is what the backward pass recomputes probabilities from."""
    q, k, v, scale = _prepare(q, k, v, causal, sm_scale)
    return _forward(q, k, v, causal, scale)


def attention_reference(
    q: Tensor, k: Tensor, v: Tensor, causal: bool = False, sm_scale: float | None = None
) -> Tensor:
    """Naive attention with the same conventions as ``flash_attention``, written to be obviously right.

    Materialises the ``(B, H, T, S)`` scores in float32 (float64 stays float64), so it is differentiable by
    autograd, runs on any device, and costs memory quadratic in the sequence length. Returns the input dtype.
    """
    _check_shapes(q, k, v)
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    scale = 1.0 / math.sqrt(q.shape[-1]) if sm_scale is None else float(sm_scale)
    group = q.shape[1] // k.shape[1]
    keys = k.to(compute).repeat_interleave(group, dim=1)  # (B, H, S, D)
    values = v.to(compute).repeat_interleave(group, dim=1)  # (B, H, S, D)
    scores = q.to(compute) @ keys.transpose(-2, -1) * scale  # (B, H, T, S)
    if causal:
        seq_q, seq_k = q.shape[2], k.shape[2]
        visible = torch.ones(seq_q, seq_k, dtype=torch.bool, device=q.device).tril()  # top-left, as SDPA
        scores = scores.masked_fill(~visible, float("-inf"))
    return (torch.softmax(scores, dim=-1) @ values).to(q.dtype)
