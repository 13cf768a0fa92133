"""ZeRO stage 1: data parallelism where each rank keeps AdamW's state for only its share of the parameters."""

import math

import torch
import torch.distributed as dist
from torch import Tensor


def partition_bounds(numel: int, world: int) -> list[tuple[int, int]]:
    """Contiguous ranges of the flattened parameters: rank ``r`` owns
    ``[r * numel // world, (r + 1) * numel // world)``."""
    return [(r * numel // world, (r + 1) * numel // world) for r in range(world)]


class ShardedAdamW:
    """AdamW whose state (``exp_avg``, ``exp_avg_sq``) exists on each rank for its partition only.

    ``step()`` averages the gradients over the ranks, updates this rank's partition of the flattened
    parameters (in the order given) with AdamW, and all-gathers the partitions back into every parameter.
    """

    def __init__(
        self,
        params: list[Tensor],
        lr: float,
        betas: tuple[float, float],
        eps: float,
        weight_decay: float,
    ) -> None:
        self.params = list(params)
        self.lr, self.betas, self.eps, self.weight_decay = lr, tuple(betas), eps, weight_decay
        self.world = dist.get_world_size()
        self.rank = dist.get_rank()
        self.bounds = partition_bounds(sum(p.numel() for p in self.params), self.world)
        start, end = self.bounds[self.rank]
        reference = self.params[0]
        self.exp_avg = reference.new_zeros(end - start)  # the only optimizer state on this rank
        self.exp_avg_sq = reference.new_zeros(end - start)
        self.steps = 0

    def _flat(self, tensors: list[Tensor]) -> Tensor:
        return torch.cat([t.detach().reshape(-1) for t in tensors])  # (numel,)

    @torch.no_grad()
    def step(self) -> None:
        start, end = self.bounds[self.rank]
        grads = self._flat([p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params])
        dist.all_reduce(grads)
        grad = grads[start:end] / self.world
        shard = self._flat(self.params)[start:end]

        # AdamW as torch.optim.AdamW does it: decoupled weight decay, then the bias-corrected Adam update.
        self.steps += 1
        beta1, beta2 = self.betas
        shard.mul_(1 - self.lr * self.weight_decay)
        self.exp_avg.lerp_(grad, 1 - beta1)
        self.exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        bias_correction1 = 1 - beta1**self.steps
        bias_correction2 = 1 - beta2**self.steps
        denom = (self.exp_avg_sq.sqrt() / math.sqrt(bias_correction2)).add_(self.eps)
        shard.addcdiv_(self.exp_avg, denom, value=-self.lr / bias_correction1)

        # all_gather needs equal sizes: pad every partition to the longest (at most one element longer).
        longest = max(hi - lo for lo, hi in self.bounds)
        padded = shard.new_zeros(longest)
        padded[: end - start] = shard
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(parts, padded)
        flat = torch.cat([part[: hi - lo] for part, (lo, hi) in zip(parts, self.bounds, strict=True)])
        offset = 0
        for p in self.params:
            p.copy_(flat[offset : offset + p.numel()].view_as(p))
            offset += p.numel()

    def state_shards(self) -> tuple[Tensor, Tensor]:
        """This rank's ``(exp_avg, exp_avg_sq)``, each of its partition's length."""
        return self.exp_avg, self.exp_avg_sq
