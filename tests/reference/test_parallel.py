"""Tensor-parallel layers and the ZeRO-1 optimizer against their single-process counterparts.

Process groups are expensive to start, so one launch of two gloo processes on 127.0.0.1 runs every
distributed check; each check is still its own test, failing with the traceback of the rank(s) it failed on.
Inside a check both ranks build the same dense layer and inputs from one seed, run the parallel layer, and
compare the output, the input's gradient and the weights' gradients (the shards all-gathered) with the dense
layer's. float64 keeps the tolerance tight: the only difference left is the order of summation.
"""

import copy
import itertools
import multiprocessing
import os
import queue
import socket
import time
import traceback
from collections.abc import Callable
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.testing import assert_close

from reference_impl.parallel import (
    ColumnParallelLinear,
    ParallelAttention,
    ParallelFeedForward,
    RowParallelLinear,
    ShardedOptimizer,
    VocabParallelEmbedding,
    partition_bounds,
    precompute_freqs_cis,
)

WORLD_SIZE = 2
LAUNCH_TIMEOUT_S = 120.0  # the whole launch, process start-up included; a hang fails instead of blocking CI
COLLECTIVE_TIMEOUT = timedelta(seconds=60)  # a rank stuck in a collective raises instead of waiting forever
DTYPE = torch.float64


def gather_shards(shard: Tensor, dim: int) -> Tensor:
    """The full tensor from every rank's contiguous block along ``dim`` (no autograd)."""
    parts = [torch.empty_like(shard) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, shard.contiguous())
    return torch.cat(parts, dim=dim)


def leaf(t: Tensor) -> Tensor:
    return t.detach().clone().requires_grad_(True)


def check_column_parallel_gathered_output(rank: int, world: int) -> None:
    torch.manual_seed(0)
    dense = nn.Linear(12, 8, dtype=DTYPE)
    x, grad_out = torch.randn(3, 5, 12, dtype=DTYPE), torch.randn(3, 5, 8, dtype=DTYPE)
    x_dense, x_par = leaf(x), leaf(x)
    dense(x_dense).backward(grad_out)

    layer = ColumnParallelLinear.from_linear(dense, gather_output=True)
    y = layer(x_par)
    y.backward(grad_out)
    assert_close(y, dense(x))
    assert_close(x_par.grad, x_dense.grad)
    assert_close(gather_shards(layer.weight.grad, 0), dense.weight.grad)
    assert_close(gather_shards(layer.bias.grad, 0), dense.bias.grad)


