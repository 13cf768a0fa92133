"""Tensor parallelism (Megatron-LM) and optimizer-state sharding (DeepSpeed ZeRO stage 1), written to be read.

Tensor parallelism splits single weight matrices across the ranks of a process group, so a layer too large
for one device runs on several. A linear layer ``y = x @ A.T + b`` (``A`` of shape ``(out, in)``) splits two
ways:

* column-parallel: each rank holds a block of ``A``'s rows, i.e. of the output features. Every rank needs the
  whole input and produces its own slice of ``y``.
* row-parallel: each rank holds a block of ``A``'s columns, i.e. of the input features. Every rank reads its
  slice of ``x`` and produces a partial ``y``; the partials are summed across ranks.

A column-parallel layer followed by a row-parallel one (the MLP's ``w1``/``w3`` then ``w2``, attention's
``wq``/``wk``/``wv`` then ``wo``) needs no communication in between, because the sliced activations are
exactly what the row-parallel layer reads: one all-reduce in the forward pass and one per column-parallel
layer in the backward pass. Four autograd functions carry that communication, in two pairs whose members
are each other's transpose:

====================  ======================  ======================
function              forward                 backward
====================  ======================  ======================
copy-to-parallel      identity                all-reduce (sum)
reduce-from-parallel  all-reduce (sum)        identity
scatter-to-parallel   keep this rank's slice  all-gather
gather-from-parallel  all-gather              keep this rank's slice
====================  ======================  ======================

Slices are contiguous blocks along the named dimension, rank ``r`` of ``world`` holding block ``r``, so a
shard is ``full.chunk(world, dim)[rank]``. Layers are initialised the way Megatron's CPU path does it: every
rank draws the full ("master") weight from its own random generator and keeps its shard, so ranks seeded
alike hold the shards of one consistent matrix, and a layer equals ``nn.Linear``/``nn.Embedding`` built under
the same seed.

``ShardedOptimizer`` is the data-parallel counterpart (ZeRO-1): parameters and gradients stay replicated, but
each rank keeps the optimizer state (Adam's two moments: twice the parameters' size) for only its share of
the parameters.

Everything here works on any ``torch.distributed`` backend with all-reduce and all-gather: gloo on CPU,
nccl on GPUs.
"""

import math
from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributed import ProcessGroup


def _world_size(group: ProcessGroup | None) -> int:
    return dist.get_world_size(group)


def _rank(group: ProcessGroup | None) -> int:
    return dist.get_rank(group)


def _shard(full: Tensor, dim: int, group: ProcessGroup | None) -> Tensor:
    """This rank's contiguous block of ``full`` along ``dim`` (``full.shape[dim]`` must divide evenly)."""
    world = _world_size(group)
    if full.shape[dim] % world:
        raise ValueError(
            f"dimension {dim} of size {full.shape[dim]} does not split evenly across {world} ranks"
        )
    return full.chunk(world, dim=dim)[_rank(group)]


def _all_reduce(x: Tensor, group: ProcessGroup | None) -> Tensor:
    # Collectives work in place: reduce a copy so a tensor autograd may have saved is never overwritten.
    summed = x.clone()
    dist.all_reduce(summed, group=group)
    return summed


def _all_gather_last_dim(x: Tensor, group: ProcessGroup | None) -> Tensor:
    x = x.contiguous()
    parts = [torch.empty_like(x) for _ in range(_world_size(group))]
    dist.all_gather(parts, x, group=group)
    return torch.cat(parts, dim=-1)


class _CopyToParallelRegion(torch.autograd.Function):
    """Identity forward, all-reduce backward: the input feeds a different slice of the computation on each
    rank, so its gradient is the sum of every rank's contribution."""

    @staticmethod
    def forward(ctx, x: Tensor, group: ProcessGroup | None) -> Tensor:
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return _all_reduce(grad, ctx.group), None


class _ReduceFromParallelRegion(torch.autograd.Function):
    """All-reduce forward, identity backward: the output is the sum of the ranks' partial results, and each
    partial's gradient is the output's gradient, which every rank already holds."""

    @staticmethod
    def forward(ctx, x: Tensor, group: ProcessGroup | None) -> Tensor:
        return _all_reduce(x, group)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return grad, None


