"""Tensor parallelism (Megatron-LM style), one rank's side of it.

Every function here runs on each rank of the default process group (``torch.distributed``, 2 ranks) at the same
time, with that rank's shards of the weights. Shards are contiguous blocks: rank ``r`` of ``world`` holds
``full.chunk(world, dim)[r]``.

* column-parallel linear: the weight's rows (output features) are split; every rank reads the whole input and
  computes its slice of the output, all-gathered when the full output is wanted.
* row-parallel linear: the weight's columns (input features) are split; every rank multiplies its slice of
  the input and the partial products are summed with an all-reduce; the (unsplit) bias is added once, after.

Four autograd functions carry the communication, so that backward is right too:

====================  ======================  ======================
function              forward                 backward
====================  ======================  ======================
copy_to_parallel      identity                all-reduce (sum)
reduce_from_parallel  all-reduce (sum)        identity
scatter_to_parallel   keep this rank's slice  all-gather
gather_from_parallel  all-gather              keep this rank's slice
====================  ======================  ======================
"""

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from .model import apply_rotary_emb, precompute_freqs_cis


def shard(full: Tensor, dim: int, rank: int, world: int) -> Tensor:
    """Rank ``rank``'s contiguous block of ``full`` along ``dim`` (the size must split evenly)."""
    if full.shape[dim] % world:
        raise ValueError(f"dimension {dim} of size {full.shape[dim]} does not split across {world} ranks")
    return full.chunk(world, dim=dim)[rank]


def _all_reduce(x: Tensor) -> Tensor:
    summed = x.clone()  # collectives work in place; never overwrite a tensor autograd may have saved
    dist.all_reduce(summed)
    return summed


def _all_gather_last_dim(x: Tensor) -> Tensor:
    x = x.contiguous()
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x)
    return torch.cat(parts, dim=-1)


def _own_slice_last_dim(x: Tensor) -> Tensor:
    return shard(x, -1, dist.get_rank(), dist.get_world_size()).contiguous()


class _CopyToParallelRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return _all_reduce(grad)


class _ReduceFromParallelRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return _all_reduce(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad


class _ScatterToParallelRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return _own_slice_last_dim(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return _all_gather_last_dim(grad)


class _GatherFromParallelRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return _all_gather_last_dim(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return _own_slice_last_dim(grad)


def column_parallel_linear(x: Tensor, weight: Tensor, bias: Tensor | None, gather_output: bool) -> Tensor:
    """``x`` (..., in), ``weight`` (out/world, in), ``bias`` (out/world,) or None.

    Returns (..., out) with ``gather_output``, else this rank's slice (..., out/world).
    """
    x = _CopyToParallelRegion.apply(x)
    local = F.linear(x, weight, bias)  # (..., out/world)
    return _GatherFromParallelRegion.apply(local) if gather_output else local


def row_parallel_linear(x: Tensor, weight: Tensor, bias: Tensor | None, input_is_parallel: bool) -> Tensor:
    """``weight`` (out, in/world), ``bias`` (out,) or None; ``x`` is (..., in/world) when ``input_is_parallel``
    (this rank's slice), else the full (..., in). Returns the full (..., out) on every rank."""
    if not input_is_parallel:
        x = _ScatterToParallelRegion.apply(x)
    y = _ReduceFromParallelRegion.apply(F.linear(x, weight))  # (..., out), summed over ranks
    return y + bias if bias is not None else y


def parallel_feed_forward(x: Tensor, w1: Tensor, w2: Tensor, w3: Tensor) -> Tensor:
    """SwiGLU ``w2(silu(w1 x) * w3 x)`` with ``w1``, ``w3`` column-parallel ``(hidden/world, C)`` and ``w2``
    row-parallel ``(C, hidden/world)``: one all-reduce forward. Returns the full (..., C) on every rank."""
    gate = column_parallel_linear(x, w1, None, gather_output=False)  # (..., hidden/world)
    value = column_parallel_linear(x, w3, None, gather_output=False)
    return row_parallel_linear(F.silu(gate) * value, w2, None, input_is_parallel=True)


def parallel_attention(
    x: Tensor,
    wq: Tensor,
    wk: Tensor,
    wv: Tensor,
    wo: Tensor,
    n_heads: int,
    n_kv_heads: int,
    rope_theta: float = 10000.0,
) -> Tensor:
    """Causal grouped-query self-attention of ``x`` (B, T, C) at positions ``0 .. T-1``, heads split by rank.

    ``wq`` (H/world * D, C), ``wk`` and ``wv`` (K/world * D, C): this rank's query heads and the key/value heads
    they read; ``wo`` (C, H/world * D). Returns the full (B, T, C) on every rank.
    """
    world = dist.get_world_size()
    B, T, C = x.shape
    D = C // n_heads
    local_heads, local_kv_heads = n_heads // world, n_kv_heads // world
    q = column_parallel_linear(x, wq, None, gather_output=False).view(B, T, local_heads, D)
    k = column_parallel_linear(x, wk, None, gather_output=False).view(B, T, local_kv_heads, D)
    v = column_parallel_linear(x, wv, None, gather_output=False).view(B, T, local_kv_heads, D)
    freqs_cis = precompute_freqs_cis(D, T, rope_theta).to(x.device)[None]  # (1, T, D/2, 2)
    q, k = apply_rotary_emb(q, freqs_cis), apply_rotary_emb(k, freqs_cis)
    group = n_heads // n_kv_heads
    k, v = k.repeat_interleave(group, dim=2), v.repeat_interleave(group, dim=2)  # (B, T, H/world, D)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H/world, T, D)
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(D)  # (B, H/world, T, T)
    causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
    probs = torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)
    out = (probs @ v).transpose(1, 2).reshape(B, T, local_heads * D)  # (B, T, H/world * D)
    return row_parallel_linear(out, wo, None, input_is_parallel=True)