def check_column_parallel_sliced_output(rank: int, world: int) -> None:
    torch.manual_seed(1)
    dense = nn.Linear(12, 8, dtype=DTYPE)
    x, grad_out = torch.randn(3, 5, 12, dtype=DTYPE), torch.randn(3, 5, 8, dtype=DTYPE)
    x_dense, x_par = leaf(x), leaf(x)
    dense(x_dense).backward(grad_out)

    layer = ColumnParallelLinear.from_linear(dense, gather_output=False)
    y = layer(x_par)
    assert y.shape == (3, 5, 8 // world)
    # Each rank holds its slice of the output and of its gradient; the input gradient needs all of them.
    y.backward(grad_out.chunk(world, dim=-1)[rank])
    assert_close(y, dense(x).chunk(world, dim=-1)[rank])
    assert_close(x_par.grad, x_dense.grad)
    assert_close(gather_shards(layer.weight.grad, 0), dense.weight.grad)
    assert_close(gather_shards(layer.bias.grad, 0), dense.bias.grad)


def check_row_parallel_full_input(rank: int, world: int) -> None:
    torch.manual_seed(2)
    dense = nn.Linear(12, 6, dtype=DTYPE)
    x, grad_out = torch.randn(4, 12, dtype=DTYPE), torch.randn(4, 6, dtype=DTYPE)
    x_dense, x_par = leaf(x), leaf(x)
    dense(x_dense).backward(grad_out)

    layer = RowParallelLinear.from_linear(dense, input_is_parallel=False)
    y = layer(x_par)
    y.backward(grad_out)
    assert_close(y, dense(x))
    assert_close(x_par.grad, x_dense.grad)
    assert_close(gather_shards(layer.weight.grad, 1), dense.weight.grad)
    assert_close(layer.bias.grad, dense.bias.grad)


def check_row_parallel_sliced_input(rank: int, world: int) -> None:
    torch.manual_seed(3)
    dense = nn.Linear(12, 6, dtype=DTYPE)
    x, grad_out = torch.randn(2, 3, 12, dtype=DTYPE), torch.randn(2, 3, 6, dtype=DTYPE)
    x_dense = leaf(x)
    dense(x_dense).backward(grad_out)

    layer = RowParallelLinear.from_linear(dense, input_is_parallel=True)
    x_slice = leaf(x.chunk(world, dim=-1)[rank])
    y = layer(x_slice)
    y.backward(grad_out)
    assert_close(y, dense(x))
    assert_close(x_slice.grad, x_dense.grad.chunk(world, dim=-1)[rank])
    assert_close(gather_shards(layer.weight.grad, 1), dense.weight.grad)
    assert_close(layer.bias.grad, dense.bias.grad)


def check_vocab_parallel_embedding(rank: int, world: int) -> None:
    torch.manual_seed(4)
    dense = nn.Embedding(10, 6, dtype=DTYPE)
    # Ids from both halves of the vocabulary, its first and last rows, and repeats (their gradients add up).
    ids = torch.tensor([[0, 4, 5, 9], [9, 3, 3, 7]])
    grad_out = torch.randn(2, 4, 6, dtype=DTYPE)
    dense(ids).backward(grad_out)

    layer = VocabParallelEmbedding.from_embedding(dense)
    assert layer.vocab_start == rank * 10 // world
    y = layer(ids)
    y.backward(grad_out)
    assert_close(y, dense(ids))
    assert_close(gather_shards(layer.weight.grad, 0), dense.weight.grad)
    with pytest.raises(IndexError, match="token ids"):
        layer(torch.tensor([[10]]))


def swiglu(x: Tensor, w1: Tensor, w2: Tensor, w3: Tensor) -> Tensor:
    return F.linear(F.silu(F.linear(x, w1)) * F.linear(x, w3), w2)


def check_parallel_feed_forward(rank: int, world: int) -> None:
    torch.manual_seed(5)
    dim, hidden = 8, 12
    w1, w2, w3 = (
        leaf(torch.randn(*shape, dtype=DTYPE) / 3) for shape in ((hidden, dim), (dim, hidden), (hidden, dim))
    )
    x, grad_out = torch.randn(2, 5, dim, dtype=DTYPE), torch.randn(2, 5, dim, dtype=DTYPE)
    x_dense, x_par = leaf(x), leaf(x)
    swiglu(x_dense, w1, w2, w3).backward(grad_out)

    layer = ParallelFeedForward.from_dense(w1.detach(), w2.detach(), w3.detach())
    y = layer(x_par)
    y.backward(grad_out)
    assert_close(y, swiglu(x, w1, w2, w3))
    assert_close(x_par.grad, x_dense.grad)
    assert_close(gather_shards(layer.w1.weight.grad, 0), w1.grad)
    assert_close(gather_shards(layer.w3.weight.grad, 0), w3.grad)
    assert_close(gather_shards(layer.w2.weight.grad, 1), w2.grad)


def dense_attention(x: Tensor, wq: Tensor, wk: Tensor, wv: Tensor, wo: Tensor, n_heads: int, n_kv_heads: int):
    """Causal GQA attention with RoPE, written independently of parallel.py: the pair rotation on strided
    slices, and an explicit loop over query heads choosing each one's key/value head."""
    batch, seq_len, dim = x.shape
    head_dim = dim // n_heads
    freqs_cis = precompute_freqs_cis(head_dim, seq_len)
    cos, sin = freqs_cis[..., 0].to(x.dtype), freqs_cis[..., 1].to(x.dtype)  # (T, D/2)

    def rotate(t: Tensor) -> Tensor:  # (B, T, D) for one head
        even, odd = t[..., 0::2], t[..., 1::2]
        return torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1).flatten(-2)

    q = (x @ wq.T).view(batch, seq_len, n_heads, head_dim)
    k = (x @ wk.T).view(batch, seq_len, n_kv_heads, head_dim)
    v = (x @ wv.T).view(batch, seq_len, n_kv_heads, head_dim)
    future = torch.ones(seq_len, seq_len, dtype=torch.bool).triu(1)
    heads = []
    for h in range(n_heads):
        kv = h // (n_heads // n_kv_heads)
        scores = rotate(q[:, :, h]) @ rotate(k[:, :, kv]).transpose(1, 2) / head_dim**0.5  # (B, T, T)
        heads.append(torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1) @ v[:, :, kv])
    return torch.cat(heads, dim=-1) @ wo.T