class _ScatterToParallelRegion(torch.autograd.Function):
    """Keep this rank's slice of the last dimension forward; all-gather the slices' gradients backward."""

    @staticmethod
    def forward(ctx, x: Tensor, group: ProcessGroup | None) -> Tensor:
        ctx.group = group
        return _shard(x, -1, group).contiguous()

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return _all_gather_last_dim(grad, ctx.group), None


class _GatherFromParallelRegion(torch.autograd.Function):
    """All-gather the ranks' slices along the last dimension forward; keep this rank's slice backward."""

    @staticmethod
    def forward(ctx, x: Tensor, group: ProcessGroup | None) -> Tensor:
        ctx.group = group
        return _all_gather_last_dim(x, group)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return _shard(grad, -1, ctx.group).contiguous(), None


def copy_to_parallel_region(x: Tensor, group: ProcessGroup | None = None) -> Tensor:
    return _CopyToParallelRegion.apply(x, group)


def reduce_from_parallel_region(x: Tensor, group: ProcessGroup | None = None) -> Tensor:
    return _ReduceFromParallelRegion.apply(x, group)


def scatter_to_parallel_region(x: Tensor, group: ProcessGroup | None = None) -> Tensor:
    return _ScatterToParallelRegion.apply(x, group)


def gather_from_parallel_region(x: Tensor, group: ProcessGroup | None = None) -> Tensor:
    return _GatherFromParallelRegion.apply(x, group)


class ColumnParallelLinear(nn.Module):
    """``y = x @ A.T + b`` with ``A``'s rows (the output features) and ``b`` split across the group.

    Each rank holds ``weight`` of shape ``(out_features / world, in_features)``. With ``gather_output`` the
    result is all-gathered into the full ``(..., out_features)``; without, each rank returns its own slice
    ``(..., out_features / world)``, ready for a ``RowParallelLinear(input_is_parallel=True)``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        gather_output: bool = True,
        group: ProcessGroup | None = None,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        world = _world_size(group)
        if out_features % world:
            raise ValueError(f"out_features={out_features} must be divisible by the group size {world}")
        self.in_features = in_features
        self.out_features = out_features
        self.gather_output = gather_output
        self.group = group
        local_out = out_features // world
        self.weight = nn.Parameter(torch.empty(local_out, in_features, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(local_out, device=device, dtype=dtype)) if bias else None
        master = nn.Linear(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.load_full_weights(master.weight, master.bias)

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, group: ProcessGroup | None = None, *, gather_output: bool = True
    ) -> "ColumnParallelLinear":
        """The shard of a dense ``nn.Linear`` that this rank owns."""
        layer = cls(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            gather_output=gather_output,
            group=group,
            device=linear.weight.device,
            dtype=linear.weight.dtype,
        )
        layer.load_full_weights(linear.weight, linear.bias)
        return layer

    @torch.no_grad()
    def load_full_weights(self, weight: Tensor, bias: Tensor | None) -> None:
        """Copy this rank's rows of a full ``(out_features, in_features)`` weight (and bias)."""
        self.weight.copy_(_shard(weight, 0, self.group))
        if self.bias is not None:
            if bias is None:
                raise ValueError("this layer has a bias, so the full bias is needed too")
            self.bias.copy_(_shard(bias, 0, self.group))

    def forward(self, x: Tensor) -> Tensor:
        assert x.shape[-1] == self.in_features, f"expected (..., {self.in_features}), got {tuple(x.shape)}"
        x = copy_to_parallel_region(x, self.group)
        local = F.linear(x, self.weight, self.bias)  # (..., out_features / world)
        return gather_from_parallel_region(local, self.group) if self.gather_output else local

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, gather_output={self.gather_output}"
        )


