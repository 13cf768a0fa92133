"""Mixture of experts: a drop-in replacement for the dense SwiGLU feed-forward, as in Mixtral.

Each token is sent to ``top_k`` of ``n_experts`` SwiGLU feed-forward networks, chosen by a linear router, and the
chosen experts' outputs are summed with the router's weights. The parameters grow with ``n_experts``; the work
per token grows only with ``top_k``.

Choices, and how they compare with Mixtral (Jiang et al., 2024, arXiv:2401.04088) and Switch Transformer
(Fedus et al., 2021, arXiv:2101.03961):

- Router weights: softmax over all experts, keep the ``top_k`` largest, renormalise them to sum to 1. Mixtral's
  reference code takes the top-k logits and softmaxes those; that is the same number, because the softmax's
  denominator cancels in the renormalisation. Switch (top-1) does not renormalise: the token's output is scaled
  by its router probability, which is how the router gets a gradient there. With ``top_k >= 2`` the router
  still learns through the relative weights of the chosen experts, and through the auxiliary loss.
- Ties between router probabilities go to the lower expert index, so routing is reproducible; ``torch.topk``
  makes no promise about ties, a stable descending sort does.
- ``forward`` returns ``(y, aux_loss)`` rather than stashing the loss on the module: nothing is hidden in state,
  and the caller (a transformer block) adds ``aux_coef * aux_loss`` to its loss explicitly.
- The auxiliary load-balancing loss is Switch's ``n_experts * sum_i f_i * P_i``, where ``f_i`` is the fraction
  of tokens sent to expert ``i`` and ``P_i`` the mean router probability of expert ``i``. With top-k routing a
  token counts towards each of its ``k`` experts, so ``sum_i f_i = top_k`` and perfectly balanced routing gives a
  loss of ``top_k``; this is the value Hugging Face's Mixtral ``load_balancing_loss_func`` computes.
  ``f_i`` comes from a hard choice and has no gradient; ``P_i`` carries it to the router.
- Dispatch sorts the ``(token, expert)`` assignments by expert, gathers each expert's tokens into one
  contiguous batch, runs the experts one after another, and scatters the weighted outputs back with
  ``index_add_``: a loop over experts, never over tokens.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Expert(nn.Module):
    """One SwiGLU feed-forward network, with LLaMA's names: ``w2(silu(w1 x) * w3 x)``."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim, bias=False)
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden_dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


def route(router_logits: Tensor, top_k: int) -> tuple[Tensor, Tensor, Tensor]:
    """Pick each token's ``top_k`` experts from ``router_logits`` of shape ``(N, n_experts)``.

    Returns ``(probs, weights, experts)``: the float32 softmax over all experts ``(N, n_experts)``, the chosen
    experts' renormalised weights ``(N, top_k)`` and their indices ``(N, top_k)``, best first, ties to the lower
    index.
    """
    probs = torch.softmax(router_logits.float(), dim=-1)  # (N, E)
    sorted_probs, sorted_experts = probs.sort(dim=-1, descending=True, stable=True)  # (N, E)
    top_probs, experts = sorted_probs[:, :top_k], sorted_experts[:, :top_k]  # (N, K)
    weights = top_probs / top_probs.sum(dim=-1, keepdim=True)  # (N, K)
    return probs, weights, experts


def load_balancing_loss(probs: Tensor, experts: Tensor) -> Tensor:
    """Switch's auxiliary loss ``n_experts * sum_i f_i * P_i`` for one layer's routing (see the module notes).

    ``probs`` is the router softmax ``(N, n_experts)``, ``experts`` the chosen indices ``(N, top_k)``.
    """
    n_tokens, n_experts = probs.shape
    tokens_per_expert = torch.bincount(experts.reshape(-1), minlength=n_experts).to(probs.dtype)  # (E,)
    fraction_routed = tokens_per_expert / n_tokens  # f_i, sums to top_k
    mean_prob = probs.mean(dim=0)  # P_i, sums to 1
    return n_experts * (fraction_routed * mean_prob).sum()


class MoE(nn.Module):
    """``n_experts`` SwiGLU experts behind a softmax top-k router (``gate``); ``forward`` returns ``(y, aux)``."""

    def __init__(self, dim: int, hidden_dim: int, n_experts: int, top_k: int) -> None:
        super().__init__()
        if not 1 <= top_k <= n_experts:
            raise ValueError(f"top_k must be between 1 and n_experts={n_experts}, got {top_k}")
        self.dim = dim
        self.n_experts = n_experts
        self.top_k = top_k
        self.gate = nn.Linear(dim, n_experts, bias=False)
        self.experts = nn.ModuleList(Expert(dim, hidden_dim) for _ in range(n_experts))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x`` of shape ``(..., dim)`` to ``y`` of the same shape, and the scalar load-balancing loss."""
        if x.shape[-1] != self.dim:
            raise ValueError(f"MoE expects inputs of shape (..., {self.dim}), got {tuple(x.shape)}")
        tokens = x.reshape(-1, self.dim)  # (N, D)
        probs, weights, experts = route(self.gate(tokens), self.top_k)  # (N, E), (N, K), (N, K)

        # Flatten the N * K (token, expert) assignments ("slots") and group them by expert; the stable sort keeps
        # each expert's tokens in their original order.
        expert_of_slot = experts.reshape(-1)  # (N * K,)
        order = expert_of_slot.argsort(stable=True)  # (N * K,)
        token_of_slot = order // self.top_k  # (N * K,) slot s belongs to token s // K
        weight_of_slot = weights.reshape(-1)[order]  # (N * K,)
        tokens_per_expert = torch.bincount(expert_of_slot, minlength=self.n_experts).tolist()

        expert_inputs = tokens[token_of_slot].split(tokens_per_expert)  # E tensors of (n_e, D)
        expert_outputs = torch.cat(
            [expert(inputs) for expert, inputs in zip(self.experts, expert_inputs, strict=True)]
        )  # (N * K, D)
        weighted = (expert_outputs * weight_of_slot[:, None]).to(x.dtype)  # (N * K, D)
        y = torch.zeros_like(tokens).index_add_(0, token_of_slot, weighted)  # (N, D)
        return y.reshape(x.shape), load_balancing_loss(probs, experts)