def check_attention(dim: int, n_heads: int, n_kv_heads: int, seed: int) -> None:
    torch.manual_seed(seed)
    seq_len = 6
    head_dim = dim // n_heads
    wq, wo = leaf(torch.randn(dim, dim, dtype=DTYPE) / 4), leaf(torch.randn(dim, dim, dtype=DTYPE) / 4)
    wk, wv = (leaf(torch.randn(n_kv_heads * head_dim, dim, dtype=DTYPE) / 4) for _ in range(2))
    x, grad_out = torch.randn(2, seq_len, dim, dtype=DTYPE), torch.randn(2, seq_len, dim, dtype=DTYPE)
    x_dense, x_par = leaf(x), leaf(x)
    dense_attention(x_dense, wq, wk, wv, wo, n_heads, n_kv_heads).backward(grad_out)

    layer = ParallelAttention.from_dense(
        wq.detach(), wk.detach(), wv.detach(), wo.detach(), n_heads, n_kv_heads
    )
    y = layer(x_par, precompute_freqs_cis(head_dim, seq_len))
    y.backward(grad_out)
    assert_close(y, dense_attention(x, wq, wk, wv, wo, n_heads, n_kv_heads))
    assert_close(x_par.grad, x_dense.grad)
    for name, weight in (("wq", wq), ("wk", wk), ("wv", wv)):
        assert_close(gather_shards(getattr(layer, name).weight.grad, 0), weight.grad, msg=name)
    assert_close(gather_shards(layer.wo.weight.grad, 1), wo.grad)


def check_parallel_attention_multi_head(rank: int, world: int) -> None:
    check_attention(dim=16, n_heads=4, n_kv_heads=4, seed=6)


def check_parallel_attention_grouped_query(rank: int, world: int) -> None:
    # Pairs of query heads share a key/value head; each rank holds four query heads and the two kv heads they
    # read, so a wrong query-to-kv mapping inside a rank shows.
    check_attention(dim=32, n_heads=8, n_kv_heads=4, seed=7)


def check_layers_reject_uneven_splits(rank: int, world: int) -> None:
    with pytest.raises(ValueError, match="out_features=7"):
        ColumnParallelLinear(4, 7)
    with pytest.raises(ValueError, match="in_features=5"):
        RowParallelLinear(5, 4)
    with pytest.raises(ValueError, match="num_embeddings=11"):
        VocabParallelEmbedding(11, 4)
    with pytest.raises(ValueError, match="n_kv_heads=1"):
        ParallelAttention(16, n_heads=4, n_kv_heads=1)


def check_layers_initialise_like_the_dense_layer(rank: int, world: int) -> None:
    for seed, (parallel_cls, dense_cls, args, shard_dim) in enumerate(
        [
            (ColumnParallelLinear, nn.Linear, (6, 4), 0),
            (RowParallelLinear, nn.Linear, (6, 4), 1),
            (VocabParallelEmbedding, nn.Embedding, (8, 3), 0),
        ]
    ):
        torch.manual_seed(seed)
        layer = parallel_cls(*args)
        torch.manual_seed(seed)
        dense = dense_cls(*args)
        assert_close(layer.weight, dense.weight.chunk(world, dim=shard_dim)[rank], msg=parallel_cls.__name__)
        if isinstance(dense, nn.Linear):
            expected_bias = dense.bias if shard_dim == 1 else dense.bias.chunk(world)[rank]
            assert_close(layer.bias, expected_bias, msg=parallel_cls.__name__)