class RowParallelLinear(nn.Module):
    """``y = x @ A.T + b`` with ``A``'s columns (the input features) split across the group.

    Each rank holds ``weight`` of shape ``(out_features, in_features / world)`` and multiplies its slice of
    the input by it; the partial products are all-reduced. ``input_is_parallel`` says the input is already
    this rank's slice ``(..., in_features / world)`` (the output of a ``ColumnParallelLinear`` without
    ``gather_output``); otherwise the full input is given and sliced here. The bias is not split: every rank
    holds all of it and adds it once, after the reduction.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        input_is_parallel: bool = False,
        group: ProcessGroup | None = None,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        world = _world_size(group)
        if in_features % world:
            raise ValueError(f"in_features={in_features} must be divisible by the group size {world}")
        self.in_features = in_features
        self.out_features = out_features
        self.input_is_parallel = input_is_parallel
        self.group = group
        self.weight = nn.Parameter(
            torch.empty(out_features, in_features // world, device=device, dtype=dtype)
        )
        self.bias = nn.Parameter(torch.empty(out_features, device=device, dtype=dtype)) if bias else None
        master = nn.Linear(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.load_full_weights(master.weight, master.bias)

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, group: ProcessGroup | None = None, *, input_is_parallel: bool = False
    ) -> "RowParallelLinear":
        """The shard of a dense ``nn.Linear`` that this rank owns."""
        layer = cls(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            input_is_parallel=input_is_parallel,
            group=group,
            device=linear.weight.device,
            dtype=linear.weight.dtype,
        )
        layer.load_full_weights(linear.weight, linear.bias)
        return layer

    @torch.no_grad()
    def load_full_weights(self, weight: Tensor, bias: Tensor | None) -> None:
        """Copy this rank's columns of a full ``(out_features, in_features)`` weight, and all of the bias."""
        self.weight.copy_(_shard(weight, 1, self.group))
        if self.bias is not None:
            if bias is None:
                raise ValueError("this layer has a bias, so the full bias is needed too")
            self.bias.copy_(bias)

    def forward(self, x: Tensor) -> Tensor:
        if not self.input_is_parallel:
            assert x.shape[-1] == self.in_features, (
                f"expected (..., {self.in_features}), got {tuple(x.shape)}"
            )
            x = scatter_to_parallel_region(x, self.group)
        local_in = self.weight.shape[1]
        assert x.shape[-1] == local_in, f"expected this rank's slice (..., {local_in}), got {tuple(x.shape)}"
        partial = F.linear(x, self.weight)  # (..., out_features): this rank's share of the sum over inputs
        y = reduce_from_parallel_region(partial, self.group)
        return y + self.bias if self.bias is not None else y

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, input_is_parallel={self.input_is_parallel}"
        )


