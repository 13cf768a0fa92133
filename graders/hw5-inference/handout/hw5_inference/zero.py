"""ZeRO stage 1: data parallelism where each rank keeps AdamW's state for only its share of the parameters.  (TODO)

Every rank holds all parameters and computes gradients on its own data. ``step()`` then

1. averages the gradients across the ranks (an all-reduce of the flattened gradients, divided by the world);
2. updates this rank's partition of the flattened parameters with AdamW, using state (``exp_avg``,
   ``exp_avg_sq``) that exists for that partition only;
3. all-gathers the updated partitions and writes them back into every parameter.

The parameters are flattened in the order given and concatenated; ``partition_bounds`` says which range each
rank owns (a range may start or end inside a tensor). AdamW is ``torch.optim.AdamW``'s: decoupled weight decay
``p *= 1 - lr * weight_decay``, then ``m = b1 m + (1 - b1) g``, ``v = b2 v + (1 - b2) g^2``,
``p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)``.
"""

import math

import torch
import torch.distributed as dist
from torch import Tensor


def partition_bounds(numel: int, world: int) -> list[tuple[int, int]]:
    """Rank ``r`` owns ``[r * numel // world, (r + 1) * numel // world)`` of the flattened parameters."""
    raise NotImplementedError("partition_bounds")


class ShardedAdamW:
    """AdamW with ZeRO-1 sharded state. launcher.py builds one per rank, sets each parameter's ``.grad`` to that
    rank's gradient, and calls ``step()``; afterwards every rank's parameters must equal plain AdamW's on the
    gradients averaged over the ranks."""

    def __init__(
        self,
        params: list[Tensor],
        lr: float,
        betas: tuple[float, float],
        eps: float,
        weight_decay: float,
    ) -> None:
        """Keep the parameters (the same tensors on every rank, updated in place by ``step``) and set
        ``self.bounds = partition_bounds(total number of elements, world size)``: launcher.py reports this
        rank's bounds."""
        raise NotImplementedError("ShardedAdamW.__init__")

    @torch.no_grad()
    def step(self) -> None:
        raise NotImplementedError("ShardedAdamW.step")

    def state_shards(self) -> tuple[Tensor, Tensor]:
        """This rank's ``(exp_avg, exp_avg_sq)`` as flat tensors of its partition's length (only these exist:
        the autograder checks that each rank holds the state of exactly its partition)."""
        raise NotImplementedError("ShardedAdamW.state_shards")