def small_model() -> nn.Module:
    # 42 + 21 = 63 parameters: ranks own 31 and 32 of them, and the boundary cuts the first weight in two.
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3, bias=False)).to(DTYPE)


def data_parallel_loss(model: nn.Module, inputs: Tensor, targets: Tensor) -> Tensor:
    return F.mse_loss(model(inputs), targets)


def check_sharded_optimizer_matches_adamw(rank: int, world: int) -> None:
    torch.manual_seed(8)
    model = small_model()
    reference = copy.deepcopy(model)
    adamw = {"lr": 0.05, "betas": (0.9, 0.99), "weight_decay": 0.1}
    sharded = ShardedOptimizer(model.parameters(), torch.optim.AdamW, **adamw)
    plain = torch.optim.AdamW(reference.parameters(), **adamw)
    assert partition_bounds(63, world)[rank] == sharded.bounds[rank]

    for step in range(4):
        inputs, targets = torch.randn(world, 4, 5, dtype=DTYPE), torch.randn(world, 4, 3, dtype=DTYPE)
        sharded.zero_grad()
        data_parallel_loss(model, inputs[rank], targets[rank]).backward()
        sharded.step()
        # The unsharded run sees every rank's batch: the mean of equal-sized batches' losses has the mean
        # of their gradients.
        plain.zero_grad()
        torch.stack(
            [data_parallel_loss(reference, inputs[r], targets[r]) for r in range(world)]
        ).mean().backward()
        plain.step()
        for (name, p), p_ref in zip(model.named_parameters(), reference.parameters(), strict=True):
            assert_close(p, p_ref, msg=lambda m, name=name, step=step: f"{name} after step {step + 1}: {m}")

    owned = sharded.optimizer.state[sharded.shard]
    start, end = sharded.bounds[rank]
    assert owned["exp_avg"].shape == owned["exp_avg_sq"].shape == (end - start,)
    total = torch.tensor(owned["exp_avg"].numel())
    dist.all_reduce(total)
    assert total.item() == 63, "the ranks' optimizer state must cover every parameter exactly once"


def check_sharded_optimizer_state_dict_round_trip(rank: int, world: int) -> None:
    torch.manual_seed(9)
    model = small_model()
    twin = copy.deepcopy(model)
    first = ShardedOptimizer(model.parameters(), lr=0.05, weight_decay=0.1)
    second = ShardedOptimizer(twin.parameters(), lr=0.05, weight_decay=0.1)
    inputs, targets = torch.randn(4, 5, dtype=DTYPE), torch.randn(4, 3, dtype=DTYPE)
    for net in (model, twin):
        data_parallel_loss(net, inputs, targets).backward()
    first.step()
    second.load_state_dict(copy.deepcopy(first.state_dict()))  # a copy, as a checkpoint on disk is
    with torch.no_grad():
        for p, p_twin in zip(model.parameters(), twin.parameters(), strict=True):
            p_twin.copy_(p)
    for optimizer, net in ((first, model), (second, twin)):
        optimizer.zero_grad()
        data_parallel_loss(net, inputs, targets).backward()
        optimizer.step()
    for p, p_twin in zip(model.parameters(), twin.parameters(), strict=True):
        assert_close(p_twin, p)
    with pytest.raises(ValueError, match="cannot load"):
        second.load_state_dict({**first.state_dict(), "bounds": (0, 1)})