class VocabParallelEmbedding(nn.Module):
    """An embedding table split by rows (token ids) across the group.

    Rank ``r`` holds the contiguous id range ``[r * V / world, (r + 1) * V / world)``. Each rank looks up the
    ids it owns, writes zeros for the others, and an all-reduce sums the ranks' results: every id is owned by
    exactly one rank. ``num_embeddings`` must divide evenly; pad the vocabulary to a multiple of the group
    size (as Megatron does) when it does not.
    """

    def __init__(
        self,
        num_embeddings: int,
        dim: int,
        group: ProcessGroup | None = None,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        world = _world_size(group)
        if num_embeddings % world:
            raise ValueError(f"num_embeddings={num_embeddings} must be divisible by the group size {world}")
        self.num_embeddings = num_embeddings
        self.dim = dim
        self.group = group
        self.vocab_per_rank = num_embeddings // world
        self.vocab_start = _rank(group) * self.vocab_per_rank
        self.weight = nn.Parameter(torch.empty(self.vocab_per_rank, dim, device=device, dtype=dtype))
        self.load_full_weights(nn.Embedding(num_embeddings, dim, device=device, dtype=dtype).weight)

    @classmethod
    def from_embedding(
        cls, embedding: nn.Embedding, group: ProcessGroup | None = None
    ) -> "VocabParallelEmbedding":
        """The shard of a dense ``nn.Embedding`` that this rank owns."""
        layer = cls(
            embedding.num_embeddings,
            embedding.embedding_dim,
            group=group,
            device=embedding.weight.device,
            dtype=embedding.weight.dtype,
        )
        layer.load_full_weights(embedding.weight)
        return layer

    @torch.no_grad()
    def load_full_weights(self, weight: Tensor) -> None:
        """Copy this rank's rows of a full ``(num_embeddings, dim)`` table."""
        self.weight.copy_(_shard(weight, 0, self.group))

    def forward(self, ids: Tensor) -> Tensor:
        if ids.dtype.is_floating_point:
            raise TypeError(f"token ids must be integers, got {ids.dtype}")
        # Checked here because an id outside every rank's range would silently embed to zeros.
        if ids.numel() and (ids.min() < 0 or ids.max() >= self.num_embeddings):
            raise IndexError(f"token ids must lie in [0, {self.num_embeddings})")
        outside = (ids < self.vocab_start) | (ids >= self.vocab_start + self.vocab_per_rank)
        local_ids = (ids - self.vocab_start).masked_fill(outside, 0)  # row 0 stands in; zeroed just below
        vectors = F.embedding(local_ids, self.weight)  # (*ids.shape, dim)
        vectors = vectors.masked_fill(outside.unsqueeze(-1), 0.0)
        return reduce_from_parallel_region(vectors, self.group)

    def extra_repr(self) -> str:
        return f"num_embeddings={self.num_embeddings}, dim={self.dim}, vocab_start={self.vocab_start}"


class ParallelFeedForward(nn.Module):
    """LLaMA's SwiGLU MLP, ``w2(silu(w1(x)) * w3(x))``, with the hidden dimension split across the group.

    ``w1`` and ``w3`` are column-parallel and ``w2`` is row-parallel, so each rank computes its slice of the
    hidden activations (SiLU and the product are elementwise, hence need no communication) and one all-reduce
    sums the ranks' outputs. Megatron fuses ``w1`` and ``w3`` into one matrix to save one all-reduce in the
    backward pass; they stay separate here so the weights keep LLaMA's names.
    """

    def __init__(self, dim: int, hidden_dim: int, group: ProcessGroup | None = None) -> None:
        super().__init__()
        self.w1 = ColumnParallelLinear(dim, hidden_dim, bias=False, gather_output=False, group=group)
        self.w3 = ColumnParallelLinear(dim, hidden_dim, bias=False, gather_output=False, group=group)
        self.w2 = RowParallelLinear(hidden_dim, dim, bias=False, input_is_parallel=True, group=group)

    @classmethod
    def from_dense(
        cls, w1: Tensor, w2: Tensor, w3: Tensor, group: ProcessGroup | None = None
    ) -> "ParallelFeedForward":
        """From the dense weights: ``w1`` and ``w3`` of shape ``(hidden_dim, dim)``, ``w2`` of shape
        ``(dim, hidden_dim)`` (``ff.w1.weight, ff.w2.weight, ff.w3.weight`` of a ``model.FeedForward``)."""
        hidden_dim, dim = w1.shape
        if w3.shape != (hidden_dim, dim) or w2.shape != (dim, hidden_dim):
            raise ValueError(
                f"inconsistent shapes: w1 {tuple(w1.shape)}, w2 {tuple(w2.shape)}, w3 {tuple(w3.shape)}"
            )
        layer = cls(dim, hidden_dim, group=group).to(device=w1.device, dtype=w1.dtype)
        layer.w1.load_full_weights(w1, None)
        layer.w2.load_full_weights(w2, None)
        layer.w3.load_full_weights(w3, None)
        return layer

    def forward(self, x: Tensor) -> Tensor:
        hidden = F.silu(self.w1(x)) * self.w3(x)  # (..., hidden_dim / world)
        return self.w2(hidden)  # (..., dim)


def precompute_freqs_cis(head_dim: int, seq_len: int, theta: float = 10000.0) -> Tensor:
    """RoPE rotations for positions ``0 .. seq_len-1`` in ``model.py``'s layout: ``(seq_len, head_dim / 2,
    2)`` float32 holding ``(cos, sin)`` of the angle ``t * theta ** (-2i / head_dim)`` for position ``t`` and
    feature pair ``i``."""
    if head_dim % 2:
        raise ValueError(f"RoPE rotates feature pairs, so head_dim must be even, got {head_dim}")
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)  # (D/2,)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)  # (T, D/2)
    return torch.stack((angles.cos(), angles.sin()), dim=-1)  # (T, D/2, 2)


