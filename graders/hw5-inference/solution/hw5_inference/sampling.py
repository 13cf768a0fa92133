"""Choosing the next token: greedy, temperature, top-k and top-p (nucleus) sampling."""

import torch
import torch.nn.functional as F
from torch import Tensor


def top_k_filter(logits: Tensor, top_k: int) -> Tensor:
    """True for every token whose logit is at least the k-th largest of its row (ties with it all kept)."""
    k = min(top_k, logits.shape[-1])
    kth_largest = torch.topk(logits, k, dim=-1).values[..., -1:]  # (..., 1)
    return logits >= kth_largest  # (..., V)


def top_p_filter(probs: Tensor, top_p: float) -> Tensor:
    """True for the nucleus: tokens whose more probable predecessors hold less than ``top_p`` between them.

    The most probable token is always kept, and so is every token tied with the last one kept.
    """
    sorted_probs, _ = torch.sort(probs, dim=-1, descending=True)  # (..., V)
    mass_above = F.pad(sorted_probs.cumsum(dim=-1)[..., :-1], (1, 0))  # (..., V)
    n_kept = (mass_above < top_p).sum(dim=-1, keepdim=True)  # (..., 1), at least 1
    smallest_kept = sorted_probs.gather(-1, n_kept - 1)  # (..., 1)
    return probs >= smallest_kept  # (..., V)


def sample(
    logits: Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """One token id per row of ``logits`` ``(..., V)``; int64 ``(...)``.

    ``temperature == 0``: the argmax (lowest id among equal maxima). Otherwise: divide by the temperature, keep
    the top k, softmax, keep the nucleus of mass top_p, renormalise, draw. ``seed`` (or a ``generator``)
    makes the draw reproducible.
    """
    if temperature == 0:
        return logits.argmax(dim=-1)
    if generator is None and seed is not None:
        generator = torch.Generator(device=logits.device).manual_seed(seed)
    scores = logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature  # (..., V)
    if top_k is not None:
        scores = scores.masked_fill(~top_k_filter(scores, top_k), float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    if top_p is not None and top_p < 1:
        probs = probs.masked_fill(~top_p_filter(probs, top_p), 0.0)
        probs = probs / probs.sum(dim=-1, keepdim=True)
    flat = probs.reshape(-1, probs.shape[-1])  # (N, V)
    ids = torch.multinomial(flat, num_samples=1, generator=generator)  # (N, 1)
    return ids.reshape(logits.shape[:-1])