CHECKS: dict[str, Callable[[int, int], None]] = {
    "column_parallel_gathered_output": check_column_parallel_gathered_output,
    "column_parallel_sliced_output": check_column_parallel_sliced_output,
    "row_parallel_full_input": check_row_parallel_full_input,
    "row_parallel_sliced_input": check_row_parallel_sliced_input,
    "vocab_parallel_embedding": check_vocab_parallel_embedding,
    "parallel_feed_forward": check_parallel_feed_forward,
    "parallel_attention_multi_head": check_parallel_attention_multi_head,
    "parallel_attention_grouped_query": check_parallel_attention_grouped_query,
    "layers_reject_uneven_splits": check_layers_reject_uneven_splits,
    "layers_initialise_like_the_dense_layer": check_layers_initialise_like_the_dense_layer,
    "sharded_optimizer_matches_adamw": check_sharded_optimizer_matches_adamw,
    "sharded_optimizer_state_dict_round_trip": check_sharded_optimizer_state_dict_round_trip,
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def worker(rank: int, world: int, port: int, names: list[str], results: multiprocessing.Queue) -> None:
    """One rank: join the group, run every named check, report ``{name: traceback or None}``."""
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"  # keep gloo's own connections on the loopback interface too
    torch.set_num_threads(1)  # two ranks share two cores
    outcomes: dict[str, str | None] = {}
    try:
        dist.init_process_group(
            "gloo",
            init_method=f"tcp://127.0.0.1:{port}",
            rank=rank,
            world_size=world,
            timeout=COLLECTIVE_TIMEOUT,
        )
        for name in names:
            try:
                CHECKS[name](rank, world)
                outcomes[name] = None
            except Exception:
                outcomes[name] = traceback.format_exc()
        dist.destroy_process_group()
    except Exception:
        failure = traceback.format_exc()
        outcomes = {name: outcomes.get(name) or failure for name in names}
    results.put((rank, outcomes))


def run_distributed(names: list[str], world: int = WORLD_SIZE, timeout: float = LAUNCH_TIMEOUT_S) -> dict:
    """Run the named checks on ``world`` spawned ranks; ``{name: [failure per failing rank]}``.

    Raises ``RuntimeError`` when a rank dies without reporting or the launch outlives ``timeout``; every
    process started here is gone when it returns.
    """
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    port = free_port()
    processes = [
        context.Process(target=worker, args=(rank, world, port, names, results), daemon=True)
        for rank in range(world)
    ]
    for process in processes:
        process.start()
    reports: dict[int, dict[str, str | None]] = {}
    deadline = time.monotonic() + timeout
    try:
        while len(reports) < world:
            if time.monotonic() > deadline:
                raise RuntimeError(f"distributed checks did not finish within {timeout:.0f} s")
            try:
                rank, outcomes = results.get(timeout=0.5)
                reports[rank] = outcomes
            except queue.Empty:
                dead = [
                    rank
                    for rank, p in enumerate(processes)
                    if p.exitcode not in (None, 0) and rank not in reports
                ]
                if dead:
                    raise RuntimeError(f"rank(s) {dead} died without reporting") from None
    finally:
        for process in processes:
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
                process.join()
    return {
        name: [f"rank {rank}:\n{reports[rank][name]}" for rank in sorted(reports) if reports[rank][name]]
        for name in names
    }


@pytest.fixture(scope="module")
def distributed_failures() -> dict:
    return run_distributed(list(CHECKS))


@pytest.mark.slow
@pytest.mark.parametrize("check", list(CHECKS))
def test_matches_single_process(check: str, distributed_failures: dict) -> None:
    failures = distributed_failures[check]
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize(("numel", "world"), [(63, 2), (10, 3), (2, 4), (0, 2), (7, 1)])
def test_partition_is_contiguous_balanced_and_complete(numel: int, world: int) -> None:
    bounds = partition_bounds(numel, world)
    assert len(bounds) == world
    assert bounds[0][0] == 0 and bounds[-1][1] == numel
    assert all(end == next_start for (_, end), (next_start, _) in itertools.pairwise(bounds))
    sizes = [end - start for start, end in bounds]
    assert max(sizes) - min(sizes) <= 1


def test_partition_of_63_over_two_ranks() -> None:
    assert partition_bounds(63, 2) == [(0, 31), (31, 63)]