def apply_rotary_emb(x: Tensor, freqs_cis: Tensor) -> Tensor:
    """Rotate each adjacent feature pair ``(x[..., 2i], x[..., 2i + 1])`` of ``x`` ``(B, T, H, D)``, read as
    the complex number ``x[2i] + 1j * x[2i + 1]``, by its position's angle (Meta's LLaMA convention).

    ``freqs_cis`` is ``(T, D / 2, 2)`` as ``precompute_freqs_cis`` (or ``model.precompute_freqs_cis``) returns
    it, sliced to the positions of ``x``. Computed in at least float32; returned in ``x``'s dtype."""
    batch, seq_len, heads, head_dim = x.shape
    assert freqs_cis.shape == (seq_len, head_dim // 2, 2), (
        f"freqs_cis {tuple(freqs_cis.shape)}, x {tuple(x.shape)}"
    )
    compute = torch.promote_types(x.dtype, torch.float32)
    pairs = x.to(compute).reshape(batch, seq_len, heads, head_dim // 2, 2)  # (B, T, H, D/2, 2)
    real, imag = pairs[..., 0], pairs[..., 1]  # (B, T, H, D/2)
    cis = freqs_cis.to(compute).view(
        1, seq_len, 1, head_dim // 2, 2
    )  # (1, T, 1, D/2, 2): same for every head
    cos, sin = cis[..., 0], cis[..., 1]  # (1, T, 1, D/2)
    rotated = torch.stack((real * cos - imag * sin, real * sin + imag * cos), dim=-1)  # (B, T, H, D/2, 2)
    return rotated.reshape(batch, seq_len, heads, head_dim).to(x.dtype)  # (B, T, H, D)


class ParallelAttention(nn.Module):
    """Causal self-attention with rotary embeddings and grouped-query heads, the heads split across the group.

    It mirrors ``model.Attention`` without its KV cache and padding mask (``wq wk wv wo`` without biases,
    RoPE on adjacent feature pairs, query head ``h`` reading key/value head ``h // (n_heads / n_kv_heads)``),
    written out here so this file stands alone; ``from_dense(attention.wq.weight, ...)`` shards one.

    ``wq``, ``wk`` and ``wv`` are column-parallel: the rows of a projection are grouped by head, so a
    contiguous block of rows is a contiguous block of heads, and rank ``r`` holds query heads
    ``[r * H / world, (r + 1) * H / world)`` together with exactly the key/value heads those queries read.
    Attention is per head, so it runs locally; ``wo`` is row-parallel and its all-reduce sums the heads'
    contributions. Both ``n_heads`` and ``n_kv_heads`` must divide by the group size.
    """

    def __init__(
        self, dim: int, n_heads: int, n_kv_heads: int | None = None, group: ProcessGroup | None = None
    ) -> None:
        super().__init__()
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        world = _world_size(group)
        if dim % n_heads:
            raise ValueError(f"dim={dim} must be divisible by n_heads={n_heads}")
        if n_heads % n_kv_heads:
            raise ValueError(f"n_heads={n_heads} must be a multiple of n_kv_heads={n_kv_heads}")
        if n_heads % world or n_kv_heads % world:
            raise ValueError(
                f"n_heads={n_heads} and n_kv_heads={n_kv_heads} must both be divisible "
                f"by the group size {world}"
            )
        self.n_heads = n_heads
        self.n_kv_heads = n_kv_heads
        self.head_dim = dim // n_heads
        self.n_local_heads = n_heads // world
        self.n_local_kv_heads = n_kv_heads // world
        self.n_rep = n_heads // n_kv_heads  # query heads per key/value head
        self.wq = ColumnParallelLinear(
            dim, n_heads * self.head_dim, bias=False, gather_output=False, group=group
        )
        self.wk = ColumnParallelLinear(
            dim, n_kv_heads * self.head_dim, bias=False, gather_output=False, group=group
        )
        self.wv = ColumnParallelLinear(
            dim, n_kv_heads * self.head_dim, bias=False, gather_output=False, group=group
        )
        self.wo = RowParallelLinear(
            n_heads * self.head_dim, dim, bias=False, input_is_parallel=True, group=group
        )

    @classmethod
    def from_dense(
        cls,
        wq: Tensor,
        wk: Tensor,
        wv: Tensor,
        wo: Tensor,
        n_heads: int,
        n_kv_heads: int | None = None,
        group: ProcessGroup | None = None,
    ) -> "ParallelAttention":
        """From the dense weights: ``wq`` ``(n_heads * head_dim, dim)``, ``wk`` and ``wv``
        ``(n_kv_heads * head_dim, dim)``, ``wo`` ``(dim, n_heads * head_dim)``."""
        dim = wq.shape[1]
        layer = cls(dim, n_heads, n_kv_heads, group=group).to(device=wq.device, dtype=wq.dtype)
        kv_shape = (layer.n_kv_heads * layer.head_dim, dim)
        if wq.shape != (dim, dim) or wk.shape != kv_shape or wv.shape != kv_shape or wo.shape != (dim, dim):
            raise ValueError(
                f"inconsistent shapes for n_heads={n_heads}, n_kv_heads={layer.n_kv_heads}: "
                f"wq {tuple(wq.shape)}, wk {tuple(wk.shape)}, wv {tuple(wv.shape)}, wo {tuple(wo.shape)}"
            )
        for layer_part, weight in ((layer.wq, wq), (layer.wk, wk), (layer.wv, wv), (layer.wo, wo)):
            layer_part.load_full_weights(weight, None)
        return layer

    def forward(self, x: Tensor, freqs_cis: Tensor) -> Tensor:
        """``x`` ``(B, T, dim)``, ``freqs_cis`` ``(T, head_dim / 2, 2)`` for the positions of ``x`` (see
        ``precompute_freqs_cis``). Returns ``(B, T, dim)``, the same on every rank."""
        batch, seq_len, _ = x.shape
        q = self.wq(x).view(batch, seq_len, self.n_local_heads, self.head_dim)  # (B, T, H_local, D)
        k = self.wk(x).view(batch, seq_len, self.n_local_kv_heads, self.head_dim)  # (B, T, KV_local, D)
        v = self.wv(x).view(batch, seq_len, self.n_local_kv_heads, self.head_dim)  # (B, T, KV_local, D)
        q = apply_rotary_emb(q, freqs_cis)
        k = apply_rotary_emb(k, freqs_cis)
        # Local query head i reads local key/value head i // n_rep, as in the dense layer.
        k = k.repeat_interleave(self.n_rep, dim=2)  # (B, T, H_local, D)
        v = v.repeat_interleave(self.n_rep, dim=2)  # (B, T, H_local, D)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H_local, T, D)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)  # (B, H_local, T, T)
        causal = torch.ones(seq_len, seq_len, dtype=torch.bool, device=x.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
        weights = torch.softmax(scores.to(torch.promote_types(q.dtype, torch.float32)), dim=-1).to(q.dtype)
        out = weights @ v  # (B, H_local, T, D)
        out = out.transpose(1, 2).reshape(
            batch, seq_len, self.n_local_heads * self.head_dim
        )  # (B, T, H_local*D)
        return self.wo(out)  # (B, T, dim)


def partition_bounds(numel: int, world_size: int) -> list[tuple[int, int]]:
    """Split ``numel`` flat elements into ``world_size`` contiguous ranges, balanced to within one element.

    Rank ``r`` owns ``[r * numel // world_size, (r + 1) * numel // world_size)``. A range may begin or end
    inside a parameter tensor, which is what balances the ranks whatever the parameters' sizes (DeepSpeed's
    ZeRO partitions its flat buffer the same way).
    """
    if numel < 0 or world_size < 1:
        raise ValueError(f"need numel >= 0 and world_size >= 1, got {numel} and {world_size}")
    return [(r * numel // world_size, (r + 1) * numel // world_size) for r in range(world_size)]


class ShardedOptimizer:
    """ZeRO stage 1: data parallelism where each rank keeps optimizer state for only its share of parameters.

    Every rank holds all parameters and computes gradients on its own batch. ``step()`` then

    1. averages the gradients across the group (an all-reduce of the flattened gradients);
    2. steps ``optimizer_cls`` on this rank's partition of the flattened parameters (``partition_bounds``
       over the parameters concatenated in the order given), so only that partition has optimizer state;
    3. all-gathers the updated partitions and writes them back into every parameter.

    For elementwise optimizers (SGD, Adam, AdamW: each element's update depends on that element alone) this
    equals the unsharded optimizer stepped on the averaged gradients. Optimizers that look at whole tensors
    (LAMB, Adafactor) would not, and gradient clipping by global norm is left to the caller. All parameters
    share one set of hyperparameters (``**kwargs``) and must have the same dtype and device; every rank must
    pass the same parameters in the same order, with equal values. A parameter without a gradient counts as
    a zero gradient (DeepSpeed does the same), where ``torch.optim`` would skip it.

    The parameters are the source of truth: the owned partition is read from them at every step, so weights
    loaded into the model between steps need no extra call.
    """

    def __init__(
        self,
        params: Iterable[Tensor],
        optimizer_cls: type[torch.optim.Optimizer] = torch.optim.AdamW,
        group: ProcessGroup | None = None,
        **kwargs: Any,
    ) -> None:
        self.params: list[Tensor] = list(params)
        if not self.params:
            raise ValueError("ShardedOptimizer got no parameters")
        if len({(p.dtype, p.device) for p in self.params}) > 1:
            raise ValueError(
                "all parameters must share one dtype and device, since they are flattened together"
            )
        self.group = group
        self.world_size = _world_size(group)
        self.rank = _rank(group)
        self.numel = sum(p.numel() for p in self.params)
        self.bounds = partition_bounds(self.numel, self.world_size)
        start, end = self.bounds[self.rank]
        # The flat slice this rank steps; its optimizer state is the only optimizer state on this rank.
        self.shard = nn.Parameter(self._flat_params()[start:end].clone())
        self.optimizer = optimizer_cls([self.shard], **kwargs)

    @property
    def param_groups(self) -> list[dict]:
        """The inner optimizer's one parameter group: change ``lr`` here (as a scheduler would)."""
        return self.optimizer.param_groups

    @torch.no_grad()
    def _flat_params(self) -> Tensor:
        return torch.cat([p.detach().reshape(-1) for p in self.params])  # (numel,)

    @torch.no_grad()
    def step(self) -> None:
        start, end = self.bounds[self.rank]
        grads = torch.cat(
            [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in self.params]
        )  # (numel,)
        dist.all_reduce(grads, group=self.group)
        grads /= self.world_size
        self.shard.copy_(self._flat_params()[start:end])
        self.shard.grad = grads[start:end]
        self.optimizer.step()
        self._all_gather_into_params()

    @torch.no_grad()
    def _all_gather_into_params(self) -> None:
        # all_gather needs equal sizes, so every shard is padded to the largest (at most one element more).
        longest = max(end - start for start, end in self.bounds)
        padded = torch.zeros(longest, dtype=self.shard.dtype, device=self.shard.device)
        padded[: self.shard.numel()] = self.shard
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(parts, padded, group=self.group)
        flat = torch.cat([part[: end - start] for part, (start, end) in zip(parts, self.bounds, strict=True)])
        offset = 0
        for p in self.params:
            p.copy_(flat[offset : offset + p.numel()].view_as(p))
            offset += p.numel()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()
        self.shard.grad = None

    def state_dict(self) -> dict:
        """This rank's optimizer state (for its partition only) and the partition it belongs to. As with
        ``torch.optim``, the tensors are the live state: save or copy them before stepping again."""
        return {
            "world_size": self.world_size,
            "rank": self.rank,
            "bounds": self.bounds[self.rank],
            "optimizer": self.optimizer.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Load a ``state_dict()`` saved by the same rank, in a group of the same size, over the same
        parameters."""
        mine = (self.world_size, self.rank, tuple(self.bounds[self.rank]))
        saved = (state["world_size"], state["rank"], tuple(state["bounds"]))
        if saved != mine:
            raise ValueError(f"state for (world_size, rank, bounds)={saved} cannot load into {mine}")
        self.optimizer.load_state_dict(state["optimizer"])
