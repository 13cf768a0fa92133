"""Tensor parallelism (Megatron-LM style), one rank's side of it.  (TODO)

Every function here runs on each rank of the default process group (``torch.distributed``, 2 ranks, gloo) at
the same time, with that rank's shards of the weights; launcher.py starts the ranks and calls them. Use
``dist.get_rank()`` and ``dist.get_world_size()``. Shards are contiguous blocks: rank ``r`` of ``world`` holds
``full.chunk(world, dim)[r]``.

* column-parallel linear: the weight's rows (output features) are split; every rank reads the whole input and
  computes its slice of the output, all-gathered when the full output is wanted.
* row-parallel linear: the weight's columns (input features) are split; every rank multiplies its slice of
  the input and the partial products are summed with an all-reduce; the (unsplit) bias is added once, after.

The communication must be differentiable, because the autograder checks gradients too. Write four
``torch.autograd.Function`` s (``dist.all_reduce`` and ``dist.all_gather`` work in place and know nothing of
autograd):

====================  ======================  ======================
function              forward                 backward
====================  ======================  ======================
copy_to_parallel      identity                all-reduce (sum)
reduce_from_parallel  all-reduce (sum)        identity
scatter_to_parallel   keep this rank's slice  all-gather
gather_from_parallel  all-gather              keep this rank's slice
====================  ======================  ======================

Slices and gathers are along the last dimension. ``torch.distributed.nn`` (ready-made differentiable
collectives) is off limits: the point is to write these yourself.
"""

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from .model import apply_rotary_emb, precompute_freqs_cis


def shard(full: Tensor, dim: int, rank: int, world: int) -> Tensor:
    """Rank ``rank``'s contiguous block of ``full`` along ``dim``; raise ``ValueError`` if the size does not
    split evenly across ``world`` ranks. (launcher.py uses it to hand each rank its weights.)"""
    raise NotImplementedError("shard")


class _CopyToParallelRegion(torch.autograd.Function):
    """Identity forward; all-reduce (sum) of the gradient backward."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        raise NotImplementedError("copy_to_parallel forward")

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        raise NotImplementedError("copy_to_parallel backward")


class _ReduceFromParallelRegion(torch.autograd.Function):
    """All-reduce (sum) forward; identity backward."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        raise NotImplementedError("reduce_from_parallel forward")

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        raise NotImplementedError("reduce_from_parallel backward")


class _ScatterToParallelRegion(torch.autograd.Function):
    """Keep this rank's slice of the last dimension forward; all-gather the slices' gradients backward."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        raise NotImplementedError("scatter_to_parallel forward")

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        raise NotImplementedError("scatter_to_parallel backward")


class _GatherFromParallelRegion(torch.autograd.Function):
    """All-gather the ranks' slices along the last dimension forward; keep this rank's slice backward."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        raise NotImplementedError("gather_from_parallel forward")

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        raise NotImplementedError("gather_from_parallel backward")


def column_parallel_linear(x: Tensor, weight: Tensor, bias: Tensor | None, gather_output: bool) -> Tensor:
    """``x @ A.T + b`` with the rows of ``A`` split across the ranks.

    Args:
        x: ``(..., in)``, the same on every rank.
        weight: this rank's ``(out / world, in)`` rows of ``A``; bias: its ``(out / world,)`` slice, or None.
        gather_output: all-gather the result into the full ``(..., out)``; else return this rank's slice
            ``(..., out / world)``, ready for a row-parallel layer with ``input_is_parallel``.

    Backward: the input's gradient must be the sum over ranks of each rank's contribution.
    """
    raise NotImplementedError("column_parallel_linear")


def row_parallel_linear(x: Tensor, weight: Tensor, bias: Tensor | None, input_is_parallel: bool) -> Tensor:
    """``x @ A.T + b`` with the columns of ``A`` split across the ranks.

    Args:
        x: this rank's slice ``(..., in / world)`` when ``input_is_parallel``, else the full ``(..., in)``
            (slice it here).
        weight: this rank's ``(out, in / world)`` columns of ``A``.
        bias: the whole ``(out,)`` (every rank holds all of it; add it once, after the reduction), or None.

    Returns the full ``(..., out)`` on every rank.
    """
    raise NotImplementedError("row_parallel_linear")


def parallel_feed_forward(x: Tensor, w1: Tensor, w2: Tensor, w3: Tensor) -> Tensor:
    """SwiGLU ``w2(silu(w1 x) * w3 x)`` with ``w1``, ``w3`` column-parallel (this rank's ``(hidden / world, C)``
    rows) and ``w2`` row-parallel (its ``(C, hidden / world)`` columns): no communication between them, one
    all-reduce at the end. ``x`` ``(..., C)``; returns the full ``(..., C)`` on every rank."""
    raise NotImplementedError("parallel_feed_forward")


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
    """Causal grouped-query self-attention of ``x`` ``(B, T, C)`` at positions ``0 .. T-1`` (no cache), with
    RoPE (model.py) on queries and keys, its heads split across the ranks.

    Args:
        wq: this rank's ``(H / world * D, C)`` rows of the query projection: query heads
            ``[r * H / world, (r + 1) * H / world)``.
        wk, wv: this rank's ``(K / world * D, C)`` rows: exactly the key/value heads those queries read
            (query head ``h`` reads key/value head ``h // (H // K)``).
        wo: this rank's ``(C, H / world * D)`` columns of the output projection.
        n_heads, n_kv_heads: H and K of the whole layer (both divisible by the world size).

    Returns the full ``(B, T, C)`` on every rank.
    """
    raise NotImplementedError("parallel_attention")
